#!/usr/bin/env python
"""Precision figures of the pipeline on generated data with known truth.

Generates a set of synthetic datasets (several seeds, PSF families, crowding,
an isolated target, a target with an equally bright neighbour, a dead column the
target drifts across) and the series built from the real frames in
../shared/data/real, reduces each with the real `luigi` command, and prints one
table: for the target, the standard deviation of (measured - fitted
truth)/flux_err, the largest such residual, its correlation with seeing and the
flagged fraction; for constant stars the median measured/predicted RMS in three
magnitude bins; the worst alignment RMS; the largest time errors. With --plain,
each synthetic case is also reduced without neighbour subtraction, for
comparison; --case runs only the generated cases named.

    python scripts/science_figures.py [--out DIR] [--quick] [--case NAME ...] [--plain] [--json FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from astropy.io import fits
from astropy.table import Table

from luigi_phot.config import load_reduction_config
from luigi_phot.photometry.frames import LCO_SITES
from luigi_phot.synthetic import SyntheticConfig, generate_dataset, series_from_real_frame
from luigi_phot.validation import constant_star_figures, target_figures, time_figures

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real"

BASE = SyntheticConfig(n_frames=30, shape=(800, 800), n_stars=2000, target_isolation_arcsec=6.0, n_nights=6,
                       compress="mixed")
CASES = {
    "isolated seed 1": dataclasses.replace(BASE, seed=101),
    "isolated seed 2, beta 2-2.6, elliptic": dataclasses.replace(BASE, seed=102, moffat_beta=(2.0, 2.6),
                                                                  psf_ellipticity_max=0.2),
    "isolated seed 3, dense field": dataclasses.replace(BASE, seed=103, n_stars=4500),
    "isolated seed 4, good seeing 0.8-1.6": dataclasses.replace(BASE, seed=104, seeing_arcsec=(0.8, 1.6)),
    "neighbour equal brightness at 1.75 r_ap": dataclasses.replace(BASE, seed=105, target_neighbour=(3.5, 0.0),
                                                                   target_isolation_arcsec=8.0),
    "neighbour 0.5 mag brighter at 2 r_ap": dataclasses.replace(BASE, seed=106, target_neighbour=(4.0, -0.5),
                                                                target_isolation_arcsec=8.0),
    "dead column across the target in 1/3 of frames": dataclasses.replace(BASE, seed=107,
                                                                            target_column_fraction=1 / 3),
}
QUICK = ("isolated seed 1", "neighbour equal brightness at 1.75 r_ap")


def reduce(red: Path) -> float:
    t0 = time.perf_counter()
    done = subprocess.run([str(Path(sys.executable).parent / "luigi"), "--module", "luigi_phot", "ReduceDataset",
                           "--red-dir", str(red), "--local-scheduler", "--workers", "2"],
                          capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"reduction of {red} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - t0


def figures(red: Path, synthetic: bool) -> dict:
    lc = Table.read(next(red.glob("*_lc.ecsv")), format="ascii.ecsv")
    truth = Table.read(red / "synthetic_truth.ecsv", format="ascii.ecsv")
    out = {"target": target_figures(lc, truth).as_dict()}
    all_stars = next((red / "photometry").glob("*_all_stars.fits"))
    frames = Table(fits.getdata(all_stars, "FRAMES"))
    out["max_alignment_rms_pix"] = float(np.max(frames["alignment_rms_pix"]))
    if synthetic:
        stars = Table.read(red / "synthetic_stars.ecsv", format="ascii.ecsv")
        out["constant_stars"] = constant_star_figures(all_stars, stars)
        cfg = load_reduction_config(red / "reduction_config.yaml", check_tom_file=False)
        out["times"] = time_figures(lc, truth, cfg.target.ra_deg, cfg.target.dec_deg, LCO_SITES["lsc"])
    return out


def row(name: str, f: dict, seconds: float) -> str:
    t = f["target"]
    bins = " ".join(f"{b['median_rms_ratio']:.2f}" for b in f.get("constant_stars", [])) or "  -  "
    times = f.get("times")
    tstr = f"{times['max_mjd_error_s']:.1e}/{times['max_bjd_error_s']:.1e}" if times else "-"
    return (f"| {name} | {t['n_points']} | {t['std_norm_resid']:.2f} | {t['max_abs_norm_resid']:.1f} | "
            f"{t['corr_with_fwhm']:+.2f} | {100 * t['flagged_fraction']:.0f}% | {bins} | "
            f"{f['max_alignment_rms_pix']:.3f} | {tstr} | {seconds:.0f} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "cache" / "science"))
    ap.add_argument("--quick", action="store_true", help="two cases only")
    ap.add_argument("--case", action="append", choices=sorted(CASES), metavar="NAME",
                    help="only this generated case (repeatable; the real-frame series are left out)")
    ap.add_argument("--plain", action="store_true", help="also reduce without neighbour subtraction")
    ap.add_argument("--json", help="write all figures to this JSON file")
    args = ap.parse_args(argv)
    out = Path(args.out)
    results = {}
    print("| case | points | target std(res/err) | max abs | corr. FWHM | flagged | constant stars "
          "RMS/pred. (bright mid faint) | worst align rms [px] | max time err mjd/bjd [s] | reduce [s] |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, cfg in CASES.items():
        if args.quick and name not in QUICK or args.case and name not in args.case:
            continue
        modes = [("subtracted", True)] + ([("plain", False)] if args.plain else [])
        for mode, subtract in modes:
            red = out / f"{cfg.seed}-{mode}" / "ip"
            if red.exists():
                shutil.rmtree(red.parent)
            red.parent.mkdir(parents=True)
            generate_dataset(red, cfg)
            if not subtract:
                data = yaml.safe_load((red / "reduction_config.yaml").read_text())
                data["photometry"]["subtract_neighbours"] = False
                (red / "reduction_config.yaml").write_text(yaml.safe_dump(data))
            seconds = reduce(red)
            f = figures(red, synthetic=True)
            label = f"{name} ({mode})" if args.plain else name
            results[label] = f
            print(row(label, f, seconds), flush=True)
    real = () if args.case else (("isaac_psrj1740.fits", {}),
                                 ("eyuma_thumbnail.fit.gz", {"wcs_path": REAL / "eyuma_thumbnail_wcs.fit",
                                                             "solved_wcs_in_header": True}))
    for name, kwargs in real:
        red = out / ("real-" + name.split(".")[0]) / "data"
        if red.exists():
            shutil.rmtree(red.parent)
        series_from_real_frame(REAL / name, red, n_frames=10, seed=7, **kwargs)
        seconds = reduce(red)
        f = figures(red, synthetic=False)
        results[f"real: {name}"] = f
        print(row(f"real series: {name}", f, seconds), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
