"""BuildLightcurve when one frame arrives in a dataset of N measured frames: the
light-curve update against a full rebuild from every measurement file.

    .venv/bin/python benchmarks/lightcurve_increment.py [--frames 500] [--stars 20000] [--work DIR]

Each timing is of the build step in a process that has imported the science stack
and read astropy's IERS tables (``tasks.reduce.preload_science``), as the stages of
a reduction run.

Set-up (kept in --work, default /tmp/luigi_phot_lc_increment, reused when present):
a small synthetic dataset is reduced for real (its catalogue, its target), the
catalogue is widened to --stars stars, and --frames measurement files are made
against it (as benchmarks/run_benchmarks.py's light-curve case does: realistic
sizes, 1% flagged). Then, each in a process of its own, BuildLightcurve's build
step (``BuildLightcurve._build``, what the stage runs once its frames are
measured) is timed:

1. full: no cache of the measurements (every measurement file read);
2. increment: one more frame's measurement added, the cache of step 1 in place;
3. check: the same N+1 frames with no cache; its light curve must equal step 2's.

Prints the figures and whether the two light curves are identical.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
import luigi_phot  # noqa: E402,F401  imported first, as `luigi --module luigi_phot` does
import numpy as np  # noqa: E402


def prepare(work: Path, n_frames: int, n_stars: int) -> Path:
    """The dataset with n_frames measured frames (and one more frame not yet measured)."""
    from astropy.io import fits
    from astropy.table import vstack

    from luigi_phot.dataset import catalogue_path, frame_identity, measurement_dir, measurement_key, measurement_path
    from luigi_phot.photometry.catalogue import Catalogue
    from luigi_phot.synthetic import SyntheticConfig, generate_dataset
    from luigi_phot.tasks.base import load_config
    from run_benchmarks import write_stand_in_measurement

    red = work / f"lc_{n_frames}x{n_stars}" / "ip"
    marker = red.parent / "complete"
    if marker.exists():
        return red
    shutil.rmtree(red.parent, ignore_errors=True)
    small = work / "small" / "ip"
    if not catalogue_path(small).exists():
        shutil.rmtree(small.parent, ignore_errors=True)
        generate_dataset(small, SyntheticConfig(seed=5, n_frames=3, shape=(512, 512), n_stars=800, compress="none"))
        env = {**os.environ, "LUIGI_CONFIG_PATH": str(REPO / "luigi.cfg")}
        subprocess.run([str(Path(sys.executable).parent / "luigi"), "--module", "luigi_phot", "ReduceDataset",
                        "--red-dir", str(small), "--local-scheduler"], env=env, check=True, capture_output=True)
    red.mkdir(parents=True)
    shutil.copy(small / "reduction_config.yaml", red)
    (red / "photometry").mkdir()
    cat = Catalogue.load(catalogue_path(small))
    # widen the catalogue to n_stars: copies of its non-target stars, shifted on the frame
    stars = cat.stars
    others = stars[~np.asarray(stars["is_target"])]
    rng = np.random.default_rng(3)
    copies = [stars]
    while sum(len(t) for t in copies) < n_stars:
        extra = others.copy()
        extra["x_ref"] = rng.uniform(0, cat.shape[1], len(extra))
        extra["y_ref"] = rng.uniform(0, cat.shape[0], len(extra))
        copies.append(extra)
    wide = vstack(copies)[:n_stars]
    wide["id"] = np.arange(1, len(wide) + 1)
    cat.stars = wide
    cat.save(catalogue_path(red))
    cat = Catalogue.load(catalogue_path(red))
    key = measurement_key(red, load_config(red))
    measurement_dir(red, key).mkdir(parents=True)
    flux_ref = np.nan_to_num(np.asarray(cat.stars["flux_ref"], float), nan=100.0).clip(10)
    hdr0 = fits.getheader(next(small.glob("*.fits")), "SCI")
    for k in range(n_frames + 1):
        name = write_stand_in_measurement(red, key, cat, hdr0, flux_ref, rng, k)
    digest = frame_identity(red, name).digest
    shutil.copy2(measurement_path(red, key, name, digest), red.parent / "late.phot.fits")
    (red / f"frame-{n_frames:04d}.fits").rename(red.parent / f"frame-{n_frames:04d}.fits")   # arrives later
    marker.write_text("ok\n")
    return red


def child_build(red: str) -> None:
    """Time BuildLightcurve._build on the dataset's current frames (in this process, which
    has imported the science stack as a reduction's stages have)."""
    from run_benchmarks import time_lightcurve_build

    seconds, frames = time_lightcurve_build(Path(red), preload=True)
    print(json.dumps({"seconds": seconds, "frames": frames}))


def _child(red: Path) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", str(red)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _lightcurve(red: Path):
    from astropy.table import Table

    return Table.read(next(red.glob("*_lc.ecsv")), format="ascii.ecsv")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=500)
    ap.add_argument("--stars", type=int, default=20000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/luigi_phot_lc_increment"))
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        child_build(args.child)
        return
    from luigi_phot.photometry.measurement_cache import MEASUREMENT_CACHE_NAME

    red = prepare(args.work, args.frames, args.stars)
    cache = red / "photometry" / MEASUREMENT_CACHE_NAME
    late = red.parent / f"frame-{args.frames:04d}.fits"
    if (red / late.name).exists():
        (red / late.name).rename(late)
    shutil.rmtree(cache, ignore_errors=True)
    full = _child(red)
    os.rename(late, red / late.name)             # one new frame, and its measurement (MeasureImage's share)
    from luigi_phot.tasks.measure import MeasureImage

    shutil.copy2(red.parent / "late.phot.fits", MeasureImage(red_dir=str(red), run_id="b", image=late.name).output().path)
    increment = _child(red)
    incremental_lc = _lightcurve(red)
    shutil.rmtree(cache)
    check = _child(red)
    rebuilt_lc = _lightcurve(red)
    identical = incremental_lc.colnames == rebuilt_lc.colnames and all(
        np.array_equal(np.asarray(incremental_lc[c]), np.asarray(rebuilt_lc[c]), equal_nan=True)
        if incremental_lc[c].dtype.kind == "f" else list(incremental_lc[c]) == list(rebuilt_lc[c])
        for c in incremental_lc.colnames)
    (red / late.name).rename(late)
    print(f"BuildLightcurve build step, {args.frames} frames x {args.stars} stars (one process each, {os.cpu_count()} "
          f"cores, load average {os.getloadavg()[0]:.1f}):")
    print(f"  full rebuild, no cache ({full['frames']} frames):      {full['seconds']:.2f} s")
    print(f"  one new frame, cache in place ({increment['frames']} frames): {increment['seconds']:.2f} s")
    print(f"  full rebuild of the same {check['frames']} frames:          {check['seconds']:.2f} s")
    print(f"  light curve of the increment identical to the full rebuild: {identical}")


if __name__ == "__main__":
    main()
