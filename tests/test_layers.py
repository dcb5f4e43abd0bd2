"""The layer contract, read from the source (every import statement, at any depth:
imports inside functions count too):

- the science (``luigi_phot/photometry/``) imports nothing of the configuration,
  the tasks, the TOM client, the dataset module, the manager's modules, nor Luigi;
  of the package it may import only ``luigi_phot.names`` and itself;
- the TOM client imports no task;
- ``luigi_phot.names`` imports nothing of the package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "luigi_phot"

#: What the science may import of the package besides itself.
SCIENCE_MAY_IMPORT = {"luigi_phot.names"}
#: Modules the science must not import (each also by any submodule).
NOT_FOR_SCIENCE = ("luigi", "luigi_phot.config", "luigi_phot.tasks", "luigi_phot.tom", "luigi_phot.dataset",
                   "luigi_phot.selection", "luigi_phot.run_log", "luigi_phot.run_status", "luigi_phot.dataset_lock")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, name: str | None = None) -> set[str]:
    """Every module the source file `path` (the module `name`, by default the package's
    module at that path) imports, absolute (``from . import x`` gives package.x)."""
    name = name or module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def is_within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


SCIENCE = sorted((PACKAGE / "photometry").rglob("*.py"))


def test_the_import_reader_sees_relative_imports_and_imports_inside_functions(tmp_path):
    # The reader itself must see what the contract is about, or the contract checks nothing.
    probe = tmp_path / "probe.py"
    probe.write_text("from ..config import CameraConfig\n\ndef f():\n    import luigi.worker\n    from .. import names\n")
    seen = imports_of(probe, "luigi_phot.photometry.probe")
    assert {"luigi_phot.config", "luigi_phot.config.CameraConfig", "luigi.worker", "luigi_phot.names"} <= seen


@pytest.mark.parametrize("path", SCIENCE, ids=lambda p: p.name)
def test_the_science_imports_no_configuration_tasks_tom_dataset_manager_nor_luigi(path):
    found = imports_of(path)
    bad = sorted(m for m in found for prefix in NOT_FOR_SCIENCE if is_within(m, prefix))
    assert not bad, f"{path.relative_to(PACKAGE.parent)} imports {bad}"
    package = sorted(m for m in found if is_within(m, "luigi_phot") and not is_within(m, "luigi_phot.photometry")
                     and not any(is_within(m, ok) for ok in SCIENCE_MAY_IMPORT))
    assert not package, f"{path.relative_to(PACKAGE.parent)} imports {package} (only luigi_phot.names is allowed)"


def test_the_tom_client_imports_no_task():
    found = imports_of(PACKAGE / "tom.py")
    assert not [m for m in found if is_within(m, "luigi_phot.tasks") or is_within(m, "luigi")]


def test_names_imports_nothing_of_the_package():
    found = imports_of(PACKAGE / "names.py")
    assert not [m for m in found if is_within(m, "luigi_phot")]
