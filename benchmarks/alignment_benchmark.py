#!/usr/bin/env python
"""Alignment benchmark: how many frames align, and how close to the truth.

Generated datasets (cached in benchmarks/cache/alignment/, made once) span the
conditions of issue 12: plain FITS in ADU without a mask (hot pixels, a hot
column, cosmic rays and saturated stars unflagged), frames without a WCS,
meridian flips (180 degrees), any rotation, scale changes of a few per cent,
offsets up to half the frame, sparse (512x512, ~50 stars) to 9600x6400 fields
with 50,000 stars, seeing up to 5", undersampled stars.

For each dataset the pipeline's own steps run as MeasureImage runs them: the
reference chosen automatically (its true seeing against the median frame's),
the catalogue built on it, then on every frame the control points
(:func:`alignment_control_points`) and the alignment (:func:`align_to_catalogue`).
Each solution is compared with the true transformation (from the generator's
truth table) at the catalogue stars that land on the frame: that rms is the
figure, not the fit's own residuals. A solution more than 1 px from the truth
counts as a wrong alignment (a silent failure), separately from rejections.

    python benchmarks/alignment_benchmark.py [--cases plain_1k,sparse] [--astroalign]

--astroalign also runs astroalign.find_transform for comparison, on the same star
lists and on the pixels (its own detection, 5 sigma, 60 control points), its
similarity refined and checked on the catalogue stars the same way; it needs
astroalign, which the pipeline does not (``pip install -e .[compare]``). Prints a
table and every failure's reason; writes benchmarks/results/alignment.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = HERE / "cache" / "alignment"
RESULTS = HERE / "results"
sys.path.insert(0, str(REPO))

from luigi_phot.synthetic import SyntheticConfig  # noqa: E402

#: plain frames as a small camera writes them, half without a WCS, every third turned by 180 degrees
_PLAIN = dict(plain_fits_adu=True, no_wcs_fraction=0.5, flip_every=3, compress="none", n_variables=2)

CASES: dict[str, SyntheticConfig] = {
    # the dataset of the issue: 1024^2, ~2500 stars, 12 px jitter, 0.3 deg rotation
    "plain_1k": SyntheticConfig(seed=1201, n_frames=40, shape=(1024, 1024), n_stars=2500, n_nights=8, **_PLAIN),
    # any rotation and scale differences of +-3%
    "any_rotation": SyntheticConfig(seed=1202, n_frames=30, shape=(1024, 1024), n_stars=2000, n_nights=6,
                                    rotation_deg=180.0, scale_change_frac=0.03, **_PLAIN),
    # pointing offsets up to half the frame from the reference's (each frame within +-256 px)
    "large_offsets": SyntheticConfig(seed=1203, n_frames=30, shape=(1024, 1024), n_stars=2500, n_nights=6,
                                     jitter_pix=256.0, **_PLAIN),
    # a sparse field: 512x512 with about 50 stars
    "sparse": SyntheticConfig(seed=1204, n_frames=30, shape=(512, 512), n_stars=50, n_nights=6, bad_column=150,
                              mag_faint=19.0, **_PLAIN),
    # seeing 3-5" at 0.389"/px (FWHM 8-13 px)
    "poor_seeing": SyntheticConfig(seed=1205, n_frames=30, shape=(1024, 1024), n_stars=2500, n_nights=6,
                                   seeing_arcsec=(3.0, 5.0), **_PLAIN),
    # undersampled: 1.6"/px with seeing 1.5-3" (FWHM 0.9-1.9 px), a wider field
    "undersampled": SyntheticConfig(seed=1206, n_frames=30, shape=(1024, 1024), n_stars=2500, n_nights=6,
                                    pixel_scale_arcsec=1.6, seeing_arcsec=(1.5, 3.0), **_PLAIN),
    # LCO-like frames (electrons, BPM, WCS on every frame), crowded
    "lco_crowded": SyntheticConfig(seed=1207, n_frames=20, shape=(1024, 1024), n_stars=6000, n_nights=5,
                                   compress="mixed"),
    # a 9600x6400 frame with 50,000 stars, half without a WCS, one turned
    "qhy_large": SyntheticConfig(seed=1208, n_frames=4, shape=(6400, 9600), n_stars=50000, n_nights=1,
                                 bad_column=2900, **_PLAIN),
}


def _dataset(name: str, cfg: SyntheticConfig) -> Path:
    from luigi_phot.synthetic import generate_dataset

    red = CACHE / name
    stamp = red / ".complete"
    key = json.dumps(cfg.to_meta(), sort_keys=True, default=str)
    if stamp.exists() and stamp.read_text() == key:
        return red
    t = time.perf_counter()
    generate_dataset(red, cfg, overwrite=True)
    stamp.write_text(key)
    print(f"  generated {name}: {cfg.n_frames} frames {cfg.shape[1]}x{cfg.shape[0]} in "
          f"{time.perf_counter() - t:.0f} s", flush=True)
    return red


def _true_map(truth, ref_name: str, image: str):
    """Reference pixel -> frame pixel, the truth."""
    from luigi_phot.synthetic import true_frame_wcs

    w_ref, w_frm = true_frame_wcs(truth, ref_name), true_frame_wcs(truth, image)

    def apply(xy):
        world = w_ref.wcs_pix2world(xy, 0)
        return w_frm.wcs_world2pix(world, 0)
    return apply


def _astroalign_refined(t, ref_xy, points, frame_shape, settings, label, fit_stars):
    """An astroalign similarity refined, checked and fitted on the catalogue stars like ours."""
    from scipy.spatial import cKDTree

    from luigi_phot.photometry.alignment import AlignmentError, _acceptance, _apply, _precise_fit, _refine

    frame_xy = points.xy
    m, rms, n, i, j = _refine(t.params[:2], ref_xy, frame_xy, cKDTree(frame_xy))
    radius = float(np.max(np.hypot(*(_apply(m, ref_xy[i]) - frame_xy[j]).T))) if n else 4.0
    refused = _acceptance(m, rms, n, radius, ref_xy, frame_xy, frame_shape, settings.min_matched_stars,
                          settings.max_alignment_rms_pix)
    if refused:
        raise AlignmentError(f"{label}: {refused}")
    return _precise_fit(m, rms, i, j, ref_xy, frame_xy, fit_stars)[0]


def _astroalign_solution(ref_xy, points, frame_shape, settings, fit_stars):
    """astroalign on the same star lists as ours."""
    import astroalign

    from luigi_phot.photometry.alignment import AlignmentError

    try:
        t, _ = astroalign.find_transform(ref_xy, points.xy, max_control_points=50)
    except Exception as exc:  # MaxIterError, ValueError
        raise AlignmentError(f"astroalign: {type(exc).__name__}: {exc}") from None
    return _astroalign_refined(t, ref_xy, points, frame_shape, settings, "astroalign", fit_stars)


def _astroalign_pixels_solution(ref_data, frame_data, ref_xy, points, settings, fit_stars):
    """astroalign on the pixels, as issue 12 tried it (its own detection at 5 sigma, 60
    control points), then refined on our star lists the same way."""
    import astroalign

    from luigi_phot.photometry.alignment import AlignmentError

    try:
        t, _ = astroalign.find_transform(ref_data, frame_data, detection_sigma=5, max_control_points=60)
    except Exception as exc:  # MaxIterError, ValueError
        raise AlignmentError(f"astroalign (pixels): {type(exc).__name__}: {exc}") from None
    return _astroalign_refined(t, ref_xy, points, frame_data.shape, settings, "astroalign (pixels)", fit_stars)


def run_case(name: str, cfg: SyntheticConfig, with_astroalign: bool) -> dict:
    from astropy.table import Table

    from luigi_phot.config import load_reduction_config
    from luigi_phot.photometry.alignment import AlignmentError, FitStars
    from luigi_phot.photometry.background import sky_mesh
    from luigi_phot.photometry.catalogue import build_catalogue, choose_reference
    from luigi_phot.photometry.frames import list_frames, load_frame
    from luigi_phot.photometry.detection import alignment_control_points
    from luigi_phot.photometry.measure import MeasureSettings, align_to_catalogue

    red = _dataset(name, cfg)
    truth = Table.read(red / "synthetic_truth.ecsv", format="ascii.ecsv")
    rc = load_reduction_config(red / "reduction_config.yaml", check_tom_file=False)
    settings = MeasureSettings.from_config(rc.photometry)
    t0 = time.perf_counter()
    choice = choose_reference(list_frames(red), rc.camera, rc.target.ra_deg, rc.target.dec_deg)
    t_choose = time.perf_counter() - t0
    seeing = {str(r["image"]): float(r["seeing_arcsec"]) for r in truth}
    ref_name = choice.path.name
    t0 = time.perf_counter()
    cat = build_catalogue(choice.load(rc.camera), rc.target.ra_deg, rc.target.dec_deg,
                          rc.photometry, key="benchmark")
    t_cat = time.perf_counter() - t0
    rows = cat.alignment_stars(800)
    ref_xy = np.column_stack([cat.stars["x_ref"][rows], cat.stars["y_ref"][rows]])
    ref_data = load_frame(choice.path, rc.camera).data_e if with_astroalign else None
    frames = []
    for r in truth:
        image = str(r["image"])
        frame = load_frame(red / image, rc.camera)
        ny, nx = frame.data_e.shape
        t0 = time.perf_counter()
        mesh = sky_mesh(frame.data_e, frame.pixel_flags, box=128)
        points = alignment_control_points(frame.data_e, frame.pixel_flags, mesh, float(np.median(mesh.sigma)))
        fwhm = points.fwhm_pix
        fit_stars = FitStars(~np.asarray(cat.stars["saturated_ref"])[rows], ~points.saturated, points.precise)
        t_detect = time.perf_counter() - t0
        true = _true_map(truth, ref_name, image)
        on = true(ref_xy)
        on = (on[:, 0] >= 0) & (on[:, 0] < nx) & (on[:, 1] >= 0) & (on[:, 1] < ny)
        row = {"image": image, "has_wcs": bool(r["has_header_wcs"]), "flipped": bool(r["flipped"]),
               "rotation_deg": float(r["rotation_deg"]), "seeing_arcsec": float(r["seeing_arcsec"]),
               "fwhm_ratio": float(fwhm / float(r["fwhm_pix"])) if np.isfinite(fwhm) else None,
               "detect_s": round(t_detect, 3)}
        solvers = [("pipeline", lambda: align_to_catalogue(frame.info, cat, points, settings).matrix)]
        if with_astroalign:
            solvers.append(("astroalign", lambda: _astroalign_solution(ref_xy, points, (ny, nx), settings, fit_stars)))
            solvers.append(("astroalign_pixels", lambda: _astroalign_pixels_solution(ref_data, frame.data_e, ref_xy,
                                                                                     points, settings, fit_stars)))
        for label, solve in solvers:
            t0 = time.perf_counter()
            try:
                m = solve()
                pred = ref_xy[on] @ m[:, :2].T + m[:, 2]
                err = np.hypot(*(pred - true(ref_xy[on])).T)
                rms = float(np.sqrt(np.mean(err ** 2)))
                row[label] = {"ok": rms <= 1.0, "rms_truth_pix": rms,
                              "reason": None if rms <= 1.0 else f"wrong solution: {rms:.1f} px from the truth"}
            except AlignmentError as exc:
                row[label] = {"ok": False, "rms_truth_pix": None, "reason": str(exc)}
            row[label]["seconds"] = round(time.perf_counter() - t0 + t_detect, 3)
        frames.append(row)
    seeings = np.array(list(seeing.values()))
    return {"case": name, "n_frames": len(frames), "shape": list(cfg.shape), "n_stars": cfg.n_stars,
            "reference": ref_name, "reference_seeing_arcsec": seeing[ref_name],
            "median_seeing_arcsec": float(np.median(seeings)), "reference_reason": choice.reason,
            "choose_reference_s": round(t_choose, 2), "catalogue_s": round(t_cat, 2), "frames": frames}


def _summary(results: list[dict], label: str) -> dict:
    rows = [(c["case"], f) for c in results for f in c["frames"] if label in f]
    if not rows:
        return {}
    ok = [f[label]["rms_truth_pix"] for _, f in rows if f[label]["ok"]]
    wrong = [(c, f) for c, f in rows if f[label]["rms_truth_pix"] is not None and not f[label]["ok"]]
    return {"frames": len(rows), "aligned": len(ok), "success_rate": len(ok) / len(rows),
            "wrong_solutions": len(wrong),
            "median_rms_truth_pix": float(np.median(ok)) if ok else None,
            "p95_rms_truth_pix": float(np.percentile(ok, 95)) if ok else None,
            "worst_rms_truth_pix": float(np.max(ok)) if ok else None,
            "median_seconds": float(np.median([f[label]["seconds"] for _, f in rows])),
            "worst_seconds": float(np.max([f[label]["seconds"] for _, f in rows])),
            "failures": [f"{c}/{f['image']}: {f[label]['reason']}" for c, f in rows if not f[label]["ok"]]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated, of: " + ", ".join(CASES))
    p.add_argument("--astroalign", action="store_true", help="also run astroalign on the same star lists")
    p.add_argument("--out", type=Path, default=RESULTS / "alignment.json")
    args = p.parse_args(argv)
    CACHE.mkdir(parents=True, exist_ok=True)
    results = []
    t_all = time.perf_counter()
    for name in args.cases.split(","):
        t = time.perf_counter()
        res = run_case(name, CASES[name], args.astroalign)
        results.append(res)
        labels = ["pipeline"] + (["astroalign", "astroalign_pixels"] if args.astroalign else [])
        figs = "; ".join(
            f"{lb} {s['aligned']}/{s['frames']} median {s['median_rms_truth_pix'] or float('nan'):.3f} "
            f"worst {s['worst_rms_truth_pix'] or float('nan'):.3f} px"
            for lb in labels for s in [_summary([res], lb)])
        ratios = [f["fwhm_ratio"] for f in res["frames"] if f["fwhm_ratio"]]
        print(f"{name:14s} {figs}; FWHM/true {min(ratios):.3f}-{max(ratios):.3f}; reference seeing "
              f"{res['reference_seeing_arcsec']:.2f}\" (median {res['median_seeing_arcsec']:.2f}\"); "
              f"{time.perf_counter() - t:.0f} s", flush=True)
    out = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                       "load_1min": os.getloadavg()[0]},
           "elapsed_s": round(time.perf_counter() - t_all, 1),
           "summary": {lb: _summary(results, lb) for lb in ("pipeline", "astroalign", "astroalign_pixels")
                       if _summary(results, lb)},
           "cases": results}
    for lb, s in out["summary"].items():
        print(f"\n{lb}: {s['aligned']}/{s['frames']} aligned ({100 * s['success_rate']:.1f}%), "
              f"{s['wrong_solutions']} wrong; rms against truth median {s['median_rms_truth_pix']:.3f} px, "
              f"95% {s['p95_rms_truth_pix']:.3f}, worst {s['worst_rms_truth_pix']:.3f} px; "
              f"time a frame (detection + alignment) median {s['median_seconds']:.2f} s, "
              f"worst {s['worst_seconds']:.2f} s")
        for line in s["failures"]:
            print(f"  failed: {line}")
    ratios = [f["fwhm_ratio"] for c in results for f in c["frames"] if f["fwhm_ratio"]]
    out["fwhm_ratio_range"] = [min(ratios), max(ratios)]
    print(f"\nframe FWHM (star-like peaks) / true: {min(ratios):.3f} to {max(ratios):.3f}; "
          f"references no worse than the median seeing: "
          f"{sum(c['reference_seeing_arcsec'] <= c['median_seeing_arcsec'] for c in results)}/{len(results)}")
    print(f"total {out['elapsed_s']:.0f} s (load average {out['machine']['load_1min']:.1f} at the end)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
