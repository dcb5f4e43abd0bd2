#!/usr/bin/env python
"""What the dataset's HTML page costs a reduction (issue 15: at most 2 s for a
500-frame dataset).

    python benchmarks/report_benchmark.py [--frames 500] [--stars 20000] [--repeat 5] [--dir DIR]

Makes the products of a reduced dataset of --frames frames and --stars stars, written
by the pipeline's own writers (``photometry.lightcurve.write_products`` and the
plots of ``photometry.plots``; 10% of the frames rejected, half of them with a time,
3% of the points flagged, a 140 kB finder chart, a catalogue whose header carries
the astrometry and identification cards, a log of the run), then times
``write_dataset_report`` on them: the first call in a process that has imported what
a reduction's worker has (numpy, astropy, matplotlib through the plots module),
which also imports the page's own modules, and then --repeat calls. Prints the
figures; writes benchmarks/results/report.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
TARGET = "BENCH-2026-BLG-0001"
RUN_ID = "20260101T000000Z-bench0"


def _tables(n_frames: int, n_stars: int, rng):
    """A light curve, FRAMES and STARS tables and the (frame x star) arrays, shaped as
    build_lightcurve makes them."""
    from astropy.table import Table

    from luigi_phot.photometry import flags as F

    mjd = 61200.0 + np.sort(rng.uniform(0, 30, n_frames))
    frames = Table({"image": [f"lsc1m005-fa15-2026{k:04d}-e91.fits" for k in range(n_frames)], "mjd": mjd,
                    "bjd_tdb": mjd + 0.003, "exptime": np.full(n_frames, 120.0),
                    "airmass": rng.uniform(1.0, 2.0, n_frames), "fwhm_arcsec": rng.uniform(1.0, 3.5, n_frames),
                    "sky": rng.uniform(200, 2000, n_frames), "zero_point": 30 - rng.exponential(0.1, n_frames),
                    "zero_point_err": np.full(n_frames, 0.003), "n_comparison": np.full(n_frames, 800),
                    "calibration_chi2": rng.uniform(0.8, 1.3, n_frames),
                    "alignment_rms_pix": rng.uniform(0.02, 0.1, n_frames),
                    "n_matched": rng.integers(50, 300, n_frames)})
    flux = rng.lognormal(7, 1.5, n_stars)[None, :] * rng.normal(1, 0.01, (n_frames, n_stars))
    flux_err = np.sqrt(np.abs(flux) + 400.0)
    flags = np.where(rng.random((n_frames, n_stars)) < 0.03, F.NEAR_EDGE, 0).astype(np.int16)
    t = flux[:, 0] * (1 + 0.5 * np.exp(-0.5 * ((mjd - mjd.mean()) / 2.0) ** 2))
    lc = Table({"mjd": mjd, "bjd_tdb": mjd + 0.003, "flux": t, "flux_err": flux_err[:, 0],
                "mag": 25 - 2.5 * np.log10(t), "mag_err": 1.0857 * flux_err[:, 0] / t,
                "flags": flags[:, 0].astype(np.int32), "image": list(frames["image"]),
                "zero_point": frames["zero_point"], "zero_point_err": frames["zero_point_err"],
                "fwhm_arcsec": frames["fwhm_arcsec"], "airmass": frames["airmass"], "sky": frames["sky"],
                "exptime": frames["exptime"], "neighbour_flux": t * rng.uniform(0.01, 0.2, n_frames)})
    lc.meta.update({"target": TARGET, "ra_deg": 268.5, "dec_deg": -29.5, "filter": "ip",
                    "reference_image": frames["image"][0], "zero_point_ref": 25.0, "zero_point_ref_err": float("nan"),
                    "zero_point_source": "default", "calibration_order": 2, "n_comparison_stars": 800,
                    "neighbour_subtraction": True})
    mean = flux.mean(0)
    stars = Table({"id": np.arange(n_stars), "ra": np.full(n_stars, 268.5), "dec": np.full(n_stars, -29.5),
                   "x_ref": rng.uniform(0, 4096, n_stars), "y_ref": rng.uniform(0, 4096, n_stars),
                   "flux_ref": mean, "is_target": np.arange(n_stars) == 0, "detected": np.ones(n_stars, bool),
                   "cat_mag": np.full(n_stars, np.nan), "mean_flux": mean, "mean_mag": 25 - 2.5 * np.log10(mean),
                   "rms_flux": flux.std(0), "median_flux_err": np.median(flux_err, 0),
                   "n_good": np.full(n_stars, n_frames), "comparison": np.arange(n_stars) % 10 == 1,
                   "calibration_chi2": np.ones(n_stars)})
    return lc, frames, stars, flux, flux_err, flags


def make_products(red: Path, n_frames: int, n_stars: int, seed: int = 15) -> dict[str, float]:
    """The dataset's products in `red` (made by the pipeline's writers); returns how long
    the light-curve stage's own plots took, for comparison."""
    from astropy.io import fits
    from astropy.table import Table

    from luigi_phot.photometry import flags as F, plots
    from luigi_phot.photometry.lightcurve import LightCurveProducts, product_names, write_products

    rng = np.random.default_rng(seed)
    names = product_names(TARGET, "ip")
    paths = {k: red / v for k, v in names.items()}
    (red / "photometry").mkdir(parents=True, exist_ok=True)
    lc, frames, stars, flux, flux_err, flags = _tables(n_frames, n_stars, rng)
    n_rejected = n_frames // 10
    rejected = Table({"image": [f"rejected-{k:04d}.fits" for k in range(n_rejected)],
                      "reason": ["alignment failed (pattern: 3 stars matched, rms inf px)"] * n_rejected})
    for k in range(n_rejected // 2):      # rejected with a time: a flagged row of the light curve
        lc.add_row({"mjd": 61200.0 + 30 * rng.random(), "flags": F.FRAME_REJECTED, "image": rejected["image"][k],
                    **{c: np.nan for c in lc.colnames if c not in ("mjd", "flags", "image")}})
    lc.sort("mjd")
    products = LightCurveProducts(lightcurve=lc, tom_csv=lc[["mjd", "mag", "mag_err"]], rejected=rejected,
                                  frames=frames, stars=stars, flux=flux.astype(np.float32),
                                  flux_err=flux_err.astype(np.float32), flags=flags,
                                  meta={"zero_point_ref": 25.0, "tom_csv_all": lc[["mjd"]]})
    write_products(products, paths)
    t0 = time.perf_counter()
    plots.plot_lightcurve(lc, paths["lc_png"], TARGET)
    plots.plot_noise(stars, paths["noise_png"], TARGET)
    plots.plot_fwhm_residuals(frames, lc, flux, np.flatnonzero(stars["comparison"])[:300], paths["crowding_png"],
                              TARGET)
    stage_plots_s = time.perf_counter() - t0
    plt = plots._pyplot()
    fig, ax = plt.subplots(figsize=(8, 8.6), dpi=100)
    ax.imshow(rng.normal(size=(160, 160)) + np.hypot(*np.mgrid[-80:80, -80:80]) / 40, cmap="gray")
    fig.savefig(paths["finder_png"])
    plt.close(fig)
    header = fits.Header({"REFIMAGE": frames["image"][0], "FILTER": "ip", "PIXSCALE": 0.389, "PSFFWHM": 5.5,
                          "MJDMID": 61200.1, "SKY_E": 300.0, "ASTSRC": "gaia", "ASTREF": True, "ASTNMAT": 1100,
                          "ASTRMS": 0.05, "ASTUNC": 0.01, "TGTRA": 268.5, "TGTDEC": -29.5, "TGTSEP": 0.2,
                          "TGTRAD": 1.5, "TGTDET": True, "TGTAMBIG": False})
    fits.HDUList([fits.PrimaryHDU(header=header), fits.BinTableHDU(stars[["id", "x_ref", "y_ref", "flux_ref"]])]) \
        .writeto(red / "photometry" / "catalogue.fits", overwrite=True)
    log = [f"2026-01-01 00:00:00 INFO    ========== run {RUN_ID}: reducing {red} ({n_frames} frames) =========="]
    log += [f"2026-01-01 00:00:01 INFO    [{RUN_ID}] MeasureImage: frame{k}.fits: measured" for k in range(n_frames)]
    log += [f"2026-01-01 00:00:02 WARNING [{RUN_ID}] MeasureImage: {r}: rejected: alignment failed" for r in
            rejected["image"]]
    (red / "aperture_pipeline.log").write_text("\n".join(log) + "\n")
    shutil.copy(REPO / "luigi_phot" / "examples" / "reduction_config.yaml", red / "reduction_config.yaml")
    return {"stage_plots_s": stage_plots_s}


def _timed_calls(red: Path, repeat: int) -> dict:
    """In a fresh process: the first call (with the page's imports) and `repeat` more."""
    code = f"""
import json, sys, time
from pathlib import Path
import numpy, astropy.table, astropy.io.fits
from luigi_phot.photometry import plots
plots._pyplot()                      # what a reduction's worker has imported (tasks/reduce.py)
from luigi_phot.photometry.lightcurve import product_names
t0 = time.perf_counter()
from luigi_phot.report import write_dataset_report
names = product_names({TARGET!r}, "ip")
path = write_dataset_report(Path({str(red)!r}), {TARGET!r}, names, {RUN_ID!r})
first = time.perf_counter() - t0
times = []
for _ in range({repeat}):
    t0 = time.perf_counter()
    write_dataset_report(Path({str(red)!r}), {TARGET!r}, names, {RUN_ID!r})
    times.append(time.perf_counter() - t0)
print(json.dumps({{"first_s": first, "times_s": times, "bytes": path.stat().st_size}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=500)
    ap.add_argument("--stars", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dir", type=Path, default=None, help="where the products are made (default: a temporary "
                                                             "directory, removed after)")
    args = ap.parse_args(argv)
    work = args.dir or Path(tempfile.mkdtemp(prefix="report_bench_"))
    red = work / TARGET / "sinistro" / "ip"
    try:
        made = make_products(red, args.frames, args.stars)
        calls = _timed_calls(red, args.repeat)
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    result = {"frames": args.frames, "stars": args.stars, **made, **calls,
              "median_s": statistics.median(calls["times_s"]), "machine": platform.node(),
              "python": platform.python_version(), "load_average": list(__import__("os").getloadavg())}
    print(f"report page, {args.frames} frames x {args.stars} stars: first call {calls['first_s']:.2f} s (with the "
          f"page's imports), then median {result['median_s']:.2f} s over {args.repeat} "
          f"(min {min(calls['times_s']):.2f}, max {max(calls['times_s']):.2f}); page {calls['bytes'] / 1e6:.2f} MB; "
          f"load average {result['load_average'][0]:.1f}")
    print(f"  for comparison, the light-curve stage's own three plots: {made['stage_plots_s']:.2f} s")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "report.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
