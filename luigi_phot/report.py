"""What a reduced dataset's outputs hold, one line each: the list `make demo` prints,
and what a user wants to know before opening the files.

:func:`describe_outputs` reads only what the reduction wrote (the light curve, the
all-stars file, the catalogue, the records and the log of the last run) and never
fails on a missing or unreadable file: that file's line says so.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .dataset import LOG_NAME, PRODUCTS_DIR, RECORD_NAME, UPLOAD_RECORD_NAME, catalogue_path, read_json

__all__ = ["Output", "describe_outputs", "format_outputs"]


@dataclass(frozen=True)
class Output:
    label: str
    path: Path
    summary: str


def _light_curve(path: Path) -> str:
    from astropy.table import Table

    from .photometry import flags as F

    lc = Table.read(path, format="ascii.ecsv")
    mag = np.asarray(lc["mag"], float)
    mjd = np.asarray(lc["mjd"], float)
    flagged = (np.asarray(lc["flags"]) & F.SEVERE) != 0
    good = np.isfinite(mag) & ~flagged
    text = f"{len(lc)} points ({int(flagged.sum())} flagged) over {np.ptp(mjd):.1f} days"
    if good.any():
        brightest = int(np.argmin(np.where(good, mag, np.inf)))
        text += (f"; {np.max(mag[good]):.2f} mag faintest, {mag[brightest]:.2f} brightest "
                 f"(MJD {mjd[brightest]:.2f})")
    zp, source = lc.meta.get("zero_point_ref"), lc.meta.get("zero_point_source", "?")
    if zp is not None:
        text += f"; zero point {zp:.3f} ({source})"
    return text


def _tom_csv(path: Path) -> str:
    with open(path, encoding="utf-8") as fh:
        rows = sum(1 for line in fh if line.strip()) - 1
    return f"{rows} unflagged points (time, filter, magnitude, error) for the TOM"


def _rejected(path: Path) -> str:
    from astropy.table import Table

    rej = Table.read(path, format="ascii.csv") if path.stat().st_size else []
    if len(rej) == 0:
        return "no frame rejected"
    first = f"{rej['image'][0]}: {rej['reason'][0]}"
    return f"{len(rej)} frames rejected, e.g. {first}"


def _all_stars(path: Path) -> tuple[str, str]:
    """The all-stars file's line, and the noise diagnostic's (from the same STARS table)."""
    from astropy.io import fits

    with fits.open(path) as hdul:
        n_frames, n_stars = hdul["FLUX"].shape
        stars = hdul["STARS"].data
        ok = (stars["comparison"].astype(bool) & (stars["mean_flux"] > 0) & np.isfinite(stars["rms_flux"])
              & np.isfinite(stars["median_flux_err"]) & (stars["n_good"] >= 3))
        ratio = stars["rms_flux"][ok] / stars["median_flux_err"][ok]
    noise = (f"{int(ok.sum())} constant stars; median measured RMS / predicted = {np.median(ratio):.2f}"
             if ok.any() else "no constant star with 3 good points")
    return f"{n_stars} stars x {n_frames} frames (calibrated FLUX, FLUX_ERR, FLAGS)", noise


def _catalogue(path: Path) -> str:
    from astropy.io import fits

    with fits.open(path) as hdul:
        hdr = hdul[0].header
        n = len(hdul[1].data)
    return f"{n} stars measured on every frame; reference frame {hdr.get('REFIMAGE', '?')}"


def _log(path: Path, run_id: str | None) -> str:
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    mine = [ln for ln in lines if run_id and f"[{run_id}]" in ln] or lines
    warned = sum(1 for ln in mine if re.match(r"^\S+ \S+ (WARNING|ERROR)", ln))
    return f"{len(mine)} lines from the last run ({warned} warnings or errors)"


def _fwhm(path: Path) -> str:
    from astropy.table import Table

    fwhm = np.asarray(Table.read(path, format="ascii.ecsv")["fwhm_arcsec"], float)
    fwhm = fwhm[np.isfinite(fwhm)]
    seeing = f", seeing {fwhm.min():.1f}-{fwhm.max():.1f}\"" if fwhm.size else ""
    return f"residuals of constant stars and the target against the frames' FWHM{seeing}"


def _finder(catalogue: Path) -> str:
    """How the target was identified, from the catalogue's TGT/AST cards."""
    from astropy.io import fits

    hdr = fits.getheader(catalogue, 0)
    how = "detected star" if hdr.get("TGTDET") else "NOT DETECTED: placed at its coordinates"
    ambiguous = "; another star nearly as close (see the chart)" if hdr.get("TGTAMBIG") else ""
    return (f"target: {how}, {hdr.get('TGTSEP', float('nan')):.2f}\" from its coordinates; "
            f"astrometry {hdr.get('ASTSRC', '?')}{ambiguous}")


def _line(label: str, path: Path, summarise) -> Output:
    if not path.exists():
        return Output(label, path, "not written")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a summary never prints a reader's warnings
            return Output(label, path, summarise())
    except Exception as exc:  # the line says what is wrong; the other lines still print
        return Output(label, path, f"cannot be read ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})")


def describe_outputs(red_dir: Path) -> list[Output]:
    """Every output of the dataset's last reduction, with a one-line summary each."""
    from .photometry.lightcurve import product_names

    red = Path(red_dir)
    record = read_json(red / RECORD_NAME) or {}
    lc_name, target = record.get("lightcurve") or "", record.get("target") or ""
    names = {}
    if lc_name.startswith(f"{target}_") and lc_name.endswith("_lc.ecsv"):
        names = product_names(target, lc_name[len(target) + 1: -len("_lc.ecsv")])
    path = {key: red / name for key, name in names.items()}
    stars_line: dict[str, str] = {}

    def all_stars(part: int) -> str:
        if not stars_line:
            stars_line["all"], stars_line["noise"] = _all_stars(path["all_stars"])
        return stars_line["all" if part == 0 else "noise"]

    out = []
    if names:
        out += [_line("light curve (ECSV)", path["lc_ecsv"], lambda: _light_curve(path["lc_ecsv"])),
                _line("light curve for the TOM (CSV)", path["lc_csv"], lambda: _tom_csv(path["lc_csv"])),
                _line("finder chart", path["finder_png"], lambda: _finder(catalogue_path(red))),
                _line("light-curve plot", path["lc_png"], lambda: "magnitude against time, flagged points in grey"),
                _line("noise diagnostic", path["noise_png"], lambda: all_stars(1)),
                _line("crowding diagnostic", path["crowding_png"], lambda: _fwhm(path["lc_ecsv"])),
                _line("rejected frames", path["rejected"], lambda: _rejected(path["rejected"])),
                _line("all-stars time series", path["all_stars"], lambda: all_stars(0))]
    frames = _measurements(red)
    out += [_line("star catalogue", catalogue_path(red), lambda: _catalogue(catalogue_path(red))),
            _line("per-frame measurements", frames,
                  lambda: f"{len(list(frames.glob('*.phot.fits')))} tables, one per frame (all stars)"),
            _line("log", red / LOG_NAME, lambda: _log(red / LOG_NAME, record.get("run_id"))),
            _line("reduction record", red / RECORD_NAME,
                  lambda: f"run {record.get('run_id')}: {record.get('n_measured')} frames measured, "
                          f"{record.get('n_rejected')} rejected, finished {record.get('finished_utc')}"),
            _line("upload record", red / UPLOAD_RECORD_NAME, lambda: _upload(red / UPLOAD_RECORD_NAME))]
    return out


def _measurements(red: Path) -> Path:
    """The directory of the current per-frame tables (the most recently written key)."""
    keys = [d for d in (red / PRODUCTS_DIR / "frames").glob("*") if d.is_dir()]
    return max(keys, key=lambda d: d.stat().st_mtime_ns) if keys else red / PRODUCTS_DIR / "frames"


def _upload(path: Path) -> str:
    rec = json.loads(path.read_text(encoding="utf-8"))
    reason = f": {rec['reason']}" if rec.get("reason") else ""
    return f"upload {rec.get('status', '?')}{reason}"


def format_outputs(outputs: list[Output], base: Path | None = None) -> str:
    """Each output's path (relative to `base` when inside it) and below it, indented,
    its label and summary: for a terminal."""
    lines = []
    for o in outputs:
        path = o.path.relative_to(base) if base is not None and o.path.is_relative_to(base) else o.path
        lines += [f"  {path}", f"      {o.label}: {o.summary}"]
    return "\n".join(lines)
