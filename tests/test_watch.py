"""luigi-phot-watch: the real command, watching a real tree, with the real `luigi`
scheduler (luigid from tests/luigid_server.py, and a local scheduler).

One night is played through in order (each step needs the one before):
catch-up at start, a frame landing by rename, a frame written slowly under its
final name (with a pause longer than the settle time half-way), a dataset that
fails and is retried only once it changes, luigid restarted, SIGTERM in the
middle of a reduction, and the next start catching up.

Waits are liveness bounds (a step that never happens fails the test), not speed
limits: latencies are measured by benchmarks/watch_latency.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from astropy.table import Table

from luigi_phot import dataset_lock
from luigi_phot.report import INDEX_NAME
from luigi_phot.arrival import ArrivalCheck, fits_end_reached
from luigi_phot.synthetic import SyntheticConfig, generate_dataset
from luigi_phot.tasks.reduce import dataset_is_current
from luigi_phot.config import load_manager_config
from luigi_phot.run_log import MANAGER_LOG_NAME, ManagerLog
from luigi_phot.watch import DatasetChanges, Watcher, start_observer
from tests.conftest import BIN, REPO
from tests.test_manager_selection import write_config

WATCH = BIN / "luigi-phot-watch"
#: Small frames: a dataset of a few frames reduces in a few seconds.
SMALL = dict(n_frames=5, shape=(256, 256), n_stars=300, bad_column=100, seeing_arcsec=(1.0, 1.8), compress="none")
DATASETS = {"T-A/sinistro/ip": 31, "T-B/sinistro/gp": 32, "T-C/sinistro/rp": 33}
LIVENESS_S = 180


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> Path:
    """Every dataset's frames generated once, outside any watched tree."""
    stage = tmp_path_factory.mktemp("watch_stage")
    for name, seed in DATASETS.items():
        generate_dataset(stage / name, SyntheticConfig(seed=seed, **SMALL))
    return stage


def frames_of(stage: Path, name: str) -> list[Path]:
    return sorted(p for p in (stage / name).iterdir() if p.name.endswith(".fits"))


def lc_images(red: Path) -> list[str]:
    found = list(red.glob("*_lc.ecsv"))
    return list(Table.read(found[0], format="ascii.ecsv")["image"]) if found else []


def rejected_images(red: Path) -> list[str]:
    found = list(red.glob("*_rejected.csv"))
    return list(Table.read(found[0], format="ascii.csv")["image"]) if found and found[0].stat().st_size > 20 else []


def wait_for(what: str, predicate, proc: subprocess.Popen | None = None, timeout_s: float = LIVENESS_S):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the watcher exited ({proc.returncode}) before: {what}")
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout_s} s: {what}")


def cycle_lines(log_dir: Path) -> list[str]:
    path = log_dir / MANAGER_LOG_NAME
    return [ln for ln in path.read_text().splitlines() if "] cycle " in ln] if path.exists() else []


def wait_reduced(log_dir: Path, name: str, proc: subprocess.Popen, since: int) -> str:
    """Wait for a cycle line after the first `since` that lists dataset `name` among the reduced ones."""
    def reduced_line():
        for ln in cycle_lines(log_dir)[since:]:
            if "reduced (" in ln and name in ln.split("reduced (", 1)[1].split(")", 1)[0]:
                return ln
        return None

    return wait_for(f"{name} reduced", reduced_line, proc)


def land(src: Path, red: Path) -> Path:
    """A frame arriving as rsync delivers it: a hidden temporary, renamed."""
    tmp = red / f".{src.name}.part"
    shutil.copy2(src, tmp)
    return Path(os.replace(tmp, red / src.name) or red / src.name)


def start_watch(config: Path, output: Path, *scheduler: str) -> subprocess.Popen:
    env = {**os.environ, "LUIGI_CONFIG_PATH": str(REPO / "luigi.cfg"), "PYTHONUNBUFFERED": "1"}
    with open(output, "a") as out:
        return subprocess.Popen([str(WATCH), "--config", str(config), "--interval", "1", "--settle", "1", *scheduler],
                                cwd=config.parent, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def session_processes(sid: int) -> list[int]:
    """Processes still alive in the session the watcher started (its dataset processes)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    found.append(int(entry))
            except OSError:
                continue
    return found


def stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
    return proc.wait(timeout=60)


# --------------------------------------------------------------------------
# plain code: when a frame counts as arrived
# --------------------------------------------------------------------------


def test_a_fits_file_is_complete_only_when_every_hdu_its_headers_announce_is_there(staged, tmp_path):
    frame = frames_of(staged, "T-A/sinistro/ip")[0]
    raw = frame.read_bytes()
    assert fits_end_reached(frame)
    for cut in (0, 100, 2880, len(raw) // 2, len(raw) - 2880, len(raw) - 1):
        part = tmp_path / f"cut{cut}.fits"
        part.write_bytes(raw[:cut])
        assert not fits_end_reached(part), f"a file cut at {cut} of {len(raw)} bytes counted as complete"
    import gzip
    gz = tmp_path / "f.fits.gz"
    gz.write_bytes(gzip.compress(raw))
    assert fits_end_reached(gz)
    gz.write_bytes(gzip.compress(raw)[:-200])
    assert not fits_end_reached(gz)


def test_a_frame_waits_for_the_settle_time_and_its_fits_end(staged, tmp_path):
    red = tmp_path / "ds"
    red.mkdir()
    raw = frames_of(staged, "T-A/sinistro/ip")[0].read_bytes()
    now = [time.time()]
    check = ArrivalCheck(settle_s=5, stall_s=60, clock=lambda: now[0])
    (red / "a.fits").write_bytes(raw[: len(raw) // 2])
    assert [w.frame for w in check.waiting(red)] == ["a.fits"]            # just written
    now[0] += 10
    assert "incomplete" in check.waiting(red)[0].reason                    # settled, but cut
    with open(red / "a.fits", "ab") as fh:
        fh.write(raw[len(raw) // 2:])
    now[0] = time.time()
    assert check.waiting(red)                                              # changed again just now
    now[0] += 10
    assert check.waiting(red) == []                                        # complete
    (red / "b.fits").write_bytes(raw[:5000])
    now[0] += 100
    assert check.waiting(red) == [], "a copy that died long ago goes through (it is rejected as truncated)"


def test_only_frames_and_configurations_of_listed_instruments_are_changes(tmp_path):
    changes = DatasetChanges(tmp_path, ("sinistro",))
    for rel in ("T/sinistro/ip/photometry/frames/x.fits", "T/sinistro/ip/.x.fits.part", "T/qhy/ip/a.fits",
                "T/sinistro/ip/T_ip_lc.ecsv", "T/sinistro/ip/reduction_record.json"):
        changes.add_path(str(tmp_path / rel))
    assert changes.take() == (set(), False)
    changes.add_path(str(tmp_path / "T/sinistro/ip/a.fits.fz"))
    changes.add_path(str(tmp_path / "T/sinistro/gp/reduction_config.yaml"))
    changes.add_path(str(tmp_path / "U/sinistro/rp"), is_directory=True)
    assert changes.take() == ({"T/sinistro/ip", "T/sinistro/gp", "U/sinistro/rp"}, False)


@pytest.mark.parametrize("poll", [False, True], ids=["inotify", "polling"])
def test_the_observer_reports_a_frame_landing_in_a_dataset(tmp_path, poll):
    red = tmp_path / "T" / "sinistro" / "ip"
    red.mkdir(parents=True)
    changes, notes = DatasetChanges(tmp_path, ("sinistro",)), []
    observer = start_observer(tmp_path, changes, poll=poll, interval_s=1.0, note=notes.append)
    try:
        assert ("polling" in notes[0]) == poll, notes
        (red / ".frame.fits.part").write_bytes(b"x" * 2880)
        os.replace(red / ".frame.fits.part", red / "frame.fits")
        seen = set()
        wait_for("the landing reported", lambda: seen.update(changes.take()[0]) or "T/sinistro/ip" in seen,
                 timeout_s=30)
    finally:
        observer.stop()
        observer.join()


def test_a_dataset_with_a_frame_in_copy_waits_and_every_cycle_calls_the_hooks(staged, tmp_path):
    root = tmp_path / "tree"
    red = root / "T-A" / "sinistro" / "ip"
    red.mkdir(parents=True)
    shutil.copy2(staged / "T-A/sinistro/ip" / "reduction_config.yaml", red)
    raw = frames_of(staged, "T-A/sinistro/ip")[0].read_bytes()
    (red / "a.fits").write_bytes(raw[: len(raw) // 2])
    cfg = load_manager_config(write_config(tmp_path / "m.yaml", root, tmp_path / "logs", {"group": "all"},
                                           instruments=("sinistro",)))
    log = ManagerLog(cfg.log_dir, "watch-test")
    seen = []

    def broken_hook(cfg, report):
        raise RuntimeError("index.html not writable")

    watcher = Watcher(cfg, log, settle_s=60, hooks=[lambda c, r: seen.append(r), broken_hook])
    try:
        assert watcher.cycle() is None                      # nothing changed, nothing looked at
        watcher.changes.mark(["T-A/sinistro/ip"])
        first = watcher.cycle()
        second = watcher.cycle()                            # a waiting dataset is looked at again ...
    finally:
        log.close()
    assert "T-A/sinistro/ip" in second.waiting
    assert seen == [first], "... but the same datasets still waiting make no new line"
    assert [w.frame for w in first.waiting["T-A/sinistro/ip"]] == ["a.fits"] and not first.outcomes
    text = (cfg.log_dir / MANAGER_LOG_NAME).read_text()
    assert "cycle 1 " in text and "1 waiting (T-A/sinistro/ip: a.fits still being written" in text
    assert "cycle 2 " not in text
    assert "broken_hook failed: index.html not writable" in text
    assert dataset_lock.read_lock(red) is None and not (red / "photometry").exists()


# --------------------------------------------------------------------------
# the command, through a night
# --------------------------------------------------------------------------


def test_a_night_of_watching(staged, tmp_path, luigid_server):
    root, log_dir = tmp_path / "tree", tmp_path / "logs"
    a, b, c = (root / name for name in DATASETS)
    for red, name in ((a, "T-A/sinistro/ip"), (b, "T-B/sinistro/gp")):
        red.mkdir(parents=True)
        shutil.copy2(staged / name / "reduction_config.yaml", red)
        for f in frames_of(staged, name)[:3]:
            shutil.copy2(f, red)
    config = write_config(tmp_path / "manager.yaml", root, log_dir, {"group": "all"}, instruments=("sinistro",))
    out = tmp_path / "watch.out"
    proc = start_watch(config, out, *luigid_server.scheduler_args())
    try:
        # catch-up at start: both datasets reduced
        wait_reduced(log_dir, "T-A/sinistro/ip", proc, since=0)     # (frames copied just now wait to settle)
        wait_reduced(log_dir, "T-B/sinistro/gp", proc, since=0)
        assert len(lc_images(a)) == 3 and len(lc_images(b)) == 3

        # a frame lands by rename: only its dataset is reduced again
        b_record = (b / "reduction_record.json").read_bytes()
        n_lines = len(cycle_lines(log_dir))
        new_a = land(frames_of(staged, "T-A/sinistro/ip")[3], a)
        wait_reduced(log_dir, "T-A/sinistro/ip", proc, since=n_lines)
        assert new_a.name in lc_images(a)
        assert (b / "reduction_record.json").read_bytes() == b_record

        # a dataset that fails does not stop the watcher ...
        c.mkdir(parents=True)
        shutil.copy2(staged / "T-C/sinistro/rp" / "reduction_config.yaml", c)
        for i in range(2):
            (c / f"garbage{i}.fits").write_bytes(b"not a FITS file at all" * 200)
        wait_for("C failed", lambda: any("T-C/sinistro/rp:" in ln and "1 failed" in ln for ln in cycle_lines(log_dir)),
                 proc)
        n_lines = len(cycle_lines(log_dir))

        # luigid restarted (between cycles): the watcher goes on
        luigid_server.stop()
        luigid_server.start()

        # a frame written slowly under its final name, with a pause longer than the settle time
        src = frames_of(staged, "T-B/sinistro/gp")[3]
        raw = src.read_bytes()
        with open(b / src.name, "wb") as fh:
            for i in range(4):
                fh.write(raw[i * len(raw) // 8:(i + 1) * len(raw) // 8])
                fh.flush()
                time.sleep(0.4)
            wait_for("the half-written frame seen as incomplete",
                     lambda: any(f"{src.name} incomplete" in ln for ln in cycle_lines(log_dir)), proc)
            fh.write(raw[len(raw) // 2:])
        wait_reduced(log_dir, "T-B/sinistro/gp", proc, since=n_lines)
        assert src.name in lc_images(b)
        assert src.name not in rejected_images(b)
        assert not [ln for ln in (b / "aperture_pipeline.log").read_text().splitlines()
                    if src.name in ln and "rejected" in ln]

        # ... and it is tried again only once it changes
        assert not [ln for ln in cycle_lines(log_dir)[n_lines:] if "T-C/sinistro/rp" in ln], \
            "a failed dataset was tried again although nothing of it changed"
        n_lines = len(cycle_lines(log_dir))
        for f in frames_of(staged, "T-C/sinistro/rp")[:3]:
            land(f, c)
        wait_reduced(log_dir, "T-C/sinistro/rp", proc, since=n_lines)
        assert len(lc_images(c)) == 3
        # the night overview, rewritten each cycle: every dataset looked at, its latest outcome
        overview = (log_dir / INDEX_NAME).read_text()
        for name, red in (("T-A/sinistro/ip", a), ("T-B/sinistro/gp", b), ("T-C/sinistro/rp", c)):
            assert f'data-dataset="{name}"' in overview
            assert next(red.glob("*_report.html")).name in overview
        # C's failure is history: its latest reduction worked
        assert 'class="status bad"' not in overview and overview.count('class="status ok"') == 3
    finally:
        rc = stop(proc)
    assert rc == 0, out.read_text()[-3000:]
    assert "Traceback" not in out.read_text(), out.read_text()[-3000:]

    # SIGTERM while the first cycle is starting: nothing is left running or locked
    shutil.rmtree(a / "photometry")
    proc = start_watch(config, out, "--local-scheduler")
    try:
        wait_for("the catch-up started", lambda: (log_dir / MANAGER_LOG_NAME).read_text().count("catching up") == 2,
                 proc)
    finally:
        rc = stop(proc)
    assert rc == 0, out.read_text()[-3000:]
    assert dataset_lock.read_lock(a) is None and not session_processes(proc.pid)

    # SIGTERM while a reduction runs: it ends, releases the lock, and the next start catches up
    shutil.rmtree(c / "photometry")          # C's next reduction builds its catalogue again
    late_c = land(frames_of(staged, "T-C/sinistro/rp")[3], c)      # arrives while nothing watches
    proc = start_watch(config, out, "--local-scheduler")
    try:
        wait_for("C's lock taken", lambda: dataset_lock.read_lock(c) is not None, proc)
    finally:
        rc = stop(proc)
    assert rc == 0, out.read_text()[-3000:]
    assert [dataset_lock.read_lock(red) for red in (a, b, c)] == [None, None, None]
    assert "stopping (SIGTERM)" in (log_dir / MANAGER_LOG_NAME).read_text()
    proc = start_watch(config, out, "--local-scheduler")
    try:
        wait_for("C reduced at the next start", lambda: late_c.name in lc_images(c) and dataset_is_current(c), proc)
    finally:
        assert stop(proc) == 0
