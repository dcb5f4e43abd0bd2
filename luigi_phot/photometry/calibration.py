"""Ensemble calibration: every frame onto the reference frame's flux scale.

In log flux, each measurement of a constant star is modelled as

    ln rate[f, s] = mu[s] + zeta[f](x_s, y_s)

where mu is the star's mean brightness and zeta a low-order polynomial over
the field for each frame (transparency, exposure, airmass, and the part of the
aperture loss that changes with seeing and across the field). It is solved by
alternating weighted fits over many comparison stars, with iterative
rejection of outlying points and of stars that vary (a variable star does
not set the scale). zeta is then fixed to 0 on the reference frame, so
calibrated fluxes are electrons per second as the reference frame saw them.
The uncertainty of zeta at each star's position is propagated into its
calibrated flux error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["EnsembleSolution", "solve_ensemble", "poly_terms"]


def poly_terms(u: np.ndarray, v: np.ndarray, order: int) -> np.ndarray:
    """Design columns (N, k) of a 2-D polynomial of total degree `order` in normalised
    coordinates u, v in [-1, 1] (k = (order + 1)(order + 2) / 2)."""
    return np.column_stack([u ** (d - j) * v ** j for d in range(order + 1) for j in range(d + 1)])


@dataclass
class EnsembleSolution:
    coeffs: np.ndarray          # (F, k) polynomial coefficients of zeta per frame
    cov: np.ndarray             # (F, k, k) their covariance
    order: int
    centre: tuple[float, float]
    half_size: tuple[float, float]
    frame_ok: np.ndarray        # (F,) calibration succeeded
    n_comparison: np.ndarray    # (F,) comparison stars used per frame
    frame_chi2: np.ndarray      # (F,) reduced chi2 of the comparison stars per frame
    comparison: np.ndarray      # (S,) bool: star used as a comparison (after rejection)
    star_chi2: np.ndarray       # (S,) reduced chi2 of each comparison candidate

    def _uv(self, x, y):
        return ((np.asarray(x, float) - self.centre[0]) / self.half_size[0],
                (np.asarray(y, float) - self.centre[1]) / self.half_size[1])

    def zeta(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """(F, N) ln-scale and its standard error at reference positions (x, y)."""
        u, v = self._uv(x, y)
        a = poly_terms(np.atleast_1d(u), np.atleast_1d(v), self.order)      # (N, k)
        z = self.coeffs @ a.T                                                # (F, N)
        var = np.einsum("nk,fkl,nl->fn", a, self.cov, a)
        return z, np.sqrt(np.maximum(var, 0.0))


def solve_ensemble(rate: np.ndarray, rate_err: np.ndarray, usable: np.ndarray, candidates: np.ndarray,
                   x_ref: np.ndarray, y_ref: np.ndarray, shape: tuple[int, int], ref_frame: int,
                   order: int | None = None, max_comparison: int = 4000, min_comparison: int = 10,
                   iterations: int = 12) -> EnsembleSolution:
    """Solve for each frame's scale polynomial.

    rate, rate_err: (F, S) fluxes per second and errors; usable: (F, S) points free of
    severe flags; candidates: (S,) stars that may serve as comparisons (not the target,
    detected, unsaturated); x_ref, y_ref: star positions on the reference; ref_frame:
    index of the reference frame (its zeta is fixed to 0), or -1 to fix the mean instead.
    Alternates, until the kept stars and points settle: each star's mean over the frames
    (stars that scatter beyond their errors and outlying points left out), then each
    frame's polynomial over the kept stars.
    """
    n_f, n_s = rate.shape
    cand = _comparison_candidates(rate, rate_err, usable, candidates, max_comparison)
    if order is None:
        # the aperture loss changes across the field when the PSF does (focus, tilt), and
        # more in poor seeing: a quadratic follows it; ten comparison stars a term suffice
        order = 2 if cand.size >= 60 else (1 if cand.size >= 20 else 0)
    k = (order + 1) * (order + 2) // 2
    ny, nx = shape
    centre = ((nx - 1) / 2.0, (ny - 1) / 2.0)
    half = (max(nx / 2.0, 1.0), max(ny / 2.0, 1.0))
    design = poly_terms((x_ref[cand] - centre[0]) / half[0], (y_ref[cand] - centre[1]) / half[1], order)  # (C, k)
    lnr, w0, ok = _log_rates(rate[:, cand], rate_err[:, cand], usable[:, cand])
    fit = _FrameFits(coeffs=_initial_offsets(lnr, ok, ref_frame, min_comparison, k), cov=np.zeros((n_f, k, k)),
                     chi2=np.ones(n_f), ok=ok.sum(1) >= min_comparison)
    keep_star = np.ones(cand.size, dtype=bool)
    point_ok = ok.copy()
    star_chi2 = np.zeros(cand.size)
    for _ in range(iterations):
        mu, star_chi2, new_keep, new_point = _star_pass(lnr, w0, ok, fit, design, point_ok, keep_star)
        _fit_frames(fit, design, np.where(new_point & new_keep[None, :], w0, 0.0), lnr - mu[None, :],
                    max(min_comparison, 3 * k))
        converged = np.array_equal(new_keep, keep_star) and np.array_equal(new_point, point_ok)
        keep_star, point_ok = new_keep, new_point
        if converged:
            break
    frame_ok, coeffs, cov = fit.ok, fit.coeffs, fit.cov
    if not (0 <= ref_frame < n_f and frame_ok[ref_frame]):
        anchor = np.median(coeffs[frame_ok], axis=0) if frame_ok.any() else np.zeros(k)
    else:
        anchor = coeffs[ref_frame].copy()
    coeffs = coeffs - anchor[None, :]
    if 0 <= ref_frame < n_f:
        cov[ref_frame] = 0.0
    comparison = np.zeros(n_s, dtype=bool)
    comparison[cand[keep_star]] = True
    all_chi2 = np.full(n_s, np.nan)
    all_chi2[cand] = star_chi2
    n_comp = (np.where(point_ok & keep_star[None, :], 1, 0)).sum(1)
    return EnsembleSolution(coeffs=coeffs, cov=cov, order=order, centre=centre, half_size=half,
                            frame_ok=frame_ok, n_comparison=n_comp, frame_chi2=fit.chi2,
                            comparison=comparison, star_chi2=all_chi2)


@dataclass
class _FrameFits:
    """Each frame's polynomial coefficients, their covariance, chi2 per dof, and whether
    the frame could be calibrated."""

    coeffs: np.ndarray   # (F, k)
    cov: np.ndarray      # (F, k, k)
    chi2: np.ndarray     # (F,)
    ok: np.ndarray       # (F,)


def _comparison_candidates(rate, rate_err, usable, candidates, max_comparison: int) -> np.ndarray:
    """The candidate stars with a median S/N above 10, brightest first, at most max_comparison."""
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(usable & (rate_err > 0), rate / rate_err, 0.0)
    med_snr = np.median(np.where(usable, snr, 0.0), axis=0)
    cand = np.flatnonzero(candidates & (med_snr > 10.0))
    return cand[np.argsort(-med_snr[cand])][:max_comparison]


def _log_rates(r: np.ndarray, r_err: np.ndarray, usable: np.ndarray):
    """(ln rate, its weight 1/sigma_ln^2, the points that have one) of the comparison stars."""
    ok = usable & (r > 0) & np.isfinite(r) & (r_err > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        lnr = np.where(ok, np.log(np.where(ok, r, 1.0)), 0.0)
        sig = np.where(ok, r_err / np.where(ok, r, 1.0), np.inf)
    return lnr, np.where(ok, 1.0 / sig ** 2, 0.0), ok


def _initial_offsets(lnr: np.ndarray, ok: np.ndarray, ref_frame: int, min_comparison: int, k: int) -> np.ndarray:
    """The start: each frame's median offset from the reference (or the best covered) frame."""
    n_f = lnr.shape[0]
    coeffs = np.zeros((n_f, k))
    base = ref_frame if 0 <= ref_frame < n_f and ok[ref_frame].sum() >= min_comparison else int(np.argmax(ok.sum(1)))
    both = ok & ok[base][None, :]
    for f in range(n_f):
        if both[f].any():
            coeffs[f, 0] = np.median(lnr[f, both[f]] - lnr[base, both[f]])
    return coeffs


def _star_pass(lnr, w0, ok, fit: _FrameFits, design, point_ok, keep_star):
    """Each star's weighted mean over the calibrated frames, its chi2 per dof, which stars
    to keep (chi2 below max(3, 3 x the median) and enough points) and which points (within
    5 of the star's own scatter)."""
    zeta = fit.coeffs @ design.T                                       # (F, C)
    w = np.where(point_ok & fit.ok[:, None], w0, 0.0)
    wsum = w.sum(0)
    mu = np.where(wsum > 0, (w * (lnr - zeta)).sum(0) / np.where(wsum > 0, wsum, 1.0), 0.0)
    resid = lnr - zeta - mu[None, :]
    n_pts = np.maximum((w > 0).sum(0), 1)
    star_chi2 = np.where(n_pts > 1, (w * resid ** 2).sum(0) / np.maximum(n_pts - 1, 1), np.inf)
    good_chi = star_chi2[keep_star & np.isfinite(star_chi2)]
    lim = max(3.0, 3.0 * np.median(good_chi)) if good_chi.size else np.inf
    new_keep = (star_chi2 < lim) & (n_pts >= max(3, 0.3 * fit.ok.sum()))
    scale_pts = np.sqrt(np.maximum(np.where(np.isfinite(star_chi2), star_chi2, 1.0), 1.0))
    new_point = ok & (np.abs(resid) * np.sqrt(w0) < 5.0 * scale_pts[None, :])
    return mu, star_chi2, new_keep, new_point


def _fit_frames(fit: _FrameFits, design, wf, target, min_points: int) -> None:
    """Each frame's weighted polynomial fit of (ln rate - star mean) over the kept points;
    a frame with fewer than min_points, or a singular fit, is not calibrated."""
    k = design.shape[1]
    for f in range(wf.shape[0]):
        sel = wf[f] > 0
        if sel.sum() < min_points:
            fit.ok[f] = False
            continue
        a = design[sel]
        ww = wf[f, sel]
        ata = a.T @ (a * ww[:, None])
        atb = a.T @ (ww * target[f, sel])
        try:
            c = np.linalg.solve(ata, atb)
            inv = np.linalg.inv(ata)
        except np.linalg.LinAlgError:
            fit.ok[f] = False
            continue
        res = target[f, sel] - a @ c
        chi2 = float((ww * res ** 2).sum() / max(sel.sum() - k, 1))
        fit.coeffs[f] = c
        fit.chi2[f] = chi2
        # scatter beyond the errors (other stars' unmodelled noise) inflates the uncertainty
        fit.cov[f] = inv * max(chi2, 1.0)
        fit.ok[f] = True
