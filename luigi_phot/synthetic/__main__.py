"""python -m luigi_phot.synthetic: the luigi-phot-synthetic command."""

import sys

from .cli import main

sys.exit(main())
