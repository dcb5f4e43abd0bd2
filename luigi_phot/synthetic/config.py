"""The generator's configuration, its LCO sites, file names and BANZAI mask bits."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path

from astropy.table import Table


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
