"""The dataset's page (<target>_<filter>_report.html), opened in a real headless Chromium
(tests/browser.py): after a reduction of a dataset with bad frames among good ones, every
image loads, the page raises no error, and the numbers it shows (points, measured and
rejected frames, each rejected frame's reason, every point) are the files'. A page
whose products are missing or damaged still says what it can.

The dataset is the suite's reduced standard dataset (tests/conftest.py) with bad frames
added and reduced again: only the new frames are read (each rejected at once) and the
light curve rebuilt.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time

from luigi_phot.dataset import RECORD_NAME, read_json
from luigi_phot.photometry import flags as F
from luigi_phot.photometry.lightcurve import IdentificationError, product_names
from luigi_phot.report import write_dataset_report
from tests.browser import IMAGES_SETTLED
from tests.conftest import SMALL, copy_dataset, reduce_dataset

pytestmark = pytest.mark.slow

TARGET = SMALL.target_name
NAMES = product_names(TARGET, "ip")
#: a frame name that is HTML: the page must show it as text
MARKUP_NAME = "<img src=x onerror=alert(1)>.fits"

#: What the page shows, read in the browser after every image has settled.
PAGE_FACTS = IMAGES_SETTLED + """
const text = id => { const e = document.getElementById(id); return e ? e.textContent : null; };
return {images, target: text('target-name'), failure: text('failure-reason'),
  numbers: Object.fromEntries(['n-points', 'n-good', 'n-flagged', 'n-rejected-points', 'n-measured', 'n-rejected']
    .map(id => [id, text(id)])),
  rejected: Array.from(document.querySelectorAll('#rejected tr.rejected')).map(
    tr => [tr.querySelector('.image').textContent, tr.querySelector('.reason').textContent]),
  points: Array.from(document.querySelectorAll('#points tr.point')).map(
    tr => Array.from(tr.cells).map(c => c.textContent)),
  links: Array.from(document.querySelectorAll('#products a')).map(a => a.href),
  summary: document.getElementById('summary').innerText};"""


def _frame_from(red: Path, source: str, name: str, minutes: float, edit) -> None:
    """A frame made from `source` by `edit(hdul)`, starting `minutes` later."""
    with fits.open(red / source) as hdul:
        hdul = fits.HDUList([h.copy() for h in hdul])
    header = hdul["SCI"].header
    start = Time(header["DATE-OBS"], format="isot", scale="utc") + minutes * u.min
    header["DATE-OBS"], header["MJD-OBS"] = start.isot, start.mjd
    edit(hdul)
    hdul.writeto(red / name)


def add_bad_frames(red: Path) -> dict[str, str]:
    """Bad frames among the good ones: name -> the start of the reason expected."""
    plain = sorted(p.name for p in red.glob("*.fits"))[1]
    (red / "bad_empty.fits").write_bytes(b"")
    (red / MARKUP_NAME).write_bytes(b"")
    (red / "bad_truncated.fits").write_bytes((red / plain).read_bytes()[:100_000])

    def other_filter(hdul):
        hdul["SCI"].header["FILTER"] = "rp"
    _frame_from(red, plain, "bad_otherfilter.fits", 4, other_filter)   # rejected with a time: a light-curve row
    return {"bad_empty.fits": "empty file", MARKUP_NAME: "empty file", "bad_truncated.fits": "",
            "bad_otherfilter.fits": "filter 'rp' is not the dataset's 'ip'"}


@pytest.fixture(scope="module")
def bad_frames_run(reduced_template, tmp_path_factory):
    red = copy_dataset(reduced_template, tmp_path_factory.mktemp("report") / "ip")
    expected = add_bad_frames(red)
    done = reduce_dataset(red, "--workers", "2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {"red": red, "expected": expected}


def _csv_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))[1:]


def test_the_page_renders_with_every_image_and_shows_the_files_numbers(bad_frames_run, chromium):
    red = bad_frames_run["red"]
    page = red / NAMES["report_html"]
    assert page.is_file() and NAMES["report_html"] in read_json(red / RECORD_NAME)["products"]
    visit = chromium.visit(page.as_uri(), PAGE_FACTS)
    assert visit.errors == []
    seen = visit.value
    assert {i["id"] for i in seen["images"]} == {"finder", "lightcurve", "conditions", "noise", "residuals"}
    assert all(i["width"] > 0 and i["height"] > 0 and i["src"].startswith("data:image/png") for i in seen["images"])
    assert seen["target"] == TARGET and seen["failure"] is None

    lc = Table.read(red / NAMES["lc_ecsv"], format="ascii.ecsv")
    flags = np.asarray(lc["flags"])
    severe, rejected = (flags & F.SEVERE) != 0, (flags & F.FRAME_REJECTED) != 0
    with fits.open(red / NAMES["all_stars"]) as hdul:
        n_measured = len(hdul["FRAMES"].data)
    rejected_rows = _csv_rows(red / NAMES["rejected"])
    assert seen["numbers"] == {
        "n-points": str(len(lc)), "n-good": str(int((np.isfinite(lc["mag"]) & ~severe).sum())),
        "n-flagged": str(int((severe & ~rejected).sum())), "n-rejected-points": str(int(rejected.sum())),
        "n-measured": str(n_measured), "n-rejected": str(len(rejected_rows))}
    assert rejected.sum() >= 1 and n_measured == read_json(red / RECORD_NAME)["n_measured"]
    # every rejected frame with its reason, as in the file; the bad frames among them
    assert seen["rejected"] == rejected_rows
    shown = dict(seen["rejected"])
    for name, reason in bad_frames_run["expected"].items():
        assert shown[name].startswith(reason), (name, shown[name])
    # every point, in time order, with the file's frame name and magnitude
    lc.sort("mjd")
    assert [row[3] for row in seen["points"]] == list(lc["image"])
    assert [row[4] for row in seen["points"]] == [f"{m:.4f}" if np.isfinite(m) else "-" for m in lc["mag"]]
    # the links to the products resolve to files beside the page
    linked = {Path(unquote(urlparse(href).path)) for href in seen["links"]}
    assert {red / NAMES[k] for k in ("lc_ecsv", "lc_csv", "all_stars", "rejected")} | {red / "aperture_pipeline.log"} \
        <= linked
    assert all(p.is_file() for p in linked)
    assert "header" in seen["summary"] and "zero point" in seen["summary"].lower()


def test_a_frame_name_that_is_markup_is_shown_as_text(bad_frames_run, chromium):
    page = bad_frames_run["red"] / NAMES["report_html"]
    visit = chromium.visit(page.as_uri(), "return {markup: document.querySelectorAll('#rejected img').length, "
                                          "cells: Array.from(document.querySelectorAll('#rejected .image'))"
                                          ".map(c => c.textContent)};")
    assert visit.errors == []
    assert visit.value["markup"] == 0 and MARKUP_NAME in visit.value["cells"]
    assert "<img src=x" not in page.read_text()


def test_missing_or_damaged_products_are_named_on_a_page_that_is_still_written(bad_frames_run, tmp_path, chromium):
    red = copy_dataset(bad_frames_run["red"], tmp_path / "ip")
    (red / NAMES["noise_png"]).unlink()
    (red / NAMES["all_stars"]).write_bytes(b"SIMPLE  = garbage")
    path = write_dataset_report(red, TARGET, NAMES, "run-x")
    visit = chromium.visit(path.as_uri(), IMAGES_SETTLED + """return {images,
        noise: document.getElementById('noise-missing').textContent,
        conditions: document.getElementById('conditions-missing').textContent,
        measured: document.getElementById('n-measured').textContent};""")
    assert visit.errors == []
    assert {i["id"] for i in visit.value["images"]} == {"finder", "lightcurve", "residuals"}
    assert visit.value["noise"].endswith("not written")
    assert "cannot be read" in visit.value["conditions"] and visit.value["measured"] == "?"


def test_a_failed_light_curve_gets_a_page_saying_why_with_this_runs_rejections(bad_frames_run, tmp_path, chromium):
    red = copy_dataset(bad_frames_run["red"], tmp_path / "ip")
    shutil.copy2(red / NAMES["lc_ecsv"], tmp_path / "earlier_lc.ecsv")
    failure = IdentificationError("the target identification looks wrong: 9 of 14 target points are not the "
                                  "star's own light")
    path = write_dataset_report(red, TARGET, NAMES, "run-y", failure)
    visit = chromium.visit(path.as_uri(), PAGE_FACTS)
    assert visit.errors == []
    seen = visit.value
    assert seen["failure"] == str(failure)
    assert [i["id"] for i in seen["images"]] == ["finder"] and seen["images"][0]["width"] > 0
    # the rejected frames come from this run's per-frame records, not from the earlier rejected list
    assert sorted(seen["rejected"]) == sorted(_csv_rows(red / NAMES["rejected"]))
    assert seen["numbers"]["n-points"] is None and seen["points"] == []
    assert "from an earlier reduction" in path.read_text()


def test_the_report_package_imports_nothing_of_luigi_or_the_tasks():
    """The pages are plain code over the products (README section 3a): the tasks call them."""
    import ast

    import luigi_phot.report

    for path in Path(luigi_phot.report.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = ["." * node.level + (node.module or "")]
            else:
                continue
            for module in modules:
                assert module.split(".")[0] != "luigi" and "tasks" not in module.split("."), (path.name, module)
