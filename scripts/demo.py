#!/usr/bin/env python
"""The demo behind `make demo`: generate a synthetic LCO-like dataset (a crowded
bulge field with a whole microlensing event on the target: baseline, rise, peak
and fall over 15 nights) and reduce it with

    luigi --module luigi_phot ReduceDataset --red-dir <dir> --local-scheduler --workers 2

then list every output with a one-line summary of what it holds."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from astropy.table import Table

from luigi_phot.report import describe_outputs, format_outputs
from luigi_phot.synthetic import TRUTH_NAME, SyntheticConfig, generate_dataset

REPO = Path(__file__).resolve().parents[1]


def demo_config(n_frames: int = 30, size: int = 1024) -> SyntheticConfig:
    """The demo's dataset: two frames a night for 15 nights, the event's peak in the
    middle (t0 at half the span), tE 2 days so that both ends are flat baseline, u0 0.25
    (the target brightens by about 1.2 mag)."""
    return SyntheticConfig(seed=2026, n_frames=n_frames, shape=(size, size), n_stars=3000, compress="mixed",
                           n_nights=15, event_tE_days=2.0, event_u0=0.25, event_t0_span_fraction=0.5)


def _generated_with(red: Path) -> dict | None:
    """The generator parameters of the dataset already in red (None when there is none)."""
    try:
        return Table.read(red / TRUTH_NAME, format="ascii.ecsv").meta.get("generator_parameters")
    except (OSError, ValueError):
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "demo"), help="where the reduction tree is made (default: demo/)")
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--fresh", action="store_true", help="regenerate the dataset even if it exists")
    args = ap.parse_args(argv)

    cfg = demo_config(args.frames, args.size)
    red = Path(args.out) / cfg.target_name / "sinistro" / cfg.filter_name
    if red.exists() and (args.fresh or _generated_with(red) != cfg.to_meta()):
        print(f"Removing the earlier demo dataset in {red} (made with other settings)" if not args.fresh else
              f"Removing {red}", flush=True)
        shutil.rmtree(red)
    if not red.exists():
        print(f"Generating {cfg.n_frames} synthetic {args.size}x{args.size} frames in {red} ...", flush=True)
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
    print()
    print(f"Outputs in {red}:")
    print(format_outputs(describe_outputs(red), base=red))
    print(f"  {TRUTH_NAME}\n      truth of the synthetic data (the event's model, every frame's true target flux)")
    for page in red.glob("*_report.html"):
        print(f"\nOpen the dataset's page in a browser: {page.resolve().as_uri()}")
    print("\nRun `make demo` again: nothing is redone. `scripts/demo.py --fresh` starts over.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
