"""When a frame that is still arriving may be measured (plain code, no Luigi).

Frames reach a reduction tree one by one through the night, copied by rsync, scp,
``cp`` or an archive-download script. Some of these write into a hidden temporary
name and rename it (the frame appears complete), others write under the final
name (a scan may see half a file). A watch mode must measure a frame only when it
is complete:

- **settled**: nothing has changed the file for ``settle_s`` seconds. The check is
  on the file's ctime as well as its mtime: a copy that preserves the source's
  times (``cp -p``, ``rsync -t``) sets an old mtime, but every write and every
  change of times moves the ctime to the current time, which nobody can set back.
- **ends where its headers say**: walking the FITS headers from the start, every
  HDU's data (``|BITPIX|/8 x GCOUNT x (PCOUNT + NAXIS1 x ... x NAXISn)`` bytes,
  padded to 2880) lies inside the file. A gzip file must decompress to the end of
  its stream.

A file that stays incomplete for ``stall_s`` seconds after its last change is a
copy that died: it is let through, the reduction rejects it as truncated, and
it is measured again once its content changes (the measurements are keyed by
content digests, ``dataset.measurement_path``).

:class:`ArrivalCheck` remembers which (frame, size, mtime, ctime) it found
complete, so a dataset of 500 frames costs 500 ``stat`` calls a look, and one
header walk per new frame.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from .photometry.frames import gzip_intact, list_frames

__all__ = ["FITS_BLOCK", "fits_end_reached", "ArrivalCheck", "Waiting"]

FITS_BLOCK = 2880
_CARD = 80


def _header_cards(fh) -> dict[str, str] | None:
    """The keyword -> raw value text of one FITS header read from `fh`'s position
    (mandatory keywords only are needed), or None when the file ends before END."""
    cards: dict[str, str] = {}
    while True:
        block = fh.read(FITS_BLOCK)
        if len(block) < FITS_BLOCK:
            return None
        for i in range(0, FITS_BLOCK, _CARD):
            card = block[i:i + _CARD].decode("ascii", "replace")
            key = card[:8].strip()
            if key == "END":
                return cards
            if card[8:10] == "= " and key not in cards:
                cards[key] = card[10:].split("/", 1)[0].strip()


def _data_bytes(cards: dict[str, str]) -> int:
    """Bytes of data (padded to whole FITS blocks) that follow a header."""
    def number(key: str, default: int) -> int:
        try:
            return int(float(cards.get(key, default)))
        except ValueError:
            return default

    naxis = number("NAXIS", 0)
    if naxis == 0:
        return 0
    axes = [number(f"NAXIS{i}", 0) for i in range(1, naxis + 1)]
    if axes and axes[0] == 0 and cards.get("GROUPS", "").upper() == "T":
        axes = axes[1:]   # random groups: NAXIS1 = 0 does not count
    n = 1
    for a in axes:
        n *= a
    size = abs(number("BITPIX", 8)) // 8 * number("GCOUNT", 1) * (number("PCOUNT", 0) + n)
    return -(-size // FITS_BLOCK) * FITS_BLOCK


def fits_end_reached(path: Path) -> bool:
    """True when the file at `path` holds every byte its FITS headers announce (a
    gzip file: when its stream is complete): every HDU's data is there, some HDU
    holds data (a file cut right after an empty primary header is not done), and
    as many extensions as the primary header's NEXTEND says, when it says. Bytes
    after the last HDU, or a file that is not FITS at all, count as complete: the
    reader decides what they are; this only tells a file that is still growing."""
    with open(path, "rb") as fh:
        start = fh.read(8)
        if start.startswith(b"\x1f\x8b"):
            return gzip_intact(path)
        if len(start) == 8 and not start.startswith(b"SIMPLE"):
            return True              # not FITS: the reader rejects it with the reason
        size = os.fstat(fh.fileno()).st_size
        offset, n_hdus, n_with_data, n_extensions_announced = 0, 0, 0, None
        while offset < size:
            fh.seek(offset)
            if offset and not fh.read(8).startswith(b"XTENSION"):
                break                # bytes after the last HDU
            fh.seek(offset)
            cards = _header_cards(fh)
            if cards is None:
                return False         # the file ends inside a header
            if n_hdus == 0 and "NEXTEND" in cards:
                n_extensions_announced = _int(cards["NEXTEND"])
            data_bytes = _data_bytes(cards)
            offset = fh.tell() + data_bytes
            n_hdus += 1
            n_with_data += data_bytes > 0
        if offset > size or n_with_data == 0:
            return False
        return n_extensions_announced is None or n_hdus - 1 >= n_extensions_announced


def _int(text: str) -> int | None:
    try:
        return int(float(text))
    except ValueError:
        return None


@dataclass(frozen=True)
class Waiting:
    """A frame of a dataset that may not be measured yet, and why (one line)."""

    frame: str
    reason: str


class ArrivalCheck:
    """Says which frames of a dataset are still arriving (see the module docstring)."""

    def __init__(self, settle_s: float = 2.0, stall_s: float = 60.0, clock=time.time):
        self.settle_s = float(settle_s)
        self.stall_s = max(float(stall_s), self.settle_s)
        self.clock = clock
        self._complete: dict[str, tuple] = {}   # frame path -> stat key found complete

    def waiting(self, red_dir: Path) -> list[Waiting]:
        """The frames of `red_dir` not to be measured yet; empty when all may be."""
        now = self.clock()
        out = []
        for path in list_frames(Path(red_dir)):
            try:
                st = os.stat(path)
            except OSError:
                continue             # the reduction rejects it with the reason
            if not stat.S_ISREG(st.st_mode):
                continue
            key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            if self._complete.get(str(path)) == key:
                continue
            quiet_s = now - max(st.st_mtime, st.st_ctime)
            if quiet_s < self.settle_s:
                out.append(Waiting(path.name, f"still being written (changed {max(quiet_s, 0):.1f} s ago)"))
                continue
            try:
                complete = fits_end_reached(path)
            except OSError:
                continue             # unreadable: the reduction says why
            if complete:
                self._complete[str(path)] = key
            elif quiet_s < self.stall_s:
                out.append(Waiting(path.name, f"incomplete ({st.st_size} bytes, fewer than its headers announce)"))
        return out

    def forget(self, red_dir: Path) -> None:
        """Drop what is remembered of `red_dir`'s frames (e.g. the dataset went away)."""
        prefix = str(Path(red_dir)) + os.sep
        for name in [p for p in self._complete if p.startswith(prefix)]:
            del self._complete[name]
