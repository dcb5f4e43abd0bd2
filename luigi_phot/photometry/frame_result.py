"""What measuring one frame produces, as typed objects.

- :class:`FrameMeasurement`: ``stars``, an astropy :class:`~astropy.table.Table` with one
  row per catalogue star (units on the columns, :data:`STAR_COLUMNS`), and ``facts``, a
  :class:`FrameFacts` with the frame's facts (its header).
- :class:`FrameFacts`: one typed field per card of the measurement file's header; each
  field knows its FITS keyword and comment (``dataclasses.field`` metadata), so the
  facts make the cards (:meth:`FrameFacts.cards`) and are read back from a header
  (:meth:`FrameFacts.from_header`).
- :class:`RejectionFacts`: the same for the record of a rejected frame.

The measurement file itself (``lightcurve.write_measurement``) is unchanged by this
typing: the same cards in the same order, the same columns and dtypes, no unit cards.
Table columns (not QTable): a Quantity would turn the integer columns into floats.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from astropy import units as u
from astropy.table import Column, Table

from ..names import name_from_header

__all__ = ["STAR_COLUMNS", "FrameFacts", "FrameMeasurement", "RejectionFacts", "star_table"]


class StarColumn:
    """A column of the per-star table: its dtype on disk, unit and meaning."""

    def __init__(self, dtype, unit: u.UnitBase | None, description: str):
        self.dtype, self.unit, self.description = np.dtype(dtype), unit, description


#: The per-star columns of a measurement, in the file's order. Fluxes are electrons
#: collected during the exposure (not per second) in the aperture on this frame.
STAR_COLUMNS = {
    "x": StarColumn(np.float32, u.pix, "position on the frame (0-based)"),
    "y": StarColumn(np.float32, u.pix, "position on the frame (0-based)"),
    "flux": StarColumn(np.float32, u.electron, "aperture flux less sky and modelled neighbours"),
    "flux_err": StarColumn(np.float32, u.electron, "its uncertainty"),
    "sky": StarColumn(np.float32, u.electron / u.pix, "annulus sky per pixel"),
    "sky_sigma": StarColumn(np.float32, u.electron / u.pix, "spread of the annulus pixels"),
    "n_sky": StarColumn(np.int16, u.pix, "annulus pixels used"),
    "neighbour_flux": StarColumn(np.float32, u.electron, "neighbours' modelled light in the aperture"),
    "flags": StarColumn(np.int16, None, "bits of photometry.flags"),
    "repaired": StarColumn(np.float32, u.dimensionless_unscaled, "fraction of the star's light on repaired pixels"),
}


def star_table(columns: dict) -> Table:
    """The per-star table from arrays by column name: each column cast to its dtype on
    disk, with its unit and description (:data:`STAR_COLUMNS`; a column not listed there
    is kept as it is, in the order given)."""
    out = Table()
    for name, values in columns.items():
        spec = STAR_COLUMNS.get(name)
        if spec is None:
            out[name] = np.asarray(values)
        else:
            out[name] = Column(np.asarray(values).astype(spec.dtype, copy=False), unit=spec.unit,
                               description=spec.description)
    return out


def _float(header, key):
    """A float card; NaN when absent or not a number (NaN is written as the text 'NaN')."""
    try:
        return float(header[key])
    except (KeyError, TypeError, ValueError):
        return np.nan


def _typed(kind: Callable):
    def parse(header, key):
        value = header.get(key)
        return None if value is None else kind(value)
    return parse


def _image(header, key):
    return str(name_from_header(header))


def _card(keyword: str, comment: str, parse: Callable = _float, suffixes: tuple[str, ...] = (), **kwargs):
    """A field written as the card `keyword` with `comment`. A keyword with ``{}`` is a
    group of cards, one per element of the field's tuple: named by `suffixes`, or
    numbered 0, 1, ... (as many as the tuple has)."""
    return field(metadata={"keyword": keyword, "comment": comment, "parse": parse, "suffixes": suffixes}, **kwargs)


@dataclass(frozen=True, kw_only=True)
class FrameFacts:
    """The facts of one measured frame: each field is one card of the measurement header
    (the affine matrix and the PSF size coefficients a numbered group), in the file's
    order. Electrons and pixels unless the name says otherwise. Read from an older file,
    a float the file lacks is NaN and anything else None."""

    image: str = _card("IMAGE", "frame measured", _image)
    mjd_start: float = _card("MJDSTART", "exposure start MJD (UTC)")
    mjd_mid: float = _card("MJDMID", "mid-exposure MJD (UTC)")
    exptime_s: float = _card("EXPTIME", "exposure time [s]")
    filter_name: str = _card("FILTER", "filter", _typed(str))
    airmass: float = _card("AIRMASS", "airmass")
    gain_e_per_adu: float = _card("GAIN", "gain used [e-/ADU]")
    read_noise_e: float = _card("RDNOISE", "read noise used [e-]")
    file_pixel_units: str = _card("UNITS_IN", "pixel units of the file", _typed(str))
    pixel_scale_arcsec: float = _card("PIXSCALE", "pixel scale [arcsec/pix]: reference / alignment")
    sky_level_e: float = _card("SKY_E", "median sky [e-/pix]")
    sky_sigma_e: float = _card("SKYSIG_E", "median background spread [e-/pix]")
    pixel_sigma_e: float = _card("PIXSIG_E", "pixel noise from adjacent pixels [e-]")
    pixel_var_e2: float = _card("PIXVAR", "background pixel variance used in errors [e2]")
    source_var_per_e: float = _card("SRCVARF", "source Poisson variance per electron")
    errors_from_err_plane: bool = _card("ERRPLANE", "errors from the ERR extension", _typed(bool))
    fwhm_centre_pix: float = _card("FWHMPIX", "PSF FWHM at the frame centre [pix]")
    fwhm_centre_arcsec: float = _card("FWHMAS", "PSF FWHM at the frame centre [arcsec]")
    psf_size_varies: bool = _card("PSFVARY", "PSF size varies across the frame", _typed(bool))
    psf_chi2_per_dof: float = _card("PSFCHI2", "PSF fit chi2 per dof")
    psf_core_misfit: float = _card("PSFMISF", "PSF core misfit (relative rms model error)")
    psf_n_stars: int = _card("PSFNSTAR", "stars in the PSF fit", _typed(int))
    photometric_scale: float = _card("PHSCALE", "frame/reference flux ratio from PSF stars")
    photometric_scale_err: float = _card("PHSCALEE", "its uncertainty")
    n_cosmic_pixels: int = _card("NCOSMIC", "pixels flagged as cosmic-ray hits (grown)", _typed(int))
    neighbours_subtracted: bool = _card("NEIGHSUB", "neighbour light subtracted", _typed(bool))
    sky_estimator: str = _card("SKYEST", "annulus sky: clipped mean or clipped median", _typed(str))
    site_latitude_deg: float = _card("SITELAT", "site latitude [deg]")
    site_longitude_deg_east: float = _card("SITELON", "site longitude [deg E]")
    site_height_m: float = _card("SITEALT", "site height [m]")
    catalogue_id: str = _card("CATID", "catalogue measured against", _typed(str))
    psf_fwhm_pix: float = _card("PSFFWHM", "PSF FWHM [pix] (Moffat, geometric mean)")
    psf_ellipticity: float = _card("PSFELL", "PSF ellipticity 1-b/a")
    psf_theta_deg: float = _card("PSFTHETA", "PSF major axis angle [deg] from +x")
    psf_beta: float = _card("PSFBETA", "PSF Moffat beta")
    psf_size_coeffs: tuple[float, ...] = _card("PSFSZ{}", "ln(FWHM/PSFFWHM) quadratic in u,v (see docs)", default=())
    alignment_affine: tuple[float, ...] = _card("ALN_{}", "ref->frame affine",
                                                suffixes=("00", "01", "02", "10", "11", "12"))   # row-major 2x3
    alignment_rms_pix: float = _card("ALN_RMS", "alignment residual RMS [pix]")
    alignment_n_stars: int = _card("ALN_N", "stars matched in alignment", _typed(int))
    alignment_method: str = _card("ALN_METH", "alignment method", _typed(str))
    alignment_rotation_deg: float = _card("ALN_ROT", "rotation of frame vs reference [deg]")
    alignment_scale: float = _card("ALN_SCAL", "frame pix per reference pix")
    aperture_radius_pix: float = _card("APRAD", "aperture radius [pix]")
    annulus_inner_pix: float = _card("ANNRIN", "sky annulus inner radius [pix]")
    annulus_outer_pix: float = _card("ANNROUT", "sky annulus outer radius [pix]")
    pixel_digest: str | None = _card("PIXDIG", "sha256 of the science pixels", _typed(str), default=None)
    frame_digest: str | None = _card("FRAMEDIG", "sha256 of the frame measured", _typed(str), default=None)

    def cards(self) -> dict[str, tuple]:
        """{keyword: (value, comment)} in the file's order; fields that are None are left out."""
        return _cards(self)

    @classmethod
    def from_header(cls, header) -> "FrameFacts":
        """The facts from a measurement file's header (a ``fits.Header`` or any mapping of
        keyword to value)."""
        return _from_header(cls, header)

    @property
    def alignment_matrix(self) -> np.ndarray:
        """The 2x3 affine map reference pixel -> frame pixel."""
        return np.array(self.alignment_affine, dtype=float).reshape(2, 3)


@dataclass(frozen=True, kw_only=True)
class RejectionFacts:
    """The record of a rejected frame: why, and when it was taken when that is known."""

    image: str = _card("IMAGE", "frame", _image)
    reason: str = _card("REJECT", "why the frame was rejected", _typed(str))
    mjd_mid: float | None = _card("MJDMID", "mid-exposure MJD (UTC)", _typed(float), default=None)
    frame_digest: str | None = _card("FRAMEDIG", "sha256 of the frame rejected", _typed(str), default=None)

    def cards(self) -> dict[str, tuple]:
        return _cards(self)

    @classmethod
    def from_header(cls, header) -> "RejectionFacts":
        return _from_header(cls, header)


def _group_keys(f: dataclasses.Field, n: int) -> tuple[str, ...]:
    """The keywords of the numbered group of cards of field `f` holding `n` values."""
    suffixes = f.metadata.get("suffixes") or range(n)
    return tuple(f.metadata["keyword"].format(s) for s in suffixes)


def _cards(facts) -> dict[str, tuple]:
    out = {}
    for f in dataclasses.fields(facts):
        keyword, comment, value = f.metadata["keyword"], f.metadata["comment"], getattr(facts, f.name)
        if "{}" in keyword:
            keys = _group_keys(f, len(value))
            if len(keys) != len(value):
                raise ValueError(f"{f.name}: {len(value)} values for the {len(keys)} cards {keyword}")
            out.update({k: (v, comment) for k, v in zip(keys, value)})
        elif value is not None:
            out[keyword] = (value, comment)
    return out


def _from_header(cls, header):
    values = {}
    for f in dataclasses.fields(cls):
        keyword, parse = f.metadata["keyword"], f.metadata["parse"]
        if "{}" not in keyword:
            values[f.name] = parse(header, keyword)
            continue
        if f.metadata.get("suffixes"):     # a fixed group: every card (NaN when absent)
            keys = _group_keys(f, 0)
        else:                               # a counted group: cards 0, 1, ... while present
            n = 0
            while keyword.format(n) in header:
                n += 1
            keys = _group_keys(f, n)
        values[f.name] = tuple(parse(header, k) for k in keys)
    return cls(**values)


@dataclass
class FrameMeasurement:
    """One frame measured: ``stars`` (one row per catalogue star, :data:`STAR_COLUMNS`),
    ``facts`` (its header), the time of each step [s] and notes to log as warnings."""

    stars: Table
    facts: FrameFacts
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
