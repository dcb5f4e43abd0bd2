"""ReduceDataset end to end, through the real `luigi` command: light curve against
the injected event, idempotent reruns, frames added and removed, configuration
changes, the dataset lock, and the untouched inputs."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.table import Table

from luigi_phot.dataset import DIGEST_CACHE_NAME
from luigi_phot.validation import target_figures
from tests.conftest import reduce_dataset

pytestmark = pytest.mark.slow


def _log_since(red: Path, marker_count: int) -> str:
    """The part of aperture_pipeline.log written by the runs after the first `marker_count` runs."""
    text = (red / "aperture_pipeline.log").read_text()
    parts = re.split(r"(?m)^.*========== run ", text)
    return "".join(parts[marker_count + 1:])


def _runs(red: Path) -> int:
    return (red / "aperture_pipeline.log").read_text().count("========== run ")


def _checksums(red: Path) -> dict[str, str]:
    out = {}
    for p in sorted(red.iterdir()):
        if p.is_file() and (p.name.endswith((".fits", ".fz")) or p.name == "reduction_config.yaml"):
            out[p.name] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _snapshot(red: Path) -> dict[str, tuple[int, int]]:
    """Size and mtime of every file of red_dir but the frames' digest cache: that cache is
    keyed by inode and change time, so a copied dataset's first run writes it again (or
    not, when the frames were copied less than 2 s before: not yet settled). Directories
    are left out: the cache's atomic replacement changes its directory's mtime; a file
    added or removed shows among the files."""
    return {str(p.relative_to(red)): (p.stat().st_size, p.stat().st_mtime_ns) for p in red.rglob("*")
            if p.is_file() and p.name != DIGEST_CACHE_NAME}


def _edit_config(red: Path, **photometry) -> None:
    path = red / "reduction_config.yaml"
    data = yaml.safe_load(path.read_text())
    data["photometry"].update(photometry)
    path.write_text(yaml.safe_dump(data))


def test_light_curve_follows_the_injected_event(reduced_template):
    lc = Table.read(next(reduced_template.glob("*_lc.ecsv")), format="ascii.ecsv")
    truth = Table.read(reduced_template / "synthetic_truth.ecsv", format="ascii.ecsv")
    for col in ("mjd", "bjd_tdb", "flux", "flux_err", "mag", "mag_err", "image", "flags", "zero_point",
                "zero_point_err", "fwhm_arcsec", "airmass", "sky"):
        assert col in lc.colnames
    assert len(lc) == len(truth)
    fig = target_figures(lc, truth)
    assert fig.n_points - fig.n_flagged >= 0.9 * len(truth)
    assert fig.slope > 0
    assert fig.std_norm_resid < 2.0, fig
    # the event is seen: the brightest point is well above the faintest
    assert np.nanmax(lc["flux"]) > 2.0 * np.nanmin(lc["flux"])
    csv = Table.read(next(reduced_template.glob("*_lc.csv")), format="ascii.csv")
    assert csv.colnames[:4] == ["time", "filter", "magnitude", "error"]
    assert len(csv) == fig.n_points - fig.n_flagged
    assert next(reduced_template.glob("*_lc.png")).stat().st_size > 10_000
    record = json.loads((reduced_template / "reduction_record.json").read_text())
    assert record["n_measured"] == len(truth) and not (reduced_template / "dataset.lock").exists()


def test_a_second_run_runs_no_task(reduced_dataset):
    before = _snapshot(reduced_dataset)
    t0 = time.perf_counter()
    done = reduce_dataset(reduced_dataset)
    elapsed = time.perf_counter() - t0
    assert done.returncode == 0, done.stderr[-2000:]
    assert "1 complete ones were encountered" in done.stderr + done.stdout
    assert "ran successfully" not in done.stderr + done.stdout
    assert _snapshot(reduced_dataset) == before
    print(f"no-op rerun: {elapsed:.2f} s")


def test_a_new_frame_costs_one_measurement_and_the_inputs_stay_untouched(small_dataset, tmp_path):
    frames = sorted(p for p in small_dataset.iterdir() if p.name.endswith((".fits", ".fz")))
    held = frames[len(frames) // 2]
    parked = tmp_path / held.name
    shutil.move(held, parked)
    sums = _checksums(small_dataset)
    done = reduce_dataset(small_dataset, "--workers", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert _checksums(small_dataset) == sums, "an input file changed"
    lc1 = Table.read(next(small_dataset.glob("*_lc.ecsv")), format="ascii.ecsv")
    catalogue_mtime = (small_dataset / "photometry" / "catalogue.fits").stat().st_mtime_ns

    shutil.move(parked, held)
    done = reduce_dataset(small_dataset)
    assert done.returncode == 0, done.stderr[-3000:]
    second = _log_since(small_dataset, 1)
    measured = re.findall(r"MeasureImage: (\S+): (?:measured|rejected)", second)
    assert measured == [held.name]
    assert "BuildCatalogue" not in second
    assert "BuildLightcurve: light curve" in second
    assert (small_dataset / "photometry" / "catalogue.fits").stat().st_mtime_ns == catalogue_mtime
    lc2 = Table.read(next(small_dataset.glob("*_lc.ecsv")), format="ascii.ecsv")
    assert len(lc2) == len(lc1) + 1 and held.name in list(lc2["image"])
    assert _checksums(small_dataset) == {**sums, held.name: hashlib.sha256(held.read_bytes()).hexdigest()}


def test_a_removed_frame_drops_out_without_new_measurements(reduced_dataset):
    lc1 = Table.read(next(reduced_dataset.glob("*_lc.ecsv")), format="ascii.ecsv")
    gone = str(lc1["image"][3])
    (reduced_dataset / gone).unlink()
    done = reduce_dataset(reduced_dataset)
    assert done.returncode == 0, done.stderr[-3000:]
    second = _log_since(reduced_dataset, _runs(reduced_dataset) - 1)
    assert "MeasureImage" not in second
    lc2 = Table.read(next(reduced_dataset.glob("*_lc.ecsv")), format="ascii.ecsv")
    assert len(lc2) == len(lc1) - 1 and gone not in list(lc2["image"])


def test_an_aperture_change_remeasures_frames_but_keeps_the_catalogue(reduced_dataset):
    cat = reduced_dataset / "photometry" / "catalogue.fits"
    cat_mtime = cat.stat().st_mtime_ns
    lc1 = Table.read(next(reduced_dataset.glob("*_lc.ecsv")), format="ascii.ecsv")
    _edit_config(reduced_dataset, aperture_arcsec=2.6)
    done = reduce_dataset(reduced_dataset, "--workers", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    second = _log_since(reduced_dataset, _runs(reduced_dataset) - 1)
    assert "BuildCatalogue" not in second
    assert len(re.findall(r"MeasureImage: \S+: measured", second)) == len(lc1)
    assert cat.stat().st_mtime_ns == cat_mtime
    lc2 = Table.read(next(reduced_dataset.glob("*_lc.ecsv")), format="ascii.ecsv")
    assert not np.allclose(np.asarray(lc1["flux"]), np.asarray(lc2["flux"]), rtol=1e-6, equal_nan=True)
    # only the current measurements are kept
    assert len(list((reduced_dataset / "photometry" / "frames").iterdir())) == 1


def test_a_tom_label_change_redoes_only_the_upload_step(reduced_dataset):
    path = reduced_dataset / "reduction_config.yaml"
    data = yaml.safe_load(path.read_text())
    data["tom"]["data_label"] = "OTHER"
    path.write_text(yaml.safe_dump(data))
    lc_mtime = next(reduced_dataset.glob("*_lc.ecsv")).stat().st_mtime_ns
    done = reduce_dataset(reduced_dataset)
    assert done.returncode == 0, done.stderr[-3000:]
    second = _log_since(reduced_dataset, _runs(reduced_dataset) - 1)
    assert "UploadToTOM: upload skipped" in second
    assert "MeasureImage" not in second and "BuildLightcurve" not in second
    assert next(reduced_dataset.glob("*_lc.ecsv")).stat().st_mtime_ns == lc_mtime


def test_a_held_lock_refuses_a_second_reduction(small_dataset):
    first = subprocess.Popen(
        [str(Path(sys.executable).parent / "luigi"), "--module", "luigi_phot", "ReduceDataset", "--red-dir",
         str(small_dataset), "--local-scheduler"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lock = small_dataset / "dataset.lock"
        deadline = time.time() + 60
        while not lock.exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert lock.exists(), "the first reduction never took the lock"
        holder = json.loads(lock.read_text())
        second = reduce_dataset(small_dataset, "--no-lock")
        # refused at once, not after waiting for the lock: the first run still holds it
        assert first.poll() is None, "the second run waited until the first had finished"
        out = second.stdout + second.stderr
        assert second.returncode != 0
        assert f"pid {holder['pid']}" in out and holder["host"] in out and "Traceback" not in out
        assert json.loads(lock.read_text())["run_id"] == holder["run_id"], "the second run touched the lock"
    finally:
        out, _ = first.communicate(timeout=300)
    assert first.returncode == 0, out[-3000:]
    assert not (small_dataset / "dataset.lock").exists()


def _write_lock(red: Path, host: str, pid: int, run_id: str = "20260101T000000Z-abcdef") -> None:
    (red / "dataset.lock").write_text(json.dumps({"host": host, "pid": pid, "pid_start": None, "user": "someone",
                                                  "started_utc": "2026-01-01T00:00:00Z", "run_id": run_id}))


def test_a_stale_lock_of_a_dead_process_is_taken_over(small_dataset):
    dead = subprocess.Popen(["true"])
    dead.wait()
    _write_lock(small_dataset, socket.gethostname(), dead.pid)
    done = reduce_dataset(small_dataset)
    assert done.returncode == 0, done.stderr[-3000:]
    log = (small_dataset / "aperture_pipeline.log").read_text()
    assert "took over a stale lock" in log and f"pid {dead.pid}" in log
    assert not (small_dataset / "dataset.lock").exists()


def test_a_lock_from_another_host_is_never_broken(small_dataset):
    _write_lock(small_dataset, "another-host.example", 4242)
    before = _snapshot(small_dataset)
    done = reduce_dataset(small_dataset)
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert "another-host.example" in out and "break the lock by hand" in out and "rm " in out
    assert _snapshot(small_dataset) == before


def test_the_lock_is_released_after_a_failed_run(small_dataset):
    _edit_config(small_dataset, reference_image="no-such-frame.fits")
    done = reduce_dataset(small_dataset)
    assert done.returncode != 0
    out = done.stdout + done.stderr
    assert "no-such-frame.fits" in out and "is not a frame of this dataset" in out
    assert not (small_dataset / "dataset.lock").exists()
    log = (small_dataset / "aperture_pipeline.log").read_text()
    assert "BuildCatalogue: FAILED" in log and "lock released" in log


def test_a_configuration_error_is_one_line_naming_file_key_and_problem(small_dataset):
    path = small_dataset / "reduction_config.yaml"
    path.write_text(path.read_text().replace(re.search(r"RA: (.*)", path.read_text()).group(1), "'17:99:00'"))
    before = _snapshot(small_dataset)
    done = reduce_dataset(small_dataset)
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert "reduction_config.yaml: target.RA '17:99:00' is not a valid sexagesimal RA" in out
    assert "Traceback" not in out
    after = _snapshot(small_dataset)
    after.pop("aperture_pipeline.log", None)
    assert after == before


def test_the_exit_status_is_zero_on_success_and_nonzero_on_failure(reduced_dataset, tmp_path):
    assert reduce_dataset(reduced_dataset).returncode == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(reduced_dataset / "reduction_config.yaml", empty)
    failed = reduce_dataset(empty)
    assert failed.returncode == 30
    assert "no frames" in failed.stdout + failed.stderr
