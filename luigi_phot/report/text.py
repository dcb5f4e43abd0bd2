"""What a reduced dataset's outputs hold, one line each: the list `make demo` prints,
and what a user wants to know before opening the files.

:func:`describe_outputs` reads only what the reduction wrote (through the readers of
:mod:`.products`) and never fails on a missing or unreadable file: that file's line
says so.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..dataset import LOG_NAME, RECORD_NAME, UPLOAD_RECORD_NAME, catalogue_path, read_json
from . import products as P

__all__ = ["Output", "describe_outputs", "format_outputs", "record_product_names"]


@dataclass(frozen=True)
class Output:
    label: str
    path: Path
    summary: str


def _light_curve(path: Path) -> str:
    lc = P.read_lightcurve(path)
    mag, mjd = lc.column("mag"), lc.column("mjd")
    counts, good = lc.counts(), lc.good()
    text = f"{counts.n_points} points ({counts.n_flagged + counts.n_rejected} flagged) over {np.ptp(mjd):.1f} days"
    if good.any():
        brightest = int(np.argmin(np.where(good, mag, np.inf)))
        text += (f"; {np.max(mag[good]):.2f} mag faintest, {mag[brightest]:.2f} brightest "
                 f"(MJD {mjd[brightest]:.2f})")
    zp, source = lc.meta.get("zero_point_ref"), lc.meta.get("zero_point_source", "?")
    if zp is not None:
        text += f"; zero point {zp:.3f} ({source})"
    return text


def _rejected(path: Path) -> str:
    rejected = P.read_rejected(path)
    if not rejected:
        return "no frame rejected"
    return f"{len(rejected)} frames rejected, e.g. {rejected[0].image}: {rejected[0].reason}"


def _all_stars(path: Path) -> tuple[str, str]:
    """The all-stars file's line, and the noise diagnostic's (from the same STARS table)."""
    stars = P.read_all_stars(path)
    noise = (f"{stars.n_constant} constant stars; median measured RMS / predicted = {stars.noise_ratio:.2f}"
             if stars.noise_ratio is not None else "no constant star with 3 good points")
    return f"{stars.n_stars} stars x {stars.n_frames} frames (calibrated FLUX, FLUX_ERR, FLAGS)", noise


def _catalogue(path: Path) -> str:
    cat = P.read_catalogue(path)
    return f"{cat.n_stars} stars measured on every frame; reference frame {cat.reference_image or '?'}"


def _log(path: Path, run_id: str | None) -> str:
    log = P.read_run_log(path, run_id)
    return f"{len(log.lines)} lines from the last run ({len(log.warnings)} warnings or errors)"


def _fwhm(path: Path) -> str:
    fwhm = P.read_lightcurve(path).column("fwhm_arcsec")
    fwhm = fwhm[np.isfinite(fwhm)]
    seeing = f", seeing {fwhm.min():.1f}-{fwhm.max():.1f}\"" if fwhm.size else ""
    return f"residuals of constant stars and the target against the frames' FWHM{seeing}"


def _finder(catalogue: Path) -> str:
    """How the target was identified, from the catalogue's TGT/AST cards."""
    cat = P.read_catalogue(catalogue)
    how = "detected star" if cat.target_detected else "NOT DETECTED: placed at its coordinates"
    ambiguous = "; another star nearly as close (see the chart)" if cat.target_ambiguous else ""
    separation = cat.target_separation_arcsec if cat.target_separation_arcsec is not None else float("nan")
    return (f"target: {how}, {separation:.2f}\" from its coordinates; "
            f"astrometry {cat.astrometry_source or '?'}{ambiguous}")


def _report(path: Path) -> str:
    head = path.read_text(encoding="utf-8", errors="replace")[:4000]
    state = "says the light curve FAILED (open it for why)" if 'class="failure"' in head else \
        "summary, finder chart, light curve, conditions per frame, diagnostics, rejected frames, warnings"
    return f"one page for a browser (self-contained, offline): {state}"


def _line(label: str, path: Path, summarise) -> Output:
    if not path.exists():
        return Output(label, path, "not written")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a summary never prints a reader's warnings
            return Output(label, path, summarise())
    except Exception as exc:  # the line says what is wrong; the other lines still print
        return Output(label, path, f"cannot be read ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})")


def record_product_names(red: Path, record: dict | None = None) -> dict[str, str]:
    """The product names of the dataset's last finished reduction ({} when there is none)."""
    from ..photometry.lightcurve import product_names

    record = read_json(red / RECORD_NAME) if record is None else record
    lc_name, target = (record or {}).get("lightcurve") or "", (record or {}).get("target") or ""
    if lc_name.startswith(f"{target}_") and lc_name.endswith("_lc.ecsv"):
        try:
            return product_names(target, lc_name[len(target) + 1: -len("_lc.ecsv")])
        except ValueError:
            return {}
    return {}


def describe_outputs(red_dir: Path) -> list[Output]:
    """Every output of the dataset's last reduction, with a one-line summary each."""
    red = Path(red_dir)
    record = read_json(red / RECORD_NAME) or {}
    names = record_product_names(red, record)
    path = {key: red / name for key, name in names.items()}
    stars_line: dict[str, str] = {}

    def all_stars(part: int) -> str:
        if not stars_line:
            stars_line["all"], stars_line["noise"] = _all_stars(path["all_stars"])
        return stars_line["all" if part == 0 else "noise"]

    out = []
    if names:
        out += [_line("report (HTML)", path["report_html"], lambda: _report(path["report_html"])),
                _line("light curve (ECSV)", path["lc_ecsv"], lambda: _light_curve(path["lc_ecsv"])),
                _line("light curve for the TOM (CSV)", path["lc_csv"],
                      lambda: f"{P.count_csv_rows(path['lc_csv'])} unflagged points (time, filter, magnitude, "
                              f"error) for the TOM"),
                _line("finder chart", path["finder_png"], lambda: _finder(catalogue_path(red))),
                _line("light-curve plot", path["lc_png"], lambda: "magnitude against time, flagged points in grey"),
                _line("noise diagnostic", path["noise_png"], lambda: all_stars(1)),
                _line("crowding diagnostic", path["crowding_png"], lambda: _fwhm(path["lc_ecsv"])),
                _line("rejected frames", path["rejected"], lambda: _rejected(path["rejected"])),
                _line("all-stars time series", path["all_stars"], lambda: all_stars(0))]
    frames = P.measurement_dir_in_use(red)
    out += [_line("star catalogue", catalogue_path(red), lambda: _catalogue(catalogue_path(red))),
            _line("per-frame measurements", frames,
                  lambda: f"{len(list(frames.glob('*.phot.fits')))} tables, one per frame (all stars)"),
            _line("log", red / LOG_NAME, lambda: _log(red / LOG_NAME, record.get("run_id"))),
            _line("reduction record", red / RECORD_NAME,
                  lambda: f"run {record.get('run_id')}: {record.get('n_measured')} frames measured, "
                          f"{record.get('n_rejected')} rejected, finished {record.get('finished_utc')}"),
            _line("upload record", red / UPLOAD_RECORD_NAME, lambda: _upload(red / UPLOAD_RECORD_NAME))]
    return out


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
