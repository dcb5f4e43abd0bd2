"""What a reduction manager run did (plain code, no Luigi).

:class:`ManagerLog` appends to ``log_dir/arcon_pipeline.log``, one line per event,
each carrying the manager run's id (several managers may append at once);
:class:`Outcome` says what happened to each selected dataset, and
:func:`count_line` sums them up. Each run also keeps, in
``log_dir/manager_runs/<run id>/``, one outcome record per dataset reduction
(written by ReduceDataset) and the run's ``summary.json``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from .selection import Dataset

__all__ = ["MANAGER_LOG_NAME", "RUNS_DIR", "OUTCOMES", "Outcome", "ManagerLog", "count_line"]

MANAGER_LOG_NAME = "arcon_pipeline.log"
#: log_dir/manager_runs/<run_id>/: one JSON file per dataset reduction and the run's summary.json
RUNS_DIR = "manager_runs"

#: What can happen to a selected dataset, in the order the summary lists them.
OUTCOMES = ("reduced", "up_to_date", "skipped", "failed")


@dataclass
class Outcome:
    """What happened to one selected dataset in one manager run."""

    dataset: Dataset
    status: str                    # one of OUTCOMES
    reason: str = ""
    run_id: str | None = None      # the reduction's run id (dataset lock, reduction_record.json)
    started_unix: float | None = None
    finished_unix: float | None = None

    def line(self) -> str:
        took = ""
        if self.started_unix is not None and self.finished_unix is not None:
            took = f" in {self.finished_unix - self.started_unix:.1f} s"
        text = {"reduced": f"reduced{took}", "up_to_date": "up to date", "skipped": "skipped",
                "failed": f"FAILED{took}"}[self.status]
        return f"{self.dataset.name}: {text}" + (f": {self.reason}" if self.reason else "") + \
            (f" (run {self.run_id})" if self.run_id and self.status in ("reduced", "failed") else "")

    def to_json(self) -> dict:
        data = asdict(self)
        data["dataset"] = {"red_dir": str(self.dataset.red_dir), "name": self.dataset.name}
        return data


class ManagerLog:
    """``log_dir/arcon_pipeline.log``: one line per event of a manager run, each carrying
    the run id (several managers may append at once). Lines also go to `echo`, a
    logger (the console) when given."""

    def __init__(self, log_dir: Path, run_id: str, echo: logging.Logger | None = None):
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.path = log_dir / MANAGER_LOG_NAME
        self.run_id = run_id
        self.echo = echo
        self._logger = logging.getLogger(f"luigi_phot.run_log.{run_id}")
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        self._handler = logging.FileHandler(self.path, mode="a", encoding="utf-8")
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s",
                                                     "%Y-%m-%d %H:%M:%S"))
        self._logger.addHandler(self._handler)

    def log(self, level: int, message: str) -> None:
        self._logger.log(level, f"[{self.run_id}] {message}")
        if self.echo is not None:
            self.echo.log(level, message)

    def info(self, message: str) -> None:
        self.log(logging.INFO, message)

    def warning(self, message: str) -> None:
        self.log(logging.WARNING, message)

    def error(self, message: str) -> None:
        self.log(logging.ERROR, message)

    def close(self) -> None:
        self._logger.removeHandler(self._handler)
        self._handler.close()


def count_line(outcomes: list[Outcome]) -> str:
    """'8 datasets selected: 3 reduced, 4 up to date, 1 skipped, 0 failed'."""
    n = {status: sum(o.status == status for o in outcomes) for status in OUTCOMES}
    return (f"{len(outcomes)} datasets selected: {n['reduced']} reduced, {n['up_to_date']} up to date, "
            f"{n['skipped']} skipped, {n['failed']} failed")
