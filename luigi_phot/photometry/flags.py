"""Per-measurement quality flags: the one place that says what each bit means.

A flagged point stays in the light-curve files with its flag, so users choose
what to keep. ``SEVERE`` are the bits that exclude a point from calibration,
from the TOM upload (unless configured otherwise) and from precision figures;
the others inform (a bad pixel or cosmic-ray hit that was repaired from the
model, whose uncertainty is in the error bar, or a crowded star). Every bit is
below 2^15: flags are stored as 16-bit integers (measurement files, the all-stars
file, the light curve's stacked arrays).
"""

from __future__ import annotations

__all__ = ["FLAGS", "SATURATED", "BAD_PIXELS", "COSMIC_RAY", "NEAR_EDGE", "POOR_SKY",
           "FRAME_REJECTED", "OUTSIDE_FRAME", "CROWDED", "LARGE_REPAIR", "BLENDED_OR_ABSENT",
           "SEVERE", "describe"]

SATURATED = 1        # a saturated pixel in the aperture
BAD_PIXELS = 2       # a masked (bad or non-finite) pixel in the aperture, repaired from the model
COSMIC_RAY = 4       # a cosmic-ray hit in the aperture, repaired likewise
NEAR_EDGE = 8        # the aperture or sky annulus crosses the frame edge
POOR_SKY = 16        # too few sky pixels survived, or the sky is much noisier than the frame's
FRAME_REJECTED = 32  # the whole frame was rejected (reason in the rejected-frames list)
OUTSIDE_FRAME = 64   # the star's aperture is not on the frame
CROWDED = 128        # subtracted neighbour light exceeds the star's own flux in the aperture
LARGE_REPAIR = 256   # more than 40% of the star's light on repaired pixels (5% with plain apertures)
BLENDED_OR_ABSENT = 512  # no light of its own: neighbours within 1 FWHM outshine it, or it is not there

FLAGS = {
    SATURATED: ("saturated", "a saturated pixel in the aperture"),
    BAD_PIXELS: ("bad_pixels", "a masked (bad or non-finite) pixel in the aperture, replaced by the model's light "
                               "(by interpolation with plain apertures)"),
    COSMIC_RAY: ("cosmic_ray", "a cosmic-ray hit in the aperture, replaced likewise"),
    NEAR_EDGE: ("near_edge", "the aperture or its sky annulus crosses the frame edge"),
    POOR_SKY: ("poor_sky", "too few usable sky pixels, or a sky much noisier than the frame's"),
    FRAME_REJECTED: ("frame_rejected", "the frame was rejected (see the rejected-frames list)"),
    OUTSIDE_FRAME: ("outside_frame", "the star's aperture is not on the frame"),
    CROWDED: ("crowded", "subtracted neighbour light exceeds the star's own flux in the aperture"),
    LARGE_REPAIR: ("large_repair", "more than 40% of the star's light fell on repaired pixels, beyond which the "
                                   "model is not trusted (5% with plain apertures)"),
    BLENDED_OR_ABSENT: ("blended_or_absent", "neighbours within 1 FWHM put more light in the aperture than the "
                        "star's own flux, or neither the reference nor this frame shows the star significantly "
                        "(a misidentified target looks like this)"),
}

SEVERE = SATURATED | LARGE_REPAIR | NEAR_EDGE | POOR_SKY | FRAME_REJECTED | OUTSIDE_FRAME
SEVERE |= BLENDED_OR_ABSENT


def describe(value: int) -> str:
    """'saturated|cosmic_ray' for a flag value (empty string for 0)."""
    return "|".join(name for bit, (name, _) in FLAGS.items() if int(value) & bit)
