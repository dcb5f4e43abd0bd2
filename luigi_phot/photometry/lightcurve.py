"""Per-image measurement files and the dataset's light curves.

- :func:`write_measurement` / :func:`write_rejection` / :func:`read_measurement`:
  the per-image table (FITS: header with the frame's facts, one row per
  catalogue star), or the record that the frame was rejected and why.
- :func:`build_lightcurve` assembles all frames into arrays, calibrates them
  with the ensemble, and returns the target light curve, the all-stars time
  series and the rejected-frames list; :func:`write_products` writes them.

Flux units in the light curve: electrons per second as seen on the reference
frame (its transparency, airmass and aperture). Magnitudes:
mag = zero_point_ref - 2.5 log10(flux), with zero_point_ref from the external
catalogue when there is one, else the configured default (25.0).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.stats import mad_std
from astropy.table import Table

from ..names import fitting_comment, name_cards, name_from_header, safe_token, shown, shown_ascii
from . import flags as F
from .calibration import CalibrationTuning, column_medians, solve_ensemble
from .catalogue import Catalogue
from .frame_result import FrameFacts, RejectionFacts, star_table
from .steps import Step, run_steps
from .timing import bjd_tdb

__all__ = ["write_measurement", "write_rejection", "read_measurement", "MeasurementRecord",
           "LightCurveProducts", "LightcurveTuning", "build_lightcurve", "write_products", "product_names",
           "IdentificationError", "check_target_identification"]

MEASUREMENT_FORMAT = 1


@dataclass(frozen=True)
class LightcurveTuning:
    """The light-curve stage's fixed numbers, in one place (the ensemble calibration's
    in :class:`CalibrationTuning`)."""

    calibration: CalibrationTuning = CalibrationTuning()
    zero_point_min_stars: int = 3             # catalogue magnitudes needed for a catalogue zero point
    zero_point_min_comparison: int = 5        # fewer comparison stars with one: any candidate star serves
    zero_point_clip_sigma: float = 3.0        # stars this far from the median offset are left out ...
    zero_point_clip_floor_mag: float = 0.05   # ... but never closer than this
    max_blended_fraction: float = 0.5         # more target points flagged blended_or_absent: identification refused


TUNING = LightcurveTuning()


def write_measurement(path: Path, stars, header, extra: dict | None = None) -> None:
    """The per-image table: `stars` (a Table, or arrays by column name) and `header`
    (:class:`FrameFacts`, :class:`RejectionFacts`, or ``{keyword: (value, comment)}``).
    The columns are written as their arrays are (dtypes; no unit cards: the file's format
    predates the units). ``IMAGE`` (the frame's file name) is kept exactly whatever
    characters it has (:func:`luigi_phot.names.name_cards`); other text values are
    written as printable ASCII, which is all a FITS header can hold."""
    hdr = fits.Header()
    hdr["MEASFMT"] = (MEASUREMENT_FORMAT, "luigi_phot measurement format")
    if isinstance(header, (FrameFacts, RejectionFacts)):
        header = header.cards()
    cards = {**header, **(extra or {})}
    image = cards.pop("IMAGE", None)
    if image is not None:
        value, comment = image if isinstance(image, tuple) else (image, "frame")
        cards = {**name_cards(str(value), comment=comment), **cards}
    for k, v in cards.items():
        value, comment = v if isinstance(v, tuple) else (v, "")
        if isinstance(value, float) and not np.isfinite(value):
            value = "NaN"
        elif isinstance(value, str) and k not in ("IMAGE", "IMAGEHEX"):
            value = shown_ascii(value)
        hdr[k] = (value, fitting_comment(k, value, comment))
    names = list(stars.colnames if isinstance(stars, Table) else stars)
    plain = Table([np.asarray(stars[c]) for c in names], names=names)   # astropy picks each column's TFORM
    table = fits.BinTableHDU(plain, header=hdr, name="PHOT")
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(path, overwrite=True)


def write_rejection(path: Path, image: str, reason: str, mjd_mid: float | None = None,
                    extra: dict | None = None) -> None:
    """Record that `image` was rejected (so a rerun does not retry it) and why."""
    facts = RejectionFacts(image=image, reason=reason[:2000], mjd_mid=mjd_mid)
    write_measurement(path, {"flux": np.zeros(0, np.float32)}, facts, extra)


class MeasurementRecord:
    """A measurement file as read: the frame's name, its header, and the columns asked
    for (None when the frame was rejected). ``facts`` and ``stars`` are the typed views.

    From the measurement cache, a record carries its header as text and its header
    values as a dict (``values``): the light curve reads a few values of every frame,
    and parsing 500 headers with astropy to get them cost 0.5 s of a 2.5 s update; the
    header itself is parsed only when asked for."""

    def __init__(self, image: str, header: fits.Header | None, columns: dict[str, np.ndarray] | None,
                 header_text: str | None = None, values: dict | None = None):
        self.image = image
        self.columns = columns          # None when rejected
        self._header, self._header_text, self._values = header, header_text, values

    def __repr__(self) -> str:
        return f"MeasurementRecord({self.image!r}, {'rejected' if self.columns is None else 'measured'})"

    @property
    def header(self) -> fits.Header:
        if self._header is None:
            self._header = fits.Header.fromstring(self._header_text)
        return self._header

    @property
    def values(self):
        """The header's values by keyword (a mapping with ``get``), parsed once."""
        return self.header if self._values is None else self._values

    @property
    def rejected(self) -> str | None:
        r = self.values.get("REJECT")
        return None if r is None else str(r)

    @property
    def facts(self) -> FrameFacts | RejectionFacts:
        """The header as :class:`FrameFacts`, or :class:`RejectionFacts` for a rejected
        frame (both have ``image``, ``mjd_mid`` and ``frame_digest``)."""
        return (FrameFacts if self.rejected is None else RejectionFacts).from_header(self.header)

    @property
    def stars(self) -> Table | None:
        """The columns read, with their units (None when rejected)."""
        return None if self.columns is None else star_table(self.columns)

    @property
    def digest(self) -> str | None:
        """Digest of the frame's content that was measured (None in files made before it was kept)."""
        d = self.values.get("FRAMEDIG")
        return None if d is None else str(d)

    @property
    def pixel_digest(self) -> str | None:
        """Digest of the science pixels measured, whatever the file's format (None when unknown)."""
        d = self.values.get("PIXDIG")
        return str(d) if d else None


def read_measurement(path: Path, columns=("x", "y", "flux", "flux_err", "sky", "neighbour_flux", "flags")) -> MeasurementRecord:
    with fits.open(path, memmap=False) as hdul:
        hdu = hdul["PHOT"]
        hdr = hdu.header.copy()
        if "REJECT" in hdr:
            return MeasurementRecord(str(name_from_header(hdr)), hdr, None)
        data = hdu.data
        cols = {c: np.asarray(data[c]) for c in columns if c in data.columns.names}
    return MeasurementRecord(str(name_from_header(hdr)), hdr, cols)


def product_names(target_name: str, filter_name: str, source="the dataset's reference frame") -> dict[str, str]:
    """File names of a dataset's products (top level of red_dir unless a path is shown).
    Both names are made safe tokens first (:func:`luigi_phot.names.safe_token`: the
    filter, from a header, rewritten; the target name, from the configuration, checked):
    raises :class:`luigi_phot.names.UnsafeName` naming `source` when one cannot be."""
    target = safe_token(target_name, "target.name", "reduction_config.yaml")
    stem = f"{target}_{safe_token(filter_name, 'FILTER', source, rewrite=True)}"
    return {"lc_ecsv": f"{stem}_lc.ecsv", "lc_csv": f"{stem}_lc.csv", "lc_png": f"{stem}_lc.png",
            "noise_png": f"{stem}_noise.png", "crowding_png": f"{stem}_fwhm_residuals.png",
            "rejected": f"{stem}_rejected.csv", "all_stars": f"photometry/{stem}_all_stars.fits",
            "finder_png": f"{stem}_finder.png", "report_html": f"{stem}_report.html"}


class IdentificationError(ValueError):
    """Most of the target's points are not its own light: the identification looks wrong."""


def check_target_identification(lc: Table, target_name: str, filter_name: str,
                                max_blended_fraction: float = TUNING.max_blended_fraction) -> None:
    """Raise IdentificationError when more than `max_blended_fraction` (a half) of the
    target's measured points carry BLENDED_OR_ABSENT: then the light curve would be that
    of a neighbour, or noise."""
    flags = np.asarray(lc["flags"], int)
    measured = (flags & F.FRAME_REJECTED) == 0
    bad = measured & ((flags & F.BLENDED_OR_ABSENT) != 0)
    if measured.sum() and bad.sum() > max_blended_fraction * measured.sum():
        raise IdentificationError(
            f"the target identification looks wrong: {int(bad.sum())} of {int(measured.sum())} target points are "
            f"not the star's own light (flag blended_or_absent: no star on the reference and none in the frame, or "
            f"a neighbour within 1 FWHM outshines it); see the finder chart "
            f"{product_names(target_name, filter_name)['finder_png']}")


@dataclass
class LightCurveProducts:
    lightcurve: Table
    tom_csv: Table
    rejected: Table
    frames: Table
    stars: Table
    flux: np.ndarray        # (F, S) calibrated e-/s on the reference scale
    flux_err: np.ndarray
    flags: np.ndarray       # (F, S) the points' flags, FRAME_REJECTED on frames the calibration rejects
    meta: dict = field(default_factory=dict)


def _header_float(h, key):
    v = h.get(key)
    try:
        return float(v)
    except (TypeError, ValueError):
        return np.nan


@dataclass
class _Stack:
    """The measured frames stacked star by star (F frames x S stars), then calibrated:
    the calibration turns ``rate`` and ``rate_err`` into ``cal`` and ``cal_err`` in place
    (for 500 frames x 20,000 stars each array is 80 MB) and sets them to None."""

    names: list[str]
    headers: list              # each frame's header values (MeasurementRecord.values)
    rate: np.ndarray | None    # e-/s on each frame
    rate_err: np.ndarray | None
    flags: np.ndarray          # int16; FRAME_REJECTED added on frames the calibration rejects
    target_neighbour_e: np.ndarray    # (F,) modelled neighbour light in the target's aperture, e-
    exptime_s: np.ndarray
    usable: np.ndarray         # no severe flag, finite
    cal: np.ndarray | None = None        # e-/s on the reference frame's scale
    cal_err: np.ndarray | None = None
    target_zeta: np.ndarray | None = None       # ln(frame/reference) of the target's light, per frame
    target_zeta_err: np.ndarray | None = None
    bad_frames: np.ndarray | None = None
    good: np.ndarray | None = None       # usable, on a calibrated frame
    solution: object = None

    def header_values(self, key: str) -> np.ndarray:
        return np.array([_header_float(h, key) for h in self.headers])


@dataclass
class _LightcurveState:
    """What the steps of :func:`build_lightcurve` know, filled in step by step."""

    records: list[MeasurementRecord]
    cat: Catalogue
    target_name: str
    ra_deg: float
    dec_deg: float
    default_zero_point: float
    tuning: LightcurveTuning
    rejected: dict[str, str]
    stack: _Stack | None = None
    mean_flux: np.ndarray | None = None      # every star's weighted mean calibrated flux
    zero_point: tuple = ()                   # (value, error, source)
    frames: Table | None = None
    lc: Table | None = None
    stars: Table | None = None


def _stacked(s: _LightcurveState) -> None:
    s.stack = _stack(s.records, s.cat, s.rejected)


def _calibrated(s: _LightcurveState) -> None:
    _calibrate(s.stack, s.cat, s.rejected, s.tuning.calibration)


def _zero_pointed(s: _LightcurveState) -> None:
    s.mean_flux = _weighted_mean_fluxes(s.stack)
    s.zero_point = _zero_point(s.stack, s.cat, s.default_zero_point, s.mean_flux, s.tuning)


def _framed(s: _LightcurveState) -> None:
    s.frames = _frame_table(s.stack, s.cat, s.zero_point[0], s.ra_deg, s.dec_deg)


def _targeted(s: _LightcurveState) -> None:
    """The target's light curve with its description, checked for a wrong identification."""
    zp, zp_err, zp_source = s.zero_point
    s.lc = _target_table(s.stack, s.cat, s.frames, zp, s.records, s.ra_deg, s.dec_deg)
    s.lc.meta.update({
        "target": s.target_name, "ra_deg": s.ra_deg, "dec_deg": s.dec_deg, "filter": s.cat.filter_name,
        "reference_image": s.cat.reference_image, "catalogue_id": s.cat.catalogue_id,
        "flux_scale": "electron/s as seen on the reference frame (ensemble-calibrated)",
        "mjd": "mid-exposure, UTC", "bjd_tdb": "barycentric Julian date (TDB) of mid-exposure",
        "zero_point_ref": zp, "zero_point_ref_err": zp_err, "zero_point_source": zp_source,
        "zero_point": "per frame: mag = zero_point - 2.5 log10(electrons / s measured on that frame)",
        "calibration_order": s.stack.solution.order,
        "n_comparison_stars": int(s.stack.solution.comparison.sum()),
        "flags": {name: bit for bit, (name, _) in F.FLAGS.items()},
        "severe_flags": F.SEVERE,
    })
    check_target_identification(s.lc, s.target_name, s.cat.filter_name, s.tuning.max_blended_fraction)


def _all_stars(s: _LightcurveState) -> None:
    s.stars = _all_stars_table(s.stack, s.cat, s.zero_point[0], s.mean_flux)


#: The light-curve stage, in order.
LIGHTCURVE_STEPS = (
    Step("stack", _stacked),
    Step("calibrate", _calibrated),
    Step("zero point", _zero_pointed),
    Step("frames", _framed),
    Step("target", _targeted),
    Step("all stars", _all_stars),
)


def build_lightcurve(records: list[MeasurementRecord], cat: Catalogue, target_name: str,
                     ra_deg: float, dec_deg: float, default_zero_point: float,
                     extra_rejected: dict[str, str] | None = None,
                     tuning: LightcurveTuning = TUNING) -> LightCurveProducts:
    """Calibrate all measured frames and extract the target's light curve through
    :data:`LIGHTCURVE_STEPS`: stack the measurements, calibrate the frames on an ensemble
    of comparison stars, set the zero point, then make the frame table, the target's light
    curve (checked for a wrong identification) and the all-stars table; then the TOM
    tables. A ValueError says why there is no light curve; any other error carries a note
    naming the step. The steps' times are in the products' meta["step_seconds"]."""
    rejected = {r.image: r.rejected for r in records if r.columns is None}
    rejected.update(extra_rejected or {})
    s = _LightcurveState(records, cat, target_name, ra_deg, dec_deg, default_zero_point, tuning, rejected)
    timings = run_steps(LIGHTCURVE_STEPS, s, f"the light curve of {target_name}", expected=(ValueError,))
    lc, stack = s.lc, s.stack
    # what the TOM's photometry processor reads: time (MJD), filter, magnitude, error
    finite = np.isfinite(lc["mag"]) & np.isfinite(lc["mag_err"])
    tom_csv = _tom_table(lc, finite & ((np.asarray(lc["flags"]) & F.SEVERE) == 0), cat.filter_name)
    # not the star's own light: never for the TOM, not even with tom.include_flagged
    tom_csv_all = _tom_table(lc, finite & ((np.asarray(lc["flags"]) & F.BLENDED_OR_ABSENT) == 0), cat.filter_name)
    rej = Table()
    rej["image"] = [shown(k) for k in sorted(rejected)]
    rej["reason"] = [rejected[k] for k in sorted(rejected)]
    meta = {"zero_point_ref": s.zero_point[0], "zero_point_source": s.zero_point[2], "tom_csv_all": tom_csv_all,
            "n_measured": len(stack.names), "n_rejected": len(rejected), "step_seconds": timings}
    # big-endian, as FITS stores them: written without swapping
    return LightCurveProducts(lightcurve=lc, tom_csv=tom_csv, rejected=rej, frames=s.frames, stars=s.stars,
                              flux=stack.cal.astype(">f4"), flux_err=stack.cal_err.astype(">f4"),
                              flags=stack.flags.astype(">i2"), meta=meta)


def _stack(records: list[MeasurementRecord], cat: Catalogue, rejected: dict[str, str]) -> _Stack:
    """The measured frames' columns stacked; a frame measured against another catalogue
    is an error."""
    measured = [r for r in records if r.columns is not None]
    n_s, n_f = len(cat.stars), len(measured)
    if n_f == 0:
        raise _no_usable_frame(rejected)
    flux = np.empty((n_f, n_s), dtype=np.float64)
    err = np.empty((n_f, n_s), dtype=np.float64)
    flg = np.empty((n_f, n_s), dtype=np.int16)          # every flag bit is below 2^15 (flags.py)
    neigh = np.empty(n_f)
    exptime = np.empty(n_f)
    t_idx = cat.target_index
    for k, r in enumerate(measured):
        c = r.columns
        if c["flux"].size != n_s:
            raise ValueError(f"{r.image}: measured against another catalogue ({c['flux'].size} stars, expected {n_s})")
        flux[k], err[k], flg[k], neigh[k] = c["flux"], c["flux_err"], c["flags"], c["neighbour_flux"][t_idx]
        exptime[k] = _header_float(r.values, "EXPTIME")
    exptime = np.where(exptime > 0, exptime, 1.0)
    rate = np.divide(flux, exptime[:, None], out=flux)         # in place: each whole-array copy costs
    rate_err = np.divide(err, exptime[:, None], out=err)
    usable = (flg & F.SEVERE) == 0
    usable &= np.isfinite(rate)
    usable &= np.isfinite(rate_err)
    return _Stack(names=[r.image for r in measured], headers=[r.values for r in measured], rate=rate,
                  rate_err=rate_err, flags=flg, target_neighbour_e=neigh, exptime_s=exptime, usable=usable)


def _calibrate(stack: _Stack, cat: Catalogue, rejected: dict[str, str], tuning: CalibrationTuning) -> None:
    """Every frame onto the reference frame's scale through the ensemble of comparison
    stars (calibration.solve_ensemble); frames it cannot calibrate are rejected."""
    stars = cat.stars
    candidates = (np.asarray(stars["detected"]) & ~np.asarray(stars["saturated_ref"])
                  & ~np.asarray(stars["is_target"]))
    ref_frame = stack.names.index(cat.reference_image) if cat.reference_image in stack.names else -1
    x_ref = np.asarray(stars["x_ref"], float)
    y_ref = np.asarray(stars["y_ref"], float)
    sol = solve_ensemble(stack.rate, stack.rate_err, stack.usable, candidates, x_ref, y_ref, cat.shape, ref_frame,
                         tuning=tuning)
    stack.solution = sol
    t_idx = cat.target_index
    z, z_err = sol.zeta(x_ref[t_idx:t_idx + 1], y_ref[t_idx:t_idx + 1])
    stack.target_zeta, stack.target_zeta_err = z[:, 0], z_err[:, 0]
    stack.cal, stack.cal_err = sol.calibrate(stack.rate, stack.rate_err, x_ref, y_ref, overwrite=True)   # (F, S)
    stack.rate = stack.rate_err = None
    stack.bad_frames = ~sol.frame_ok
    stack.flags[stack.bad_frames] |= F.FRAME_REJECTED
    stack.good = stack.usable & sol.frame_ok[:, None]
    n_f = len(stack.names)
    for k in np.flatnonzero(stack.bad_frames):
        rejected[stack.names[k]] = (f"calibration failed: only {int(sol.n_comparison[k])} comparison stars usable"
                                    if n_f >= 2 else "calibration failed: the only measured frame is not the "
                                                     f"reference frame {shown(cat.reference_image)}")
    if stack.bad_frames.all():
        raise _no_usable_frame(rejected)


def _weighted_mean_fluxes(stack: _Stack) -> np.ndarray:
    """Every star's inverse-variance weighted mean calibrated flux over its good points
    (NaN for a star with none)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        weight = np.square(np.where(stack.good, stack.cal_err, np.inf))
        np.divide(1.0, weight, out=weight)
        wsum = weight.sum(0)
        return np.where(wsum > 0, np.multiply(weight, stack.cal, out=weight).sum(0) / np.where(wsum > 0, wsum, 1),
                        np.nan)


def _zero_point(stack: _Stack, cat: Catalogue, default_zero_point: float, mean_flux: np.ndarray,
                tuning: LightcurveTuning) -> tuple[float, float, str]:
    """(zero point of the reference scale, its error, its source). From the catalogue's
    magnitudes of the stars' mean fluxes when enough stars have one (the comparison stars
    first; clipped about the median), else the default, moved by what earlier reference
    changes measured (the new reference calibrated against the old one), so that the
    magnitude scale stays where it was."""
    zp = default_zero_point + cat.zp_offset
    zp_err = np.nan
    zp_source = "default" if cat.zp_offset == 0 else \
        f"default {default_zero_point:g} {cat.zp_offset:+.3f} mag carried across reference changes"
    with np.errstate(divide="ignore", invalid="ignore"):
        inst = -2.5 * np.log10(mean_flux)
    stars = cat.stars
    cat_mag = np.asarray(stars["cat_mag"], float)
    has = np.isfinite(cat_mag) & np.isfinite(inst) & stack.solution.comparison
    if has.sum() < tuning.zero_point_min_comparison:
        candidates = (np.asarray(stars["detected"]) & ~np.asarray(stars["saturated_ref"])
                      & ~np.asarray(stars["is_target"]))
        has = np.isfinite(cat_mag) & np.isfinite(inst) & candidates
    if has.sum() >= tuning.zero_point_min_stars:
        d = cat_mag[has] - inst[has]
        med = np.median(d)
        sel = np.abs(d - med) <= max(tuning.zero_point_clip_sigma * mad_std(d), tuning.zero_point_clip_floor_mag)
        zp = float(np.median(d[sel]))
        zp_err = float(1.2533 * np.std(d[sel]) / np.sqrt(max(sel.sum(), 1)))   # the error of a median
        zp_source = f"catalogue ({int(sel.sum())} stars)"
    return zp, zp_err, zp_source


def _frame_sites(stack: _Stack) -> list:
    sites = []
    for h in stack.headers:
        lat, lon, alt = (_header_float(h, k) for k in ("SITELAT", "SITELON", "SITEALT"))
        sites.append((lat, lon, alt if np.isfinite(alt) else 0.0) if np.isfinite(lat) and np.isfinite(lon) else None)
    return sites


def _frame_table(stack: _Stack, cat: Catalogue, zp: float, ra_deg: float, dec_deg: float) -> Table:
    """One row per measured frame: times, conditions, zero point, calibration, alignment."""
    mjd = stack.header_values("MJDMID")
    frames = Table()
    frames["image"] = [shown_ascii(n) for n in stack.names]   # a FITS table: ASCII only
    frames["mjd"] = mjd
    frames["bjd_tdb"] = bjd_tdb(mjd, ra_deg, dec_deg, _frame_sites(stack))
    frames["exptime"] = stack.exptime_s
    frames["airmass"] = stack.header_values("AIRMASS")
    frames["fwhm_arcsec"] = stack.header_values("FWHMAS")
    frames["sky"] = stack.header_values("SKY_E")
    frames["zero_point"] = zp + 2.5 * np.log10(np.e) * stack.target_zeta + 2.5 * np.log10(stack.exptime_s)
    frames["zero_point_err"] = 2.5 * np.log10(np.e) * stack.target_zeta_err
    frames["n_comparison"] = stack.solution.n_comparison
    frames["calibration_chi2"] = stack.solution.frame_chi2
    frames["alignment_rms_pix"] = stack.header_values("ALN_RMS")
    n_matched = stack.header_values("ALN_N")
    frames["n_matched"] = [int(v) if np.isfinite(v) else 0 for v in n_matched]
    return frames


#: units of the light curve's columns
_LC_UNITS = {"mjd": "d", "bjd_tdb": "d", "flux": "electron / s", "flux_err": "electron / s", "mag": "mag",
             "mag_err": "mag", "zero_point": "mag", "zero_point_err": "mag", "fwhm_arcsec": "arcsec",
             "sky": "electron", "exptime": "s", "neighbour_flux": "electron / s"}


def _target_table(stack: _Stack, cat: Catalogue, frames: Table, zp: float, records: list[MeasurementRecord],
                  ra_deg: float, dec_deg: float) -> Table:
    """The target's light curve, with rejected frames that have a time as flagged rows,
    sorted by time."""
    t_idx = cat.target_index
    t_flux, t_err = stack.cal[:, t_idx], stack.cal_err[:, t_idx]
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(t_flux > 0, zp - 2.5 * np.log10(t_flux), np.nan)
        mag_err = np.where(t_flux > 0, 2.5 / np.log(10) * t_err / t_flux, np.nan)
    lc = Table()
    lc["mjd"] = frames["mjd"]
    lc["bjd_tdb"] = frames["bjd_tdb"]
    lc["flux"] = t_flux
    lc["flux_err"] = t_err
    lc["mag"] = mag
    lc["mag_err"] = mag_err
    lc["flags"] = stack.flags[:, t_idx].astype(np.int32)
    lc["image"] = [shown(n) for n in stack.names]
    for c in ("zero_point", "zero_point_err", "fwhm_arcsec", "airmass", "sky"):
        lc[c] = frames[c]
    lc["exptime"] = stack.exptime_s
    lc["neighbour_flux"] = stack.target_neighbour_e / stack.exptime_s / np.exp(stack.target_zeta)
    rej_rows = [r for r in records if r.columns is None and np.isfinite(_header_float(r.values, "MJDMID"))]
    if rej_rows:
        rj_mjd = np.array([_header_float(r.values, "MJDMID") for r in rej_rows])
        rj_bjd = bjd_tdb(rj_mjd, ra_deg, dec_deg, [None] * len(rej_rows))
        for k, r in enumerate(rej_rows):
            row = {c: np.nan for c in lc.colnames}
            row.update(mjd=rj_mjd[k], bjd_tdb=rj_bjd[k], flags=F.FRAME_REJECTED, image=shown(r.image), exptime=np.nan)
            lc.add_row([row[c] for c in lc.colnames])
    lc.sort("mjd")
    for c, unit in _LC_UNITS.items():
        lc[c].unit = unit
    return lc


def _all_stars_table(stack: _Stack, cat: Catalogue, zp: float, mean_flux: np.ndarray) -> Table:
    """Every catalogue star: mean magnitude, scatter, median error, calibration role."""
    st = Table()
    for c in ("id", "ra", "dec", "x_ref", "y_ref", "flux_ref", "is_target", "detected", "cat_mag"):
        st[c] = cat.stars[c]
    good = stack.good
    with np.errstate(divide="ignore", invalid="ignore"):
        st["mean_flux"] = mean_flux
        st["mean_mag"] = zp - 2.5 * np.log10(mean_flux)
        n_good = good.sum(0)
        dev = np.subtract(stack.cal, mean_flux[None, :])
        dev[~good] = 0.0
        st["rms_flux"] = np.sqrt(np.square(dev, out=dev).sum(0) / np.maximum(n_good - 1, 1))
        st["median_flux_err"] = column_medians(np.where(good, stack.cal_err, np.nan))
    st["n_good"] = n_good
    st["comparison"] = stack.solution.comparison
    st["calibration_chi2"] = stack.solution.star_chi2
    return st


def _no_usable_frame(rejected: dict[str, str], shown_at_most: int = 8) -> ValueError:
    """One line: no frame is usable, and why (the reasons of the first frames)."""
    items = sorted(rejected.items())
    why = "; ".join(f"{shown(name)}: {reason}" for name, reason in items[:shown_at_most])
    more = f"; and {len(items) - shown_at_most} more" if len(items) > shown_at_most else ""
    return ValueError(f"no usable frame among the {len(items)} frames: {why}{more}")


def _tom_table(lc: Table, rows: np.ndarray, filter_name: str) -> Table:
    t = Table()
    t["time"] = np.asarray(lc["mjd"])[rows]
    t["filter"] = [filter_name[:32]] * int(rows.sum())
    t["magnitude"] = np.round(np.asarray(lc["mag"])[rows], 5)
    t["error"] = np.round(np.asarray(lc["mag_err"])[rows], 5)
    return t


def write_products(p: LightCurveProducts, paths: dict[str, Path], include_flagged_in_tom: bool = False) -> None:
    """Write every product to the given paths (callers pass temporary paths and rename)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p.lightcurve.write(paths["lc_ecsv"], format="ascii.ecsv", overwrite=True)
        tom = p.meta["tom_csv_all"] if include_flagged_in_tom else p.tom_csv
        tom.write(paths["lc_csv"], format="ascii.csv", overwrite=True)
        p.rejected.write(paths["rejected"], format="ascii.csv", overwrite=True)
    hdr = fits.Header()
    hdr["TARGET"] = p.lightcurve.meta["target"]
    hdr["FILTER"] = p.lightcurve.meta["filter"]
    hdr["ZP_REF"] = (p.meta["zero_point_ref"], "mag = ZP_REF - 2.5 log10(FLUX)")
    hdr["FLUXUNIT"] = "electron/s (reference frame scale)"
    fits.HDUList([
        fits.PrimaryHDU(header=hdr),
        fits.BinTableHDU(p.frames, name="FRAMES"),
        fits.BinTableHDU(p.stars, name="STARS"),
        fits.ImageHDU(p.flux, name="FLUX"),
        fits.ImageHDU(p.flux_err, name="FLUX_ERR"),
        fits.ImageHDU(p.flags, name="FLAGS"),
    ]).writeto(paths["all_stars"], overwrite=True)
