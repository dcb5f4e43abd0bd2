#!/usr/bin/env python
"""Catalogue benchmark: the first frame of a brand-new 4k dataset (issue 14 item 4).

A new dataset's first MeasureImage waits for its catalogue. This times the catalogue
stage on a Sinistro-like dataset (4096x4096 at 0.389"/px, a crowded bulge field:
32,000 stars drawn, about 22,000 in the catalogue with the reference's 2.5" seeing;
frames in electrons with a BPM; generated once into benchmarks/cache/catalogue_4k/)
and, for comparison, one MeasureImage on the same dataset:

  catalogue    BuildCatalogue.run() itself (reference choice, catalogue, finder
               chart, write), on a dataset of --frames frames, in a fresh process
               with the science stack imported first as a Luigi worker has it;
               the best and the median of --repeat runs; the last run under
               cProfile, broken down by phase (cumulative time of the functions
               that make the phases; cProfile adds a few per cent).
  measure      MeasureImage.run() on the first frame against that catalogue, in
               a fresh process (the median of --repeat runs).

The reference WCS is refined on an astrometric catalogue as a Gaia query would do
it (the Gaia archive is out of reach here): a catalogue file of the generated stars
brighter than G=19 (ra, dec, mag), written beside the frames.

    python benchmarks/catalogue_benchmark.py [--frames 3] [--repeat 3] [--stars 32000] [--seeing 1.1 3.2]
                                             [--label after]

Prints the figures and writes benchmarks/results/catalogue.json.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
import luigi_phot  # noqa: E402,F401  imported first, as `luigi --module luigi_phot` does
import numpy as np  # noqa: E402

CACHE = HERE / "cache" / "catalogue_4k"
RESULTS = HERE / "results"
from run_benchmarks import machine  # noqa: E402  (this script's directory is on sys.path)

#: (label, function name as cProfile knows it (file stem, name)) of the phases shown
PHASES = [
    ("reference choice (quick look at every frame)", ("catalogue", "choose_reference")),
    ("header WCS scatter of the frames", ("catalogue", "_header_scatter")),
    ("reading the reference", ("frames", "load_frame")),
    ("build_catalogue (all below)", ("catalogue", "build_catalogue")),
    ("  pixel repair of masked pixels", ("aperture", "repair_pixels")),
    ("  sky mesh", ("background", "sky_mesh")),
    ("  peak finding (3 passes)", ("detection", "find_peaks")),
    ("  peak sharpness", ("detection", "peak_sharpness")),
    ("  windowed centroids", ("detection", "windowed_centroids")),
    ("  PSF fit", ("psf", "fit_psf")),
    ("  reference astrometry", ("catalogue", "_reference_wcs")),
    ("  target identification", ("catalogue", "_place_target")),
    ("  sky level image", ("background", "level_image")),
    ("  simultaneous PSF fluxes (all passes)", ("psf", "fit_fluxes")),
    ("    of which LSQR", ("lsqr", "lsqr")),
    ("    PSF pixel values (all uses in the stage)", ("psf", "pixel_values")),
    ("  star model rendered (residual image)", ("psf", "render_stars")),
    ("  saturation near stars", ("aperture", "pixel_flag_summary")),
    ("catalogue written", ("catalogue", "save")),
]
#: the phases that add up to the whole stage (the rest: finder chart, notes, ...)
TOP_LEVEL = ("choose_reference", "_header_scatter", "load_frame", "build_catalogue", "save")


#: stars drawn and the seeing range [arcsec] of the default dataset
DEFAULT_STARS = 32000
DEFAULT_SEEING = (1.1, 3.2)


def synthetic_config(n_frames: int, n_stars: int = DEFAULT_STARS, seeing=DEFAULT_SEEING):
    from luigi_phot.synthetic import SyntheticConfig

    # by default a crowded bulge field: 32,000 stars drawn to 21 mag on the frame, of
    # which the catalogue holds about 22,000 (the frame had about 14,000)
    return SyntheticConfig(seed=1401, n_frames=n_frames, shape=(4096, 4096), n_stars=n_stars, n_nights=1,
                           compress="none", seeing_arcsec=tuple(seeing))


def dataset(n_frames: int, n_stars: int = DEFAULT_STARS, seeing=DEFAULT_SEEING) -> Path:
    """The generated dataset (made once), with a catalogue file of its stars to G=19."""
    from astropy.table import Table

    from luigi_phot.synthetic import STARS_NAME, generate_dataset

    name = f"frames_{n_frames}" + (f"_stars{n_stars}" if n_stars != DEFAULT_STARS else "") + \
        (f"_seeing{seeing[0]:g}-{seeing[1]:g}" if tuple(seeing) != DEFAULT_SEEING else "")
    red = CACHE / name / "ip"
    marker = red.parent / "complete"
    if not marker.exists():
        if red.parent.exists():
            shutil.rmtree(red.parent)
        red.mkdir(parents=True)
        t0 = time.perf_counter()
        print(f"  generating {n_frames} frames of 4096x4096 ...", flush=True)
        generate_dataset(red, synthetic_config(n_frames, n_stars, seeing))
        stars = Table.read(red / STARS_NAME, format="ascii.ecsv")
        names = stars.colnames
        ra = next(c for c in ("ra_deg", "ra") if c in names)
        dec = next(c for c in ("dec_deg", "dec") if c in names)
        mag = next(c for c in ("mag", "mag_ref", "magnitude") if c in names)
        bright = stars[np.asarray(stars[mag]) < 19.0]
        Table({"ra": bright[ra], "dec": bright[dec], "mag": bright[mag]}).write(
            red.parent / "astrometric_stars.csv", format="ascii.csv", overwrite=True)
        cfg_path = red / "reduction_config.yaml"
        import yaml

        data = yaml.safe_load(cfg_path.read_text())
        data["photometry"].update({"catalogue_file": str(red.parent / "astrometric_stars.csv"),
                                   "catalogue_mag_column": "mag"})
        cfg_path.write_text(yaml.safe_dump(data))
        marker.write_text(f"{time.perf_counter() - t0:.1f} s\n")
    return red


def _clear_products(red: Path) -> None:
    from luigi_phot.dataset import catalogue_path

    for p in (catalogue_path(red).parent,):
        if p.exists():
            shutil.rmtree(p)
    for p in red.glob("*_finder.png"):
        p.unlink()


# --------------------------------------------------------------------------- child processes


def child_catalogue(red: str, profile: str) -> None:
    """In a fresh process: BuildCatalogue.run() from nothing; JSON with its time, the
    catalogue's size and (with profile=1) the phases."""
    from luigi_phot import dataset_lock as lock
    from luigi_phot.dataset import catalogue_path
    from luigi_phot.photometry.catalogue import Catalogue
    from luigi_phot.tasks.catalogue import BuildCatalogue
    from luigi_phot.tasks.reduce import preload_science

    red = Path(red)
    preload_science()
    import matplotlib.pyplot  # noqa: F401  (a worker that drew a chart before has it)

    _clear_products(red)
    run_id = f"benchmark-catalogue-{os.getpid()}"
    lock.acquire(red, run_id)
    prof = cProfile.Profile() if profile == "1" else None
    try:
        task = BuildCatalogue(red_dir=str(red), run_id=run_id)
        t0 = time.perf_counter()
        if prof is not None:
            prof.enable()
        task.run()
        if prof is not None:
            prof.disable()
        seconds = time.perf_counter() - t0
    finally:
        lock.release(red, run_id)
    cat = Catalogue.load(catalogue_path(red))
    out = {"seconds": seconds, "stars": len(cat.stars), "detected": int(np.sum(cat.stars["detected"])),
           "fwhm_pix": cat.psf.fwhm_pix, "reference": cat.reference_image}
    if prof is not None:
        out["phases"] = _phases(prof)
        listed = sum(r["seconds"] for r, (_, key) in zip(out["phases"], PHASES) if key[1] in TOP_LEVEL)
        out["phases"].append({"phase": "the rest (finder chart, notes, ...)", "seconds": round(seconds - listed, 3),
                              "calls": 1})
    print(json.dumps(out))


def _phases(prof: cProfile.Profile) -> list:
    stats = pstats.Stats(prof, stream=io.StringIO())
    table = {}
    for (filename, _line, name), (_cc, ncalls, _tt, cum, _callers) in stats.stats.items():
        key = (Path(filename).stem, name.rsplit(".", 1)[-1])   # a method may come qualified
        calls, total = table.get(key, (0, 0.0))
        table[key] = (calls + ncalls, max(total, cum))
    rows = []
    for label, key in PHASES:
        calls, cum = table.get(key, (0, 0.0))
        rows.append({"phase": label, "seconds": round(cum, 3), "calls": calls})
    return rows


def child_measure(red: str) -> None:
    """In a fresh process: MeasureImage.run() on the first frame against the catalogue."""
    from luigi_phot import dataset_lock as lock
    from luigi_phot.tasks.measure import MeasureImage
    from luigi_phot.tasks.reduce import preload_science

    red = Path(red)
    preload_science()
    image = sorted(p.name for p in red.glob("*.fits"))[0]
    run_id = f"benchmark-measure-{os.getpid()}"
    lock.acquire(red, run_id)
    try:
        task = MeasureImage(red_dir=str(red), run_id=run_id, image=image)
        Path(task.output().path).unlink(missing_ok=True)
        t0 = time.perf_counter()
        task.run()
        seconds = time.perf_counter() - t0
    finally:
        lock.release(red, run_id)
    print(json.dumps({"seconds": seconds, "image": image}))


def _child(*args) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"benchmark child {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])



def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=3, help="frames in the dataset (the reference is chosen among them)")
    ap.add_argument("--repeat", type=int, default=3, help="catalogue and measure runs timed")
    ap.add_argument("--stars", type=int, default=DEFAULT_STARS, help="stars drawn on the frame")
    ap.add_argument("--seeing", type=float, nargs=2, default=DEFAULT_SEEING, metavar=("MIN", "MAX"),
                    help="seeing range of the frames [arcsec]")
    ap.add_argument("--label", default="", help="a label stored with the figures (e.g. 'before')")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        {"catalogue": child_catalogue, "measure": child_measure}[kind](*rest)
        return 0
    red = dataset(args.frames, args.stars, args.seeing)
    load_before = os.getloadavg()[0]
    runs = [_child("catalogue", red, "1" if k == args.repeat - 1 else "0") for k in range(args.repeat)]
    measures = [_child("measure", red) for _ in range(args.repeat)]
    times = [r["seconds"] for r in runs]
    result = {"label": args.label, "frames": args.frames, "shape": [4096, 4096], "stars_drawn": args.stars,
              "seeing_arcsec": list(args.seeing), "stars": runs[-1]["stars"],
              "detected": runs[-1]["detected"], "fwhm_pix": runs[-1]["fwhm_pix"],
              "catalogue_best_s": min(times), "catalogue_median_s": statistics.median(times),
              "catalogue_all_s": [round(t, 2) for t in times], "catalogue_profiled_s": round(times[-1], 2),
              "measure_median_s": statistics.median(r["seconds"] for r in measures),
              "measure_all_s": [round(r["seconds"], 2) for r in measures],
              "phases": runs[-1]["phases"], "load_average_1min_at_start": round(load_before, 2),
              "machine": machine()}
    print(f"\n4096x4096, {result['stars']} catalogue stars ({result['detected']} detected), FWHM "
          f"{result['fwhm_pix']:.2f} px, {args.frames} frames; load average {load_before:.1f} at start")
    print(f"catalogue stage: best {result['catalogue_best_s']:.1f} s, median {result['catalogue_median_s']:.1f} s "
          f"of {args.repeat} ({', '.join(f'{t:.1f}' for t in times)})")
    print(f"one MeasureImage: median {result['measure_median_s']:.2f} s "
          f"({', '.join(f'{r:.2f}' for r in result['measure_all_s'])})")
    print(f"\nphases of the last catalogue run (cProfile, {times[-1]:.1f} s with the profiler):")
    for row in result["phases"]:
        print(f"  {row['phase']:<48s} {row['seconds']:7.2f} s  ({row['calls']} calls)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "catalogue.json"
    previous = json.loads(out.read_text()) if out.exists() else {}
    previous[args.label or "latest"] = result
    out.write_text(json.dumps(previous, indent=1) + "\n")
    print(f"\nwritten to {out.relative_to(REPO)} under '{args.label or 'latest'}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
