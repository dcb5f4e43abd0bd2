"""Finding stars and cosmic rays.

- :func:`find_peaks`: local maxima above a threshold of the local sky noise,
  optionally on a Gaussian-smoothed copy (matched filter, used on the
  reference frame). Thresholding first keeps it fast on 4k and 10k frames.
- :func:`windowed_centroids`: Gaussian-windowed centroids (the XWIN recipe),
  vectorised over all sources.
- :func:`find_cosmic_rays`: pixels sharper than any star can be, given the
  frame's PSF: the largest second difference across a pixel, relative to its
  height above sky, is compared with what the PSF allows.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np

from .background import SkyMesh

__all__ = ["Peaks", "find_peaks", "windowed_centroids", "peak_sharpness", "not_cosmic", "find_cosmic_rays",
           "star_sharpness_limit", "quick_fwhm", "PeakShapes", "peak_shapes", "star_like", "seeing_fwhm", "star_peaks",
           "flag_flat_maximum", "centroid_window_sigma", "ControlPoints", "alignment_control_points"]


@dataclass
class Peaks:
    """Local maxima, brightest first. Pixel coordinates are 0-based (numpy) indices."""

    x: np.ndarray          # int column index
    y: np.ndarray          # int row index
    height: np.ndarray     # value above the local sky (same units as the data)
    saturated: np.ndarray  # bool

    def __len__(self) -> int:
        return len(self.x)

    def take(self, idx) -> "Peaks":
        return Peaks(self.x[idx], self.y[idx], self.height[idx], self.saturated[idx])


def _neighbour_offsets(width: int):
    return np.array([-width - 1, -width, -width + 1, -1, 1, width - 1, width, width + 1], dtype=np.int64)


def find_peaks(data: np.ndarray, pixel_flags: np.ndarray, mesh: SkyMesh, nsigma: float,
               smooth_sigma_pix: float | None = None, border: int = 3,
               max_peaks: int | None = None, saturated_bit: int = 2,
               sky_image: np.ndarray | None = None) -> Peaks:
    """Local maxima (in the 3x3 sense) higher than `nsigma` times the local noise above the
    local sky. With `smooth_sigma_pix`, detection runs on a Gaussian-smoothed copy
    (noise scaled accordingly); heights are always measured on `data`. `sky_image` is
    ``mesh.level_image(data.shape)`` when the caller has it (it fills masked pixels
    before smoothing)."""
    ny, nx = data.shape
    bad = (pixel_flags & ~np.uint8(saturated_bit)) != 0
    if smooth_sigma_pix:
        from scipy.ndimage import gaussian_filter

        img = data.copy()
        if bad.any():
            img[bad] = (mesh.level_image(data.shape) if sky_image is None else sky_image)[bad]
        img = gaussian_filter(img, smooth_sigma_pix, mode="nearest", truncate=3.0)
        noise_factor = 1.0 / (2.0 * np.sqrt(np.pi) * smooth_sigma_pix)
    else:
        img = data
        noise_factor = 1.0
    threshold_grid = mesh.level + nsigma * mesh.sigma * noise_factor
    with np.errstate(invalid="ignore"):
        above = img > np.min(threshold_grid)
    cand, cx, cy = _local_maxima(img, above, max(int(border), 1))
    if cand.size == 0:
        return Peaks(*(np.zeros(0, dtype=int),) * 2, np.zeros(0), np.zeros(0, dtype=bool))
    level = mesh.level_at(cx, cy)
    sigma = mesh.sigma_at(cx, cy)
    keep = (img.ravel()[cand] > level + nsigma * sigma * noise_factor) & ~bad.ravel()[cand]
    cand, cx, cy = cand[keep], cx[keep], cy[keep]
    height = data.ravel()[cand] - level[keep]
    sat = (pixel_flags.ravel()[cand] & saturated_bit) != 0
    order = np.argsort(-height, kind="stable")
    if max_peaks is not None:
        order = order[:max_peaks]
    return Peaks(cx[order], cy[order], height[order], sat[order])


def _local_maxima(img: np.ndarray, above: np.ndarray, border: int):
    """(flat index, x, y) in memory order of the pixels of `above` at least `border` (>= 1)
    pixels from the edges that are 3x3 local maxima of `img`; of equal neighbours, the
    earlier pixel in memory order wins, so a flat top gives one peak. Few candidates
    (a frame's stars) are compared with their neighbours one by one; many (a smoothed
    crowded field) by whole shifted images, which gives the same answer faster."""
    ny, nx = img.shape
    n_above = int(np.count_nonzero(above))
    if n_above < 0.02 * img.size:
        cand = np.flatnonzero(above)
        cy, cx = np.divmod(cand, nx)
        inner = (cx >= border) & (cx < nx - border) & (cy >= border) & (cy < ny - border)
        cand, cx, cy = cand[inner], cx[inner], cy[inner]
        flat = img.ravel()
        v = flat[cand]
        is_max = np.ones(cand.size, dtype=bool)
        for off in _neighbour_offsets(nx):
            nb = flat[cand + off]
            is_max &= (v > nb) if off > 0 else (v >= nb)
        return cand[is_max], cx[is_max], cy[is_max]
    core = img[border: ny - border, border: nx - border]
    is_max = above[border: ny - border, border: nx - border].copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == 0 and dx == 0:
                continue
            nb = img[border + dy: ny - border + dy, border + dx: nx - border + dx]
            is_max &= (core > nb) if (dy, dx) > (0, 0) else (core >= nb)
    cy, cx = np.nonzero(is_max)
    cy += border
    cx += border
    return cy * nx + cx, cx, cy


def windowed_centroids(data: np.ndarray, x: np.ndarray, y: np.ndarray, sky: np.ndarray | float,
                       sigma_pix: float, iterations: int = 6,
                       chunk_stars: int = 4096) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian-windowed centroids (window sigma `sigma_pix`), iterated from (x, y).

    Returns (x, y, converged). A source whose centroid wanders more than 1.5 px from
    its start keeps its start position and converged=False. Sources are taken
    `chunk_stars` at a time (each on its own: the same numbers), which keeps the
    temporary stamps small enough to be reused instead of paged in afresh.
    """
    x0 = np.asarray(x, dtype=np.float64)
    y0 = np.asarray(y, dtype=np.float64)
    n = x0.size
    if n == 0:
        return x0.copy(), y0.copy(), np.zeros(0, dtype=bool)
    sky = np.broadcast_to(np.asarray(sky, dtype=np.float64), (n,))
    xc, yc = x0.copy(), y0.copy()
    for start in range(0, n, chunk_stars):
        part = slice(start, start + chunk_stars)
        xc[part], yc[part] = _windowed_centroid_steps(data, x0[part], y0[part], sky[part], sigma_pix, iterations)
    converged = (np.hypot(xc - x0, yc - y0) < 1.5) & np.isfinite(xc) & np.isfinite(yc)
    xc = np.where(converged, xc, x0)
    yc = np.where(converged, yc, y0)
    return xc, yc, converged


def _windowed_centroid_steps(data, x0, y0, sky, sigma_pix: float, iterations: int):
    """The iterations of :func:`windowed_centroids` for some sources."""
    ny, nx = data.shape
    half = int(np.ceil(3.0 * sigma_pix))
    ix = np.clip(np.rint(x0).astype(np.int64), half, nx - half - 1)
    iy = np.clip(np.rint(y0).astype(np.int64), half, ny - half - 1)
    oy, ox = np.mgrid[-half: half + 1, -half: half + 1]
    ox = ox.ravel()
    oy = oy.ravel()
    stamps = data[iy[:, None] + oy[None, :], ix[:, None] + ox[None, :]].astype(np.float64)
    stamps -= sky[:, None]
    np.nan_to_num(stamps, copy=False)
    px = ix[:, None] + ox[None, :]
    py = iy[:, None] + oy[None, :]
    xc, yc = x0.copy(), y0.copy()
    inv2s2 = 0.5 / sigma_pix ** 2
    for _ in range(iterations):
        dx = px - xc[:, None]
        dy = py - yc[:, None]
        w = np.exp(-(dx * dx + dy * dy) * inv2s2) * stamps
        tot = w.sum(axis=1)
        good = tot > 0
        sx = np.where(good, 2.0 * (w * dx).sum(axis=1) / np.where(good, tot, 1.0), 0.0)
        sy = np.where(good, 2.0 * (w * dy).sum(axis=1) / np.where(good, tot, 1.0), 0.0)
        xc += np.clip(sx, -1.0, 1.0)
        yc += np.clip(sy, -1.0, 1.0)
    return xc, yc


def _second_differences(flat: np.ndarray, idx: np.ndarray, width: int,
                        flags_flat: np.ndarray | None = None) -> np.ndarray:
    """(4, N) second differences v - (a+b)/2 along x, y and both diagonals. With
    `flags_flat`, a direction whose a or b is a flagged pixel gives -inf: a masked
    pixel's value says nothing about the sky (a dead column beside a star would make
    the star's edge look as sharp as a hit)."""
    v = flat[idx].astype(np.float64)
    out = np.empty((4, idx.size))
    for k, off in enumerate((1, width, width + 1, width - 1)):
        out[k] = v - 0.5 * (flat[idx - off].astype(np.float64) + flat[idx + off])
        if flags_flat is not None:
            out[k][(flags_flat[idx - off] != 0) | (flags_flat[idx + off] != 0)] = -np.inf
    return out


def peak_sharpness(data: np.ndarray, x: np.ndarray, y: np.ndarray, sky) -> np.ndarray:
    """Largest second difference across each peak pixel divided by its height above sky
    (about 0.3-0.6 for well-sampled stars, about 1 for a single-pixel cosmic ray)."""
    ny, nx = data.shape
    xi = np.clip(np.asarray(x, dtype=np.int64), 1, nx - 2)
    yi = np.clip(np.asarray(y, dtype=np.int64), 1, ny - 2)
    idx = yi * nx + xi
    flat = data.ravel()
    d = _second_differences(flat, idx, nx).max(axis=0)
    h = flat[idx] - sky
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(h > 0, d / h, 0.0)


def not_cosmic(sharpness: np.ndarray, n_reference: int = 100) -> np.ndarray:
    """Peaks that are not single-pixel hits, judged without a PSF model.

    Most bright peaks are stars: the cut sits above the sharpness of the typical
    bright peak (peaks are sorted brightest first), so well-sampled frames drop
    peaks sharper than 0.9 while undersampled frames, whose stars are as sharp as
    hits, keep them all."""
    if sharpness.size == 0:
        return np.zeros(0, dtype=bool)
    typical = np.percentile(sharpness[:n_reference], 70)
    return sharpness < max(0.9, typical + 0.05)


def star_sharpness_limit(psf_pixels_at_phases) -> float:
    """Sharpness above which a pixel cannot be the peak of a star.

    `psf_pixels_at_phases`: list of small 2-D images of the pixel-integrated PSF
    centred at different sub-pixel phases. The limit sits between the sharpest star
    and a single-pixel hit (sharpness 1)."""
    best = 0.0
    for img in psf_pixels_at_phases:
        j, i = np.unravel_index(np.argmax(img), img.shape)
        c = img[j, i]
        diffs = [c - 0.5 * (img[j, i - 1] + img[j, i + 1]), c - 0.5 * (img[j - 1, i] + img[j + 1, i]),
                 c - 0.5 * (img[j - 1, i - 1] + img[j + 1, i + 1]), c - 0.5 * (img[j - 1, i + 1] + img[j + 1, i - 1])]
        best = max(best, max(diffs) / c)
    return best + 0.4 * (1.0 - best)


def find_cosmic_rays(data: np.ndarray, pixel_flags: np.ndarray, sky_level: float, sky_sigma: float,
                     sharpness_limit: float, nsigma: float = 6.0,
                     grow: bool = True) -> np.ndarray:
    """Flat indices of pixels hit by cosmic rays (grown by one pixel).

    A pixel is a hit when its largest second difference exceeds `nsigma` times the
    noise of that difference and `sharpness_limit` times its height above the sky.
    Second differences across a flagged pixel are not used (the edge of a bad column is
    not a hit; a hit beside one is still found along the column).
    Works in electrons: the Poisson variance of a pixel is its value."""
    ny, nx = data.shape
    if sharpness_limit >= 0.999:
        return np.zeros(0, dtype=np.int64)  # undersampled PSF: stars look like hits
    flat = data.ravel()
    with np.errstate(invalid="ignore"):
        # a hit needs a second difference above nsigma x (noise >= 1.22 sky sigma), so its
        # pixel stands at least that far above the sky: no lower candidates are needed
        cand = np.flatnonzero(flat > sky_level + 1.2 * nsigma * sky_sigma)
    if cand.size == 0:
        return cand
    cy, cx = np.divmod(cand, nx)
    inner = (cx >= 1) & (cx < nx - 1) & (cy >= 1) & (cy < ny - 1)
    cand = cand[inner]
    cand = cand[pixel_flags.ravel()[cand] == 0]
    if cand.size == 0:
        return cand
    # only pixels sharp enough to be hits at all (differences across masked pixels, left
    # out below, can only lower this): most candidates are stars' cores
    sharp = _second_differences(flat, cand, nx).max(axis=0) > sharpness_limit * (flat[cand] - sky_level)
    cand = cand[sharp]
    if cand.size == 0:
        return cand
    d = _second_differences(flat, cand, nx, pixel_flags.ravel())
    k = np.argmax(d, axis=0)
    dmax = d[k, np.arange(cand.size)]
    v = flat[cand].astype(np.float64)
    offs = np.array([1, nx, nx + 1, nx - 1])[k]
    height = v - sky_level
    # Poisson noise of the source light in the three pixels plus the sky noise
    # (measured, so that it also holds for sky-subtracted frames)
    var_nb = np.maximum(flat[cand - offs] - sky_level, 0) + np.maximum(flat[cand + offs] - sky_level, 0)
    noise = np.sqrt(np.maximum(height, 0) + 0.25 * var_nb + 1.5 * sky_sigma ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        hit = (dmax > nsigma * noise) & (dmax > sharpness_limit * height)
    hits = cand[hit]
    if grow and hits.size:
        grown = (hits[:, None] + np.concatenate(([0], _neighbour_offsets(nx)))[None, :]).ravel()
        grown = grown[(grown >= 0) & (grown < flat.size)]
        hits = np.unique(grown)
    return hits


def quick_fwhm(data: np.ndarray, peaks: Peaks, sky: float, n: int = 40) -> float:
    """A fast FWHM estimate (pixels) from the brightest unsaturated peaks: the area above
    half maximum, as the diameter of a circle of that area (median over stars)."""
    sel = np.flatnonzero(~peaks.saturated)[:n]
    if sel.size < 3:
        return float("nan")
    ny, nx = data.shape
    half = 12
    xs = np.clip(peaks.x[sel], half, nx - half - 1)
    ys = np.clip(peaks.y[sel], half, ny - half - 1)
    oy, ox = np.mgrid[-half: half + 1, -half: half + 1]
    stamps = data[ys[:, None, None] + oy[None], xs[:, None, None] + ox[None]] - sky
    peak = stamps[:, half, half]
    area = np.count_nonzero(stamps > 0.5 * peak[:, None, None], axis=(1, 2))
    fwhm = 2.0 * np.sqrt(area / np.pi)
    # pixelisation: a star whose half-maximum area is one pixel has FWHM ~ 1.1 px
    return float(np.median(fwhm))


# --------------------------------------------------------------------------
# Which peaks are stars: the shape of each peak at half its height
# --------------------------------------------------------------------------

#: the eight half-directions along which a peak's profile is followed (dx, dy)
_DIRECTIONS = np.array([(1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, -1), (1, -1), (-1, 1)])
#: a star's profile is followed this far (pixels along an axis) from its peak
_MAX_REACH = 24


@dataclass
class PeakShapes:
    """Shape of each peak at half its height above the sky.

    width_pix: (N, 4) widths at half maximum along x, y and both diagonals [pix];
    fwhm_pix: their geometric mean, corrected for the pixel's own width (a star's FWHM);
    axis_ratio: narrowest / widest of the four (a line - a bad column, a bleed trail, a
    cosmic-ray track - is near 1 / its length; a star near 1 - ellipticity);
    flat_top: the peak pixel shares its value with a neighbour (a saturated core or its
    bleed trail, whatever the header says about saturation);
    wing_ratio: mean of the four edge neighbours above the sky over the peak's height
    (a single hot pixel or one-pixel hit: 0 within the noise; a star, even one of FWHM
    0.8 px centred on its pixel: 0.08 or more);
    single_pixel: wing_ratio too small for a star, beyond the noise (see peak_shapes)."""

    width_pix: np.ndarray
    fwhm_pix: np.ndarray
    axis_ratio: np.ndarray
    flat_top: np.ndarray
    wing_ratio: np.ndarray
    single_pixel: np.ndarray


#: wing_ratio below which a peak is a single pixel (a star of FWHM 0.8 px centred on its
#: pixel, integrated over pixels, has 0.08; a hot pixel 0), plus 2.5 sigma of its noise
SINGLE_PIXEL_WING_RATIO = 0.05


def peak_shapes(data: np.ndarray, peaks: Peaks, sky, sky_sigma=0.0) -> PeakShapes:
    """Widths at half maximum of each peak along four axes, from the profile through its
    peak pixel (followed outwards to where it first drops below half the height,
    interpolated linearly there). The height is the peak pixel's, raised to the profile's
    summit by a parabola through the logarithms of the pixel and its neighbours (exact
    for a Gaussian core), so a star centred between pixels is not measured wider.

    A peak is a single pixel when its wing_ratio is below SINGLE_PIXEL_WING_RATIO plus
    2.5 times the ratio's noise (`sky_sigma`, the pixel noise [data units], scalar or
    per peak): however undersampled, a star spills light onto its neighbours."""
    ny, nx = data.shape
    n = len(peaks)
    if n == 0:
        z = np.zeros((0, 4))
        return PeakShapes(z, np.zeros(0), np.zeros(0), np.zeros(0, dtype=bool), np.zeros(0), np.zeros(0, dtype=bool))
    x = np.asarray(peaks.x, dtype=np.int64)
    y = np.asarray(peaks.y, dtype=np.int64)
    sky = np.broadcast_to(np.asarray(sky, dtype=np.float64), (n,))
    k = np.arange(0, _MAX_REACH + 1)
    px = np.clip(x[:, None, None] + _DIRECTIONS[None, :, 0, None] * k[None, None, :], 0, nx - 1)
    py = np.clip(y[:, None, None] + _DIRECTIONS[None, :, 1, None] * k[None, None, :], 0, ny - 1)
    prof = data[py, px].astype(np.float64) - sky[:, None, None]          # (N, 8, K+1)
    prof = np.nan_to_num(prof, nan=0.0)
    h0 = prof[:, 0, 0]
    flat_top = np.any(prof[:, :, 1] >= h0[:, None] - 1e-6 * np.abs(h0[:, None]), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ln0 = np.log(np.maximum(h0, 1e-30))
        lift = np.zeros(n)
        for a, b in ((0, 1), (2, 3)):
            lp = np.log(np.maximum(prof[:, a, 1], 1e-30))
            lm = np.log(np.maximum(prof[:, b, 1], 1e-30))
            curv = 2 * ln0 - lp - lm
            summit = (lp - lm) / (2 * np.where(curv > 0, curv, 1.0))    # offset of the summit [pix]
            # a summit more than half a pixel away is no summit of this pixel's (a flat ridge)
            usable = (curv > 0) & (np.abs(summit) <= 0.5) & (np.minimum(prof[:, a, 1], prof[:, b, 1]) > 0.05 * h0)
            lift += np.where(usable, 0.5 * curv * summit ** 2, 0.0)
        height = h0 * np.exp(np.minimum(lift, 0.5))
    half = 0.5 * height
    below = prof < half[:, None, None]
    below[:, :, -1] = True
    first = np.argmax(below, axis=2)                                      # (N, 8), >= 1 when h0 > 0
    first = np.maximum(first, 1)
    rows = np.arange(n)[:, None]
    dirs = np.arange(8)[None, :]
    v_in = prof[rows, dirs, first - 1]
    v_out = prof[rows, dirs, first]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.clip(np.where(v_in > v_out, (v_in - half[:, None]) / (v_in - v_out), 0.5), 0.0, 1.0)
    reach = (first - 1 + frac) * np.hypot(_DIRECTIONS[:, 0], _DIRECTIONS[:, 1])[None, :]
    width = reach[:, 0::2] + reach[:, 1::2]                               # x, y, diagonal, antidiagonal
    width = np.maximum(width, 0.5)
    mean = np.exp(np.mean(np.log(width), axis=1))
    # a pixel's width adds about 1/12 px^2 to each axis' variance (Gaussian: 8 ln 2 / 12 px^2 to FWHM^2)
    fwhm = np.sqrt(np.maximum(mean ** 2 - 8 * np.log(2) / 12, 0.25 * mean ** 2))
    ratio = width.min(axis=1) / width.max(axis=1)
    # a profile still above half height at the end of its reach is no star's (a ridge of
    # bright wings or of a trail, or a bump on it)
    bad = ~(h0 > 0) | np.any(first >= _MAX_REACH, axis=1)
    fwhm[bad] = np.nan
    ratio[bad] = 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        wing = np.where(h0 > 0, prof[:, 0:4, 1].mean(axis=1) / h0, 0.0)
        # the mean of four pixels has half a pixel's noise
        noise = np.broadcast_to(np.asarray(sky_sigma, dtype=np.float64), (n,)) / (2.0 * np.where(h0 > 0, h0, 1.0))
    single = wing < SINGLE_PIXEL_WING_RATIO + 2.5 * noise
    return PeakShapes(width, fwhm, ratio, flat_top, wing, single)


def star_like(shapes: PeakShapes, min_axis_ratio: float = 0.5, min_stars: int = 8) -> np.ndarray:
    """Peaks whose shape is a star's: not flat-topped (saturated), not a line (a bad
    column, a bleed trail, a cosmic-ray track: axis ratio below `min_axis_ratio`), not a
    single pixel (a hot pixel, a one-pixel hit: no light on its neighbours, see
    :func:`peak_shapes`). When fewer than `min_stars` peaks pass the last test (stars far
    below a pixel across), single pixels are kept."""
    ok = ~shapes.flat_top & (shapes.axis_ratio >= min_axis_ratio) & np.isfinite(shapes.fwhm_pix)
    spread = ok & ~shapes.single_pixel
    return spread if np.count_nonzero(spread) >= min_stars else ok


def seeing_fwhm(shapes: PeakShapes, stars: np.ndarray, n: int = 60) -> float:
    """The frame's FWHM [pix]: the median over the `n` brightest peaks marked in `stars`
    (NaN when fewer than 3). Peaks must be sorted brightest first."""
    rows = np.flatnonzero(stars)[:n]
    if rows.size < 3:
        return float("nan")
    fwhm = shapes.fwhm_pix[rows]
    centre = float(np.median(fwhm))
    for _ in range(3):  # the mode: a few blends or defects must not move it
        near = fwhm[(fwhm > centre / 1.4) & (fwhm < centre * 1.4)]
        if near.size < 3:
            break
        centre = float(np.median(near))
    return centre


def star_peaks(data: np.ndarray, pixel_flags: np.ndarray, mesh: SkyMesh, nsigma: float,
               max_stars: int, with_saturated: bool = False) -> tuple[Peaks, float]:
    """The brightest `max_stars` star-like peaks above `nsigma` (brightest first), and the
    frame's FWHM [pix] from them (:func:`seeing_fwhm`; NaN when fewer than 3).
    `with_saturated`: the round saturated stars too (flagged, or flat-topped), their
    `saturated` set; they never count in the FWHM.

    Unflagged defects are looked past however many there are: a hot column alone gives
    a local maximum every few rows, all brighter than most stars."""
    peaks = find_peaks(data, pixel_flags, mesh, nsigma=nsigma)
    if not with_saturated:
        peaks = peaks.take(np.flatnonzero(~peaks.saturated))
    chunk = 2 * max_stars
    parts: list[PeakShapes] = []
    for start in range(0, max(len(peaks), 1), chunk):
        part = peaks.take(np.arange(start, min(start + chunk, len(peaks))))
        parts.append(peak_shapes(data, part, mesh.level_at(part.x, part.y), mesh.sigma_at(part.x, part.y)))
        n_ok = sum(int(np.count_nonzero(~q.flat_top & (q.axis_ratio >= 0.5) & ~q.single_pixel)) for q in parts)
        if n_ok >= max_stars:
            break
    shapes = PeakShapes(*(np.concatenate([getattr(q, f.name) for q in parts]) for f in fields(PeakShapes)))
    peaks = peaks.take(np.arange(len(shapes.fwhm_pix)))
    saturated = peaks.saturated | shapes.flat_top
    stars = star_like(shapes) & ~saturated
    fwhm = seeing_fwhm(shapes, stars)
    if with_saturated:
        # a saturated star's plateau is round; a bleed trail or a masked-column edge is not
        stars |= saturated & (shapes.axis_ratio >= 0.5)
    keep = np.flatnonzero(stars)[:max_stars]
    peaks = Peaks(peaks.x[keep], peaks.y[keep], peaks.height[keep], saturated[keep])
    if np.isfinite(fwhm) and fwhm < UNDERSAMPLED_FWHM_PIX:
        fwhm = _pixel_integrated_fwhm(data, pixel_flags, mesh, peaks.take(np.flatnonzero(~peaks.saturated)), fwhm)
    return peaks, fwhm


#: below this FWHM [pix] the widths at half maximum of pixel values are biased by the
#: pixel grid (10-50% wide at 1 px, by the star's phase on its pixel: benchmarks in
#: README section 8): the seeing is then a PSF fit integrated over the pixels
UNDERSAMPLED_FWHM_PIX = 2.5
#: narrowest Gaussian window [sigma, pix] for a centroid: a narrower one locks the
#: centroid of an undersampled star onto its pixel's centre (0.4 px off at FWHM 1 px,
#: 0.05 px with this floor)
MIN_CENTROID_WINDOW_PIX = 1.0


def centroid_window_sigma(fwhm_pix: float, fraction: float = 0.8) -> float:
    """Sigma [pix] of the Gaussian window for :func:`windowed_centroids` of stars of FWHM
    `fwhm_pix`: `fraction` x the star's own sigma (narrower than the star keeps its
    neighbours' wings out), at least MIN_CENTROID_WINDOW_PIX."""
    width = fwhm_pix if np.isfinite(fwhm_pix) else 2.0
    return max(fraction * width / 2.355, MIN_CENTROID_WINDOW_PIX)


def _pixel_integrated_fwhm(data, pixel_flags, mesh: SkyMesh, peaks: Peaks, fwhm_pix: float, n: int = 30) -> float:
    """The FWHM [pix] of a Moffat profile integrated over the pixels, fitted to the `n`
    brightest of `peaks` (star-like, brightest first) at their windowed centroids;
    `fwhm_pix` when the fit cannot be made."""
    from .psf import fit_positions, fit_psf

    use = peaks.take(np.arange(min(n, len(peaks))))
    if len(use) < 5:
        return fwhm_pix
    sky_var = float(np.median(mesh.sigma)) ** 2
    ok = pixel_flags == 0
    x, y, _ = windowed_centroids(data, use.x, use.y, mesh.level_at(use.x, use.y), centroid_window_sigma(fwhm_pix))
    fit = fit_psf(data, x, y, sky_var, max(fwhm_pix, 1.0), pixel_ok=ok, size_field=False)
    if fit.n_stars < 5 or not np.isfinite(fit.psf.fwhm_pix):
        return fwhm_pix
    # the centroids' errors widen the fitted profile (10-15% at FWHM 0.8 px): again at
    # positions fitted with that profile
    x, y = fit_positions(data, x, y, fit.psf, sky_var, pixel_ok=ok)
    again = fit_psf(data, x, y, sky_var, fit.psf.fwhm_pix, pixel_ok=ok, size_field=False)
    best = again if again.n_stars >= 5 and np.isfinite(again.psf.fwhm_pix) else fit
    return float(best.psf.fwhm_pix)


def flag_flat_maximum(data: np.ndarray, pixel_flags: np.ndarray, saturated_bit: int = 2,
                      min_pixels: int = 4) -> int:
    """Flag as saturated the pixels at the frame's largest value when at least
    `min_pixels` share it exactly (a full well clipped, or the digitiser's top), whatever
    the header says about saturation: frames in ADU without SATURATE or a mask would
    otherwise offer their saturated stars as PSF and alignment stars. Returns how many."""
    top = np.nanmax(data)
    if not np.isfinite(top):
        return 0
    at = data == top
    n = int(np.count_nonzero(at))
    if n < min_pixels:
        return 0
    pixel_flags[at] |= np.uint8(saturated_bit)
    return n


class ControlPoints(NamedTuple):
    """The frame's stars to align on."""

    xy: np.ndarray         # (M, 2) positions [pix], brightest first
    saturated: np.ndarray  # (M,) saturated stars: in the star pattern, not in the fit
    precise: np.ndarray    # (M,) unsaturated and above PRECISE_CONTROL_SIGMA: the fit's stars
    fwhm_pix: float        # the frame's FWHM from its star-like peaks (NaN when too few)


#: control points above this many sky sigma are precise enough to fit the transform on
PRECISE_CONTROL_SIGMA = 60.0


def alignment_control_points(data: np.ndarray, pflags: np.ndarray, mesh, sky_sigma: float,
                             max_points: int = 400) -> ControlPoints:
    """The frame's stars to align on (brightest first) and its FWHM [pix].

    Hot pixels, a bad column and cosmic rays are left out by their shape
    (:func:`~.detection.star_like`), whether or not the frame flags them: in a frame in
    ADU without a mask they are the brightest "stars". Saturated stars are kept, marked:
    the brightest stars of a frame are often saturated on a sharper reference (or the
    other way round), and the star pattern is matched between the brightest of both
    lists. At least 150 stars where the frame has them (down to 25 sigma, then to the
    detection limit), so that a frame sharing a quarter of its field with the reference
    still shares dozens; the transform is fitted on the unsaturated ones above
    PRECISE_CONTROL_SIGMA when enough are matched (:class:`~.alignment.FitStars`)."""
    peaks, fwhm = star_peaks(data, pflags, mesh, nsigma=8.0, max_stars=1500, with_saturated=True)
    for level in (PRECISE_CONTROL_SIGMA, 25.0, 0.0):
        strong = np.flatnonzero(peaks.height > level * sky_sigma)
        if strong.size >= 150 or level == 0.0:
            peaks = peaks.take(strong[:max_points])
            break
    px, py, _ = windowed_centroids(data, peaks.x, peaks.y, mesh.level_at(peaks.x, peaks.y),
                                   centroid_window_sigma(fwhm))
    precise = ~peaks.saturated & (peaks.height > PRECISE_CONTROL_SIGMA * sky_sigma)
    return ControlPoints(np.column_stack([px, py]), peaks.saturated.copy(), precise, fwhm)
