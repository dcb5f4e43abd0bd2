"""The catalogue's numerical routines as they were before issue 14 made them faster,
kept verbatim (only their imports adapted) so that the tests can check that the faster
ones give the same catalogue: `find_peaks` (neighbour test on every candidate) and
`fit_fluxes` (LSQR over the pixels, np.unique/searchsorted rows)."""

from __future__ import annotations

import numpy as np

from luigi_phot.photometry.background import SkyMesh
from luigi_phot.photometry.detection import Peaks
from luigi_phot.photometry.psf import MoffatPSF


def _neighbour_offsets(width: int):
    return np.array([-width - 1, -width, -width + 1, -1, 1, width - 1, width, width + 1], dtype=np.int64)


def find_peaks(data: np.ndarray, pixel_flags: np.ndarray, mesh: SkyMesh, nsigma: float,
               smooth_sigma_pix: float | None = None, border: int = 3,
               max_peaks: int | None = None, saturated_bit: int = 2) -> Peaks:
    """Local maxima (in the 3x3 sense) higher than `nsigma` times the local noise above the
    local sky. With `smooth_sigma_pix`, detection runs on a Gaussian-smoothed copy
    (noise scaled accordingly); heights are always measured on `data`."""
    ny, nx = data.shape
    bad = (pixel_flags & ~np.uint8(saturated_bit)) != 0
    if smooth_sigma_pix:
        from scipy.ndimage import gaussian_filter

        img = data.copy()
        if bad.any():
            img[bad] = mesh.level_image(data.shape)[bad]
        img = gaussian_filter(img, smooth_sigma_pix, mode="nearest", truncate=3.0)
        noise_factor = 1.0 / (2.0 * np.sqrt(np.pi) * smooth_sigma_pix)
    else:
        img = data
        noise_factor = 1.0
    threshold_grid = mesh.level + nsigma * mesh.sigma * noise_factor
    with np.errstate(invalid="ignore"):
        cand = np.flatnonzero(img.ravel() > np.min(threshold_grid))
    if cand.size == 0:
        return Peaks(*(np.zeros(0, dtype=int),) * 2, np.zeros(0), np.zeros(0, dtype=bool))
    cy, cx = np.divmod(cand, nx)
    inner = (cx >= border) & (cx < nx - border) & (cy >= border) & (cy < ny - border)
    cand, cx, cy = cand[inner], cx[inner], cy[inner]
    flat = img.ravel()
    v = flat[cand]
    is_max = np.ones(cand.size, dtype=bool)
    for k, off in enumerate(_neighbour_offsets(nx)):
        nb = flat[cand + off]
        # ties: the earlier pixel in memory order wins, so a flat top gives one peak
        is_max &= (v > nb) if off > 0 else (v >= nb)
    cand, cx, cy, v = cand[is_max], cx[is_max], cy[is_max], v[is_max]
    level = mesh.level_at(cx, cy)
    sigma = mesh.sigma_at(cx, cy)
    keep = (v > level + nsigma * sigma * noise_factor) & ~bad.ravel()[cand]
    cand, cx, cy = cand[keep], cx[keep], cy[keep]
    height = data.ravel()[cand] - level[keep]
    sat = (pixel_flags.ravel()[cand] & saturated_bit) != 0
    order = np.argsort(-height, kind="stable")
    if max_peaks is not None:
        order = order[:max_peaks]
    return Peaks(cx[order], cy[order], height[order], sat[order])



def fit_fluxes(data: np.ndarray, variance: np.ndarray | float, x: np.ndarray, y: np.ndarray,
               psf: MoffatPSF, fit_radius_pix: float, pixel_ok: np.ndarray | None = None,
               model_radius_pix: np.ndarray | None = None, iter_lim: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Simultaneous PSF photometry at fixed positions on sky-subtracted `data`.

    The pixels fitted are those within `fit_radius_pix` of any star. Each star's
    unit-flux model is one column of a sparse design matrix, over the fitted pixels
    within its `model_radius_pix` (default: the fit radius; give bright stars more, so
    that their wings in a neighbour's pixels are theirs, not the neighbour's). All
    fluxes are solved together (weighted, LSQR). Returns (flux, flux_err) with errors
    from the diagonal of the normal matrix."""
    from scipy.sparse import csc_matrix
    from scipy.sparse.linalg import lsqr

    ny, nx = data.shape
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    n = x.size
    xi = np.rint(x).astype(np.int64)
    yi = np.rint(y).astype(np.int64)

    def disk_entries(rows, radius):
        h = int(np.ceil(radius))
        oy, ox = np.mgrid[-h: h + 1, -h: h + 1]
        disk = (ox * ox + oy * oy) <= radius ** 2
        ox, oy = ox[disk], oy[disk]
        px = xi[rows, None] + ox[None, :]
        py = yi[rows, None] + oy[None, :]
        inside = (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
        flat = np.where(inside, py * nx + px, 0)
        if pixel_ok is not None:
            inside &= pixel_ok.ravel()[flat]
        return px, py, flat, inside

    _, _, flat, inside = disk_entries(np.arange(n), fit_radius_pix)
    upix = np.unique(flat[inside])
    radius = np.full(n, float(fit_radius_pix)) if model_radius_pix is None else \
        np.maximum(np.asarray(model_radius_pix, float), fit_radius_pix)
    cols, rows, vals = [], [], []
    for r in np.unique(np.ceil(radius)):
        group = np.flatnonzero(np.ceil(radius) == r)
        for chunk in np.array_split(group, max(1, group.size * int(r * r * 3.2) // 3_000_000 + 1)):
            px, py, flat, inside = disk_entries(chunk, r)
            row = np.searchsorted(upix, flat)
            inside &= (row < upix.size) & (upix[np.minimum(row, upix.size - 1)] == flat)
            m = psf.pixel_values(px - x[chunk, None], py - y[chunk, None])
            cols.append(np.broadcast_to(chunk[:, None], flat.shape)[inside])
            rows.append(row[inside])
            vals.append(m[inside])
    col = np.concatenate(cols)
    row = np.concatenate(rows)
    val = np.concatenate(vals)
    var = variance.ravel()[upix] if isinstance(variance, np.ndarray) else np.full(upix.size, float(variance))
    good = np.isfinite(var) & (var > 0)
    wpix = np.where(good, 1.0 / np.sqrt(np.where(good, var, 1.0)), 0.0)
    b = np.nan_to_num(data.ravel()[upix].astype(np.float64)) * wpix
    a = csc_matrix((val * wpix[row], (row, col)), shape=(upix.size, n))
    sol = lsqr(a, b, atol=1e-7, btol=1e-7, iter_lim=iter_lim)
    flux = sol[0]
    diag = np.asarray(a.multiply(a).sum(axis=0)).ravel()
    with np.errstate(divide="ignore"):
        err = np.where(diag > 0, 1.0 / np.sqrt(diag), np.inf)
    flux = np.where(diag > 0, flux, np.nan)
    return flux, err
