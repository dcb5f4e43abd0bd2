"""A real luigid for tests, started and stopped by ``scripts/luigid.sh``.

    from tests.luigid_server import luigid_server   # session-scoped pytest fixture
    with running_luigid() as luigid:                # the same outside pytest
        luigid.api("task_list", status="DONE")

Each server listens on a free port of 127.0.0.1 with a throw-away directory
(luigi.cfg, state, history.db, logs), removed when it stops.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
import contextlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.tom_server import free_port

__all__ = ["REPO", "SCRIPT", "LocalLuigid", "LuigidError", "running_luigid", "luigid_server"]

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "luigid.sh"
LUIGID = Path(sys.executable).parent / "luigid"


class LuigidError(RuntimeError):
    """scripts/luigid.sh failed; the text carries its output."""


def _script(*args: str, timeout_s: float = 90) -> str:
    env = {**os.environ, "LUIGID": str(LUIGID)}
    done = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout_s, env=env)
    if done.returncode != 0:
        raise LuigidError(f"{SCRIPT.name} {' '.join(args)} failed (exit {done.returncode}):\n"
                          f"{done.stdout}{done.stderr}")
    return done.stdout


@dataclasses.dataclass
class LocalLuigid:
    """A luigid started by scripts/luigid.sh in `directory`, listening on 127.0.0.1:`port`."""

    directory: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def history_db(self) -> Path:
        return self.directory / "history.db"

    def scheduler_args(self) -> list[str]:
        """The `luigi` command-line options that send tasks to this luigid."""
        return ["--scheduler-host", "127.0.0.1", "--scheduler-port", str(self.port)]

    def api(self, method: str, **data: Any) -> Any:
        """Call luigid's JSON API (GET /api/<method>?data=...) and return its response."""
        query = urllib.parse.urlencode({"data": json.dumps(data)})
        with urllib.request.urlopen(f"{self.url}/api/{method}?{query}", timeout=30) as reply:
            return json.load(reply)["response"]

    def get(self, path: str) -> tuple[int, str]:
        """Status and body of a page of the visualiser (e.g. '/history')."""
        with urllib.request.urlopen(f"{self.url}{path}", timeout=30) as reply:
            return reply.status, reply.read().decode("utf-8", "replace")

    def history(self, sql: str, *params) -> list[tuple]:
        """Rows of a query on the task history database (tables tasks, task_events, task_parameters)."""
        with contextlib.closing(sqlite3.connect(f"file:{self.history_db}?mode=ro", uri=True, timeout=30)) as db:
            return db.execute(sql, params).fetchall()

    def start(self) -> None:
        _script("start", "--dir", str(self.directory), "--port", str(self.port))

    def stop(self) -> None:
        _script("stop", "--dir", str(self.directory), timeout_s=60)

    def running(self) -> bool:
        env = {**os.environ, "LUIGID": str(LUIGID)}
        return subprocess.run([str(SCRIPT), "status", "--dir", str(self.directory)], capture_output=True,
                              env=env, timeout=30).returncode == 0


@contextmanager
def running_luigid(port: int | None = None) -> Iterator[LocalLuigid]:
    """Start a luigid with a fresh directory; stop it and remove the directory on exit."""
    directory = Path(tempfile.mkdtemp(prefix="luigi_phot_luigid_"))
    server = None
    try:
        # A port found free can be taken before luigid binds it: try again.
        for attempt in range(3):
            server = LocalLuigid(directory=directory, port=port or free_port())
            try:
                server.start()
                break
            except LuigidError as exc:
                if port is not None or "cannot listen" not in str(exc) or attempt == 2:
                    server = None
                    raise
        yield server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def luigid_server() -> Iterator[LocalLuigid]:
    """A running luigid for the whole test session (see running_luigid)."""
    with running_luigid() as server:
        yield server
