"""The point-spread function: an elliptical Moffat profile fitted to bright,
isolated stars, and what the photometry needs from it.

- :class:`MoffatPSF` evaluates the unit-flux profile, integrated over pixels
  by sub-sampling.
- :func:`fit_psf` fits FWHM, ellipticity, position angle and beta jointly to
  many stars whose positions are known (each star's flux and local sky are
  solved linearly inside the fit).
- :func:`render_stars` draws many stars into an image (the neighbour model).
- :class:`ApertureKernel` gives the fraction of a star's light that falls in a
  circular aperture centred at any offset from it (PSF convolved with the
  aperture, by FFT).
- :func:`fit_fluxes` is simultaneous PSF photometry at fixed positions (sparse
  linear least squares), used for the reference fluxes of the catalogue.

Coordinates are 0-based pixel indices (numpy convention); flux units are
whatever the data are in (electrons in the pipeline).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MoffatPSF", "PSFFit", "SizeField", "fit_psf", "StarRenderer", "render_stars", "ApertureKernel", "fit_fluxes",
           "stamp_radius", "fit_positions"]


@dataclass(frozen=True)
class MoffatPSF:
    """Elliptical Moffat profile of unit total flux.

    fwhm_pix is the geometric mean of the major- and minor-axis FWHM;
    ellipticity = 1 - minor/major; theta_rad: major axis angle from +x towards +y.
    """

    fwhm_pix: float
    ellipticity: float = 0.0
    theta_rad: float = 0.0
    beta: float = 3.0

    @property
    def alpha(self) -> float:
        return self.fwhm_pix / (2.0 * np.sqrt(2.0 ** (1.0 / self.beta) - 1.0))

    def _axes(self):
        q = max(1.0 - self.ellipticity, 0.05)
        return self.alpha / np.sqrt(q), self.alpha * np.sqrt(q)

    def oversample(self) -> int:
        """Sub-samples per pixel axis needed to integrate the profile over pixels."""
        if self.fwhm_pix < 2.5:
            return 5
        if self.fwhm_pix < 6.0:
            return 3
        return 1

    def evaluate(self, dx, dy):
        """Surface brightness (per pixel^2) at offsets (dx, dy) from the centre."""
        a, b = self._axes()
        c, s = np.cos(self.theta_rad), np.sin(self.theta_rad)
        # in place, the same operations in the same order: fresh temporaries are slow
        # to page in on large stamp arrays
        q = np.asarray(dx * c + dy * s, dtype=float)
        yp = np.asarray(-dx * s + dy * c, dtype=float)
        q /= a
        q *= q
        yp /= b
        yp *= yp
        q = q + yp if q.shape != yp.shape else np.add(q, yp, out=q)
        q += 1.0
        np.power(q, -self.beta, out=q)
        q *= (self.beta - 1.0) / (np.pi * a * b)
        return q

    def pixel_values(self, dx, dy, oversample: int | None = None):
        """Integral of the profile over the unit pixels centred at offsets (dx, dy)."""
        o = oversample or self.oversample()
        if o == 1:
            return self.evaluate(dx, dy)
        sub = (np.arange(o) + 0.5) / o - 0.5
        total = None
        for sy in sub:
            for sx in sub:
                value = self.evaluate(dx + sx, dy + sy)
                total = value if total is None else np.add(total, value, out=total)
        total /= o * o
        return total

    def radius_containing(self, fraction: float) -> float:
        """Radius (pixels) enclosing `fraction` of the light (circularised profile)."""
        return float(self.alpha * np.sqrt((1.0 - fraction) ** (1.0 / (1.0 - self.beta)) - 1.0))

    def to_header(self, prefix: str = "PSF") -> dict:
        return {f"{prefix}FWHM": (self.fwhm_pix, "PSF FWHM [pix] (Moffat, geometric mean)"),
                f"{prefix}ELL": (self.ellipticity, "PSF ellipticity 1-b/a"),
                f"{prefix}THETA": (float(np.degrees(self.theta_rad)), "PSF major axis angle [deg] from +x"),
                f"{prefix}BETA": (self.beta, "PSF Moffat beta")}

    @classmethod
    def from_header(cls, header, prefix: str = "PSF") -> "MoffatPSF":
        return cls(fwhm_pix=float(header[f"{prefix}FWHM"]), ellipticity=float(header[f"{prefix}ELL"]),
                   theta_rad=float(np.radians(header[f"{prefix}THETA"])), beta=float(header[f"{prefix}BETA"]))


def _params_to_psf(p) -> MoffatPSF:
    fwhm = float(np.exp(p[0]))
    e1, e2 = float(p[1]), float(p[2])
    ell = float(np.hypot(e1, e2))
    theta = 0.5 * float(np.arctan2(e2, e1))
    beta = 1.0 + float(np.exp(p[3]))
    return MoffatPSF(fwhm, min(ell, 0.6), theta, beta)


@dataclass
class PSFFit:
    psf: MoffatPSF
    flux: np.ndarray        # fitted total flux of each star used
    used: np.ndarray        # bool: star kept after outlier rejection
    chi2_per_dof: float     # of the kept stars
    n_stars: int
    size: "SizeField | None" = None
    core_misfit: float = 0.0  # rms model error of the kept stars' core pixels, relative to the model (see fit_psf)


@dataclass(frozen=True)
class SizeField:
    """How the PSF's size changes across the frame: FWHM(x, y) = psf.fwhm_pix * exp(poly(u, v)),
    u, v the pixel coordinates scaled to [-1, 1]; a quadratic (focus, tilt) or a constant."""

    coeffs: tuple[float, ...]          # (c0, cu, cv, cuu, cuv, cvv)
    shape: tuple[int, int]

    def scale_at(self, x, y) -> np.ndarray:
        ny, nx = self.shape
        u = (np.asarray(x, float) - (nx - 1) / 2) / (nx / 2)
        v = (np.asarray(y, float) - (ny - 1) / 2) / (ny / 2)
        c = self.coeffs
        return np.exp(c[0] + c[1] * u + c[2] * v + c[3] * u * u + c[4] * u * v + c[5] * v * v)

    @property
    def varies(self) -> bool:
        return any(abs(c) > 0 for c in self.coeffs[1:])


def _size_terms(u, v):
    return np.column_stack([np.ones_like(u), u, v, u * u, u * v, v * v])


def _gather(data, var, xi, yi, half):
    oy, ox = np.mgrid[-half: half + 1, -half: half + 1]
    ys = yi[:, None] + oy.ravel()[None, :]
    xs = xi[:, None] + ox.ravel()[None, :]
    return data[ys, xs].astype(np.float64), var[ys, xs] if var is not None else None, ox.ravel(), oy.ravel()


def _others_light(others, x, y, xi, yi, ox, oy, half) -> np.ndarray:
    """Light of the `others` stars on each stamp (rows: stamps, columns: pixels)."""
    from scipy.spatial import cKDTree

    ox_, oy_, of_, psf = others
    ox_ = np.asarray(ox_, float)
    oy_ = np.asarray(oy_, float)
    of_ = np.asarray(of_, float)
    use = np.isfinite(ox_) & np.isfinite(oy_) & np.isfinite(of_) & (of_ > 0)
    ox_, oy_, of_ = ox_[use], oy_[use], of_[use]
    light = np.zeros((len(x), ox.size))
    if ox_.size == 0 or len(x) == 0:
        return light
    reach = (half + min(psf.radius_containing(0.98), 4.0 * psf.fwhm_pix)) * np.sqrt(2.0)
    lists = cKDTree(np.column_stack([ox_, oy_])).query_ball_point(np.column_stack([x, y]), r=reach)
    rows = np.repeat(np.arange(len(x)), [len(v) for v in lists])
    cols = np.fromiter((k for v in lists for k in v), dtype=np.int64, count=rows.size)
    self_ = np.hypot(ox_[cols] - x[rows], oy_[cols] - y[rows]) < 0.5
    rows, cols = rows[~self_], cols[~self_]
    if rows.size == 0:
        return light
    vals = psf.pixel_values((xi[rows, None] + ox[None, :]) - ox_[cols, None],
                            (yi[rows, None] + oy[None, :]) - oy_[cols, None]) * of_[cols, None]
    # rows came out of np.repeat in order: each stamp's neighbours are one run
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    light[rows[starts]] = np.add.reduceat(vals, starts, axis=0)
    return light


def fit_psf(data: np.ndarray, x: np.ndarray, y: np.ndarray, sky_var: float,
            fwhm_guess: float, pixel_ok: np.ndarray | None = None,
            beta_guess: float = 3.0,
            others: "tuple[np.ndarray, np.ndarray, np.ndarray, MoffatPSF] | None" = None,
            size_field: bool = True) -> PSFFit:
    """Fit one Moffat profile to stars at known positions (x, y).

    Each star's flux and a constant local sky under its stamp are solved linearly
    for every trial shape, so only four parameters are fitted non-linearly.
    Pixel variances are the source counts (electrons) plus `sky_var`. Stars whose
    stamps fit badly (neighbours, hits) are dropped and the fit repeated.

    `others` = (x, y, total flux, psf): stars whose light is removed from the stamps
    first (rendered with that earlier PSF), as DAOPHOT removes the neighbours of its
    PSF stars; a star within half a pixel of a stamp's centre is that star itself and
    is left in. In a crowded field in poor seeing every stamp holds neighbours' wings,
    which otherwise pull the fitted profile's wings (beta) and the fluxes.

    `size_field=False` skips the size-across-the-frame fit (a first look that only
    seeds a refit).

    `core_misfit` of the result says how well the profile fits the stars' cores: the
    median over the kept stars of sqrt(sum(residual^2 - variance) / sum(model^2)) over
    their pixels above 1% of the peak; 0 when the residuals are all noise. It is
    the relative uncertainty of light that the model has to supply where pixels are
    masked (a real PSF is not a Moffat; the stars' position errors are in it too).
    """
    ny, nx = data.shape
    half = int(np.clip(np.ceil(1.6 * fwhm_guess), 4, 25))
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    inside = (x > half + 1) & (x < nx - half - 2) & (y > half + 1) & (y < ny - half - 2)
    x, y = x[inside], y[inside]
    stamps = _PSFStamps.gather(data, x, y, half, sky_var, pixel_ok, others)
    p, keep = _fit_shape(stamps, _start_params(fwhm_guess, beta_guess, others))
    flux, r = stamps.solve(p, np.arange(len(x)))
    w = stamps.w
    dof = max(int((w[keep] > 0).sum()) - 2 * int(keep.sum()) - 4, 1)
    chi2 = float((r[keep] ** 2).sum() / dof)
    misfit = _core_misfit(_params_to_psf(p).pixel_values(stamps.dx[keep], stamps.dy[keep]), flux[keep], r[keep],
                          w[keep])
    full_flux = np.full(inside.size, np.nan)
    full_flux[inside] = flux
    full_used = np.zeros(inside.size, dtype=bool)
    full_used[np.flatnonzero(inside)[keep]] = True
    size = (_fit_size_field(p, stamps.solve, x[keep], y[keep], np.flatnonzero(keep), data.shape)
            if size_field and keep.sum() >= 12 else None)
    return PSFFit(psf=_params_to_psf(p), flux=full_flux, used=full_used, chi2_per_dof=chi2,
                  n_stars=int(keep.sum()), size=size, core_misfit=misfit)


@dataclass
class _PSFStamps:
    """The PSF stars' stamps: offsets of each pixel from the star's position [pix], the
    data (the others' light removed, the local sky not), and the weights (0 on masked
    or non-finite pixels)."""

    dx: np.ndarray
    dy: np.ndarray
    d: np.ndarray
    w: np.ndarray

    @classmethod
    def gather(cls, data, x, y, half: int, sky_var: float, pixel_ok, others) -> "_PSFStamps":
        xi = np.rint(x).astype(np.int64)
        yi = np.rint(y).astype(np.int64)
        d, ok, ox, oy = _gather(data, pixel_ok, xi, yi, half)
        dx = (xi[:, None] + ox[None, :]) - x[:, None]
        dy = (yi[:, None] + oy[None, :]) - y[:, None]
        if others is not None:
            d = d - _others_light(others, x, y, xi, yi, ox, oy, half)
        base_sky = np.median(np.concatenate([d[:, ox == -half], d[:, ox == half]], axis=1), axis=1)
        w = 1.0 / (np.maximum(d - base_sky[:, None], 0.0) + sky_var)
        if ok is not None:
            w = np.where(ok, w, 0.0)
        w = np.where(np.isfinite(d), w, 0.0)
        return cls(dx=dx, dy=dy, d=np.nan_to_num(d), w=w)

    def solve(self, p, rows):
        """(flux, weighted residuals) of the stars `rows` for the shape parameters `p`:
        each star's flux and a constant sky under its stamp solved linearly."""
        m = _params_to_psf(p).pixel_values(self.dx[rows], self.dy[rows])
        ww = self.w[rows]
        dd = self.d[rows]
        s_w = ww.sum(1)
        s_m = (ww * m).sum(1)
        s_mm = (ww * m * m).sum(1)
        s_d = (ww * dd).sum(1)
        s_md = (ww * m * dd).sum(1)
        det = s_mm * s_w - s_m * s_m
        det = np.where(det > 0, det, 1.0)
        flux = (s_md * s_w - s_m * s_d) / det
        sky = (s_mm * s_d - s_m * s_md) / det
        resid = np.sqrt(ww) * (dd - flux[:, None] * m - sky[:, None])
        return flux, resid


def _start_params(fwhm_guess: float, beta_guess: float, others) -> np.ndarray:
    """(ln FWHM, e1, e2, ln(beta - 1)) to start from: the guesses, or the profile the
    others were rendered with."""
    if others is None:
        return np.array([np.log(max(fwhm_guess, 1.0)), 0.0, 0.0, np.log(beta_guess - 1.0)])
    q = others[3]
    return np.array([np.log(q.fwhm_pix), q.ellipticity * np.cos(2 * q.theta_rad),
                     q.ellipticity * np.sin(2 * q.theta_rad), np.log(max(q.beta - 1.0, 0.31))])


#: bounds of the shape parameters (ln FWHM, e1, e2, ln(beta - 1))
_SHAPE_LOWER = [np.log(0.5), -0.6, -0.6, np.log(0.3)]
_SHAPE_UPPER = [np.log(80.0), 0.6, 0.6, np.log(15.0)]


def _fit_shape(stamps: _PSFStamps, p0: np.ndarray):
    """The shape fitted on the kept stars; stars that fit badly (chi2 above
    max(3 x median, 2)) dropped and the fit repeated once. Returns (parameters, kept)."""
    from scipy.optimize import least_squares

    n = len(stamps.d)
    keep = np.ones(n, dtype=bool)
    p = p0
    n_pix = np.maximum((stamps.w > 0).sum(1), 1)
    for _round in range(2):
        rows = np.flatnonzero(keep)
        if rows.size < 3:
            break
        res = least_squares(lambda q: stamps.solve(q, rows)[1].ravel(), p, bounds=(_SHAPE_LOWER, _SHAPE_UPPER),
                            x_scale=[0.05, 0.02, 0.02, 0.1], diff_step=1e-3, max_nfev=60)
        p = res.x
        _, r_all = stamps.solve(p, np.arange(n))
        chi = (r_all ** 2).sum(1) / n_pix
        med = np.median(chi[keep])
        new_keep = chi < max(3.0 * med, 2.0)
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    return p, keep


def fit_positions(data: np.ndarray, x: np.ndarray, y: np.ndarray, psf: MoffatPSF, sky_var: float,
                  pixel_ok: np.ndarray | None = None, iterations: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Positions of stars near (x, y) [pix] fitted with the pixel-integrated `psf`: flux,
    a constant sky and the shift, by Gauss-Newton on a stamp of radius 1.5 FWHM (at least
    3 px), pixels weighted by their Poisson plus `sky_var` variance. Where a windowed
    centroid of an undersampled star leans towards its pixel's centre, this does not.
    A star whose fit wanders more than a pixel keeps its start position."""
    ny, nx = data.shape
    half = int(max(3, np.ceil(1.5 * psf.fwhm_pix)))
    x0 = np.asarray(x, float)
    y0 = np.asarray(y, float)
    xi = np.clip(np.rint(x0).astype(np.int64), half, nx - half - 1)
    yi = np.clip(np.rint(y0).astype(np.int64), half, ny - half - 1)
    d, ok, ox, oy = _gather(data, pixel_ok, xi, yi, half)
    w = 1.0 / (np.maximum(d - np.median(d, axis=1, keepdims=True), 0.0) + sky_var)
    w = np.where(np.isfinite(d) & (ok if ok is not None else True), w, 0.0)
    d = np.nan_to_num(d)
    px, py = xi[:, None] + ox[None, :], yi[:, None] + oy[None, :]
    xc, yc = x0.copy(), y0.copy()
    step = 0.02
    for _ in range(iterations):
        m = psf.pixel_values(px - xc[:, None], py - yc[:, None])
        # derivatives of the model with respect to the star's position
        mx = (psf.pixel_values(px - xc[:, None] - step, py - yc[:, None]) - m) / step
        my = (psf.pixel_values(px - xc[:, None], py - yc[:, None] - step) - m) / step
        flux = np.maximum(((w * m * d).sum(1) - (w * m).sum(1) * (w * d).sum(1) / np.maximum(w.sum(1), 1e-30))
                          / np.maximum((w * m * m).sum(1) - (w * m).sum(1) ** 2 / np.maximum(w.sum(1), 1e-30),
                                       1e-30), 0.0)
        # one linear step in (flux, sky, dx, dy) around the current model
        basis = np.stack([m, np.ones_like(m), flux[:, None] * mx, flux[:, None] * my], axis=2)   # (N, P, 4)
        resid = d - flux[:, None] * m
        a = np.einsum("np,npi,npj->nij", w, basis, basis)
        b = np.einsum("np,npi,np->ni", w, basis, resid)
        try:
            sol = np.linalg.solve(a + 1e-9 * np.eye(4)[None], b[:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:
            break
        xc += np.clip(np.nan_to_num(sol[:, 2]), -0.5, 0.5)
        yc += np.clip(np.nan_to_num(sol[:, 3]), -0.5, 0.5)
    lost = ~(np.hypot(xc - x0, yc - y0) <= 1.0)
    xc[lost], yc[lost] = x0[lost], y0[lost]
    return xc, yc


def _core_misfit(model: np.ndarray, flux: np.ndarray, resid_w: np.ndarray, w: np.ndarray) -> float:
    """Relative rms model error in the stars' cores (pixels above 1% of the peak):
    `model` unit-flux pixel values, `flux` each star's fitted flux, `resid_w` the
    weighted residuals sqrt(w) (data - model), `w` the inverse variances (0: unused)."""
    if flux.size == 0:
        return 0.0
    core = (model > 0.01 * model.max(axis=1, keepdims=True)) & (w > 0)
    light = (flux[:, None] * model) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        excess = np.where(core, (resid_w ** 2 - 1.0) / np.where(w > 0, w, 1.0), 0.0).sum(axis=1)
        ratio = excess / np.where(core, light, 0.0).sum(axis=1)
    ratio = ratio[np.isfinite(ratio) & (flux > 0)]
    return float(np.sqrt(max(np.median(ratio), 0.0))) if ratio.size else 0.0


def _fit_size_field(p, solve, x, y, rows, shape) -> "SizeField":
    """Each star's best size factor (a grid of trial FWHMs with the shape held), then a
    quadratic surface through them, kept only if the stars' sizes really differ."""
    steps = np.linspace(-0.12, 0.12, 13)
    chi = np.empty((steps.size, rows.size))
    for k, st in enumerate(steps):
        q = np.array(p, float)
        q[0] += st
        _, r = solve(q, rows)
        chi[k] = (r ** 2).sum(1)
    best = np.clip(np.argmin(chi, axis=0), 1, steps.size - 2)
    c0, c1, c2 = (chi[best + d, np.arange(rows.size)] for d in (-1, 0, 1))
    curv = (c0 - 2 * c1 + c2) / (steps[1] - steps[0]) ** 2
    shift = np.where(curv > 0, 0.5 * (c0 - c2) / np.where(curv > 0, curv, 1) / (steps[1] - steps[0]), 0.0)
    ln_s = steps[best] + shift * (steps[1] - steps[0]) ** 2
    err = np.where(curv > 0, np.sqrt(2.0 / np.where(curv > 0, curv, 1)), np.inf)
    good = np.isfinite(err) & (np.abs(ln_s) < 0.115)
    flat = SizeField((0.0,) * 6, shape)
    if good.sum() < 12:
        return flat
    ny, nx = shape
    u = (x[good] - (nx - 1) / 2) / (nx / 2)
    v = (y[good] - (ny - 1) / 2) / (ny / 2)
    a = _size_terms(u, v)
    wt = 1.0 / np.maximum(err[good], 0.003) ** 2
    val = ln_s[good]
    sel = np.ones(val.size, dtype=bool)
    for _ in range(3):
        coef = np.linalg.lstsq(a[sel] * np.sqrt(wt[sel])[:, None], val[sel] * np.sqrt(wt[sel]), rcond=None)[0]
        res = val - a @ coef
        scatter = 1.4826 * np.median(np.abs(res[sel])) + 1e-4
        sel = np.abs(res) < 3 * max(scatter, 0.005)
    mean = np.average(val[sel], weights=wt[sel])
    chi_const = float((wt[sel] * (val[sel] - mean) ** 2).sum())
    chi_quad = float((wt[sel] * (val[sel] - a[sel] @ coef) ** 2).sum())
    uu, vv = np.meshgrid(np.linspace(-1, 1, 5), np.linspace(-1, 1, 5))
    span = np.ptp(_size_terms(uu.ravel(), vv.ravel()) @ coef)
    # keep the surface when it explains the sizes much better and changes the FWHM by > 1%
    if sel.sum() >= 12 and chi_const - chi_quad > 25.0 and span > 0.01:
        return SizeField(tuple(float(c) for c in coef), shape)
    return SizeField((float(mean),) + (0.0,) * 5, shape)


def stamp_radius(psf: MoffatPSF, flux: np.ndarray, threshold: float, max_radius: float) -> np.ndarray:
    """Radius (pixels) beyond which a star of `flux` adds less than `threshold` per pixel."""
    a = psf.alpha
    peak = np.maximum(flux, 0.0) * (psf.beta - 1.0) / (np.pi * a * a)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = a * np.sqrt(np.maximum((peak / threshold) ** (1.0 / psf.beta) - 1.0, 0.0))
    r = r / max(1.0 - psf.ellipticity, 0.4) ** 0.5
    return np.clip(np.nan_to_num(r, nan=0.0), 1.5 * psf.fwhm_pix, max_radius)


class StarRenderer:
    """Draws many stars of one PSF into an image.

    The pixel-integrated PSF is tabulated once, out to `max_radius_pix`, at
    phases x phases sub-pixel offsets (the core, within 3 FWHM, integrated over the
    pixel; the wings, smooth there, evaluated at pixel centres). Each star adds the
    stamp of its nearest phase (positions quantised to 1/phases pixel), cropped to
    its own radius and scaled by its flux, to its slice of the image."""

    def __init__(self, psf: MoffatPSF, max_radius_pix: float, phases: int = 8):
        self.psf = psf
        self.phases = phases
        self.hmax = int(np.ceil(max_radius_pix))
        off = np.arange(-self.hmax, self.hmax + 1)
        frac = np.arange(phases + 1) / phases - 0.5
        dx = off[None, None, None, :] - frac[None, :, None, None]
        dy = off[None, None, :, None] - frac[:, None, None, None]
        self.library = psf.pixel_values(dx, dy, oversample=1).astype(np.float32)
        c = min(int(np.ceil(3 * psf.fwhm_pix)), self.hmax)
        if psf.oversample() > 1 and c > 0:
            core = slice(self.hmax - c, self.hmax + c + 1)
            oc = off[core]
            self.library[:, :, core, core] = psf.pixel_values(oc[None, None, None, :] - frac[None, :, None, None],
                                                               oc[None, None, :, None] - frac[:, None, None, None]
                                                               ).astype(np.float32)

    def add(self, image: np.ndarray, x, y, flux, radius) -> np.ndarray:
        """Add the stars (flux may be negative, to subtract) to `image` in place."""
        ny, nx = image.shape
        flux = np.asarray(flux, float)
        x = np.asarray(x, float)
        y = np.asarray(y, float)
        half = np.minimum(np.ceil(np.asarray(radius, float)).astype(int), self.hmax)
        sel = np.isfinite(flux) & (flux != 0) & np.isfinite(x) & np.isfinite(y)
        sel &= (x > -half - 1) & (x < nx + half) & (y > -half - 1) & (y < ny + half)
        idx = np.flatnonzero(sel)
        if idx.size == 0:
            return image
        p = self.phases
        xi = np.rint(x[idx]).astype(int)
        yi = np.rint(y[idx]).astype(int)
        px = np.clip(np.rint((x[idx] - xi + 0.5) * p).astype(int), 0, p).tolist()
        py = np.clip(np.rint((y[idx] - yi + 0.5) * p).astype(int), 0, p).tolist()
        lib, hm = self.library, self.hmax
        for k, (star, h, cx, cy) in enumerate(zip(idx.tolist(), half[idx].tolist(), xi.tolist(), yi.tolist())):
            x0, y0 = cx - h, cy - h
            xa, ya = max(x0, 0), max(y0, 0)
            xb, yb = min(x0 + 2 * h + 1, nx), min(y0 + 2 * h + 1, ny)
            if xa >= xb or ya >= yb:
                continue
            stamp = lib[py[k], px[k], hm - h + ya - y0: hm - h + yb - y0, hm - h + xa - x0: hm - h + xb - x0]
            image[ya:yb, xa:xb] += np.float32(flux[star]) * stamp
        return image


def render_stars(shape: tuple[int, int], x: np.ndarray, y: np.ndarray, flux: np.ndarray,
                 psf: MoffatPSF, radius: np.ndarray, phases: int = 8) -> np.ndarray:
    """An image (float32) of stars of total `flux` at (x, y), each drawn out to its own
    `radius` (pixels); see StarRenderer."""
    radius = np.asarray(radius, float)
    hmax = float(np.nanmax(radius)) if radius.size else 1.0
    return StarRenderer(psf, hmax, phases).add(np.zeros(shape, dtype=np.float32), x, y, flux, radius)


class ApertureKernel:
    """Fraction of a unit-flux star's light inside a circular aperture of radius
    `r_ap_pix`, as a function of the star's offset (dx, dy) from the aperture centre,
    tabulated out to `reach_pix` by convolving the PSF with the (pixelised) aperture."""

    def __init__(self, psf: MoffatPSF, r_ap_pix: float, reach_pix: float, step_pix: float = 0.25):
        from scipy.signal import fftconvolve

        self.step = step_pix
        self.reach = float(reach_pix)
        n = int(np.ceil((reach_pix + r_ap_pix + 2) / step_pix))
        g = (np.arange(-n, n + 1)) * step_pix
        gx, gy = np.meshgrid(g, g)
        psf_grid = psf.evaluate(gx, gy) * step_pix ** 2
        # the aperture, anti-aliased, convolved with one pixel (the data are pixel sums)
        m = int(np.ceil((r_ap_pix + 1.0) / step_pix))
        a = np.arange(-m, m + 1) * step_pix
        ax, ay = np.meshgrid(a, a)
        sub = (np.arange(4) + 0.5) / 4 - 0.5
        disk = np.zeros_like(ax)
        for sy in sub:
            for sx in sub:
                disk += np.hypot(ax + sx * step_pix, ay + sy * step_pix) <= r_ap_pix
        disk /= 16.0
        # a one-pixel box on the fine grid, of odd size so that it stays centred
        # (an even-sized kernel would shift the table by half a cell)
        k = int(round(1.0 / step_pix))
        edge = np.ones(k + 1)
        edge[0] = edge[-1] = 0.5
        box = np.outer(edge, edge) / (k * k)
        disk = fftconvolve(disk, box, mode="same")
        self.table = fftconvolve(psf_grid, disk, mode="same")
        self.n = n
        self.r_ap = r_ap_pix

    def __call__(self, dx, dy) -> np.ndarray:
        """Fraction of light from a star at offset (dx, dy) [pix] inside the aperture."""
        from scipy.ndimage import map_coordinates

        dx = np.asarray(dx, float)
        dy = np.asarray(dy, float)
        # the table is the PSF convolved with the aperture, i.e. indexed by -offset
        cx = -dx / self.step + self.n
        cy = -dy / self.step + self.n
        out = map_coordinates(self.table, [cy.ravel(), cx.ravel()], order=1, mode="constant", cval=0.0)
        return out.reshape(dx.shape)


def fit_fluxes(data: np.ndarray, variance: np.ndarray | float, x: np.ndarray, y: np.ndarray,
               psf: MoffatPSF, fit_radius_pix: float, pixel_ok: np.ndarray | None = None,
               model_radius_pix: np.ndarray | None = None, iter_lim: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Simultaneous PSF photometry at fixed positions on sky-subtracted `data`.

    The pixels fitted are those within `fit_radius_pix` of any star. Each star's
    unit-flux model is one column of a sparse design matrix, over the fitted pixels
    within its `model_radius_pix` (default: the fit radius; give bright stars more, so
    that their wings in a neighbour's pixels are theirs, not the neighbour's). All
    fluxes are solved together (weighted linear least squares). Returns (flux, flux_err)
    with errors from the diagonal of the normal matrix; a star with no fitted pixel gets
    NaN and an infinite error.

    Only stars whose models overlap are coupled, so the normal matrix (stars x stars)
    is nearly diagonal: it is formed and factorised directly (sparse LU), which gives the
    least-squares solution in a fraction of a second where an iterative solver over the
    pixels (LSQR) took tens of seconds on a crowded 4k frame. Should the factorisation
    fail (two stars at one position make the matrix singular), LSQR over the pixels
    (at most `iter_lim` iterations) solves it."""
    a, b, order = _flux_design(data, variance, x, y, psf, fit_radius_pix, pixel_ok, model_radius_pix)
    at = a.T.tocsr()
    normal = at @ a
    diag = np.empty(order.size)
    diag[order] = normal.diagonal()
    use = np.flatnonzero(diag[order] > 0)   # columns of `a` (stars in `order`)
    flux = np.full(order.size, np.nan)
    solution = _solve_normal(normal[use][:, use], at[use] @ b)
    if solution is None:
        from scipy.sparse.linalg import lsqr

        solution = lsqr(a[:, use], b, atol=1e-7, btol=1e-7, iter_lim=iter_lim)[0]
    flux[order[use]] = solution
    with np.errstate(divide="ignore"):
        err = np.where(diag > 0, 1.0 / np.sqrt(np.where(diag > 0, diag, 1.0)), np.inf)
    return flux, err


def _flux_design(data, variance, x, y, psf, fit_radius_pix, pixel_ok, model_radius_pix):
    """The weighted design matrix of :func:`fit_fluxes` (CSC; a row per fitted pixel, in
    the order of their flat indices; a column per star, the stars in the order `order`,
    grouped by model radius), the weighted data of those pixels, and `order`. Large
    temporary arrays are few: fresh memory is slow to page in."""
    from scipy.sparse import csc_matrix

    ny, nx = data.shape
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    n = x.size
    xi = np.rint(x).astype(np.int64)
    yi = np.rint(y).astype(np.int64)
    usable = pixel_ok.ravel() if pixel_ok is not None else None

    def disk_entries(rows, radius):
        h = int(np.ceil(radius))
        oy, ox = np.mgrid[-h: h + 1, -h: h + 1]
        disk = (ox * ox + oy * oy) <= radius ** 2
        ox, oy = ox[disk], oy[disk]
        px = xi[rows, None] + ox[None, :]
        py = yi[rows, None] + oy[None, :]
        inside = (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
        flat = np.where(inside, py * nx + px, 0)
        if usable is not None:
            inside &= usable[flat]
        return px, py, flat, inside

    def chunks(rows, r):
        return np.array_split(rows, max(1, rows.size * int(r * r * 3.2) // 3_000_000 + 1))

    fitted = np.zeros(ny * nx, dtype=bool)   # the pixels fitted: within the fit radius of a star
    for chunk in chunks(np.arange(n), fit_radius_pix):
        _, _, flat, inside = disk_entries(chunk, fit_radius_pix)
        fitted[flat[inside]] = True
    pix = np.flatnonzero(fitted)
    row_of = np.empty(ny * nx, dtype=np.int32)   # the row of each fitted pixel (only those are read)
    row_of[pix] = np.arange(pix.size, dtype=np.int32)
    var = variance.ravel()[pix] if isinstance(variance, np.ndarray) else np.full(pix.size, float(variance))
    good = np.isfinite(var) & (var > 0)
    weight = np.where(good, 1.0 / np.sqrt(np.where(good, var, 1.0)), 0.0)
    b = np.nan_to_num(data.ravel()[pix].astype(np.float64)) * weight
    radius = np.full(n, float(fit_radius_pix)) if model_radius_pix is None else \
        np.maximum(np.asarray(model_radius_pix, float), fit_radius_pix)
    order, counts, rows, vals = [], [], [], []
    for r in np.unique(np.ceil(radius)):
        for chunk in chunks(np.flatnonzero(np.ceil(radius) == r), r):
            px, py, flat, inside = disk_entries(chunk, r)
            inside &= fitted[flat]
            m = psf.pixel_values(px - x[chunk, None], py - y[chunk, None])
            row = row_of[flat[inside]]   # a star's pixels come in flat order: its column is sorted
            order.append(chunk)
            counts.append(np.count_nonzero(inside, axis=1))
            rows.append(row)
            vals.append(m[inside] * weight[row])
    del row_of, fitted
    indptr = np.concatenate([[0], np.cumsum(np.concatenate(counts))])
    a = csc_matrix((np.concatenate(vals), np.concatenate(rows), indptr), shape=(pix.size, n))
    return a, b, np.concatenate(order)


def _solve_normal(normal, rhs) -> np.ndarray | None:
    """The solution of the symmetric positive-definite sparse system `normal` x = `rhs`
    (sparse LU in symmetric mode), or None when it is singular or the solution does not
    satisfy the system to 1e-8 of its right-hand side."""
    from scipy.sparse.linalg import splu

    if rhs.size == 0:
        return np.zeros(0)
    try:
        lu = splu(normal.tocsc(), permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                  options={"SymmetricMode": True})
        solution = lu.solve(rhs)
    except RuntimeError:   # exactly singular
        return None
    if not np.all(np.isfinite(solution)):
        return None
    if np.linalg.norm(normal @ solution - rhs) > 1e-8 * max(np.linalg.norm(rhs), 1e-300):
        return None
    return solution
