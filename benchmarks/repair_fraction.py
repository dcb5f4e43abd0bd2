#!/usr/bin/env python
"""How much of a star's light may rest on masked pixels before the model-based repair
stops being honest? The measurement behind LARGE_REPAIR_FRACTION (measure.py).

Every frame of a few datasets is measured twice against one catalogue (on the reference the
pipeline would choose): as it is, and
with pixels masked in it (BPM bad: bad columns, single and double, every 23 pixels at a
random offset, and 3x3 blocks like grown cosmic-ray hits on bright stars' cores). A
star's flux difference between the two, d = f_masked - f_clean, is the repair's error
minus the noise the masked pixels carried in the clean measurement (sigma_pix^2 = the sum
over them of source + sky + read-noise variance). Per bin of repaired fraction (the
fraction of the star's light, per the PSF, on masked aperture pixels), for stars with S/N
above 20, it prints:

- std(z), median(z) with z = d / sqrt(sigma_rep^2 + sigma_pix^2): the repair's error
  against the uncertainty stated for it (sigma_rep^2 = err_masked^2 - err_clean^2);
- ratio = sqrt(mean((err_clean^2 - 2 sigma_pix^2 + d^2) / err_masked^2)): the scatter of
  the repaired points about the truth relative to their error bars (1 = honest), and the
  same for the stars with S/N above 200, whose repair error is not hidden by their noise.

Datasets: generated 800x800 frames (seeing 1.1-3.2", Moffat beta 2.5-4.5; and seeing
0.8-1.6", where a column or a hit takes the largest fractions) and a series built from the
real ISAAC frame in ../shared/data/real, whose PSF is not a Moffat.

    python benchmarks/repair_fraction.py [--frames N] [--json FILE] [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from luigi_phot.config import load_reduction_config
from luigi_phot.photometry import flags as F
from luigi_phot.photometry.aperture import masked_overlaps
from luigi_phot.photometry.catalogue import build_catalogue, choose_reference
from luigi_phot.photometry.frames import PIXEL_BAD, load_frame
from luigi_phot.photometry.measure import MeasureSettings, measure_frame
from luigi_phot.synthetic import SyntheticConfig, generate_dataset, series_from_real_frame

HERE = Path(__file__).resolve().parent
REAL = HERE.parent.parent / "shared" / "data" / "real"
if not REAL.is_dir():
    REAL = Path("/work/shared/data/real")

BASE = SyntheticConfig(n_frames=12, shape=(800, 800), n_stars=2000, target_isolation_arcsec=6.0, n_nights=4,
                       bad_column=None)
DATASETS = {
    "generated, seeing 1.1-3.2\"": dataclasses.replace(BASE, seed=301),
    "generated, seeing 0.8-1.6\"": dataclasses.replace(BASE, seed=302, seeing_arcsec=(0.8, 1.6)),
    "real ISAAC frame series": "isaac_psrj1740.fits",
}
BINS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def add_masks(flags: np.ndarray, x: np.ndarray, y: np.ndarray, flux: np.ndarray, usable: np.ndarray,
              rng) -> np.ndarray:
    """Mask columns (every 23 px from a random start, every third one doubled) and square
    blocks on the cores of 60 of the brightest `usable` stars (3x3 on two thirds, 5x5 on
    the rest; random offsets of up to a pixel); returns the boolean image of the pixels added."""
    ny, nx = flags.shape
    added = np.zeros(flags.shape, dtype=bool)
    for k, c in enumerate(range(int(rng.integers(0, 23)), nx, 23)):
        added[:, c] = True
        if k % 3 == 2 and c + 1 < nx:
            added[:, c + 1] = True
    order = np.argsort(-np.where(usable, np.nan_to_num(flux), -np.inf))
    on = order[(x[order] > 5) & (x[order] < nx - 6) & (y[order] > 5) & (y[order] < ny - 6)][:60]
    for k, s in enumerate(on):
        cx, cy = (int(np.rint(v + rng.uniform(-1, 1))) for v in (x[s], y[s]))
        h = 2 if k % 3 == 2 else 1
        added[cy - h: cy + h + 1, cx - h: cx + h + 1] = True
    flags[added] |= PIXEL_BAD
    return added


def frame_pairs(path: Path, cat, settings, camera, r_ap_arcsec: float, rng) -> dict:
    """Measure one frame as it is and with masks added; per star: the two fluxes and
    errors, the repaired fraction, sigma_pix and the clean flags."""
    clean = measure_frame(load_frame(path, camera), cat, settings).stars
    frame = load_frame(path, camera)
    data = frame.data_e.copy()
    usable = (clean["flags"] & (F.SEVERE | F.CROWDED)) == 0
    added = add_masks(frame.pixel_flags, clean["x"], clean["y"], clean["flux"], usable, rng)
    m = measure_frame(frame, cat, settings)
    col, facts = m.stars, m.facts
    x, y = col["x"].astype(float), col["y"].astype(float)
    r_ap = facts.aperture_radius_pix
    ov = masked_overlaps(added.astype(np.uint8), 1, x, y, r_ap)
    sky = col["sky"].astype(float)
    var = np.maximum(data.ravel()[ov.pixel] - sky[ov.star], 0.0) + facts.pixel_var_e2
    return {"f0": clean["flux"].astype(float), "e0": clean["flux_err"].astype(float),
            "f1": col["flux"].astype(float), "e1": col["flux_err"].astype(float),
            "frac": col["repaired"].astype(float), "frac0": clean["repaired"].astype(float),
            "var_pix": ov.per_star(var, x.size), "flags0": clean["flags"], "flags1": col["flags"]}


def dataset_pairs(name: str, source, out: Path, n_frames: int, seed: int) -> dict:
    red = out / f"repair-{seed}" / "ip"
    if isinstance(source, SyntheticConfig):
        generate_dataset(red, dataclasses.replace(source, n_frames=n_frames), overwrite=True)
        frames = sorted(p for p in red.iterdir() if p.name.endswith((".fits", ".fits.fz")))
    else:
        series_from_real_frame(REAL / source, red, n_frames=n_frames, seed=seed, overwrite=True)
        frames = sorted(p for p in red.iterdir() if p.name.endswith((".fits", ".fits.fz")) and "truth" not in p.name)
    cfg = load_reduction_config(red / "reduction_config.yaml", check_tom_file=False)
    reference = choose_reference(frames, cfg.camera, cfg.target.ra_deg, cfg.target.dec_deg).path
    cat = build_catalogue(load_frame(reference, cfg.camera), cfg.target.ra_deg, cfg.target.dec_deg,
                          cfg.photometry, key="repair")
    settings = MeasureSettings.from_config(cfg.photometry)
    rng = np.random.default_rng(seed)
    parts = [frame_pairs(p, cat, settings, cfg.camera, cfg.photometry.aperture_arcsec, rng) for p in frames]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def bin_figures(p: dict) -> list[dict]:
    # crowded stars (more neighbour light than their own in the aperture) are left out:
    # their error is their neighbours' model's, and around saturated stars they are junk
    bad = (F.SEVERE | F.CROWDED) & ~F.LARGE_REPAIR
    ok = (np.isfinite(p["f0"]) & np.isfinite(p["f1"]) & (p["e0"] > 0) & (p["frac0"] == 0)
          & ((p["flags0"] & (F.SEVERE | F.CROWDED)) == 0) & ((p["flags1"] & bad) == 0) & (p["f0"] / p["e0"] > 20))
    d = p["f1"] - p["f0"]
    var_rep = np.maximum(p["e1"] ** 2 - p["e0"] ** 2, 0.0)
    ok &= var_rep + p["var_pix"] > 0
    z = d / np.sqrt(np.where(ok, var_rep + p["var_pix"], 1.0))
    q = (p["e0"] ** 2 - 2 * p["var_pix"] + d ** 2) / p["e1"] ** 2
    bright = p["f0"] / p["e0"] > 200
    rows = []
    for lo, hi in zip(BINS[:-1], BINS[1:]):
        sel = ok & (p["frac"] > lo) & (p["frac"] <= hi)
        sb = sel & bright
        rows.append({"fraction": f"{lo:.2f}-{hi:.2f}", "n": int(sel.sum()), "n_bright": int(sb.sum()),
                     "std_z": float(np.std(z[sel])) if sel.sum() > 2 else np.nan,
                     "median_z": float(np.median(z[sel])) if sel.sum() > 2 else np.nan,
                     "beyond_3": float(np.mean(np.abs(z[sel]) > 3)) if sel.sum() > 2 else np.nan,
                     "ratio": float(np.sqrt(np.mean(q[sel]))) if sel.sum() > 2 else np.nan,
                     "ratio_bright": float(np.sqrt(np.mean(q[sb]))) if sb.sum() > 2 else np.nan})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=12, help="frames per dataset")
    ap.add_argument("--out", default=str(HERE / "cache" / "repair"))
    ap.add_argument("--json", help="write the figures to this JSON file")
    args = ap.parse_args(argv)
    results = {}
    for k, (name, source) in enumerate(DATASETS.items()):
        rows = bin_figures(dataset_pairs(name, source, Path(args.out), args.frames, seed=301 + k))
        results[name] = rows
        print(f"\n{name}\n| repaired fraction | pairs (S/N>20, >200) | std(z) | median(z) | |z|>3 | "
              f"scatter/error bar | same, S/N>200 |\n|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['fraction']} | {r['n']}, {r['n_bright']} | {r['std_z']:.2f} | {r['median_z']:+.2f} | "
                  f"{100 * r['beyond_3']:.0f}% | {r['ratio']:.2f} | {r['ratio_bright']:.2f} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
