"""The measurements of a dataset's frames, kept stacked between two light curves.

A light curve of N frames reads N measurement files (one FITS table each, one
row per catalogue star). When one frame arrives in a dataset of 500, reading the
other 499 files again is most of the cost that is not calibration. This cache
keeps what :func:`build_lightcurve` uses of each measurement - its header (as
the header's text, and its values by keyword as JSON, so that a light curve
reads them without parsing 500 headers) and the columns
:data:`LIGHTCURVE_COLUMNS`, with their dtypes - in blocks: each block's
headers and file facts in one ``.npz``, each column stacked (frames x stars) in
a ``.npy`` of its own, which is mapped into memory rather than read (the light
curve copies each row once, into its own arrays; reading 500 x 14,600 stars'
columns into memory first cost 0.1 s and 100 MB of fresh pages):

- :func:`read_measurements` gives the same :class:`MeasurementRecord` objects as
  reading every file with :func:`read_measurement` (the header parsed from the
  same text, the arrays with the same values and types, in native byte order), so a
  light curve made through the cache is the one made from the files;
- an entry counts only while its file has the same name, size and mtime
  (measurement files are named after the frame's content digest and never
  rewritten in place, so a changed frame is a new name anyway);
- the frames read from files this time go into one new block; with more than
  :data:`MAX_BLOCKS` blocks, all current entries are written into one and the
  others removed. The list of blocks (``index.json``) is replaced atomically, after
  the block's files are in place; each time it is, the files of blocks it does not
  list (merged, of another format, a crash's ``.tmp-*``) are removed. A damaged or
  foreign cache is ignored (everything is read from the files).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np
from astropy.io import fits

from ..names import name_from_header
from .lightcurve import MeasurementRecord, read_measurement

__all__ = ["LIGHTCURVE_COLUMNS", "MAX_BLOCKS", "MEASUREMENT_CACHE_NAME", "read_measurements"]

#: The columns of a measurement that the light curve uses.
LIGHTCURVE_COLUMNS = ("flux", "flux_err", "neighbour_flux", "flags")
#: Blocks before the cache is rewritten as one.
MAX_BLOCKS = 8
#: The cache's directory, beside the measurements' directories.
MEASUREMENT_CACHE_NAME = "measurement_cache"
_INDEX = "index.json"
_VERSION = 3


def _key(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _column_file(block: str, column: str) -> str:
    return f"{block.removesuffix('.npz')}.{column}.npy"


def _block_files(block: str) -> list[str]:
    return [block] + [_column_file(block, c) for c in LIGHTCURVE_COLUMNS]


def _load(cache_dir: Path) -> tuple[dict[str, tuple], list[str]]:
    """{key: (size, mtime_ns, header text, header values as JSON, columns or None)} and the block files, or
    ({}, []) when there is no usable cache. Columns are rows of the blocks' mapped arrays."""
    try:
        index = json.loads((cache_dir / _INDEX).read_text())
        if index.get("version") != _VERSION or index.get("columns") != list(LIGHTCURVE_COLUMNS):
            return {}, []
        entries = {}
        for block in index["blocks"]:
            stacks = {c: np.asarray(np.load(cache_dir / _column_file(block, c), mmap_mode="r", allow_pickle=False))
                      for c in LIGHTCURVE_COLUMNS}
            with np.load(cache_dir / block, allow_pickle=False) as z:
                row = 0
                for key, size, mtime, header, values, has in zip(z["keys"], z["sizes"], z["mtimes"], z["headers"],
                                                                 z["values"], z["has_columns"]):
                    cols = None
                    if has:
                        cols = {c: stacks[c][row] for c in LIGHTCURVE_COLUMNS}
                        row += 1
                    entries[str(key)] = (int(size), int(mtime), str(header), str(values), cols)
            if any(len(stacks[c]) != row for c in LIGHTCURVE_COLUMNS):
                return {}, []
        return entries, list(index["blocks"])
    except (OSError, ValueError, KeyError, TypeError, IndexError, EOFError):
        return {}, []


def _write_block(cache_dir: Path, entries: dict[str, tuple]) -> str:
    """Write `entries` ({key: (size, mtime_ns, header text, values JSON, columns or None)}) as a new block
    (its columns first: a block is listed in the index only once all its files are in place)."""
    with_cols = [e[4] for e in entries.values() if e[4] is not None]
    name = f"block-{uuid.uuid4().hex[:12]}.npz"
    for c in LIGHTCURVE_COLUMNS:
        stack = np.stack([cols[c] for cols in with_cols]) if with_cols else np.zeros((0, 0), np.float32)
        _save_atomic(cache_dir / _column_file(name, c), np.save, stack, allow_pickle=False)
    meta = {"keys": np.array(list(entries), dtype=str),
            "sizes": np.array([e[0] for e in entries.values()], np.int64),
            "mtimes": np.array([e[1] for e in entries.values()], np.int64),
            "headers": np.array([e[2] for e in entries.values()], dtype=str),
            "values": np.array([e[3] for e in entries.values()], dtype=str),
            "has_columns": np.array([e[4] is not None for e in entries.values()], bool)}
    _save_atomic(cache_dir / name, np.savez, **meta)
    return name


def _remove_others(cache_dir: Path, blocks: list[str]) -> None:
    """Remove the files of blocks not in `blocks`: merged ones, another format's, a crash's
    temporaries (the dataset's lock keeps any other run out)."""
    keep = {f for b in blocks for f in _block_files(b)}
    for f in cache_dir.iterdir():
        if f.name not in keep and f.name.startswith(("block-", ".tmp-")) and f.is_file():
            f.unlink(missing_ok=True)


def _save_atomic(path: Path, save, *args, **kwargs) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    with open(tmp, "wb") as fh:
        save(fh, *args, **kwargs)
    os.replace(tmp, path)


def _write_index(cache_dir: Path, blocks: list[str]) -> None:
    tmp = cache_dir / f".tmp-{uuid.uuid4().hex[:8]}-{_INDEX}"
    tmp.write_text(json.dumps({"version": _VERSION, "columns": list(LIGHTCURVE_COLUMNS), "blocks": blocks}))
    os.replace(tmp, cache_dir / _INDEX)


def _record(entry: tuple) -> MeasurementRecord:
    values = json.loads(entry[3])
    return MeasurementRecord(str(name_from_header(values)), None, entry[4], header_text=entry[2], values=values)


def _header_values(header: fits.Header) -> str:
    """The header's values by keyword, as JSON (commentary cards left out)."""
    return json.dumps({k: v for k, v in header.items() if k and k not in ("COMMENT", "HISTORY")
                       and isinstance(v, (bool, int, float, str))})


def read_measurements(paths: list[Path], cache_dir: Path, progress=None) -> tuple[list[MeasurementRecord], int]:
    """The measurement records of `paths` (in order) and how many were read from their
    files (the others came from the cache in `cache_dir`, which is brought up to date).
    ``progress(k, n)`` is called while files are read. A cache that cannot be written
    (read-only, full disk) is left as it was: the records are right either way."""
    cache_dir = Path(cache_dir)
    entries, blocks = _load(cache_dir)
    records, fresh = [], {}
    for k, path in enumerate(paths):
        path = Path(path)
        key, stat = _key(path), _stat(path)
        entry = entries.get(key)
        if entry is None or stat is None or entry[:2] != stat:
            record = read_measurement(path, columns=LIGHTCURVE_COLUMNS)
            if stat is not None:
                cols = None if record.columns is None else {c: record.columns[c] for c in LIGHTCURVE_COLUMNS}
                entry = (stat[0], stat[1], record.header.tostring(), _header_values(record.header), cols)
                fresh[key] = entry
                entries[key] = entry
            records.append(record)
            if progress is not None:
                progress(len(fresh), len(paths))
        else:
            records.append(_record(entry))
    current = {_key(Path(p)) for p in paths}
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        if len(blocks) + bool(fresh) > MAX_BLOCKS:
            keep = {k: e for k, e in entries.items() if k in current}
            new_blocks = [_write_block(cache_dir, keep)]
        elif fresh:
            new_blocks = blocks + [_write_block(cache_dir, fresh)]
        else:
            new_blocks = blocks
        if new_blocks != blocks:
            _write_index(cache_dir, new_blocks)
            _remove_others(cache_dir, new_blocks)
    except (OSError, ValueError):   # unwritable, or measurements of different lengths (another catalogue)
        pass
    return records, len(fresh)
