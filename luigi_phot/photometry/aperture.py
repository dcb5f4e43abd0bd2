"""Forced aperture photometry at many positions: aperture sums, local sky from a
sigma-clipped annulus, pixel-flag summaries and the CCD-equation error.

Everything is in electrons. The error of a sky-subtracted aperture flux F
over A pixels, with the sky estimated from N_sky annulus pixels, is

    var = F + A_w * v_pix + k * A^2 * v_pix / N_sky

where v_pix is the variance of one background pixel (sky electrons plus
read noise squared, or the frame's ERR plane when that is used), the first
term is the Poisson noise of the light in the aperture above the sky (the
star's and any neighbours' whose light is subtracted), A_w the sum of the
squared pixel weights of the exact-overlap aperture (a pixel half inside adds
half its value but a quarter of its variance; photutils weights an ERR plane
the same way), and the last the uncertainty of the sky estimate itself
(k = 1 for a clipped mean, pi/2 for a clipped median).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .background import clipped_stats_sorted

__all__ = ["ApertureGeometry", "annulus_sky", "aperture_sums", "pixel_flag_summary", "MaskedOverlaps",
           "masked_overlaps", "repair_pixels", "NoiseModel", "noise_model", "sky_estimate_factor", "ccd_variance",
           "noise_area"]


@dataclass(frozen=True)
class ApertureGeometry:
    """Aperture radius and sky annulus radii, in pixels of the frame measured."""

    r_ap_pix: float
    r_in_pix: float
    r_out_pix: float


def _disk_offsets(r_min: float, r_max: float):
    h = int(np.ceil(r_max))
    oy, ox = np.mgrid[-h: h + 1, -h: h + 1]
    r = np.hypot(ox, oy)
    sel = (r >= r_min) & (r <= r_max)
    return oy[sel].ravel(), ox[sel].ravel()


def annulus_sky(image: np.ndarray, pixel_flags: np.ndarray, x: np.ndarray, y: np.ndarray,
                geometry: ApertureGeometry, nsigma: float = 3.0, estimator: str = "median",
                avoid: np.ndarray | None = None):
    """Sky per pixel in each star's annulus: the median or the mean of the pixels kept
    by iterative 3-sigma clipping.

    The median resists neighbours' light; on an image whose catalogue stars have been
    subtracted the mean is better: the faint unresolved stars left in it make the
    pixel distribution skewed, and the median of a skewed distribution moves with the
    seeing while its mean (the light that also sits in the aperture) does not.
    Pixels outside the frame or with any pixel flag are left out, and so are the
    pixels of the boolean image `avoid` (e.g. where a subtracted neighbour's core was)
    unless that would leave fewer than 30% of the annulus. Returns
    (sky, sky_sigma, n_sky, crosses_edge), arrays of len(x)."""
    ny, nx = image.shape
    oy, ox = _disk_offsets(geometry.r_in_pix, geometry.r_out_pix)
    flat_off = (oy * nx + ox).astype(np.int64)
    xi = np.rint(np.nan_to_num(x, nan=-1e6)).astype(np.int64)
    yi = np.rint(np.nan_to_num(y, nan=-1e6)).astype(np.int64)
    n = xi.size
    sky = np.full(n, np.nan)
    sig = np.full(n, np.nan)
    nsky = np.zeros(n, dtype=np.int64)
    h = int(np.ceil(geometry.r_out_pix))
    edge = ~((xi >= h) & (xi < nx - h) & (yi >= h) & (yi < ny - h))
    flat = image.ravel()
    fflat = pixel_flags.ravel()
    aflat = avoid.ravel() if avoid is not None else None
    for chunk in np.array_split(np.arange(n), max(1, n * ox.size // 4_000_000 + 1)):
        inner = chunk[~edge[chunk]]
        outer = chunk[edge[chunk]]
        parts = []
        if inner.size:  # the usual case: the whole annulus is on the frame
            parts.append((inner, (yi[inner] * nx + xi[inner])[:, None] + flat_off[None, :], None))
        if outer.size:
            px = xi[outer, None] + ox[None, :]
            py = yi[outer, None] + oy[None, :]
            inside = (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
            parts.append((outer, np.where(inside, py * nx + px, 0), inside))
        for rows, idx, inside in parts:
            vals = np.take(flat, idx).astype(np.float32, copy=False)
            bad = (np.take(fflat, idx) != 0) | np.isnan(vals)
            if inside is not None:
                bad |= ~inside
            if aflat is not None:
                soft = bad | np.take(aflat, idx)
                enough = (ox.size - np.count_nonzero(soft, axis=1)) >= max(0.3 * ox.size, 20)
                bad = np.where(enough[:, None], soft, bad)
            np.putmask(vals, bad, np.float32(np.nan))
            n_valid = ox.size - np.count_nonzero(bad, axis=1)
            vals.sort(axis=1)
            m, sg, k = clipped_stats_sorted(vals, n_valid, nsigma, mean=(estimator == "mean"))
            sky[rows], sig[rows], nsky[rows] = m, sg, k
    return sky, sig, nsky, edge


def aperture_sums(image: np.ndarray, x: np.ndarray, y: np.ndarray, r_ap_pix: float,
                  error: np.ndarray | None = None):
    """Exact-overlap aperture sums (photutils). Returns (sum, sum_err or None, area,
    partial, outside) where partial/outside say the aperture crosses or misses the frame."""
    from photutils.aperture import AperturePhotometry, CircularAperture

    pos = np.column_stack([np.nan_to_num(x, nan=-1e6), np.nan_to_num(y, nan=-1e6)])
    phot = AperturePhotometry(image, CircularAperture(pos, r=r_ap_pix), error=error, method="exact")
    flags = np.asarray(phot.flags)
    total = np.asarray(phot.flux, dtype=np.float64)
    err = None if error is None else np.asarray(phot.flux_err, dtype=np.float64)
    area = np.asarray(getattr(phot.area, "value", phot.area), dtype=np.float64)
    outside = (flags & (1 | 4)) != 0
    partial = (flags & 2) != 0
    return total, err, area, partial, outside


def pixel_flag_summary(pixel_flags: np.ndarray, x: np.ndarray, y: np.ndarray, r_pix: float) -> np.ndarray:
    """Bitwise OR of the pixel flags of every pixel touched by each aperture."""
    ny, nx = pixel_flags.shape
    oy, ox = _disk_offsets(0.0, r_pix + 0.71)
    xi = np.rint(np.nan_to_num(x, nan=-1e6)).astype(np.int64)
    yi = np.rint(np.nan_to_num(y, nan=-1e6)).astype(np.int64)
    out = np.zeros(xi.size, dtype=np.uint8)
    flat = pixel_flags.ravel()
    for chunk in np.array_split(np.arange(xi.size), max(1, xi.size * ox.size // 4_000_000 + 1)):
        px = xi[chunk, None] + ox[None, :]
        py = yi[chunk, None] + oy[None, :]
        inside = (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
        vals = np.where(inside, flat[np.where(inside, py * nx + px, 0)], 0)
        out[chunk] = np.bitwise_or.reduce(vals, axis=1)
    return out


@dataclass(frozen=True)
class MaskedOverlaps:
    """Masked pixels inside apertures: one entry per (star, pixel) pair."""

    star: np.ndarray     # index of the star (into the positions measured)
    pixel: np.ndarray    # flat index of the pixel
    weight: np.ndarray   # fraction of the pixel inside the aperture
    dx: np.ndarray       # pixel centre minus star position [pix]
    dy: np.ndarray

    def per_star(self, values: np.ndarray, n_stars: int) -> np.ndarray:
        """Sum over each star's masked pixels of weight x `values` (one value per pair)."""
        return np.bincount(self.star, weights=self.weight * values, minlength=n_stars)

    def light_fraction(self, psf, n_stars: int, pairs: np.ndarray | None = None) -> np.ndarray:
        """Fraction of each star's light (per `psf`) on its masked aperture pixels
        (only the pairs `pairs` when given: e.g. the stars of one PSF size)."""
        sel = slice(None) if pairs is None else pairs
        light = psf.pixel_values(self.dx[sel], self.dy[sel]) * self.weight[sel]
        return np.bincount(self.star[sel], weights=light, minlength=n_stars)


def masked_overlaps(pixel_flags: np.ndarray, bits: int, x: np.ndarray, y: np.ndarray, r_pix: float,
                    rows: np.ndarray | None = None, subpixels: int = 8) -> MaskedOverlaps:
    """The pixels carrying `bits` that the apertures of the stars `rows` (default all)
    cover, with the fraction of each pixel inside the circle (1 for pixels wholly
    inside, sub-sampled at the rim)."""
    ny, nx = pixel_flags.shape
    rows = np.arange(np.size(x)) if rows is None else np.asarray(rows, dtype=np.int64)
    xs, ys = np.asarray(x, float)[rows], np.asarray(y, float)[rows]
    oy, ox = _disk_offsets(0.0, r_pix + 1.42)  # offsets from the rounded centre
    px = np.rint(xs).astype(np.int64)[:, None] + ox[None, :]
    py = np.rint(ys).astype(np.int64)[:, None] + oy[None, :]
    inside = (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
    flat = np.where(inside, py * nx + px, 0)
    s, k = np.nonzero(inside & ((pixel_flags.ravel()[flat] & bits) != 0))
    dx, dy = px[s, k] - xs[s], py[s, k] - ys[s]
    far = np.hypot(np.abs(dx) + 0.5, np.abs(dy) + 0.5)
    near = np.hypot(np.maximum(np.abs(dx) - 0.5, 0.0), np.maximum(np.abs(dy) - 0.5, 0.0))
    weight = np.where(far <= r_pix, 1.0, 0.0)
    rim = np.flatnonzero((far > r_pix) & (near < r_pix))
    if rim.size:
        sub = (np.arange(subpixels) + 0.5) / subpixels - 0.5
        sx, sy = (g.ravel() for g in np.meshgrid(sub, sub))
        weight[rim] = (np.hypot(dx[rim, None] + sx, dy[rim, None] + sy) <= r_pix).mean(axis=1)
    keep = weight > 0
    return MaskedOverlaps(rows[s[keep]], flat[s[keep], k[keep]], weight[keep], dx[keep], dy[keep])


def repair_pixels(image: np.ndarray, pixel_idx: np.ndarray, fill_value: float, reach: int = 4) -> None:
    """Replace the pixels at flat indices `pixel_idx` (in place) by the mean of the nearest
    unflagged pixels left, right, above and below within `reach` pixels (a bad column is
    then bridged from its sides); `fill_value` where none is found."""
    if pixel_idx.size == 0:
        return
    ny, nx = image.shape
    flat = image.ravel()
    bad = np.zeros(flat.size, dtype=bool)
    bad[pixel_idx] = True
    row = pixel_idx // nx
    total = np.zeros(pixel_idx.size)
    count = np.zeros(pixel_idx.size)
    for step in (1, -1, nx, -nx):
        found = np.zeros(pixel_idx.size, dtype=bool)
        for k in range(1, reach + 1):
            nb = pixel_idx + step * k
            valid = (nb >= 0) & (nb < flat.size) & ~found
            if abs(step) == 1:
                valid &= (np.clip(nb, 0, flat.size - 1) // nx) == row
            nbc = np.clip(nb, 0, flat.size - 1)
            ok = valid & ~bad[nbc] & np.isfinite(flat[nbc])
            total[ok] += flat[nbc[ok]]
            count[ok] += 1
            found |= ok
    flat[pixel_idx] = np.where(count > 0, total / np.maximum(count, 1), fill_value)


@dataclass(frozen=True)
class NoiseModel:
    """Per-pixel background variance and the Poisson variance per unit of source signal,
    both in (data units)^2 and data units: 1.0 when the data are truly in electrons."""

    pixel_var: float
    source_factor: float
    note: str | None = None


def noise_model(sky_level: float, pixel_sigma: float, read_noise_e: float, gain_known: bool) -> NoiseModel:
    """The CCD noise model (sky + read noise; Poisson with the frame's gain), checked
    against the measured pixel noise (`pixel_sigma`, from adjacent-pixel differences,
    which static crowding does not inflate).

    When they disagree by more than a factor 2 in variance: if the gain was only
    assumed and the frame still has its sky, the assumed gain is wrong (the
    photon-transfer relation) and the measured noise sets an effective gain for the
    source's Poisson term too; if the sky has been subtracted (no sky level to model
    the noise from), the measured noise is the background's."""
    model = max(sky_level, 0.0) + read_noise_e ** 2
    measured = pixel_sigma ** 2
    if not (np.isfinite(measured) and measured > 0) or model <= 0:
        return NoiseModel(model if model > 0 else measured, 1.0)
    ratio = measured / model
    if 0.5 <= ratio <= 2.0:
        return NoiseModel(model, 1.0)
    has_sky = sky_level > 3.0 * pixel_sigma
    if not gain_known and has_sky:
        return NoiseModel(measured, ratio,
                          f"pixel noise {pixel_sigma:.3g} is {np.sqrt(ratio):.2f} x the CCD model with the assumed "
                          f"gain: using the measured noise and an effective gain of {1.0 / ratio:.3g} e-/unit")
    if not has_sky:
        return NoiseModel(measured, 1.0,
                          f"no sky level to model the noise from (sky-subtracted frame?): errors use the measured "
                          f"pixel noise {pixel_sigma:.3g} e-")
    return NoiseModel(model, 1.0,
                      f"pixel noise {pixel_sigma:.3g} e- differs from sky + read noise ({np.sqrt(model):.3g} e-) "
                      f"by {np.sqrt(ratio):.2f}x with a known gain: errors keep the CCD model")


def sky_estimate_factor(estimator: str) -> float:
    """Variance of the sky estimate in units of pixel variance / N_sky: 1 for a mean,
    pi/2 for a median."""
    return 0.5 * np.pi if estimator == "median" else 1.0


def ccd_variance(flux_e: np.ndarray, area_pix: np.ndarray, pixel_var_e2: np.ndarray | float,
                 n_sky: np.ndarray, source_factor: float = 1.0, sky_factor: float = 0.5 * np.pi,
                 noise_area_pix: np.ndarray | float | None = None) -> np.ndarray:
    """Variance (e^2) of a sky-subtracted aperture flux: source Poisson noise (`flux_e`:
    all the light in the aperture above the sky, the star's and any neighbours'),
    background and read noise over the aperture, and the error of the sky estimate itself
    (sky_factor: see sky_estimate_factor). `noise_area_pix`: the sum of the squared pixel
    weights (see noise_area), by default the area."""
    n_sky = np.maximum(np.asarray(n_sky, float), 1.0)
    noise_area_pix = area_pix if noise_area_pix is None else noise_area_pix
    return (source_factor * np.maximum(flux_e, 0.0)
            + pixel_var_e2 * (noise_area_pix + sky_factor * area_pix ** 2 / n_sky))


def noise_area(r_pix: float, phases: int = 4) -> float:
    """Background-noise area [pix] of an exact-overlap circular aperture of radius r_pix:
    the sum of the squared pixel weights (a pixel partly inside counts its overlap w in
    the sum, but only w^2 of its variance), averaged over sub-pixel centre positions.
    Below the geometric area by 14% at r = 2.4 px, 6% at 5.9 px, 3% at 10 px."""
    from photutils.aperture import CircularAperture

    offsets = (np.arange(phases) + 0.5) / phases
    sums = [float(np.sum(CircularAperture((20.0 + r_pix + dx, 20.0 + r_pix + dy), r=r_pix)
                         .to_mask(method="exact").data ** 2))
            for dx in offsets for dy in offsets]
    return float(np.mean(sums))
