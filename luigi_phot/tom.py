"""Publish a light curve to a TOM Toolkit server (plain ``requests``, no Luigi).

One dataset (a data label and a filter) is one ``photometry`` data product on
the TOM, whose file is named ``<product_name>.csv``. :func:`publish_photometry`
replaces it: the dataset's previous product is deleted first, then the current
CSV is uploaded, so that afterwards the TOM holds exactly the points of the CSV.
The order matters: deleting a product deletes its points, and the TOM silently
drops uploaded points identical to points it already holds, so uploading first
and deleting afterwards would lose the new points.

Every request times out after ``tom.timeout_s``. Connection failures, time-outs
and 5xx answers are retried ``tom.max_retries`` times, waiting ``tom.backoff_s``
and twice as long each further time; 4xx answers are not retried. Failures are
raised as :class:`TomError` subclasses whose text is one line, names the TOM,
carries the TOM's own message, and never contains the password or the token.

The CSV is read by the TOM's photometry processor: a ``time`` column in MJD,
``magnitude``, ``error`` and ``filter`` (extra columns are kept as JSON).
"""

from __future__ import annotations

import csv
import io
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

import requests
from requests.auth import AuthBase, HTTPBasicAuth

from luigi_phot.config import TomConfig

__all__ = [
    "TomError",
    "TomAuthError",
    "TomUnavailable",
    "TomTargetNotFound",
    "TomRejected",
    "PublishResult",
    "UploadPlan",
    "plan_upload",
    "publish_photometry",
    "count_photometry",
    "find_target",
]

_log = logging.getLogger(__name__)

PHOTOMETRY = "photometry"
_PAGE_SIZE = 100
_MAX_BACKOFF_S = 60.0
_MAX_MESSAGE = 400


class TomError(Exception):
    """A TOM request or upload failed.

    ``str()`` is one line without credentials; ``status`` is the HTTP status
    when the TOM answered, else None. Instances pickle (Luigi workers).
    """

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class TomAuthError(TomError):
    """The TOM refused the credentials (401) or the action for this user (403)."""


class TomUnavailable(TomError):
    """No answer, or only 5xx answers, after all retries."""


class TomTargetNotFound(TomError):
    """The TOM has no target of that exact name (nor a single target with that alias)."""


class TomRejected(TomError):
    """The TOM refused a request (a 4xx other than 401/403), or could not turn
    the uploaded file into photometry points."""


@dataclass(frozen=True)
class PublishResult:
    target_id: int
    product_id: int
    #: Photometry points the TOM holds for the new product.
    n_points: int
    #: The product's file name as stored by the TOM (it may carry a random suffix).
    file_name: str
    #: The dataset's earlier products that were deleted before the upload.
    deleted_product_ids: tuple[int, ...] = ()


class _Transient(Exception):
    """One attempt failed in a way that may pass (no answer, 5xx): retry."""

    def __init__(self, reason: str, status: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.status = status


def _file_name(product_name: str) -> str:
    """``<product_name>.csv`` as Django stores it (it drops characters other
    than letters, digits, '-', '_' and '.'), so re-uploads can find it."""
    stem = re.sub(r"[^-\w.]", "", product_name.strip().replace(" ", "_"))
    if stem in ("", ".", ".."):
        raise ValueError(f"product name {product_name!r} gives no usable file name")
    return f"{stem}.csv"


def _is_dataset_file(stored_name: str, file_name: str) -> bool:
    """True for ``X.csv`` and for ``X_<7 random characters>.csv``, the name the
    TOM gives a file when one of the same name is already stored."""
    stem = re.escape(file_name[: -len(".csv")])
    return re.fullmatch(stem + r"(_[A-Za-z0-9]{7})?\.csv", stored_name) is not None


def _stored_name(product: dict) -> str:
    return unquote(urlsplit(str(product.get("data") or "")).path.rsplit("/", 1)[-1])


_INTEGER = re.compile(r"\s*[+-]?\d+\s*")


@dataclass(frozen=True)
class _LightCurve:
    content: bytes            # what is uploaded
    n_points: int
    integer_columns: tuple[str, ...]  # written as floats in ``content``


def _read_light_curve(csv_path: Path) -> _LightCurve:
    """The CSV as it is uploaded, and its number of points; raises TomError when
    it cannot be published (unreadable, no ``time`` column, no points).

    The TOM (3.1) fails on any column its CSV reader types as integer (time,
    or an extra column such as flags: numpy int64 is not JSON-serialisable),
    so the values of such columns are uploaded with a '.0' appended.
    """
    try:
        text = csv_path.read_bytes().decode("utf-8")
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise TomError(f"{csv_path}: cannot read the light curve ({reason})") from None
    except UnicodeDecodeError:
        raise TomError(f"{csv_path}: the light curve is not UTF-8 text") from None
    lines = text.splitlines()
    is_row = [bool(line.strip()) and not line.lstrip().startswith("#") for line in lines]
    rows = list(csv.reader(line for line, keep in zip(lines, is_row) if keep))
    if not rows or "time" not in [cell.strip() for cell in rows[0]]:
        raise TomError(f"{csv_path}: no 'time' column in the header (the TOM needs time in MJD)")
    header, points = rows[0], rows[1:]
    if not points:
        raise TomError(f"{csv_path}: the light curve has no points; nothing published")
    integer = [j for j in range(len(header))
               if any(j < len(row) and row[j].strip() for row in points)
               and all(_INTEGER.fullmatch(row[j]) for row in points if j < len(row) and row[j].strip())]
    if not integer:
        return _LightCurve(text.encode("utf-8"), len(points), ())
    for row in points:
        for j in integer:
            if j < len(row) and row[j].strip():
                row[j] = row[j].strip() + ".0"
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    parsed = iter(rows)
    for line, keep in zip(lines, is_row):
        if keep:
            writer.writerow(next(parsed))
        else:
            out.write(line + "\n")
    return _LightCurve(out.getvalue().encode("utf-8"), len(points),
                       tuple(header[j].strip() for j in integer))


def _answer_detail(response: requests.Response) -> str:
    """The TOM's own message from an error answer (DRF JSON), else the HTTP reason
    (an HTML error page is not worth a log line)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body:
        parts = []
        for key, value in body.items():
            if isinstance(value, list):
                value = " ".join(map(str, value))
            parts.append(str(value) if key in ("detail", "non_field_errors") else f"{key}: {value}")
        return "; ".join(parts)
    if isinstance(body, list) and body:
        return "; ".join(map(str, body))
    return response.reason or "no message"


def _failure_reason(exc: requests.RequestException, timeout_s: float) -> str:
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return f"no connection within {timeout_s:g} s"
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return f"no answer within {timeout_s:g} s"
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS failure (certificate or protocol)"
    text = str(exc).lower()
    if "refused" in text:
        return "connection refused"
    if "name or service not known" in text or "nodename nor servname" in text or "getaddrinfo" in text:
        return "host name not found"
    return f"connection failed ({type(exc).__name__})"


class _TokenAuth(AuthBase):
    """``Authorization: Token <key>``. An auth object rather than a header, so
    that requests never replaces it with credentials from ~/.netrc."""

    def __init__(self, token: str):
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Token {self._token}"
        return request


class _Client:
    """Requests to one TOM, with retries, typed errors and credential hygiene."""

    def __init__(self, tom: TomConfig, session: requests.Session | None, logger: logging.Logger):
        self.tom = tom
        self.log = logger
        self._own_session = session is None
        self.session = requests.Session() if session is None else session
        self._secrets = [s for s in (tom.password, tom.api_token) if s]
        self.who = f"user {tom.username}" if tom.username else "the API token's user"
        if tom.api_token:
            self._auth = _TokenAuth(tom.api_token)
            self.credentials = "the API token" + (f" of user {tom.username}" if tom.username else "")
        else:
            self._auth = HTTPBasicAuth(tom.username or "", tom.password or "")
            self.credentials = f"the credentials of user {tom.username}"
        self._retry_depth = 0

    def __enter__(self) -> "_Client":
        return self

    def __exit__(self, *exc_info) -> None:
        if self._own_session:
            self.session.close()

    # -- errors ------------------------------------------------------------

    def error(self, cls: type[TomError], message: str, status: int | None = None) -> TomError:
        """A one-line error whose text cannot hold the password or the token,
        whatever the TOM's answer echoed."""
        text = " ".join(message.split())
        for secret in self._secrets:
            text = text.replace(secret, "***")
        if len(text) > _MAX_MESSAGE:
            text = text[: _MAX_MESSAGE - 3] + "..."
        return cls(text, status)

    # -- one request, retried --------------------------------------------

    def send(self, method: str, path: str, what: str, *, missing_ok: bool = False,
             **kwargs: Any) -> requests.Response | None:
        """One attempt. Returns a 2xx answer (None for a 404 when ``missing_ok``);
        raises _Transient when a retry may help, TomError when it cannot."""
        url = self.tom.url + path
        self.log.debug("TOM request: %s %s (%s)", method, path, what)
        failure = None
        try:
            response = self.session.request(
                method, url, auth=self._auth, timeout=self.tom.timeout_s, allow_redirects=False, **kwargs)
        except (requests.ConnectionError, requests.Timeout,
                requests.exceptions.ChunkedEncodingError) as exc:
            failure = _failure_reason(exc, self.tom.timeout_s)
        if failure is not None:
            # Raised outside the handler: the requests exception, which holds the
            # request and its Authorization header, is not chained to ours.
            raise _Transient(failure)

        status = response.status_code
        if 200 <= status < 300:
            return response
        if status == 404 and missing_ok:
            return None
        detail = _answer_detail(response)
        if status >= 500:
            if "Data processing error" in detail:
                raise self.error(TomRejected, f"TOM at {self.tom.url} could not read photometry points from "
                                              f"the file in the {what}: {detail}", status)
            raise _Transient(f"answered {status}: {detail}", status)
        if status == 401:
            raise self.error(TomAuthError, f"TOM at {self.tom.url} refused {self.credentials}: {detail}",
                             status)
        if status == 403:
            raise self.error(TomAuthError, f"TOM at {self.tom.url} did not allow {self.who} "
                                           f"the {what}: {detail}", status)
        if 300 <= status < 400:
            where = urlsplit(response.headers.get("Location", ""))
            target = f"{where.scheme}://{where.netloc}" if where.netloc else "another address"
            raise self.error(TomError, f"TOM at {self.tom.url} redirected the {what} ({status}) to "
                                       f"{target}; set url in {self.tom.path} to the TOM's own address",
                             status)
        raise self.error(TomRejected, f"TOM at {self.tom.url} rejected the {what} ({status}): {detail}",
                         status)

    def retrying(self, what: str, attempt: Callable[[], Any]) -> Any:
        """``attempt()``, repeated on _Transient failures with exponential backoff.

        Only the outermost loop retries: an attempt made of several requests
        counts as one attempt, so the number of requests stays bounded.
        """
        if self._retry_depth:
            return attempt()
        attempts = self.tom.max_retries + 1
        last: _Transient | None = None
        self._retry_depth += 1
        try:
            for i in range(attempts):
                try:
                    return attempt()
                except _Transient as failure:
                    last = failure
                if i + 1 < attempts:
                    delay = min(self.tom.backoff_s * 2 ** i, _MAX_BACKOFF_S)
                    self.log.warning("TOM at %s: %s failed (%s); retry %d of %d in %.1f s",
                                     self.tom.url, what, last.reason, i + 1, attempts - 1, delay)
                    time.sleep(delay)
        finally:
            self._retry_depth -= 1
        raise self.error(TomUnavailable, f"TOM at {self.tom.url} is unavailable: {what} failed "
                                         f"{attempts} time(s), last: {last.reason}", last.status)

    def call(self, method: str, path: str, what: str, **kwargs: Any) -> requests.Response | None:
        return self.retrying(what, lambda: self.send(method, path, what, **kwargs))

    def json(self, response: requests.Response, what: str) -> dict:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise self.error(TomError, f"TOM at {self.tom.url} answered the {what} with something other "
                                       "than a JSON object: is url the TOM's address?", response.status_code)
        return body

    def get_all(self, path: str, params: dict, what: str) -> list[dict]:
        """Every result of a paginated list. Pages are asked for by offset on our
        own URL (not the answer's ``next`` link), so credentials only ever go
        to the configured address."""
        results: list[dict] = []
        while True:
            page = self.json(self.call("GET", path, what, params={**params, "limit": _PAGE_SIZE,
                                                                   "offset": len(results)}), what)
            batch = page.get("results") or []
            results.extend(batch)
            if not batch or not page.get("next") or len(results) >= int(page.get("count", 0)):
                return results

    # -- TOM objects -------------------------------------------------------

    def find_target(self, name: str) -> dict | None:
        found = self.get_all("/api/targets/", {"name": name}, f"look-up of target {name}")
        exact = [t for t in found if t.get("name") == name]
        if exact:
            return exact[0]
        by_alias = [t for t in found if any(a.get("name") == name for a in t.get("aliases") or [])]
        if len(by_alias) > 1:
            names = ", ".join(sorted(str(t.get("name")) for t in by_alias))
            raise self.error(TomError, f"TOM at {self.tom.url}: {name} is an alias of several targets "
                                       f"({names}); use the target's own name")
        if by_alias:
            self.log.info("TOM at %s: %s is an alias of target %s (id %s); using that target",
                          self.tom.url, name, by_alias[0].get("name"), by_alias[0].get("id"))
            return by_alias[0]
        return None

    def create_target(self, name: str, ra_deg: float, dec_deg: float) -> dict:
        what = f"creation of target {name}"
        body = {"name": name, "type": "SIDEREAL", "ra": ra_deg, "dec": dec_deg}
        tries = 0

        def attempt() -> dict:
            nonlocal tries
            tries += 1
            if tries > 1:  # the failed attempt may have created it after all
                existing = self.find_target(name)
                if existing is not None:
                    return existing
            return self.json(self.send("POST", "/api/targets/", what, json=body), what)

        target = self.retrying(what, attempt)
        self.log.info("Created target %s (id %s, RA %.6f, Dec %+.6f deg) on the TOM at %s",
                      name, target.get("id"), ra_deg, dec_deg, self.tom.url)
        return target

    def delete_dataset_products(self, target: dict, file_name: str,
                                previous_product_id: int | None = None) -> tuple[int, ...]:
        """Delete this target's photometry products stored as ``file_name``
        (or its renamed duplicates) and ``previous_product_id``; nothing else."""
        what = f"listing of the data products of target {target['name']}"
        products = [p for p in self.get_all("/api/dataproducts/", {"target_name": target["name"]}, what)
                    if p.get("target") == target["id"]]
        doomed = [p for p in products
                  if p.get("id") == previous_product_id
                  or (p.get("data_product_type") == PHOTOMETRY and _is_dataset_file(_stored_name(p), file_name))]
        if previous_product_id is not None and previous_product_id not in {p.get("id") for p in products}:
            self.log.info("TOM at %s: previous data product %s is not a product of target %s "
                          "(already deleted?); nothing to delete for it",
                          self.tom.url, previous_product_id, target["name"])
        for product in doomed:
            self.call("DELETE", f"/api/dataproducts/{product['id']}/",
                      f"deletion of data product {product['id']}", missing_ok=True)
            self.log.info("Deleted data product %s (%s) of target %s on the TOM at %s",
                          product["id"], _stored_name(product), target["name"], self.tom.url)
        return tuple(p["id"] for p in doomed)

    def upload(self, target: dict, file_name: str, content: bytes) -> dict:
        what = f"upload of {file_name} to target {target['name']}"
        tries = 0

        def attempt() -> dict:
            nonlocal tries
            tries += 1
            if tries > 1:  # the failed attempt may have created the product after all
                self.delete_dataset_products(target, file_name)
            response = self.send("POST", "/api/dataproducts/", what,
                                 data={"target": target["id"], "data_product_type": PHOTOMETRY},
                                 files={"file": (file_name, content, "text/csv")})
            return self.json(response, what)

        return self.retrying(what, attempt)

    def count_photometry(self, what: str, **filters: Any) -> int:
        page = self.json(self.call("GET", "/api/reduceddatums/", what,
                                   params={**filters, "data_type": PHOTOMETRY, "limit": 1}), what)
        try:
            return int(page["count"])
        except (KeyError, TypeError, ValueError):
            raise self.error(TomError, f"TOM at {self.tom.url} gave no count in the answer to the "
                                       f"{what}") from None


@dataclass(frozen=True)
class UploadPlan:
    """What publishing a dataset's light curve needs to do, given its last upload."""

    #: False when the same content is already the dataset's product, under the same
    #: name, for the same target, on the same TOM: nothing is sent again.
    send: bool
    #: The dataset's previous product on this TOM (deleted before the upload), when known.
    replace_product_id: int | None


def plan_upload(previous: dict, url: str, target_name: str, product_name: str,
                csv_sha256: str | None) -> UploadPlan:
    """Decide an upload from the dataset's last upload record `previous` ({} when
    none; its keys url, target, product_name, status, sha256 and product_id) and the
    current CSV's sha256 (None when it cannot be read). The same content sent to
    another TOM, target or product name is a new upload; a product id is only
    meaningful on the TOM that gave it."""
    destination = {"url": url, "target": target_name, "product_name": product_name}
    same_place = all(previous.get(k) == v for k, v in destination.items())
    unchanged = (same_place and previous.get("status") in ("uploaded", "unchanged") and csv_sha256 is not None
                 and previous.get("sha256") == csv_sha256)
    replace = previous.get("product_id") if previous.get("url") == url else None
    return UploadPlan(send=not unchanged, replace_product_id=replace)


def publish_photometry(tom: TomConfig, target_name: str, csv_path: str | Path, product_name: str,
                       previous_product_id: int | None = None, *, create_target: bool = False,
                       ra_deg: float | None = None, dec_deg: float | None = None,
                       logger: logging.Logger | None = None,
                       session: requests.Session | None = None) -> PublishResult:
    """Publish a light-curve CSV as the photometry data product of one dataset.

    ``target_name`` is matched exactly (an exact alias of a single target is
    accepted). A missing target raises TomTargetNotFound unless
    ``create_target``, which creates a sidereal target at ``ra_deg``,
    ``dec_deg`` (degrees). The dataset's previous products on that target,
    the ones stored as ``<product_name>.csv`` (or that name with the TOM's
    random suffix) and ``previous_product_id``, are deleted, then the CSV is
    uploaded as ``<product_name>.csv``. Products of other targets and of other
    names are never touched. ``session`` lets a caller supply (and inspect)
    the HTTP session; credentials are sent per request, never stored in it.

    Raises TomError (TomAuthError, TomUnavailable, TomTargetNotFound,
    TomRejected) with a one-line, credential-free message.
    """
    log = logger or _log
    csv_path = Path(csv_path)
    file_name = _file_name(product_name)
    light_curve = _read_light_curve(csv_path)
    if light_curve.integer_columns:
        log.debug("%s: integer column(s) %s uploaded as floats (the TOM cannot store integers)",
                  csv_path, ", ".join(light_curve.integer_columns))
    if create_target and (ra_deg is None or dec_deg is None):
        raise ValueError("create_target needs ra_deg and dec_deg")
    if tom.permission_warning:
        log.warning(tom.permission_warning)

    with _Client(tom, session, log) as client:
        target = client.find_target(target_name)
        if target is None:
            if not create_target:
                raise client.error(TomTargetNotFound, f"TOM at {tom.url} has no target named {target_name} "
                                                      "(create it there, or set tom.create_target: true "
                                                      "to create it from the dataset's RA and Dec)")
            target = client.create_target(target_name, ra_deg, dec_deg)
        deleted = client.delete_dataset_products(target, file_name, previous_product_id)
        product = client.upload(target, file_name, light_curve.content)
        n_points = client.count_photometry(f"count of the points of data product {product['id']}",
                                           data_product__id=product["id"])

    stored = _stored_name(product)
    if not _is_dataset_file(stored, file_name):
        log.warning("TOM at %s stored %s as %s; a later upload will not recognise it as this dataset's",
                    tom.url, file_name, stored)
    if n_points != light_curve.n_points:
        log.warning("TOM at %s holds %d of the %d points of %s for target %s (it drops points identical "
                    "to ones it already holds for the target, e.g. from another data product)",
                    tom.url, n_points, light_curve.n_points, csv_path.name, target["name"])
    log.info("Published %s (%d points) to target %s (id %s) on the TOM at %s as data product %s",
             csv_path.name, n_points, target["name"], target["id"], tom.url, product["id"])
    return PublishResult(target_id=int(target["id"]), product_id=int(product["id"]), n_points=n_points,
                         file_name=stored, deleted_product_ids=deleted)


def count_photometry(tom: TomConfig, target_id: int, *, session: requests.Session | None = None,
                     logger: logging.Logger | None = None) -> int:
    """Number of photometry points (reduced datums) the TOM holds for a target."""
    with _Client(tom, session, logger or _log) as client:
        return client.count_photometry(f"count of the photometry of target id {target_id}",
                                       target__id=target_id)


def find_target(tom: TomConfig, name: str, *, session: requests.Session | None = None,
                logger: logging.Logger | None = None) -> dict | None:
    """The TOM's record of the target named exactly ``name`` (or the single
    target with that exact alias), or None."""
    with _Client(tom, session, logger or _log) as client:
        return client.find_target(name)
