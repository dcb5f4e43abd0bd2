"""Faults, through the real `luigi` command: never lose data, never run twice.

- kill -9 (to the whole process group) while MeasureImage runs, while
  BuildLightcurve writes its products, and while UploadToTOM uploads: the next
  run takes the lock over as stale (a warning in the log), finishes the dataset
  without redoing finished work, every output can be opened, and no temporary
  file is left or mistaken for an output;
- kill -9 while UploadToTOM uploads to a real TOM Toolkit server (the kill lands
  when the data product appears in the TOM's API): afterwards the TOM holds one
  data product for the dataset, with exactly the light curve's points;
- the TOM down: the upload fails in one line, the lock is released, the next run
  redoes only the upload;
- a read-only red_dir (from the start, and made read-only while the frames are
  measured), a full disk (a tmpfs filled while the frames are measured; needs
  root) and a file-size limit (RLIMIT_FSIZE, any user): the run fails with that
  message in one line, nothing half-written is left under a final name, and the
  next run, with the problem gone, completes;
- the scheduler (luigid) killed and restarted in the middle of a run;
- in every scenario the inputs (frames, reduction_config.yaml) are unchanged
  (sha256 before and after).

Each run is bounded in time; every process a test starts is killed by its pid
(process group) at the end, every mount unmounted.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from astropy.table import Table

from luigi_phot.synthetic import SyntheticConfig
from tests.conftest import copy_dataset, reduce_dataset
from tests.fault_tools import (Luigid, Reduction, assert_no_traceback, check_outputs_readable, console,
                               input_checksums, log_lines, log_runs, measured_lines, measurements,
                               reduce_with_permissions, temporaries, user_dataset, wait_for)
from tests.tom_server import free_port

pytestmark = pytest.mark.slow

SMALL = SyntheticConfig(seed=3, n_frames=6, shape=(384, 384), n_stars=500, compress="mixed", n_nights=2)
TARGET = SMALL.target_name
LC = f"{TARGET}_ip_lc.ecsv"
RUN_TIMEOUT_S = 180
STALE = "took over a stale lock"


# --------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return user_dataset(tmp_path_factory.mktemp("faults") / TARGET / "sinistro" / "ip", SMALL)


@pytest.fixture
def dataset(template, tmp_path) -> Path:
    return copy_dataset(template, tmp_path / "ip")


def frames_of(red: Path) -> list[str]:
    return sorted(p.name for p in red.iterdir() if p.name.endswith((".fits", ".fits.fz")))


def run_lines(red: Path, run: int) -> list[str]:
    """Log lines of the `run`-th run (0-based) recorded in aperture_pipeline.log ([] when
    there was no such run: a dataset found up to date starts none)."""
    runs = log_runs(red)
    return runs[run] if run < len(runs) else []


def assert_finished(red: Path, proc, frames: list[str], lc_name: str = LC) -> None:
    """The run succeeded and left a complete, readable dataset (light curve `lc_name`)."""
    assert proc.returncode == 0, console(proc)[-5000:]
    assert_no_traceback(proc)
    assert not (red / "dataset.lock").exists()
    assert temporaries(red) == [], temporaries(red)
    checked = check_outputs_readable(red)
    assert lc_name in checked and "reduction_record.json" in checked
    lc = Table.read(red / lc_name, format="ascii.ecsv")
    assert sorted(lc["image"]) == frames
    record = json.loads((red / "reduction_record.json").read_text())
    assert record["n_measured"] == len(frames) and record["n_rejected"] == 0


def assert_interrupted_state_is_safe(red: Path) -> None:
    """After a crash or a failed run: nothing looks finished, and every file under a final
    name is whole."""
    assert not (red / "reduction_record.json").exists()
    check_outputs_readable(red)


def assert_one_line_failure(proc, *phrases: str) -> str:
    """The run failed, without a traceback, and one console line has all `phrases`
    (printed: `pytest -rP` shows what each scenario said)."""
    assert proc.returncode not in (0, None)
    assert_no_traceback(proc)
    lines = [ln for ln in console(proc).splitlines() if all(p in ln for p in phrases)]
    assert lines, console(proc)[-5000:]
    print(f"exit {proc.returncode}: {lines[-1]}")
    return lines[-1]


def progress(red: Path, pattern: str):
    """A predicate: the log has a line matching `pattern`."""
    rx = re.compile(pattern)

    def seen():
        return any(rx.search(ln) for ln in log_lines(red))
    seen.__name__ = f"log line {pattern!r}"
    return seen


# --------------------------------------------------------------------------
# kill -9
# --------------------------------------------------------------------------


def test_kill_while_measuring_then_rerun(dataset, tmp_path):
    frames = frames_of(dataset)
    before = input_checksums(dataset)
    run = Reduction(dataset, "--workers", "2", out_dir=tmp_path / "run1")
    try:
        wait_for(progress(dataset, r"MeasureImage: \S+: measured "), timeout=RUN_TIMEOUT_S, proc=run)
    finally:
        run.kill()
    done_before = measurements(dataset)
    assert 0 < len(done_before) < len(frames), "the kill must land while frames are being measured"
    holder = json.loads((dataset / "dataset.lock").read_text())
    assert not _alive(holder["pid"])
    assert_interrupted_state_is_safe(dataset)

    rerun = reduce_dataset(dataset, "--workers", "2", timeout=RUN_TIMEOUT_S)
    assert_finished(dataset, rerun, frames)
    second = run_lines(dataset, 1)
    assert sum(STALE in ln and " WARNING " in ln for ln in second) == 1, second[:5]
    # nothing finished before the kill was done again
    after = measurements(dataset)
    assert all(after[name] == ident for name, ident in done_before.items())
    assert all(n == 1 for n in measured_lines(dataset).values()) and len(measured_lines(dataset)) == len(frames)
    assert input_checksums(dataset) == before


def test_kill_while_writing_the_lightcurve_then_rerun(dataset, tmp_path):
    frames = frames_of(dataset)
    before = input_checksums(dataset)
    # the light curve's products (the finder chart is the catalogue stage's; the report is written after them)
    products = re.compile(rf"^\.tmp-[0-9a-f]{{8}}-{re.escape(TARGET)}_ip_(?!finder|report)")

    def product_temporary():
        return [p.name for p in temporaries(dataset) if products.match(p.name)]
    run = Reduction(dataset, "--workers", "2", out_dir=tmp_path / "run1")
    try:
        caught = wait_for(product_temporary, timeout=RUN_TIMEOUT_S, interval=0.005, proc=run)
    finally:
        run.kill()
    assert caught, "the kill must land while the light-curve products are written"
    done_before = measurements(dataset)
    assert len(done_before) == len(frames)
    assert_interrupted_state_is_safe(dataset)
    assert not (dataset / LC).exists(), "the light curve is renamed into place last"

    rerun = reduce_dataset(dataset, "--workers", "2", timeout=RUN_TIMEOUT_S)
    assert_finished(dataset, rerun, frames)
    second = run_lines(dataset, 1)
    assert sum(STALE in ln for ln in second) == 1
    assert any("removed" in ln and "temporary files left by an interrupted run" in ln for ln in second)
    assert not any("MeasureImage" in ln for ln in second), "frames measured before the kill were measured again"
    assert measurements(dataset) == done_before
    assert input_checksums(dataset) == before


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


# --------------------------------------------------------------------------
# The TOM: killed mid-upload, and down
# --------------------------------------------------------------------------


class StubTom:
    """A TOM Toolkit stand-in on 127.0.0.1 with the API calls UploadToTOM makes. It keeps
    the data products it receives; in mode 'stall' it stores an upload and then does
    not answer (so that a kill lands mid-upload), in mode 'down' it answers 503."""

    def __init__(self):
        self.mode = "ok"
        self.products: dict[int, dict] = {}
        self.requests: list[tuple[str, str]] = []
        self.upload_started = threading.Event()
        self.release = threading.Event()
        self._next = 1
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, status, body=None):
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _page(self, results):
                self._answer(200, {"count": len(results), "next": None, "previous": None, "results": results})

            def do_GET(self):
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                stub.requests.append(("GET", url.path))
                if stub.mode == "down":
                    return self._answer(503, {"detail": "Service Unavailable"})
                if url.path == "/api/targets/":
                    hits = [{"id": 1, "name": TARGET, "aliases": []}] if query.get("name", "") in TARGET else []
                    return self._page(hits)
                if url.path == "/api/dataproducts/":
                    return self._page(list(stub.products.values()))
                if url.path == "/api/reduceddatums/":
                    pid = int(query.get("data_product__id", 0))
                    return self._answer(200, {"count": stub.products.get(pid, {}).get("n_points", 0),
                                              "next": None, "results": []})
                return self._answer(404, {"detail": "Not found."})

            def do_DELETE(self):
                stub.requests.append(("DELETE", self.path))
                m = re.fullmatch(r"/api/dataproducts/(\d+)/", self.path)
                if m and stub.products.pop(int(m.group(1)), None) is not None:
                    return self._answer(204)
                return self._answer(404, {"detail": "Not found."})

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                stub.requests.append(("POST", self.path))
                if stub.mode == "down":
                    return self._answer(503, {"detail": "Service Unavailable"})
                found = re.search(rb'filename="([^"]+)"', body)
                name = found.group(1).decode()
                start = body.index(b"\r\n\r\n", found.end()) + 4
                csv = body[start:body.index(b"\r\n--", start)]
                n_points = len(csv.strip().splitlines()) - 1
                pid = stub._next
                stub._next += 1
                product = {"id": pid, "target": 1, "data_product_type": "photometry",
                           "data": f"/data/{TARGET}/none/{name}", "n_points": n_points}
                stub.products[pid] = product  # stored, as a TOM would, before it answers
                if stub.mode == "stall":  # answer only when released (if the client is still there)
                    stub.upload_started.set()
                    stub.release.wait(timeout=120)
                try:
                    self._answer(201, product)
                except OSError:
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub_tom():
    tom = StubTom()
    try:
        yield tom
    finally:
        tom.close()


def with_upload(red: Path, tom_url: str) -> None:
    tom_file = red.parent / "tom_config.yaml"
    tom_file.write_text(yaml.safe_dump({"url": tom_url, "api_token": "0123abcd", "timeout_s": 20,
                                        "max_retries": 0, "backoff_s": 0.1}))
    tom_file.chmod(0o600)
    path = red / "reduction_config.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["tom"] = {"upload": True, "config_file": str(tom_file), "data_label": TARGET}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def test_kill_while_uploading_then_rerun(dataset, tmp_path, stub_tom):
    with_upload(dataset, stub_tom.url)
    frames = frames_of(dataset)
    before = input_checksums(dataset)
    stub_tom.mode = "stall"
    run = Reduction(dataset, "--workers", "2", out_dir=tmp_path / "run1")
    try:
        assert stub_tom.upload_started.wait(timeout=RUN_TIMEOUT_S), "no upload began"
    finally:
        run.kill()
    assert not (dataset / "upload_record.json").exists()
    assert_interrupted_state_is_safe(dataset)
    assert len(stub_tom.products) == 1, "the TOM kept the interrupted upload"
    stale_product = next(iter(stub_tom.products))
    done_before = measurements(dataset)

    stub_tom.mode = "ok"
    stub_tom.requests.clear()
    rerun = reduce_dataset(dataset, "--workers", "2", timeout=RUN_TIMEOUT_S)
    assert_finished(dataset, rerun, frames)
    second = run_lines(dataset, 1)
    assert sum(STALE in ln for ln in second) == 1
    assert not any(s in ln for ln in second for s in ("MeasureImage", "BuildLightcurve", "BuildCatalogue")), \
        "only the upload is redone"
    record = json.loads((dataset / "upload_record.json").read_text())
    assert record["status"] == "uploaded" and record["n_points"] == len(frames)
    # the interrupted upload was replaced, not doubled
    assert ("DELETE", f"/api/dataproducts/{stale_product}/") in stub_tom.requests
    assert list(stub_tom.products) == [record["product_id"]]
    assert measurements(dataset) == done_before
    assert input_checksums(dataset) == before


#: The real-TOM kill test: a dataset small enough to reduce in seconds, with a target
#: name no other test uses on the session's TOM.
KILL_TARGET = "FAULT-KILL-UPLOAD"
TINY = SyntheticConfig(seed=5, n_frames=4, shape=(256, 256), n_stars=300, bad_column=100, n_nights=1,
                       seeing_arcsec=(1.0, 1.8), target_name=KILL_TARGET)


@pytest.fixture(scope="module")
def tiny_template(tmp_path_factory) -> Path:
    return user_dataset(tmp_path_factory.mktemp("faults_tiny") / KILL_TARGET / "sinistro" / "ip", TINY)


@pytest.mark.tom
def test_kill_while_uploading_to_the_real_tom_then_rerun(tiny_template, tmp_path, tom_server):
    """kill -9 when the upload's data product appears on a real TOM Toolkit server (seen
    through its API, with token auth; the pipeline's Basic-auth requests take ~0.3 s
    each, so the kill lands before the pipeline has recorded the upload). Whenever it
    lands, the next run finishes, and the TOM then holds one data product for the
    dataset, with exactly the light curve's points."""
    from tests.test_upload import configure, csv_points, the_product
    from tests.tom_api import Api, target_id, tom_points, write_account

    red = copy_dataset(tiny_template, tmp_path / "ip")
    configure(red, KILL_TARGET, write_account(tmp_path / "tom_config.yaml", tom_server.config()),
              create_target=True)
    api = Api(tom_server)
    assert target_id(api, KILL_TARGET) is None, "the target must be new to this TOM"
    frames = frames_of(red)
    before = input_checksums(red)

    def product_on_the_tom():
        tid = target_id(api, KILL_TARGET)
        return tid is not None and api.products(tid, KILL_TARGET)
    run = Reduction(red, "--workers", "2", out_dir=tmp_path / "run1")
    try:
        wait_for(product_on_the_tom, timeout=RUN_TIMEOUT_S, interval=0.02, proc=run)
    finally:
        run.kill()
    tid = target_id(api, KILL_TARGET)
    orphans = list(api.products(tid, KILL_TARGET))
    record = json.loads((red / "upload_record.json").read_text()) if (red / "upload_record.json").exists() else {}
    lock_left = (red / "dataset.lock").exists()
    if run.returncode == 0:
        case = "after the run had finished"
    elif record.get("status") == "uploaded":
        case = "after the upload was recorded, before the run finished"
    else:
        case = f"during the upload: the TOM holds product(s) {orphans} that the pipeline has not recorded"
        assert lock_left and not (red / "reduction_record.json").exists()
    print(f"kill landed {case}; lock left: {lock_left}")
    assert len(orphans) == 1
    if lock_left:
        holder = json.loads((red / "dataset.lock").read_text())
        assert not _alive(holder["pid"])
        assert_interrupted_state_is_safe(red)
    done_before = measurements(red)

    rerun = reduce_dataset(red, "--workers", "2", timeout=RUN_TIMEOUT_S)
    assert_finished(red, rerun, frames, f"{KILL_TARGET}_ip_lc.ecsv")
    second = run_lines(red, 1)
    assert sum(STALE in ln and " WARNING " in ln for ln in second) == (1 if lock_left else 0), second[:5]
    assert not any(s in ln for ln in second for s in ("MeasureImage", "BuildCatalogue")), "only later stages redone"
    product = the_product(api, tid, KILL_TARGET)       # exactly one data product for the dataset ...
    assert tom_points(api, tid) == csv_points(red, KILL_TARGET)   # ... holding exactly the light curve's points
    assert len(csv_points(red, KILL_TARGET)) == len(frames)
    record = json.loads((red / "upload_record.json").read_text())
    assert record["status"] in ("uploaded", "unchanged") and record["product_id"] == product
    if case.startswith("during"):   # the orphan was deleted before the light curve went up again
        assert product not in orphans
        assert any(f"Deleted data product {orphans[0]} " in ln for ln in second), second
    assert measured_lines(red) == {f: 1 for f in frames}
    assert measurements(red) == done_before
    assert input_checksums(red) == before


def test_tom_down_fails_the_upload_only_and_the_rerun_uploads(dataset, stub_tom):
    with_upload(dataset, stub_tom.url)
    frames = frames_of(dataset)
    before = input_checksums(dataset)
    stub_tom.mode = "down"
    first = reduce_dataset(dataset, "--workers", "2", timeout=RUN_TIMEOUT_S)
    line = assert_one_line_failure(first, "UploadToTOM", f"TOM at {stub_tom.url} is unavailable")
    assert "503" in line
    assert not (dataset / "dataset.lock").exists(), "the lock is released when the upload fails"
    assert (dataset / LC).exists()
    # the record says the upload failed, and carries no key: the stage stays incomplete
    record = json.loads((dataset / "upload_record.json").read_text())
    assert record["status"] == "failed" and "key" not in record and "503" in record["error"]
    assert_interrupted_state_is_safe(dataset)
    done_before = measurements(dataset)

    stub_tom.mode = "ok"
    rerun = reduce_dataset(dataset, "--workers", "2", timeout=RUN_TIMEOUT_S)
    assert_finished(dataset, rerun, frames)
    second = run_lines(dataset, 1)
    assert not any(s in ln for ln in second for s in ("MeasureImage", "BuildLightcurve", "BuildCatalogue"))
    assert any("UploadToTOM: uploaded" in ln for ln in second)
    assert STALE not in "\n".join(second)
    assert measurements(dataset) == done_before
    assert input_checksums(dataset) == before


def test_a_second_reduction_is_refused_while_one_runs(dataset, tmp_path, stub_tom):
    """Never twice at once: while a run holds the lock (here: waiting for the TOM to
    answer its upload), another is refused in one line, or skipped quietly with
    --if-locked skip, and the first is not disturbed."""
    with_upload(dataset, stub_tom.url)
    frames = frames_of(dataset)
    stub_tom.mode = "stall"
    first = Reduction(dataset, "--workers", "2", out_dir=tmp_path / "run1")
    try:
        assert stub_tom.upload_started.wait(timeout=RUN_TIMEOUT_S), "no upload began"
        holder = json.loads((dataset / "dataset.lock").read_text())
        second = reduce_dataset(dataset, "--workers", "1", timeout=RUN_TIMEOUT_S)
        line = assert_one_line_failure(second, "is being reduced by run", "not starting a second reduction")
        assert f"pid {holder['pid']}" in line and holder["run_id"] in line
        skipped = reduce_dataset(dataset, "--if-locked", "skip", timeout=RUN_TIMEOUT_S)
        assert skipped.returncode == 0, console(skipped)[-3000:]
        assert json.loads((dataset / "dataset.lock").read_text()) == holder, "the lock changed hands"
        stub_tom.release.set()
        first.wait(timeout=RUN_TIMEOUT_S)
    finally:
        first.kill()
    assert_finished(dataset, first, frames)
    assert any("skipped: " in ln and "is being reduced by run" in ln for ln in log_lines(dataset))
    assert all(n == 1 for n in measured_lines(dataset).values())
    assert len(stub_tom.products) == 1


# --------------------------------------------------------------------------
# Read-only red_dir, full disk, file-size limit
# --------------------------------------------------------------------------


def _set_writable(red: Path, writable: bool) -> None:
    for d in [red, *(p for p in red.rglob("*") if p.is_dir())]:
        d.chmod(0o755 if writable else 0o555)


def test_read_only_red_dir_fails_in_one_line_and_writes_nothing(dataset):
    before = input_checksums(dataset)
    listing = sorted(p.name for p in dataset.iterdir())
    _set_writable(dataset, False)
    try:
        proc = reduce_with_permissions(dataset, timeout=RUN_TIMEOUT_S)
    finally:
        _set_writable(dataset, True)
    line = assert_one_line_failure(proc, "LockDataset", "cannot write", "Permission denied")
    assert f"{dataset}/dataset.lock" in line
    assert sorted(p.name for p in dataset.iterdir()) == listing
    assert input_checksums(dataset) == before

    rerun = reduce_dataset(dataset, "--workers", "2", timeout=RUN_TIMEOUT_S)
    assert_finished(dataset, rerun, frames_of(dataset))


def test_red_dir_made_read_only_while_measuring(dataset, tmp_path):
    frames = frames_of(dataset)
    before = input_checksums(dataset)
    run = Reduction(dataset, "--workers", "2", out_dir=tmp_path / "run1", permissions=True)
    try:
        wait_for(progress(dataset, r"MeasureImage: \S+: measured "), timeout=RUN_TIMEOUT_S, proc=run)
        _set_writable(dataset, False)
        run.wait(timeout=RUN_TIMEOUT_S)
    finally:
        run.kill()
        _set_writable(dataset, True)
    assert_one_line_failure(run, "cannot write", "Permission denied")
    assert temporaries(dataset) == []
    assert_interrupted_state_is_safe(dataset)
    done_before = measurements(dataset)
    assert 0 < len(done_before) < len(frames)

    rerun = reduce_dataset(dataset, "--workers", "2", timeout=RUN_TIMEOUT_S)
    assert_finished(dataset, rerun, frames)
    assert all(measurements(dataset)[n] == ident for n, ident in done_before.items())
    assert input_checksums(dataset) == before


def _can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


@pytest.mark.skipif(not _can_mount(), reason="a full disk is made with a tmpfs, which only root can mount; "
                                             "test_file_size_limit covers a failing write for any user")
def test_disk_full_while_measuring(template, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    size_kb = sum(p.stat().st_size for p in template.rglob("*") if p.is_file()) // 1024 + 4096
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(mnt)], check=True)
    run = None
    try:
        red = copy_dataset(template, mnt / "ip")
        frames = frames_of(red)
        before = input_checksums(red)
        filler = mnt / "filler"

        # full from the start: not even the lock can be written, and none is left half-made
        _fill(filler)
        full = reduce_dataset(red, timeout=RUN_TIMEOUT_S)
        assert_one_line_failure(full, "LockDataset", "cannot write", "dataset.lock", "No space left on device")
        assert "luigi_phot: cannot write" in full.stderr  # the log, said once
        assert temporaries(red) == [] and not (red / "dataset.lock").exists()
        filler.unlink()

        # filled while the frames are measured
        run = Reduction(red, "--workers", "2", out_dir=tmp_path / "run1")
        wait_for(progress(red, r"MeasureImage: \S+: measured "), timeout=RUN_TIMEOUT_S, proc=run)
        _fill(filler)
        run.wait(timeout=RUN_TIMEOUT_S)
        assert_one_line_failure(run, "cannot write", "No space left on device")
        assert temporaries(red) == []
        assert_interrupted_state_is_safe(red)
        done_before = measurements(red)
        assert 0 < len(done_before) < len(frames)

        filler.unlink()
        rerun = reduce_dataset(red, "--workers", "2", timeout=RUN_TIMEOUT_S)
        assert_finished(red, rerun, frames)
        assert all(measurements(red)[n] == ident for n, ident in done_before.items())
        assert input_checksums(red) == before
    finally:
        if run is not None:
            run.kill()
        subprocess.run(["umount", str(mnt)], check=False)
    assert not os.path.ismount(mnt)


def _fill(path: Path) -> None:
    """Write zeros into `path` until the file system is full."""
    with open(path, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass


def test_file_size_limit_while_writing_the_lightcurve(dataset, tmp_path):
    """RLIMIT_FSIZE of 40 kB while the light curve is built again (its products deleted
    after a first run): the log and the records fit, the all-stars file (about 75 kB)
    that BuildLightcurve writes first does not."""
    frames = frames_of(dataset)
    before = input_checksums(dataset)
    first = reduce_dataset(dataset, "--workers", "2", timeout=RUN_TIMEOUT_S)
    assert_finished(dataset, first, frames)
    for product in [*dataset.glob(f"{TARGET}_ip_*"), *(dataset / "photometry").glob(f"{TARGET}_ip_*")]:
        if not product.name.endswith("_finder.png"):
            product.unlink()
    (dataset / "reduction_record.json").unlink()   # so that a record written by the failed run would show

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))
    run = Reduction(dataset, "--workers", "2", out_dir=tmp_path / "run1", preexec_fn=limit)
    run.wait(timeout=RUN_TIMEOUT_S)
    line = assert_one_line_failure(run, "BuildLightcurve", "cannot write", "File too large")
    assert f"{TARGET}_ip_all_stars.fits" in line
    assert temporaries(dataset) == []
    assert_interrupted_state_is_safe(dataset)
    assert not (dataset / LC).exists()
    done_before = measurements(dataset)
    assert len(done_before) == len(frames)

    rerun = reduce_dataset(dataset, "--workers", "2", timeout=RUN_TIMEOUT_S)
    assert_finished(dataset, rerun, frames)
    assert measurements(dataset) == done_before
    assert input_checksums(dataset) == before


# --------------------------------------------------------------------------
# The scheduler restarted mid-run
# --------------------------------------------------------------------------


def test_scheduler_restarted_mid_run(dataset, tmp_path):
    """luigid killed (-9) while frames are measured and started again at once: the run
    fails or continues cleanly, and a rerun finishes without redoing finished work."""
    frames = frames_of(dataset)
    before = input_checksums(dataset)
    port = free_port()
    cfg = tmp_path / "luigi.cfg"
    cfg.write_text("[core]\nrpc-retry-attempts = 30\nrpc-retry-wait = 1\n")
    env = {"LUIGI_CONFIG_PATH": str(cfg)}
    scheduler = Luigid(tmp_path / "luigid", port).start()
    run = None
    try:
        run = Reduction(dataset, "--workers", "2", "--scheduler-host", "127.0.0.1", "--scheduler-port", str(port),
                        out_dir=tmp_path / "run1", env=env, local=False)
        wait_for(progress(dataset, r"MeasureImage: \S+: measured "), timeout=RUN_TIMEOUT_S, proc=run)
        scheduler.kill()
        scheduler.start()
        run.wait(timeout=RUN_TIMEOUT_S)
        assert_no_traceback(run)
        if run.returncode != 0:  # failed cleanly: says so in one line, lock released
            assert_one_line_failure(run, "ReduceDataset", "reduction failed", "run again")
            assert not (dataset / "dataset.lock").exists()
            assert_interrupted_state_is_safe(dataset)
        done_before = measurements(dataset)

        rerun = Reduction(dataset, "--workers", "2", "--scheduler-host", "127.0.0.1", "--scheduler-port",
                          str(port), out_dir=tmp_path / "run2", env=env, local=False).wait(timeout=RUN_TIMEOUT_S)
        assert rerun.returncode == 0, console(rerun)[-5000:]
        assert_finished(dataset, rerun, frames)
        assert all(measurements(dataset)[n] == ident for n, ident in done_before.items())
        assert all(n == 1 for n in measured_lines(dataset).values())
        assert input_checksums(dataset) == before
    finally:
        if run is not None:
            run.kill()
        scheduler.kill()
