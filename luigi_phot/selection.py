"""Which datasets a reduction manager run considers (plain code, no Luigi).

A dataset is a directory ``data_reduction_dir/<target>/<instrument>/<filter>/``
(for an instrument of ``instrument_list``) holding frames and a
``reduction_config.yaml``. :func:`select_datasets` finds them and applies the
configured group:

- ``all``     every dataset found;
- ``date``    datasets with a frame whose mid-exposure UTC date lies between
              ``start_date`` and ``end_date`` (both days included; either may be open);
- ``recent``  datasets with a frame observed within ``ndays`` of now;
- ``file``    the datasets listed in a text file, one path relative to
              ``data_reduction_dir`` a line (blank lines and ``#`` comments ignored).

Frame dates come from what an earlier reduction recorded
(``reduction_record.json``: ``frames{name: {mjd, digest}}``) for frames whose
content is still the one recorded (their digest, known without reading them
from the dataset's digest cache); other frames' headers are read once and
their dates kept in ``log_dir/frame_dates.json`` keyed by (device, inode,
size, mtime, ctime), so a date selection over a large tree does not reopen
every FITS file on every run, and a frame replaced by another is read again.

Every path is resolved (symlinks included) and refused when it leads outside
``data_reduction_dir``. What cannot be used is reported as a one-line
problem and skipped; it never stops the run. :func:`lock_skip_reason` says
why a selected dataset must not be started now (its lock is held).

What a run did is written by :mod:`luigi_phot.run_log`.
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from . import dataset_lock
from .config import REDUCTION_CONFIG_NAME, CameraConfig, ConfigError, ManagerConfig, load_reduction_config
from .dataset import RECORD_NAME, WriteError, frame_identities, read_json, write_json_atomic
from .photometry.frames import FrameError, read_frame_info

__all__ = ["FRAME_DATES_NAME", "Dataset", "Selection", "FrameDates", "discover_datasets", "read_dataset_list",
           "select_datasets", "lock_skip_reason", "mjd_now", "mjd_to_date"]

FRAME_DATES_NAME = "frame_dates.json"
_MJD_UNIX_EPOCH = 40587.0
_MJD_ZERO = dt.datetime(1858, 11, 17)


def mjd_now() -> float:
    """The current time as an MJD (UTC)."""
    return time.time() / 86400.0 + _MJD_UNIX_EPOCH


def mjd_to_date(mjd: float) -> dt.date:
    """UTC calendar date of an MJD."""
    return (_MJD_ZERO + dt.timedelta(days=float(mjd))).date()


@dataclass(frozen=True)
class Dataset:
    """A dataset directory: ``red_dir`` resolved (absolute, no symlinks), ``name`` its
    path relative to data_reduction_dir (``target/instrument/filter``)."""

    red_dir: Path
    name: str


@dataclass
class Selection:
    """The datasets a run will consider, and the one-line reasons others were left out."""

    group: str
    description: str               # e.g. "group date: 2026-07-01 to 2026-07-10"
    datasets: list[Dataset]
    n_found: int                   # datasets found before the group was applied
    problems: list[str] = field(default_factory=list)
    headers_read: int = 0          # FITS headers opened to date frames



# --------------------------------------------------------------------------
# Finding datasets
# --------------------------------------------------------------------------


def _subdirs(path: Path) -> list[str]:
    """Names of the visible subdirectories of `path` (following symlinks), sorted."""
    try:
        with os.scandir(path) as it:
            names = [e.name for e in it if not e.name.startswith(".") and e.is_dir()]
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []
    return sorted(names)


def _resolve_problem(exc: BaseException) -> str:
    if isinstance(exc, RuntimeError) or getattr(exc, "errno", None) == errno.ELOOP:
        return "symbolic link loop"
    return " ".join(str(exc).split())[:200]


def _dataset_at(root: Path, path: Path, what: str) -> tuple[Dataset | None, str | None]:
    """The dataset at `path`, or None and a one-line reason starting with `what`.

    The one place where a path found in the tree or named in a dataset list is
    confined to data_reduction_dir (`root`, resolved): it is resolved with every
    symbolic link followed, and refused when it leads outside root (by ``..``, an
    absolute path or a link), is root itself, cannot be resolved (a link loop), does
    not exist, is not a directory or holds no reduction_config.yaml. The manager
    never reads, locks or writes a directory this refuses."""
    # Python 3.12 and 3.13 word (and raise) these differently, so they are named here.
    if "\x00" in str(path):
        return None, f"{what}: cannot be resolved (embedded null byte): skipped"
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError, ValueError) as exc:   # 3.12 raises on a symlink loop
        return None, f"{what}: cannot be resolved ({_resolve_problem(exc)}): skipped"
    if resolved == root:
        return None, f"{what}: is data_reduction_dir itself, not a dataset directory in it: skipped"
    if not resolved.is_relative_to(root):
        via = " (through a symbolic link)" if Path(os.path.normpath(path)).is_relative_to(root) else ""
        return None, f"{what}: resolves to {resolved}{via}, outside data_reduction_dir {root}: skipped"
    try:
        os.stat(resolved)
    except OSError as exc:                              # 3.13 resolves a loop to itself
        if exc.errno == errno.ELOOP:
            return None, f"{what}: cannot be resolved (symbolic link loop): skipped"
        if isinstance(exc, FileNotFoundError):
            return None, f"{what}: does not exist: skipped"
        return None, f"{what}: cannot be resolved ({_resolve_problem(exc)}): skipped"
    if not resolved.is_dir():
        return None, f"{what}: is not a directory: skipped"
    if not (resolved / REDUCTION_CONFIG_NAME).is_file():
        return None, f"{what}: no {REDUCTION_CONFIG_NAME} in {resolved}: skipped"
    return Dataset(red_dir=resolved, name=resolved.relative_to(root).as_posix()), None


def discover_datasets(data_reduction_dir: Path, instruments: Iterable[str]) -> tuple[list[Dataset], list[str]]:
    """Every ``<target>/<instrument>/<filter>/`` directory under data_reduction_dir for the
    given instruments that holds a reduction_config.yaml, sorted by name; and the
    one-line problems of the directories left out (no configuration, outside the tree).
    Hidden directories (``.snapshot``, ``.git``, ...) are ignored."""
    root = Path(data_reduction_dir).resolve()
    datasets: dict[Path, Dataset] = {}
    spelled: dict[Path, str] = {}
    problems = []
    for target in _subdirs(root):
        for instrument in instruments:
            inst_dir = root / target / instrument
            for filt in _subdirs(inst_dir):
                rel = f"{target}/{instrument}/{filt}"
                ds, problem = _dataset_at(root, inst_dir / filt, rel)
                if problem:
                    problems.append(problem)
                elif ds.red_dir in datasets:
                    alias = rel if rel != ds.name else spelled[ds.red_dir]
                    problems.append(f"{alias}: the same directory as {ds.name} (a symbolic link): counted once")
                else:
                    datasets[ds.red_dir] = ds
                    spelled[ds.red_dir] = rel
    return sorted(datasets.values(), key=lambda d: d.name), problems


def read_dataset_list(path: Path, data_reduction_dir: Path) -> tuple[list[Dataset], list[str]]:
    """The datasets named in a selection file: one path a line, relative to
    data_reduction_dir (an absolute path must lie inside it); blank lines and lines
    starting with ``#`` are ignored. A path that does not exist, resolves outside
    data_reduction_dir or has no reduction_config.yaml is reported and skipped."""
    root = Path(data_reduction_dir).resolve()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a text file"
        raise ConfigError(f"{path}: dataset list cannot be read ({reason})") from None
    datasets: dict[Path, Dataset] = {}
    problems = []
    for number, raw in enumerate(text.splitlines(), 1):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        given = Path(os.path.expanduser(entry))
        ds, problem = _dataset_at(root, given if given.is_absolute() else root / given,
                                  f"{path}, line {number} {entry!r}")
        if problem:
            problems.append(problem)
        elif ds.red_dir not in datasets:
            datasets[ds.red_dir] = ds
    return list(datasets.values()), problems


# --------------------------------------------------------------------------
# Frame dates
# --------------------------------------------------------------------------


class FrameDates:
    """Mid-exposure MJDs (UTC) of a dataset's frames, reading as few headers as possible.

    A frame's date comes, in this order, from the dataset's reduction_record.json
    when the frame's content is the one recorded there (same digest); from the
    cache file (``log_dir/frame_dates.json``) when its (device, inode, size, mtime,
    ctime) match; else from its header (read once, then cached; a frame whose
    header gives no time is cached as undated). ``headers_read`` counts the
    headers opened. No frame is read for its content here.
    """

    def __init__(self, cache_path: Path | None):
        self.cache_path = cache_path
        self.headers_read = 0
        self._changed = False
        data = read_json(cache_path) if cache_path is not None else None
        self._cache: dict[str, dict[str, list]] = \
            data.get("datasets", {}) if data and data.get("version") == 2 else {}

    def mjds(self, red_dir: Path) -> Iterator[float]:
        """Yield the dataset's frame MJDs: known ones first, then by reading headers
        (stop iterating early and the remaining headers are never opened)."""
        frames = frame_identities(red_dir, hash_new=False)
        record = read_json(red_dir / RECORD_NAME) or {}
        recorded = record.get("frames") if isinstance(record.get("frames"), dict) else {}
        cached = self._cache.get(str(red_dir), {})
        unknown = []
        for frame in frames:
            entry = recorded.get(frame.name)
            mjd = entry.get("mjd") if isinstance(entry, dict) else None
            if isinstance(mjd, (int, float)) and frame.readable and entry.get("digest") == frame.digest:
                yield float(mjd)
                continue
            key = list(frame.stat_key) if frame.stat_key is not None else None
            hit = cached.get(frame.name)
            if key is not None and isinstance(hit, list) and len(hit) == 6 and hit[:5] == key:
                if hit[5] is not None:
                    yield float(hit[5])
                continue
            unknown.append((frame.name, key))
        camera = None
        for name, key in unknown:
            if camera is None:
                camera = _camera(red_dir)
            self.headers_read += 1
            try:
                mjd = read_frame_info(red_dir / name, camera).mjd_mid
            except FrameError:
                mjd = None
            if key is not None:
                self._cache.setdefault(str(red_dir), {})[name] = [*key, mjd]
                self._changed = True
            if mjd is not None:
                yield mjd

    def save(self) -> None:
        """Write the cache (atomically; with concurrent managers the last one wins,
        and a lost entry only costs one header read later)."""
        if self.cache_path is None or not self._changed:
            return
        live = {k: v for k, v in self._cache.items() if Path(k).is_dir()}
        try:
            write_json_atomic(self.cache_path, {"version": 2, "datasets": live}, inside=self.cache_path.parent)
        except (OSError, WriteError):
            pass  # a cache: reading the headers again next time is the only cost
        self._changed = False


def _camera(red_dir: Path) -> CameraConfig:
    """The dataset's camera settings (filter name, ...) for reading its headers."""
    try:
        return load_reduction_config(red_dir / REDUCTION_CONFIG_NAME, check_tom_file=False).camera
    except ConfigError:
        return CameraConfig()


# --------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------


def select_datasets(cfg: ManagerConfig, now_mjd: float | None = None,
                    dates: FrameDates | None = None) -> Selection:
    """The datasets the configured group selects (see the module docstring).
    ``now_mjd`` defaults to the current time; ``dates`` to a FrameDates with its cache
    in log_dir (saved before returning)."""
    sel = cfg.selection
    root = cfg.data_reduction_dir
    if sel.group == "file":
        datasets, problems = read_dataset_list(sel.file, root)
        return Selection(group="file", description=f"group file: {sel.file}", datasets=datasets,
                         n_found=len(datasets) + len(problems), problems=problems)
    found, problems = discover_datasets(root, cfg.instrument_list)
    if sel.group == "all":
        return Selection(group="all", description="group all", datasets=found, n_found=len(found),
                         problems=problems)
    dates = dates if dates is not None else FrameDates(cfg.log_dir / FRAME_DATES_NAME)
    if sel.group == "recent":
        now = mjd_now() if now_mjd is None else now_mjd
        earliest = now - sel.ndays

        def wanted(mjd: float) -> bool:
            return mjd >= earliest

        description = (f"group recent: a frame within {sel.ndays:g} days of now "
                       f"(since {(_MJD_ZERO + dt.timedelta(days=earliest)):%Y-%m-%d %H:%M} UTC)")
    else:
        start, end = sel.start_date, sel.end_date

        def wanted(mjd: float) -> bool:
            day = mjd_to_date(mjd)
            return (start is None or day >= start) and (end is None or day <= end)

        description = f"group date: {start or 'any date'} to {end or 'any date'} (UTC, both days included)"
    before = dates.headers_read
    chosen = [ds for ds in found if any(wanted(m) for m in dates.mjds(ds.red_dir))]
    dates.save()
    return Selection(group=sel.group, description=description, datasets=chosen, n_found=len(found),
                     problems=problems, headers_read=dates.headers_read - before)


def lock_skip_reason(red_dir: Path) -> str | None:
    """Why a dataset must not be started now (its lock is held by a live reduction, or
    by one that cannot be checked from this host), or None. A lock left by a dead
    process on this host is stale: the reduction takes it over."""
    holder = dataset_lock.read_lock(red_dir)
    if holder is None:
        return None
    state = dataset_lock.holder_state(holder)
    if state == "dead":
        return None
    if state == "alive":
        return f"locked: being reduced by {holder.describe()}"
    return (f"locked by {holder.describe()}, which cannot be checked from this host "
            f"(remove {Path(red_dir) / dataset_lock.LOCK_NAME} by hand if that reduction is gone)")
