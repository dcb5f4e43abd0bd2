"""The generator's own Moffat PSF and star renderer. It is kept apart from the pipeline's
(luigi_phot.photometry.psf) on purpose: the truth must not share the code it checks."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MoffatPSF:
    """Elliptical Moffat profile, normalised to unit integral over the plane.

    ``fwhm_pix`` is the geometric mean of the major and minor FWHM;
    ``ellipticity`` = 1 - b/a; ``angle_deg`` is the major axis measured from +x
    towards +y.
    """

    fwhm_pix: float
    beta: float
    ellipticity: float = 0.0
    angle_deg: float = 0.0

    @property
    def alpha_pix(self) -> float:
        return self.fwhm_pix / (2.0 * math.sqrt(2.0 ** (1.0 / self.beta) - 1.0))

    @property
    def axes_pix(self) -> tuple[float, float]:
        q = math.sqrt(1.0 - self.ellipticity)
        return self.alpha_pix / q, self.alpha_pix * q

    @property
    def peak_density(self) -> float:
        a, b = self.axes_pix
        return (self.beta - 1.0) / (math.pi * a * b)

    def evaluate(self, dx, dy) -> np.ndarray:
        """Surface density [fraction of the flux per pixel^2] at offsets (dx, dy) from the centre."""
        a, b = self.axes_pix
        c, s = math.cos(math.radians(self.angle_deg)), math.sin(math.radians(self.angle_deg))
        xr = (dx * c + dy * s) / a
        yr = (-dx * s + dy * c) / b
        return self.peak_density * (1.0 + xr * xr + yr * yr) ** (-self.beta)

    def enclosed_fraction(self, radius_pix) -> np.ndarray:
        """Fraction of the flux within a circle of this radius (exact when round;
        for ellipticity <= 0.1 the error is below 0.3%)."""
        r = np.asarray(radius_pix, dtype=float)
        return 1.0 - (1.0 + (r / self.alpha_pix) ** 2) ** (1.0 - self.beta)

    def radius_for_floor(self, flux, floor) -> np.ndarray:
        """Radius along the major axis beyond which flux * density < floor."""
        a, _ = self.axes_pix
        ratio = np.asarray(flux, dtype=float) * self.peak_density / floor
        with np.errstate(invalid="ignore", divide="ignore"):
            r = a * np.sqrt(np.maximum(ratio, 1.0) ** (1.0 / self.beta) - 1.0)
        return r

    def scaled(self, factor: float) -> "MoffatPSF":
        return dataclasses.replace(self, fwhm_pix=self.fwhm_pix * factor)


# Stamp radii are rounded up to this ladder so that stars share stamp shapes.
_RADIUS_LADDER = np.array([4, 6, 8, 11, 15, 20, 24, 32, 48, 64, 96, 128, 192, 256])


# Inside this radius stamps come from the pixel-integrated library; beyond it the
# Moffat is smooth on the pixel scale and is sampled at pixel centres.
_CORE_RADIUS = 24


# The library samples sub-pixel phase every 1/_OVERSAMPLE pixel and integrates each
# pixel with _OVERSAMPLE^2 sub-samples; phases in between are interpolated bilinearly,
# which keeps flux and centroid exact.
_OVERSAMPLE = 5


def _phase_library(psf: MoffatPSF, core: int) -> np.ndarray:
    """Pixel-integrated PSF stamps (2*core+1)^2 for every sub-pixel phase on the
    1/K grid: array [K+2, K+2, 2*core+1, 2*core+1] indexed by (qy - qmin, qx - qmin)."""
    k = _OVERSAMPLE
    m = (core + 1) * k
    n = m + k // 2
    fine = np.arange(-n, n + 1) / k
    dens = psf.evaluate(fine[None, :], fine[:, None])
    c = np.zeros((dens.shape[0] + 1, dens.shape[1] + 1))
    c[1:, 1:] = dens.cumsum(0).cumsum(1)
    integ = (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) / (k * k)  # index i <-> offset (i-m)/k
    qs = np.arange(-(k + 1) // 2, (k + 1) // 2 + 1)
    j = np.arange(-core, core + 1)
    idx = m + j[None, :] * k - qs[:, None]            # [nq, 2core+1]
    return integ[idx[:, None, :, None], idx[None, :, None, :]]


def render_moffat_stars(image: np.ndarray, x_pix, y_pix, flux, psf: MoffatPSF, *,
                        floor_e: float = 0.2, min_radius_pix: float = 0.0,
                        max_radius_pix: int = 128, radius_pix=None) -> np.ndarray:
    """Add Moffat stars to ``image`` (float64, modified in place and returned).

    ``x_pix, y_pix``: 0-based numpy centres; ``flux``: total flux of each star in
    the units of ``image`` (the integral over the infinite plane).  Each pixel
    value is the PSF integrated over the pixel (25 sub-samples per pixel,
    sub-pixel phase interpolated from a 1/5-pixel grid).  A star's stamp is a
    square of radius r around its nearest pixel, r the smallest of a fixed ladder
    where flux * PSF density falls below ``floor_e`` (at least ``min_radius_pix``,
    at most ``max_radius_pix``, or ``radius_pix`` when given); light beyond the
    stamp is dropped, not redistributed: ``flux * (1 - enclosed_fraction(r))``.
    """
    x = np.atleast_1d(np.asarray(x_pix, dtype=float))
    y = np.atleast_1d(np.asarray(y_pix, dtype=float))
    f = np.atleast_1d(np.asarray(flux, dtype=float))
    if x.size == 0:
        return image
    ladder = _RADIUS_LADDER[_RADIUS_LADDER <= max(max_radius_pix, _RADIUS_LADDER[0])]
    if radius_pix is None:
        need = np.maximum(psf.radius_for_floor(f, floor_e), min_radius_pix)
    else:
        need = np.broadcast_to(np.asarray(radius_pix, dtype=float), x.shape)
    r = ladder[np.minimum(np.searchsorted(ladder, need), ladder.size - 1)]
    ny, nx = image.shape
    ix = np.floor(x + 0.5).astype(np.int64)
    iy = np.floor(y + 0.5).astype(np.int64)
    keep = (ix + r >= 0) & (ix - r < nx) & (iy + r >= 0) & (iy - r < ny) & (f > 0)
    if not keep.any():
        return image
    x, y, f, r, ix, iy = x[keep], y[keep], f[keep], r[keep], ix[keep], iy[keep]
    k = _OVERSAMPLE
    qmin = -(k + 1) // 2
    gx, gy = (x - ix) * k, (y - iy) * k
    qx, qy = np.floor(gx).astype(np.int64), np.floor(gy).astype(np.int64)
    wx, wy = gx - qx, gy - qy
    core = int(min(_CORE_RADIUS, r.max()))
    lib = _phase_library(psf, core)

    order = np.lexsort((qx, qy, r))
    key = np.stack([r[order], qy[order], qx[order]], axis=1)
    starts = np.flatnonzero(np.r_[True, np.any(key[1:] != key[:-1], axis=1)])
    ends = np.r_[starts[1:], order.size]
    for s, e in zip(starts, ends):
        sel = order[s:e]
        rr, qyy, qxx = int(r[sel[0]]), int(qy[sel[0]]), int(qx[sel[0]])
        rc = min(rr, core)
        basis = lib[qyy - qmin:qyy - qmin + 2, qxx - qmin:qxx - qmin + 2,
                    core - rc:core + rc + 1, core - rc:core + rc + 1].reshape(4, -1)
        wxs, wys, fs = wx[sel], wy[sel], f[sel]
        weights = np.stack([(1 - wys) * (1 - wxs), (1 - wys) * wxs, wys * (1 - wxs), wys * wxs], axis=1)
        stamps = ((weights * fs[:, None]) @ basis).reshape(sel.size, 2 * rc + 1, 2 * rc + 1)
        if rr > core:
            j = np.arange(-rr, rr + 1, dtype=float)
            dx = j[None, None, :] - (x[sel] - ix[sel])[:, None, None]
            dy = j[None, :, None] - (y[sel] - iy[sel])[:, None, None]
            full = psf.evaluate(dx, dy) * fs[:, None, None]
            full[:, rr - core:rr + core + 1, rr - core:rr + core + 1] = stamps
            stamps = full
        _add_stamps(image, ix[sel], iy[sel], stamps, rr)
    return image


def _add_stamps(image: np.ndarray, ix, iy, stamps: np.ndarray, r: int) -> None:
    # A loop of slice additions is ~8x faster here than one np.bincount over all
    # stamp pixels (measured: 12.5M stamp pixels on a 4096^2 frame, 0.1 s vs 0.85 s),
    # because each stamp is a contiguous block and no index arrays are built.
    ny, nx = image.shape
    size = 2 * r + 1
    x0, y0 = ix - r, iy - r
    xa, ya = np.maximum(x0, 0), np.maximum(y0, 0)
    xb, yb = np.minimum(x0 + size, nx), np.minimum(y0 + size, ny)
    inside = ((xa == x0) & (ya == y0) & (xb == x0 + size) & (yb == y0 + size)).tolist()
    for k, (a, b, whole) in enumerate(zip(y0.tolist(), x0.tolist(), inside)):
        if whole:
            image[a:a + size, b:b + size] += stamps[k]
        else:
            p, q, s, t = int(ya[k]), int(yb[k]), int(xa[k]), int(xb[k])
            if p < q and s < t:
                image[p:q, s:t] += stamps[k, p - a:q - a, s - b:t - b]
