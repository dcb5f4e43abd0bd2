"""Writing frames (BANZAI-style or plain FITS), their headers and the dataset's reduction_config.yaml."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from astropy.io import fits
from astropy.table import Table

from .config import CONFIG_NAME, LCO_SITES, STARS_NAME, SyntheticConfig, TRUTH_NAME
from .plan import _Frame, _Plan, _format_dec, _format_ra, _iso_from_ms


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
