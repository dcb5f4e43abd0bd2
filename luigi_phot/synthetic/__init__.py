"""Realistic synthetic datasets of LCO/BANZAI-style reduced frames, with truth.

One call writes one dataset directory (``red_dir``) of one field in one filter:

- frames named like LCO's (``lsc1m005-fa15-20260712-0042-e91.fits`` or
  ``.fits.fz``): an empty primary HDU, then ``SCI`` (float32, electrons, the
  full header with a slightly wrong TAN WCS), ``BPM`` (uint8, BANZAI bits:
  1 bad pixel, 2 saturated, 8 cosmic ray) and ``ERR`` (float32, electrons);
- ``synthetic_truth.ecsv``: one row per frame (times, seeing, transmission,
  sky, pointing, true target position and flux);
- ``synthetic_stars.ecsv``: every star drawn (sky position, magnitude,
  flux, variability);
- ``reduction_config.yaml`` for the pipeline.

Nothing else is written into ``red_dir``.

The sky: stars with fixed RA/Dec drawn from a power-law luminosity function
(most below the detection limit, as in a bulge field), a few variable stars,
a few stars bright enough to saturate, and a target that is a blended
Paczynski microlensing event.  Each frame sees the sky through its own
pointing (jitter, rotation, scale), seeing, Moffat beta, ellipticity,
airmass, clouds and sky level; photon and read noise, cosmic rays, hot
pixels, a bad column, saturation with bleeding along columns.

Conventions:

- Pixel coordinates in tables and function arguments are 0-based numpy
  coordinates: the centre of ``data[iy, ix]`` is at ``(x, y) = (ix, iy)``
  (FITS/WCS 1-based = numpy + 1).
- Fluxes are electrons per second above the atmosphere unless a name says
  otherwise; ``mag = zero_point_mag - 2.5 log10(flux_e_per_s)``.
- Times are UTC MJD.

:func:`series_from_real_frame` builds a short time series from one real frame
(integer shifts, fresh noise, one injected star with a known light curve).

Nothing here imports Luigi.

The package, in the order a dataset is made: ``config`` (SyntheticConfig, sites,
names), ``sky`` (what the sky holds: fluxes, the event, airmass), ``psf`` (the
generator's own Moffat renderer, apart from the pipeline's PSF on purpose: the
truth must not share the code it checks), ``plan`` (every frame's time, pointing,
WCS and seeing, before any pixel), ``render`` (one frame's pixels),
``fits_writing`` (files and headers), ``generate`` (generate_dataset),
``real_series`` (series_from_real_frame) and ``cli`` (luigi-phot-synthetic).
"""

from __future__ import annotations

from .config import (
    BPM_BAD_PIXEL, BPM_COSMIC_RAY, BPM_LOW_FLAT, BPM_SATURATED, CONFIG_NAME, GeneratedDataset, LCO_SITES,
    LcoSite, STARS_NAME, SyntheticConfig, TRUTH_NAME
)
from .sky import airmass_at, paczynski_magnification, star_fluxes_e_per_s
from .psf import MoffatPSF, render_moffat_stars
from .plan import true_frame_wcs
from .generate import generate_dataset
from .real_series import series_from_real_frame
from .cli import main

__all__ = [
    "BPM_BAD_PIXEL",
    "BPM_SATURATED",
    "BPM_LOW_FLAT",
    "BPM_COSMIC_RAY",
    "LCO_SITES",
    "LcoSite",
    "SyntheticConfig",
    "GeneratedDataset",
    "MoffatPSF",
    "TRUTH_NAME",
    "STARS_NAME",
    "CONFIG_NAME",
    "generate_dataset",
    "true_frame_wcs",
    "series_from_real_frame",
    "render_moffat_stars",
    "paczynski_magnification",
    "star_fluxes_e_per_s",
    "airmass_at",
    "main",
]
