"""Helpers of the bad-input and fault suites (tests/test_bad_input.py, tests/test_faults.py,
tests/test_manager_faults.py): input checksums, console checks, a runner for which file
permissions apply even to root, a reduction started in its own process group (to be
killed), a luigid that can be killed and started again, "not redone" checks (measurement
files and the log's "measured" lines), and a check that every output of a dataset can
be opened."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from tests.conftest import LUIGI

LOG = "aperture_pipeline.log"

#: Run as root, but without the capabilities that let root ignore file permissions:
#: a mode-000 frame is then unreadable and a mode-555 directory read-only, as for any user.
_NO_DAC = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]


def input_checksums(red_dir: Path) -> dict[str, str]:
    """sha256 of every input of a dataset: frames (whatever their content) and
    reduction_config.yaml."""
    out = {}
    for p in sorted(Path(red_dir).iterdir()):
        if p.is_file() and not p.name.startswith(".") and (p.name == "reduction_config.yaml" or ".fit" in p.name):
            out[p.name] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def console(proc) -> str:
    return (proc.stdout or "") + (proc.stderr or "")


def assert_no_traceback(proc) -> None:
    text = console(proc)
    assert "Traceback" not in text, text[-5000:]
    assert "--- Logging error ---" not in text, text[-5000:]


def log_lines(red_dir: Path) -> list[str]:
    try:
        return (Path(red_dir) / LOG).read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []


def log_runs(red_dir: Path) -> list[list[str]]:
    """The dataset log's lines, run by run (a dataset found up to date starts no run)."""
    runs: list[list[str]] = []
    for ln in log_lines(red_dir):
        if "========== run " in ln:
            runs.append([])
        if runs:
            runs[-1].append(ln)
    return runs


def user_dataset(red_dir: Path, cfg) -> Path:
    """A generated dataset as users have it: frames and configuration, no truth tables."""
    from luigi_phot.synthetic import generate_dataset

    generate_dataset(red_dir, cfg)
    for name in ("synthetic_truth.ecsv", "synthetic_stars.ecsv"):
        (red_dir / name).unlink()
    return red_dir


def luigi_args(red_dir: Path, *extra: str, local: bool = True) -> list[str]:
    return [str(LUIGI), "--module", "luigi_phot", "ReduceDataset", "--red-dir", str(red_dir),
            *(["--local-scheduler"] if local else []), *extra]


def _env(env: dict | None = None) -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}


def reduce_with_permissions(red_dir: Path, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`luigi ... ReduceDataset` for which file permissions apply (as root: without
    CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH)."""
    prefix = _NO_DAC if os.geteuid() == 0 else []
    return subprocess.run(prefix + luigi_args(red_dir, *extra), cwd=str(Path(red_dir).parent), env=_env(),
                          capture_output=True, text=True, timeout=timeout)


class LuigiRun:
    """A `luigi ...` command run in its own process group (so that a kill reaches every
    worker it forked), its output going to files in out_dir."""

    def __init__(self, args: list[str], *, cwd: Path, out_dir: Path, env: dict | None = None,
                 permissions: bool = False, preexec_fn=None):
        out_dir.mkdir(parents=True, exist_ok=True)
        self.out_path, self.err_path = out_dir / "stdout.txt", out_dir / "stderr.txt"
        prefix = _NO_DAC if permissions and os.geteuid() == 0 else []
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(prefix + args, cwd=str(cwd), env=_env(env), stdout=out, stderr=err,
                                         start_new_session=True, preexec_fn=preexec_fn)
        self.stdout = self.stderr = ""

    @property
    def returncode(self):
        return self.proc.returncode

    def wait(self, timeout: float) -> "LuigiRun":
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.kill()
            self.stdout = self.out_path.read_text(errors="replace")
            self.stderr = self.err_path.read_text(errors="replace")
        return self

    def kill(self) -> None:
        """SIGKILL to the whole process group (the luigi command and every worker it forked),
        then wait until all of them are gone."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        # forked workers die with the group; give the kernel a moment to reap them
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _group_alive(self.proc.pid):
            time.sleep(0.05)


class Reduction(LuigiRun):
    """`luigi --module luigi_phot ReduceDataset --red-dir red_dir [--local-scheduler] extra`
    in its own process group."""

    def __init__(self, red_dir: Path, *extra: str, out_dir: Path, env: dict | None = None,
                 permissions: bool = False, preexec_fn=None, local: bool = True):
        self.red_dir = Path(red_dir)
        super().__init__(luigi_args(red_dir, *extra, local=local), cwd=self.red_dir.parent, out_dir=out_dir,
                         env=env, permissions=permissions, preexec_fn=preexec_fn)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def wait_for(predicate, timeout: float, interval: float = 0.01, proc: LuigiRun | None = None):
    """Poll `predicate()` until it returns something true (returned), the timeout, or
    `proc` ending (both: AssertionError)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.proc.poll() is not None:
            value = predicate()
            if value:
                return value
            raise AssertionError(f"the reduction ended (exit {proc.proc.returncode}) before the awaited moment")
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {getattr(predicate, '__name__', predicate)}")


def measurements(red: Path) -> dict[str, tuple[int, int]]:
    """Measurement files: name -> (inode, mtime_ns). A file that keeps both across a run
    was not redone by it."""
    out = {}
    for p in (red / "photometry" / "frames").glob("*/*.phot.fits"):
        if p.name.startswith("."):
            continue  # a temporary of an interrupted write
        st = p.stat()
        out[p.name] = (st.st_ino, st.st_mtime_ns)
    return out


def measured_lines(red: Path) -> dict[str, int]:
    """How many times the log says each frame was measured."""
    counts: dict[str, int] = {}
    for ln in log_lines(red):
        m = re.search(r"MeasureImage: (\S+): measured ", ln)
        if m:
            counts[m.group(1)] = counts.get(m.group(1), 0) + 1
    return counts


class Luigid:
    """A luigid on 127.0.0.1:`port` with its state in `base`, in its own process group,
    that a test can kill (-9) and start again on the same port and state file."""

    def __init__(self, base: Path, port: int):
        self.base, self.port = base, port
        self.proc = None

    def start(self) -> "Luigid":
        self.base.mkdir(parents=True, exist_ok=True)
        log = open(self.base / "luigid.log", "a")
        self.proc = subprocess.Popen([str(Path(sys.executable).parent / "luigid"), "--port", str(self.port),
                                      "--address", "127.0.0.1", "--state-path", str(self.base / "state.pickle"),
                                      "--logdir", str(self.base)], stdout=log, stderr=log,
                                     start_new_session=True, env={**os.environ})
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            assert self.proc.poll() is None, (self.base / "luigid.log").read_text()[-3000:]
            time.sleep(0.1)
        raise AssertionError("luigid did not start")

    def scheduler_args(self) -> list[str]:
        return ["--scheduler-host", "127.0.0.1", "--scheduler-port", str(self.port)]

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


def temporaries(red_dir: Path) -> list[Path]:
    """Files left by interrupted writes: hidden .tmp-* names and lock-creation temporaries."""
    return [p for p in Path(red_dir).rglob(".*") if p.is_file()
            and (p.name.startswith(".tmp-") or p.name.startswith(".dataset.lock."))]


def check_outputs_readable(red_dir: Path) -> list[str]:
    """Open every output of a dataset (FITS, ECSV, CSV, PNG, JSON; hidden temporaries
    excluded); returns the names checked. Raises when one cannot be read."""
    import matplotlib.image

    red_dir = Path(red_dir)
    checked = []
    for p in sorted(red_dir.rglob("*")):
        if not p.is_file() or p.name.startswith(".") or p.parent == red_dir and (
                ".fit" in p.name or p.name == "reduction_config.yaml"):
            continue  # inputs and temporaries
        name = p.name
        if name.endswith(".fits"):
            with fits.open(p, memmap=False) as hdul:
                for hdu in hdul:
                    _ = hdu.data
                    hdu.verify("exception")
        elif name.endswith(".ecsv"):
            Table.read(p, format="ascii.ecsv")
        elif name.endswith(".csv"):
            Table.read(p, format="ascii.csv")
        elif name.endswith(".png"):
            assert matplotlib.image.imread(p).size > 0
        elif name.endswith(".html"):
            page = p.read_text(encoding="utf-8")
            assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
        elif name.endswith(".npz"):
            with np.load(p, allow_pickle=False) as stacked:
                [stacked[k] for k in stacked.files]
        elif name.endswith(".npy"):
            np.asarray(np.load(p, mmap_mode="r", allow_pickle=False)).sum()
        elif name.endswith(".json") or name == "dataset.lock":
            json.loads(p.read_text())
        elif name == LOG:
            p.read_text()
        else:
            raise AssertionError(f"unexpected file in red_dir: {p.relative_to(red_dir)}")
        checked.append(str(p.relative_to(red_dir)))
    return checked
