"""Measuring one frame against the dataset's catalogue: the per-image stage.

The stage is an ordered list of small named steps over one state object
(:data:`MEASURE_STEPS`, each timed, an unexpected error naming the step and the
frame): detect (sky mesh, bright stars) -> align (to the catalogue) -> psf
(fitted on isolated stars at their aligned positions; photometric scale against
the reference fluxes) -> cosmics (hits found, bad pixels repaired) -> aperture
(sums at every catalogue position) -> neighbours (modelled light subtracted;
optional) -> sky (clipped annuli) -> fluxes (errors, light on masked pixels) ->
variables (stars far from their reference brightness re-modelled) -> errors
(flags). Its fixed numbers are in :class:`MeasureTuning`.

The result (:class:`~luigi_phot.photometry.frame_result.FrameMeasurement`) is a table
with one row per catalogue star, with units, and the frame's facts (its header) as a
:class:`~luigi_phot.photometry.frame_result.FrameFacts`; :class:`FrameRejected` says why
a frame cannot be measured.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
from astropy.stats import mad_std

from . import flags as F
from .alignment import Alignment, AlignmentError, FitStars, affine_from_wcs, align
from .aperture import (ApertureGeometry, annulus_sky, aperture_sums, ccd_variance, masked_overlaps, noise_area,
                       noise_model, pixel_flag_summary, repair_pixels, sky_estimate_factor)
from .background import pixel_noise, sky_mesh
from .catalogue import Catalogue, psf_star_candidates
from .detection import (ControlPoints, alignment_control_points, find_cosmic_rays, flag_flat_maximum,
                        star_sharpness_limit)
from .frame_result import FrameFacts, FrameMeasurement, star_table
from .frames import PIXEL_BAD, PIXEL_COSMIC, PIXEL_SATURATED, Frame
from .psf import ApertureKernel, MoffatPSF, StarRenderer, fit_psf, stamp_radius
from .steps import Step, run_steps

__all__ = ["MeasureSettings", "FrameRejected", "FrameMeasurement", "measure_frame", "align_to_catalogue"]

#: Fractional uncertainty of the modelled light of a neighbour in an aperture (the PSF
#: model's error at that distance), from frame to frame. Measured on held-out frames whose
#: PSF is not a Moffat (a double Gaussian, an equal star 1.2 aperture radii away): the
#: modelled light differs from the true light by 0.55-0.95% rms across frames (plus a
#: constant offset, which the light curve's own fit absorbs); light curves with this term
#: at 0 scatter 0.89 x their errors there, and on the project's own frames with an equal
#: star at 1.2 aperture radii likewise (README section 8).
NEIGHBOUR_MODEL_ERROR = 0.01
#: Plain apertures (no model): masked pixels are interpolated; the light on them is taken as
#: 20% uncertain, and a star with more than 5% of its light there is flagged LARGE_REPAIR.
REPAIR_ERROR = 0.2
LARGE_REPAIR_FRACTION_INTERPOLATED = 0.05
#: With the neighbour model, masked pixels in apertures take the model's value (the star's
#: own PSF scaled by its fitted flux, plus its neighbours' light and the sky). Stars with more
#: than REFIT_REPAIRED_FRACTION of their light there (and more of their own light than their
#: neighbours' in the aperture) have their flux fitted on the frame; the model's light there
#: is uncertain by the model's misfit (at least MIN_PSF_MISFIT; see MaskedLight) and the
#: fitted flux's error. Beyond LARGE_REPAIR_FRACTION of a star's light on masked pixels its
#: points scatter more than 1.3x their error bars (benchmarks/repair_fraction.py on generated
#: and real-PSF frames: from 0.4-0.5 in 0.8-1.6" seeing, 0.5 in 1.1-3.2", 0.6 on a real
#: PSF; README section 7): flagged LARGE_REPAIR, severe.
REFIT_REPAIRED_FRACTION = 0.01
MIN_PSF_MISFIT = 0.01
LARGE_REPAIR_FRACTION = 0.4


class FrameRejected(Exception):
    """The frame cannot be measured; str() is the reason."""


@dataclass(frozen=True)
class MeasureSettings:
    aperture_arcsec: float
    annulus_arcsec: tuple[float, float]
    aperture_fwhm_multiple: float | None = None
    subtract_neighbours: bool = True
    max_alignment_rms_pix: float = 0.5
    min_matched_stars: int = 8

    @classmethod
    def from_config(cls, photometry) -> "MeasureSettings":
        return cls(aperture_arcsec=photometry.aperture_arcsec, annulus_arcsec=photometry.annulus(),
                   aperture_fwhm_multiple=photometry.aperture_fwhm_multiple,
                   subtract_neighbours=photometry.subtract_neighbours,
                   max_alignment_rms_pix=photometry.max_alignment_rms_pix,
                   min_matched_stars=photometry.min_matched_stars)


def _psf_at_phases(psf: MoffatPSF):
    oy, ox = np.mgrid[-3:4, -3:4]
    return [psf.pixel_values(ox - fx, oy - fy) for fx, fy in ((0, 0), (0.5, 0), (0.5, 0.5), (0.25, 0.25))]


class NeighbourModel:
    """Every catalogue star's light on a frame, modelled from its reference flux, the
    frame's photometric scale and PSF (whose size may change across the frame): how
    much of it falls in each other star's aperture (aperture-convolved PSF tables at a
    few PSF sizes, interpolated; pairs within reach), and an image of it to subtract
    before the sky annuli are measured."""

    def __init__(self, x, y, model_flux, rel_err, psf: MoffatPSF, size, r_ap: float, r_out: float,
                 sky_sigma: float, shape):
        from scipy.spatial import cKDTree

        self.x, self.y, self.psf, self.shape = x, y, psf, shape
        self.flux = np.where(np.isfinite(model_flux) & (model_flux > 0), model_flux, 0.0)
        self.rel_err = np.nan_to_num(np.where(self.flux > 0, rel_err, 0.0), nan=0.0, posinf=0.0)
        self.sky_sigma = sky_sigma
        ny, nx = shape
        self.scale = size.scale_at(x, y) if size is not None and size.varies else np.ones(x.size)
        on_scale = self.scale[(x >= 0) & (x < nx) & (y >= 0) & (y < ny)]
        lo, hi = (float(on_scale.min()), float(on_scale.max())) if on_scale.size else (1.0, 1.0)
        self.levels = np.linspace(lo, hi, 3) if hi - lo > 0.005 else np.array([float(np.median(self.scale))])
        self.psfs = [dataclasses.replace(psf, fwhm_pix=psf.fwhm_pix * lv) for lv in self.levels]
        widest = self.psfs[-1]
        self.max_radius = min(10.0 * widest.fwhm_pix, 100.0)
        self.reach = r_out + 3.0 * widest.fwhm_pix
        self.r_out = r_out
        self.kernels = [ApertureKernel(q, r_ap, self.reach) for q in self.psfs]
        self.renderers = None
        self.own_fraction = self._interpolate(np.array([[float(k(0.0, 0.0))] for k in self.kernels]), self.scale)
        on = np.flatnonzero((x > -self.reach) & (x < nx + self.reach) & (y > -self.reach) & (y < ny + self.reach))
        self.tree = cKDTree(np.column_stack([x[on], y[on]]))
        self.on = on
        pairs = self.tree.query_pairs(r_ap + self.reach, output_type="ndarray")
        self.i = on[np.concatenate([pairs[:, 0], pairs[:, 1]])] if pairs.size else np.zeros(0, int)
        self.j = on[np.concatenate([pairs[:, 1], pairs[:, 0]])] if pairs.size else np.zeros(0, int)
        dx, dy = x[self.j] - x[self.i], y[self.j] - y[self.i]
        self.full_fraction = self._interpolate(np.array([k(dx, dy) for k in self.kernels]), self.scale[self.j])
        self.distance = np.hypot(dx, dy)
        self.level = np.abs(self.scale[:, None] - self.levels[None, :]).argmin(axis=1)
        self.beyond = [_LightBeyond(q, r_ap, self.reach + r_ap, self.max_radius) for q in self.psfs]
        self.radius = np.zeros(x.size)
        self._set_radius(np.arange(x.size))

    def _set_radius(self, rows) -> None:
        """Each star is drawn out to where it adds less than 0.02 sigma of sky noise a pixel;
        its light beyond that radius stays in the image, like the sky, so it is left out of
        its neighbours' apertures too (else it would be subtracted twice: once there, once
        with the sky). Updates the pair fractions of the stars in `rows`."""
        for k, q in enumerate(self.psfs):
            g = rows[self.level[rows] == k]
            if g.size:
                self.radius[g] = stamp_radius(q, np.abs(self.flux[g]), threshold=0.02 * self.sky_sigma,
                                              max_radius=self.max_radius)
        self.fraction = self.full_fraction.copy()
        for k, lb in enumerate(self.beyond):
            sel = self.level[self.j] == k
            self.fraction[sel] -= lb(self.distance[sel], self.radius[self.j[sel]])
        np.maximum(self.fraction, 0.0, out=self.fraction)

    def _interpolate(self, table: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """Linear interpolation in PSF size between tables computed at self.levels
        (table: (levels, n) or (levels, 1) broadcast)."""
        if len(self.levels) == 1:
            return np.broadcast_to(table[0], scale.shape).copy()
        pos = np.clip(np.interp(scale, self.levels, np.arange(len(self.levels))), 0, len(self.levels) - 1)
        k = np.minimum(np.floor(pos).astype(int), len(self.levels) - 2)
        f = pos - k
        cols = np.arange(scale.size) if table.shape[1] == scale.size else np.zeros(scale.size, dtype=int)
        return table[k, cols] * (1 - f) + table[k + 1, cols] * f

    def contamination(self):
        """Light of each star's neighbours inside its aperture, and its variance (PSF-model
        error and the neighbours' reference-flux errors)."""
        n = self.x.size
        light = self.flux[self.j] * self.fraction
        var = light ** 2 * (NEIGHBOUR_MODEL_ERROR ** 2 + self.rel_err[self.j] ** 2)
        return np.bincount(self.i, weights=light, minlength=n), np.bincount(self.i, weights=var, minlength=n)

    def close_light(self, within_pix: float) -> np.ndarray:
        """Light of each star's neighbours closer than `within_pix` inside its aperture: a
        blend the aperture cannot separate from the star's own light."""
        close = self.distance <= within_pix
        return np.bincount(self.i[close], weights=(self.flux[self.j] * self.fraction)[close], minlength=self.x.size)

    def subtract_from(self, data, rows=None, flux=None, cores_above: float | None = None):
        """Subtract the model of stars `rows` (all) with `flux` (their model fluxes). With
        `cores_above`, return the boolean image of pixels where the model exceeds it."""
        rows = np.arange(self.x.size) if rows is None else rows
        flux = self.flux[rows] if flux is None else flux
        if self.renderers is None:
            self.renderers = [StarRenderer(q, self.max_radius) for q in self.psfs]
        image = np.zeros(data.shape, dtype=np.float32) if cores_above is not None else data
        for k, renderer in enumerate(self.renderers):
            g = np.flatnonzero(self.level[rows] == k)
            if g.size:
                renderer.add(image, self.x[rows[g]], self.y[rows[g]], flux[g] if cores_above is not None else -flux[g],
                             self.radius[rows[g]])
        if cores_above is None:
            return None
        data -= image
        return image > cores_above

    def update_variables(self, flux, flux_err, usable, data, pixel_ok, pixel_var, always=(),
                         only=None, refit=()) -> np.ndarray:
        """Re-model the stars whose light departs from the model: candidates are stars whose
        aperture flux departs by more than 5 sigma and 5% (and the stars in `always`, e.g.
        the target); for each, the change of its total flux is fitted with the PSF on the
        residual image `data` (the same way its reference flux and the frame's scale were
        measured, so its wings are modelled consistently) and applied when significant.
        The stars in `refit` are fitted too and take the fitted flux whatever its change
        (stars whose masked aperture pixels are repaired from their model).
        The difference is subtracted from `data`; returns the stars whose aperture or
        annulus that changes."""
        est = flux / self.own_fraction
        sig = flux_err / self.own_fraction
        delta = est - self.flux
        # not a star with more of its neighbours' modelled light in its aperture than its own
        # (unless in `always`): its aperture departs with their model's misfit, which its fit
        # would take up (a faint star beside a bright one in poor seeing)
        crowded = self.contamination()[0] > self.flux * self.own_fraction
        with np.errstate(invalid="ignore"):
            cand = (np.abs(delta) > 5 * sig) & (np.abs(delta) > 0.05 * self.flux) & ~crowded
            cand[list(always)] = True
            cand[list(refit)] = True
            if only is not None:
                mask = np.zeros(cand.size, dtype=bool)
                mask[list(only)] = True
                cand &= mask
            cand = np.flatnonzero(cand & usable & np.isfinite(delta))
        if cand.size == 0:
            return cand
        d, err = self._fit_change(data, cand, pixel_ok, pixel_var)
        # a star's light can fade to nothing, not below: a fit below zero (a faint star taking up
        # a brighter neighbour's model misfit, a detection of the reference's noise) would
        # otherwise hand its neighbours' apertures light that is not there
        d = np.maximum(d, -self.flux[cand])
        forced = np.isin(cand, list(always))
        keep = np.isfinite(d) & ((np.abs(d) > 5 * err) & (np.abs(d) > 0.05 * self.flux[cand])
                                 | forced & (np.abs(d) > 2 * err) | np.isin(cand, np.asarray(refit, dtype=int)))
        changed, d = cand[keep], d[keep]
        if changed.size == 0:
            return changed
        # take the old model out and draw the new one (its radius follows its flux)
        self.subtract_from(data, changed, -self.flux[changed])
        drawn = self.radius[changed].copy()
        self.flux[changed] += d
        self._set_radius(changed)
        self.subtract_from(data, changed)
        drawn = np.maximum(drawn, self.radius[changed])
        # (of the absolute flux: a faint star fitted below zero must not blow its error up)
        self.rel_err[changed] = np.nan_to_num(err[keep] / np.maximum(np.abs(self.flux[changed]), 1e-9))
        # the image changed only within each star's drawn radius
        near = self.tree.query_ball_point(np.column_stack([self.x[changed], self.y[changed]]), r=self.r_out + drawn)
        return np.unique(np.concatenate([self.on[np.asarray(k, dtype=int)] for k in near]))

    def core_pixels(self, rows, shape, pixel_ok):
        """The pixels within 1.5 FWHM (at least 3) of each of the stars `rows`, one group per
        PSF size: yields (selection into rows, flat pixel indices, usable: on the frame and
        in `pixel_ok`, the unit-flux PSF's values there), each (stars in group, pixels)."""
        ny, nx = shape
        for k, q in enumerate(self.psfs):
            sel = np.flatnonzero(self.level[rows] == k)
            if sel.size == 0:
                continue
            r = rows[sel]
            h = int(np.ceil(max(1.5 * q.fwhm_pix, 3.0)))
            oy, ox = np.mgrid[-h:h + 1, -h:h + 1]
            disk = (ox * ox + oy * oy) <= h * h
            ox, oy = ox[disk], oy[disk]
            px = np.rint(self.x[r]).astype(int)[:, None] + ox[None, :]
            py = np.rint(self.y[r]).astype(int)[:, None] + oy[None, :]
            inside = (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
            flat = np.where(inside, py * nx + px, 0)
            unit = q.pixel_values(px - self.x[r, None], py - self.y[r, None])
            yield sel, flat, inside & pixel_ok.ravel()[flat], unit

    def _fit_change(self, residual, rows, pixel_ok, pixel_var):
        """PSF fit of each star's flux change (with a constant local sky) on the residual
        image within 1.5 FWHM of it; returns (change, its error)."""
        change = np.full(rows.size, np.nan)
        error = np.full(rows.size, np.nan)
        for sel, flat, ok, m in self.core_pixels(rows, residual.shape, pixel_ok):
            r = rows[sel]
            vals = np.where(ok, residual.ravel()[flat], 0.0).astype(np.float64)
            # variance: background plus the star's own Poisson noise
            w = np.where(ok, 1.0 / (pixel_var + np.maximum(self.flux[r, None] * m, 0.0)), 0.0)
            s_w, s_m, s_mm = w.sum(1), (w * m).sum(1), (w * m * m).sum(1)
            s_d, s_md = (w * vals).sum(1), (w * m * vals).sum(1)
            det = s_mm * s_w - s_m * s_m
            good = det > 0
            change[sel] = np.where(good, (s_md * s_w - s_m * s_d) / np.where(good, det, 1.0), np.nan)
            error[sel] = np.where(good, np.sqrt(s_w / np.where(good, det, 1.0)), np.nan)
        return change, error


class _LightBeyond:
    """Light of a unit-flux star (circularised PSF) lying beyond radius R from it and inside
    an aperture of radius r_ap whose centre is at distance d, tabulated in (d, R)."""

    def __init__(self, psf: MoffatPSF, r_ap: float, max_distance: float, max_radius: float):
        rho = np.sqrt((np.arange(24) + 0.5) / 24) * r_ap
        phi = np.arange(36) * (2 * np.pi / 36)
        px = (rho[:, None] * np.cos(phi)[None, :]).ravel()
        py = (rho[:, None] * np.sin(phi)[None, :]).ravel()
        cell = np.pi * r_ap ** 2 / px.size
        self.d = np.arange(0.0, max_distance + 1.0, 0.5)
        self.r = np.arange(0.0, max_radius + 2.0, 1.0)
        circular = dataclasses.replace(psf, ellipticity=0.0)
        u = np.hypot(px[None, :] + self.d[:, None], py[None, :])            # (D, P)
        light = circular.evaluate(u, 0.0) * cell
        self.table = np.array([(light * (u > r)).sum(axis=1) for r in self.r]).T   # (D, R)

    def __call__(self, d, radius):
        from scipy.ndimage import map_coordinates

        return map_coordinates(self.table, [np.asarray(d) / 0.5, np.asarray(radius) / 1.0], order=1, mode="nearest")


class MaskedLight:
    """The light of stars on masked (bad, hit) pixels inside their apertures.

    With the neighbour model, those pixels take the model's value: every star's modelled
    light there (the star's own PSF scaled by its fitted flux, its neighbours' model) plus
    the star's sky, so the aperture flux gains sum(weight x (sky - residual)) over them,
    the residual image being the frame less every modelled star. The uncertainty of that
    light is the model's misfit (the larger of the PSF stars' core misfit and the star's
    own on its unmasked core pixels: a position a fraction of a pixel off shows there) and
    the star's flux error. Without a model (plain apertures) the interpolated values stay
    and the light on them is REPAIR_ERROR uncertain."""

    def __init__(self, pixel_flags, bits: int, x, y, r_ap_pix: float, pixel_summary,
                 model: "NeighbourModel | None", psf: MoffatPSF, psf_misfit: float, pixel_var: float):
        n = np.size(x)
        touched = np.flatnonzero((pixel_summary & bits) != 0)
        self.masked = masked_overlaps(pixel_flags, bits, x, y, r_ap_pix, rows=touched)
        self.model = model
        self.misfit = max(psf_misfit, MIN_PSF_MISFIT)
        self.pixel_ok = (pixel_flags == 0)
        self.pixel_var = pixel_var
        if model is None or len(model.psfs) == 1:
            self.fraction = self.masked.light_fraction(psf if model is None else model.psfs[0], n)
        else:  # each star with the PSF size at its place
            level = model.level[self.masked.star]
            self.fraction = sum(self.masked.light_fraction(q, n, pairs=np.flatnonzero(level == k))
                                for k, q in enumerate(model.psfs))
        self.large_fraction = LARGE_REPAIR_FRACTION if model is not None else LARGE_REPAIR_FRACTION_INTERPOLATED

    def refit_rows(self, neighbour_light: np.ndarray) -> np.ndarray:
        """Stars whose flux is fitted because enough of their light is on masked pixels, and
        whose own modelled light in their aperture exceeds their neighbours' there (a faint
        star beside a bright one, its core on a bad column, would be fitted to the bright
        star's residuals, and that error would land in the bright star's aperture)."""
        if self.model is None:
            return np.zeros(0, int)
        own = self.model.flux * self.model.own_fraction
        return np.flatnonzero((self.fraction > REFIT_REPAIRED_FRACTION) & (own > neighbour_light))

    def flux_correction(self, residual: np.ndarray, sky: np.ndarray) -> np.ndarray:
        """What replacing the interpolated values by the model's adds to each aperture flux."""
        if self.model is None:
            return np.zeros(self.fraction.size)
        m = self.masked
        return m.per_star(sky[m.star] - residual.ravel()[m.pixel], self.fraction.size)

    def variance(self, flux: np.ndarray, residual: np.ndarray, sky: np.ndarray) -> np.ndarray:
        """Variance (e^2) of the light each star has on masked pixels."""
        if self.model is None:
            return (REPAIR_ERROR * self.fraction * np.maximum(flux, 0.0)) ** 2
        own = self.fraction * np.abs(self.model.flux)
        misfit = np.maximum(self.local_misfit(residual, sky), self.misfit)
        return own ** 2 * (misfit ** 2 + self.model.rel_err ** 2)

    def local_misfit(self, residual: np.ndarray, sky: np.ndarray) -> np.ndarray:
        """Each star's model misfit on its unmasked pixels within 1.5 FWHM: 0 while the
        residuals there are noise (chi2 within 3 sigma of its expectation), else
        sqrt(sum(residual^2 - variance) / sum(model light^2)), as the PSF's core misfit."""
        rows = np.unique(self.masked.star)
        out = np.zeros(self.fraction.size)
        for sel, flat, ok, unit in self.model.core_pixels(rows, residual.shape, self.pixel_ok):
            r = rows[sel]
            light = self.model.flux[r, None] * unit
            res = residual.ravel()[flat] - sky[r, None]
            var = self.pixel_var + np.maximum(light, 0.0)
            n = ok.sum(axis=1)
            chi2 = np.where(ok, res * res / var, 0.0).sum(axis=1)
            excess = np.where(ok, res * res - var, 0.0).sum(axis=1)
            light2 = np.where(ok, light * light, 0.0).sum(axis=1)
            poor = (chi2 > n + 3.0 * np.sqrt(2.0 * n)) & (light2 > 0) & np.isfinite(chi2)
            out[r] = np.where(poor, np.sqrt(np.maximum(excess, 0.0) / np.where(poor, light2, 1.0)), 0.0)
        return out


def _photometric_scale(fit, flux_ref: np.ndarray) -> tuple[float, float]:
    """Frame/reference flux ratio from the PSF stars' fitted fluxes: clipped mean of
    the log ratios, and its uncertainty."""
    ratio = fit.flux[fit.used] / flux_ref[fit.used]
    ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
    if ratio.size < 3:
        raise FrameRejected("photometric scale undetermined (PSF stars unusable)")
    lr = np.log(ratio)
    med = np.median(lr)
    mad = mad_std(lr)
    lr = lr[np.abs(lr - med) <= max(3 * mad, 0.02)]
    scale = float(np.exp(np.mean(lr)))
    return scale, float(scale * np.std(lr) / np.sqrt(max(lr.size - 1, 1)))


def _blended_or_absent(stars, flux, flux_err, model: NeighbourModel | None, fwhm_pix: float) -> np.ndarray:
    """Stars whose measurement is not their own light: neighbours within 1 FWHM put more
    light into the aperture than the star's own flux, or neither the reference (S/N < 3)
    nor this frame (flux < 3 sigma) shows the star. A misidentified target (a position
    beside its star, or on empty sky) looks like this."""
    own = np.where(np.isfinite(flux), np.maximum(flux, 0.0), 0.0)
    blended = model.close_light(fwhm_pix) > np.maximum(own, 1e-9) if model is not None else np.zeros(own.size, bool)
    with np.errstate(invalid="ignore"):
        absent = (np.asarray(stars["snr_ref"], float) < 3.0) & ~(flux > 3.0 * flux_err)
    return blended | absent


def align_to_catalogue(info, cat: Catalogue, points: ControlPoints, settings: MeasureSettings) -> Alignment:
    """The frame's transformation from the catalogue's reference pixels, from its control
    `points`: the header WCS of both frames is a first guess when usable; without one (or
    when it leads nowhere) the star pattern alone."""
    ny, nx = info.shape
    rows = cat.alignment_stars(800)
    ref_xy = np.column_stack([cat.stars["x_ref"][rows], cat.stars["y_ref"][rows]])
    guess = None
    expected_scale = None
    if info.wcs is not None:
        guess = affine_from_wcs(cat.wcs, info.wcs, cat.shape)
    if info.pixel_scale_arcsec:
        expected_scale = cat.pixel_scale_arcsec / info.pixel_scale_arcsec
    if info.name == cat.reference_image:
        guess = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    return align(ref_xy, points.xy, guess=guess, search_radius_pix=max(300.0, 0.1 * max(nx, ny)),
                 min_matched=settings.min_matched_stars, max_rms_pix=settings.max_alignment_rms_pix,
                 expected_scale=expected_scale, frame_shape=(ny, nx),
                 fit_stars=FitStars(~np.asarray(cat.stars["saturated_ref"])[rows], ~points.saturated, points.precise))


@dataclass(frozen=True)
class MeasureTuning:
    """The per-frame stage's fixed numbers, in one place (units in the names)."""

    sky_mesh_box_pix: int = 128              # box of the background mesh
    psf_candidates: int = 400                # isolated catalogue stars considered for the PSF
    psf_stars: int = 40                      # at most this many on the frame fit the PSF
    psf_first_look_stars: int = 20           # the first fit, only to render the PSF stars' neighbours
    psf_min_stars: int = 3                   # fewer rejects the frame
    psf_margin_fwhm: float = 3.0             # PSF stars this many FWHM ...
    psf_margin_pix: float = 5.0              # ... plus this many pixels inside the frame
    core_mask_sky_sigma: float = 10.0        # star cores (model above this many sky sigma) left out of the sky
    sky_clip_sigma_subtracted: float = 5.0   # annulus clipping with the stars' model removed (clipped mean)
    sky_clip_sigma_plain: float = 3.0        # annulus clipping without it (clipped median)
    poor_sky_min_fraction: float = 0.3       # fewer usable annulus pixels than this fraction: POOR_SKY
    poor_sky_max_sigma_ratio: float = 3.0    # an annulus this much noisier than the frame's sky: POOR_SKY


TUNING = MeasureTuning()


@dataclass
class _FrameState:
    """What the steps of :func:`measure_frame` know about one frame, filled in step by step
    (electrons and pixels unless a name says otherwise)."""

    frame: Frame
    cat: Catalogue
    settings: MeasureSettings
    tuning: MeasureTuning = TUNING
    notes: list[str] = field(default_factory=list)
    # detect
    pixel_sigma_e: float = np.nan
    sky_level_e: float = np.nan
    sky_sigma_e: float = np.nan
    points: ControlPoints | None = None
    fwhm_guess_pix: float = np.nan
    # align
    aln: Alignment | None = None
    x: np.ndarray | None = None
    y: np.ndarray | None = None
    pixel_scale_arcsec: float = np.nan
    # psf
    fit: object = None
    scale: float = np.nan
    scale_err: float = np.nan
    fwhm_centre_pix: float = np.nan
    # cosmics
    cosmic_pixels: np.ndarray | None = None
    repair: np.ndarray | None = None
    # aperture
    geom: ApertureGeometry | None = None
    err_plane: np.ndarray | None = None
    pixel_var_err: float | None = None
    total: np.ndarray | None = None
    total_err: np.ndarray | None = None
    area: np.ndarray | None = None
    partial: np.ndarray | None = None
    outside: np.ndarray | None = None
    pix_summary: np.ndarray | None = None
    # neighbours
    model: NeighbourModel | None = None
    neighbour: np.ndarray | None = None
    neighbour_var: np.ndarray | None = None
    cores: np.ndarray | None = None
    # sky and fluxes
    estimator: str = "median"
    clip_sigma: float = np.nan
    sky: np.ndarray | None = None
    sky_sig: np.ndarray | None = None
    n_sky: np.ndarray | None = None
    ann_edge: np.ndarray | None = None
    noise: object = None
    pixel_var: float = np.nan
    masked: MaskedLight | None = None
    flux: np.ndarray | None = None
    flux_err: np.ndarray | None = None
    flags: np.ndarray | None = None

    @property
    def data(self) -> np.ndarray:
        return self.frame.data_e

    @property
    def pflags(self) -> np.ndarray:
        return self.frame.pixel_flags

    @property
    def psf(self) -> MoffatPSF:
        return self.fit.psf


def _detect(s: _FrameState) -> str:
    """Sky mesh, pixel noise and the bright stars the alignment uses."""
    flag_flat_maximum(s.data, s.pflags, saturated_bit=PIXEL_SATURATED)
    mesh = sky_mesh(s.data, s.pflags, box=s.tuning.sky_mesh_box_pix)
    s.pixel_sigma_e = pixel_noise(s.data, s.pflags)
    s.sky_level_e = float(np.median(mesh.level))
    s.sky_sigma_e = float(np.median(mesh.sigma))
    if not (np.isfinite(s.sky_level_e) and np.isfinite(s.sky_sigma_e) and s.sky_sigma_e > 0):
        raise FrameRejected("no usable sky (constant or empty image)")
    s.points = alignment_control_points(s.data, s.pflags, mesh, s.sky_sigma_e)
    s.fwhm_guess_pix = s.points.fwhm_pix if np.isfinite(s.points.fwhm_pix) else s.cat.psf.fwhm_pix
    return f"{len(s.points.xy)} stars detected"


def _align(s: _FrameState) -> str:
    """The catalogue's positions on this frame; the frame must cover the target."""
    try:
        s.aln = align_to_catalogue(s.frame.info, s.cat, s.points, s.settings)
    except AlignmentError as exc:
        raise FrameRejected(str(exc)) from None
    if s.aln.note:
        s.notes.append(s.aln.note)
    s.x, s.y = s.aln.apply(s.cat.stars["x_ref"], s.cat.stars["y_ref"])
    s.pixel_scale_arcsec = s.cat.pixel_scale_arcsec / s.aln.scale
    t, (ny, nx) = s.cat.target_index, s.data.shape
    if not (0 <= s.x[t] < nx and 0 <= s.y[t] < ny):
        raise FrameRejected(f"the field does not cover the target (it would be at pixel "
                            f"{s.x[t]:.0f}, {s.y[t]:.0f} of {nx}x{ny})")
    return f"aligned: {s.aln.n_matched} stars, rms {s.aln.rms_pix:.3f} px"


def _fit_psf(s: _FrameState) -> str:
    """The PSF on isolated stars at their aligned positions, and the photometric scale
    (frame flux / reference flux) from them."""
    tn, (ny, nx) = s.tuning, s.data.shape
    rows = psf_star_candidates(s.cat.stars, s.cat.shape, margin=0, n=tn.psf_candidates)
    margin = tn.psf_margin_fwhm * s.fwhm_guess_pix + tn.psf_margin_pix
    xr, yr = s.x[rows], s.y[rows]
    rows = rows[(xr > margin) & (xr < nx - margin) & (yr > margin) & (yr < ny - margin)][:tn.psf_stars]
    if rows.size < tn.psf_min_stars:
        raise FrameRejected(f"too few stars for the PSF ({rows.size})")
    flux_ref = np.asarray(s.cat.stars["flux_ref"], float)
    first = rows[:tn.psf_first_look_stars]  # a first look, only to render the PSF stars' neighbours
    pixel_ok = s.pflags == 0
    fit = fit_psf(s.data, s.x[first], s.y[first], s.sky_sigma_e ** 2, s.fwhm_guess_pix, pixel_ok=pixel_ok,
                  size_field=False)
    scale, _ = _photometric_scale(fit, flux_ref[first])
    # again with the PSF stars' neighbours removed from their stamps (their reference
    # fluxes at this scale): in poor seeing they would otherwise pull the wings
    s.fit = fit_psf(s.data, s.x[rows], s.y[rows], s.sky_sigma_e ** 2, fit.psf.fwhm_pix, pixel_ok=pixel_ok,
                    others=(s.x, s.y, flux_ref * scale, fit.psf))
    s.scale, s.scale_err = _photometric_scale(s.fit, flux_ref[rows])
    size = s.fit.size
    s.fwhm_centre_pix = s.psf.fwhm_pix * (float(size.scale_at((nx - 1) / 2, (ny - 1) / 2)) if size is not None
                                          else 1.0)
    return f"PSF FWHM {s.fwhm_centre_pix * s.pixel_scale_arcsec:.2f}\""


def _cosmic_rays(s: _FrameState) -> None:
    """Cosmic-ray hits flagged (sharper than the PSF allows); bad and hit pixels repaired."""
    limit = star_sharpness_limit(_psf_at_phases(s.psf))
    s.cosmic_pixels = find_cosmic_rays(s.data, s.pflags, s.sky_level_e, s.sky_sigma_e, limit)
    if s.cosmic_pixels.size:
        s.pflags.ravel()[s.cosmic_pixels] |= PIXEL_COSMIC
    s.repair = np.flatnonzero((s.pflags & (PIXEL_BAD | PIXEL_COSMIC)).ravel() != 0)
    repair_pixels(s.data, s.repair, s.sky_level_e)


def _aperture_geometry(s: _FrameState) -> ApertureGeometry:
    """Aperture and annulus radii [pix]: fixed in arcsec, or grown with the seeing."""
    st, scale = s.settings, s.pixel_scale_arcsec
    if st.aperture_fwhm_multiple:
        r_ap = st.aperture_fwhm_multiple * s.psf.fwhm_pix
        grow = r_ap / (st.aperture_arcsec / scale)
        r_in, r_out = (a / scale * grow for a in st.annulus_arcsec)
    else:
        r_ap = st.aperture_arcsec / scale
        r_in, r_out = (a / scale for a in st.annulus_arcsec)
    return ApertureGeometry(r_ap, r_in, r_out)


def _aperture_sums(s: _FrameState) -> str:
    """Aperture sums at every catalogue position (with the ERR plane's variance when the
    frame has one: it adds to the CCD model, see frames)."""
    s.geom = _aperture_geometry(s)
    s.err_plane = s.frame.err_e
    if s.err_plane is not None:
        sub = s.err_plane[::8, ::8][s.pflags[::8, ::8] == 0]
        s.pixel_var_err = float(np.median(sub.astype(np.float64) ** 2))
        repair_pixels(s.err_plane, s.repair, float(np.sqrt(s.pixel_var_err)))
    s.total, s.total_err, s.area, s.partial, s.outside = aperture_sums(s.data, s.x, s.y, s.geom.r_ap_pix,
                                                                       error=s.err_plane)
    s.pix_summary = pixel_flag_summary(s.pflags, s.x, s.y, s.geom.r_ap_pix)
    s.neighbour, s.neighbour_var = np.zeros(s.x.size), np.zeros(s.x.size)
    return "aperture sums done"


def _subtract_neighbours(s: _FrameState) -> str:
    """Every catalogue star's modelled light: its contamination of each aperture, and
    subtracted from the pixels before the sky is measured."""
    stars = s.cat.stars
    flux_ref = np.asarray(stars["flux_ref"], float)
    s.model = NeighbourModel(s.x, s.y, flux_ref * s.scale, np.asarray(stars["flux_ref_err"], float) / np.abs(flux_ref),
                             s.psf, s.fit.size, s.geom.r_ap_pix, s.geom.r_out_pix, s.sky_sigma_e, s.data.shape)
    s.neighbour, s.neighbour_var = s.model.contamination()
    # the sky is measured with every catalogue star's modelled light removed, away
    # from where a star's core was: a few per cent model error there is more than the noise
    s.cores = s.model.subtract_from(s.data, cores_above=s.tuning.core_mask_sky_sigma * s.sky_sigma_e)
    return "neighbours subtracted"


def _annulus_sky(s: _FrameState, rows=slice(None)) -> None:
    """The sky of the stars `rows` from their annuli."""
    s.sky[rows], s.sky_sig[rows], s.n_sky[rows], s.ann_edge[rows] = annulus_sky(
        s.data, s.pflags, s.x[rows], s.y[rows], s.geom, nsigma=s.clip_sigma, estimator=s.estimator, avoid=s.cores)


def _sky(s: _FrameState) -> None:
    """Sky from the annuli. With the catalogue stars removed, what is left in an annulus is
    the sky, the faint stars below the detection limit and noise. The faint stars' light
    also sits in the aperture, so the sky to subtract is the mean of it all, clipped only
    at 5 sigma (clipping their peaks would remove more of their light in good seeing than
    in bad); without the model, a 3-sigma clipped median."""
    if s.model is not None:
        s.estimator, s.clip_sigma = "mean", s.tuning.sky_clip_sigma_subtracted
    else:
        s.estimator, s.clip_sigma = "median", s.tuning.sky_clip_sigma_plain
    s.sky, s.sky_sig, s.n_sky, s.ann_edge = annulus_sky(s.data, s.pflags, s.x, s.y, s.geom, nsigma=s.clip_sigma,
                                                        estimator=s.estimator, avoid=s.cores)


def _fluxes(s: _FrameState) -> None:
    """Fluxes and their errors from the sums, the sky, the neighbours' light and the light
    on masked pixels (the CCD noise model, or the ERR plane)."""
    f = s.total - s.neighbour - s.sky * s.area + s.masked.flux_correction(s.data, s.sky)
    sky_factor = sky_estimate_factor(s.estimator)
    if s.err_plane is not None:
        v = s.total_err ** 2 + s.area ** 2 * s.pixel_var * sky_factor / np.maximum(s.n_sky, 1)
    else:
        # Poisson noise of all the light collected, the neighbours' too; background over
        # the aperture's squared pixel weights
        v = ccd_variance(f + s.neighbour, s.area, s.pixel_var, s.n_sky, s.noise.source_factor, sky_factor,
                         noise_area(s.geom.r_ap_pix))
    s.flux, s.flux_err = f, np.sqrt(v + s.masked.variance(f, s.data, s.sky) + s.neighbour_var)


def _first_fluxes(s: _FrameState) -> None:
    """The noise model, the light on masked pixels (from the model, or interpolated, its
    uncertainty in the error), and the first fluxes."""
    info = s.frame.info
    s.noise = noise_model(s.sky_level_e, s.pixel_sigma_e, info.read_noise_e, info.gain_known)
    if s.noise.note and s.err_plane is None:
        s.notes.append(s.noise.note)
    s.pixel_var = s.pixel_var_err if s.err_plane is not None else s.noise.pixel_var
    s.masked = MaskedLight(s.pflags, PIXEL_BAD | PIXEL_COSMIC, s.x, s.y, s.geom.r_ap_pix, s.pix_summary, s.model,
                           s.psf, s.fit.core_misfit, s.pixel_var)
    _fluxes(s)


def _remodel_variables(s: _FrameState) -> None:
    """Stars far from their reference brightness (variables, the target during its event)
    modelled at their measured brightness, then measured again. The target first: until
    its light is modelled at its current brightness, its neighbours' measured fluxes are
    wrong and would be "corrected" wrongly; the stars whose masked pixels take their
    model's light with the others after it. (The fits leave masked pixels out: a star on a
    bad column is fitted like any other.)"""
    t = s.cat.target_index
    clean = (s.pix_summary & PIXEL_SATURATED) == 0
    refit = s.masked.refit_rows(s.neighbour)
    for k, only in enumerate(((t,), None, None)):
        affected = s.model.update_variables(s.flux, s.flux_err, clean & ~s.outside, s.data, s.masked.pixel_ok,
                                            s.pixel_var, always=(t,), only=only, refit=refit if k == 1 else ())
        if affected.size == 0:
            if only is None:
                break
            continue
        s.neighbour, s.neighbour_var = s.model.contamination()
        _annulus_sky(s, affected)
        _fluxes(s)


def _flag(s: _FrameState) -> None:
    """Per-star flags (flags.py); no flux for a star outside the frame."""
    tn, geom, summary = s.tuning, s.geom, s.pix_summary
    flag = np.zeros(s.x.size, dtype=np.int32)
    flag |= np.where(summary & PIXEL_SATURATED, F.SATURATED, 0)
    flag |= np.where(summary & PIXEL_BAD, F.BAD_PIXELS, 0)
    flag |= np.where(summary & PIXEL_COSMIC, F.COSMIC_RAY, 0)
    flag |= np.where(s.partial | s.ann_edge, F.NEAR_EDGE, 0)
    nominal = np.pi * (geom.r_out_pix ** 2 - geom.r_in_pix ** 2)
    poor = ((s.n_sky < tn.poor_sky_min_fraction * nominal) | ~np.isfinite(s.sky)
            | (s.sky_sig > tn.poor_sky_max_sigma_ratio * s.sky_sigma_e))
    flag |= np.where(poor, F.POOR_SKY, 0)
    flag |= np.where(s.outside, F.OUTSIDE_FRAME, 0)
    flag |= np.where(s.neighbour > np.maximum(np.maximum(s.flux, 0), 1e-9), F.CROWDED, 0)
    flag |= np.where(s.masked.fraction > s.masked.large_fraction, F.LARGE_REPAIR, 0)
    flag |= np.where(_blended_or_absent(s.cat.stars, s.flux, s.flux_err, s.model, s.fwhm_centre_pix),
                     F.BLENDED_OR_ABSENT, 0)
    s.flags = flag
    s.flux = np.where(s.outside, np.nan, s.flux)
    s.flux_err = np.where(s.outside, np.nan, s.flux_err)


#: The per-frame stage, in order.
MEASURE_STEPS = (
    Step("detect", _detect, 0.2),
    Step("align", _align, 0.35),
    Step("psf", _fit_psf, 0.5),
    Step("cosmics", _cosmic_rays),
    Step("aperture", _aperture_sums, 0.65),
    Step("neighbours", _subtract_neighbours, 0.8, when=lambda s: s.settings.subtract_neighbours),
    Step("sky", _sky),
    Step("fluxes", _first_fluxes),
    Step("variables", _remodel_variables, when=lambda s: s.model is not None),
    Step("errors", _flag),
)


def measure_frame(frame: Frame, cat: Catalogue, settings: MeasureSettings, progress=None,
                  tuning: MeasureTuning = TUNING) -> FrameMeasurement:
    """Measure every catalogue star on `frame` through :data:`MEASURE_STEPS`. Raises
    FrameRejected with the reason when the frame cannot be used; any other error carries a
    note naming the step and the frame. `progress(fraction, message)` is called between
    steps."""
    if frame.info.filter_name != cat.filter_name:
        raise FrameRejected(f"filter {frame.info.filter_name!r} is not the dataset's {cat.filter_name!r}")
    state = _FrameState(frame, cat, settings, tuning)
    timings = run_steps(MEASURE_STEPS, state, f"measuring {frame.info.name}", expected=(FrameRejected,),
                        progress=progress)
    return FrameMeasurement(stars=_star_table(state), facts=_facts(state), timings=timings, notes=state.notes)


def _star_table(s: _FrameState):
    return star_table({"x": s.x, "y": s.y, "flux": s.flux, "flux_err": s.flux_err, "sky": s.sky,
                       "sky_sigma": s.sky_sig, "n_sky": s.n_sky, "neighbour_flux": s.neighbour,
                       "flags": s.flags, "repaired": s.masked.fraction})


def _facts(s: _FrameState) -> FrameFacts:
    info, fit, psf, aln, geom, scale = s.frame.info, s.fit, s.psf, s.aln, s.geom, s.pixel_scale_arcsec
    site = info.site if info.site else (np.nan, np.nan, np.nan)
    return FrameFacts(
        image=info.name, mjd_start=info.mjd_start, mjd_mid=info.mjd_mid, exptime_s=info.exptime_s,
        filter_name=info.filter_name, airmass=info.airmass if info.airmass is not None else np.nan,
        gain_e_per_adu=info.gain_e_per_adu, read_noise_e=info.read_noise_e, file_pixel_units=info.units,
        pixel_scale_arcsec=scale, sky_level_e=s.sky_level_e, sky_sigma_e=s.sky_sigma_e,
        pixel_sigma_e=s.pixel_sigma_e, pixel_var_e2=s.pixel_var, source_var_per_e=s.noise.source_factor,
        errors_from_err_plane=s.err_plane is not None,
        fwhm_centre_pix=s.fwhm_centre_pix, fwhm_centre_arcsec=s.fwhm_centre_pix * scale,
        psf_size_varies=bool(fit.size is not None and fit.size.varies), psf_chi2_per_dof=fit.chi2_per_dof,
        psf_core_misfit=fit.core_misfit, psf_n_stars=fit.n_stars,
        photometric_scale=s.scale, photometric_scale_err=s.scale_err, n_cosmic_pixels=int(s.cosmic_pixels.size),
        neighbours_subtracted=bool(s.settings.subtract_neighbours), sky_estimator=s.estimator,
        site_latitude_deg=site[0], site_longitude_deg_east=site[1], site_height_m=site[2],
        catalogue_id=s.cat.catalogue_id,
        psf_fwhm_pix=psf.fwhm_pix, psf_ellipticity=psf.ellipticity, psf_theta_deg=float(np.degrees(psf.theta_rad)),
        psf_beta=psf.beta, psf_size_coeffs=tuple(fit.size.coeffs) if fit.size is not None else (),
        alignment_affine=tuple(float(v) for v in aln.matrix.ravel()), alignment_rms_pix=aln.rms_pix,
        alignment_n_stars=aln.n_matched, alignment_method=aln.method, alignment_rotation_deg=aln.rotation_deg,
        alignment_scale=aln.scale,
        aperture_radius_pix=geom.r_ap_pix, annulus_inner_pix=geom.r_in_pix, annulus_outer_pix=geom.r_out_pix)
