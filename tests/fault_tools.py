"""Helpers of the bad-input and fault suites (tests/test_bad_input.py, tests/test_faults.py):
input checksums, console checks, a runner for which file permissions apply even to
root, a reduction started in its own process group (to be killed), and a check
that every output of a dataset can be opened."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

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


class Reduction:
    """A `luigi ... ReduceDataset` run in its own process group (so that a kill reaches
    every worker it forked), its output going to files."""

    def __init__(self, red_dir: Path, *extra: str, out_dir: Path, env: dict | None = None,
                 permissions: bool = False, preexec_fn=None, local: bool = True):
        self.red_dir = Path(red_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.out_path, self.err_path = out_dir / "stdout.txt", out_dir / "stderr.txt"
        prefix = _NO_DAC if permissions and os.geteuid() == 0 else []
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(prefix + luigi_args(red_dir, *extra, local=local), cwd=str(self.red_dir.parent),
                                         env=_env(env), stdout=out, stderr=err, start_new_session=True,
                                         preexec_fn=preexec_fn)
        self.stdout = self.stderr = ""

    @property
    def returncode(self):
        return self.proc.returncode

    def wait(self, timeout: float) -> "Reduction":
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.kill()
            self.stdout = self.out_path.read_text(errors="replace")
            self.stderr = self.err_path.read_text(errors="replace")
        return self

    def kill(self) -> None:
        """SIGKILL to the whole process group (the luigi command and every worker it forked)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        # forked workers die with the group; give the kernel a moment to reap them
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _group_alive(self.proc.pid):
            time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def wait_for(predicate, timeout: float, interval: float = 0.01, proc: Reduction | None = None):
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
        elif name.endswith(".json") or name == "dataset.lock":
            json.loads(p.read_text())
        elif name == LOG:
            p.read_text()
        else:
            raise AssertionError(f"unexpected file in red_dir: {p.relative_to(red_dir)}")
        checked.append(str(p.relative_to(red_dir)))
    return checked
