"""Names that come from outside and become parts of file names.

A frame's ``FILTER``, the configured target name and data label, and a frame's own
file name all end up in the names of the files a reduction writes. None of them
is ever used as a path: each is first made a *safe token*:

- letters, digits and ``_ . + -`` only (so no ``/``, no ``..`` path step, no
  control or non-ASCII character),
- not starting with a dot (so never hidden, never ``.`` or ``..``),
- at most :data:`MAX_TOKEN_LENGTH` characters (so that the longest product name,
  with its suffixes and the temporary prefix of an atomic write, stays far
  below the 255 bytes a file name may have).

What the user configures is refused when it is not already such a token (the
user can fix it); a header value (``FILTER``) is rewritten - every run of other
characters becomes ``_``, a leading dot becomes ``_`` - and refused only when
even that cannot make it one (empty, too long). A frame's own name is never
refused: files made from it are named by a readable stem plus a digest (see
``dataset.measurement_path``), and the exact name is kept inside them
(:func:`name_cards`, :func:`name_from_header`).

This module imports nothing of the package: configuration, tasks and the
science modules all use it.
"""

from __future__ import annotations

import os
import re

__all__ = ["MAX_TOKEN_LENGTH", "SAFE_CHARACTERS", "UnsafeName", "safe_token", "file_stem", "shown", "shown_ascii", "name_cards", "fitting_comment",
           "name_from_header"]

#: Longest safe token (characters). Target name and FILTER at this length give a longest
#: product name of 14 (temporary prefix) + 100 + 1 + 100 + 19 (``_fwhm_residuals.png``) = 234 bytes.
MAX_TOKEN_LENGTH = 100
SAFE_CHARACTERS = "letters, digits and _ . + -"
_SAFE = re.compile(r"[A-Za-z0-9_.+\-]+")
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9_.+\-]+")


class UnsafeName(ValueError):
    """A value that cannot be (or, from a configuration, is not) a safe part of a file
    name; ``str()`` is one line naming where it comes from and the value."""


def _quoted(value, limit: int = 60) -> str:
    text = repr(str(value))
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def safe_token(value, what: str, source, *, rewrite: bool = False, max_length: int = MAX_TOKEN_LENGTH) -> str:
    """`value` as a safe token (see the module docstring).

    `what` names the value ('target.name', 'FILTER'), `source` the file it comes from;
    both go into the one-line :class:`UnsafeName` raised when the value is refused.
    With ``rewrite`` (values from frame headers) unsafe characters are replaced by '_'
    first; without it (configured values) they are refused."""
    text = str(value).strip()
    token = _UNSAFE_RUN.sub("_", text) if rewrite else text
    if rewrite and token.startswith("."):
        token = "_" + token[1:]
    if not token:
        problem = "is empty"
    elif not _SAFE.fullmatch(token):
        problem = f"may use only {SAFE_CHARACTERS}"
    elif token.startswith("."):
        problem = "must not start with a dot (a hidden file, '.' or '..')"
    elif len(token) > max_length:
        problem = f"is longer than {max_length} characters"
    else:
        return token
    raise UnsafeName(f"{source}: {what} {_quoted(value)} {problem}: it becomes part of file names")


def file_stem(name: str, max_length: int = 80) -> str:
    """A readable, safe stem for files made from a frame named `name` (not unique:
    callers add a digest): other characters become '_', a leading dot '_', cut to
    `max_length` characters."""
    stem = _UNSAFE_RUN.sub("_", name)
    if stem.startswith("."):
        stem = "_" + stem[1:]
    return stem[:max_length] or "_"


def _bytes(name: str) -> bytes:
    try:
        return os.fsencode(name)
    except UnicodeEncodeError:  # a lone surrogate no file system gave us
        return name.encode("utf-8", "surrogatepass")


def _escaped(name: str, ascii_only: bool) -> str:
    text = _bytes(name).decode("utf-8", "backslashreplace")   # bytes that are not UTF-8: \xff
    return "".join(ch if ch.isprintable() and (ch.isascii() or not ascii_only)
                   else ch.encode("unicode_escape").decode("ascii") for ch in text)


def shown(name: str) -> str:
    """A file name as one line of printable text, for logs and tables: control
    characters (a newline) and bytes that are not UTF-8 are written as escapes
    (``\\n``, ``\\xff``); other characters, accented ones included, as they are."""
    return _escaped(name, ascii_only=False)


def shown_ascii(name: str) -> str:
    """Like :func:`shown`, with every character outside printable ASCII escaped (for FITS
    headers and tables, which hold nothing else)."""
    return _escaped(name, ascii_only=True)


def name_cards(name: str, key: str = "IMAGE", hex_key: str = "IMAGEHEX", comment: str = "frame") -> dict:
    """FITS header cards holding a file name exactly. A FITS header holds printable
    ASCII only: the name is in `key` when it is that, else `key` holds it escaped
    (readable) and `hex_key` its bytes in hexadecimal."""
    text = shown_ascii(name)
    cards = {key: (text, fitting_comment(key, text, comment))}
    if text != name:
        exact = _bytes(name).hex()
        cards[hex_key] = (exact, fitting_comment(hex_key, exact, "file name bytes (hex)"))
    return cards


def fitting_comment(keyword: str, value, comment: str) -> str:
    """The comment, cut to what fits on the keyword's card beside its value (astropy
    would cut it too, with a warning per card). Long string values continue on
    CONTINUE cards and keep the whole comment."""
    from astropy.io import fits

    bare = fits.Card(keyword, value).image
    if len(bare) > fits.Card.length:
        return comment
    if len(bare.rstrip()) + len(" / #") > fits.Card.length:
        return ""
    room = fits.Card.length - len(fits.Card(keyword, value, "#").image.rstrip()) + 1
    return comment if len(comment) <= room else comment[:room].rstrip()


def name_from_header(header, key: str = "IMAGE", hex_key: str = "IMAGEHEX") -> str | None:
    """The file name written by :func:`name_cards` (None when `key` is absent)."""
    exact = header.get(hex_key)
    if isinstance(exact, str):
        try:
            return os.fsdecode(bytes.fromhex(exact))
        except ValueError:
            pass
    value = header.get(key)
    return None if value is None else str(value)
