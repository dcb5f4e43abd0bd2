"""A new reference frame calibrated against the old one, so that magnitudes stay put.

Light-curve fluxes are electrons per second as the reference frame saw them in
the aperture (``lightcurve.py``), and magnitudes are ``zero_point - 2.5 log10(flux)``.
When the reference changes (its frame deleted, replaced, or the catalogue built
again) the new reference may have seen the field through more cloud, at another
airmass or in other seeing, and every magnitude would jump by that difference.

:func:`calibrate_reference_change` measures it: the stars of the old and the new
catalogue are matched by sky position (each catalogue's WCS; a common shift
between the two is voted first), and the ratio of their reference fluxes per
second, each times the fraction of a star's light its reference puts in the
aperture (from its PSF), is the ratio of the two flux scales. Its logarithm,
``2.5 log10(ratio)``, added to the zero point keeps the magnitudes where they were.

When both reference frames were measured against the old catalogue (the old
reference, and the new one while it was an ordinary frame), their measured
aperture fluxes of the same stars give that ratio directly, with no PSF model
in between: :func:`calibrate_on_measurements` (the better of the two).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.stats import mad_std

from .alignment import _voted_shift
from .catalogue import Catalogue
from .psf import MoffatPSF

__all__ = ["ReferenceCalibration", "calibrate_reference_change", "calibrate_on_measurements", "aperture_fraction"]


@dataclass(frozen=True)
class ReferenceCalibration:
    offset_mag: float        # 2.5 log10(new scale / old scale): add to the zero point
    offset_err_mag: float
    n_stars: int             # stars matched and used


def aperture_fraction(psf: MoffatPSF, radius_pix: float) -> float:
    """Fraction of a star's light inside a circular aperture (circularised Moffat)."""
    return float(1.0 - (1.0 + (radius_pix / psf.alpha) ** 2) ** (1.0 - psf.beta))


def _aperture_pix(cat: Catalogue, photometry) -> float:
    if photometry.aperture_fwhm_multiple:
        return photometry.aperture_fwhm_multiple * cat.psf.fwhm_pix
    return photometry.aperture_arcsec / cat.pixel_scale_arcsec


def _bright(cat: Catalogue, enough: int) -> np.ndarray:
    """Rows of well-measured stars: detected, unsaturated, S/N > 20; only the isolated
    ones when there are `enough` of those (a crowded field has few)."""
    s = cat.stars
    flux = np.asarray(s["flux_ref"], float)
    good = (np.asarray(s["detected"]) & ~np.asarray(s["saturated_ref"]) & np.isfinite(flux) & (flux > 0)
            & (np.asarray(s["snr_ref"], float) > 20))
    single = good & np.asarray(s["isolated"])
    return np.flatnonzero(single if single.sum() >= enough else good)


def calibrate_reference_change(old: Catalogue, new: Catalogue, photometry, min_stars: int = 10,
                               max_shift_arcsec: float = 10.0) -> ReferenceCalibration:
    """The offset to add to the zero point so that magnitudes on `new`'s scale equal
    those on `old`'s. Raises ValueError (saying why) when fewer than `min_stars`
    stars can be matched."""
    from scipy.spatial import cKDTree

    o, n = _bright(old, 3 * min_stars), _bright(new, 3 * min_stars)
    if o.size < min_stars or n.size < min_stars:
        raise ValueError(f"too few bright stars ({o.size} on the old reference, {n.size} on the new)")
    world = np.column_stack([np.asarray(old.stars["ra"], float)[o], np.asarray(old.stars["dec"], float)[o]])
    pred = new.wcs.all_world2pix(world, 0)
    new_xy = np.column_stack([np.asarray(new.stars["x_ref"], float)[n], np.asarray(new.stars["y_ref"], float)[n]])
    ok = np.isfinite(pred).all(axis=1)
    pred, o = pred[ok], o[ok]
    shift, votes = _voted_shift(pred, new_xy, radius=max(20.0, max_shift_arcsec / new.pixel_scale_arcsec))
    if shift is None or votes < min_stars:
        raise ValueError("the two catalogues' stars do not match by sky position")
    d, j = cKDTree(new_xy).query(pred + shift, distance_upper_bound=max(1.5, 0.5 * new.psf.fwhm_pix))
    hit = np.isfinite(d)
    if hit.sum() < min_stars:
        raise ValueError(f"only {int(hit.sum())} stars matched by sky position")
    rate_old = np.asarray(old.stars["flux_ref"], float)[o[hit]] / old.exptime_s
    rate_new = np.asarray(new.stars["flux_ref"], float)[n[j[hit]]] / new.exptime_s
    f_old = aperture_fraction(old.psf, _aperture_pix(old, photometry))
    f_new = aperture_fraction(new.psf, _aperture_pix(new, photometry))
    return _offset(np.log(rate_new * f_new / (rate_old * f_old)))


def calibrate_on_measurements(old: Catalogue, old_ref: tuple[np.ndarray, np.ndarray, float],
                              new_ref: tuple[np.ndarray, np.ndarray, float],
                              min_stars: int = 10) -> ReferenceCalibration:
    """The same offset from the two reference frames' measurements against the `old`
    catalogue: each a (flux [e-], flags, exposure [s]) per catalogue star. Stars free
    of flags on both, well measured on the old reference, are used. Raises
    ValueError when fewer than `min_stars` are."""
    (f_old, g_old, t_old), (f_new, g_new, t_new) = old_ref, new_ref
    rows = _bright(old, 3 * min_stars)
    rows = rows[(g_old[rows] == 0) & (g_new[rows] == 0) & (f_old[rows] > 0) & (f_new[rows] > 0)]
    if rows.size < min_stars:
        raise ValueError(f"only {rows.size} stars measured well on both")
    return _offset(np.log((f_new[rows] / t_new) / (f_old[rows] / t_old)))


def _offset(log_ratio: np.ndarray) -> ReferenceCalibration:
    """Clipped mean of ln(new/old) as a magnitude offset."""
    med = np.median(log_ratio)
    mad = mad_std(log_ratio)
    keep = np.abs(log_ratio - med) <= max(3 * mad, 0.02)   # variables and blends out
    used = log_ratio[keep]
    k = 2.5 / np.log(10)
    return ReferenceCalibration(offset_mag=float(k * np.mean(used)),
                                offset_err_mag=float(k * np.std(used) / np.sqrt(max(used.size - 1, 1))),
                                n_stars=int(used.size))
