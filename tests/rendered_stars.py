"""Stars drawn for the module tests with astropy's own Moffat profile
(astropy.modeling.functional_models.Moffat2D), integrated over each pixel by
sub-sampling: a reference independent of the pipeline's MoffatPSF (psf.py) and of
the synthetic generator's renderer."""

from __future__ import annotations

import numpy as np
from astropy.modeling.functional_models import Moffat2D


def moffat_gamma(fwhm_pix: float, beta: float) -> float:
    """astropy's Moffat core width gamma for a profile of FWHM `fwhm_pix` and power `beta`."""
    return fwhm_pix / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))


def moffat_enclosed_fraction(r_pix, fwhm_pix: float, beta: float):
    """Fraction of a circular Moffat's light within radius r_pix (analytic)."""
    gamma = moffat_gamma(fwhm_pix, beta)
    return 1.0 - (1.0 + (np.asarray(r_pix, float) / gamma) ** 2) ** (1.0 - beta)


def add_moffat_stars(image: np.ndarray, x, y, flux, fwhm_pix: float, beta: float,
                     half_pix: int = 25, oversample: int = 9) -> np.ndarray:
    """Add circular Moffat stars of total flux `flux` (beyond `half_pix` the wings are cut)
    at 0-based pixel positions (x, y), each pixel's value the mean of the profile over
    oversample x oversample sub-pixels. Returns `image` (modified in place)."""
    gamma = moffat_gamma(fwhm_pix, beta)
    amplitude_per_flux = (beta - 1.0) / (np.pi * gamma ** 2)
    sub = (np.arange(oversample) + 0.5) / oversample - 0.5
    ny, nx = image.shape
    for xs, ys, f in zip(np.atleast_1d(x), np.atleast_1d(y), np.atleast_1d(flux)):
        ix, iy = int(np.rint(xs)), int(np.rint(ys))
        x0, x1 = max(ix - half_pix, 0), min(ix + half_pix + 1, nx)
        y0, y1 = max(iy - half_pix, 0), min(iy + half_pix + 1, ny)
        if x0 >= x1 or y0 >= y1:
            continue
        px = np.arange(x0, x1)[None, :, None, None] + sub[None, None, None, :]
        py = np.arange(y0, y1)[:, None, None, None] + sub[None, None, :, None]
        values = Moffat2D.evaluate(px, py, f * amplitude_per_flux, xs, ys, gamma, beta)
        image[y0:y1, x0:x1] += values.mean(axis=(2, 3))
    return image
