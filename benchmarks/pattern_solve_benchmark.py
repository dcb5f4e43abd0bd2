#!/usr/bin/env python
"""A reference frame without a WCS solved against a catalogue: the star-pattern matcher
of astrometry.solve_by_pattern (alignment.match_star_lists) against astroalign.

The generator's fields (crowded 600x600, sparse 512x512 with 60 stars, 1.9"/px, a
1024x1024 bulge field) seen by a frame pointed up to a third of the frame from the
target, at any rotation or mirrored, its scale 5% off the nominal one; the catalogue
in another band (magnitudes scattered by 0.7 mag), missing 30% of the stars, the
detections with 25 defects among the brightest. Both matchers' transforms are refined
by the same refine_wcs; a solution is right when it puts the target within 0.5 px of
the truth. Needs astroalign (``pip install -e .[compare]``).

    python benchmarks/pattern_solve_benchmark.py [--trials 8]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from luigi_phot.photometry import astrometry as AS  # noqa: E402
from luigi_phot.synthetic import SyntheticConfig  # noqa: E402
from luigi_phot.synthetic.plan import _make_plan  # noqa: E402

FIELDS = {  # name: (seed, shape, stars, pixel scale, detection limit [mag])
    "crowded 600x600": (41, (600, 600), 1500, 0.389, 19.5),
    "sparse 512x512": (42, (512, 512), 60, 0.389, 21.0),
    "1.9\"/px 600x600": (43, (600, 600), 3000, 1.9, 18.5),
    "bulge 1024x1024": (44, (1024, 1024), 8000, 0.389, 19.0),
}


def _astroalign_solve(det_xy, stars, ra, dec, scale, shape, fwhm, n_control=60):
    """solve_by_pattern as issue 11 wrote it, with astroalign (both parities tried)."""
    import astroalign

    ny, nx = shape
    half = 0.5 * math.hypot(nx, ny)
    for parity in (-1, 1):
        guess = AS._tangent_wcs(ra, dec, scale, shape, parity)
        px, py = guess.all_world2pix(stars.ra_deg, stars.dec_deg, 0)
        near = np.flatnonzero(np.hypot(px - (nx - 1) / 2, py - (ny - 1) / 2) <= half)
        near = near[np.argsort(stars.mag[near], kind="stable")]
        n_cat = min(near.size, 3 * n_control)
        n_det = min(len(det_xy), max(int(n_cat * nx * ny / (math.pi * half * half)), n_control))
        try:
            t, _ = astroalign.find_transform(np.column_stack([px[near[:n_cat]], py[near[:n_cat]]]),
                                             det_xy[:n_det], max_control_points=n_control)
        except Exception:
            continue
        if not 0.8 <= t.scale <= 1.25:
            continue
        start = AS.compose_wcs(guess, np.linalg.inv(np.vstack([t.params[:2], [0, 0, 1]])), shape)
        sol = AS.refine_wcs(start, det_xy, stars, shape, fwhm, search_radius_arcsec=3 * fwhm * scale)
        if sol is not None and sol.n_matched >= 8:
            return sol
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=8, help="frames per field")
    args = p.parse_args(argv)
    rng = np.random.default_rng(7)
    solvers = {"match_star_lists (pipeline)": AS.solve_by_pattern, "astroalign": _astroalign_solve}
    results = {k: [] for k in solvers}
    for field, (seed, shape, n_stars, scale, limit) in FIELDS.items():
        sky = _make_plan(SyntheticConfig(seed=seed, n_frames=2, n_nights=1, shape=shape, n_stars=n_stars,
                                          pixel_scale_arcsec=scale)).stars
        t = sky[np.asarray(sky["is_target"])][0]
        ra0, dec0 = float(t["ra_deg"]), float(t["dec_deg"])
        mag = np.asarray(sky["mag"], float)
        for trial in range(args.trials):
            rotation = float(rng.choice([0.3, 180.0, rng.uniform(0, 360)]))
            off = rng.uniform(0, 0.33) * shape[0] * scale / 3600
            angle = rng.uniform(0, 2 * np.pi)
            true = AS._tangent_wcs(ra0 + off * math.cos(angle) / math.cos(math.radians(dec0)),
                                   dec0 + off * math.sin(angle), scale * (1 + rng.uniform(-0.05, 0.05)), shape,
                                   1 if trial % 4 == 0 else -1, rotation_deg=rotation)
            x, y = true.all_world2pix(np.asarray(sky["ra_deg"]), np.asarray(sky["dec_deg"]), 0)
            on = (x > 2) & (x < shape[1] - 3) & (y > 2) & (y < shape[0] - 3) & (mag < limit)
            order = np.flatnonzero(on)[np.argsort(mag[on])]
            det = np.column_stack([x[order], y[order]]) + rng.normal(0, 0.05, (order.size, 2))
            det = np.insert(det, rng.integers(0, min(len(det), 60), 25), rng.uniform(0, shape[0], (25, 2)), axis=0)
            keep = (mag < limit + 0.5) & (rng.random(mag.size) > 0.3)
            cat = AS.ReferenceStars(np.asarray(sky["ra_deg"])[keep], np.asarray(sky["dec_deg"])[keep],
                                    mag[keep] + rng.normal(0, 0.7, keep.sum()), "benchmark catalogue", "mag")
            truth_xy = true.all_world2pix([[ra0, dec0]], 0)[0]
            for name, solve in solvers.items():
                t0 = time.perf_counter()
                sol = solve(det, cat, ra0, dec0, scale, shape, 3.0)
                seconds = time.perf_counter() - t0
                err = np.hypot(*(sol.wcs.all_world2pix([[ra0, dec0]], 0)[0] - truth_xy)) if sol else np.inf
                results[name].append((field, bool(err < 0.5), sol is not None and err >= 0.5, seconds))
    for name, rows in results.items():
        print(f"{name}: {sum(r[1] for r in rows)}/{len(rows)} solved, {sum(r[2] for r in rows)} wrong; "
              f"time median {np.median([r[3] for r in rows]):.2f} s, worst {max(r[3] for r in rows):.2f} s")
        for field in FIELDS:
            sel = [r for r in rows if r[0] == field]
            print(f"    {field}: {sum(r[1] for r in sel)}/{len(sel)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
