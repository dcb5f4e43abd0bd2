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

import numpy as np

__all__ = ["Alignment", "AlignmentError", "align", "affine_from_wcs", "fit_affine", "header_wcs_error"]


class AlignmentError(Exception):
    """The frame could not be aligned to the catalogue (reason in the message)."""


@dataclass
class Alignment:
    """matrix: 2x3 affine, frame (x, y) = matrix @ (x_ref, y_ref, 1)."""

    matrix: np.ndarray
    rms_pix: float
    n_matched: int
    method: str

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

    def to_header(self) -> dict:
        m = self.matrix
        out = {f"ALN_{i}{j}": (float(m[i, j]), "ref->frame affine") for i in range(2) for j in range(3)}
        out.update({"ALN_RMS": (self.rms_pix, "alignment residual RMS [pix]"),
                    "ALN_N": (self.n_matched, "stars matched in alignment"),
                    "ALN_METH": (self.method, "alignment method"),
                    "ALN_ROT": (self.rotation_deg, "rotation of frame vs reference [deg]"),
                    "ALN_SCAL": (self.scale, "frame pix per reference pix")})
        return out


def fit_affine(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Least-squares 2x3 affine mapping src (N,2) onto dst (N,2)."""
    a = np.column_stack([src, np.ones(len(src))])
    if weights is not None:
        sw = np.sqrt(weights)[:, None]
        coef, *_ = np.linalg.lstsq(a * sw, dst * sw, rcond=None)
    else:
        coef, *_ = np.linalg.lstsq(a, dst, rcond=None)
    return coef.T


def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray | None:
    """2x3 similarity (rotation, uniform scale, shift; proper or mirrored) from matched points."""
    best = None
    for mirror in (1.0, -1.0):
        s = src * np.array([1.0, mirror])
        sc = s - s.mean(0)
        dc = dst - dst.mean(0)
        # complex-number fit: dst = z * src + t
        zs = sc[:, 0] + 1j * sc[:, 1]
        zd = dc[:, 0] + 1j * dc[:, 1]
        denom = np.vdot(zs, zs).real
        if denom <= 0:
            continue
        z = np.vdot(zs, zd) / denom
        res = np.abs(zd - z * zs).sum()
        if best is None or res < best[0]:
            lin = np.array([[z.real, -z.imag], [z.imag, z.real]]) @ np.diag([1.0, mirror])
            t = dst.mean(0) - lin @ src.mean(0)
            best = (res, np.column_stack([lin, t]))
    return None if best is None else best[1]


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


def _refine(m0, ref_xy, frm_xy, tree, tols=(4.0, 2.0, 1.0)) -> tuple[np.ndarray, float, int, np.ndarray, np.ndarray]:
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


def _pattern_guess(ref_xy: np.ndarray, frm_xy: np.ndarray, n_use: int = 40, tol: float = 3.0,
                   scale_range=(0.5, 2.0)):
    """Best transform from triangle matching, as (matrix, inliers)."""
    from scipy.spatial import cKDTree

    r = ref_xy[:n_use]
    f = frm_xy[:n_use]
    if len(r) < 4 or len(f) < 4:
        return None, 0
    inv_r, v_r = _triangles(r)
    inv_f, v_f = _triangles(f)
    if len(inv_r) == 0 or len(inv_f) == 0:
        return None, 0
    tree = cKDTree(inv_f)
    cand = tree.query_ball_point(inv_r, r=0.01)
    ftree = cKDTree(frm_xy)
    best, best_n = None, 0
    tried = 0
    for a, matches in enumerate(cand):
        for b in matches:
            m = _similarity(r[v_r[a]], f[v_f[b]])
            if m is None:
                continue
            sc = np.sqrt(abs(np.linalg.det(m[:, :2])))
            if not (scale_range[0] <= sc <= scale_range[1]):
                continue
            tried += 1
            d, _ = ftree.query(_apply(m, ref_xy[: 2 * n_use]), distance_upper_bound=tol)
            n_in = int(np.isfinite(d).sum())
            if n_in > best_n:
                best, best_n = m, n_in
            if tried > 3000:
                break
        if tried > 3000:
            break
    return best, best_n


def align(ref_xy: np.ndarray, frame_xy: np.ndarray, guess: np.ndarray | None = None,
          search_radius_pix: float = 200.0, min_matched: int = 8, max_rms_pix: float = 0.5,
          expected_scale: float | None = None) -> Alignment:
    """Fit the frame's transformation from reference-catalogue stars `ref_xy` (N,2;
    reference pixels, brightest first) to stars detected on the frame `frame_xy`
    (M,2; brightest first). Raises AlignmentError when no fit passes the checks."""
    from scipy.spatial import cKDTree

    ref_xy = np.asarray(ref_xy, float)
    frame_xy = np.asarray(frame_xy, float)
    if len(frame_xy) < min_matched:
        raise AlignmentError(f"too few stars detected ({len(frame_xy)}, need {min_matched})")
    tree = cKDTree(frame_xy)
    attempts = []
    if guess is not None:
        shift, votes = _voted_shift(_apply(guess, ref_xy[:300]), frame_xy[:400], search_radius_pix)
        if shift is not None and votes >= 4:
            m0 = guess.copy()
            m0[:, 2] += shift
            attempts.append(("wcs", m0))
    attempts.append(("pattern", None))
    if expected_scale:
        lo, hi = 0.8 * expected_scale, 1.25 * expected_scale
    else:
        lo, hi = 0.5, 2.0
    failures = []
    for method, m0 in attempts:
        if m0 is None:
            m0, n_in = _pattern_guess(ref_xy, frame_xy, scale_range=(lo, hi))
            if m0 is None or n_in < 4:
                m0, n_in = _pattern_guess(ref_xy, frame_xy, n_use=80, scale_range=(lo, hi))
            if m0 is None or n_in < 4:
                failures.append("no matching star pattern")
                continue
        m, rms, n, _, _ = _refine(m0, ref_xy, frame_xy, tree)
        expected = min(len(ref_xy), len(frame_xy))
        if n >= max(min_matched, int(0.15 * min(expected, 200))) and rms <= max_rms_pix:
            return Alignment(matrix=m, rms_pix=rms, n_matched=n, method=method)
        failures.append(f"{method}: {n} stars matched, rms {rms:.2f} px")
    raise AlignmentError("alignment failed (" + "; ".join(failures) + ")")


def header_wcs_error(info, cat, m, tolerance_arcsec: float = 5.0) -> str | None:
    """A warning when a frame's header WCS puts the target more than `tolerance_arcsec`
    away from where the aligned catalogue stars put it (None when it agrees, or the
    frame has no WCS). `info` is the frame's FrameInfo, `cat` the Catalogue and `m` the
    frame's measurement (its columns x, y and header ALN_METH)."""
    if info.wcs is None:
        return None
    t = cat.target_index
    x, y = float(m.columns["x"][t]), float(m.columns["y"][t])
    method = m.header.get("ALN_METH", ("?",))[0]
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
