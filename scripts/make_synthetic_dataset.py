#!/usr/bin/env python3
"""Write a synthetic LCO-like dataset for luigi_phot (demo, tests, benchmarks).

    python scripts/make_synthetic_dataset.py --out demo/SYN-2026-BLG-0001 --seed 1
    python scripts/make_synthetic_dataset.py --out /tmp/big --size 4096x4096 --n-stars 20000 --compress all
    python scripts/make_synthetic_dataset.py --out /tmp/real --from-real ../shared/data/real/isaac_psrj1740.fits

All options: ``--help``. The same command is installed as ``luigi-phot-synthetic``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from luigi_phot.synthetic import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
