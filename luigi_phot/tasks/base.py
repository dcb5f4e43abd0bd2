"""What every dataset stage shares: its parameters, configuration, log, lock check,
status record, and one-line failure messages for the errors users cause."""

from __future__ import annotations

import errno
import functools
import logging
import os
import re
import time
import warnings
from pathlib import Path

import luigi

from ..config import ConfigError, ReductionConfig, load_reduction_config
from ..dataset import UnsafePath, WriteError, config_path, dataset_logger
from ..dataset_lock import LockHeldError, read_lock
from ..names import UnsafeName
from ..run_status import write_record

__all__ = ["Reporting", "DatasetStage", "StageError", "USER_ERRORS", "one_line_error", "load_config",
           "register_run", "run_owner_pid", "run_records_folder", "install_console_filter", "warnings_to_log"]


class StageError(RuntimeError):
    """A stage cannot do its work (the message says why, in one line)."""


def _user_errors():
    from ..photometry.catalogue import CatalogueError
    from ..photometry.frames import FrameError

    errors = [ConfigError, LockHeldError, StageError, CatalogueError, FrameError, FileNotFoundError, WriteError,
              UnsafePath, UnsafeName]
    try:
        from ..tom import TomError
        errors.append(TomError)
    except ImportError:
        pass
    return tuple(errors)


USER_ERRORS: tuple = ()


def user_errors() -> tuple:
    global USER_ERRORS
    if not USER_ERRORS:
        USER_ERRORS = _user_errors()
    return USER_ERRORS


#: File-system errors that are the environment's, not the pipeline's: a full disk, a
#: quota, a read-only or unwritable red_dir, a file-size limit, a failing device.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}
_ENVIRONMENT_ERRNOS = _WRITE_ERRNOS | {errno.EACCES, errno.EPERM, errno.EIO}
#: Hidden temporaries (dataset.atomic_path, lock creation) are named after the file being written.
_TEMPORARY = re.compile(r"^\.tmp-[0-9a-f]{8}-(?P<name>.+)$|^\.(?P<lock>dataset\.lock)\..+$")


def one_line_error(exc: BaseException) -> str | None:
    """The one-line message for an error users or their environment cause (bad input,
    configuration, a held lock, a full disk or read-only red_dir), None for others
    (bugs: those keep their traceback)."""
    if isinstance(exc, user_errors()):
        return str(exc)
    if isinstance(exc, OSError) and exc.errno in _ENVIRONMENT_ERRNOS:
        where = ""
        if exc.filename:
            path = Path(os.fsdecode(exc.filename))
            m = _TEMPORARY.match(path.name)
            if m:
                path = path.with_name(m.group("name") or m.group("lock"))
            where = f" {path}"
        verb = "cannot write" if exc.errno in _WRITE_ERRNOS else "cannot access"
        return f"{verb}{where}: {exc.strerror or os.strerror(exc.errno)}"
    return None


_CONFIGS: dict[str, tuple[tuple, ReductionConfig]] = {}


def _mtime_ns(path: Path | None) -> int | None:
    try:
        return None if path is None else path.stat().st_mtime_ns
    except OSError:
        return None


def load_config(red_dir: Path) -> ReductionConfig:
    """The dataset's configuration (parsed once per process while neither the file
    nor the TOM account file it names changes)."""
    path = config_path(red_dir)
    try:
        mtime = path.stat().st_mtime_ns
    except FileNotFoundError:
        raise ConfigError(f"{path}: reduction configuration not found "
                          f"(copy luigi_phot/examples/reduction_config.yaml there and edit it)") from None
    cached = _CONFIGS.get(str(path))
    if cached and cached[0] == (mtime, _mtime_ns(cached[1].tom.config_file)):
        return cached[1]
    cfg = load_reduction_config(path)
    _CONFIGS[str(path)] = ((mtime, _mtime_ns(cfg.tom.config_file)), cfg)
    return cfg


# The process that runs ReduceDataset.run() owns the lock of its run and the folder of its
# status records; its stages run in that process or in processes forked from it, which
# inherit this table: they record that pid in the lock file and write their records there.
_RUNS: dict[str, tuple[int, Path | None]] = {}


def register_run(run_id: str, records_folder: Path | None = None) -> None:
    """Make this process the owner of run `run_id`, whose stages write their status
    records into `records_folder` (none when None)."""
    _RUNS[run_id] = (os.getpid(), records_folder)


def run_owner_pid(run_id: str) -> int:
    return _RUNS.get(run_id, (os.getpid(), None))[0]


def run_records_folder(run_id: str) -> Path | None:
    return _RUNS.get(run_id, (None, None))[1]


class Reporting:
    """Progress and status for the visualiser, usable when a task runs outside a worker."""

    def report_status(self, message: str) -> None:
        """Status message for the visualiser (a no-op outside a Luigi worker)."""
        if callable(self.set_status_message):
            self.set_status_message(message)

    def report_progress(self, percent: int) -> None:
        """Progress percentage for the visualiser (a no-op outside a Luigi worker)."""
        if callable(self.set_progress_percentage):
            self.set_progress_percentage(percent)


class DatasetStage(Reporting, luigi.Task):
    """A stage of one dataset's reduction, run under that run's lock. When it ends it
    writes its status record (run_status.py), which ReduceDataset reads."""

    red_dir = luigi.Parameter(description="dataset directory")
    run_id = luigi.Parameter(description="the reduction run this stage belongs to")

    @property
    def red(self) -> Path:
        return Path(self.red_dir)

    @property
    def config(self) -> ReductionConfig:
        return load_config(self.red)

    @property
    def log(self) -> logging.Logger:
        return dataset_logger(self.red)

    def note(self, message: str, level: int = logging.INFO) -> None:
        self.log.log(level, f"[{self.run_id}] {self.task_family}: {message}")

    def check_lock(self) -> None:
        """Refuse to write unless this run holds the dataset's lock."""
        holder = read_lock(self.red)
        if holder is None or holder.run_id != self.run_id:
            who = holder.describe() if holder else "nobody"
            raise StageError(f"{self.red}: run {self.run_id} does not hold the dataset lock (held by {who})")

    def record(self, status: str, reason: str = "", **extra) -> None:
        """Write this stage's status record of this run, if the run keeps records (never raises)."""
        folder = run_records_folder(self.run_id)
        if folder is not None:
            write_record(folder, self.task_id, self.run_id, self.task_family, status, reason,
                         frame=getattr(self, "image", None), **extra)

    def on_success(self):
        self.record("done")
        return super().on_success()

    def failure_status(self, exception) -> str:
        """The status its record gives a failure ('failed'; LockDataset says 'lock_held')."""
        return "failed"

    def on_failure(self, exception):
        """One line for errors users cause (shown in the visualiser and the log), and
        the stage's status record."""
        one_line = one_line_error(exception)
        message = one_line or f"{type(exception).__name__}: {exception}"
        try:
            self.note(f"FAILED: {message}", logging.ERROR)
        except Exception:
            pass
        self.record(self.failure_status(exception), " ".join(message.split())[:500])
        return message if one_line is not None else super().on_failure(exception)

    def timed(self):
        return _Timer()

    def note_warnings(self, caught: list) -> None:
        """One WARNING line in the dataset log per distinct recorded warning."""
        where = f"{self.image}: " if isinstance(getattr(self, "image", None), str) else ""
        distinct = {(w.category.__name__, " ".join(str(w.message).split())[:200]): w for w in caught}
        for k, ((name, text), w) in enumerate(distinct.items()):
            if k == _MAX_WARNING_LINES:
                self.note(f"{where}{len(distinct) - k} more distinct warnings", logging.WARNING)
                break
            self.note(f"{where}{name}: {text} ({Path(w.filename).name}:{w.lineno})", logging.WARNING)


#: A stage notes at most this many distinct warnings; more are counted in one line.
_MAX_WARNING_LINES = 5


def warnings_to_log(method):
    """Decorator for a DatasetStage method: the Python warnings raised while it runs
    (numpy, astropy: each a bug or an odd input worth knowing) become one line each in
    the dataset log - the distinct ones, with where they came from - instead of lines on
    the console that name no frame. The warning filters in force are kept."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with warnings.catch_warnings(record=True) as caught:
            try:
                return method(self, *args, **kwargs)
            finally:
                self.note_warnings(caught)

    return wrapper


class _Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        return False


class _OneLineUserErrors(logging.Filter):
    """Luigi logs task failures with a traceback; for errors the user caused (bad
    configuration, held lock, ...) the message alone says everything."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        one_line = one_line_error(exc) if exc is not None else None
        if one_line is not None:
            record.msg = f"{record.getMessage()}: {one_line}"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True


_FILTER_INSTALLED = False


def install_console_filter() -> None:
    global _FILTER_INSTALLED
    if not _FILTER_INSTALLED:
        logging.getLogger("luigi-interface").addFilter(_OneLineUserErrors())
        _FILTER_INSTALLED = True
