"""The plots users look at: the light curve, the noise diagnostic (scatter of
constant stars against magnitude with the predicted noise), and the residuals
of constant stars and the target against seeing (crowding diagnostic)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import flags as F

__all__ = ["plot_lightcurve", "plot_noise", "plot_fwhm_residuals"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_lightcurve(lc, path: Path, title: str) -> None:
    """Magnitude against time; flagged points in grey, rejected frames marked at the bottom."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
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
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def plot_noise(stars, path: Path, title: str) -> None:
    """Measured RMS of constant stars against magnitude, with the predicted noise
    (median flux error), both in magnitudes."""
    plt = _pyplot()
    mean = np.asarray(stars["mean_flux"], float)
    rms = np.asarray(stars["rms_flux"], float)
    pred = np.asarray(stars["median_flux_err"], float)
    mag = np.asarray(stars["mean_mag"], float)
    comp = np.asarray(stars["comparison"], bool)
    ok = comp & (mean > 0) & np.isfinite(rms) & np.isfinite(pred) & (np.asarray(stars["n_good"]) >= 3)
    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    k = 2.5 / np.log(10)
    ax.semilogy(mag[ok], k * rms[ok] / mean[ok], ".", ms=2, color="C0", alpha=0.5, label="measured RMS (constant stars)")
    order = np.argsort(mag[ok])
    ax.semilogy(mag[ok][order], k * pred[ok][order] / mean[ok][order], "-", color="C3", lw=1.2,
                label="predicted (median error bar)")
    t = np.asarray(stars["is_target"], bool)
    if t.any() and np.isfinite(mag[t]).all():
        ax.semilogy(mag[t], k * rms[t] / np.abs(mean[t]), "*", ms=12, color="C1", label="target (variable)")
    if ok.sum() >= 10:
        ratio = rms[ok] / pred[ok]
        ax.text(0.02, 0.97, f"median RMS/predicted = {np.median(ratio):.2f}", transform=ax.transAxes,
                va="top", fontsize=9)
    ax.set_xlabel("mean magnitude")
    ax.set_ylabel("RMS [mag]")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def plot_fwhm_residuals(frames, lc, all_flux, comparison_idx, path: Path, title: str) -> None:
    """Residuals against each frame's FWHM: constant stars (flux / median - 1) and the
    target (flux / its running median over the 5 nearest frames in time - 1, so that
    its own variability is left out). Neighbours' light leaking into apertures as
    the seeing changes shows as a trend."""
    plt = _pyplot()
    fwhm = np.asarray(frames["fwhm_arcsec"], float)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
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
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
