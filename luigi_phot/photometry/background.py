"""Sky level and noise: robust statistics over the frame, over a coarse mesh, and
over many small pixel sets at once (sky annuli).

All values are in the units of the input array (electrons in the pipeline).
The robust estimator everywhere is the median after iterative 3-sigma
clipping, with sigma from the 15.87-84.13 percentile range, computed on rows
that are sorted once: clipping then only moves two indices per row, so
20,000 annuli of 400 pixels take a few tens of milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.stats import mad_std

__all__ = ["clipped_stats_sorted", "pixel_noise", "SkyMesh", "sky_mesh"]


def clipped_stats_sorted(rows: np.ndarray, n_valid: np.ndarray, nsigma: float = 3.0,
                         iterations: int = 8, mean: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sigma-clipped median (or, with `mean`, the mean of the values kept), sigma and
    number of values kept, for each row.

    rows: (N, M) array sorted along axis 1, with invalid entries (NaN) at the end;
    n_valid: (N,) number of valid entries per row. Rows with fewer than 3 valid
    values give NaN. Each iteration works only on the rows whose window moved."""
    rows = np.asarray(rows)
    n = rows.shape[0]
    lo = np.zeros(n, dtype=np.int64)
    hi = np.asarray(n_valid, dtype=np.int64).copy()
    ok = hi >= 3
    med = np.full(n, np.nan)
    sig = np.full(n, np.nan)
    active = np.flatnonzero(ok)
    for _ in range(iterations):
        if active.size == 0:
            break
        a_lo, a_hi = lo[active], hi[active]
        k = np.maximum(a_hi - a_lo, 1)
        top = np.maximum(a_hi - 1, 0)
        sub = rows[active]
        idx = np.arange(active.size)
        m = 0.5 * (sub[idx, np.minimum(a_lo + (k - 1) // 2, top)].astype(np.float64)
                   + sub[idx, np.minimum(a_lo + k // 2, top)])
        q16 = sub[idx, np.minimum(a_lo + (0.1587 * (k - 1)).astype(np.int64), top)].astype(np.float64)
        q84 = sub[idx, np.minimum(a_lo + (0.8413 * (k - 1)).astype(np.int64), top)].astype(np.float64)
        s = 0.5 * (q84 - q16)
        med[active], sig[active] = m, s
        lower = (m - nsigma * s).astype(sub.dtype)[:, None]
        upper = (m + nsigma * s).astype(sub.dtype)[:, None]
        new_lo = np.count_nonzero(sub < lower, axis=1)
        new_hi = np.minimum(np.count_nonzero(sub <= upper, axis=1), a_hi)
        moved = (s > 0) & ((new_hi - new_lo) >= 3) & ((new_lo != a_lo) | (new_hi != a_hi))
        lo[active[moved]] = new_lo[moved]
        hi[active[moved]] = new_hi[moved]
        active = active[moved]
    if active.size:  # not converged within `iterations`: statistics of the last window
        a_lo, a_hi = lo[active], hi[active]
        k = np.maximum(a_hi - a_lo, 1)
        top = np.maximum(a_hi - 1, 0)
        sub = rows[active]
        idx = np.arange(active.size)
        med[active] = 0.5 * (sub[idx, np.minimum(a_lo + (k - 1) // 2, top)].astype(np.float64)
                             + sub[idx, np.minimum(a_lo + k // 2, top)])
    if mean:
        # sum of each row's window [lo, hi): one reduceat over the flattened rows
        m = rows.shape[1]
        flat = np.append(rows.ravel(), np.float32(0.0))
        bounds = np.empty(2 * n, dtype=np.int64)
        bounds[0::2] = np.arange(n) * m + lo
        bounds[1::2] = np.arange(n) * m + hi
        sums = np.add.reduceat(flat, bounds, dtype=np.float64)[0::2]
        med = np.where(hi > lo, sums / np.maximum(hi - lo, 1), np.nan)
    med = np.where(ok, med, np.nan)
    sig = np.where(ok, sig, np.nan)
    return med, sig, np.where(ok, hi - lo, 0)


def pixel_noise(data: np.ndarray, pixel_flags: np.ndarray | None = None, max_samples: int = 1_000_000) -> float:
    """Pixel-to-pixel noise (sigma of one pixel) from differences of horizontally adjacent
    pixels, robustly (MAD): the temporal noise of a pixel, which the static structure of
    a crowded field (faint stars spread over several pixels) hardly enters, unlike the
    spread of pixel values."""
    step = max(1, int(np.sqrt(data.size / max_samples)))
    a = data[::step, :-1:step].astype(np.float64)
    b = data[::step, 1::step].astype(np.float64)
    d = a - b
    if pixel_flags is not None:
        d = d[(pixel_flags[::step, :-1:step] == 0) & (pixel_flags[::step, 1::step] == 0)]
    d = d[np.isfinite(d)]
    if d.size < 100:
        return float("nan")
    return float(mad_std(d) / np.sqrt(2.0))


@dataclass(frozen=True)
class SkyMesh:
    """Clipped sky level and sigma on a coarse grid of boxes (box x box pixels)."""

    box: int
    level: np.ndarray   # (ny_box, nx_box)
    sigma: np.ndarray

    def _grid(self, x, y):
        gx = np.clip((np.asarray(x, float) + 0.5) / self.box - 0.5, 0, self.level.shape[1] - 1)
        gy = np.clip((np.asarray(y, float) + 0.5) / self.box - 0.5, 0, self.level.shape[0] - 1)
        return gx, gy

    def _bilinear(self, grid, x, y):
        gx, gy = self._grid(x, y)
        x0 = np.floor(gx).astype(int)
        y0 = np.floor(gy).astype(int)
        x1 = np.minimum(x0 + 1, grid.shape[1] - 1)
        y1 = np.minimum(y0 + 1, grid.shape[0] - 1)
        fx = gx - x0
        fy = gy - y0
        return ((grid[y0, x0] * (1 - fx) + grid[y0, x1] * fx) * (1 - fy)
                + (grid[y1, x0] * (1 - fx) + grid[y1, x1] * fx) * fy)

    def level_at(self, x, y):
        return self._bilinear(self.level, x, y)

    def sigma_at(self, x, y):
        return self._bilinear(self.sigma, x, y)

    def level_image(self, shape) -> np.ndarray:
        """The sky level interpolated onto every pixel (float32)."""
        ny, nx = shape
        gx, _ = self._grid(np.arange(nx), np.zeros(nx))
        _, gy = self._grid(np.zeros(ny), np.arange(ny))
        x0 = np.floor(gx).astype(int)
        x1 = np.minimum(x0 + 1, self.level.shape[1] - 1)
        fx = (gx - x0).astype(np.float32)
        rows = (self.level[:, x0] * (1 - fx) + self.level[:, x1] * fx).astype(np.float32)  # (nyb, nx)
        y0 = np.floor(gy).astype(int)
        y1 = np.minimum(y0 + 1, self.level.shape[0] - 1)
        fy = (gy - y0).astype(np.float32)[:, None]
        out = np.empty((ny, nx), dtype=np.float32)
        for start in range(0, ny, 256):   # in bands: small temporaries, reused rather than paged in
            band = slice(start, start + 256)
            out[band] = rows[y0[band]] * (1 - fy[band]) + rows[y1[band]] * fy[band]
        return out


def sky_mesh(data: np.ndarray, pixel_flags: np.ndarray | None = None, box: int = 128,
             step: int = 4) -> SkyMesh:
    """Clipped sky in boxes of `box` pixels, each from every `step`-th pixel in x and y.
    Boxes with too few usable pixels take the median of the others."""
    ny, nx = data.shape
    box = int(max(8, min(box, ny, nx)))
    nby, nbx = max(1, ny // box), max(1, nx // box)
    step = max(1, min(step, box // 4))
    sub = data[: nby * box: step, : nbx * box: step].astype(np.float32, copy=True)
    if pixel_flags is not None:
        sub[pixel_flags[: nby * box: step, : nbx * box: step] != 0] = np.nan
    k = box // step
    blocks = sub.reshape(nby, k, nbx, k).transpose(0, 2, 1, 3).reshape(nby * nbx, k * k)
    n_valid = np.count_nonzero(np.isfinite(blocks), axis=1)
    blocks.sort(axis=1)
    level, sigma, _ = clipped_stats_sorted(blocks, n_valid)
    bad = ~np.isfinite(level) | (n_valid < 0.25 * k * k)
    if bad.all():
        level[:] = np.nanmedian(data)
        sigma[:] = np.nanstd(data)
    elif bad.any():
        level[bad] = np.median(level[~bad])
        sigma[bad] = np.median(sigma[~bad])
    return SkyMesh(box=box, level=level.reshape(nby, nbx), sigma=sigma.reshape(nby, nbx))
