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
    """
    n_f, n_s = rate.shape
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(usable & (rate_err > 0), rate / rate_err, 0.0)
    med_snr = np.median(np.where(usable, snr, 0.0), axis=0)
    cand = np.flatnonzero(candidates & (med_snr > 10.0))
    cand = cand[np.argsort(-med_snr[cand])][:max_comparison]
    if order is None:
        # the aperture loss changes across the field when the PSF does (focus, tilt), and
        # more in poor seeing: a quadratic follows it; ten comparison stars a term suffice
        order = 2 if cand.size >= 60 else (1 if cand.size >= 20 else 0)
    k = (order + 1) * (order + 2) // 2
    ny, nx = shape
    centre = ((nx - 1) / 2.0, (ny - 1) / 2.0)
    half = (max(nx / 2.0, 1.0), max(ny / 2.0, 1.0))
    u = (x_ref[cand] - centre[0]) / half[0]
    v = (y_ref[cand] - centre[1]) / half[1]
    design = poly_terms(u, v, order)                                   # (C, k)

    r = rate[:, cand]
    ok = usable[:, cand] & (r > 0) & np.isfinite(r) & (rate_err[:, cand] > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        lnr = np.where(ok, np.log(np.where(ok, r, 1.0)), 0.0)
        sig = np.where(ok, rate_err[:, cand] / np.where(ok, r, 1.0), np.inf)
    w0 = np.where(ok, 1.0 / sig ** 2, 0.0)
    keep_star = np.ones(cand.size, dtype=bool)
    point_ok = ok.copy()
    coeffs = np.zeros((n_f, k))
    cov = np.zeros((n_f, k, k))
    mu = np.zeros(cand.size)
    # start: each frame's median offset from the reference (or the first good) frame
    base = ref_frame if 0 <= ref_frame < n_f and ok[ref_frame].sum() >= min_comparison else int(np.argmax(ok.sum(1)))
    both = ok & ok[base][None, :]
    for f in range(n_f):
        if both[f].any():
            coeffs[f, 0] = np.median(lnr[f, both[f]] - lnr[base, both[f]])
    frame_ok = ok.sum(1) >= min_comparison
    star_chi2 = np.zeros(cand.size)
    frame_chi2 = np.ones(n_f)
    for _ in range(iterations):
        zeta = coeffs @ design.T                                       # (F, C)
        w = np.where(point_ok & frame_ok[:, None], w0, 0.0)
        wsum = w.sum(0)
        mu = np.where(wsum > 0, (w * (lnr - zeta)).sum(0) / np.where(wsum > 0, wsum, 1.0), 0.0)
        resid = lnr - zeta - mu[None, :]
        n_pts = np.maximum((w > 0).sum(0), 1)
        star_chi2 = np.where(n_pts > 1, (w * resid ** 2).sum(0) / np.maximum(n_pts - 1, 1), np.inf)
        good_chi = star_chi2[keep_star & np.isfinite(star_chi2)]
        lim = max(3.0, 3.0 * np.median(good_chi)) if good_chi.size else np.inf
        new_keep = (star_chi2 < lim) & (n_pts >= max(3, 0.3 * frame_ok.sum()))
        # per-point outliers, judged against each star's own scatter
        scale_pts = np.sqrt(np.maximum(np.where(np.isfinite(star_chi2), star_chi2, 1.0), 1.0))
        new_point = ok & (np.abs(resid) * np.sqrt(w0) < 5.0 * scale_pts[None, :])
        # frames: weighted polynomial fit of (lnr - mu) over kept stars
        wf = np.where(new_point & new_keep[None, :], w0, 0.0)
        target = lnr - mu[None, :]
        for f in range(n_f):
            sel = wf[f] > 0
            if sel.sum() < max(min_comparison, 3 * k):
                frame_ok[f] = False
                continue
            a = design[sel]
            ww = wf[f, sel]
            ata = a.T @ (a * ww[:, None])
            atb = a.T @ (ww * target[f, sel])
            try:
                c = np.linalg.solve(ata, atb)
                inv = np.linalg.inv(ata)
            except np.linalg.LinAlgError:
                frame_ok[f] = False
                continue
            res = target[f, sel] - a @ c
            chi2 = float((ww * res ** 2).sum() / max(sel.sum() - k, 1))
            coeffs[f] = c
            frame_chi2[f] = chi2
            # scatter beyond the errors (other stars' unmodelled noise) inflates the uncertainty
            cov[f] = inv * max(chi2, 1.0)
            frame_ok[f] = True
        converged = np.array_equal(new_keep, keep_star) and np.array_equal(new_point, point_ok)
        keep_star, point_ok = new_keep, new_point
        if converged:
            break
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
                            frame_ok=frame_ok, n_comparison=n_comp, frame_chi2=frame_chi2,
                            comparison=comparison, star_chi2=all_chi2)
