"""Geometric alignment of a frame to the reference catalogue.

The transformation maps reference-frame pixel coordinates to frame pixel
coordinates; it is an affine map (shift, rotation, scale, shear) fitted to
matched stars with iterative rejection.

Matching starts from a first guess (the header WCS of both frames, when
usable) and corrects it by a voted shift, so a WCS off by arcminutes still
aligns. Without a usable guess, or when the guess leads nowhere, star
triangles are matched (invariant to shift, rotation, scale and flips of the
frame), which also handles a camera rotated by 180 degrees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

__all__ = ["Alignment", "AlignmentError", "FitStars", "align", "affine_from_wcs", "fit_affine", "match_star_lists",
           "header_wcs_error"]


#: the largest distance [pix] at which the refinement pairs stars (its first round)
_PAIRING_PIX = 4.0
#: an alignment is accepted only when chance could give its match count with a probability
#: below this (many transforms are tried before the best one is refined: see _chance_limit)
CHANCE_PROBABILITY = 1e-10
#: the smallest radius [pix] over which chance pairs are counted (see _chance_limit)
_CHANCE_RADIUS_FLOOR_PIX = 0.2


class AlignmentError(Exception):
    """The frame could not be aligned to the catalogue (reason in the message)."""


@dataclass
class Alignment:
    """matrix: 2x3 affine, frame (x, y) = matrix @ (x_ref, y_ref, 1)."""

    matrix: np.ndarray
    rms_pix: float
    n_matched: int
    method: str
    note: str = ""    # what the log should know (e.g. the header WCS was wrong, the pattern was used)

    def apply(self, x, y):
        m = self.matrix
        x = np.asarray(x, float)
        y = np.asarray(y, float)
        return m[0, 0] * x + m[0, 1] * y + m[0, 2], m[1, 0] * x + m[1, 1] * y + m[1, 2]

    @property
    def scale(self) -> float:
        """Frame pixels per reference pixel (geometric mean over both axes)."""
        return float(np.sqrt(abs(np.linalg.det(self.matrix[:, :2]))))

    @property
    def rotation_deg(self) -> float:
        m = self.matrix
        return float(np.degrees(np.arctan2(m[1, 0] - m[0, 1], m[0, 0] + m[1, 1])))


def fit_affine(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Least-squares 2x3 affine mapping src (N,2) onto dst (N,2)."""
    a = np.column_stack([src, np.ones(len(src))])
    if weights is not None:
        sw = np.sqrt(weights)[:, None]
        coef, *_ = np.linalg.lstsq(a * sw, dst * sw, rcond=None)
    else:
        coef, *_ = np.linalg.lstsq(a, dst, rcond=None)
    return coef.T


def _apply(m, xy):
    return xy @ m[:, :2].T + m[:, 2]


def affine_from_wcs(ref_wcs, frame_wcs, shape) -> np.ndarray | None:
    """The affine map ref pixel -> frame pixel implied by two WCSs (fit on a grid)."""
    try:
        ny, nx = shape
        gx, gy = np.meshgrid(np.linspace(0, nx - 1, 5), np.linspace(0, ny - 1, 5))
        src = np.column_stack([gx.ravel(), gy.ravel()])
        world = ref_wcs.all_pix2world(src, 0)
        dst = frame_wcs.all_world2pix(world, 0)
        if not np.all(np.isfinite(dst)):
            return None
        return fit_affine(src, dst)
    except Exception:
        return None


def _match(pred: np.ndarray, tree, tol: float):
    d, j = tree.query(pred, distance_upper_bound=tol)
    ok = np.isfinite(d)
    i = np.flatnonzero(ok)
    j = j[ok]
    # keep one reference star per frame star (the closest)
    order = np.argsort(d[ok])
    _, first = np.unique(j[order], return_index=True)
    sel = order[first]
    return i[sel], j[sel]


def _refine(m0, ref_xy, frm_xy, tree,
            tols=(_PAIRING_PIX, 2.0, 1.0)) -> tuple[np.ndarray, float, int, np.ndarray, np.ndarray]:
    m = m0
    i = j = np.zeros(0, dtype=int)
    for tol in tols:
        i, j = _match(_apply(m, ref_xy), tree, tol)
        if i.size < 4:
            return m, np.inf, int(i.size), i, j
        for _ in range(4):
            m = fit_affine(ref_xy[i], frm_xy[j])
            r = np.hypot(*(_apply(m, ref_xy[i]) - frm_xy[j]).T)
            # 2-D residual radii: a median of 0.83 sigma (Rayleigh); blended stars are the tail
            lim = max(2.5 * np.median(r) / 0.83, 0.05)
            good = r <= lim
            if good.all() or good.sum() < 4:
                break
            i, j = i[good], j[good]
    r = np.hypot(*(_apply(m, ref_xy[i]) - frm_xy[j]).T)
    rms = float(np.sqrt(np.mean(r ** 2))) if r.size else np.inf
    return m, rms, int(i.size), i, j


def _voted_shift(pred: np.ndarray, frm_xy: np.ndarray, radius: float, bin_pix: float = 2.0):
    """Shift (dx, dy) most often seen between predicted and detected positions."""
    from scipy.spatial import cKDTree

    tree = cKDTree(frm_xy)
    pairs = tree.query_ball_point(pred, r=radius)
    dxy = [frm_xy[p] - pred[k] for k, p in enumerate(pairs) if p]
    if not dxy:
        return None, 0
    dxy = np.concatenate(dxy)
    nb = int(np.ceil(2 * radius / bin_pix))
    h, xe, ye = np.histogram2d(dxy[:, 0], dxy[:, 1], bins=nb, range=[[-radius, radius], [-radius, radius]])
    k = np.unravel_index(np.argmax(h), h.shape)
    votes = int(h[k])
    cx = 0.5 * (xe[k[0]] + xe[k[0] + 1])
    cy = 0.5 * (ye[k[1]] + ye[k[1] + 1])
    near = (np.abs(dxy[:, 0] - cx) <= bin_pix) & (np.abs(dxy[:, 1] - cy) <= bin_pix)
    return np.median(dxy[near], axis=0), votes


def _triangles(xy: np.ndarray, k: int = 5):
    """Triangles of each star with pairs of its k nearest neighbours: invariants
    (b/a, c/a with a >= b >= c the sides) and vertex indices ordered canonically
    (vertex opposite the longest side first, then the middle, then the shortest)."""
    from itertools import combinations
    from scipy.spatial import cKDTree

    n = len(xy)
    k = min(k, n - 1)
    _, nn = cKDTree(xy).query(xy, k=k + 1)
    tris = set()
    for s in range(n):
        for a, b in combinations(nn[s, 1:], 2):
            tris.add(tuple(sorted((s, int(a), int(b)))))
    tris = np.array(sorted(tris))
    p = xy[tris]                                                  # (T, 3, 2)
    sides = np.stack([np.hypot(*(p[:, 1] - p[:, 2]).T),           # opposite vertex 0
                      np.hypot(*(p[:, 0] - p[:, 2]).T),           # opposite vertex 1
                      np.hypot(*(p[:, 0] - p[:, 1]).T)], axis=1)  # opposite vertex 2
    order = np.argsort(-sides, axis=1)
    s_sorted = np.take_along_axis(sides, order, axis=1)
    valid = s_sorted[:, 0] > 0
    inv = np.column_stack([s_sorted[:, 1] / np.where(valid, s_sorted[:, 0], 1),
                           s_sorted[:, 2] / np.where(valid, s_sorted[:, 0], 1)])
    verts = np.take_along_axis(tris, order, axis=1)
    # degenerate (near-isosceles) triangles have ambiguous vertex order: drop them
    distinct = (s_sorted[:, 0] - s_sorted[:, 1] > 0.02 * s_sorted[:, 0]) & \
               (s_sorted[:, 1] - s_sorted[:, 2] > 0.02 * s_sorted[:, 0]) & valid & (inv[:, 1] > 0.1)
    return inv[distinct], verts[distinct]


def _similarities(r_tri: np.ndarray, f_tri: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Similarity transforms (proper or mirrored, whichever fits better) taking each
    triangle r_tri[k] (K, 3, 2) onto f_tri[k]: (K, 2, 3) matrices and the rms misfit [pix]."""
    zs = r_tri[..., 0] + 1j * r_tri[..., 1]
    zd = f_tri[..., 0] + 1j * f_tri[..., 1]
    zs_c = zs - zs.mean(axis=1, keepdims=True)
    zd_c = zd - zd.mean(axis=1, keepdims=True)
    norm = np.maximum((np.abs(zs_c) ** 2).sum(axis=1), 1e-12)
    best_m, best_res = None, None
    for mirror in (False, True):
        src = np.conj(zs_c) if mirror else zs_c
        z = (np.conj(src) * zd_c).sum(axis=1) / norm
        res = np.sqrt((np.abs(zd_c - z[:, None] * src) ** 2).mean(axis=1))
        lin = np.empty((z.size, 2, 2))
        lin[:, 0, 0], lin[:, 0, 1] = z.real, -z.imag
        lin[:, 1, 0], lin[:, 1, 1] = z.imag, z.real
        if mirror:
            lin[:, :, 1] *= -1.0
        mean_s = r_tri.mean(axis=1)
        t = f_tri.mean(axis=1) - np.einsum("kij,kj->ki", lin, mean_s)
        m = np.concatenate([lin, t[:, :, None]], axis=2)
        if best_m is None:
            best_m, best_res = m, res
        else:
            take = res < best_res
            best_m[take], best_res[take] = m[take], res[take]
    return best_m, best_res


def match_star_lists(ref_xy: np.ndarray, frame_xy: np.ndarray, scale_range=(0.5, 2.0), tol_pix: float = 3.0,
                     frame_shape=None) -> tuple[np.ndarray | None, int]:
    """The similarity transform (any rotation, including 180 degrees, a mirror, a scale
    within `scale_range`, any shift) taking reference stars `ref_xy` (N, 2) onto frame
    stars `frame_xy` (M, 2), both brightest first and free of most non-stars; by its own
    (ref, frame) star lists only, no image and no header. Returns (2x3 matrix, number of
    reference stars it lands within `tol_pix` of a frame star), or (None, 0).

    Triangles of each star with pairs of its nearest neighbours are compared by their
    shape (side ratios); every pair of similar triangles proposes a transform, and the
    transform proposed by the most pairs (a vote in rotation, scale and shift, as the
    asterisms of astroalign agree through RANSAC) is checked against all the stars. The
    brightest 30, 60, then 120 stars of each list are tried, so a frame that shares only
    part of its field with the reference still finds common triangles. Deterministic."""
    from scipy.spatial import cKDTree

    ref_xy = np.asarray(ref_xy, float)
    frame_xy = np.asarray(frame_xy, float)
    if len(ref_xy) < 3 or len(frame_xy) < 3:
        return None, 0
    ftree = cKDTree(frame_xy)
    best, best_n = None, 0
    for n_use in (30, 60, 120):
        r, f = ref_xy[:n_use], frame_xy[:n_use]
        if n_use > 30 and len(ref_xy) <= n_use // 2 and len(frame_xy) <= n_use // 2:
            break  # the lists were used whole already
        m, n_in = _vote(r, f, ref_xy[: 3 * n_use], ftree, scale_range, tol_pix, frame_shape)
        if m is not None and n_in > best_n:
            best, best_n = m, n_in
        # enough to be sure: the refinement takes it from here
        if best_n >= max(12, 0.3 * min(len(r), len(f))):
            break
    return best, best_n


def _vote(r, f, check_xy, ftree, scale_range, tol_pix, frame_shape, n_check: int = 8):
    """One round of :func:`match_star_lists` on the star lists r and f."""
    from scipy.spatial import cKDTree

    if len(r) < 3 or len(f) < 3:
        return None, 0
    inv_r, v_r = _triangles(r)
    inv_f, v_f = _triangles(f)
    if len(inv_r) == 0 or len(inv_f) == 0:
        return None, 0
    pairs = cKDTree(inv_r).query_ball_tree(cKDTree(inv_f), r=0.01)
    a = np.repeat(np.arange(len(pairs)), [len(p) for p in pairs])
    if a.size == 0:
        return None, 0
    b = np.concatenate([np.asarray(p, dtype=int) for p in pairs if p])
    m, res = _similarities(r[v_r[a]], f[v_f[b]])
    scale = np.sqrt(np.abs(np.linalg.det(m[:, :, :2])))
    ok = (scale >= scale_range[0]) & (scale <= scale_range[1]) & (res <= tol_pix)
    m, scale = m[ok], scale[ok]
    if len(m) == 0:
        return None, 0
    # vote: transforms that agree to 1 degree, 1% in scale and 4 px at the frame centre
    rot = np.degrees(np.arctan2(m[:, 1, 0] - m[:, 0, 1], m[:, 0, 0] + m[:, 1, 1]))
    mirror = np.linalg.det(m[:, :, :2]) < 0
    centre = check_xy.mean(axis=0)
    moved = np.einsum("kij,j->ki", m[:, :, :2], centre) + m[:, :, 2]
    ang = np.radians(rot)
    params = np.column_stack([np.cos(ang) * 57.3, np.sin(ang) * 57.3, np.log(scale) / 0.01,
                              moved / 4.0, mirror * 1000.0])
    counts = np.array([len(c) for c in cKDTree(params).query_ball_point(params, r=1.5)])
    order = np.argsort(-counts, kind="stable")
    best, best_n, seen = None, 0, []
    for k in order:
        if len(seen) >= n_check:
            break
        if any(np.linalg.norm(params[k] - params[j]) < 1.5 for j in seen):
            continue
        seen.append(k)
        pred = _apply(m[k], check_xy)
        if frame_shape is not None:
            ny, nx = frame_shape
            pred = pred[(pred[:, 0] > -tol_pix) & (pred[:, 0] < nx + tol_pix)
                        & (pred[:, 1] > -tol_pix) & (pred[:, 1] < ny + tol_pix)]
        d, _ = ftree.query(pred, distance_upper_bound=tol_pix)
        n_in = int(np.isfinite(d).sum())
        if n_in > best_n:
            best, best_n = m[k], n_in
    if best is not None and best_n >= 6:
        best = _grow(best, check_xy, ftree, tol_pix)
    return best, best_n


def _grow(m: np.ndarray, ref_xy: np.ndarray, ftree, tol_pix: float, rounds: int = 6) -> np.ndarray:
    """A triangle's transform is off by its centroid errors over its small size: near the
    triangle its stars land within `tol_pix`, far away they do not. Refit on the stars
    matched so far (the worst residuals, blends and chance pairs, left out), match again
    with the better transform, until the matched set stops growing: the far corners come
    within tolerance one ring at a time."""
    hits = None
    for _ in range(rounds):
        d, j = ftree.query(_apply(m, ref_xy), distance_upper_bound=tol_pix)
        hit = np.flatnonzero(np.isfinite(d))
        if hit.size < 6 or (hits is not None and hit.size <= hits.size):
            break
        hits = hit
        src, dst = ref_xy[hit], ftree.data[j[hit]]
        r = d[hit]
        good = r <= max(3.0 * np.median(r), 0.5)
        m = fit_affine(src[good], dst[good]) if good.sum() >= 6 else fit_affine(src, dst)
    return m


def _on_frame(m: np.ndarray, ref_xy: np.ndarray, frame_shape) -> int:
    """How many reference stars the transform `m` puts on the frame (all without a shape)."""
    if frame_shape is None:
        return len(ref_xy)
    ny, nx = frame_shape
    xy = _apply(m, ref_xy)
    return int(np.count_nonzero((xy[:, 0] >= 0) & (xy[:, 0] < nx) & (xy[:, 1] >= 0) & (xy[:, 1] < ny)))


def _chance_limit(n_on: int, frame_xy: np.ndarray, frame_shape, radius_pix: float) -> tuple[int, float]:
    """(k, expected): the number of matched stars that chance reaches with a probability
    below CHANCE_PROBABILITY, and the number it gives on average, for `n_on` reference
    stars on a frame of `frame_xy` stars (density over the frame, or over their bounding
    box without a shape), the pairs lying within `radius_pix` of their stars (at least
    _CHANCE_RADIUS_FLOOR_PIX). A wrong transform pairs each reference star with whatever
    frame star happens to lie that close (Poisson); the three stars of the triangle that
    proposed it come for free (an affine fit passes through them)."""
    if frame_shape is not None:
        area = float(frame_shape[0] * frame_shape[1])
    else:
        span = np.ptp(frame_xy, axis=0) if len(frame_xy) else np.zeros(2)
        area = float(max(span[0], 1.0) * max(span[1], 1.0))
    radius = max(radius_pix, _CHANCE_RADIUS_FLOOR_PIX)
    expected = n_on * (1.0 - math.exp(-len(frame_xy) * math.pi * radius ** 2 / area))
    # smallest k with P(Poisson(expected) >= k) < CHANCE_PROBABILITY
    k, pmf = 0, math.exp(-expected)
    tail = 1.0
    while tail >= CHANCE_PROBABILITY and k < 100000:
        tail -= pmf
        k += 1
        pmf *= expected / k
    return k + 3, expected


def _acceptance(m: np.ndarray, rms: float, n: int, radius_pix: float, ref_xy, frame_xy, frame_shape,
                min_matched: int, max_rms_pix: float) -> str | None:
    """Why a refined transform cannot be accepted, in words (None when it can): too few
    matched stars for the configured minimum, for 15% of what a right transform matches,
    or for chance to be ruled out (its pairs lie within `radius_pix`); or a residual rms
    above `max_rms_pix`."""
    n_on = _on_frame(m, ref_xy, frame_shape)
    by_chance, expected = _chance_limit(n_on, frame_xy, frame_shape, radius_pix)
    need = max(min_matched, int(0.15 * min(n_on, len(frame_xy), 200)), by_chance)
    if n >= need and rms <= max_rms_pix:
        return None
    why = ("chance alone gives that many" if need == by_chance and by_chance > min_matched else
           "for a right transform" if need > min_matched else "the configured minimum")
    return (f"{n} stars matched (need {need}: {why}; chance pairs {expected:.1f} of the {n_on} reference stars "
            f"it puts on the frame within {max(radius_pix, _CHANCE_RADIUS_FLOOR_PIX):.1f} px), rms {rms:.2f} px")


#: the final fit takes at least this many of the brightest matched stars (see FitStars)
PRECISE_FIT_STARS = 30


class FitStars(NamedTuple):
    """Which matched stars fit the transform; all of them find and check it."""

    ref_ok: np.ndarray         # (N,) reference stars whose positions can fit it (not saturated there)
    frame_ok: np.ndarray       # (M,) frame stars likewise
    frame_precise: np.ndarray  # (M,) frame stars measured well enough to fit on alone


def _precise_fit(m, rms, i, j, ref_xy, frame_xy, fit_stars: FitStars | None):
    """(matrix, rms, n) of the final fit on the pairs (i, j) whose stars are usable on both
    sides and precise on the frame (their centroids, not photon noise, set the
    residuals), or on the brightest PRECISE_FIT_STARS usable pairs when fewer are; on
    all pairs without `fit_stars` or with fewer usable pairs than that."""
    if fit_stars is None:
        return m, rms, int(i.size)
    usable = fit_stars.ref_ok[i] & fit_stars.frame_ok[j]
    if np.count_nonzero(usable) < PRECISE_FIT_STARS:
        return m, rms, int(i.size)
    i, j = i[usable], j[usable]
    order = np.argsort(j, kind="stable")        # frame stars are brightest first
    keep = order[: max(PRECISE_FIT_STARS, int(np.count_nonzero(fit_stars.frame_precise[j])))]
    i, j = i[keep], j[keep]
    m = fit_affine(ref_xy[i], frame_xy[j])
    r = np.hypot(*(_apply(m, ref_xy[i]) - frame_xy[j]).T)
    return m, float(np.sqrt(np.mean(r ** 2))), int(i.size)


def _solution_offset_pix(a: np.ndarray, b: np.ndarray, ref_xy: np.ndarray) -> float:
    """Largest distance [frame pix] between where two transforms put the reference stars."""
    return float(np.max(np.hypot(*(_apply(a, ref_xy) - _apply(b, ref_xy)).T))) if len(ref_xy) else 0.0


def align(ref_xy: np.ndarray, frame_xy: np.ndarray, guess: np.ndarray | None = None,
          search_radius_pix: float = 200.0, min_matched: int = 8, max_rms_pix: float = 0.5,
          expected_scale: float | None = None, frame_shape=None, trust_pix: float = 3.0,
          fit_stars: FitStars | None = None) -> Alignment:
    """Fit the frame's transformation from reference-catalogue stars `ref_xy` (N,2;
    reference pixels, brightest first) to stars detected on the frame `frame_xy`
    (M,2; brightest first). Raises AlignmentError when no fit passes the checks; its
    message names what was tried (header WCS, star pattern) and what each found.

    `guess` (from the header WCS of both frames) is a first guess only: corrected by
    the shift most stars agree on, then refined. When it needed a correction of more
    than `trust_pix` (or led nowhere), the star pattern is matched too
    (:func:`match_star_lists`); when both succeed and disagree by more than `trust_pix`,
    the pattern wins and Alignment.note says so. `frame_shape` (ny, nx) lets the checks
    count only the reference stars that land on the frame. `fit_stars` says which matched
    stars fit the transform (unsaturated, well measured: at least the brightest
    PRECISE_FIT_STARS usable pairs); all of them find and check it."""
    from scipy.spatial import cKDTree

    ref_xy = np.asarray(ref_xy, float)
    frame_xy = np.asarray(frame_xy, float)
    if len(frame_xy) < min_matched:
        raise AlignmentError(f"alignment failed: too few stars detected ({len(frame_xy)}, need {min_matched})")
    tree = cKDTree(frame_xy)
    if expected_scale:
        scale_range = (0.8 * expected_scale, 1.25 * expected_scale)
    else:
        scale_range = (0.5, 2.0)
    found: dict[str, tuple] = {}
    failures = []

    def attempt(method: str, m0: np.ndarray) -> bool:
        m, rms, n, i, j = _refine(m0, ref_xy, frame_xy, tree)
        radius = float(np.max(np.hypot(*(_apply(m, ref_xy[i]) - frame_xy[j]).T))) if n else _PAIRING_PIX
        refused = _acceptance(m, rms, n, radius, ref_xy, frame_xy, frame_shape, min_matched, max_rms_pix)
        if refused is None:
            found[method] = _precise_fit(m, rms, i, j, ref_xy, frame_xy, fit_stars)
            return True
        failures.append(f"{method}: {refused}")
        return False

    wcs_shift = None
    if guess is not None:
        shift, votes = _voted_shift(_apply(guess, ref_xy[:300]), frame_xy[:400], search_radius_pix)
        if shift is not None and votes >= 4:
            m0 = guess.copy()
            m0[:, 2] += shift
            if attempt("header WCS", m0):
                wcs_shift = _solution_offset_pix(guess, found["header WCS"][0], ref_xy)
        else:
            failures.append(f"header WCS: no shift within {search_radius_pix:.0f} px agreed by 4 stars")
    if "header WCS" not in found or wcs_shift > trust_pix:
        m0, n_in = match_star_lists(ref_xy, frame_xy, scale_range=scale_range, frame_shape=frame_shape)
        if m0 is None or n_in < 4:
            failures.append(f"star pattern: no match of {min(len(ref_xy), 120)} reference and "
                            f"{min(len(frame_xy), 120)} frame stars" + (f" (best {n_in} stars)" if n_in else ""))
        else:
            attempt("star pattern", m0)
    note = ""
    if "star pattern" in found:
        m, rms, n = found["star pattern"]
        method = "pattern"
        if "header WCS" in found:
            off = _solution_offset_pix(found["header WCS"][0], m, ref_xy)
            note = (f"header WCS off by {wcs_shift:.0f} px from the star pattern"
                    + (f"; its corrected solution still {off:.1f} px away" if off > trust_pix else "")
                    + ": star pattern used")
        elif guess is not None:
            note = "header WCS led nowhere (" + "; ".join(failures) + "): star pattern used"
    elif "header WCS" in found:
        m, rms, n = found["header WCS"]
        method = "wcs"
    else:
        raise AlignmentError("alignment failed (" + "; ".join(failures) + ")")
    return Alignment(matrix=m, rms_pix=rms, n_matched=n, method=method, note=note)


def header_wcs_error(info, cat, m, tolerance_arcsec: float = 5.0) -> str | None:
    """A warning when a frame's header WCS puts the target more than `tolerance_arcsec`
    away from where the aligned catalogue stars put it (None when it agrees, or the
    frame has no WCS). `info` is the frame's FrameInfo, `cat` the Catalogue and `m` the
    frame's FrameMeasurement (its stars' x, y and its alignment method)."""
    if info.wcs is None:
        return None
    t = cat.target_index
    x, y = float(m.stars["x"][t]), float(m.stars["y"][t])
    method = m.facts.alignment_method
    what = "ignored: aligned on the star pattern" if method == "pattern" else "corrected by the alignment"
    try:
        ra, dec = float(cat.stars["ra"][t]), float(cat.stars["dec"][t])
        wx, wy = info.wcs.all_world2pix([[ra, dec]], 0)[0]
        if not (math.isfinite(wx) and math.isfinite(wy)):
            raise ValueError
    except Exception:
        return f"header WCS cannot place the target ({what})"
    scale = info.pixel_scale_arcsec or cat.pixel_scale_arcsec
    off = math.hypot(wx - x, wy - y) * scale
    if off <= tolerance_arcsec:
        return None
    size = f"{off / 3600:.2f} deg" if off >= 3600 else f"{off / 60:.1f} arcmin" if off >= 60 else f"{off:.1f} arcsec"
    return (f"header WCS is off by {size} at the target (puts it at pixel {wx:.0f}, {wy:.0f}; "
            f"the stars put it at {x:.0f}, {y:.0f}): {what}")
