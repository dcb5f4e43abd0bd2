"""A real local TOM Toolkit server for tests, run by ``scripts/tom_server.sh``.

    from tests.tom_server import tom_server      # session-scoped pytest fixture
    with running_tom() as tom:                   # the same outside pytest
        publish_photometry(tom.config(), ...)

The installation lives in ``<repo>/.tom`` (or ``$LUIGI_PHOT_TOM_DIR``); it is
made on first use by ``scripts/tom_server.sh setup`` (about 90 s; later a quick
no-op). Each server runs on a free port of 127.0.0.1 with its own throw-away
state directory (a fresh copy of the set-up database: one superuser, no
targets), so tests never see or change what a user uploaded to ``.tom/data``.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from luigi_phot.config import TomConfig, load_tom_config

__all__ = ["REPO", "SCRIPT", "LocalTom", "tom_dir", "setup_tom", "free_port", "running_tom", "tom_server"]

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "tom_server.sh"
SETUP_TIMEOUT_S = 900
START_TIMEOUT_S = 120


class TomServerError(RuntimeError):
    """scripts/tom_server.sh failed; the text carries its output."""


def tom_dir() -> Path:
    """The TOM installation used by tests: ``$LUIGI_PHOT_TOM_DIR`` or ``<repo>/.tom``."""
    return Path(os.environ.get("LUIGI_PHOT_TOM_DIR") or REPO / ".tom")


def _script(*args: str, timeout_s: float) -> str:
    done = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise TomServerError(f"{SCRIPT.name} {' '.join(args)} failed (exit {done.returncode}):\n"
                             f"{done.stdout}{done.stderr}")
    return done.stdout


def setup_tom(directory: Path | None = None) -> Path:
    """Install and configure the TOM in ``directory`` unless already done; returns it.

    Concurrent test sessions (or pytest-xdist workers) wait for one another
    here rather than installing into the same directory at once."""
    directory = Path(directory or tom_dir())
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "setup.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _script("setup", str(directory), timeout_s=SETUP_TIMEOUT_S)
    return directory


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on (at the time of asking)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class LocalTom:
    """A TOM server started by scripts/tom_server.sh, and its superuser's account."""

    tom_dir: Path
    data_dir: Path
    port: int
    username: str
    password: str = dataclasses.field(repr=False)
    api_token: str = dataclasses.field(repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    def config(self, **changes) -> TomConfig:
        """The account file the script wrote (Basic auth), read by load_tom_config;
        keyword arguments replace TomConfig fields (password, api_token, url,
        timeout_s, max_retries, backoff_s, ...)."""
        return dataclasses.replace(load_tom_config(self.data_dir / "tom_config.yaml"), **changes)

    def start(self) -> None:
        _script("start", str(self.tom_dir), "--port", str(self.port), "--data", str(self.data_dir),
                timeout_s=START_TIMEOUT_S)

    def stop(self) -> None:
        _script("stop", str(self.tom_dir), "--data", str(self.data_dir), timeout_s=60)


@contextmanager
def running_tom(directory: Path | None = None, port: int | None = None) -> Iterator[LocalTom]:
    """Set up (if needed) and start a TOM with a fresh database; stop it and
    remove its state directory on exit."""
    directory = setup_tom(directory)
    credentials = json.loads((directory / "credentials.json").read_text())
    data_dir = Path(tempfile.mkdtemp(prefix="luigi_phot_tom_"))
    server = None
    try:
        # A port found free can be taken before the server binds it: try again.
        for attempt in range(3):
            server = LocalTom(tom_dir=directory, data_dir=data_dir, port=port or free_port(),
                              username=credentials["username"], password=credentials["password"],
                              api_token=credentials["api_token"])
            try:
                server.start()
                break
            except TomServerError as exc:
                if port is not None or "is not free" not in str(exc) or attempt == 2:
                    raise
        yield server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def tom_server() -> Iterator[LocalTom]:
    """A running local TOM for the whole test session (see running_tom)."""
    with running_tom() as server:
        yield server
