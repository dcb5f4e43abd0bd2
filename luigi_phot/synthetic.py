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
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import math
import re
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import yaml
from astropy import units as u
from astropy.coordinates import Angle
from astropy.io import fits
from astropy.stats import sigma_clipped_stats
from astropy.table import Table
from astropy.wcs import WCS, FITSFixedWarning
from astropy.wcs.utils import proj_plane_pixel_scales
from scipy import ndimage, optimize

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

#: BANZAI bad-pixel-mask bits (see NOTES.md "LCO frames").
BPM_BAD_PIXEL = 1
BPM_SATURATED = 2
BPM_LOW_FLAT = 4  # never set here: the synthetic flat field is perfect
BPM_COSMIC_RAY = 8

TRUTH_NAME = "synthetic_truth.ecsv"
STARS_NAME = "synthetic_stars.ecsv"
CONFIG_NAME = "reduction_config.yaml"

_MJD_EPOCH = dt.datetime(1858, 11, 17)
_MS_PER_DAY = 86_400_000
# Sinistro readout plus slew/settle: the shortest gap between exposure starts is exptime + this.
_READOUT_S = 28.0


# --------------------------------------------------------------------------
# LCO sites
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class LcoSite:
    """An LCO site: geodetic position and the (illustrative) 1-m telescope and camera codes
    used in file names and headers."""

    code: str
    name: str
    latitude_deg: float
    longitude_deg: float  # east positive
    height_m: float
    telescope_code: str   # file-name prefix after the site, e.g. '1m005'
    telescope: str        # TELESCOP value, e.g. '1m0-05'
    instrument: str       # INSTRUME value, e.g. 'fa15'


LCO_SITES: dict[str, LcoSite] = {s.code: s for s in (
    LcoSite("lsc", "Cerro Tololo Inter-American Observatory", -30.1673, -70.8047, 2198.0, "1m005", "1m0-05", "fa15"),
    LcoSite("cpt", "South African Astronomical Observatory", -32.3806, 20.8099, 1807.0, "1m010", "1m0-10", "fa16"),
    LcoSite("coj", "Siding Spring Observatory", -31.2729, 149.0708, 1116.0, "1m003", "1m0-03", "fa19"),
    LcoSite("elp", "McDonald Observatory", 30.6801, -104.0153, 2027.0, "1m008", "1m0-08", "fa05"),
    LcoSite("ogg", "Haleakala Observatory", 20.7069, -156.2576, 3055.0, "1m001", "1m0-01", "fa22"),
    LcoSite("tfn", "Teide Observatory", 28.3003, -16.5117, 2390.0, "1m002", "1m0-02", "fa20"),
)}


# --------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticConfig:
    """Every knob of the generator. Ranges are (min, max) drawn uniformly per frame."""

    seed: int = 1
    n_frames: int = 20
    shape: tuple[int, int] = (1024, 1024)                  # (ny, nx)
    # --- the sky ---
    n_stars: int = 3000              # stars per nominal frame area, mag_bright..mag_faint
    mag_bright: float = 14.0
    mag_faint: float = 21.0
    luminosity_slope: float = 0.3    # dN/dm ∝ 10^(slope * m)
    zero_point_mag: float = 23.5     # magnitude of 1 e-/s above the atmosphere
    pixel_scale_arcsec: float = 0.389
    field_ra_deg: float = 268.5
    field_dec_deg: float = -29.5
    # --- observation ---
    target_name: str = "SYN-2026-BLG-0001"
    filter_name: str = "ip"
    exptime_s: float = 120.0
    site: str = "lsc"
    first_night: str = "2026-07-12"  # DAY-OBS of the first night (YYYY-MM-DD)
    n_nights: int = 8
    night_step_days: float = 1.0
    night_hours: float = 8.0         # window centred on local midnight
    airmass_max: float = 2.0
    # --- detector (data are written in electrons, as BANZAI does) ---
    gain_e_per_adu: float = 2.0      # written as GAIN only; the data are not in ADU
    read_noise_e: float = 7.0
    saturation_e: float = 120_000.0
    bad_column: int | None = 307     # x index of a hot column (None: no bad column)
    bad_column_value_e: float = 50_000.0
    n_hot_pixels: int = 25
    cosmic_rays_per_mpix_per_s: float = 0.1
    bpm_marks_cosmics: bool = False
    bleed_saturation: bool = True    # excess charge of saturated pixels runs along the column
    # a second bad column (BPM bit 1) that the target drifts across with the jitter: it passes
    # within target_column_reach_arcsec of the target's centre in about this fraction of frames
    target_column_fraction: float | None = None
    target_column_reach_arcsec: float = 2.0   # the generated configuration's aperture radius
    target_column_value_e: float = 0.0        # its pixel values: 0 is a dead column
    poisson_exact_below_e: float = 100.0  # above this expectation, photon noise is drawn as Gaussian
    # --- conditions ---
    sky_e_per_s_per_pix: tuple[float, float] = (2.0, 8.0)
    sky_gradient_frac: float = 0.02  # sky change from centre to edge, random direction
    seeing_arcsec: tuple[float, float] = (1.1, 3.2)
    moffat_beta: tuple[float, float] = (2.5, 4.5)
    psf_ellipticity_max: float = 0.1  # 1 - b/a, random position angle per frame
    psf_field_variation: float = 0.05  # FWHM up to this fraction larger in the corners
    extinction_mag_per_airmass: float = 0.06
    cloud_fraction: float = 0.25     # fraction of frames behind thin cloud
    cloud_depth_mag_max: float = 0.5
    # --- pointing and WCS ---
    jitter_pix: float = 12.0         # pointing offsets uniform in ±jitter_pix per axis
    rotation_deg: float = 0.3        # field rotation uniform in ±rotation_deg
    scale_change_frac: float = 2e-4  # plate scale change uniform in ±this
    wcs_error_arcsec: float = 0.5    # header WCS offset: 0.5-1 x this, random direction
    wcs_rotation_error_deg: float = 0.02
    #: when set, each frame's header WCS offset is drawn uniformly in this range [arcsec]
    #: (instead of 0.5-1 x wcs_error_arcsec), e.g. (0, 3) for QHY-like plate solutions
    wcs_error_range_arcsec: tuple[float, float] | None = None
    #: every header WCS further off by this [arcsec], in one random direction (a pointing)
    wcs_pointing_offset_arcsec: float = 0.0
    wcs_status: int = 0              # the WCSERR card: 0 solved; BANZAI writes 4 when its solve failed
    #: the configured target coordinates are this far off the star [arcsec], random direction
    target_coord_offset_arcsec: float = 0.0
    # --- variable stars and saturation ---
    n_variables: int = 5
    variable_amplitude_mag: tuple[float, float] = (0.05, 0.5)
    variable_mag_range: tuple[float, float] = (15.0, 18.5)
    n_saturated: int = 4             # stars bright enough to saturate in every frame
    # --- the target: a blended Paczynski event, F = Fs*A(u) + Fb ---
    target_mag_baseline: float = 17.0  # total (source + blend) at baseline
    event_blend_fraction: float = 0.3  # Fb / (Fs + Fb) at baseline
    event_t0_mjd: float | None = None  # None: half a day after the last exposure
    # t0 at this fraction of the observed span (0: first exposure, 1: last) when
    # event_t0_mjd is None: 0.5 shows the whole event (baseline, rise, peak, fall)
    event_t0_span_fraction: float | None = None
    event_tE_days: float = 15.0
    event_u0: float = 0.1
    target_isolation_arcsec: float | None = 3.0  # drop stars brighter than target+3 mag within this
    target_neighbour: tuple[float, float] | None = None  # (separation_arcsec, delta_mag)
    # --- rendering and files ---
    psf_stamp_floor_e: float = 0.2   # a star's stamp ends where its PSF falls below this [e-/pix]
    psf_stamp_max_radius_pix: int = 128
    compress: str = "none"           # none | all | mixed
    # --- frames as small cameras write them (QHY, ZWO): off by default ---
    plain_fits_adu: bool = False     # one primary HDU in ADU (data / gain); no BPM, ERR, SATURATE:
                                     # hot pixels, the bad column, cosmic rays and saturation unflagged
    no_wcs_fraction: float = 0.0     # this fraction of the frames (drawn at random) carry no WCS
    flip_every: int = 0              # every k-th frame (k-1, 2k-1, ...) turned by 180 degrees
                                     # (a German equatorial mount's meridian flip); 0: none

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> ValueError:
            return ValueError(f"SyntheticConfig.{name}={getattr(self, name)!r}: expected {expected}")

        object.__setattr__(self, "shape", tuple(int(v) for v in self.shape))
        for name in ("sky_e_per_s_per_pix", "seeing_arcsec", "moffat_beta",
                     "variable_amplitude_mag", "variable_mag_range"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 2 or value[0] > value[1]:
                raise bad(name, "a (min, max) pair with min <= max")
            object.__setattr__(self, name, value)
        if self.wcs_error_range_arcsec is not None:
            rng = tuple(float(v) for v in self.wcs_error_range_arcsec)
            if len(rng) != 2 or not 0 <= rng[0] <= rng[1]:
                raise bad("wcs_error_range_arcsec", "None or (min, max) with 0 <= min <= max")
            object.__setattr__(self, "wcs_error_range_arcsec", rng)
        if self.wcs_pointing_offset_arcsec < 0 or self.target_coord_offset_arcsec < 0:
            raise ValueError("SyntheticConfig: wcs_pointing_offset_arcsec and target_coord_offset_arcsec must be >= 0")
        if self.target_neighbour is not None:
            object.__setattr__(self, "target_neighbour", tuple(float(v) for v in self.target_neighbour))
            if len(self.target_neighbour) != 2 or self.target_neighbour[0] <= 0:
                raise bad("target_neighbour", "None or (separation_arcsec > 0, delta_mag)")
        if len(self.shape) != 2 or min(self.shape) < 64:
            raise bad("shape", "(ny, nx) with both >= 64")
        if self.n_frames < 1:
            raise bad("n_frames", ">= 1")
        if self.n_nights < 1:
            raise bad("n_nights", ">= 1")
        if self.n_stars < 0 or self.n_variables < 0 or self.n_saturated < 0 or self.n_hot_pixels < 0:
            raise ValueError("SyntheticConfig: n_stars, n_variables, n_saturated and n_hot_pixels must be >= 0")
        if not self.mag_bright < self.mag_faint:
            raise bad("mag_bright", f"< mag_faint ({self.mag_faint})")
        if self.site not in LCO_SITES:
            raise bad("site", f"one of {', '.join(LCO_SITES)}")
        if self.compress not in ("none", "all", "mixed"):
            raise bad("compress", "'none', 'all' or 'mixed'")
        if self.bad_column is not None and not 0 <= self.bad_column < self.shape[1]:
            raise bad("bad_column", f"None or an x index in [0, {self.shape[1]}) (the frame width)")
        if self.target_column_fraction is not None and not 0 < self.target_column_fraction <= 1:
            raise bad("target_column_fraction", "None or a fraction of frames in (0, 1]")
        if self.target_column_reach_arcsec <= 0:
            raise bad("target_column_reach_arcsec", "> 0")
        if self.seeing_arcsec[0] <= 0 or self.moffat_beta[0] <= 1.0:
            raise ValueError("SyntheticConfig: seeing_arcsec must be > 0 and moffat_beta > 1")
        if not 0 <= self.psf_ellipticity_max < 0.9:
            raise bad("psf_ellipticity_max", "in [0, 0.9)")
        if not 0 <= self.event_blend_fraction < 1:
            raise bad("event_blend_fraction", "in [0, 1)")
        if self.event_tE_days <= 0 or self.event_u0 <= 0:
            raise ValueError("SyntheticConfig: event_tE_days and event_u0 must be > 0")
        if self.exptime_s <= 0 or self.pixel_scale_arcsec <= 0 or self.saturation_e <= 0:
            raise ValueError("SyntheticConfig: exptime_s, pixel_scale_arcsec and saturation_e must be > 0")
        if not 0 <= self.cloud_fraction <= 1:
            raise bad("cloud_fraction", "in [0, 1]")
        if not 0 <= self.no_wcs_fraction <= 1:
            raise bad("no_wcs_fraction", "in [0, 1]")
        if self.flip_every < 0:
            raise bad("flip_every", "0 (no flips) or k >= 1")
        try:
            dt.date.fromisoformat(self.first_night)
        except (TypeError, ValueError):
            raise bad("first_night", "a date YYYY-MM-DD") from None
        if not re.fullmatch(r"[A-Za-z0-9_.+\-]+", self.target_name):
            raise bad("target_name", "letters, digits and _ . + - only")

    def to_meta(self) -> dict:
        """Plain-Python dict of every parameter (tuples as lists), for table metadata."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out


@dataclass
class GeneratedDataset:
    """What :func:`generate_dataset` or :func:`series_from_real_frame` wrote."""

    red_dir: Path
    frame_paths: list[Path]
    truth_path: Path
    stars_path: Path | None
    config_path: Path
    truth: Table
    stars: Table | None
    elapsed_s: float
    render_s: float = 0.0  # of elapsed_s, time spent making pixels (not writing files)


# --------------------------------------------------------------------------
# Physics helpers
# --------------------------------------------------------------------------


def paczynski_magnification(t_mjd, t0_mjd: float, tE_days: float, u0: float) -> np.ndarray:
    """Point-source point-lens magnification A(u) = (u^2 + 2) / (u sqrt(u^2 + 4)),
    u(t) = sqrt(u0^2 + ((t - t0) / tE)^2)."""
    tau = (np.asarray(t_mjd, dtype=float) - t0_mjd) / tE_days
    uu = np.sqrt(u0 * u0 + tau * tau)
    return (uu * uu + 2.0) / (uu * np.sqrt(uu * uu + 4.0))


def _mag_to_flux(mag, zero_point_mag: float):
    return 10.0 ** (-0.4 * (np.asarray(mag, dtype=float) - zero_point_mag))


def _flux_to_mag(flux, zero_point_mag: float):
    return zero_point_mag - 2.5 * np.log10(np.asarray(flux, dtype=float))


def star_fluxes_e_per_s(stars: Table, t_mjd: float) -> np.ndarray:
    """Flux of every star of a ``synthetic_stars.ecsv`` table at time ``t_mjd``
    [e-/s above the atmosphere]: constant stars, variables and the microlensed target."""
    flux = np.array(stars["flux_e_per_s"], dtype=float)
    var = np.asarray(stars["is_variable"], dtype=bool)
    if var.any():
        kind = np.asarray(stars["var_type"])[var]
        period = np.asarray(stars["var_period_days"], dtype=float)[var]
        amp = np.asarray(stars["var_amplitude_mag"], dtype=float)[var]
        epoch = np.asarray(stars["var_epoch_mjd"], dtype=float)[var]
        phase = ((t_mjd - epoch) / period) % 1.0
        dmag = np.where(kind == "sinusoid",
                        -0.5 * amp * np.sin(2 * np.pi * phase),
                        # eclipse: a Gaussian dip of width 4% of the period, at phase 0
                        amp * np.exp(-0.5 * (np.minimum(phase, 1 - phase) / 0.04) ** 2))
        flux[var] *= 10.0 ** (-0.4 * dmag)
    tgt = np.asarray(stars["is_target"], dtype=bool)
    if tgt.any():
        m = stars.meta["event"]
        amp = paczynski_magnification(t_mjd, m["t0_mjd"], m["tE_days"], m["u0"])
        flux[tgt] = m["source_flux_e_per_s"] * amp + m["blend_flux_e_per_s"]
    return flux


def _gmst_deg(mjd):
    d = np.asarray(mjd, dtype=float) - 51544.5
    t = d / 36525.0
    return (280.46061837 + 360.98564736629 * d + 0.000387933 * t * t - t ** 3 / 38710000.0) % 360.0


def airmass_at(mjd, ra_deg: float, dec_deg: float, site: LcoSite | str) -> np.ndarray:
    """Airmass (Hardie 1962 polynomial in sec z) of (ra, dec) seen from an LCO site at UTC MJD.
    Returns inf below the horizon. UT1 = UTC and no refraction: good to ~0.01 above airmass 3."""
    site = LCO_SITES[site] if isinstance(site, str) else site
    lat = math.radians(site.latitude_deg)
    dec = math.radians(dec_deg)
    ha = np.radians(_gmst_deg(mjd) + site.longitude_deg - ra_deg)
    sin_alt = math.sin(lat) * math.sin(dec) + math.cos(lat) * math.cos(dec) * np.cos(ha)
    with np.errstate(divide="ignore", invalid="ignore"):
        sec = 1.0 / sin_alt
        s1 = sec - 1.0
        x = sec - 0.0018167 * s1 - 0.002875 * s1 ** 2 - 0.0008083 * s1 ** 3
    return np.where(sin_alt > 0.05, x, np.inf)


# --------------------------------------------------------------------------
# PSF and rendering
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class MoffatPSF:
    """Elliptical Moffat profile, normalised to unit integral over the plane.

    ``fwhm_pix`` is the geometric mean of the major and minor FWHM;
    ``ellipticity`` = 1 - b/a; ``angle_deg`` is the major axis measured from +x
    towards +y.
    """

    fwhm_pix: float
    beta: float
    ellipticity: float = 0.0
    angle_deg: float = 0.0

    @property
    def alpha_pix(self) -> float:
        return self.fwhm_pix / (2.0 * math.sqrt(2.0 ** (1.0 / self.beta) - 1.0))

    @property
    def axes_pix(self) -> tuple[float, float]:
        q = math.sqrt(1.0 - self.ellipticity)
        return self.alpha_pix / q, self.alpha_pix * q

    @property
    def peak_density(self) -> float:
        a, b = self.axes_pix
        return (self.beta - 1.0) / (math.pi * a * b)

    def evaluate(self, dx, dy) -> np.ndarray:
        """Surface density [fraction of the flux per pixel^2] at offsets (dx, dy) from the centre."""
        a, b = self.axes_pix
        c, s = math.cos(math.radians(self.angle_deg)), math.sin(math.radians(self.angle_deg))
        xr = (dx * c + dy * s) / a
        yr = (-dx * s + dy * c) / b
        return self.peak_density * (1.0 + xr * xr + yr * yr) ** (-self.beta)

    def enclosed_fraction(self, radius_pix) -> np.ndarray:
        """Fraction of the flux within a circle of this radius (exact when round;
        for ellipticity <= 0.1 the error is below 0.3%)."""
        r = np.asarray(radius_pix, dtype=float)
        return 1.0 - (1.0 + (r / self.alpha_pix) ** 2) ** (1.0 - self.beta)

    def radius_for_floor(self, flux, floor) -> np.ndarray:
        """Radius along the major axis beyond which flux * density < floor."""
        a, _ = self.axes_pix
        ratio = np.asarray(flux, dtype=float) * self.peak_density / floor
        with np.errstate(invalid="ignore", divide="ignore"):
            r = a * np.sqrt(np.maximum(ratio, 1.0) ** (1.0 / self.beta) - 1.0)
        return r

    def scaled(self, factor: float) -> "MoffatPSF":
        return dataclasses.replace(self, fwhm_pix=self.fwhm_pix * factor)


# Stamp radii are rounded up to this ladder so that stars share stamp shapes.
_RADIUS_LADDER = np.array([4, 6, 8, 11, 15, 20, 24, 32, 48, 64, 96, 128, 192, 256])
# Inside this radius stamps come from the pixel-integrated library; beyond it the
# Moffat is smooth on the pixel scale and is sampled at pixel centres.
_CORE_RADIUS = 24
# The library samples sub-pixel phase every 1/_OVERSAMPLE pixel and integrates each
# pixel with _OVERSAMPLE^2 sub-samples; phases in between are interpolated bilinearly,
# which keeps flux and centroid exact.
_OVERSAMPLE = 5


def _phase_library(psf: MoffatPSF, core: int) -> np.ndarray:
    """Pixel-integrated PSF stamps (2*core+1)^2 for every sub-pixel phase on the
    1/K grid: array [K+2, K+2, 2*core+1, 2*core+1] indexed by (qy - qmin, qx - qmin)."""
    k = _OVERSAMPLE
    m = (core + 1) * k
    n = m + k // 2
    fine = np.arange(-n, n + 1) / k
    dens = psf.evaluate(fine[None, :], fine[:, None])
    c = np.zeros((dens.shape[0] + 1, dens.shape[1] + 1))
    c[1:, 1:] = dens.cumsum(0).cumsum(1)
    integ = (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) / (k * k)  # index i <-> offset (i-m)/k
    qs = np.arange(-(k + 1) // 2, (k + 1) // 2 + 1)
    j = np.arange(-core, core + 1)
    idx = m + j[None, :] * k - qs[:, None]            # [nq, 2core+1]
    return integ[idx[:, None, :, None], idx[None, :, None, :]]


def render_moffat_stars(image: np.ndarray, x_pix, y_pix, flux, psf: MoffatPSF, *,
                        floor_e: float = 0.2, min_radius_pix: float = 0.0,
                        max_radius_pix: int = 128, radius_pix=None) -> np.ndarray:
    """Add Moffat stars to ``image`` (float64, modified in place and returned).

    ``x_pix, y_pix``: 0-based numpy centres; ``flux``: total flux of each star in
    the units of ``image`` (the integral over the infinite plane).  Each pixel
    value is the PSF integrated over the pixel (25 sub-samples per pixel,
    sub-pixel phase interpolated from a 1/5-pixel grid).  A star's stamp is a
    square of radius r around its nearest pixel, r the smallest of a fixed ladder
    where flux * PSF density falls below ``floor_e`` (at least ``min_radius_pix``,
    at most ``max_radius_pix``, or ``radius_pix`` when given); light beyond the
    stamp is dropped, not redistributed: ``flux * (1 - enclosed_fraction(r))``.
    """
    x = np.atleast_1d(np.asarray(x_pix, dtype=float))
    y = np.atleast_1d(np.asarray(y_pix, dtype=float))
    f = np.atleast_1d(np.asarray(flux, dtype=float))
    if x.size == 0:
        return image
    ladder = _RADIUS_LADDER[_RADIUS_LADDER <= max(max_radius_pix, _RADIUS_LADDER[0])]
    if radius_pix is None:
        need = np.maximum(psf.radius_for_floor(f, floor_e), min_radius_pix)
    else:
        need = np.broadcast_to(np.asarray(radius_pix, dtype=float), x.shape)
    r = ladder[np.minimum(np.searchsorted(ladder, need), ladder.size - 1)]
    ny, nx = image.shape
    ix = np.floor(x + 0.5).astype(np.int64)
    iy = np.floor(y + 0.5).astype(np.int64)
    keep = (ix + r >= 0) & (ix - r < nx) & (iy + r >= 0) & (iy - r < ny) & (f > 0)
    if not keep.any():
        return image
    x, y, f, r, ix, iy = x[keep], y[keep], f[keep], r[keep], ix[keep], iy[keep]
    k = _OVERSAMPLE
    qmin = -(k + 1) // 2
    gx, gy = (x - ix) * k, (y - iy) * k
    qx, qy = np.floor(gx).astype(np.int64), np.floor(gy).astype(np.int64)
    wx, wy = gx - qx, gy - qy
    core = int(min(_CORE_RADIUS, r.max()))
    lib = _phase_library(psf, core)

    order = np.lexsort((qx, qy, r))
    key = np.stack([r[order], qy[order], qx[order]], axis=1)
    starts = np.flatnonzero(np.r_[True, np.any(key[1:] != key[:-1], axis=1)])
    ends = np.r_[starts[1:], order.size]
    for s, e in zip(starts, ends):
        sel = order[s:e]
        rr, qyy, qxx = int(r[sel[0]]), int(qy[sel[0]]), int(qx[sel[0]])
        rc = min(rr, core)
        basis = lib[qyy - qmin:qyy - qmin + 2, qxx - qmin:qxx - qmin + 2,
                    core - rc:core + rc + 1, core - rc:core + rc + 1].reshape(4, -1)
        wxs, wys, fs = wx[sel], wy[sel], f[sel]
        weights = np.stack([(1 - wys) * (1 - wxs), (1 - wys) * wxs, wys * (1 - wxs), wys * wxs], axis=1)
        stamps = ((weights * fs[:, None]) @ basis).reshape(sel.size, 2 * rc + 1, 2 * rc + 1)
        if rr > core:
            j = np.arange(-rr, rr + 1, dtype=float)
            dx = j[None, None, :] - (x[sel] - ix[sel])[:, None, None]
            dy = j[None, :, None] - (y[sel] - iy[sel])[:, None, None]
            full = psf.evaluate(dx, dy) * fs[:, None, None]
            full[:, rr - core:rr + core + 1, rr - core:rr + core + 1] = stamps
            stamps = full
        _add_stamps(image, ix[sel], iy[sel], stamps, rr)
    return image


def _add_stamps(image: np.ndarray, ix, iy, stamps: np.ndarray, r: int) -> None:
    # A loop of slice additions is ~8x faster here than one np.bincount over all
    # stamp pixels (measured: 12.5M stamp pixels on a 4096^2 frame, 0.1 s vs 0.85 s),
    # because each stamp is a contiguous block and no index arrays are built.
    ny, nx = image.shape
    size = 2 * r + 1
    x0, y0 = ix - r, iy - r
    xa, ya = np.maximum(x0, 0), np.maximum(y0, 0)
    xb, yb = np.minimum(x0 + size, nx), np.minimum(y0 + size, ny)
    inside = ((xa == x0) & (ya == y0) & (xb == x0 + size) & (yb == y0 + size)).tolist()
    for k, (a, b, whole) in enumerate(zip(y0.tolist(), x0.tolist(), inside)):
        if whole:
            image[a:a + size, b:b + size] += stamps[k]
        else:
            p, q, s, t = int(ya[k]), int(yb[k]), int(xa[k]), int(xb[k])
            if p < q and s < t:
                image[p:q, s:t] += stamps[k, p - a:q - a, s - b:t - b]


# --------------------------------------------------------------------------
# Planning: the sky, the nights, the frames
# --------------------------------------------------------------------------


def _format_ra(ra_deg: float, precision: int = 3) -> str:
    return str(Angle(ra_deg, u.deg).to_string(unit=u.hourangle, sep=":", precision=precision, pad=True))


def _format_dec(dec_deg: float, precision: int = 2) -> str:
    return str(Angle(dec_deg, u.deg).to_string(unit=u.deg, sep=":", precision=precision,
                                                pad=True, alwayssign=True))


def _nominal_wcs(cfg: SyntheticConfig) -> WCS:
    ny, nx = cfg.shape
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [cfg.field_ra_deg, cfg.field_dec_deg]
    w.wcs.crpix = [(nx + 1) / 2.0, (ny + 1) / 2.0]
    p = cfg.pixel_scale_arcsec / 3600.0
    w.wcs.cd = [[-p, 0.0], [0.0, p]]
    return w


def _rotation(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s], [s, c]])


def _frame_wcs(cfg: SyntheticConfig, offset_xy, rotation_deg: float, scale: float,
               crval=None, extra_rotation_deg: float = 0.0) -> WCS:
    """TAN WCS of one pointing: the field centre lands on the detector centre + offset."""
    ny, nx = cfg.shape
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = list(crval) if crval is not None else [cfg.field_ra_deg, cfg.field_dec_deg]
    w.wcs.crpix = [(nx + 1) / 2.0 + offset_xy[0], (ny + 1) / 2.0 + offset_xy[1]]
    p = cfg.pixel_scale_arcsec / 3600.0 * scale
    cd = np.array([[-p, 0.0], [0.0, p]]) @ _rotation(rotation_deg) @ _rotation(extra_rotation_deg)
    w.wcs.cd = cd
    return w


def true_frame_wcs(truth: Table, image: str) -> WCS:
    """The true WCS of frame `image` of a generated dataset, from its truth table
    (``synthetic_truth.ecsv``: the generator's parameters and the frame's pointing)."""
    cfg = SyntheticConfig(**truth.meta["generator_parameters"])
    row = truth[list(map(str, truth["image"])).index(str(image))]
    return _frame_wcs(cfg, (float(row["offset_x_pix"]), float(row["offset_y_pix"])),
                      float(row["rotation_deg"]), float(row["scale_factor"]))


def _draw_luminosity_function(rng, n: int, cfg: SyntheticConfig) -> np.ndarray:
    s = cfg.luminosity_slope
    lo, hi = 10.0 ** (s * cfg.mag_bright), 10.0 ** (s * cfg.mag_faint)
    return np.log10(lo + rng.random(n) * (hi - lo)) / s


@dataclass
class _Frame:
    """Everything drawn for one exposure before its pixels are made."""

    index: int
    name: str
    compressed: bool
    start_ms: int            # exposure start, ms since MJD 0
    day_obs: str
    frame_number: int
    seeing_arcsec: float
    beta: float
    ellipticity: float
    psf_angle_deg: float
    airmass: float
    cloud_mag: float
    transmission: float
    sky_e_per_pix: float
    sky_gradient_xy: tuple[float, float]  # e-/pix per pix
    offset_xy: tuple[float, float]
    rotation_deg: float
    scale: float
    wcs_true: WCS
    wcs_header: WCS
    l1fwhm_arcsec: float
    has_wcs: bool = True     # the header carries the WCS
    flipped: bool = False    # turned by 180 degrees (rotation_deg includes it)

    @property
    def mjd_start(self) -> float:
        return self.start_ms / _MS_PER_DAY


def _iso_from_ms(ms: int) -> str:
    return (_MJD_EPOCH + dt.timedelta(milliseconds=ms)).isoformat(timespec="milliseconds")


def _mjd_of_date(date: dt.date) -> int:
    return (dt.datetime(date.year, date.month, date.day) - _MJD_EPOCH).days


def _plan_times(cfg: SyntheticConfig, rng, target_ra: float, target_dec: float):
    """Exposure starts [ms since MJD 0] and DAY-OBS of every frame, sorted in time."""
    site = LCO_SITES[cfg.site]
    first = dt.date.fromisoformat(cfg.first_night)
    per_night = np.full(cfg.n_nights, cfg.n_frames // cfg.n_nights)
    per_night[rng.choice(cfg.n_nights, cfg.n_frames % cfg.n_nights, replace=False)] += 1
    min_gap_s = cfg.exptime_s + _READOUT_S
    starts, days = [], []
    for night, n in enumerate(per_night):
        if n == 0:
            continue
        day = first + dt.timedelta(days=math.floor(night * cfg.night_step_days))
        # local mean midnight after the evening of the first DAY-OBS, one step per night
        midnight = _mjd_of_date(first) + 1.0 - site.longitude_deg / 360.0 + night * cfg.night_step_days
        grid = midnight + np.linspace(-cfg.night_hours / 48.0, cfg.night_hours / 48.0, 193)
        am = airmass_at(grid, target_ra, target_dec, site)
        ok = am <= max(cfg.airmass_max, np.min(am) + 0.2)
        allowed = grid[ok]
        step = grid[1] - grid[0]
        t = np.sort(rng.choice(allowed, n) + rng.uniform(0, step, n))
        t_s = t * 86400.0
        for i in range(1, n):
            t_s[i] = max(t_s[i], t_s[i - 1] + min_gap_s + rng.uniform(0, 30))
        starts.extend(int(round(v * 1000.0)) for v in t_s)
        days.extend([day.strftime("%Y%m%d")] * n)
    order = np.argsort(starts, kind="stable")
    return [starts[i] for i in order], [days[i] for i in order]


@dataclass
class _Plan:
    stars: Table
    frames: list[_Frame]
    event: dict
    target_ra: float
    target_dec: float
    hot_pixels: tuple[np.ndarray, np.ndarray, np.ndarray]  # y, x, e-/s
    given_ra: float = 0.0     # the configured target coordinates (target_coord_offset_arcsec off)
    given_dec: float = 0.0
    target_column: int | None = None  # x index of the bad column the target drifts across


def _make_plan(cfg: SyntheticConfig) -> _Plan:
    seeds = np.random.SeedSequence(cfg.seed).spawn(4)
    rng_sky, rng_frames, rng_det, rng_var = (np.random.default_rng(s) for s in seeds)
    ny, nx = cfg.shape
    site = LCO_SITES[cfg.site]
    nominal = _nominal_wcs(cfg)

    # --- stars: uniform on the tangent plane over the frame plus a margin, so
    # that jitter and rotation bring new stars in at the edges
    # (any rotation stays within the frame's circumscribed circle: the second term's cap)
    margin = cfg.jitter_pix + min(math.radians(cfg.rotation_deg) * max(nx, ny) / 2, 0.21 * max(nx, ny)) + 40.0
    area_ratio = (nx + 2 * margin) * (ny + 2 * margin) / (nx * ny)
    n_drawn = int(rng_sky.poisson(cfg.n_stars * area_ratio)) if cfg.n_stars else 0
    px = rng_sky.uniform(-margin, nx - 1 + margin, n_drawn)
    py = rng_sky.uniform(-margin, ny - 1 + margin, n_drawn)
    mag = _draw_luminosity_function(rng_sky, n_drawn, cfg)
    kind = np.full(n_drawn, "field", dtype="<U10")

    # --- the target near the centre (within 5% of the frame size)
    tx = (nx - 1) / 2 + rng_sky.uniform(-0.05, 0.05) * nx
    ty = (ny - 1) / 2 + rng_sky.uniform(-0.05, 0.05) * ny
    if cfg.target_isolation_arcsec is not None:
        d_arcsec = np.hypot(px - tx, py - ty) * cfg.pixel_scale_arcsec
        drop = (d_arcsec < cfg.target_isolation_arcsec) & (mag < cfg.target_mag_baseline + 3.0)
        px, py, mag, kind = px[~drop], py[~drop], mag[~drop], kind[~drop]
    px = np.r_[px, tx]
    py = np.r_[py, ty]
    mag = np.r_[mag, cfg.target_mag_baseline]
    kind = np.append(kind, "target")
    if cfg.target_neighbour is not None:
        sep_pix = cfg.target_neighbour[0] / cfg.pixel_scale_arcsec
        pa = rng_sky.uniform(0, 2 * np.pi)
        px = np.r_[px, tx + sep_pix * math.cos(pa)]
        py = np.r_[py, ty + sep_pix * math.sin(pa)]
        mag = np.r_[mag, cfg.target_mag_baseline + cfg.target_neighbour[1]]
        kind = np.append(kind, "neighbour")

    # --- frame conditions
    times, days = _plan_times(cfg, rng_frames, *nominal.wcs_pix2world([[tx, ty]], 0)[0])
    n = cfg.n_frames
    seeing = rng_frames.uniform(*cfg.seeing_arcsec, n)
    beta = rng_frames.uniform(*cfg.moffat_beta, n)
    ellip = rng_frames.uniform(0, cfg.psf_ellipticity_max, n)
    pa_psf = rng_frames.uniform(0, 180, n)
    cloudy = rng_frames.random(n) < cfg.cloud_fraction
    cloud = np.where(cloudy, rng_frames.uniform(0, cfg.cloud_depth_mag_max, n), 0.0)
    sky_rate = rng_frames.uniform(*cfg.sky_e_per_s_per_pix, n)
    grad_dir = rng_frames.uniform(0, 2 * np.pi, n)
    offsets = rng_frames.uniform(-cfg.jitter_pix, cfg.jitter_pix, (n, 2))
    rot = rng_frames.uniform(-cfg.rotation_deg, cfg.rotation_deg, n)
    scale = 1.0 + rng_frames.uniform(-cfg.scale_change_frac, cfg.scale_change_frac, n)
    err_draw = rng_frames.uniform(0.5, 1.0, n)
    err_mag = cfg.wcs_error_arcsec * err_draw
    if cfg.wcs_error_range_arcsec is not None:   # the same draws, mapped onto the range
        lo, hi = cfg.wcs_error_range_arcsec
        err_mag = lo + (hi - lo) * (err_draw - 0.5) / 0.5
    err_dir = rng_frames.uniform(0, 2 * np.pi, n)
    err_rot = rng_frames.normal(0, cfg.wcs_rotation_error_deg, n) if cfg.wcs_rotation_error_deg > 0 else np.zeros(n)
    l1fwhm = seeing * (1 + rng_frames.normal(0, 0.05, n))
    if cfg.compress == "all":
        compressed = np.ones(n, bool)
    elif cfg.compress == "mixed":
        compressed = rng_frames.permutation(np.arange(n) % 2 == 0)
    else:
        compressed = np.zeros(n, bool)
    tgt_ra, tgt_dec = (float(v) for v in nominal.wcs_pix2world([[tx, ty]], 0)[0])
    # options beyond the defaults draw from their own stream: the defaults' datasets stay as they were
    rng_extra = np.random.default_rng(np.random.SeedSequence([cfg.seed, 13]))
    pointing_dir, coord_dir = rng_extra.uniform(0, 2 * np.pi, 2)
    pointing = (cfg.wcs_pointing_offset_arcsec * math.cos(pointing_dir),
                cfg.wcs_pointing_offset_arcsec * math.sin(pointing_dir))
    coord_offset = (cfg.target_coord_offset_arcsec * math.cos(coord_dir),
                    cfg.target_coord_offset_arcsec * math.sin(coord_dir))
    flipped = (np.arange(n) % cfg.flip_every == cfg.flip_every - 1) if cfg.flip_every else np.zeros(n, bool)
    no_wcs = np.zeros(n, bool)
    if cfg.no_wcs_fraction > 0:
        no_wcs[rng_extra.permutation(n)[: int(round(cfg.no_wcs_fraction * n))]] = True
    rot = rot + np.where(flipped, 180.0, 0.0)
    frames: list[_Frame] = []
    frame_numbers: dict[str, int] = {}
    for i in range(n):
        mjd_mid = times[i] / _MS_PER_DAY + cfg.exptime_s / 2 / 86400.0
        am = float(airmass_at(mjd_mid, tgt_ra, tgt_dec, site))
        transmission = 10.0 ** (-0.4 * (cfg.extinction_mag_per_airmass * am + cloud[i]))
        fnum = frame_numbers.get(days[i], int(rng_frames.integers(8, 80)))
        fnum += int(rng_frames.geometric(0.5))  # other programmes' frames interleave
        frame_numbers[days[i]] = fnum
        ext = ".fits.fz" if compressed[i] else ".fits"
        name = f"{cfg.site}{site.telescope_code}-{site.instrument}-{days[i]}-{fnum:04d}-e91{ext}"
        true = _frame_wcs(cfg, offsets[i], rot[i], scale[i])
        # Header WCS: the same pointing, with CRVAL off by err_mag and a small rotation error
        dxi, deta = err_mag[i] * math.cos(err_dir[i]), err_mag[i] * math.sin(err_dir[i])
        dxi, deta = dxi + pointing[0], deta + pointing[1]
        crval = [cfg.field_ra_deg + dxi / 3600.0 / math.cos(math.radians(cfg.field_dec_deg)),
                 cfg.field_dec_deg + deta / 3600.0]
        header_wcs = _frame_wcs(cfg, offsets[i], rot[i], scale[i], crval=crval, extra_rotation_deg=err_rot[i])
        sky_e = sky_rate[i] * cfg.exptime_s
        g = cfg.sky_gradient_frac * sky_e / (max(nx, ny) / 2.0)
        frames.append(_Frame(
            index=i, name=name, compressed=bool(compressed[i]), start_ms=times[i], day_obs=days[i],
            frame_number=fnum, seeing_arcsec=float(seeing[i]), beta=float(beta[i]),
            ellipticity=float(ellip[i]), psf_angle_deg=float(pa_psf[i]), airmass=am,
            cloud_mag=float(cloud[i]), transmission=float(transmission), sky_e_per_pix=float(sky_e),
            sky_gradient_xy=(g * math.cos(grad_dir[i]), g * math.sin(grad_dir[i])),
            offset_xy=(float(offsets[i, 0]), float(offsets[i, 1])), rotation_deg=float(rot[i]),
            scale=float(scale[i]), wcs_true=true, wcs_header=header_wcs, l1fwhm_arcsec=float(l1fwhm[i]),
            has_wcs=not bool(no_wcs[i]), flipped=bool(flipped[i])))

    # --- stars that saturate in every frame: brighter than the faintest
    # magnitude that saturates the worst frame (broadest PSF, least light), by 0.5-2 mag
    if cfg.n_saturated:
        worst = min(MoffatPSF(f.seeing_arcsec / cfg.pixel_scale_arcsec * (1 + cfg.psf_field_variation),
                              f.beta, f.ellipticity).peak_density * f.transmission for f in frames)
        need_e_per_s = cfg.saturation_e / (worst * cfg.exptime_s)
        m_sat = cfg.zero_point_mag - 2.5 * math.log10(need_e_per_s)
        sx = rng_sky.uniform(0, nx - 1, cfg.n_saturated * 20)
        sy = rng_sky.uniform(0, ny - 1, cfg.n_saturated * 20)
        # away from the target, and off its columns: bleed trails run along columns
        far = (np.hypot(sx - tx, sy - ty) * cfg.pixel_scale_arcsec > 40.0) & (np.abs(sx - tx) > 40)
        if cfg.bad_column is not None:
            far &= np.abs(sx - cfg.bad_column) > 10
        sx, sy = sx[far][:cfg.n_saturated], sy[far][:cfg.n_saturated]
        px, py = np.r_[px, sx], np.r_[py, sy]
        mag = np.r_[mag, rng_sky.uniform(m_sat - 2.0, m_sat - 0.5, sx.size)]
        kind = np.concatenate([kind, np.full(sx.size, "saturating")])

    # --- variable stars among field stars of measurable brightness, away from the target
    n_all = px.size
    is_var = np.zeros(n_all, bool)
    var_type = np.full(n_all, "", dtype="<U8")
    var_period = np.zeros(n_all)
    var_amp = np.zeros(n_all)
    var_epoch = np.zeros(n_all)
    if cfg.n_variables:
        dist = np.hypot(px - tx, py - ty) * cfg.pixel_scale_arcsec
        inside = (px > 20) & (px < nx - 21) & (py > 20) & (py < ny - 21)
        cand = np.flatnonzero((kind == "field") & inside & (dist > 10.0)
                              & (mag >= cfg.variable_mag_range[0]) & (mag <= cfg.variable_mag_range[1]))
        chosen = rng_var.choice(cand, min(cfg.n_variables, cand.size), replace=False)
        extra = cfg.n_variables - chosen.size
        if extra > 0:  # too few candidates (sparse field): add new stars for the rest
            ex = rng_var.uniform(20, nx - 21, extra)
            ey = rng_var.uniform(20, ny - 21, extra)
            px, py = np.r_[px, ex], np.r_[py, ey]
            mag = np.r_[mag, rng_var.uniform(*cfg.variable_mag_range, extra)]
            kind = np.concatenate([kind, np.full(extra, "field")])
            chosen = np.r_[chosen, np.arange(n_all, n_all + extra)]
            pad = np.zeros(extra)
            is_var, var_period, var_amp, var_epoch = (np.r_[a, pad.astype(a.dtype)]
                                                      for a in (is_var, var_period, var_amp, var_epoch))
            var_type = np.concatenate([var_type, np.full(extra, "", dtype="<U8")])
        is_var[chosen] = True
        sinus = rng_var.random(chosen.size) < 0.6
        var_type[chosen] = np.where(sinus, "sinusoid", "eclipse")
        var_period[chosen] = np.where(sinus, 10 ** rng_var.uniform(np.log10(0.2), 1.0, chosen.size),
                                      10 ** rng_var.uniform(np.log10(0.5), np.log10(5.0), chosen.size))
        var_amp[chosen] = rng_var.uniform(*cfg.variable_amplitude_mag, chosen.size)
        var_epoch[chosen] = times[0] / _MS_PER_DAY + rng_var.uniform(0, 1, chosen.size) * var_period[chosen]

    ra, dec = nominal.wcs_pix2world(px, py, 0)
    flux = _mag_to_flux(mag, cfg.zero_point_mag)

    # --- the event
    mid_last = times[-1] / _MS_PER_DAY + cfg.exptime_s / 2 / 86400.0
    t0 = cfg.event_t0_mjd if cfg.event_t0_mjd is not None else mid_last + 0.5
    if cfg.event_t0_mjd is None and cfg.event_t0_span_fraction is not None:
        mid_first = times[0] / _MS_PER_DAY + cfg.exptime_s / 2 / 86400.0
        t0 = mid_first + cfg.event_t0_span_fraction * (mid_last - mid_first)
    f_base = float(_mag_to_flux(cfg.target_mag_baseline, cfg.zero_point_mag))
    f_blend = cfg.event_blend_fraction * f_base
    f_source = f_base - f_blend
    event = {
        "model": "blended point-source point-lens: F = Fs * A(u) + Fb",
        "t0_mjd": float(t0), "tE_days": cfg.event_tE_days, "u0": cfg.event_u0,
        "source_mag": float(_flux_to_mag(f_source, cfg.zero_point_mag)),
        "source_flux_e_per_s": f_source,
        "blend_mag": float(_flux_to_mag(f_blend, cfg.zero_point_mag)) if f_blend > 0 else None,
        "blend_flux_e_per_s": f_blend,
        "blend_fraction": cfg.event_blend_fraction,
        "baseline_mag": cfg.target_mag_baseline,
    }
    stars = Table()
    stars["id"] = np.arange(1, px.size + 1)
    stars["ra_deg"] = ra * u.deg
    stars["dec_deg"] = dec * u.deg
    stars["mag"] = mag
    stars["flux_e_per_s"] = flux * u.electron / u.s
    stars["is_target"] = kind == "target"
    stars["is_neighbour"] = kind == "neighbour"
    stars["is_saturating"] = kind == "saturating"
    stars["is_variable"] = is_var
    stars["var_type"] = var_type
    stars["var_period_days"] = var_period * u.day
    stars["var_amplitude_mag"] = var_amp
    stars["var_epoch_mjd"] = var_epoch
    stars.meta.update({
        "description": "Every star drawn for the synthetic field (including those off the frame edges "
                       "and far below the detection limit). mag/flux_e_per_s: baseline (target: source + "
                       "blend) or mean (sinusoid) or out-of-eclipse (eclipse) values, above the atmosphere.",
        "zero_point_mag": cfg.zero_point_mag,
        "mag_definition": "mag = zero_point_mag - 2.5 log10(flux_e_per_s)",
        "variability": "sinusoid: mag + 0.5*amp*sin(2 pi phase); eclipse: mag + amp*exp(-0.5*(dphase/0.04)^2), "
                       "phase = (t - var_epoch_mjd)/var_period_days mod 1",
        "event": event,
        "seed": cfg.seed,
    })

    n_hot = cfg.n_hot_pixels
    hot = (rng_det.integers(0, ny, n_hot), rng_det.integers(0, nx, n_hot),
           10 ** rng_det.uniform(np.log10(5.0), np.log10(300.0), n_hot))
    given = (tgt_ra + coord_offset[0] / 3600.0 / math.cos(math.radians(tgt_dec)), tgt_dec + coord_offset[1] / 3600.0)
    return _Plan(stars=stars, frames=frames, event=event, target_ra=tgt_ra, target_dec=tgt_dec,
                 hot_pixels=hot, given_ra=given[0], given_dec=given[1],
                 target_column=_target_column(cfg, frames, tgt_ra, tgt_dec))


def _target_column(cfg: SyntheticConfig, frames: list[_Frame], ra_deg: float, dec_deg: float) -> int | None:
    """The x index of a column that passes within target_column_reach_arcsec of the target's
    centre in the fraction of frames closest to target_column_fraction (of equally good
    columns, the one nearest the target's median position). Draws no random numbers, so
    the rest of the dataset is the same with or without it."""
    if cfg.target_column_fraction is None:
        return None
    tx = np.array([float(f.wcs_true.wcs_world2pix([[ra_deg, dec_deg]], 0)[0][0]) for f in frames])
    reach = cfg.target_column_reach_arcsec / cfg.pixel_scale_arcsec
    cols = np.arange(math.floor(tx.min() - reach), math.ceil(tx.max() + reach) + 1)
    cols = cols[(cols >= 0) & (cols < cfg.shape[1])]
    if cols.size == 0:
        return None
    fraction = (np.abs(tx[None, :] - cols[:, None]) <= reach).mean(axis=1)
    order = np.lexsort((np.abs(cols - np.median(tx)), np.abs(fraction - cfg.target_column_fraction)))
    return int(cols[order[0]])


# --------------------------------------------------------------------------
# Making the pixels
# --------------------------------------------------------------------------


_N_PSF_ZONES = 21  # 0.25% FWHM steps at the default 5% variation: smooth to the photometry


def _render_frame(cfg: SyntheticConfig, plan: _Plan, frame: _Frame, rng) -> dict:
    ny, nx = cfg.shape
    stars = plan.stars
    mjd_mid = frame.mjd_start + cfg.exptime_s / 2 / 86400.0
    x, y = frame.wcs_true.wcs_world2pix(np.asarray(stars["ra_deg"]), np.asarray(stars["dec_deg"]), 0)
    flux_e = star_fluxes_e_per_s(stars, mjd_mid) * frame.transmission * cfg.exptime_s
    is_target = np.asarray(stars["is_target"])

    # PSF: FWHM grows as (distance from the detector centre)^2, by psf_field_variation in
    # the corners; the field is cut into zones of equal FWHM step, each rendered with its own PSF.
    base = MoffatPSF(frame.seeing_arcsec / cfg.pixel_scale_arcsec, frame.beta,
                     frame.ellipticity, frame.psf_angle_deg)
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    rho2 = np.minimum(((x - cx) ** 2 + (y - cy) ** 2) / (cx * cx + cy * cy), 1.0)
    zone = np.rint(rho2 * (_N_PSF_ZONES - 1)).astype(int)
    image = np.zeros((ny, nx), np.float32)
    min_r = np.where(is_target, 64.0, 1.5 * base.fwhm_pix)
    for z in range(_N_PSF_ZONES):
        sel = zone == z
        if not sel.any():
            continue
        psf = base.scaled(1.0 + cfg.psf_field_variation * z / (_N_PSF_ZONES - 1))
        render_moffat_stars(image, x[sel], y[sel], flux_e[sel], psf, floor_e=cfg.psf_stamp_floor_e,
                            min_radius_pix=min_r[sel], max_radius_pix=cfg.psf_stamp_max_radius_pix)

    # sky with a slight linear gradient (added row and column parts in place: no full-frame temporaries)
    gx, gy = frame.sky_gradient_xy
    image += (frame.sky_e_per_pix + gx * (np.arange(nx) - cx)).astype(np.float32)[None, :]
    image += (gy * (np.arange(ny) - cy)).astype(np.float32)[:, None]
    hy, hx, hot_rate = plan.hot_pixels
    np.add.at(image, (hy, hx), (hot_rate * cfg.exptime_s).astype(np.float32))
    # photon noise (Gaussian with variance = expectation where that is >= poisson_exact_below_e,
    # exact Poisson below) and read noise, in one draw where Gaussian
    rn = np.float32(cfg.read_noise_e)
    data = rng.standard_normal((ny, nx), dtype=np.float32)
    sigma = np.maximum(image, 0)
    sigma += rn * rn
    np.sqrt(sigma, out=sigma)
    data *= sigma
    del sigma
    data += image
    low = image < cfg.poisson_exact_below_e
    if low.any():
        lam = np.maximum(image[low], 0)
        data[low] = rng.poisson(lam) + rn * rng.standard_normal(lam.size, dtype=np.float32)
    del image, low

    # cosmic rays: straight tracks 1-10 px long, sharp (not seen through the atmosphere)
    bpm = np.zeros((ny, nx), np.uint8)
    n_cr = int(rng.poisson(cfg.cosmic_rays_per_mpix_per_s * nx * ny / 1e6 * cfg.exptime_s))
    if n_cr:
        x0 = rng.uniform(-0.5, nx - 0.5, n_cr)
        y0 = rng.uniform(-0.5, ny - 0.5, n_cr)
        length = rng.uniform(0, 9, n_cr)
        ang = rng.uniform(0, np.pi, n_cr)
        level = 10 ** rng.uniform(np.log10(300), np.log10(5000), n_cr)
        t = np.arange(0, 9.01, 0.3)
        along = np.minimum(t[None, :], length[:, None])
        cxs = np.rint(x0[:, None] + along * np.cos(ang)[:, None]).astype(np.int64)
        cys = np.rint(y0[:, None] + along * np.sin(ang)[:, None]).astype(np.int64)
        ok = (cxs >= 0) & (cxs < nx) & (cys >= 0) & (cys < ny)
        ids = np.broadcast_to(np.arange(n_cr)[:, None], cxs.shape)
        key = np.unique(ids[ok] * (nx * ny) + cys[ok] * nx + cxs[ok])
        cr_id, pix = key // (nx * ny), key % (nx * ny)
        deposit = level[cr_id] * rng.uniform(0.5, 1.5, pix.size)
        np.add.at(data.reshape(-1), pix, deposit.astype(np.float32))
        if cfg.bpm_marks_cosmics:
            bpm.reshape(-1)[pix] |= BPM_COSMIC_RAY
    bpm[hy, hx] |= BPM_BAD_PIXEL

    sat_mask = _saturate(data, cfg.saturation_e, cfg.bleed_saturation)
    bpm[sat_mask] |= BPM_SATURATED
    if cfg.bad_column is not None:
        v = cfg.bad_column_value_e
        data[:, cfg.bad_column] = v + math.sqrt(v) * rng.standard_normal(ny, dtype=np.float32)
        bpm[:, cfg.bad_column] |= BPM_BAD_PIXEL
    if plan.target_column is not None:
        v = cfg.target_column_value_e
        data[:, plan.target_column] = v + math.sqrt(max(v, 0.0)) * rng.standard_normal(ny, dtype=np.float32)
        bpm[:, plan.target_column] |= BPM_BAD_PIXEL
    err = np.maximum(data, 0)
    err += rn * rn
    np.sqrt(err, out=err)

    t_idx = np.flatnonzero(is_target)[0]
    return {"sci": data, "bpm": bpm, "err": err, "n_cosmic_rays": n_cr,
            "n_saturated_pix": int(sat_mask.sum()),
            "target_x": float(x[t_idx]), "target_y": float(y[t_idx]),
            "target_flux_e_per_s": float(flux_e[t_idx] / (frame.transmission * cfg.exptime_s))}


def _saturate(data: np.ndarray, saturation: float, bleed: bool) -> np.ndarray:
    """Clip at the full well, moving the excess charge up and down the column when
    ``bleed``; returns the mask of pixels left at the saturation level."""
    sat = np.float32(saturation)
    over = data > sat
    mask = over.copy()
    if not over.any():
        return mask
    ny = data.shape[0]
    for c in np.flatnonzero(over.any(axis=0)):
        col = data[:, c]
        rows = np.flatnonzero(col > sat)
        runs = np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1)
        for run in runs:
            if run.size == 0:
                continue
            excess = float((col[run] - sat).sum())
            col[run] = sat
            mask[run, c] = True
            if not bleed:
                continue
            for step, start in ((1, run[-1] + 1), (-1, run[0] - 1)):
                left = excess / 2.0
                p = start
                while left > 0 and 0 <= p < ny:
                    room = float(sat - col[p])
                    if room <= 0:  # another saturated pixel: its excess joins the trail
                        left += -room
                        col[p] = sat
                        mask[p, c] = True
                    elif left >= room:
                        left -= room
                        col[p] = sat
                        mask[p, c] = True
                    else:
                        col[p] += np.float32(left)
                        left = 0.0
                    p += step
    return mask


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------


def _sci_header(cfg: SyntheticConfig, plan: _Plan, frame: _Frame) -> fits.Header:
    site = LCO_SITES[cfg.site]
    ny, nx = cfg.shape
    h = fits.Header()
    date_obs = _iso_from_ms(frame.start_ms)
    centre = frame.wcs_true.wcs_pix2world([[(nx - 1) / 2.0, (ny - 1) / 2.0]], 0)[0]
    cards = [
        ("ORIGIN", "LCOGT", "Synthetic frame (luigi_phot.synthetic)"),
        ("SITEID", cfg.site, "ID code of the Observatory site"),
        ("SITE", site.name, "Site name"),
        ("TELESCOP", site.telescope, "Telescope used to acquire this image"),
        ("INSTRUME", site.instrument, "Instrument used"),
        ("LATITUDE", site.latitude_deg, "[deg North] Telescope Latitude"),
        ("LONGITUD", site.longitude_deg, "[deg East] Telescope Longitude"),
        ("HEIGHT", site.height_m, "[m] Altitude of Telescope above sea level"),
        ("OBSTYPE", "EXPOSE", "Observation type"),
        ("OBJECT", cfg.target_name, "Object name"),
        ("DATE-OBS", date_obs, "[UTC] Start of the exposure"),
        ("DAY-OBS", frame.day_obs, "[UTC] Date at start of local observing night"),
        ("UTSTART", date_obs[11:], "[UTC] The start time of the observation"),
        ("MJD-OBS", frame.mjd_start, "[UTC days] Start of the exposure (MJD)"),
        ("EXPTIME", cfg.exptime_s, "[s] Exposure length"),
        ("FILTER", cfg.filter_name, "Filter used"),
        ("AIRMASS", round(frame.airmass, 4), "Effective mean airmass (mid-exposure)"),
        ("RA", _format_ra(float(centre[0])), "[HH:MM:SS.sss] Telescope pointing RA"),
        ("DEC", _format_dec(float(centre[1])), "[sDD:MM:SS.ss] Telescope pointing Dec"),
        ("CAT-RA", _format_ra(plan.target_ra), "[HH:MM:SS.sss] Catalog RA of the object"),
        ("CAT-DEC", _format_dec(plan.target_dec), "[sDD:MM:SS.ss] Catalog Dec of the object"),
        ("FRAMENUM", frame.frame_number, "Running frame number"),
        ("ORIGNAME", frame.name.split(".")[0].replace("-e91", "-e00"), "Fname written by ICS"),
        ("GAIN", cfg.gain_e_per_adu, "[e-/count] detector gain; data are in e-"),
        ("RDNOISE", cfg.read_noise_e, "[electrons/pixel] Read noise"),
        ("SATURATE", cfg.saturation_e, "[e-] saturation level, in data units (e-)"),
        ("PIXSCALE", cfg.pixel_scale_arcsec, "[arcsec/pixel] Nominal pixel scale on sky"),
        ("BUNIT", "electrons", "Units of the data"),
        ("RLEVEL", 91, "Reduction level"),
        ("L1FWHM", round(frame.l1fwhm_arcsec, 3), "[arcsec] Frame FWHM (pipeline estimate)"),
        ("WCSERR", cfg.wcs_status, "Error status of WCS fit. 0 for no error"),
        ("RADESYS", "ICRS", "Fundamental coordinate system"),
        ("EQUINOX", 2000.0, "[yr] Equinox of the coordinates"),
    ]
    for key, value, comment in cards:
        h[key] = (value, comment)
    if cfg.plain_fits_adu:
        # as a small camera's capture software writes it: ADU, no pipeline keywords
        for key in ("RLEVEL", "L1FWHM", "WCSERR", "SATURATE"):
            del h[key]
        h["BUNIT"] = ("ADU", "Units of the data")
        h["GAIN"] = (cfg.gain_e_per_adu, "[e-/ADU] detector gain")
    if not frame.has_wcs:
        return h
    w = frame.wcs_header.wcs
    for key, value, comment in [
        ("CTYPE1", "RA---TAN", "Type of WCS Projection"),
        ("CTYPE2", "DEC--TAN", "Type of WCS Projection"),
        ("CRPIX1", float(w.crpix[0]), "[pixel] Coordinate of reference point (axis 1)"),
        ("CRPIX2", float(w.crpix[1]), "[pixel] Coordinate of reference point (axis 2)"),
        ("CRVAL1", float(w.crval[0]), "[deg] RA at the reference pixel"),
        ("CRVAL2", float(w.crval[1]), "[deg] Dec at the reference pixel"),
        ("CUNIT1", "deg", "Units of RA"),
        ("CUNIT2", "deg", "Units of Dec"),
        ("CD1_1", float(w.cd[0, 0]), "Coordinate transformation matrix element"),
        ("CD1_2", float(w.cd[0, 1]), "Coordinate transformation matrix element"),
        ("CD2_1", float(w.cd[1, 0]), "Coordinate transformation matrix element"),
        ("CD2_2", float(w.cd[1, 1]), "Coordinate transformation matrix element"),
    ]:
        h[key] = (value, comment)
    return h


def _write_frame(path: Path, header: fits.Header, sci, bpm, err, compressed: bool, dither_seed: int) -> None:
    primary = fits.PrimaryHDU()
    if compressed:
        nx = sci.shape[1]
        tiles = (min(32, sci.shape[0]), nx)
        hdus = [primary,
                fits.CompImageHDU(sci, header=header, name="SCI", dither_seed=dither_seed, tile_shape=tiles),
                fits.CompImageHDU(bpm, name="BPM", tile_shape=tiles),
                fits.CompImageHDU(err, name="ERR", dither_seed=dither_seed + 1, tile_shape=tiles)]
    else:
        hdus = [primary, fits.ImageHDU(sci, header=header, name="SCI"),
                fits.ImageHDU(bpm, name="BPM"), fits.ImageHDU(err, name="ERR")]
    hdus[3].header["BUNIT"] = ("electrons", "Units of the data")
    fits.HDUList(hdus).writeto(path)


def _write_plain_frame(path: Path, header: fits.Header, sci_e: np.ndarray, gain_e_per_adu: float) -> None:
    """One primary HDU in ADU, float32 (no mask, no error plane)."""
    adu = sci_e / np.float32(gain_e_per_adu)
    fits.PrimaryHDU(adu.astype(np.float32, copy=False), header=header).writeto(path)


def _write_reduction_config(path: Path, name: str, ra_deg: float, dec_deg: float,
                            aperture_arcsec: float, note: str) -> None:
    cfg = {
        "target": {"name": name, "RA": _format_ra(ra_deg, 4), "Dec": _format_dec(dec_deg, 3)},
        "photometry": {"aperture_arcsec": float(aperture_arcsec)},
        "tom": {"upload": False, "data_label": name},
    }
    text = f"# reduction_config.yaml written by luigi_phot.synthetic ({note})\n"
    text += yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False)
    path.write_text(text, encoding="utf-8")


def _prepare_red_dir(red_dir: Path, overwrite: bool) -> None:
    """red_dir must be empty or missing; with overwrite, a previous synthetic dataset's
    own files (listed in its truth table) are removed first, nothing else."""
    red_dir.mkdir(parents=True, exist_ok=True)
    existing = [p for p in red_dir.iterdir()]
    if not existing:
        return
    if not overwrite:
        raise FileExistsError(f"{red_dir}: not empty ({len(existing)} entries, e.g. {existing[0].name}); "
                              "the generator writes only into an empty directory (or pass overwrite=True)")
    truth = red_dir / TRUTH_NAME
    if truth.exists():
        for name in Table.read(truth, format="ascii.ecsv")["image"]:
            (red_dir / str(name)).unlink(missing_ok=True)
    for name in (TRUTH_NAME, STARS_NAME, CONFIG_NAME):
        (red_dir / name).unlink(missing_ok=True)
    leftover = [p.name for p in red_dir.iterdir() if p.name.lower().endswith((".fits", ".fz", ".fit", ".gz"))]
    if leftover:
        raise FileExistsError(f"{red_dir}: FITS files not written by a previous synthetic run remain "
                              f"({leftover[0]}); refusing to mix datasets")


# --------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------


def generate_dataset(red_dir, config: SyntheticConfig | None = None, *, overwrite: bool = False,
                     progress: Callable[[int, int, Path], None] | None = None) -> GeneratedDataset:
    """Write one synthetic dataset (frames, truth tables, reduction_config.yaml) into ``red_dir``.

    ``red_dir`` must be empty or missing (``overwrite=True`` first removes the
    files of a previous synthetic dataset there).  ``progress(i, n, path)`` is
    called after each frame is written.
    """
    cfg = config or SyntheticConfig()
    t_start = time.perf_counter()
    red_dir = Path(red_dir)
    _prepare_red_dir(red_dir, overwrite)
    plan = _make_plan(cfg)
    frame_seeds = np.random.SeedSequence([cfg.seed, 7]).spawn(cfg.n_frames)
    rows, paths = [], []
    render_s = 0.0
    for frame in plan.frames:
        t0 = time.perf_counter()
        out = _render_frame(cfg, plan, frame, np.random.default_rng(frame_seeds[frame.index]))
        render_s += time.perf_counter() - t0
        if cfg.plain_fits_adu:
            path = red_dir / frame.name.replace(".fits.fz", ".fits")
            _write_plain_frame(path, _sci_header(cfg, plan, frame), out["sci"], cfg.gain_e_per_adu)
        else:
            path = red_dir / frame.name
            dither = 1 + (cfg.seed * 7919 + 2 * frame.index) % 9999
            _write_frame(path, _sci_header(cfg, plan, frame), out["sci"], out["bpm"], out["err"],
                         frame.compressed, dither)
        paths.append(path)
        # header WCS error at the target, in arcsec (NaN: no WCS in the header)
        hx, hy = frame.wcs_header.wcs_world2pix([[plan.target_ra, plan.target_dec]], 0)[0]
        wcs_err = math.hypot(hx - out["target_x"], hy - out["target_y"]) * cfg.pixel_scale_arcsec
        if not frame.has_wcs:
            wcs_err = float("nan")
        mjd_mid = frame.mjd_start + cfg.exptime_s / 2 / 86400.0
        rows.append({
            "image": path.name, "mjd_start": frame.mjd_start, "mjd_mid": mjd_mid,
            "exptime_s": cfg.exptime_s, "seeing_arcsec": frame.seeing_arcsec,
            "fwhm_pix": frame.seeing_arcsec / cfg.pixel_scale_arcsec, "moffat_beta": frame.beta,
            "ellipticity": frame.ellipticity, "psf_angle_deg": frame.psf_angle_deg,
            "airmass": frame.airmass, "cloud_mag": frame.cloud_mag, "transmission": frame.transmission,
            "sky_e_per_pix": frame.sky_e_per_pix, "offset_x_pix": frame.offset_xy[0],
            "offset_y_pix": frame.offset_xy[1], "rotation_deg": frame.rotation_deg,
            "scale_factor": frame.scale, "target_x_pix": out["target_x"], "target_y_pix": out["target_y"],
            "target_flux_e_per_s": out["target_flux_e_per_s"],
            "target_magnification": float(paczynski_magnification(
                mjd_mid, plan.event["t0_mjd"], plan.event["tE_days"], plan.event["u0"])),
            "header_wcs_error_arcsec": wcs_err, "n_cosmic_rays": out["n_cosmic_rays"],
            "n_saturated_pix": out["n_saturated_pix"], "has_header_wcs": frame.has_wcs,
            "flipped": frame.flipped,
        })
        if plan.target_column is not None:
            rows[-1]["target_column_offset_pix"] = out["target_x"] - plan.target_column
        if progress is not None:
            progress(frame.index + 1, cfg.n_frames, path)
        del out
    truth = Table(rows=rows)
    units = {"mjd_start": u.day, "mjd_mid": u.day, "exptime_s": u.s, "seeing_arcsec": u.arcsec,
             "fwhm_pix": u.pix, "psf_angle_deg": u.deg, "cloud_mag": u.mag,
             "sky_e_per_pix": u.electron / u.pix, "offset_x_pix": u.pix, "offset_y_pix": u.pix,
             "rotation_deg": u.deg, "target_x_pix": u.pix, "target_y_pix": u.pix,
             "target_flux_e_per_s": u.electron / u.s, "header_wcs_error_arcsec": u.arcsec}
    if plan.target_column is not None:
        units["target_column_offset_pix"] = u.pix
    for name, unit in units.items():
        truth[name].unit = unit
    truth.meta.update({
        "description": "One row per frame of a luigi_phot synthetic dataset.",
        "pixel_convention": "0-based numpy: the centre of data[iy, ix] is (x, y) = (ix, iy); "
                            "FITS/WCS pixel = numpy + 1",
        "time_convention": "UTC MJD; mjd_mid = mjd_start + exptime_s/2/86400",
        "columns": {
            "seeing_arcsec": "PSF FWHM at the detector centre (geometric mean of major and minor axes)",
            "transmission": "10^(-0.4 (extinction*airmass + cloud_mag))",
            "sky_e_per_pix": "sky level at the detector centre in the exposure [e-]",
            "offset_x_pix": "pixel position of the field centre (tangent point) minus the detector centre",
            "rotation_deg": "rotation of the pixel grid: CD = CD_nominal @ R(rotation_deg)",
            "target_flux_e_per_s": "true total target flux above the atmosphere: Fs*A + Fb",
            "header_wcs_error_arcsec": "distance between the header-WCS and the true target position "
                                       "(NaN: the frame has no WCS)",
            "flipped": "turned by 180 degrees (meridian flip): rotation_deg includes the 180",
            **({"target_column_offset_pix": "target x minus the x of the bad column it drifts across "
                                            "(meta target_column_x)"} if plan.target_column is not None else {}),
        },
        "seed": cfg.seed,
        "generator_parameters": cfg.to_meta(),
        "event": plan.event,
        "zero_point_mag": cfg.zero_point_mag,
        **({"target_column_x": plan.target_column} if plan.target_column is not None else {}),
        "target_ra_deg": plan.target_ra,
        "target_dec_deg": plan.target_dec,
        "configured_ra_deg": plan.given_ra,
        "configured_dec_deg": plan.given_dec,
        "site": dataclasses.asdict(LCO_SITES[cfg.site]),
        "bpm_bits": {"1": "bad pixel (hot pixels, bad column)", "2": "saturated (incl. bleed trails)",
                     "8": "cosmic ray (only when bpm_marks_cosmics)"},
        "psf_rendering": "elliptical Moffat integrated over each pixel (5x5 sub-samples); a star's stamp "
                         "ends where flux x PSF density < psf_stamp_floor_e e-/pix (target: radius >= 64 px, "
                         "all: <= psf_stamp_max_radius_pix); light beyond a stamp is dropped, not "
                         "redistributed. FWHM grows by up to psf_field_variation towards the corners.",
        "noise": "photon noise: Poisson below poisson_exact_below_e e-, Gaussian with variance = "
                 "expectation above; Gaussian read noise; cosmic rays added after, not PSF-convolved",
        "header_notes": "SATURATE is in electrons like the data; GAIN is the detector's (do not apply "
                        "it again); L1FWHM = seeing x (1 + N(0, 0.05)), a pipeline-like estimate; "
                        "CAT-RA/CAT-DEC = true target position",
    })
    truth_path, stars_path = red_dir / TRUTH_NAME, red_dir / STARS_NAME
    truth.write(truth_path, format="ascii.ecsv")
    plan.stars.write(stars_path, format="ascii.ecsv")
    config_path = red_dir / CONFIG_NAME
    offset_note = ("the true position" if cfg.target_coord_offset_arcsec == 0 else
                   f"{cfg.target_coord_offset_arcsec:g}\" off the true position")
    _write_reduction_config(config_path, cfg.target_name, plan.given_ra, plan.given_dec, 2.0,
                            f"seed {cfg.seed}; target RA/Dec are {offset_note}")
    return GeneratedDataset(red_dir=red_dir, frame_paths=paths, truth_path=truth_path, stars_path=stars_path,
                            config_path=config_path, truth=truth, stars=plan.stars,
                            elapsed_s=time.perf_counter() - t_start, render_s=render_s)


# --------------------------------------------------------------------------
# A time series from one real frame
# --------------------------------------------------------------------------

_FITS_SUFFIXES = (".fits.fz", ".fits.gz", ".fit.gz", ".fts.gz", ".fits", ".fit", ".fts", ".fz")


def _split_suffix(name: str) -> tuple[str, str]:
    for suffix in _FITS_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)], name[-len(suffix):]
    return name, ".fits"


def _robust_sky(data: np.ndarray) -> tuple[float, float]:
    """Sigma-clipped median and standard deviation of the pixels."""
    _, median, std = sigma_clipped_stats(data, sigma=3.0, maxiters=10)
    std = float(std)
    return float(median), std if std > 0 else 1.0


def _estimate_fwhm_pix(data: np.ndarray, sky: float, sigma: float) -> float:
    """Median intrinsic FWHM [pix] of bright, unsaturated, isolated stars.

    Each star's pixel values are fitted with a circular Gaussian sampled at pixel
    centres; the box of one pixel (variance 1/12 per axis) is then removed in
    quadrature, since the injected star is integrated over its pixels.
    """
    img = np.nan_to_num(data.astype(float) - sky)
    smooth = ndimage.gaussian_filter(img, 1.0)
    peaks = (smooth == ndimage.maximum_filter(smooth, size=9)) & (smooth > 30 * sigma)
    top = np.nanmax(data)
    ys, xs = np.nonzero(peaks)
    ok = (data[ys, xs] < 0.8 * top) & (xs >= 7) & (ys >= 7) & (xs < img.shape[1] - 7) & (ys < img.shape[0] - 7)
    ys, xs = ys[ok], xs[ok]
    yy, xx = np.mgrid[-7:8, -7:8]
    fwhm = []
    for k in np.argsort(img[ys, xs])[::-1][:60]:
        box = img[ys[k] - 7:ys[k] + 8, xs[k] - 7:xs[k] + 8]

        def residual(p, box=box):
            amp, x0, y0, s, b = p
            return (amp * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * s * s)) + b - box).ravel()

        p, ier = optimize.leastsq(residual, [box[7, 7], 0.0, 0.0, 1.5, 0.0])
        if ier in (1, 2, 3, 4) and 0.2 < abs(p[3]) < 7 and abs(p[1]) < 2 and abs(p[2]) < 2:
            fwhm.append(2.3548 * abs(p[3]))
    if not fwhm:
        return 3.0
    observed = float(np.median(fwhm))
    return float(max(math.sqrt(max(observed ** 2 - 2.3548 ** 2 / 12.0, 0.0)), 0.5))


def _find_quiet_spot(data: np.ndarray, sky: float, sigma: float, fwhm: float, margin: int) -> tuple[float, float]:
    """The pixel nearest the centre whose surroundings (a box of about 16 FWHM, at least
    31 px: room for an aperture and its sky annulus) are flat: no star and no step
    brighter than ~4 sigma, once smoothed 3x3."""
    ny, nx = data.shape
    img = ndimage.uniform_filter(np.nan_to_num(data.astype(float) - sky), 3)
    size = max(31, int(2 * math.ceil(8 * fwhm) + 1))
    spread = ndimage.maximum_filter(img, size=size) - ndimage.minimum_filter(img, size=size)
    yy, xx = np.mgrid[0:ny, 0:nx]
    dist = np.hypot(xx - (nx - 1) / 2, yy - (ny - 1) / 2)
    inside = (xx >= margin) & (xx < nx - margin) & (yy >= margin) & (yy < ny - margin)
    quiet = inside & (spread < 4 * sigma)
    if quiet.any():
        k = np.argmin(np.where(quiet, dist, np.inf))
    else:
        k = np.argmin(np.where(inside, spread + dist * sigma / 10.0, np.inf))
    return float(k % nx), float(k // nx)


def _format_like(original: str, ms: int) -> str:
    """ISO time with as many decimals of seconds as the original DATE-OBS had."""
    m = re.search(r"T\d\d:\d\d:\d\d(?:\.(\d+))?", original or "")
    decimals = len(m.group(1)) if m and m.group(1) else 0
    t = _MJD_EPOCH + dt.timedelta(milliseconds=ms)
    if decimals == 0:
        return t.strftime("%Y-%m-%dT%H:%M:%S")
    frac = f"{t.microsecond / 1e6:.{decimals}f}"[2:]
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + frac


def series_from_real_frame(real_path, red_dir, n_frames: int = 8, seed: int = 1, *,
                           wcs_path=None, target_name: str | None = None,
                           star_xy_pix: tuple[float, float] | None = None,
                           fwhm_pix: float | None = None, moffat_beta: float = 3.0,
                           baseline_flux: float | None = None, baseline_snr: float = 50.0,
                           t0_mjd: float | None = None, tE_days: float | None = None, u0: float = 0.3,
                           cadence_days: float = 1.0, max_shift_pix: int = 5,
                           noise_sigma: float | None = None, star_gain_e_per_adu: float | None = None,
                           shift_wcs: bool = True, solved_wcs_in_header: bool = False,
                           overwrite: bool = False) -> GeneratedDataset:
    """A short time series from one real frame, with one injected star of known light curve.

    Each output frame is the input image shifted by whole pixels (uniform in
    ±``max_shift_pix``; the uncovered edge is filled with the median sky),
    plus fresh Gaussian noise of ``noise_sigma`` (default: half the frame's
    robust sky sigma), plus a Moffat star (FWHM ``fwhm_pix``, default measured
    on the frame's stars) at ``star_xy_pix`` (0-based position in the input
    frame; default: the quiet spot nearest the centre) whose flux is
    ``baseline_flux * A(t)`` with A the Paczynski magnification (t0 default: the
    middle of the series, tE default: half its span).  ``baseline_flux`` is in
    the data units of the frame (total counts in the exposure); by default it
    gives S/N ~ ``baseline_snr`` in an aperture of radius FWHM.  The star has
    Poisson noise only when ``star_gain_e_per_adu`` is given.

    The header is the input header with DATE-OBS, MJD-OBS (and JD-OBS when
    present) set to each frame's start (one frame per ``cadence_days`` after the
    input's start, ±10 min, at the input's DATE-OBS precision), and with
    CRPIX1/2 moved by the shift when ``shift_wcs`` (a stale WCS stays stale).
    Nothing else is added or removed: frames without GAIN/RDNOISE stay without
    them, and other time-like keywords (UTC, LST, HA, AIRMASS, ...) keep their
    input values.  Integer images stay integer (rounded and clipped to the
    type's range); the input's own noise is common to all frames.

    RA/Dec of the injected star come from the header WCS, or from ``wcs_path``
    (a header holding the correct WCS, e.g. eyuma_thumbnail_wcs.fit) when given.
    With ``solved_wcs_in_header`` the frames carry that correct WCS instead of the
    input's (as after plate-solving them). The input files are only read.
    """
    params = dict(locals())  # the arguments, passed on unchanged
    with warnings.catch_warnings():
        # the input's own non-standard cards and deprecated keywords are its quirks, not news
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        warnings.simplefilter("ignore", FITSFixedWarning)
        return _series_from_real_frame(**params)


def _series_from_real_frame(real_path, red_dir, n_frames, seed, wcs_path, target_name, star_xy_pix,
                            fwhm_pix, moffat_beta, baseline_flux, baseline_snr, t0_mjd, tE_days, u0,
                            cadence_days, max_shift_pix, noise_sigma, star_gain_e_per_adu, shift_wcs,
                            solved_wcs_in_header, overwrite) -> GeneratedDataset:
    real_path = Path(real_path)
    red_dir = Path(red_dir)
    raw = real_path.read_bytes()
    rng = np.random.default_rng(np.random.SeedSequence([seed, 11]))
    with fits.open(real_path) as hdul:
        hdul_copy = [h.copy() for h in hdul]
    sci_index = next((i for i, h in enumerate(hdul_copy)
                      if isinstance(h, (fits.PrimaryHDU, fits.ImageHDU)) and h.data is not None
                      and h.data.ndim == 2), None)
    if sci_index is None:
        raise ValueError(f"{real_path}: no 2-D image HDU found")
    orig = hdul_copy[sci_index]
    header0 = orig.header
    data0 = np.asarray(orig.data)
    ny, nx = data0.shape
    sky, sigma0 = _robust_sky(data0)
    fwhm = float(fwhm_pix) if fwhm_pix is not None else _estimate_fwhm_pix(data0, sky, sigma0)
    sigma_new = float(noise_sigma) if noise_sigma is not None else 0.5 * sigma0
    psf = MoffatPSF(fwhm, moffat_beta)
    margin = int(max_shift_pix + math.ceil(4 * fwhm) + 2)
    if star_xy_pix is None:
        star_xy_pix = _find_quiet_spot(data0, sky, sigma0, fwhm, margin)
    sx, sy = (float(v) for v in star_xy_pix)
    if baseline_flux is None:
        noise = math.sqrt(sigma0 ** 2 + sigma_new ** 2)
        baseline_flux = baseline_snr * noise * math.sqrt(math.pi) * fwhm / float(psf.enclosed_fraction(fwhm))

    # WCS for the star's sky position
    if wcs_path is not None:
        wcs_header = fits.getheader(wcs_path)
        wcs_source = str(wcs_path)
    else:
        wcs_header = header0
        wcs_source = f"{real_path.name} header"
    wcs = WCS(wcs_header, naxis=2)
    ra, dec = (float(v) for v in wcs.all_pix2world([[sx, sy]], 0)[0])
    if solved_wcs_in_header and wcs_path is not None:
        header0 = header0.copy()
        wcs_key = re.compile(r"^(CTYPE|CRPIX|CRVAL|CDELT|CUNIT|CROTA)\d$|^(CD|PC)\d_\d$|^(A|B|AP|BP)_(\d+_\d+|ORDER)$"
                             r"|^(LONPOLE|LATPOLE|RADESYS|EQUINOX|WCSAXES)$")
        for key in [k for k in header0.keys() if wcs_key.match(k)]:
            del header0[key]
        header0.update(wcs.to_header(relax=True))
    pixscale_arcsec = float(np.mean(proj_plane_pixel_scales(wcs.celestial)) * 3600.0)

    exptime = float(header0.get("EXPTIME", header0.get("EXPOSURE", 0.0)) or 0.0)
    mjd0 = header0.get("MJD-OBS")
    if mjd0 is None:
        from astropy.time import Time
        mjd0 = Time(header0["DATE-OBS"], scale="utc").mjd
    start_ms0 = int(round(float(mjd0) * _MS_PER_DAY))
    date_orig = str(header0.get("DATE-OBS", ""))
    m = re.search(r"T\d\d:\d\d:\d\d(?:\.(\d+))?", date_orig)
    decimals = min(len(m.group(1)), 3) if m and m.group(1) else 0
    quantum = 10 ** (3 - decimals)
    starts = []
    for i in range(n_frames):
        ms = start_ms0 + int(round(i * cadence_days * _MS_PER_DAY + rng.uniform(-600, 600) * 1000))
        starts.append(int(round(ms / quantum)) * quantum)
    mid = [s / _MS_PER_DAY + exptime / 2 / 86400.0 for s in starts]
    span = max(mid[-1] - mid[0], 1.0)
    t0 = t0_mjd if t0_mjd is not None else mid[0] + span / 2
    te = tE_days if tE_days is not None else span / 2
    amp = paczynski_magnification(mid, t0, te, u0)

    stem, suffix = _split_suffix(real_path.name)
    name = target_name or re.sub(r"[^A-Za-z0-9_.+\-]", "_", f"{stem}-INJ")
    _prepare_red_dir(red_dir, overwrite)
    is_int = np.issubdtype(data0.dtype, np.integer)
    info = np.iinfo(data0.dtype) if is_int else None
    rows, paths = [], []
    t_start = time.perf_counter()
    for i in range(n_frames):
        dx, dy = (int(v) for v in rng.integers(-max_shift_pix, max_shift_pix + 1, 2))
        shifted = np.full((ny, nx), sky, dtype=float)
        ys_dst = slice(max(dy, 0), ny + min(dy, 0))
        xs_dst = slice(max(dx, 0), nx + min(dx, 0))
        ys_src = slice(max(-dy, 0), ny + min(-dy, 0))
        xs_src = slice(max(-dx, 0), nx + min(-dx, 0))
        shifted[ys_dst, xs_dst] = data0[ys_src, xs_src]
        counts = float(baseline_flux * amp[i])
        star = render_moffat_stars(np.zeros((ny, nx)), sx + dx, sy + dy, counts, psf,
                                   floor_e=1e-3 * sigma_new if sigma_new > 0 else 1e-3, min_radius_pix=4 * fwhm)
        if star_gain_e_per_adu:
            star = rng.poisson(star * star_gain_e_per_adu) / star_gain_e_per_adu
        frame = shifted + star + sigma_new * rng.standard_normal((ny, nx))
        if is_int:
            frame = np.clip(np.rint(frame), info.min, info.max).astype(data0.dtype)
        else:
            frame = frame.astype(data0.dtype)
        header = header0.copy()
        header["DATE-OBS"] = _format_like(date_orig, starts[i])
        header["MJD-OBS"] = starts[i] / _MS_PER_DAY
        if "JD-OBS" in header:
            header["JD-OBS"] = starts[i] / _MS_PER_DAY + 2400000.5
        if shift_wcs:
            for key, d in (("CRPIX1", dx), ("CRPIX2", dy)):
                if key in header:
                    header[key] = float(header[key]) + d
        hdus = []
        for j, h in enumerate(hdul_copy):
            if j == sci_index:
                cls = fits.PrimaryHDU if j == 0 else fits.ImageHDU
                hdus.append(cls(frame, header))
            else:
                hdus.append(h.copy())
        out_path = red_dir / f"{stem}-{i:03d}{suffix}"
        fits.HDUList(hdus).writeto(out_path, output_verify="ignore")  # keep the original's quirks
        paths.append(out_path)
        rows.append({"image": out_path.name, "mjd_start": starts[i] / _MS_PER_DAY, "mjd_mid": mid[i],
                     "exptime_s": exptime, "shift_x_pix": dx, "shift_y_pix": dy,
                     "target_x_pix": sx + dx, "target_y_pix": sy + dy, "target_counts": counts,
                     "target_counts_per_s": counts / exptime if exptime > 0 else np.nan,
                     "target_magnification": float(amp[i]), "noise_sigma": sigma_new,
                     "fwhm_pix": fwhm, "moffat_beta": moffat_beta})
    truth = Table(rows=rows)
    for col, unit in (("mjd_start", u.day), ("mjd_mid", u.day), ("exptime_s", u.s), ("shift_x_pix", u.pix),
                      ("shift_y_pix", u.pix), ("target_x_pix", u.pix), ("target_y_pix", u.pix),
                      ("fwhm_pix", u.pix)):
        truth[col].unit = unit
    truth.meta.update({
        "description": f"Time series built from the real frame {real_path.name}: integer shifts, fresh "
                       "Gaussian noise, one injected Moffat star.",
        "source_file": str(real_path),
        "source_sha256": hashlib.sha256(raw).hexdigest(),
        "pixel_convention": "0-based numpy: the centre of data[iy, ix] is (x, y) = (ix, iy); "
                            "FITS/WCS pixel = numpy + 1",
        "time_convention": "UTC MJD from the input's DATE-OBS/MJD-OBS; mjd_mid = mjd_start + exptime_s/2/86400",
        "shift_convention": "output[y + shift_y, x + shift_x] = input[y, x]; uncovered pixels = median sky",
        "data_units": str(header0.get("BUNIT", "unknown (as in the input frame)")),
        "target_counts": "total injected counts in the exposure (integral of the PSF), data units",
        "injected_star_xy_in_input_pix": [sx, sy],
        "target_ra_deg": ra, "target_dec_deg": dec, "wcs_source": wcs_source,
        "crpix_shifted_with_data": shift_wcs,
        "light_curve": {"model": "baseline_flux * A(u), no blend", "baseline_flux": float(baseline_flux),
                        "t0_mjd": float(t0), "tE_days": float(te), "u0": float(u0)},
        "input_sky": sky, "input_sky_sigma": sigma0, "seed": seed,
    })
    truth_path = red_dir / TRUTH_NAME
    truth.write(truth_path, format="ascii.ecsv")
    config_path = red_dir / CONFIG_NAME
    aperture = round(max(1.5 * fwhm * pixscale_arcsec, 0.1), 3)
    _write_reduction_config(config_path, name, ra, dec, aperture,
                            f"series from {real_path.name}; RA/Dec of the injected star from {wcs_source}")
    return GeneratedDataset(red_dir=red_dir, frame_paths=paths, truth_path=truth_path, stars_path=None,
                            config_path=config_path, truth=truth, stars=None,
                            elapsed_s=time.perf_counter() - t_start)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def _parse_size(text: str) -> tuple[int, int]:
    """'1024' -> (1024, 1024); '2048x4096' (NX x NY) -> (4096, 2048) as (ny, nx)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected N or NXxNY, e.g. 1024 or 4096x4096")
    nx = int(m.group(1))
    ny = int(m.group(2)) if m.group(2) else nx
    return ny, nx


def _none_or(kind):
    def parse(text: str):
        return None if text.lower() in ("none", "null", "") else kind(text)
    return parse


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="luigi-phot-synthetic",
        description="Write a synthetic LCO/BANZAI-style dataset (frames, truth tables, "
                    "reduction_config.yaml) into an empty directory, or a short series from a real frame.")
    p.add_argument("--out", required=True, type=Path, help="dataset directory (red_dir); must be empty or new")
    p.add_argument("--overwrite", action="store_true",
                   help="remove a previous synthetic dataset's own files in --out first")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--n-frames", type=int)
    p.add_argument("--size", type=_parse_size, help="frame size: N or NXxNY (default 1024)")
    p.add_argument("--n-stars", type=int, help="stars per frame area down to --mag-faint")
    p.add_argument("--mag-faint", type=float)
    p.add_argument("--compress", choices=("none", "all", "mixed"))
    p.add_argument("--site", choices=sorted(LCO_SITES))
    p.add_argument("--n-nights", type=int)
    p.add_argument("--exptime-s", type=float)
    p.add_argument("--seeing", type=float, nargs=2, metavar=("MIN", "MAX"), help="seeing range [arcsec]")
    p.add_argument("--beta", type=float, nargs=2, metavar=("MIN", "MAX"), help="Moffat beta range")
    p.add_argument("--jitter-pix", type=float)
    p.add_argument("--rotation-deg", type=float)
    p.add_argument("--wcs-error-arcsec", type=float)
    p.add_argument("--n-variables", type=int)
    p.add_argument("--n-saturated", type=int)
    p.add_argument("--cosmic-rate", type=float, help="cosmic rays per megapixel per second")
    p.add_argument("--bad-column", type=_none_or(int), default=argparse.SUPPRESS,
                   help="x index of a bad column, or 'none'")
    p.add_argument("--bpm-marks-cosmics", action="store_true")
    p.add_argument("--target-name")
    p.add_argument("--target-mag", type=float, help="target baseline magnitude (source + blend)")
    p.add_argument("--blend-fraction", type=float)
    p.add_argument("--t0-mjd", type=float)
    p.add_argument("--tE-days", type=float)
    p.add_argument("--t0-span-fraction", type=float,
                   help="without --t0-mjd: the event's peak at this fraction of the observed span "
                        "(0 first frame, 1 last; 0.5 shows baseline, rise, peak and fall)")
    p.add_argument("--u0", type=float)
    p.add_argument("--target-isolation-arcsec", type=_none_or(float), default=argparse.SUPPRESS,
                   help="drop stars brighter than target+3 mag within this radius, or 'none'")
    p.add_argument("--target-neighbour", type=float, nargs=2, metavar=("SEP_ARCSEC", "DELTA_MAG"))
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="any SyntheticConfig field, value in YAML syntax (e.g. --set 'sky_e_per_s_per_pix=[1, 3]')")
    p.add_argument("--from-real", type=Path, metavar="FITS",
                   help="instead: a series from this real frame (uses --seed, --n-frames)")
    p.add_argument("--real-wcs", type=Path, metavar="FITS", help="with --from-real: header with the correct WCS")
    return p


_CLI_FIELDS = {
    "n_frames": "n_frames", "size": "shape", "n_stars": "n_stars", "mag_faint": "mag_faint",
    "compress": "compress", "site": "site", "n_nights": "n_nights", "exptime_s": "exptime_s",
    "seeing": "seeing_arcsec", "beta": "moffat_beta", "jitter_pix": "jitter_pix",
    "rotation_deg": "rotation_deg", "wcs_error_arcsec": "wcs_error_arcsec", "n_variables": "n_variables",
    "n_saturated": "n_saturated", "cosmic_rate": "cosmic_rays_per_mpix_per_s", "target_name": "target_name",
    "target_mag": "target_mag_baseline", "blend_fraction": "event_blend_fraction", "t0_mjd": "event_t0_mjd",
    "tE_days": "event_tE_days", "u0": "event_u0", "target_neighbour": "target_neighbour",
    "t0_span_fraction": "event_t0_span_fraction",
}


def _config_from_args(args: argparse.Namespace) -> SyntheticConfig:
    values: dict = {"seed": args.seed}
    for arg, name in _CLI_FIELDS.items():
        v = getattr(args, arg)
        if v is not None:
            values[name] = tuple(v) if isinstance(v, list) else v
    # absent unless given (default=SUPPRESS), so that 'none' can switch them off
    for name in ("bad_column", "target_isolation_arcsec"):
        if hasattr(args, name):
            values[name] = getattr(args, name)
    default_column = SyntheticConfig.bad_column
    if "bad_column" not in values and "shape" in values and default_column >= values["shape"][1]:
        values["bad_column"] = int(0.3 * values["shape"][1])  # the default column is off a small frame
    if args.bpm_marks_cosmics:
        values["bpm_marks_cosmics"] = True
    known = {f.name for f in dataclasses.fields(SyntheticConfig)}
    for item in args.set:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or key not in known:
            raise SystemExit(f"--set {item!r}: expected NAME=VALUE with NAME a SyntheticConfig field "
                             f"({', '.join(sorted(known))})")
        value = yaml.safe_load(text)
        values[key] = tuple(value) if isinstance(value, list) else value
    return SyntheticConfig(**values)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``luigi-phot-synthetic --out DIR [--seed N --n-frames N --size 4096x4096 ...]``."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.from_real is not None:
        ds = series_from_real_frame(args.from_real, args.out, n_frames=args.n_frames or 8, seed=args.seed,
                                    wcs_path=args.real_wcs, target_name=args.target_name,
                                    overwrite=args.overwrite)
        print(f"wrote {len(ds.frame_paths)} frames from {args.from_real} into {ds.red_dir} "
              f"in {ds.elapsed_s:.1f} s; truth: {ds.truth_path.name}")
        return 0
    try:
        cfg = _config_from_args(args)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))

    def progress(i: int, n: int, path: Path) -> None:
        print(f"  [{i}/{n}] {path.name}", flush=True)

    try:
        ds = generate_dataset(args.out, cfg, overwrite=args.overwrite, progress=progress)
    except FileExistsError as exc:
        print(f"luigi-phot-synthetic: {exc}", file=sys.stderr)
        return 2
    t = ds.truth
    dmag = 2.5 * math.log10(max(t["target_flux_e_per_s"]) / min(t["target_flux_e_per_s"]))
    print(f"wrote {len(ds.frame_paths)} frames {cfg.shape[1]}x{cfg.shape[0]} into {ds.red_dir} in "
          f"{ds.elapsed_s:.1f} s (pixels {ds.render_s:.1f} s); target {cfg.target_name} changes by "
          f"{dmag:.2f} mag; truth: {TRUTH_NAME}, {STARS_NAME}; config: {CONFIG_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
