"""The finder chart: how a photometrist checks the target identification at a glance.

The reference frame around the target (about 1 arcmin across, at least 50 pixels), with
a stretch that shows faint stars; the target's aperture and sky annulus on the adopted
star; the configured coordinates marked apart from it; the catalogue's neighbours
within reach of the aperture and annulus; north and east arrows and a scale bar; the
identification and astrometry facts in the title.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from astropy.stats import mad_std

__all__ = ["plot_finder_chart", "finder_half_width_pix"]

#: Half the chart's width [arcsec] (about 1 arcmin across), and at least this many pixels.
HALF_WIDTH_ARCSEC = 30.0
MIN_HALF_WIDTH_PIX = 25


def finder_half_width_pix(scale_arcsec: float) -> int:
    return int(max(math.ceil(HALF_WIDTH_ARCSEC / scale_arcsec), MIN_HALF_WIDTH_PIX))


def _stretch(crop: np.ndarray) -> tuple[np.ndarray, float, float]:
    """asinh of the sky-subtracted crop scaled to the sky noise: faint stars show, bright
    ones do not saturate the grey scale."""
    finite = crop[np.isfinite(crop)]
    if finite.size == 0:
        return np.zeros_like(crop), 0.0, 1.0
    sky = float(np.median(finite))
    noise = float(mad_std(finite)) or 1.0
    img = np.arcsinh(np.nan_to_num(crop - sky, nan=0.0) / (3.0 * noise))
    return img, -1.0, max(float(np.percentile(img, 99.7)), 2.0)


def _sky_directions(wcs, x: float, y: float) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors (pixels) pointing north and east at (x, y)."""
    ra, dec = wcs.all_pix2world([[x, y]], 0)[0]
    step = 1.0 / 3600.0
    north = wcs.all_world2pix([[ra, dec + step]], 0)[0] - [x, y]
    east = wcs.all_world2pix([[ra + step / max(math.cos(math.radians(dec)), 1e-6), dec]], 0)[0] - [x, y]
    return north / np.hypot(*north), east / np.hypot(*east)


def _scale_bar_arcsec(width_arcsec: float) -> float:
    for length in (60, 30, 20, 10, 5, 2, 1):
        if length <= width_arcsec / 4:
            return float(length)
    return 0.5


def plot_finder_chart(data: np.ndarray, wcs, stars, facts: dict, scale_arcsec: float, fwhm_pix: float,
                      radii_pix: tuple[float, float, float], path: Path, title: str) -> None:
    """Write the chart. `data`: the reference frame's pixels; `stars`: the catalogue's STARS
    table (x_ref, y_ref, is_target, detected, flux_ref); `facts`: the catalogue's TGT*/AST*
    cards {key: (value, comment)}; `radii_pix`: aperture, annulus inner and outer radii."""
    from .plots import _pyplot

    plt = _pyplot()
    fact = {k: v[0] if isinstance(v, tuple) else v for k, v in facts.items()}
    t = int(np.flatnonzero(np.asarray(stars["is_target"]))[0])
    sx, sy = float(stars["x_ref"][t]), float(stars["y_ref"][t])
    cx, cy = wcs.all_world2pix([[fact["TGTRA"], fact["TGTDEC"]]], 0)[0]
    half = finder_half_width_pix(scale_arcsec)
    ny, nx = data.shape
    x0, x1 = int(max(0, round(sx) - half)), int(min(nx, round(sx) + half + 1))
    y0, y1 = int(max(0, round(sy) - half)), int(min(ny, round(sy) + half + 1))
    img, lo, hi = _stretch(np.asarray(data[y0:y1, x0:x1], dtype=float))

    fig, ax = plt.subplots(figsize=(7.2, 7.8), dpi=110)
    extent = (x0 - 0.5, x1 - 0.5, y0 - 0.5, y1 - 0.5)
    ax.imshow(img, origin="lower", cmap="gray_r", vmin=lo, vmax=hi, interpolation="nearest", extent=extent)
    r_ap, r_in, r_out = radii_pix
    xs, ys = np.asarray(stars["x_ref"], float), np.asarray(stars["y_ref"], float)
    d = np.hypot(xs - sx, ys - sy)
    near = np.flatnonzero((d > 0) & (d <= r_out + 3 * fwhm_pix))
    marks = dict(plt=plt, target=(sx, sy), radii=radii_pix, given=(cx, cy), neighbours=(xs[near], ys[near]),
                 fwhm_pix=fwhm_pix)
    _mark(ax, labels=True, **marks)
    if near.size:
        ax.plot([], [], "o", mfc="none", color="deepskyblue", label=f"catalogue neighbours in reach ({near.size})")
    zoom = r_out + 2 * fwhm_pix
    if half > 3 * zoom:
        # fine pixel scales: the aperture is small on an arcminute; a close-up in the upper left
        inset = ax.inset_axes([0.02, 0.60, 0.36, 0.36])
        inset.imshow(img, origin="lower", cmap="gray_r", vmin=lo, vmax=hi, interpolation="nearest", extent=extent)
        _mark(inset, labels=False, **marks)
        inset.set_xlim(sx - zoom, sx + zoom)
        inset.set_ylim(sy - zoom, sy + zoom)
        inset.set_xticks([])
        inset.set_yticks([])
        for spine in inset.spines.values():
            spine.set_color("limegreen")

    # north and east arrows in the lower left, a scale bar in the lower right
    north, east = _sky_directions(wcs, sx, sy)
    length = 0.15 * (x1 - x0)
    # in the lower left, far enough in that both arrows and their letters stay on the chart
    reach = 1.35 * length
    base = np.array([x0 + 0.04 * (x1 - x0) + reach * max(0.0, -north[0], -east[0]),
                     y0 + 0.04 * (y1 - y0) + reach * max(0.0, -north[1], -east[1])])
    for vec, label in ((north, "N"), (east, "E")):
        tip = base + vec * length
        ax.annotate("", xy=tip, xytext=base, arrowprops=dict(arrowstyle="->", color="darkorange", lw=1.8))
        ax.text(*(base + vec * length * 1.25), label, color="darkorange", ha="center", va="center",
                fontsize=11, fontweight="bold")
    bar = _scale_bar_arcsec((x1 - x0) * scale_arcsec)
    bx1, by = x1 - 0.06 * (x1 - x0), y0 + 0.06 * (y1 - y0)
    ax.plot([bx1 - bar / scale_arcsec, bx1], [by, by], color="darkorange", lw=3)
    ax.text(bx1 - 0.5 * bar / scale_arcsec, by + 0.025 * (y1 - y0), f"{bar:g}\"", color="darkorange",
            ha="center", va="bottom", fontsize=10, fontweight="bold")

    ax.set_xlim(x0 - 0.5, x1 - 0.5)
    ax.set_ylim(y0 - 0.5, y1 - 0.5)
    ax.set_xlabel("reference x [pix]")
    ax.set_ylabel("reference y [pix]")
    ident = ("detected star" if fact.get("TGTDET") else "not detected: placed at its coordinates")
    lines = [title,
             f"target: {ident}, {float(fact.get('TGTSEP', np.nan)):.2f}\" from the coordinates "
             f"(match radius {float(fact.get('TGTRAD', np.nan)):.2f}\")", _astrometry_line(fact)]
    if fact.get("TGTAMBIG"):
        lines.append("AMBIGUOUS: another star nearly as close (the log names both; the brightest was taken)")
    ax.set_title("\n".join(lines), fontsize=9)
    ax.legend(loc="upper right", fontsize=8, framealpha=0.8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def _mark(ax, plt, target, radii, given, neighbours, fwhm_pix, labels: bool) -> None:
    """Aperture and annulus on the adopted star, the given coordinates, the neighbours."""
    sx, sy = target
    r_ap, r_in, r_out = radii
    ax.add_patch(plt.Circle((sx, sy), r_ap, fill=False, color="limegreen", lw=1.6,
                            label="target aperture" if labels else None))
    for r in (r_in, r_out):
        ax.add_patch(plt.Circle((sx, sy), r, fill=False, color="limegreen", lw=1.0, ls="--"))
    if labels:
        ax.plot([], [], ls="--", color="limegreen", label="sky annulus")
    ax.plot(*given, marker="+", ms=18, mew=1.8, color="red", ls="none", label="given coordinates" if labels else None)
    for x, y in zip(*neighbours):
        ax.add_patch(plt.Circle((x, y), max(0.8 * fwhm_pix, 1.5), fill=False, color="deepskyblue", lw=1.0))


def _astrometry_line(fact: dict) -> str:
    if fact.get("ASTREF"):
        return (f"WCS refined against {fact.get('ASTSRC')}: {fact.get('ASTNMAT')} stars, "
                f"rms {float(fact.get('ASTRMS', np.nan)):.3f}\"")
    return f"WCS: header as it is (error taken as {float(fact.get('ASTUNC', np.nan)):.2f}\", 1 sigma)"
