"""Which star on the reference frame is the target.

The target's coordinates land on the reference frame through its WCS. Two things put
that point off the star: the coordinates themselves (alert positions from OGLE, KMTNet,
MOA or Gaia differ from the star's centroid by up to 1-2") and the WCS (a solution good
to a few tenths of an arcsec once refined against a catalogue; a header WCS only as good
as the frames' headers agree with each other; a bare telescope pointing not at all).

The rule (:func:`identify_target`):

1. The match radius is ``max(3 sigma, 1.5 FWHM)``, with sigma the quadrature sum of the
   coordinates' uncertainty (:data:`COORDINATE_ERROR_ARCSEC`, 1 sigma) and the WCS's, in
   reference pixels, and FWHM the reference PSF's. ``target_snap_arcsec`` overrides it.
2. The nearest detected star inside the radius is the target,
3. unless other stars inside the radius are not much farther (within 1 sigma of the
   position or half a FWHM, whichever is larger): then the distances cannot tell them
   apart, and the brightest of these is the target - a faint detection beside the
   coordinates is more often a companion, a wing of a brighter star or a noise peak than
   the star being followed (a series built from a real frame and the 2"/px case showed
   both). The log names every such candidate with its offset and peak, the catalogue
   header (TGTAMBIG) and the finder chart say it was ambiguous.
4. When no star is inside the radius, the target is placed at its coordinates (a
   "phantom": a star too faint to detect on the reference, e.g. a microlensing source at
   baseline) - but never within 1.5 FWHM of a detected star: closer than that, its light
   and the star's are one blend, and that star is taken (with a warning).

Nothing here imports Luigi or reads configuration files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["COORDINATE_ERROR_ARCSEC", "HEADER_WCS_ERROR_ARCSEC", "CORE_FWHM", "TargetChoice", "identify_target"]

#: 1-sigma uncertainty of given target coordinates [arcsec]: alert positions differ from the
#: star's centroid by up to 1-2", i.e. about 3 sigma.
COORDINATE_ERROR_ARCSEC = 0.7
#: 1-sigma error assumed for an unrefined header WCS when the frames' headers cannot be
#: compared with each other (a single frame) [arcsec].
HEADER_WCS_ERROR_ARCSEC = 1.0
#: A phantom target is never placed within this many FWHM of a detected star.
CORE_FWHM = 1.5


@dataclass
class Candidate:
    row: int
    distance_pix: float
    flux: float


@dataclass
class TargetChoice:
    """The outcome: `row` of the detection adopted as the target, or None when the target
    is placed at its coordinates (`x`, `y`)."""

    row: int | None
    x: float
    y: float
    radius_pix: float
    sigma_pix: float
    candidates: list[Candidate] = field(default_factory=list)
    ambiguous: bool = False
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def identify_target(x: np.ndarray, y: np.ndarray, flux: np.ndarray, tx: float, ty: float, fwhm_pix: float,
                    scale_arcsec: float, wcs_error_arcsec: float,
                    override_radius_arcsec: float | None = None) -> TargetChoice:
    """Choose the target among detections (x, y, flux; reference pixels and electrons) for
    the predicted position (tx, ty). `wcs_error_arcsec` is the 1-sigma error of the WCS
    that made (tx, ty); the coordinates' own error is COORDINATE_ERROR_ARCSEC."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    sigma_arcsec = math.hypot(COORDINATE_ERROR_ARCSEC, wcs_error_arcsec)
    sigma = sigma_arcsec / scale_arcsec
    core = CORE_FWHM * fwhm_pix
    if override_radius_arcsec is not None:
        radius = override_radius_arcsec / scale_arcsec
        how = f"target_snap_arcsec {override_radius_arcsec:g}\""
    else:
        radius = max(3.0 * sigma, core)
        how = (f"3 x {sigma_arcsec:.2f}\" position uncertainty" if 3.0 * sigma >= core
               else f"{CORE_FWHM:g} x FWHM {fwhm_pix * scale_arcsec:.2f}\"")
    d = np.hypot(x - tx, y - ty)
    order = np.argsort(d)
    inside = order[d[order] <= radius]
    cands = [Candidate(int(r), float(d[r]), float(flux[r])) for r in inside[:5]]
    choice = TargetChoice(row=None, x=float(tx), y=float(ty), radius_pix=float(radius), sigma_pix=float(sigma),
                          candidates=cands)
    head = f"match radius {radius * scale_arcsec:.2f}\" ({how})"

    def describe(c: Candidate) -> str:
        return (f"star {c.row} at {c.distance_pix * scale_arcsec:.2f}\" ({c.distance_pix:.1f} px), "
                f"peak {c.flux:.4g} e- above the sky")

    if cands:
        comparable = [c for c in cands if c.distance_pix - cands[0].distance_pix <= max(sigma, 0.5 * fwhm_pix)]
        best = max(comparable, key=lambda c: c.flux)
        choice.row = best.row
        choice.x, choice.y = float(x[best.row]), float(y[best.row])
        if len(comparable) > 1:
            choice.ambiguous = True
            choice.warnings.append(
                f"target identification ambiguous within the {head}: " + "; ".join(describe(c) for c in comparable)
                + f". Rule: at comparable distances the brightest is the target ({describe(best)}); "
                  "check the finder chart")
        choice.notes.append(f"target is detected {describe(best)} from its coordinates; {head}")
        return choice
    nearest = order[0] if order.size else None
    if nearest is not None and d[nearest] <= core:
        # outside an override radius but inside the star's core: one blend, not two stars
        c = Candidate(int(nearest), float(d[nearest]), float(flux[nearest]))
        choice.row = c.row
        choice.x, choice.y = float(x[c.row]), float(y[c.row])
        choice.candidates = [c]
        choice.warnings.append(f"no star within the {head}, but {describe(c)} is within {CORE_FWHM:g} FWHM of the "
                               "coordinates: taken as the target rather than a phantom in its light")
        return choice
    near_txt = f"; nearest star {d[nearest] * scale_arcsec:.2f}\" away" if nearest is not None else ""
    choice.notes.append(f"target not detected on the reference within the {head}: placed at its coordinates"
                        f"{near_txt}")
    return choice
