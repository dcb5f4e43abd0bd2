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
    photometry/frames/<key>/<stem>.<id>.phot.fits              per-frame measurements
    photometry/<target>_<filter>_all_stars.fits                every star's time series
    photometry/frame_digests.json                              cache of the frames' content digests

Every file is written to a hidden temporary name in the same directory and
renamed into place, so a crash never leaves a partial file under a final name;
and only after its path is checked to lie inside red_dir (:func:`check_inside`).

A frame's identity is a digest of its content (:func:`frame_identities`), never
its modification time: a frame replaced by other pixels is measured again
whatever its mtime (``cp -p``, ``rsync -t``, a restore), and one only touched is
not. Digests are kept in ``photometry/frame_digests.json`` keyed by the file's
(device, inode, size, mtime, ctime): the ctime changes on every write and no
tool can set it back, so an unchanged key means unchanged content and a no-op
rerun reads no frame.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import stat
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .config import REDUCTION_CONFIG_NAME, ReductionConfig
from .names import file_stem, shown
from .photometry.frames import list_frames

__all__ = ["PRODUCTS_DIR", "RECORD_NAME", "UPLOAD_RECORD_NAME", "LOG_NAME", "SCHEMA_VERSION", "DIGEST_CACHE_NAME",
           "WriteError", "UnsafePath", "FrameIdentity", "frame_identities", "frame_identity", "duplicate_exposures",
           "fingerprint", "read_json", "check_inside", "is_inside", "atomic_path", "atomic_paths", "write_json_atomic",
           "remove_stale_temporaries", "dataset_logger", "catalogue_path", "measurement_dir", "measurement_path",
           "resolve_red_dir", "catalogue_header", "measurement_key", "environmental_cause", "RETRY_SUFFIX", "retry_path",
           "retry_markers", "ecsv_meta"]

PRODUCTS_DIR = "photometry"
RECORD_NAME = "reduction_record.json"
UPLOAD_RECORD_NAME = "upload_record.json"
LOG_NAME = "aperture_pipeline.log"
#: Bumped when a change of the pipeline changes its results: finished datasets are then redone.
SCHEMA_VERSION = 1
DIGEST_CACHE_NAME = "frame_digests.json"
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


def measurement_path(red_dir: Path, key: str, frame: str, digest: str) -> Path:
    """Where the measurement of frame `frame` with content `digest` is kept: named by a
    readable stem of the frame's name and a digest of (name, content), so that any
    name (long, accented, with a newline) gives a short, safe file name, and other
    content under the same name another file."""
    h = hashlib.blake2b(_name_bytes(frame) + b"\0" + digest.encode(), digest_size=8).hexdigest()
    return measurement_dir(red_dir, key) / f"{file_stem(frame)}.{h}.phot.fits"


def _name_bytes(name: str) -> bytes:
    try:
        return os.fsencode(name)
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogatepass")


# --------------------------------------------------------------------------
# Frame identity: a digest of the content, cached by (dev, inode, size, mtime, ctime)
# --------------------------------------------------------------------------

#: Prefix of the identity of a frame whose content cannot be read (a link loop, permission denied).
UNREADABLE = "unreadable: "
#: A file changed this recently may change again within its timestamps' resolution
#: without changing them: its digest is remembered by this process only, not in the
#: cache file (the next run computes it again).
_SETTLE_NS = 2_000_000_000
_DIGESTS: dict[tuple, str] = {}          # (dev, ino, size, mtime_ns, ctime_ns) -> digest, this process
_UNSETTLED: set[tuple] = set()           # keys of _DIGESTS not to be written to a cache file
_LOADED: dict[str, tuple] = {}           # red_dir -> stat of the digest cache file last read


@dataclass(frozen=True)
class FrameIdentity:
    """A frame as the pipeline knows it: its name and the digest of its content
    (sha256, 32 hex digits), or ``'unreadable: <why>'`` when the content cannot be
    read, or None when not known without reading it (``hash_new=False``)."""

    name: str
    digest: str | None
    stat_key: tuple | None = None

    @property
    def readable(self) -> bool:
        return self.digest is not None and not self.digest.startswith(UNREADABLE)


def _stat_key(st: os.stat_result) -> tuple:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _hash_file(path: Path) -> tuple[str, tuple]:
    """sha256 of the file's content and the stat key it had, read in one pass; the key
    is None when the file changed while it was read (a copy in progress)."""
    with open(path, "rb") as fh:
        before = os.fstat(fh.fileno())
        if not stat.S_ISREG(before.st_mode):
            raise OSError(0, "not a regular file")
        digest = hashlib.file_digest(fh, "sha256").hexdigest()[:32]
        after = os.fstat(fh.fileno())
    return digest, (_stat_key(before) if _stat_key(before) == _stat_key(after) else None)


def _identify(red_dir: Path, name: str, hash_new: bool) -> tuple[FrameIdentity, bool]:
    """The frame's identity, and whether it was hashed now (not from a cache)."""
    path = red_dir / name
    try:
        st = os.stat(path)
    except OSError as exc:
        return FrameIdentity(name, UNREADABLE + _os_reason(exc)), False
    if not stat.S_ISREG(st.st_mode):
        return FrameIdentity(name, UNREADABLE + "not a regular file"), False
    key = _stat_key(st)
    digest = _DIGESTS.get(key)
    if digest is not None or not hash_new:
        return FrameIdentity(name, digest, key), False
    try:
        digest, key = _hash_file(path)
    except OSError as exc:
        return FrameIdentity(name, UNREADABLE + _os_reason(exc)), False
    if key is not None:
        _DIGESTS[key] = digest
        if time.time_ns() - max(key[3], key[4]) <= _SETTLE_NS:
            _UNSETTLED.add(key)
    return FrameIdentity(name, digest, key), True


def _os_reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _digest_cache(red_dir: Path) -> Path:
    return red_dir / PRODUCTS_DIR / DIGEST_CACHE_NAME


def _load_digest_cache(red_dir: Path) -> None:
    """Remember the digests of red_dir's cache file (once per change of the file); a
    damaged or foreign file is ignored (the digests are computed again)."""
    path = _digest_cache(red_dir)
    try:
        st = os.stat(path)
    except OSError:
        return
    if _LOADED.get(str(red_dir)) == _stat_key(st):
        return
    _LOADED[str(red_dir)] = _stat_key(st)
    data = read_json(path) or {}
    entries = data.get("frames") if data.get("version") == 1 else None
    if not isinstance(entries, dict):
        return
    for entry in entries.values():
        if (isinstance(entry, list) and len(entry) == 6 and all(type(v) is int for v in entry[:5])
                and isinstance(entry[5], str) and len(entry[5]) == 32):
            _DIGESTS.setdefault(tuple(entry[:5]), entry[5])


def _save_digest_cache(red_dir: Path, identities: list[FrameIdentity]) -> None:
    """Write the cache of the current frames' digests (atomically; concurrent writers:
    the last one wins, and a lost entry costs one more read of that frame)."""
    frames = {i.name: [*i.stat_key, i.digest] for i in identities
              if i.readable and i.stat_key is not None and i.stat_key not in _UNSETTLED}
    try:
        write_json_atomic(_digest_cache(red_dir), {"version": 1, "frames": frames}, inside=red_dir)
    except (OSError, WriteError):
        pass  # a cache (a read-only red_dir, a full disk): the frames are hashed again next time


def frame_identities(red_dir: Path, hash_new: bool = True) -> list[FrameIdentity]:
    """The identity of every frame of red_dir (see ``photometry.frames.list_frames``),
    sorted by name. Digests come from this process's memory, else from
    ``photometry/frame_digests.json``, else by reading the frames (several at once);
    new digests are saved in that file. With ``hash_new=False`` no frame is read: a
    frame whose digest is not cached has digest None."""
    red_dir = Path(red_dir)
    _load_digest_cache(red_dir)
    names = [p.name for p in list_frames(red_dir)]
    found = {}
    todo = []
    for name in names:
        ident, _ = _identify(red_dir, name, hash_new=False)
        if ident.digest is None and ident.stat_key is not None and hash_new:
            todo.append(name)
        found[name] = ident
    hashed = False
    if todo:
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            for ident, new in pool.map(lambda n: _identify(red_dir, n, hash_new=True), todo):
                found[ident.name] = ident
                hashed |= new and ident.stat_key not in _UNSETTLED   # worth writing down
    identities = [found[n] for n in names]
    cached = read_json(_digest_cache(red_dir)) if not hashed else None
    if hashed or (cached is not None and set((cached.get("frames") or {})) - set(names)):
        _save_digest_cache(red_dir, identities)
    return identities


def frame_identity(red_dir: Path, name: str) -> FrameIdentity:
    """The identity of one frame (from the caches when it is unchanged)."""
    red_dir = Path(red_dir)
    ident, _ = _identify(red_dir, name, hash_new=False)
    if ident.digest is None and ident.stat_key is not None:
        _load_digest_cache(red_dir)
        ident, _ = _identify(red_dir, name, hash_new=True)
    return ident


def duplicate_exposures(frames: dict[str, tuple[float | None, str | None]], prefer: list[str] = (),
                        tolerance_s: float = 0.5) -> dict[str, str]:
    """{frame: why it is not used} for frames that share their exposure with another.

    `frames` maps each usable frame to (mid-exposure MJD, content digest: of its pixels,
    so that an fpack'ed copy counts as the same). Frames whose mid-exposure times agree
    within `tolerance_s` claim the same exposure (one camera cannot take two at once).
    When all of them hold the same content, they are one frame under several names: the one listed first in `prefer` (else the first by
    name) is used, the others are not. When their contents differ, at most one of
    them can be genuine and nothing tells which (a mislabelled copy has another
    frame's header time on different pixels): none is used. Frames without a time
    are never duplicates; a frame without a digest differs from every other."""
    rank = {name: i for i, name in enumerate(prefer)}
    timed = sorted((t, n) for n, (t, _) in frames.items() if t is not None and math.isfinite(t))
    groups: list[list[tuple[float, str]]] = []
    for t, n in timed:
        if groups and (t - groups[-1][-1][0]) * 86400.0 <= tolerance_s:
            groups[-1].append((t, n))
        else:
            groups.append([(t, n)])
    out = {}
    for group in groups:
        names = sorted((n for _, n in group), key=lambda n: (rank.get(n, len(rank)), n))
        if len(names) < 2:
            continue
        digests = {frames[n][1] for n in names}
        if len(digests) == 1 and None not in digests:
            for n in names[1:]:
                out[n] = f"the same exposure as {shown(names[0])} (identical content): not used twice"
            continue
        for n in names:
            others = ", ".join(shown(o) for o in names if o != n)
            out[n] = (f"the same exposure time as {others} but different content: at most one can be genuine "
                      "and nothing tells which (a mislabelled copy?), so none is used")
    return out


def fingerprint(cfg: ReductionConfig, frames: list[FrameIdentity] | list[tuple[str, str | None]]) -> str:
    """What a finished reduction was made from: configuration, frames (name and content
    digest), pipeline schema."""
    pairs = sorted((f.name, f.digest) if isinstance(f, FrameIdentity) else (f[0], f[1]) for f in frames)
    text = json.dumps({"schema": SCHEMA_VERSION, "config": cfg.fingerprint_key(), "frames": pairs})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_json(path: Path) -> dict | None:
    try:
        with open(path) as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


class UnsafePath(RuntimeError):
    """A file the pipeline was about to write lies outside the directory it belongs
    to (a name made of outside values that escaped): nothing is written."""


def check_inside(path: Path, root: Path) -> Path:
    """`path` with its directory resolved (symbolic links followed), when it lies inside
    `root` (resolved likewise) and its own name is an ordinary file name; else
    :class:`UnsafePath`. Every file of red_dir is checked here before it is written:
    a name made of outside values cannot lead out, nor can a symbolic link planted
    in red_dir (``photometry -> elsewhere``): nothing is written through it."""
    path, root = Path(path), Path(root).resolve()
    name = path.name
    if name in ("", ".", "..") or "\0" in str(path):
        raise UnsafePath(f"{shown(str(path))}: not a file name; refusing to write it")
    parent = path.parent.resolve()
    if parent != root and not parent.is_relative_to(root):
        raise UnsafePath(f"{shown(str(path))}: lies outside {root}; refusing to write it")
    return parent / name


@contextlib.contextmanager
def atomic_path(path: Path, *, inside: Path):
    """Yield a hidden temporary path beside `path` (same extension); on success it is
    flushed to disk and renamed to `path`, on error removed. `path` must lie inside
    the directory `inside` (:func:`check_inside`), else nothing is written."""
    path = check_inside(path, inside)
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
def atomic_paths(paths: dict[str, Path], *, inside: Path):
    """Like atomic_path for several files: yields {name: temporary path}; on success
    all are renamed into place in the order given (put the file whose existence marks
    completion last), on error all temporaries are removed. Every path must lie inside
    `inside`, else nothing is written."""
    paths = {k: check_inside(p, inside) for k, p in paths.items()}
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


def write_json_atomic(path: Path, data: dict, *, inside: Path) -> None:
    with atomic_path(path, inside=inside) as tmp:
        with open(tmp, "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=True, default=str)
            fh.write("\n")


def is_inside(path: Path, root: Path) -> bool:
    """True when `path` (symbolic links resolved) is `root` or lies inside it."""
    try:
        check_inside(Path(path) / "x", root)
        return True
    except UnsafePath:
        return False


def remove_stale_temporaries(red_dir: Path) -> int:
    """Remove temporary files left by crashed runs (only call while holding the lock).
    Directories that a symbolic link leads out of red_dir are left alone."""
    n = 0
    for d in (red_dir, red_dir / PRODUCTS_DIR, *(red_dir / PRODUCTS_DIR / "frames").glob("*")):
        if not d.is_dir() or not is_inside(d, red_dir):
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
        # a frame's name may hold anything a file name can: never a reason to lose a line
        super().__init__(path, mode="a", encoding="utf-8", delay=True, errors="backslashreplace")
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


# --------------------------------------------------------------------------
# Which measurements are current, and which frames are tried again
# --------------------------------------------------------------------------

#: errno values that blame a frame's environment, not its content: permission denied,
#: a failing disk, a stale or timed-out network file system.
_FRAME_ENVIRONMENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EIO, errno.ESTALE, errno.ETIMEDOUT}
#: Beside a measurement file `<x>.phot.fits`, `<x>.retry.json`: the frame was rejected for an
#: environmental cause by the run named inside (with the frame's name and content digest).
RETRY_SUFFIX = ".retry.json"
_PHOT_SUFFIX = ".phot.fits"
_KEYS: dict[tuple, str] = {}


def catalogue_header(path: Path):
    """The primary header of a catalogue file (an astropy Header), or None when it cannot be read."""
    from astropy.io import fits

    try:
        return fits.getheader(path, 0)
    except (OSError, ValueError):
        return None


def measurement_key(red_dir: Path, cfg: ReductionConfig) -> str:
    """Key of the per-frame results (the directory ``photometry/frames/<key>``): the
    measurement settings and the catalogue they were measured against (its CATID), so
    that a new catalogue or other apertures make every frame be measured again."""
    cpath = catalogue_path(red_dir)
    try:
        mtime = cpath.stat().st_mtime_ns
    except FileNotFoundError:
        mtime = None
    cache_key = (str(cpath), mtime, cfg.measurement_key())
    if cache_key not in _KEYS:
        hdr = catalogue_header(cpath) if mtime is not None else None
        cat_id = hdr.get("CATID", "none") if hdr is not None else "none"
        _KEYS[cache_key] = hashlib.sha256(f"{cfg.measurement_key()}:{cat_id}".encode()).hexdigest()[:12]
    return _KEYS[cache_key]


def environmental_cause(exc: BaseException, frame_path: Path) -> bool:
    """True when a frame could not be used because of its environment (it cannot be
    read: permission denied, an I/O error) rather than its content: an OSError with
    such an errno anywhere in the exception's chain (causes and contexts, which
    ``raise ... from None`` keeps), or a frame that exists but cannot be read now.
    Such a rejection holds for the current run only (see :func:`retry_markers`).
    A symbolic link that leads nowhere (a loop, a missing target) is the frame's own
    state: its rejection is remembered until the link changes (its identity then does)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _FRAME_ENVIRONMENT_ERRNOS:
            return True
        exc = exc.__cause__ or exc.__context__
    return os.path.exists(frame_path) and not os.access(frame_path, os.R_OK)


def retry_path(measurement: Path) -> Path:
    """The retry marker beside a measurement file."""
    return measurement.with_name(measurement.name[: -len(_PHOT_SUFFIX)] + RETRY_SUFFIX)


def retry_markers(red_dir: Path, key: str) -> dict[str, dict]:
    """{frame: marker} for the current frames of red_dir that a run rejected for an
    environmental cause (under measurement key `key`), with the content they have now;
    a marker holds 'frame', 'digest', 'run_id' and 'reason'. Such a frame is measured
    again by the next run, and the dataset is not current until it has been."""
    found = {}
    for marker in measurement_dir(red_dir, key).glob(f"*{RETRY_SUFFIX}"):
        data = read_json(marker)
        if data is None or marker.name.startswith(".") or not isinstance(data.get("frame"), str):
            continue
        frame = data["frame"]
        if "/" in frame or not os.path.lexists(red_dir / frame):
            continue
        if frame_identity(red_dir, frame).digest == data.get("digest"):
            found[frame] = data
    return found


def ecsv_meta(path: Path) -> dict:
    """The table meta of an ECSV file (its YAML header, read by astropy's own ECSV
    header reader), without reading the table; {} when the file is absent or not ECSV."""
    from astropy.table.meta import get_header_from_yaml

    lines = []
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if not line.startswith("#"):
                    break
                lines.append(line[2:].rstrip("\n") if line.startswith("# ") else line[1:].rstrip("\n"))
    except (OSError, UnicodeDecodeError):
        return {}
    if not lines or not lines[0].startswith("%ECSV"):
        return {}
    try:
        meta = get_header_from_yaml(lines[1:]).get("meta")
    except Exception:  # a damaged header: the file is made again
        return {}
    return dict(meta) if meta else {}
