"""The plots users look at: the light curve, the noise diagnostic (scatter of
constant stars against magnitude with the predicted noise), and the residuals
of constant stars and the target against seeing (crowding diagnostic)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import flags as F

__all__ = ["plot_lightcurve", "plot_noise", "plot_fwhm_residuals", "binned_median"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure(width_in: float, height_in: float):
    """A figure with one axes and a band below it for the x label and the legend (fixed
    margins: a layout engine measures every label on each of its passes, and that was a
    third of the time of the plots)."""
    plt = _pyplot()
    fig = plt.figure(figsize=(width_in, height_in), dpi=110)
    left, right, top, bottom = 0.9, 0.2, 0.35, 1.05              # inches
    ax = fig.add_axes((left / width_in, bottom / height_in, 1 - (left + right) / width_in,
                       1 - (top + bottom) / height_in))
    return plt, fig, ax


def plot_lightcurve(lc, path: Path, title: str) -> None:
    """Magnitude against time; flagged points in grey, rejected frames marked at the bottom."""
    plt, fig, ax = _figure(9, 5)
    flags = np.asarray(lc["flags"])
    t = np.asarray(lc["mjd"])
    mag = np.asarray(lc["mag"], float)
    err = np.asarray(lc["mag_err"], float)
    good = ((flags & F.SEVERE) == 0) & np.isfinite(mag)
    flagged = ((flags & F.SEVERE) != 0) & np.isfinite(mag)
    t0 = np.floor(np.nanmin(t)) if np.isfinite(t).any() else 0.0
    ax.errorbar(t[good] - t0, mag[good], err[good], fmt="o", ms=3, color="C0", ecolor="C0", elinewidth=0.8,
                label=f"measured ({good.sum()})")
    if flagged.any():
        ax.errorbar(t[flagged] - t0, mag[flagged], err[flagged], fmt="x", ms=4, color="0.6", ecolor="0.75",
                    elinewidth=0.8, label=f"flagged ({flagged.sum()})")
    rej = ~np.isfinite(mag) & np.isfinite(t)
    if rej.any() and (good | flagged).any():
        y = np.nanmax(mag[good | flagged]) + 0.05
        ax.plot(t[rej] - t0, np.full(rej.sum(), y), "v", color="C3", ms=4, label=f"rejected or no flux ({rej.sum()})")
    ax.invert_yaxis()
    ax.set_xlabel(f"MJD - {t0:.0f} (UTC, mid-exposure)")
    ax.set_ylabel("magnitude")
    ax.set_title(title)
    _legend_below(fig, ax)
    fig.savefig(path, format="png")
    plt.close(fig)


def plot_noise(stars, path: Path, title: str) -> None:
    """Measured RMS of constant stars against magnitude, with the predicted noise
    (their median error bars, as a running median in magnitude bins), both in
    millimagnitudes on a log axis labelled in plain numbers (2, 5, 10, 20 mmag)."""
    from matplotlib.ticker import LogFormatter

    mean = np.asarray(stars["mean_flux"], float)
    rms = np.asarray(stars["rms_flux"], float)
    pred = np.asarray(stars["median_flux_err"], float)
    mag = np.asarray(stars["mean_mag"], float)
    comp = np.asarray(stars["comparison"], bool)
    ok = comp & (mean > 0) & np.isfinite(rms) & np.isfinite(pred) & (np.asarray(stars["n_good"]) >= 3)
    plt, fig, ax = _figure(7, 5.5)
    mmag = 2500 / np.log(10)           # a relative flux error in mmag
    ax.semilogy(mag[ok], mmag * rms[ok] / mean[ok], ".", ms=2, color="C0", alpha=0.5,
                label="measured RMS (constant stars)")
    centre, predicted = binned_median(mag[ok], mmag * pred[ok] / mean[ok])
    ax.semilogy(centre, predicted, "-", color="C3", lw=1.5, label="predicted (median error bar, binned)")
    t = np.asarray(stars["is_target"], bool)
    if t.any() and np.isfinite(mag[t]).all():
        ax.semilogy(mag[t], mmag * rms[t] / np.abs(mean[t]), "*", ms=12, color="C1", label="target (variable)")
    ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    ax.set_xlabel("mean magnitude")
    ax.set_ylabel("RMS [mmag]")
    ax.set_title(title)
    ratio = f"median RMS/predicted = {np.median(rms[ok] / pred[ok]):.2f}" if ok.sum() >= 10 else None
    _legend_below(fig, ax, title=ratio)
    fig.savefig(path, format="png")
    plt.close(fig)


def binned_median(x: np.ndarray, y: np.ndarray, width: float = 0.25, min_count: int = 5):
    """Medians of y in bins of x `width` wide, a bin joined with the next until it holds
    `min_count` points: (median x, median y) per bin, in increasing x. A curve through
    per-star values jumps wherever one star's value is odd (a neighbour, a flagged
    frame); medians of neighbouring stars follow the trend over the whole range."""
    good = np.isfinite(x) & np.isfinite(y)
    x, y = x[good], y[good]
    if x.size == 0:
        return np.zeros(0), np.zeros(0)
    order = np.argsort(x)
    x, y = x[order], y[order]
    bins = np.floor((x - x[0]) / width).astype(int)
    groups, start = [], 0
    for end in np.flatnonzero(np.diff(bins)) + 1:
        if end - start >= min_count:
            groups.append((start, end))
            start = end
    if groups and x.size - start < min_count:
        groups[-1] = (groups[-1][0], x.size)  # a short last bin joins the one before
    else:
        groups.append((start, x.size))
    return (np.array([np.median(x[a:b]) for a, b in groups]), np.array([np.median(y[a:b]) for a, b in groups]))


def _legend_below(fig, ax, title: str | None = None):
    """The legend under the axes, where it cannot cover a point (None when empty)."""
    handles, labels = ax.get_legend_handles_labels()
    if not (handles or title):
        return None
    return fig.legend(handles, labels, loc="lower center", ncols=min(3, max(1, len(handles))), fontsize=8,
                      title=title, title_fontsize=9, frameon=False, borderaxespad=0.2)


def plot_fwhm_residuals(frames, lc, all_flux, comparison_idx, path: Path, title: str) -> None:
    """Residuals against each frame's FWHM: constant stars (flux / median - 1) and the
    target (flux / its running median over the 5 nearest frames in time - 1, so that
    its own variability is left out). Neighbours' light leaking into apertures as
    the seeing changes shows as a trend."""
    fwhm = np.asarray(frames["fwhm_arcsec"], float)
    plt, fig, ax = _figure(7, 5)
    if comparison_idx.size:
        f = all_flux[:, comparison_idx]
        med = np.nanmedian(f, axis=0)
        rel = f / med[None, :] - 1.0
        ax.plot(np.repeat(fwhm[:, None], rel.shape[1], 1).ravel(), rel.ravel(), ",", color="0.6", alpha=0.3,
                label="constant stars")
        ax.plot(fwhm, np.nanmedian(rel, axis=1), "s", ms=4, color="C0", label="median of constant stars")
    t = np.asarray(lc["mjd"], float)
    flux = np.asarray(lc["flux"], float)
    good = np.isfinite(flux) & ((np.asarray(lc["flags"]) & F.SEVERE) == 0)
    if good.sum() >= 5:
        tg, fg, wg = t[good], flux[good], np.asarray(lc["fwhm_arcsec"], float)[good]
        order = np.argsort(tg)
        tg, fg, wg = tg[order], fg[order], wg[order]
        trend = np.array([np.median(fg[max(0, i - 2): i + 3]) for i in range(fg.size)])
        ax.plot(wg, fg / trend - 1.0, "*", ms=7, color="C1", label="target (against its running median)")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_ylim(-0.2, 0.2)
    ax.set_xlabel("frame FWHM [arcsec]")
    ax.set_ylabel("relative residual")
    ax.set_title(title)
    legend = _legend_below(fig, ax)
    if legend is not None and comparison_idx.size:  # the cloud's one-pixel marker, visible in the legend
        legend.legend_handles[0].set(marker=".", markersize=6, alpha=1.0)
    fig.savefig(path, format="png")
    plt.close(fig)
