"""generate_dataset: one synthetic dataset with its truth tables, from plan to files."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
from astropy import units as u
from astropy.table import Table

from .config import CONFIG_NAME, GeneratedDataset, LCO_SITES, STARS_NAME, SyntheticConfig, TRUTH_NAME
from .fits_writing import _prepare_red_dir, _sci_header, _write_frame, _write_plain_frame, _write_reduction_config
from .plan import _Frame, _make_plan, _Plan
from .render import _render_frame
from .sky import paczynski_magnification


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
        path = _write_one_frame(cfg, plan, frame, out, red_dir)
        paths.append(path)
        rows.append(_truth_row(cfg, plan, frame, out, path))
        if progress is not None:
            progress(frame.index + 1, cfg.n_frames, path)
        del out
    truth = _truth_table(cfg, plan, rows)
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


def _write_one_frame(cfg: SyntheticConfig, plan: _Plan, frame: _Frame, out: dict, red_dir: Path) -> Path:
    """The frame's file: BANZAI-style (SCI, BPM, ERR; fpack'ed or not) or plain FITS in ADU."""
    if cfg.plain_fits_adu:
        path = red_dir / frame.name.replace(".fits.fz", ".fits")
        _write_plain_frame(path, _sci_header(cfg, plan, frame), out["sci"], cfg.gain_e_per_adu)
    else:
        path = red_dir / frame.name
        dither = 1 + (cfg.seed * 7919 + 2 * frame.index) % 9999
        _write_frame(path, _sci_header(cfg, plan, frame), out["sci"], out["bpm"], out["err"],
                     frame.compressed, dither)
    return path


def _truth_row(cfg: SyntheticConfig, plan: _Plan, frame: _Frame, out: dict, path: Path) -> dict:
    """One frame's row of the truth table."""
    # header WCS error at the target, in arcsec (NaN: no WCS in the header)
    hx, hy = frame.wcs_header.wcs_world2pix([[plan.target_ra, plan.target_dec]], 0)[0]
    wcs_err = math.hypot(hx - out["target_x"], hy - out["target_y"]) * cfg.pixel_scale_arcsec
    if not frame.has_wcs:
        wcs_err = float("nan")
    mjd_mid = frame.mjd_start + cfg.exptime_s / 2 / 86400.0
    row = {
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
    }
    if plan.target_column is not None:
        row["target_column_offset_pix"] = out["target_x"] - plan.target_column
    return row


#: units of the truth table's columns
_TRUTH_UNITS = {"mjd_start": u.day, "mjd_mid": u.day, "exptime_s": u.s, "seeing_arcsec": u.arcsec,
                "fwhm_pix": u.pix, "psf_angle_deg": u.deg, "cloud_mag": u.mag,
                "sky_e_per_pix": u.electron / u.pix, "offset_x_pix": u.pix, "offset_y_pix": u.pix,
                "rotation_deg": u.deg, "target_x_pix": u.pix, "target_y_pix": u.pix,
                "target_flux_e_per_s": u.electron / u.s, "header_wcs_error_arcsec": u.arcsec,
                "target_column_offset_pix": u.pix}


def _truth_table(cfg: SyntheticConfig, plan: _Plan, rows: list[dict]) -> Table:
    """The truth table: one row per frame, units, and what the columns mean in its meta."""
    truth = Table(rows=rows)
    for name, unit in _TRUTH_UNITS.items():
        if name in truth.colnames:
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
    return truth
