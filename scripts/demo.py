#!/usr/bin/env python
"""The demo behind `make demo`: generate a synthetic LCO-like dataset (a crowded
bulge field with a microlensing event on the target) and reduce it with

    luigi --module luigi_phot ReduceDataset --red-dir <dir> --local-scheduler --workers 2

then say where the light curve, its plot and the log are."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from luigi_phot.synthetic import SyntheticConfig, generate_dataset

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "demo"), help="where the reduction tree is made (default: demo/)")
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--fresh", action="store_true", help="regenerate the dataset even if it exists")
    args = ap.parse_args(argv)

    cfg = SyntheticConfig(seed=2026, n_frames=args.frames, shape=(args.size, args.size), n_stars=3000,
                          compress="mixed")
    red = Path(args.out) / cfg.target_name / "sinistro" / cfg.filter_name
    if args.fresh and red.exists():
        shutil.rmtree(red)
    if not red.exists():
        print(f"Generating {args.frames} synthetic {args.size}x{args.size} frames in {red} ...", flush=True)
        t0 = time.perf_counter()
        generate_dataset(red, cfg)
        print(f"  done in {time.perf_counter() - t0:.1f} s", flush=True)
    luigi = Path(sys.executable).parent / "luigi"
    cmd = [str(luigi), "--module", "luigi_phot", "ReduceDataset", "--red-dir", str(red),
           "--local-scheduler", "--workers", "2"]
    print("Running: " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO)
    print(f"  finished in {time.perf_counter() - t0:.1f} s with exit status {done.returncode}")
    if done.returncode != 0:
        print(f"The reduction failed; see {red / 'aperture_pipeline.log'}", file=sys.stderr)
        return done.returncode
    stem = f"{cfg.target_name}_{cfg.filter_name}"
    print()
    print("Outputs:")
    for label, name in (("light curve (ECSV)", f"{stem}_lc.ecsv"), ("light curve for the TOM (CSV)", f"{stem}_lc.csv"),
                        ("light-curve plot", f"{stem}_lc.png"), ("noise diagnostic", f"{stem}_noise.png"),
                        ("rejected frames", f"{stem}_rejected.csv"), ("log", "aperture_pipeline.log"),
                        ("all-stars time series", f"photometry/{stem}_all_stars.fits")):
        print(f"  {label:31s} {red / name}")
    print(f"  {'truth of the synthetic data':31s} {red / 'synthetic_truth.ecsv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
