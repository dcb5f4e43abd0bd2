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
from astropy.table import Table

from ..names import fitting_comment, name_cards, name_from_header, safe_token, shown, shown_ascii
from . import flags as F
from .calibration import solve_ensemble
from .catalogue import Catalogue
from .timing import bjd_tdb

__all__ = ["write_measurement", "write_rejection", "read_measurement", "MeasurementRecord",
           "LightCurveProducts", "build_lightcurve", "write_products", "product_names", "IdentificationError",
           "check_target_identification"]

MEASUREMENT_FORMAT = 1


def write_measurement(path: Path, columns: dict, header: dict, extra: dict | None = None) -> None:
    """The per-image table. ``IMAGE`` (the frame's file name) is kept exactly whatever
    characters it has (:func:`luigi_phot.names.name_cards`); other text values are
    written as printable ASCII, which is all a FITS header can hold."""
    hdr = fits.Header()
    hdr["MEASFMT"] = (MEASUREMENT_FORMAT, "luigi_phot measurement format")
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
    table = fits.BinTableHDU.from_columns(
        [fits.Column(name=k, array=v, format={"f4": "E", "f8": "D", "i2": "I", "i4": "J", "i8": "K"}[v.dtype.str[1:]])
         for k, v in columns.items()], header=hdr, name="PHOT")
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(path, overwrite=True)


def write_rejection(path: Path, image: str, reason: str, mjd_mid: float | None = None,
                    extra: dict | None = None) -> None:
    """Record that `image` was rejected (so a rerun does not retry it) and why."""
    hdr = {"IMAGE": (image, "frame"), "REJECT": (reason[:2000], "why the frame was rejected")}
    if mjd_mid is not None:
        hdr["MJDMID"] = (mjd_mid, "mid-exposure MJD (UTC)")
    write_measurement(path, {"flux": np.zeros(0, np.float32)}, hdr, extra)


@dataclass
class MeasurementRecord:
    image: str
    header: fits.Header
    columns: dict[str, np.ndarray] | None     # None when rejected

    @property
    def rejected(self) -> str | None:
        r = self.header.get("REJECT")
        return None if r is None else str(r)

    @property
    def digest(self) -> str | None:
        """Digest of the frame's content that was measured (None in files made before it was kept)."""
        d = self.header.get("FRAMEDIG")
        return None if d is None else str(d)

    @property
    def pixel_digest(self) -> str | None:
        """Digest of the science pixels measured, whatever the file's format (None when unknown)."""
        d = self.header.get("PIXDIG")
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


def check_target_identification(lc: Table, target_name: str, filter_name: str) -> None:
    """Raise IdentificationError when more than half of the target's measured points carry
    BLENDED_OR_ABSENT: then the light curve would be that of a neighbour, or noise."""
    flags = np.asarray(lc["flags"], int)
    measured = (flags & F.FRAME_REJECTED) == 0
    bad = measured & ((flags & F.BLENDED_OR_ABSENT) != 0)
    if measured.sum() and bad.sum() > 0.5 * measured.sum():
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
    flags: np.ndarray
    meta: dict = field(default_factory=dict)


def _header_float(h, key):
    v = h.get(key)
    try:
        return float(v)
    except (TypeError, ValueError):
        return np.nan


def build_lightcurve(records: list[MeasurementRecord], cat: Catalogue, target_name: str,
                     ra_deg: float, dec_deg: float, default_zero_point: float,
                     extra_rejected: dict[str, str] | None = None) -> LightCurveProducts:
    """Calibrate all measured frames and extract the target's light curve."""
    measured = [r for r in records if r.columns is not None]
    rejected = {r.image: r.rejected for r in records if r.columns is None}
    rejected.update(extra_rejected or {})
    n_s = len(cat.stars)
    n_f = len(measured)
    if n_f == 0:
        raise _no_usable_frame(rejected)
    flux = np.empty((n_f, n_s), dtype=np.float64)
    err = np.empty((n_f, n_s), dtype=np.float64)
    flg = np.empty((n_f, n_s), dtype=np.int32)
    neigh = np.empty((n_f, n_s), dtype=np.float32)
    exptime = np.empty(n_f)
    for k, r in enumerate(measured):
        c = r.columns
        if c["flux"].size != n_s:
            raise ValueError(f"{r.image}: measured against another catalogue ({c['flux'].size} stars, expected {n_s})")
        flux[k] = c["flux"]
        err[k] = c["flux_err"]
        flg[k] = c["flags"]
        neigh[k] = c["neighbour_flux"]
        exptime[k] = _header_float(r.header, "EXPTIME")
    exptime = np.where(exptime > 0, exptime, 1.0)
    rate = flux / exptime[:, None]
    rate_err = err / exptime[:, None]
    usable = ((flg & F.SEVERE) == 0) & np.isfinite(rate) & np.isfinite(rate_err)
    stars = cat.stars
    t_idx = cat.target_index
    candidates = (np.asarray(stars["detected"]) & ~np.asarray(stars["saturated_ref"])
                  & ~np.asarray(stars["is_target"]))
    names = [r.image for r in measured]
    ref_frame = names.index(cat.reference_image) if cat.reference_image in names else -1
    x_ref = np.asarray(stars["x_ref"], float)
    y_ref = np.asarray(stars["y_ref"], float)
    sol = solve_ensemble(rate, rate_err, usable, candidates, x_ref, y_ref, cat.shape, ref_frame)

    zeta, zeta_err = sol.zeta(x_ref, y_ref)                                  # (F, S)
    scale = np.exp(zeta)
    cal = rate / scale
    cal_err = np.sqrt((rate_err / scale) ** 2 + (cal * zeta_err) ** 2)
    cal_flags = flg.copy()
    bad_frames = ~sol.frame_ok
    cal_flags[bad_frames] |= F.FRAME_REJECTED
    for k in np.flatnonzero(bad_frames):
        rejected[names[k]] = (f"calibration failed: only {int(sol.n_comparison[k])} comparison stars usable"
                              if n_f >= 3 else f"calibration failed: it needs at least 3 measured frames "
                                               f"({n_f} measured)")
    if bad_frames.all():
        raise _no_usable_frame(rejected)

    # zero point of the reference scale: the default, moved by what earlier reference
    # changes measured (the new reference calibrated against the old one), so that the
    # magnitude scale stays where it was
    zp = default_zero_point + cat.zp_offset
    zp_err = np.nan
    zp_source = "default" if cat.zp_offset == 0 else \
        f"default {default_zero_point:g} {cat.zp_offset:+.3f} mag carried across reference changes"
    cat_mag = np.asarray(stars["cat_mag"], float)
    with np.errstate(divide="ignore", invalid="ignore"):
        good = usable & ~bad_frames[:, None]
        wsum = np.where(good, 1.0 / cal_err ** 2, 0).sum(0)
        mean_flux = np.where(wsum > 0, np.where(good, cal / cal_err ** 2, 0).sum(0) / np.where(wsum > 0, wsum, 1), np.nan)
        inst = -2.5 * np.log10(mean_flux)
    has = np.isfinite(cat_mag) & np.isfinite(inst) & sol.comparison
    if has.sum() < 5:
        has = np.isfinite(cat_mag) & np.isfinite(inst) & candidates
    if has.sum() >= 3:
        d = cat_mag[has] - inst[has]
        med = np.median(d)
        mad = 1.4826 * np.median(np.abs(d - med))
        sel = np.abs(d - med) <= max(3 * mad, 0.05)
        zp = float(np.median(d[sel]))
        zp_err = float(1.2533 * np.std(d[sel]) / np.sqrt(max(sel.sum(), 1)))
        zp_source = f"catalogue ({int(sel.sum())} stars)"

    # frame table
    mjd = np.array([_header_float(r.header, "MJDMID") for r in measured])
    sites = []
    for r in measured:
        lat, lon, alt = (_header_float(r.header, k) for k in ("SITELAT", "SITELON", "SITEALT"))
        sites.append((lat, lon, alt if np.isfinite(alt) else 0.0) if np.isfinite(lat) and np.isfinite(lon) else None)
    bjd = bjd_tdb(mjd, ra_deg, dec_deg, sites)
    z_t = zeta[:, t_idx]
    frames = Table()
    frames["image"] = [shown_ascii(n) for n in names]   # a FITS table: ASCII only
    frames["mjd"] = mjd
    frames["bjd_tdb"] = bjd
    frames["exptime"] = exptime
    frames["airmass"] = [_header_float(r.header, "AIRMASS") for r in measured]
    frames["fwhm_arcsec"] = [_header_float(r.header, "FWHMAS") for r in measured]
    frames["sky"] = [_header_float(r.header, "SKY_E") for r in measured]
    frames["zero_point"] = zp + 2.5 * np.log10(np.e) * z_t + 2.5 * np.log10(exptime)
    frames["zero_point_err"] = 2.5 * np.log10(np.e) * zeta_err[:, t_idx]
    frames["n_comparison"] = sol.n_comparison
    frames["calibration_chi2"] = sol.frame_chi2
    frames["alignment_rms_pix"] = [_header_float(r.header, "ALN_RMS") for r in measured]
    frames["n_matched"] = [int(_header_float(r.header, "ALN_N")) if np.isfinite(_header_float(r.header, "ALN_N")) else 0
                           for r in measured]

    # target light curve, with rejected frames that have a time as flagged rows
    t_flux = cal[:, t_idx]
    t_err = cal_err[:, t_idx]
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(t_flux > 0, zp - 2.5 * np.log10(t_flux), np.nan)
        mag_err = np.where(t_flux > 0, 2.5 / np.log(10) * t_err / t_flux, np.nan)
    lc = Table()
    lc["mjd"] = mjd
    lc["bjd_tdb"] = bjd
    lc["flux"] = t_flux
    lc["flux_err"] = t_err
    lc["mag"] = mag
    lc["mag_err"] = mag_err
    lc["flags"] = cal_flags[:, t_idx]
    lc["image"] = [shown(n) for n in names]
    lc["zero_point"] = frames["zero_point"]
    lc["zero_point_err"] = frames["zero_point_err"]
    lc["fwhm_arcsec"] = frames["fwhm_arcsec"]
    lc["airmass"] = frames["airmass"]
    lc["sky"] = frames["sky"]
    lc["exptime"] = exptime
    lc["neighbour_flux"] = neigh[:, t_idx] / exptime / np.exp(z_t)
    rej_rows = [r for r in records if r.columns is None and np.isfinite(_header_float(r.header, "MJDMID"))]
    if rej_rows:
        rj_mjd = np.array([_header_float(r.header, "MJDMID") for r in rej_rows])
        rj_sites = [None] * len(rej_rows)
        rj_bjd = bjd_tdb(rj_mjd, ra_deg, dec_deg, rj_sites)
        for k, r in enumerate(rej_rows):
            row = {c: np.nan for c in lc.colnames}
            row.update(mjd=rj_mjd[k], bjd_tdb=rj_bjd[k], flags=F.FRAME_REJECTED, image=shown(r.image), exptime=np.nan)
            lc.add_row([row[c] for c in lc.colnames])
    lc.sort("mjd")
    units = {"mjd": "d", "bjd_tdb": "d", "flux": "electron / s", "flux_err": "electron / s", "mag": "mag",
             "mag_err": "mag", "zero_point": "mag", "zero_point_err": "mag", "fwhm_arcsec": "arcsec",
             "sky": "electron", "exptime": "s", "neighbour_flux": "electron / s"}
    for c, unit in units.items():
        lc[c].unit = unit
    filter_name = cat.filter_name
    lc.meta.update({
        "target": target_name, "ra_deg": ra_deg, "dec_deg": dec_deg, "filter": filter_name,
        "reference_image": cat.reference_image, "catalogue_id": cat.catalogue_id,
        "flux_scale": "electron/s as seen on the reference frame (ensemble-calibrated)",
        "mjd": "mid-exposure, UTC", "bjd_tdb": "barycentric Julian date (TDB) of mid-exposure",
        "zero_point_ref": zp, "zero_point_ref_err": zp_err, "zero_point_source": zp_source,
        "zero_point": "per frame: mag = zero_point - 2.5 log10(electrons / s measured on that frame)",
        "calibration_order": sol.order, "n_comparison_stars": int(sol.comparison.sum()),
        "flags": {name: bit for bit, (name, _) in F.FLAGS.items()},
        "severe_flags": F.SEVERE,
    })

    check_target_identification(lc, target_name, filter_name)

    # what the TOM's photometry processor reads: time (MJD), filter, magnitude, error
    finite = np.isfinite(lc["mag"]) & np.isfinite(lc["mag_err"])
    unflagged = finite & ((np.asarray(lc["flags"]) & F.SEVERE) == 0)
    tom_csv = _tom_table(lc, unflagged, filter_name)
    # not the star's own light: never for the TOM, not even with tom.include_flagged
    tom_csv_all = _tom_table(lc, finite & ((np.asarray(lc["flags"]) & F.BLENDED_OR_ABSENT) == 0), filter_name)

    rej = Table()
    rej["image"] = [shown(k) for k in sorted(rejected)]
    rej["reason"] = [rejected[k] for k in sorted(rejected)]

    # all stars: mean magnitudes and scatter
    st = Table()
    for c in ("id", "ra", "dec", "x_ref", "y_ref", "flux_ref", "is_target", "detected", "cat_mag"):
        st[c] = stars[c]
    good = usable & ~bad_frames[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        st["mean_flux"] = mean_flux
        st["mean_mag"] = zp - 2.5 * np.log10(mean_flux)
        n_good = good.sum(0)
        dev = np.where(good, (cal - mean_flux[None, :]), 0.0)
        st["rms_flux"] = np.sqrt((dev ** 2).sum(0) / np.maximum(n_good - 1, 1))
        # stars with no good point (off every frame, saturated) have no median error
        median_err = np.full(good.shape[1], np.nan)
        seen = (good & np.isfinite(cal_err)).any(axis=0)
        median_err[seen] = np.nanmedian(np.where(good[:, seen], cal_err[:, seen], np.nan), axis=0)
        st["median_flux_err"] = median_err
    st["n_good"] = n_good
    st["comparison"] = sol.comparison
    st["calibration_chi2"] = sol.star_chi2
    meta = {"zero_point_ref": zp, "zero_point_source": zp_source, "tom_csv_all": tom_csv_all,
            "n_measured": n_f, "n_rejected": len(rejected)}
    return LightCurveProducts(lightcurve=lc, tom_csv=tom_csv, rejected=rej, frames=frames,
                              stars=st, flux=cal.astype(np.float32), flux_err=cal_err.astype(np.float32),
                              flags=cal_flags.astype(np.int16), meta=meta)


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
