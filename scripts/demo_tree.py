#!/usr/bin/env python
"""The tree behind `make demo-tree`: a small reduction tree for the ReductionManager
and luigid's visualiser, and a manager configuration that selects it.

    demo/tree/reduction/<target>/<instrument>/<filter>/   five synthetic datasets
    demo/tree/config/reduction_manager_config.yaml        group 'recent': all five
    demo/tree/logs/                                        the manager's log

Two targets x two instruments (sinistro: 0.389"/px; qhy: 1.0"/px) x one or two
filters, eight 512x512 frames each, observed on the last three nights before
today (UTC), so that the 'recent' selection finds them. The field culminates near
local midnight on those nights (a bulge field is not up in every season).
Then it prints the commands that reduce the tree through luigid."""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
import time
from pathlib import Path

from luigi_phot.synthetic import SyntheticConfig, generate_dataset

REPO = Path(__file__).resolve().parents[1]

#: target/instrument/filter -> (seed, pixel scale [arcsec/pix])
DATASETS = {
    "SYN-2026-BLG-0101/sinistro/ip": (101, 0.389),
    "SYN-2026-BLG-0101/sinistro/gp": (102, 0.389),
    "SYN-2026-BLG-0101/qhy/ip": (103, 1.0),
    "SYN-2026-BLG-0102/sinistro/ip": (104, 0.389),
    "SYN-2026-BLG-0102/qhy/ip": (105, 1.0),
}
N_NIGHTS = 3


def field_ra_at_midnight(night: dt.date) -> float:
    """An RA that culminates near local midnight on that night: opposite the Sun, whose
    RA grows by about 360 degrees a year from 0 at the March equinox."""
    sun_ra = 360.0 * ((night - dt.date(2000, 3, 20)).days % 365.2422) / 365.2422
    return (sun_ra + 180.0) % 360.0


def manager_config(root: Path) -> str:
    return f"""# The demo tree's manager configuration (written by scripts/demo_tree.py).
log_dir: '{root / "logs"}'
data_reduction_dir: '{root / "reduction"}'
software_dir: '{REPO}'
instrument_list: ['sinistro', 'qhy']
dataset_selection:
  group: 'recent'       # every dataset with a frame observed within ndays of now
  file: 'None'
  start_date: 'None'
  end_date: 'None'
  ndays: {N_NIGHTS + 1}
max_parallel: 2         # dataset reductions at once
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "demo" / "tree"), help="the tree's top directory (default demo/tree)")
    ap.add_argument("--size", type=int, default=512, help="frame size in pixels (default 512)")
    ap.add_argument("--frames", type=int, default=8, help="frames per dataset (default 8)")
    args = ap.parse_args(argv)

    root = Path(args.out).resolve()
    if root.exists():
        print(f"Removing the earlier demo tree {root}", flush=True)
        shutil.rmtree(root)
    first_night = dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=N_NIGHTS)
    middle = first_night + dt.timedelta(days=N_NIGHTS // 2)
    t0 = time.perf_counter()
    for rel, (seed, scale) in DATASETS.items():
        target, _, filter_name = rel.split("/")
        cfg = SyntheticConfig(seed=seed, n_frames=args.frames, shape=(args.size, args.size), n_stars=800,
                              pixel_scale_arcsec=scale, target_name=target, filter_name=filter_name,
                              first_night=first_night.isoformat(), n_nights=N_NIGHTS,
                              field_ra_deg=field_ra_at_midnight(middle), bad_column=int(0.3 * args.size),
                              event_t0_span_fraction=0.7, compress="mixed")
        generate_dataset(root / "reduction" / rel, cfg)
        print(f"  {rel}: {args.frames} frames {args.size}x{args.size}, nights {first_night} to {first_night + dt.timedelta(days=N_NIGHTS - 1)}",
              flush=True)
    (root / "config").mkdir(parents=True)
    (root / "logs").mkdir()
    config = root / "config" / "reduction_manager_config.yaml"
    config.write_text(manager_config(root))
    print(f"{len(DATASETS)} datasets in {root / 'reduction'} ({time.perf_counter() - t0:.1f} s)\n"
          f"manager configuration: {config}\n\n"
          "Reduce them through luigid and watch in its visualiser:\n"
          "  scripts/luigid.sh start\n"
          "  open http://127.0.0.1:8082/ in a browser (Linux: xdg-open http://127.0.0.1:8082/)\n"
          f"  .venv/bin/luigi --module luigi_phot ReductionManager --config {config}\n"
          f"Without luigid: add --local-scheduler. The manager's log: {root / 'logs' / 'arcon_pipeline.log'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
