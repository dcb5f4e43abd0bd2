"""What a new user meets in the first hour: a quiet `luigi` command (warnings, errors
and the execution summary; Luigi's detail on request, inside the repository and
outside it), no warning from a clean reduction, the demo's whole event and its list
of outputs, the demo tree the manager selects, readable diagnostics."""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import replace

import numpy as np
from astropy.io import fits
from astropy.table import Table

from luigi_phot.config import load_manager_config
from luigi_phot.selection import select_datasets
from luigi_phot.photometry.lightcurve import write_measurement
from luigi_phot.photometry.plots import binned_median
from luigi_phot.report import describe_outputs
from luigi_phot.synthetic import TRUTH_NAME, generate_dataset, paczynski_magnification
from tests.conftest import CONSOLE_NAME, REPO, reduce_dataset, run_luigi

SUMMARY = "===== Luigi Execution Summary ====="


def _script(name: str):
    """A module of scripts/ (they are not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------
# the console
# --------------------------------------------------------------------------


def test_a_clean_reduction_prints_its_summary_and_no_warning_or_scheduler_detail(reduced_template):
    out = (reduced_template.parent / CONSOLE_NAME).read_text()
    assert out.count(SUMMARY) == 2, out  # the command's own summary only (it opens and closes with this line)
    assert "1 ran successfully" in out and "ReduceDataset(" in out
    for noise in ("DEBUG:", "Informed scheduler", "Warning", "WARNING", "MeasureImage("):
        assert noise not in out, out


def test_log_level_brings_luigis_detail_back(reduced_dataset):
    quiet = reduce_dataset(reduced_dataset)
    assert quiet.returncode == 0 and "1 complete ones were encountered" in quiet.stderr
    assert "Informed scheduler" not in quiet.stderr and len(quiet.stderr.splitlines()) < 15, quiet.stderr
    detail = reduce_dataset(reduced_dataset, "--log-level", "DEBUG")
    assert detail.returncode == 0 and "DEBUG: Checking if ReduceDataset(" in detail.stderr
    assert "INFO: Informed scheduler that task" in detail.stderr and SUMMARY in detail.stderr


def test_outside_the_repository_the_package_sets_the_quiet_console_unless_the_user_chooses(reduced_dataset,
                                                                                           tmp_path):
    user_cfg = tmp_path / "luigi.cfg"
    user_cfg.write_text("[worker]\nkeep_alive = false\n")
    command = ("--module", "luigi_phot", "ReduceDataset", "--red-dir", str(reduced_dataset), "--local-scheduler")
    quiet = run_luigi(*command, cwd=tmp_path, env={"LUIGI_CONFIG_PATH": str(user_cfg)})
    assert quiet.returncode == 0 and SUMMARY in quiet.stderr and "Informed scheduler" not in quiet.stderr
    user_cfg.write_text("[core]\nlog_level = INFO\n")
    detail = run_luigi(*command, cwd=tmp_path, env={"LUIGI_CONFIG_PATH": str(user_cfg)})
    assert detail.returncode == 0 and "INFO: Informed scheduler that task" in detail.stderr
    assert "DEBUG:" not in detail.stderr


def test_header_comments_never_make_astropy_truncate_a_card(tmp_path):
    long_comment = "a comment much longer than any card has room for beside its value, " * 2
    header = {"PIXSCALE": (0.38907383418892105, long_comment), "SKYNOTE": ("x" * 60, long_comment),
              "REJECT": ("y" * 300, "why the frame was rejected"), "SRCVARF": (1.0, "short")}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_measurement(tmp_path / "m.fits", {"flux": np.ones(3, np.float32)}, header)
    hdr = fits.getheader(tmp_path / "m.fits", 1)
    assert hdr["PIXSCALE"] == 0.38907383418892105 and long_comment.startswith(hdr.comments["PIXSCALE"])
    assert len(hdr.comments["PIXSCALE"]) > 30 and hdr["REJECT"] == "y" * 300
    assert hdr.comments["SRCVARF"] == "short"


# --------------------------------------------------------------------------
# the demo and its outputs
# --------------------------------------------------------------------------


def test_every_output_of_a_reduction_is_listed_with_a_summary(reduced_template):
    outputs = describe_outputs(reduced_template)
    record = Table.read(next(reduced_template.glob("*_lc.ecsv")), format="ascii.ecsv")
    for o in outputs:
        assert o.path.exists() and "not written" not in o.summary and "cannot be read" not in o.summary, o
    listed = {o.path for o in outputs}
    from luigi_phot.dataset import read_json

    products = read_json(reduced_template / "reduction_record.json")["products"]
    assert {reduced_template / name for name in products} <= listed
    by_label = {o.label: o.summary for o in outputs}
    assert by_label["light curve (ECSV)"].startswith(f"{len(record)} points")
    assert "zero point 25.000 (default)" in by_label["light curve (ECSV)"]
    assert "median measured RMS / predicted" in by_label["noise diagnostic"]


def test_the_demo_dataset_shows_a_whole_event(tmp_path):
    """Baseline at both ends, a peak inside the span, and a rise and a fall each sampled
    by several frames (the frames are tiny here; the times and the event are the demo's)."""
    cfg = replace(_script("demo").demo_config(), shape=(96, 96), n_stars=30, bad_column=None, n_variables=0,
                  n_saturated=0)
    generate_dataset(tmp_path / "ip", cfg)
    truth = Table.read(tmp_path / "ip" / TRUTH_NAME, format="ascii.ecsv")
    event = truth.meta["event"]
    t = np.sort(np.asarray(truth["mjd_mid"], float))
    a = paczynski_magnification(t, event["t0_mjd"], event["tE_days"], event["u0"])
    assert a[0] < 1.02 and a[-1] < 1.02 and a.max() > 3.0
    peak = int(np.argmax(a))
    rising, falling = np.diff(a[: peak + 1]), np.diff(a[peak:])
    assert (rising > 0.02).sum() >= 3 and (falling < -0.02).sum() >= 3


def test_the_demo_tree_is_recent_and_its_manager_configuration_selects_every_dataset(tmp_path, capsys):
    assert _script("demo_tree").main(["--out", str(tmp_path / "tree"), "--size", "96", "--frames", "2"]) == 0
    printed = capsys.readouterr().out
    assert "scripts/luigid.sh start" in printed and "http://127.0.0.1:8082/" in printed
    cfg = load_manager_config(tmp_path / "tree" / "config" / "reduction_manager_config.yaml")
    selection = select_datasets(cfg)
    assert selection.group == "recent" and selection.problems == []
    names = sorted(ds.name for ds in selection.datasets)
    assert len(names) == selection.n_found == 5
    assert {n.split("/")[1] for n in names} == {"sinistro", "qhy"} and len({n.split("/")[0] for n in names}) == 2


# --------------------------------------------------------------------------
# diagnostics
# --------------------------------------------------------------------------


def test_the_predicted_noise_curve_follows_the_trend_through_odd_stars():
    rng = np.random.default_rng(3)
    mag = np.sort(rng.uniform(15.7, 21.5, 1200))
    trend = 0.002 * 10 ** (0.2 * (mag - 16))
    odd = rng.random(mag.size) < 0.08  # stars whose error bars a neighbour inflates
    centre, median = binned_median(mag, np.where(odd, 5 * trend, trend))
    expected = 0.002 * 10 ** (0.2 * (centre - 16))
    assert np.all(np.abs(median / expected - 1) < 0.1)
    assert np.all(np.diff(centre) > 0) and np.all(np.diff(median) > 0)
    assert centre[0] < 16.2 and centre[-1] > 21.2  # the whole range, the sparse bright end included


def test_a_python_warning_in_a_stage_is_one_line_in_the_dataset_log(tmp_path):
    from luigi_phot.dataset import LOG_NAME
    from luigi_phot.tasks.base import warnings_to_log
    from luigi_phot.tasks.measure import MeasureImage

    class Probe(MeasureImage):
        @warnings_to_log
        def run(self):
            for _ in range(3):  # the same warning three times: one line
                np.log(np.zeros(2))
            warnings.warn("a frame with an odd header", UserWarning)

    Probe(red_dir=str(tmp_path), run_id="r1", image="f.fits").run()
    lines = (tmp_path / LOG_NAME).read_text().splitlines()
    assert len(lines) == 2 and all(" WARNING " in ln and "[r1] Probe: f.fits: " in ln for ln in lines), lines
    assert "RuntimeWarning: divide by zero encountered in log (test_first_hour.py:" in lines[0]
    assert "UserWarning: a frame with an odd header (test_first_hour.py:" in lines[1]
