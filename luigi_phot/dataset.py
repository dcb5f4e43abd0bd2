"""A dataset directory (red_dir) and what the pipeline keeps in it, without Luigi.

Layout of red_dir (inputs are never written to):

    reduction_config.yaml, frames (*.fits, *.fits.fz, ...)     the user's inputs
    dataset.lock                                               while a reduction runs
    aperture_pipeline.log                                      appended by every run
    <target>_<filter>_lc.ecsv / _lc.csv / _lc.png              light curve, TOM CSV, plot
    <target>_<filter>_noise.png, _fwhm_residuals.png           diagnostics
    <target>_<filter>_rejected.csv                             frames not used, and why
    upload_record.json, reduction_record.json                  what was uploaded / reduced
    photometry/catalogue.fits                                  reference catalogue
    photometry/frames/<key>/<frame>.phot.fits                  per-frame measurements
    photometry/<target>_<filter>_all_stars.fits                every star's time series

Every file is written to a hidden temporary name in the same directory and
renamed into place, so a crash never leaves a partial file under a final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import sys
import uuid
from pathlib import Path

from .config import REDUCTION_CONFIG_NAME, ReductionConfig
from .photometry.frames import is_frame_name

__all__ = ["PRODUCTS_DIR", "RECORD_NAME", "UPLOAD_RECORD_NAME", "LOG_NAME", "SCHEMA_VERSION",
           "WriteError", "frame_stats", "duplicate_exposures", "fingerprint", "read_json", "atomic_path", "atomic_paths", "write_json_atomic",
           "remove_stale_temporaries", "dataset_logger", "catalogue_path", "measurement_dir",
           "resolve_red_dir"]

PRODUCTS_DIR = "photometry"
RECORD_NAME = "reduction_record.json"
UPLOAD_RECORD_NAME = "upload_record.json"
LOG_NAME = "aperture_pipeline.log"
#: Bumped when a change of the pipeline changes its results: finished datasets are then redone.
SCHEMA_VERSION = 1
_TMP_PREFIX = ".tmp-"


def resolve_red_dir(red_dir: str | os.PathLike) -> Path:
    """Absolute, symlink-resolved dataset directory; one-line error if unusable."""
    p = Path(os.path.expanduser(str(red_dir))).resolve()
    if not p.is_dir():
        raise FileNotFoundError(f"{red_dir}: not a directory")
    return p


def catalogue_path(red_dir: Path) -> Path:
    return red_dir / PRODUCTS_DIR / "catalogue.fits"


def measurement_dir(red_dir: Path, key: str) -> Path:
    return red_dir / PRODUCTS_DIR / "frames" / key


def frame_stats(red_dir: Path) -> list[tuple[str, int, int]]:
    """(name, size, mtime_ns) of every frame in red_dir, sorted by name: the identity of
    the inputs (a frame replaced under the same name has a new size or mtime)."""
    out = []
    with os.scandir(red_dir) as it:
        for e in it:
            if is_frame_name(e.name):
                try:
                    st = e.stat()
                except OSError:
                    continue
                if not os.path.isdir(e.path):
                    out.append((e.name, st.st_size, st.st_mtime_ns))
    return sorted(out)


def duplicate_exposures(mid_mjd: dict[str, float | None], prefer: list[str] = (),
                        tolerance_s: float = 0.5) -> dict[str, str]:
    """Frames that are the same exposure as another frame of the dataset: {duplicate: kept}.

    Two frames whose mid-exposure times (MJD) agree within `tolerance_s` are one exposure
    (one camera cannot take two at once): the same file under two names, or the plain
    and fpack versions of one frame. Of each such group the frame listed first in
    `prefer` is kept, else the first by name. Frames without a time are never duplicates."""
    rank = {name: i for i, name in enumerate(prefer)}
    timed = sorted((t, n) for n, t in mid_mjd.items() if t is not None and math.isfinite(t))
    groups: list[list[tuple[float, str]]] = []
    for t, n in timed:
        if groups and (t - groups[-1][-1][0]) * 86400.0 <= tolerance_s:
            groups[-1].append((t, n))
        else:
            groups.append([(t, n)])
    out = {}
    for group in groups:
        names = sorted((n for _, n in group), key=lambda n: (rank.get(n, len(rank)), n))
        for n in names[1:]:
            out[n] = names[0]
    return out


def fingerprint(cfg: ReductionConfig, frames: list[tuple[str, int, int]]) -> str:
    """What a finished reduction was made from: configuration, frames, pipeline schema."""
    text = json.dumps({"schema": SCHEMA_VERSION, "config": cfg.fingerprint_key(), "frames": frames})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_json(path: Path) -> dict | None:
    try:
        with open(path) as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a hidden temporary path beside `path` (same extension); on success it is
    flushed to disk and renamed to `path`, on error removed."""
    path = Path(path)
    tmp = path.with_name(f"{_TMP_PREFIX}{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise WriteError(path, exc) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


class WriteError(RuntimeError):
    """A file of red_dir could not be written: a full disk, a quota, a read-only or
    unwritable directory, a file-size limit. ``str()`` is one line naming the file."""

    def __init__(self, path: Path, cause: OSError):
        self.path = Path(path)
        self.reason = _write_failure_reason(cause, self.path)
        super().__init__(f"cannot write {self.path}: {self.reason}")


def _write_failure_reason(exc: OSError, path: Path) -> str:
    """Why a write failed. Libraries that write (numpy's tofile under astropy) often raise
    an OSError without errno ('1092 requested and 640 written'): then look for the cause."""
    if exc.errno is not None and exc.strerror:
        return exc.strerror
    try:
        st = os.statvfs(path.parent)
        free = st.f_bavail * st.f_frsize
        if free < 1 << 20:
            return f"No space left on device ({free} bytes free)"
    except OSError:
        pass
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        if soft != resource.RLIM_INFINITY:
            return f"File too large (this process may write files of at most {soft} bytes: ulimit -f)"
    except (ImportError, OSError, ValueError):
        pass
    text = " ".join(str(exc).split())
    return text[:200] or type(exc).__name__


def _failed_file(exc: OSError, tmps: dict[str, Path], paths: dict[str, Path]) -> Path:
    """Which of several files being written failed: the one the error names, else the
    temporary written last (they are written one after the other)."""
    final = {str(t): Path(paths[k]) for k, t in tmps.items()}
    if exc.filename and str(exc.filename) in final:
        return final[str(exc.filename)]
    written = []
    for k, t in tmps.items():
        with contextlib.suppress(OSError):
            written.append((t.stat().st_mtime_ns, Path(paths[k])))
    if written:
        return max(written, key=lambda w: w[0])[1]
    return Path(next(iter(paths.values()))).parent


@contextlib.contextmanager
def atomic_paths(paths: dict[str, Path]):
    """Like atomic_path for several files: yields {name: temporary path}; on success
    all are renamed into place in the order given (put the file whose existence marks
    completion last), on error all temporaries are removed."""
    tmps = {}
    try:
        for k, p in paths.items():
            p = Path(p)
            p.parent.mkdir(parents=True, exist_ok=True)
            tmps[k] = p.with_name(f"{_TMP_PREFIX}{uuid.uuid4().hex[:8]}-{p.name}")
        yield tmps
        for k, p in paths.items():
            with open(tmps[k], "rb") as fh:
                os.fsync(fh.fileno())
        for k, p in paths.items():
            os.replace(tmps[k], p)
    except OSError as exc:
        failed = _failed_file(exc, tmps, paths)
        for t in tmps.values():
            with contextlib.suppress(OSError):
                t.unlink()
        raise WriteError(failed, exc) from exc
    except BaseException:
        for t in tmps.values():
            with contextlib.suppress(OSError):
                t.unlink()
        raise


def write_json_atomic(path: Path, data: dict) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=True, default=str)
            fh.write("\n")


def remove_stale_temporaries(red_dir: Path) -> int:
    """Remove temporary files left by crashed runs (only call while holding the lock)."""
    n = 0
    for d in (red_dir, red_dir / PRODUCTS_DIR, *(red_dir / PRODUCTS_DIR / "frames").glob("*")):
        if not d.is_dir():
            continue
        for p in d.iterdir():
            if p.name.startswith(_TMP_PREFIX) or (p.name.startswith(".dataset.lock.") and d == red_dir):
                with contextlib.suppress(OSError):
                    p.unlink()
                    n += 1
    return n


class _LogFile(logging.FileHandler):
    """aperture_pipeline.log. When it cannot be written (full disk, read-only red_dir)
    that is said once, in one line on stderr, and the run goes on: logging.FileHandler
    would raise from the logging call, or print a traceback for every message."""

    def __init__(self, path: Path):
        super().__init__(path, mode="a", encoding="utf-8", delay=True)
        self._pid = os.getpid()
        self.reported = False

    def emit(self, record):
        try:
            super().emit(record)
        except Exception:
            self.handleError(record)

    def handleError(self, record):
        if not self.reported:
            self.reported = True
            exc = sys.exc_info()[1]
            reason = getattr(exc, "strerror", None) or str(exc)
            sys.stderr.write(f"luigi_phot: cannot write {self.baseFilename}: {reason} "
                             "(log messages are lost until it can)\n")
        if self.stream is not None and not self.stream.closed:
            try:  # drop what could not be written, so the next message starts clean
                self.stream.close()
            except OSError:
                pass
            self.stream = None


_LOGGERS: dict[str, logging.Logger] = {}


def dataset_logger(red_dir: Path) -> logging.Logger:
    """Logger writing to red_dir/aperture_pipeline.log (appended; one handler per process)."""
    key = str(red_dir)
    logger = _LOGGERS.get(key)
    if logger is None or logger.handlers and getattr(logger.handlers[0], "_pid", None) != os.getpid():
        logger = logging.getLogger("luigi_phot.dataset." + hashlib.sha1(key.encode()).hexdigest()[:10])
        for h in list(logger.handlers):
            logger.removeHandler(h)
        handler = _LogFile(red_dir / LOG_NAME)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%Y-%m-%d %H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        _LOGGERS[key] = logger
    return logger


def config_path(red_dir: Path) -> Path:
    return red_dir / REDUCTION_CONFIG_NAME
