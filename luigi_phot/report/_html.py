"""Small helpers to write the report's HTML: escaping, tables, links, embedded images,
and the page's frame (styles and a content security policy that forbids every
load from elsewhere: the pages work offline and never reach the network)."""

from __future__ import annotations

import base64
import datetime as dt
import html
import math
import os
from pathlib import Path
from urllib.parse import quote

__all__ = ["Html", "esc", "table", "facts_table", "link", "png_data_uri", "document", "number", "mjd_utc", "utc_now"]

_MJD_ZERO = dt.datetime(1858, 11, 17, tzinfo=dt.timezone.utc)

#: No script, no fetch, no font or style from elsewhere; images only embedded (data:).
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.2em auto; max-width: 78em; padding: 0 1em; color: #111; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 1.6em;
  border-bottom: 1px solid #ccc; padding-bottom: 0.15em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.2em 0.5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.facts { width: 100%; } table.facts th { width: 11em; }
.failure { background: #fde8e8; border: 2px solid #c62828; padding: 0.6em 1em; margin: 1em 0; }
.warn { color: #a94400; } .bad { color: #c62828; font-weight: bold; } .ok { color: #1b5e20; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #444; max-width: 60em; }
.pair { display: flex; flex-wrap: wrap; gap: 1em; } .pair figure { flex: 1 1 30em; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
ul.log { font-family: monospace; font-size: 0.8em; padding-left: 1.2em; }
.small { font-size: 0.85em; color: #555; }
"""


class Html(str):
    """Text that is already HTML (not escaped again)."""


def esc(value) -> Html:
    return value if isinstance(value, Html) else Html(html.escape(str(value), quote=True))


def number(value, fmt: str = ".3f", none: str = "-") -> str:
    """A float formatted, or `none` for missing and non-finite values."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return none
    return format(x, fmt) if math.isfinite(x) else none


def mjd_utc(mjd, seconds: bool = True) -> str:
    """An MJD (UTC) as 'YYYY-MM-DD HH:MM:SS' ('-' when missing)."""
    try:
        when = _MJD_ZERO + dt.timedelta(days=float(mjd))
    except (TypeError, ValueError, OverflowError):
        return "-"
    return when.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def facts_table(rows: list[list], css_id: str) -> Html:
    """A two-column table of (label, value) rows."""
    body = "".join(f"<tr><th>{esc(label)}</th><td>{esc(value)}</td></tr>" for label, value in rows)
    return Html(f'<table id="{css_id}" class="facts"><tbody>{body}</tbody></table>')


def table(headers: list[str], rows: list[list], *, css_id: str | None = None, css_class: str | None = None,
          row_class: str | None = None, cell_classes: list[str | None] | None = None) -> Html:
    """A table; cells are escaped unless they are :class:`Html`."""
    attrs = (f' id="{css_id}"' if css_id else "") + (f' class="{css_class}"' if css_class else "")
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    classes = cell_classes or [None] * len(headers)
    tr = f'<tr class="{row_class}">' if row_class else "<tr>"
    body = "".join(tr + "".join(f'<td class="{c}">{esc(v)}</td>' if c else f"<td>{esc(v)}</td>"
                                for v, c in zip(row, classes)) + "</tr>" for row in rows)
    return Html(f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def link(target: Path, page_dir: Path, text: str | None = None) -> Html:
    """A relative link from a page in `page_dir` to `target` (a file path)."""
    href = quote(Path(os.path.relpath(target, page_dir)).as_posix(), safe="/")
    return Html(f'<a href="{esc(href)}">{esc(text if text is not None else target.name)}</a>')


def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def document(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f'<link rel="icon" href="data:,">\n'
            f"<title>{esc(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")
