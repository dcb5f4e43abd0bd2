"""One page per dataset: ``<target>_<filter>_report.html`` in red_dir.

:func:`write_dataset_report` reads the products of the reduction that just ran
(through :mod:`.products`) and writes one self-contained HTML file: every image is
embedded (the finder chart, the light curve in magnitude and flux, the conditions of
each frame against time, the noise and crowding diagnostics), no script runs, and a
content security policy forbids any load from elsewhere, so the page reads the same
offline, mailed, or attached to an observing log. The data products are linked
relatively (they lie beside it).

When the light-curve stage fails for a reason the user must see (the target
identification looks wrong, no usable frame), the page says so at the top with what
to check, and shows what this run did make: the finder chart, the identification and
astrometry, every rejected frame with its reason (from the per-frame records), the
run's warnings. Light-curve files left by an earlier reduction are only linked, and
labelled as such.

A product that is missing or unreadable makes its section say so; the page is still
written. Nothing here knows of Luigi: the light-curve task calls
:func:`write_dataset_report` once at its end.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..dataset import LOG_NAME, RECORD_NAME, UPLOAD_RECORD_NAME, atomic_path, catalogue_path, config_path, read_json
from ..photometry import flags as F
from ..photometry.lightcurve import IdentificationError
from . import figures, products as P
from ._html import Html, document, esc, facts_table, link, mjd_utc, number, png_data_uri, table, utc_now

__all__ = ["write_dataset_report", "render_dataset_page", "gather_facts", "DatasetFacts"]

#: Products linked at the foot of the page: (key of product_names or a file name, what it is).
_LINKED = [("lc_ecsv", "light curve (ECSV: every point, flags, per-frame conditions)"),
           ("lc_csv", "light curve for the TOM (CSV: unflagged points)"),
           ("rejected", "rejected frames and why (CSV)"),
           ("all_stars", "all stars' time series (FITS: FRAMES, STARS, FLUX, FLUX_ERR, FLAGS)"),
           ("finder_png", "finder chart (PNG)"), ("lc_png", "light-curve plot (PNG)"),
           ("noise_png", "noise diagnostic (PNG)"), ("crowding_png", "residuals against seeing (PNG)"),
           (LOG_NAME, "the dataset's log (every run)"), (RECORD_NAME, "what the last finished reduction was made of"),
           (UPLOAD_RECORD_NAME, "what was sent to the TOM"), ("photometry/catalogue.fits", "the star catalogue")]


@dataclass
class DatasetFacts:
    """What the page is made of; a product that could not be read is None, and
    `problems[key]` says why."""

    red: Path
    target: str
    names: dict[str, str]
    run_id: str | None
    failure: BaseException | None = None
    problems: dict[str, str] = field(default_factory=dict)
    lc: P.LightCurve | None = None
    stars: P.AllStars | None = None
    cat: P.CatalogueFacts | None = None
    rejected: list[P.Rejection] | None = None
    n_measured: int | None = None
    log: P.RunLog | None = None

    def path(self, key: str) -> Path:
        return self.red / self.names.get(key, key)

    @property
    def title(self) -> str:
        return f"{self.target} {self.filter_name}"

    @property
    def filter_name(self) -> str:
        if self.lc is not None and self.lc.meta.get("filter"):
            return str(self.lc.meta["filter"])
        return self.cat.filter_name if self.cat is not None and self.cat.filter_name else "?"


def _read(facts: DatasetFacts, key: str, reader, *args):
    """reader(*args), or None with the reason in facts.problems[key]."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # the page says what is wrong; no reader's warning on the console
            return reader(*args)
    except FileNotFoundError:
        facts.problems[key] = "not written"
    except Exception as exc:
        facts.problems[key] = f"cannot be read ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
    return None


def gather_facts(red_dir: Path, target_name: str, names: dict[str, str], run_id: str | None,
                 failure: BaseException | None = None) -> DatasetFacts:
    """Read what the page shows. With a `failure`, the light-curve products on disk are
    an earlier run's: they are not read; the rejected frames come from the per-frame records."""
    facts = DatasetFacts(Path(red_dir), target_name, dict(names), run_id, failure)
    facts.cat = _read(facts, "catalogue", P.read_catalogue, catalogue_path(facts.red))
    facts.log = _read(facts, LOG_NAME, P.read_run_log, facts.red / LOG_NAME, run_id)
    if failure is None:
        facts.lc = _read(facts, "lc_ecsv", P.read_lightcurve, facts.path("lc_ecsv"))
        facts.stars = _read(facts, "all_stars", P.read_all_stars, facts.path("all_stars"))
        facts.rejected = _read(facts, "rejected", P.read_rejected, facts.path("rejected"))
        facts.n_measured = facts.stars.n_frames if facts.stars is not None else None
    else:
        outcome = _read(facts, "rejected", P.measurement_outcomes, facts.red)
        if outcome is not None:
            facts.n_measured, facts.rejected = outcome
    return facts


def write_dataset_report(red_dir: Path, target_name: str, names: dict[str, str], run_id: str | None,
                         failure: BaseException | None = None) -> Path:
    """Write ``names['report_html']`` in red_dir atomically; returns its path.
    `names` are the dataset's product names (photometry.lightcurve.product_names),
    `failure` the error that stopped the light curve, if one did."""
    red = Path(red_dir)
    page = render_dataset_page(gather_facts(red, target_name, names, run_id, failure))
    path = red / names["report_html"]
    with atomic_path(path, inside=red) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path


def render_dataset_page(facts: DatasetFacts) -> str:
    body = [f'<h1 id="title"><span id="target-name">{esc(facts.target)}</span> {esc(facts.filter_name)}</h1>',
            f'<p class="small">Reduction run {esc(facts.run_id or "?")}; page written {utc_now()} in '
            f'{esc(str(facts.red))}</p>']
    if facts.failure is not None:
        body.append(_failure_banner(facts))
    body += ["<h2>Summary</h2>", facts_table(_summary_rows(facts), "summary"),
             _configuration(facts), *_figures(facts), _rejected_section(facts), _warnings_section(facts),
             _points_section(facts), _products_section(facts)]
    return document(f"{facts.title}: reduction report", "\n".join(body))


# --------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------


def _failure_banner(facts: DatasetFacts) -> Html:
    what = "The light curve could not be made"
    advice = ("Check the rejected frames below and the run's warnings; fix what they name and run the "
              "reduction again.")
    if isinstance(facts.failure, IdentificationError):
        what = "The target identification looks wrong: no light curve was made"
        advice = ("Open the finder chart below. The green circle and dashed annulus are the aperture and sky "
                  "annulus on the adopted star; the red cross is where the configured coordinates fall. If the "
                  "cross sits on another star than the circle, or the chart says <em>not detected</em> where you "
                  "expect a star, fix target.RA/Dec in reduction_config.yaml (or give a catalogue file) and "
                  "run again: the catalogue is rebuilt when a coordinate changes.")
    return Html(f'<div class="failure" id="failure"><h2>{esc(what)}</h2>'
                f'<p id="failure-reason">{esc(" ".join(str(facts.failure).split()))}</p><p>{advice}</p>'
                f"<p>Light-curve files that may be in the directory are an earlier reduction's, not this "
                f"run's.</p></div>")


def _span(css_id: str, value) -> Html:
    return Html(f'<span id="{css_id}">{esc(value)}</span>')


def _target_rows(facts: DatasetFacts) -> list[list]:
    cat = facts.cat
    if cat is None:
        return [["Target", Html(f"{_span('target', facts.target)}; catalogue: "
                                f"{esc(facts.problems.get('catalogue', '?'))}")]]
    where = ""
    if cat.target_ra_deg is not None and cat.target_dec_deg is not None:
        from astropy.coordinates import Angle

        ra = Angle(cat.target_ra_deg, "deg").to_string("hourangle", sep=":", precision=2, pad=True)
        dec = Angle(cat.target_dec_deg, "deg").to_string("deg", sep=":", precision=1, alwayssign=True, pad=True)
        where = f"RA {ra}, Dec {dec} ({cat.target_ra_deg:.6f}, {cat.target_dec_deg:+.6f} deg) as configured"
    if cat.target_detected:
        found = Html(f'<span class="ok">detected star</span> {number(cat.target_separation_arcsec, ".2f")}" from '
                     f'the coordinates (match radius {number(cat.match_radius_arcsec, ".2f")}")')
    else:
        found = Html(f'<span class="bad">NOT DETECTED</span> on the reference: placed at its coordinates '
                     f'(match radius {number(cat.match_radius_arcsec, ".2f")}")')
    if cat.target_ambiguous:
        found = Html(found + '; <span class="warn">another star nearly as close: see the finder chart</span>')
    return [["Target", Html(f"{_span('target', facts.target)}; {esc(where)}")], ["Identification", found]]


def _frame_rows(facts: DatasetFacts) -> list[list]:
    rows = []
    rejected = "?" if facts.rejected is None else len(facts.rejected)
    rows.append(["Frames", Html(f"{_span('n-measured', '?' if facts.n_measured is None else facts.n_measured)} "
                                f'measured, {_span("n-rejected", rejected)} rejected '
                                f'(<a href="#rejected-frames">list</a>)')])
    lc = facts.lc
    if lc is None:
        rows.append(["Points", f"no light curve ({facts.problems.get('lc_ecsv', 'not made by this run')})"])
        return rows
    c = lc.counts()
    rows.append(["Points", Html(f"{_span('n-points', c.n_points)} in the light curve: "
                                f"{_span('n-good', c.n_good)} unflagged, {_span('n-flagged', c.n_flagged)} with a "
                                f"severe flag (kept in the files, never uploaded), "
                                f"{_span('n-rejected-points', c.n_rejected)} of rejected frames")])
    mjd = lc.column("mjd")
    if len(mjd) and np.isfinite(mjd).any():
        first, last = np.nanmin(mjd), np.nanmax(mjd)
        rows.append(["Time span", f"{mjd_utc(first, False)} to {mjd_utc(last, False)} UTC "
                                  f"({last - first:.2f} days, MJD {first:.4f} to {last:.4f})"])
        k = int(np.nanargmax(mjd))
        row = lc.table[k]
        state = (f"{number(row['mag'], '.3f')} ± {number(row['mag_err'], '.3f')} mag"
                 if np.isfinite(float(row["mag"])) else "no magnitude")
        flags = F.describe(int(row["flags"]))
        rows.append(["Last frame", f"{mjd_utc(last)} UTC: {row['image']}, {state}" + (f" [{flags}]" if flags else "")])
    return rows


def _calibration_rows(facts: DatasetFacts) -> list[list]:
    rows, cat = [], facts.cat
    if cat is not None:
        rows.append(["Reference frame", f"{cat.reference_image or '?'}: FWHM {number(cat.psf_fwhm_arcsec, '.2f')}\", "
                                        f"sky {number(cat.reference_sky_e, '.0f')} e-/pix, "
                                        f"{mjd_utc(cat.reference_mjd)} UTC; {cat.n_stars} catalogue stars"])
        refined = f"refined on {cat.astrometry_n_matched} stars, rms {number(cat.astrometry_rms_arcsec, '.3f')}\"" \
            if cat.astrometry_refined else "not refined on a catalogue (the header WCS as it is)"
        rows.append(["Astrometry", f"{cat.astrometry_source or '?'}: {refined}; WCS 1-sigma used "
                                   f"{number(cat.astrometry_sigma_arcsec, '.2f')}\""])
    if facts.lc is not None:
        meta = facts.lc.meta
        err = number(meta.get("zero_point_ref_err"), none="")
        rows.append(["Zero point", f"{number(meta.get('zero_point_ref'))}{' ± ' + err if err else ''} mag "
                                   f"(reference frame's scale), from {meta.get('zero_point_source', '?')}"])
        mode = {True: "neighbours' light modelled and subtracted", False: "plain apertures"}.get(
            meta.get("neighbour_subtraction"), "?")
        rows.append(["Photometry", f"{mode}; ensemble calibration of order {meta.get('calibration_order', '?')} "
                                   f"from {meta.get('n_comparison_stars', '?')} comparison stars"])
    return rows


def _summary_rows(facts: DatasetFacts) -> list[list]:
    rows = _target_rows(facts)
    instrument = P.reference_instrument(facts.red, facts.cat.reference_image if facts.cat else None)
    rows.append(["Filter, instrument", f"{facts.filter_name}; {instrument or 'instrument not in the reference header'}"])
    rows += _frame_rows(facts) + _calibration_rows(facts)
    rows.append(["TOM upload", _upload_text(facts.red)])
    versions = P.software_versions()
    rows.append(["Software", ", ".join(f"{k} {v}" for k, v in versions.items())])
    return rows


def _upload_text(red: Path) -> str:
    rec = read_json(red / UPLOAD_RECORD_NAME)
    later = " (this run's upload step comes after this page: see the night overview or upload_record.json)"
    if rec is None:
        return "no upload recorded yet" + later
    what = {"uploaded": f"uploaded {rec.get('n_points', '?')} points as data product {rec.get('product_id', '?')}",
            "unchanged": "unchanged since the last upload (not sent again)",
            "skipped": f"skipped: {rec.get('reason', '')}",
            "failed": f"FAILED: {rec.get('error', '')}"}.get(rec.get("status"), str(rec.get("status")))
    return f"last recorded: {what} at {rec.get('time_utc', '?')}" + later


def _configuration(facts: DatasetFacts) -> Html:
    try:
        text = config_path(facts.red).read_text(encoding="utf-8", errors="replace")[:50_000]
    except OSError as exc:
        text = f"cannot be read: {exc.strerror}"
    return Html(f"<details><summary>Configuration (reduction_config.yaml as it is now)</summary>"
                f'<pre id="configuration">{esc(text)}</pre></details>')


def _image(css_id: str, caption: str, found: tuple[bytes | None, str | None]) -> Html:
    png, problem = found
    if png is None:
        return Html(f'<p class="warn" id="{css_id}-missing">{esc(caption)}: {esc(problem or "not available")}</p>')
    return Html(f'<figure id="{css_id}"><img src="{png_data_uri(png)}" alt="{esc(caption.split(":")[0])}">'
                f"<figcaption>{esc(caption)}</figcaption></figure>")


def _png(facts: DatasetFacts, key: str, make=None) -> tuple[bytes | None, str | None]:
    """The PNG of product `key` (read from its file, or made by `make()`), or why it is not there."""
    probe = DatasetFacts(facts.red, facts.target, facts.names, facts.run_id)
    png = _read(probe, key, make or (lambda: facts.path(key).read_bytes()))
    return png, probe.problems.get(key)


def _figures(facts: DatasetFacts) -> list[Html]:
    finder = _image("finder", "Finder chart: aperture and annulus (green) on the adopted star, the configured "
                    "coordinates (red cross), modelled neighbours (blue); its title says how the target was "
                    "identified", _png(facts, "finder_png"))
    if facts.failure is not None:
        return ["<h2>Finder chart</h2>", finder]
    lc, stars = facts.lc, facts.stars
    missing = (None, facts.problems.get("lc_ecsv") or facts.problems.get("all_stars"))
    curve = _image("lightcurve", "Light curve: magnitude and flux (e-/s on the reference frame's scale); grey "
                   "crosses carry a severe flag, open orange circles an informational one, red lines are "
                   "rejected frames",
                   _png(facts, "lc_figure", lambda: figures.lightcurve_png(lc, facts.title)) if lc else missing)
    out = ["<h2>Finder chart and light curve</h2>", Html(f'<div class="pair">{finder}{curve}</div>')]
    out.append("<h2>Conditions per frame</h2>")
    out.append(_image("conditions", "Conditions per frame: seeing, sky, zero point (transparency), airmass, "
                      "alignment, and the target's flux with the neighbours' light subtracted from it, against time",
                      _png(facts, "conditions", lambda: figures.conditions_png(stars.frames, lc, facts.title))
                      if lc and stars else missing))
    out.append("<h2>Diagnostics</h2>")
    out.append(Html('<div class="pair">'
                    + _image("noise", "Noise diagnostic: measured scatter of constant stars against magnitude, with "
                             "the predicted noise (their error bars)", _png(facts, "noise_png"))
                    + _image("residuals", "Residuals against seeing: a trend means neighbours' light leaks into "
                             "the apertures as the seeing changes", _png(facts, "crowding_png"))
                    + "</div>"))
    return out


def _rejected_section(facts: DatasetFacts) -> Html:
    head = '<h2 id="rejected-frames">Rejected frames</h2>'
    if facts.rejected is None:
        return Html(head + f'<p class="warn">The rejected list {esc(facts.problems.get("rejected", "?"))}.</p>')
    if not facts.rejected:
        return Html(head + '<p id="no-rejected">No frame was rejected.</p>')
    rows = [[r.image, r.reason] for r in facts.rejected]
    return Html(head + f"<p>{len(rows)} frames not used, each with its reason:</p>"
                + table(["frame", "reason"], rows, css_id="rejected", row_class="rejected",
                        cell_classes=["image", "reason"]))


def _warnings_section(facts: DatasetFacts) -> Html:
    head = "<h2>Warnings of the last run</h2>"
    if facts.log is None:
        return Html(head + f'<p class="warn">The log {esc(facts.problems.get(LOG_NAME, "?"))}.</p>')
    lines = facts.log.warnings
    if not lines:
        return Html(head + f'<p id="no-warnings">None: run {esc(facts.run_id or "?")} logged no warning.</p>')
    items = "".join(f"<li>{esc(ln)}</li>" for ln in lines)
    summary = f"{len(lines)} warning or error lines of run {esc(facts.run_id or '?')} (the log has them all)"
    return Html(head + f'<details{" open" if len(lines) <= 30 else ""}><summary>{summary}</summary>'
                       f'<ul class="log" id="warnings">{items}</ul></details>')


_POINT_COLUMNS = ["#", "MJD (UTC, mid)", "UTC", "frame", "mag", "mag err", "flux [e-/s]", "flux err", "flags",
                  "FWHM [\"]", "sky [e-]", "zero point", "airmass", "align rms [pix]", "matched", "neighbours [e-/s]"]


def _points_section(facts: DatasetFacts) -> Html:
    lc = facts.lc
    if lc is None:
        return Html("")
    by_mjd = {}
    if facts.stars is not None:
        frames = facts.stars.frames
        by_mjd = {float(m): k for k, m in enumerate(np.asarray(frames["mjd"], float))}
    rows = []
    for k, row in enumerate(lc.table):
        f = by_mjd.get(float(row["mjd"]))
        aln = (number(facts.stars.frames["alignment_rms_pix"][f], ".3f"), str(int(facts.stars.frames["n_matched"][f]))) \
            if f is not None else ("-", "-")
        rows.append([k + 1, number(row["mjd"], ".5f"), mjd_utc(row["mjd"]), row["image"], number(row["mag"], ".4f"),
                     number(row["mag_err"], ".4f"), number(row["flux"], ".1f"), number(row["flux_err"], ".1f"),
                     F.describe(int(row["flags"])), number(row["fwhm_arcsec"], ".2f"), number(row["sky"], ".0f"),
                     number(row["zero_point"], ".3f"), number(row["airmass"], ".3f"), *aln,
                     number(row["neighbour_flux"], ".1f")])
    numeric = [None, "num", None, None] + ["num"] * 4 + [None] + ["num"] * 7
    return Html(f"<h2>Every point</h2><details><summary>{len(rows)} rows of the light curve, in time order "
                f"(the same numbers as the ECSV)</summary>"
                + table(_POINT_COLUMNS, rows, css_id="points", row_class="point", cell_classes=numeric)
                + "</details>")


def _products_section(facts: DatasetFacts) -> Html:
    items = []
    for key, what in _LINKED:
        path = facts.path(key)
        earlier = facts.failure is not None and key in ("lc_ecsv", "lc_csv", "rejected", "all_stars", "lc_png",
                                                         "noise_png", "crowding_png")
        if path.is_file():
            note = " (from an earlier reduction)" if earlier else ""
            items.append(f"<li>{link(path, facts.red, facts.names.get(key, key))}: {esc(what)}{esc(note)}</li>")
        else:
            items.append(f'<li class="small">{esc(facts.names.get(key, key))}: {esc(what)}: not written</li>')
    return Html('<h2>Data products</h2><ul id="products">' + "".join(items) + "</ul>")
