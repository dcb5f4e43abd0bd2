"""The report's own figures, drawn from the products (static matplotlib, PNG bytes):
the light curve in magnitude and flux, and the conditions of every frame against
time (seeing, sky, zero point, airmass, alignment, the target's flux and its
neighbours' subtracted light).

Frames rejected with a known time are marked in every panel (red), severe-flagged
points are grey crosses, points with an informational flag (repaired pixels, a
cosmic ray, crowded) are open orange circles: nothing is hidden, nothing blends in.
"""

from __future__ import annotations

import io

import numpy as np

from ..photometry import flags as F
from ..photometry.plots import _pyplot
from .products import LightCurve

__all__ = ["lightcurve_png", "conditions_png", "time_origin"]

_DPI = 100
_REJECTED_COLOUR = "C3"


def time_origin(mjd: np.ndarray) -> float:
    """The integer MJD the time axes count from."""
    finite = mjd[np.isfinite(mjd)]
    return float(np.floor(finite.min())) if finite.size else 0.0


def _plain(title: str) -> str:
    """A title as plain text: a '$' from a header's FILTER must not start matplotlib's mathtext."""
    return title.replace("$", r"\$")


def _png(fig, plt) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    plt.close(fig)
    return buffer.getvalue()


def _mark_rejected(ax, t_rejected: np.ndarray, label: bool) -> None:
    """A faint red line across the panel at each rejected frame's time (one artist for all)."""
    if t_rejected.size:
        ax.vlines(t_rejected, 0, 1, transform=ax.get_xaxis_transform(), color=_REJECTED_COLOUR, lw=0.8, alpha=0.35,
                  label=f"rejected frame ({t_rejected.size})" if label else None)


def lightcurve_png(lc: LightCurve, title: str) -> bytes:
    """Magnitude (top) and flux [e-/s on the reference scale] (bottom) against time."""
    plt = _pyplot()
    t = lc.column("mjd")
    t0 = time_origin(t)
    x = t - t0
    severe = (lc.flags & F.SEVERE) != 0
    informational = (lc.flags & ~F.SEVERE) != 0
    rejected = lc.rejected()
    fig, (ax_mag, ax_flux) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True, height_ratios=(3, 2))
    fig.subplots_adjust(left=0.09, right=0.98, top=0.95, bottom=0.17, hspace=0.06)
    for ax, value, error, unit in ((ax_mag, lc.column("mag"), lc.column("mag_err"), "magnitude"),
                                   (ax_flux, lc.column("flux"), lc.column("flux_err"), "flux [e-/s]")):
        finite = np.isfinite(value)
        good = finite & ~severe
        ax.errorbar(x[good], value[good], error[good], fmt="o", ms=3, color="C0", elinewidth=0.8,
                    label=f"measured ({good.sum()})")
        kept = good & informational
        if kept.any():
            ax.plot(x[kept], value[kept], "o", ms=7, mfc="none", color="C1",
                    label=f"informational flag, kept ({kept.sum()})")
        flagged = finite & severe & ~rejected
        if flagged.any():
            ax.errorbar(x[flagged], value[flagged], error[flagged], fmt="x", ms=5, color="0.55", ecolor="0.75",
                        elinewidth=0.8, label=f"severe flag, not uploaded ({flagged.sum()})")
        _mark_rejected(ax, x[rejected & np.isfinite(x)], label=ax is ax_mag)
        ax.set_ylabel(unit)
        ax.grid(alpha=0.25)
    ax_mag.invert_yaxis()
    ax_flux.set_xlabel(f"MJD - {t0:.0f} (UTC, mid-exposure)")
    ax_mag.set_title(_plain(title))
    handles, labels = ax_mag.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncols=min(4, max(1, len(handles))), fontsize=8, frameon=False)
    return _png(fig, plt)


def _panel(ax, x, y, label: str, colour: str, rejected_x: np.ndarray, yerr=None,
           missing: str = "not in the headers") -> None:
    finite = np.isfinite(y)
    if finite.any():
        if yerr is not None:
            ax.errorbar(x[finite], y[finite], yerr[finite], fmt="o", ms=3, color=colour, elinewidth=0.7)
        else:
            ax.plot(x[finite], y[finite], "o", ms=3, color=colour)
    else:
        ax.text(0.5, 0.5, missing, transform=ax.transAxes, ha="center", va="center", color="0.4")
    _mark_rejected(ax, rejected_x, label=False)
    ax.set_ylabel(label)
    ax.grid(alpha=0.25)


def conditions_png(frames, lc: LightCurve, title: str) -> bytes:
    """Per frame against time: seeing, sky, zero point, airmass, alignment rms and
    matched stars, the target's flux and the neighbours' light subtracted from it.
    `frames` is the all-stars file's FRAMES table (measured frames)."""
    plt = _pyplot()
    t = np.asarray(frames["mjd"], float)
    t_lc = lc.column("mjd")
    t0 = time_origin(np.concatenate([t, t_lc]))
    x, x_lc = t - t0, t_lc - t0
    rejected_x = x_lc[lc.rejected() & np.isfinite(x_lc)]
    col = {name: np.asarray(frames[name], float) for name in
           ("fwhm_arcsec", "sky", "zero_point", "zero_point_err", "airmass", "alignment_rms_pix", "n_matched")}
    fig, axes = plt.subplots(3, 2, figsize=(11, 8), sharex=True)
    fig.subplots_adjust(left=0.07, right=0.95, top=0.94, bottom=0.07, hspace=0.12, wspace=0.4)
    (a_fwhm, a_sky), (a_zp, a_air), (a_aln, a_flux) = axes
    _panel(a_fwhm, x, col["fwhm_arcsec"], "seeing FWHM [arcsec]", "C0", rejected_x)
    _panel(a_sky, x, col["sky"], "sky [e-/pix]", "C2", rejected_x)
    _panel(a_zp, x, col["zero_point"], "zero point [mag]", "C4", rejected_x, yerr=col["zero_point_err"])
    a_zp.set_title("lower = less light through (clouds, extinction)", fontsize=8, loc="left")
    _panel(a_air, x, col["airmass"], "airmass", "C5", rejected_x)
    if np.isfinite(col["airmass"]).any():
        a_air.invert_yaxis()
    _panel(a_aln, x, col["alignment_rms_pix"], "alignment rms [pix]", "C1", rejected_x)
    matched = a_aln.twinx()
    matched.plot(x, col["n_matched"], "_", ms=8, color="0.35")
    matched.set_ylabel("matched stars (dashes)", color="0.35")
    flux, neighbours = lc.column("flux"), lc.column("neighbour_flux")
    _panel(a_flux, x_lc, flux, "target [e-/s]", "C0", rejected_x, missing="no flux measured")
    finite = np.isfinite(neighbours)
    a_flux.plot(x_lc[finite], neighbours[finite], "s", ms=3, mfc="none", color="C3",
                label="neighbours' light subtracted from the aperture")
    a_flux.plot([], [], "o", ms=3, color="C0", label="target flux")
    a_flux.legend(fontsize=7, loc="best")
    for ax in axes[-1]:
        ax.set_xlabel(f"MJD - {t0:.0f}")
    fig.suptitle(_plain(title) + (f"; red lines: {rejected_x.size} rejected frames" if rejected_x.size else ""))
    return _png(fig, plt)
