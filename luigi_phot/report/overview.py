"""The night overview: ``log_dir/index.html``, rewritten at the end of every
ReductionManager run from that run's summary (``log_dir/manager_runs/<run>/summary.json``)
and each dataset's own records.

One row per dataset the run selected: how its reduction went in this run (reduced,
up to date, skipped, failed, with the reason), when its last reduction finished,
its last frame in the light curve, the number of points, its rejected frames, its
last TOM upload, and a link to its page (``<target>_<filter>_report.html``, which
explains a failure when there was one). Reading is cheap (JSON records, line counts):
an overview of a few hundred datasets costs well under a second.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..dataset import RECORD_NAME, UPLOAD_RECORD_NAME, atomic_path, read_json
from . import products as P
from ._html import Html, document, esc, link, mjd_utc, table, utc_now
from .text import record_product_names

__all__ = ["INDEX_NAME", "DatasetRow", "dataset_row", "write_night_overview", "render_overview"]

INDEX_NAME = "index.html"
_MANAGER_LOG_NAME = "arcon_pipeline.log"


@dataclass(frozen=True)
class DatasetRow:
    name: str                      # target/instrument/filter
    red_dir: Path
    status: str                    # this run: reduced, up_to_date, skipped or failed
    reason: str
    took_s: float | None
    report: Path | None            # the dataset's page, when there is one
    finished_utc: str | None       # its last finished reduction (reduction_record.json)
    last_frame_mjd: float | None   # the newest frame used in that reduction
    n_points: int | None           # rows of its light curve
    n_uploadable: int | None       # rows of its TOM CSV
    n_rejected: int | None
    upload: dict | None            # upload_record.json


def _report_of(red: Path, names: dict[str, str]) -> Path | None:
    """The dataset's page: the one its record names, else the newest in red_dir (a first
    reduction that failed has a page but no record)."""
    if names and (red / names["report_html"]).is_file():
        return red / names["report_html"]
    pages = [p for p in red.glob("*_report.html") if p.is_file()]
    return max(pages, key=lambda p: p.stat().st_mtime_ns) if pages else None


def _count(counter, path: Path) -> int | None:
    try:
        return counter(path)
    except OSError:
        return None


def dataset_row(outcome: dict) -> DatasetRow:
    """One dataset's row from its outcome in a manager run's summary and its records."""
    red = Path(outcome["dataset"]["red_dir"])
    record = read_json(red / RECORD_NAME) or {}
    names = record_product_names(red, record)
    frames = record.get("frames") if isinstance(record.get("frames"), dict) else {}
    used = [P.finite_or_none(f.get("mjd")) for f in frames.values() if isinstance(f, dict) and not f.get("rejected")]
    used = [m for m in used if m is not None]
    took = None
    if outcome.get("started_unix") is not None and outcome.get("finished_unix") is not None:
        took = float(outcome["finished_unix"]) - float(outcome["started_unix"])
    return DatasetRow(
        name=str(outcome["dataset"].get("name", red.name)), red_dir=red, status=str(outcome.get("status", "?")),
        reason=str(outcome.get("reason") or ""), took_s=took, report=_report_of(red, names),
        finished_utc=record.get("finished_utc"), last_frame_mjd=max(used) if used else None,
        n_points=_count(P.count_lightcurve_rows, red / names["lc_ecsv"]) if names else None,
        n_uploadable=_count(P.count_csv_rows, red / names["lc_csv"]) if names else None,
        n_rejected=record.get("n_rejected"), upload=read_json(red / UPLOAD_RECORD_NAME))


def write_night_overview(log_dir: Path, summary_path: Path) -> Path:
    """Write ``log_dir/index.html`` (atomically) from a manager run's summary.json."""
    log_dir = Path(log_dir)
    summary = json.loads(Path(summary_path).read_text(encoding="utf-8"))
    rows = [dataset_row(o) for o in summary.get("outcomes", [])]
    path = log_dir / INDEX_NAME
    with atomic_path(path, inside=log_dir) as tmp:
        tmp.write_text(render_overview(summary, rows, log_dir), encoding="utf-8")
    return path


_STATUS = {"reduced": "reduced", "up_to_date": "up to date", "skipped": "skipped", "failed": "FAILED"}


def _upload_cell(upload: dict | None) -> str:
    if not upload:
        return "-"
    status = str(upload.get("status", "?"))
    detail = {"uploaded": f"{upload.get('n_points', '?')} points", "failed": upload.get("error", ""),
              "skipped": upload.get("reason", "")}.get(status, "")
    return f"{status} {upload.get('time_utc', '')}" + (f": {detail}" if detail else "")


def _row_cells(row: DatasetRow, log_dir: Path) -> list:
    page = link(row.report, log_dir, row.name) if row.report is not None else Html(f"{esc(row.name)} (no page)")
    status = _STATUS.get(row.status, row.status) + (f" in {row.took_s:.0f} s" if row.took_s is not None else "")
    css = "bad" if row.status == "failed" else "warn" if row.status == "skipped" else "ok"
    points = "-" if row.n_points is None else f"{row.n_points}" + (
        f" ({row.n_uploadable} for the TOM)" if row.n_uploadable is not None else "")
    return [Html(f'<span class="dataset" data-dataset="{esc(row.name)}">{page}</span>'),
            Html(f'<span class="status {css}">{esc(status)}</span>'), row.finished_utc or "never",
            mjd_utc(row.last_frame_mjd, False) if row.last_frame_mjd is not None else "-", points,
            "-" if row.n_rejected is None else row.n_rejected, _upload_cell(row.upload), row.reason]


def render_overview(summary: dict, rows: list[DatasetRow], log_dir: Path) -> str:
    counts = summary.get("counts", {})
    count_text = ", ".join(f"{counts.get(s, 0)} {_STATUS[s]}" for s in _STATUS)
    head = ["<h1>Night overview</h1>",
            f'<p>Manager run <span id="run-id">{esc(summary.get("run_id", "?"))}</span> on '
            f'{esc(summary.get("host", "?"))}: {esc(summary.get("selection", ""))}; {len(rows)} datasets: '
            f'{esc(count_text)}. Page written {utc_now()}; every run rewrites it.</p>',
            f"<p>The manager's log: {link(log_dir / _MANAGER_LOG_NAME, log_dir)}; configuration "
            f"{esc(summary.get('config', '?'))}.</p>"]
    problems = summary.get("problems") or []
    if problems:
        head.append("<details><summary>Left out of the selection: "
                    f"{len(problems)}</summary><ul>" + "".join(f"<li>{esc(p)}</li>" for p in problems)
                    + "</ul></details>")
    columns = ["dataset (its page)", "this run", "last reduction finished", "last frame used (UTC)", "points",
               "rejected frames", "last TOM upload", "failure or note"]
    body = table(columns, [_row_cells(r, log_dir) for r in rows], css_id="datasets", row_class="dataset-row") \
        if rows else Html('<p id="no-datasets">No dataset was selected in this run.</p>')
    return document("Night overview", "\n".join([*head, body]))
