"""Shared fixtures: synthetic datasets (generated once per session, copied per test),
a runner for the real `luigi` command, and the real local TOM server."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from luigi_phot.synthetic import SyntheticConfig, generate_dataset
from tests.luigid_server import luigid_server  # noqa: F401  (session fixture: a real luigid)
from tests.tom_server import tom_server  # noqa: F401  (session fixture: a real TOM Toolkit server)

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LUIGI = BIN / "luigi"

#: Beside the reduced template: the console output of its reduction.
CONSOLE_NAME = "reduce_console.txt"

#: The standard small dataset of the suite: crowded 768x768 field, 14 frames, a
#: microlensing event on the target, LCO-like headers, plain and fpack frames mixed.
SMALL = SyntheticConfig(seed=11, n_frames=14, shape=(768, 768), n_stars=1800, compress="mixed", n_nights=5)


def run_luigi(*args: str, cwd: Path | None = None, env: dict | None = None,
              timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the installed `luigi` command (as a user would) and capture its output."""
    full_env = {"LUIGI_CONFIG_PATH": str(REPO / "luigi.cfg"), **os.environ, **(env or {})}
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    return subprocess.run([str(LUIGI), *args], cwd=str(cwd) if cwd else None, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def reduce_dataset(red_dir: Path, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`luigi --module luigi_phot ReduceDataset --red-dir DIR --local-scheduler [extra]`."""
    return run_luigi("--module", "luigi_phot", "ReduceDataset", "--red-dir", str(red_dir),
                     "--local-scheduler", *extra, cwd=red_dir.parent, timeout=timeout)


def copy_dataset(src: Path, dst: Path) -> Path:
    """Copy a dataset keeping file times (a reduced copy stays reduced)."""
    shutil.copytree(src, dst, symlinks=True, copy_function=shutil.copy2)
    return dst


@pytest.fixture(scope="session")
def small_dataset_template(tmp_path_factory) -> Path:
    """The standard small dataset, generated once (do not modify: copy it)."""
    red = tmp_path_factory.mktemp("template") / "SYN-2026-BLG-0001" / "sinistro" / "ip"
    red.parent.mkdir(parents=True)
    generate_dataset(red, SMALL)
    return red


@pytest.fixture
def small_dataset(small_dataset_template, tmp_path) -> Path:
    """A private copy of the standard small dataset, not yet reduced."""
    return copy_dataset(small_dataset_template, tmp_path / "ip")


@pytest.fixture(scope="session")
def reduced_template(small_dataset_template, tmp_path_factory) -> Path:
    """The standard small dataset after one successful reduction (do not modify: copy it)."""
    red = copy_dataset(small_dataset_template, tmp_path_factory.mktemp("reduced") / "ip")
    done = reduce_dataset(red, "--workers", "2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (red.parent / CONSOLE_NAME).write_text(done.stdout + done.stderr)  # what the user saw (test_first_hour)
    return red


@pytest.fixture
def reduced_dataset(reduced_template, tmp_path) -> Path:
    """A private copy of the reduced standard dataset."""
    return copy_dataset(reduced_template, tmp_path / "ip")


@pytest.fixture(scope="session")
def chromium(tmp_path_factory):
    """A real headless Chromium for the session (tests/browser.py); the test fails in one
    line saying how to install it when the machine has none."""
    from tests.browser import Chromium

    with Chromium(tmp_path_factory.mktemp("chromium_profile")) as browser:
        yield browser
