"""A stand-in for the Gaia archive's TAP service on 127.0.0.1 (these machines cannot reach
the real one): it answers synchronous ADQL cone queries of gaiadr3.gaia_source in the
archive's documented format - a VOTable with INFO QUERY_STATUS OK, the asked columns with
Gaia's units and UCDs, brightest first - from a star list the test gives it (the
generator's stars, moved back to Gaia's epoch J2016.0 by their proper motions). A query it
cannot parse, or any query while `fail_with` is set, gets the archive's error form: HTTP
400 (or the code set) with a VOTable whose QUERY_STATUS is ERROR.
"""

from __future__ import annotations

import http.server
import io
import re
import threading
import urllib.parse

import numpy as np
from astropy.io import votable
from astropy.io.votable.tree import Info, Resource, VOTableFile
from astropy.table import Table

#: Gaia DR3 column metadata (gaiadr3.gaia_source): unit and UCD
GAIA_FIELDS = {
    "source_id": (None, "meta.id;meta.main"),
    "ra": ("deg", "pos.eq.ra;meta.main"),
    "dec": ("deg", "pos.eq.dec;meta.main"),
    "pmra": ("mas.yr**-1", "pos.pm;pos.eq.ra"),
    "pmdec": ("mas.yr**-1", "pos.pm;pos.eq.dec"),
    "phot_g_mean_mag": ("mag", "phot.mag;em.opt"),
}


def gaia_table_from_synthetic(stars: Table, epoch_jyear: float, g_limit: float = 20.5, seed: int = 0) -> Table:
    """A gaia_source-like table of a generator's star list (``synthetic_stars.ecsv``):
    stars brighter than g_limit, G = catalogue magnitude + 0.3, proper motions of a few
    mas/yr, positions at J2016.0 such that propagated to `epoch_jyear` they are the truth."""
    rng = np.random.default_rng(seed)
    sel = np.asarray(stars["mag"], float) < g_limit
    ra = np.asarray(stars["ra_deg"], float)[sel]
    dec = np.asarray(stars["dec_deg"], float)[sel]
    n = int(sel.sum())
    pmra, pmdec = rng.normal(0, 4.0, n), rng.normal(0, 4.0, n)
    years = epoch_jyear - 2016.0
    dec16 = dec - pmdec * years / 3.6e6
    ra16 = ra - pmra * years / 3.6e6 / np.cos(np.radians(dec))
    t = Table()
    t["source_id"] = np.arange(4_000_000_000_000_000, 4_000_000_000_000_000 + n, dtype=np.int64)
    t["ra"], t["dec"], t["pmra"], t["pmdec"] = ra16, dec16, pmra, pmdec
    t["phot_g_mean_mag"] = (np.asarray(stars["mag"], float)[sel] + 0.3).astype(np.float32)
    return t


def _votable_bytes(table: Table | None, status: str, message: str = "") -> bytes:
    if table is None:
        vot = VOTableFile()
        res = Resource(type="results")
        vot.resources.append(res)
    else:
        vot = votable.from_table(table)
        res = vot.resources[0]
        res.type = "results"
        for f in res.tables[0].fields:
            unit, ucd = GAIA_FIELDS.get(f.name, (None, None))
            f.unit, f.ucd = unit, ucd
    info = Info(name="QUERY_STATUS", value=status)
    if message:
        info.content = message
    res.infos.append(info)
    buf = io.BytesIO()
    vot.to_xml(buf)
    return buf.getvalue()


_CONE = re.compile(r"CIRCLE\('ICRS',\s*([-+\d.eE]+),\s*([-+\d.eE]+),\s*([-+\d.eE]+)\)", re.I)
_TOP = re.compile(r"SELECT\s+TOP\s+(\d+)\s+(.+?)\s+FROM\s+gaiadr3\.gaia_source", re.I | re.S)


class GaiaArchive:
    """Serve `catalogue` (a gaia_source-like Table) at http://127.0.0.1:<port>/tap-server/tap."""

    def __init__(self, catalogue: Table | None = None):
        self.catalogue = catalogue
        self.queries: list[str] = []
        self.fail_with: tuple[int, str] | None = None
        archive = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                code, body = archive.answer(self.path, form)
                self.send_response(code)
                self.send_header("Content-Type", "application/x-votable+xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/tap-server/tap"

    def answer(self, path: str, form: dict) -> tuple[int, bytes]:
        query = (form.get("QUERY") or [""])[0]
        self.queries.append(query)
        if self.fail_with is not None:
            return self.fail_with[0], _votable_bytes(None, "ERROR", self.fail_with[1])
        if not path.endswith("/tap/sync") or (form.get("REQUEST") or [""])[0] != "doQuery":
            return 400, _votable_bytes(None, "ERROR", "Cannot parse the request: REQUEST=doQuery expected")
        cone, top = _CONE.search(query), _TOP.search(query)
        if cone is None or top is None or self.catalogue is None:
            return 400, _votable_bytes(None, "ERROR", f"Cannot parse query: {query[:80]}")
        ra0, dec0, radius = (float(v) for v in cone.groups())
        t = self.catalogue
        r1, d1, r2, d2 = (np.radians(v) for v in (ra0, dec0, np.asarray(t["ra"]), np.asarray(t["dec"])))
        dist = np.degrees(2 * np.arcsin(np.sqrt(np.sin((d2 - d1) / 2) ** 2
                                               + np.cos(d1) * np.cos(d2) * np.sin((r2 - r1) / 2) ** 2)))
        rows = t[dist <= radius]
        rows.sort("phot_g_mean_mag")
        columns = [c.strip() for c in top.group(2).split(",")]
        return 200, _votable_bytes(rows[: int(top.group(1))][columns], "OK")

    def __enter__(self) -> "GaiaArchive":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
