"""Figures of merit of a reduced dataset against known truth (synthetic data).

Used by the tests and by ``scripts/science_figures.py``; no Luigi here.

- :func:`target_figures`: fit measured flux = a * true flux + b over unflagged
  points, then the normalised residuals (residual / flux_err): their standard
  deviation, the largest, their correlation with seeing, the flagged fraction.
- :func:`constant_star_figures`: measured RMS / predicted RMS of constant stars
  in magnitude bins.
- :func:`time_figures`: mjd against truth, bjd_tdb against astropy's own
  light-travel-time correction.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from .photometry import flags as F

__all__ = ["TargetFigures", "target_figures", "constant_star_figures", "time_figures", "load_products"]


@dataclass
class TargetFigures:
    n_points: int
    n_flagged: int
    flagged_fraction: float
    slope: float
    offset: float
    std_norm_resid: float
    max_abs_norm_resid: float
    corr_with_fwhm: float
    median_rel_err: float

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def load_products(red_dir: Path):
    """(light curve, all-stars file path, truth table, stars truth) of a reduced synthetic dataset."""
    red_dir = Path(red_dir)
    lc_path = next(red_dir.glob("*_lc.ecsv"))
    lc = Table.read(lc_path, format="ascii.ecsv")
    all_stars = next((red_dir / "photometry").glob("*_all_stars.fits"))
    truth = Table.read(red_dir / "synthetic_truth.ecsv", format="ascii.ecsv")
    stars = Table.read(red_dir / "synthetic_stars.ecsv", format="ascii.ecsv")
    return lc, all_stars, truth, stars


def target_figures(lc: Table, truth: Table) -> TargetFigures:
    """Compare the target light curve with the truth table (matched by image name)."""
    t = {str(r["image"]): r for r in truth}
    rows = [i for i, name in enumerate(lc["image"]) if str(name) in t]
    flags = np.asarray(lc["flags"])[rows]
    flux = np.asarray(lc["flux"], float)[rows]
    err = np.asarray(lc["flux_err"], float)[rows]
    fwhm = np.asarray(lc["fwhm_arcsec"], float)[rows]
    # synthetic fields give the flux above the atmosphere; real-frame series the injected counts/s
    column = "target_flux_e_per_s" if "target_flux_e_per_s" in truth.colnames else "target_counts_per_s"
    true = np.array([t[str(lc["image"][i])][column] for i in rows], float)
    good = ((flags & F.SEVERE) == 0) & np.isfinite(flux) & np.isfinite(err) & (err > 0)
    n = int(good.sum())
    if n < 3:
        return TargetFigures(len(rows), int((~good).sum()), 1.0, np.nan, np.nan, np.nan, np.nan, np.nan, np.nan)
    w = 1.0 / err[good] ** 2
    a = np.column_stack([true[good], np.ones(n)])
    coef = np.linalg.lstsq(a * np.sqrt(w)[:, None], flux[good] * np.sqrt(w), rcond=None)[0]
    resid = (flux[good] - a @ coef) / err[good]
    corr = float(np.corrcoef(resid, fwhm[good])[0, 1]) if np.std(fwhm[good]) > 0 else np.nan
    return TargetFigures(
        n_points=len(rows), n_flagged=int((~good).sum()), flagged_fraction=float((~good).mean()),
        slope=float(coef[0]), offset=float(coef[1]),
        std_norm_resid=float(np.std(resid, ddof=2)), max_abs_norm_resid=float(np.max(np.abs(resid))),
        corr_with_fwhm=corr, median_rel_err=float(np.median(err[good] / np.abs(flux[good]))))


def constant_star_figures(all_stars_path: Path, stars_truth: Table | None = None, n_bins: int = 3,
                          min_snr: float = 5.0) -> list[dict]:
    """Measured RMS / predicted RMS (median flux error) of constant comparison stars in
    `n_bins` magnitude bins with equal numbers of stars, bright to faint. Known
    variables (from the truth) are left out when `stars_truth` is given."""
    with fits.open(all_stars_path) as h:
        st = Table(h["STARS"].data)
        flux = h["FLUX"].data.astype(float)
        err = h["FLUX_ERR"].data.astype(float)
        flg = h["FLAGS"].data
    good = ((flg & F.SEVERE) == 0) & np.isfinite(flux) & np.isfinite(err)
    sel = np.asarray(st["comparison"], bool) & ~np.asarray(st["is_target"], bool)
    if stars_truth is not None and "is_variable" in stars_truth.colnames:
        from scipy.spatial import cKDTree

        var = stars_truth[np.asarray(stars_truth["is_variable"], bool) | np.asarray(stars_truth["is_target"], bool)]
        if len(var):
            d, _ = cKDTree(np.column_stack([var["ra_deg"], var["dec_deg"]])).query(
                np.column_stack([st["ra"], st["dec"]]))
            sel &= d * 3600 > 3.0
    out = []
    rms = np.full(flux.shape[1], np.nan)
    pred = np.full(flux.shape[1], np.nan)
    for s in np.flatnonzero(sel):
        g = good[:, s]
        if g.sum() < 5:
            continue
        f = flux[g, s]
        e = err[g, s]
        w = 1 / e ** 2
        mean = np.sum(w * f) / np.sum(w)
        rms[s] = np.sqrt(np.sum((f - mean) ** 2) / (g.sum() - 1))
        pred[s] = np.sqrt(np.mean(e ** 2))
    ok = np.isfinite(rms) & np.isfinite(pred) & (np.asarray(st["mean_flux"]) / pred > min_snr)
    mags = np.asarray(st["mean_mag"], float)[ok]
    ratio = (rms / pred)[ok]
    order = np.argsort(mags)
    for k, part in enumerate(np.array_split(order, n_bins)):
        if part.size == 0:
            continue
        out.append({"bin": k, "mag_min": float(mags[part].min()), "mag_max": float(mags[part].max()),
                    "n_stars": int(part.size), "median_rms_ratio": float(np.median(ratio[part]))})
    return out


def time_figures(lc: Table, truth: Table, ra_deg: float, dec_deg: float, site) -> dict:
    """Largest |mjd - truth mjd_mid| in seconds, and largest |bjd_tdb - astropy| in seconds."""
    import astropy.units as u
    from astropy.coordinates import EarthLocation, SkyCoord
    from astropy.time import Time

    t = {str(r["image"]): r for r in truth}
    rows = [i for i, name in enumerate(lc["image"]) if str(name) in t and np.isfinite(lc["mjd"][i])]
    mjd = np.asarray(lc["mjd"], float)[rows]
    true_mid = np.array([t[str(lc["image"][i])]["mjd_mid"] for i in rows], float)
    loc = EarthLocation.from_geodetic(site[1] * u.deg, site[0] * u.deg, site[2] * u.m)
    tt = Time(true_mid, format="mjd", scale="utc", location=loc)
    ref = (tt.tdb + tt.light_travel_time(SkyCoord(ra_deg * u.deg, dec_deg * u.deg), kind="barycentric")).jd
    bjd = np.asarray(lc["bjd_tdb"], float)[rows]
    return {"max_mjd_error_s": float(np.max(np.abs(mjd - true_mid)) * 86400),
            "max_bjd_error_s": float(np.max(np.abs(bjd - ref)) * 86400)}
