"""luigi_phot.tom against a real TOM Toolkit server (scripts/tom_server.sh).

The client's behaviour in detail is tested here, and only here: replacement,
every error and its text, retries, targets whose names contain ours, credential
hygiene. tests/test_upload.py tests what only the UploadToTOM stage shows (the
upload decision, the dataset's records and log, which stages a rerun costs).

Each test works on targets of its own names in one server started for the
session. What the TOM holds is checked with plain requests to its API
(tests.tom_api), not with the code under test (except count_photometry, which
is part of the API under test).
"""

from __future__ import annotations

import dataclasses
import http.server
import logging
import pickle
import threading
from pathlib import Path

import pytest
import requests

from luigi_phot import tom as tom_client
from luigi_phot.config import ConfigError, TomConfig, load_tom_config
from luigi_phot.tom import (TomAuthError, TomError, TomRejected, TomTargetNotFound, TomUnavailable,
                            count_photometry, find_target, publish_photometry)
from tests.tom_api import Api, write_account
from tests.tom_server import free_port

FILTER = "ip"


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def write_light_curve(path: Path, n_points: int, first_mjd: float = 61000.0, flags: bool = True) -> Path:
    """A light curve as the pipeline writes it: ``time`` (MJD), ``filter``,
    ``magnitude``, ``error`` and, with ``flags``, an extra integer column (which
    the TOM itself cannot store: see luigi_phot.tom). Every time and magnitude
    is distinct; the first k points of an n-point curve equal a k-point curve."""
    lines = ["time,filter,magnitude,error" + (",flags" if flags else "")]
    for i in range(n_points):
        lines.append(f"{first_mjd + 0.0125 * i:.6f},{FILTER},{17.0 - 0.003 * i:.4f},{0.010 + 0.0001 * i:.4f}"
                     + (f",{i % 3}" if flags else ""))
    path.write_text("\n".join(lines) + "\n")
    return path


def csv_magnitudes(path: Path) -> list[float]:
    return sorted(float(line.split(",")[2]) for line in path.read_text().splitlines()[1:])


class CountingAdapter(requests.adapters.HTTPAdapter):
    """Records every request a session sends: (method, path)."""

    def __init__(self):
        super().__init__()
        self.sent: list[tuple[str, str]] = []

    def send(self, request, **kwargs):
        self.sent.append((request.method, request.path_url.split("?")[0]))
        return super().send(request, **kwargs)


def counting_session() -> tuple[requests.Session, CountingAdapter]:
    session = requests.Session()
    adapter = CountingAdapter()
    session.mount("http://", adapter)
    return session, adapter


@pytest.fixture
def api(tom_server):  # noqa: F811
    return Api(tom_server)


@pytest.fixture
def tom(tom_server):  # noqa: F811
    """The session TOM's account with its API token. What these tests check does not
    depend on how the client authenticates, and Basic authentication costs about
    0.3 s of password hashing on the TOM per request. Basic is tested in the
    wrong-password and credentials tests here, and by every run in test_upload.py."""
    return tom_server.config(username=None, password=None, api_token=tom_server.api_token)


# --------------------------------------------------------------------------
# 1-2: upload and replacement
# --------------------------------------------------------------------------


@pytest.mark.tom
def test_first_upload_creates_one_product_holding_every_point(tom, api, tmp_path):  # noqa: F811
    target_id = api.create_target("TEST-FIRST-0001")
    lc = write_light_curve(tmp_path / "lc.csv", 12)

    result = publish_photometry(tom, "TEST-FIRST-0001", lc, f"TEST-FIRST-0001_{FILTER}")

    assert result.target_id == target_id
    assert result.n_points == 12
    assert result.file_name == f"TEST-FIRST-0001_{FILTER}.csv"
    assert api.products(target_id, "TEST-FIRST-0001") == {result.product_id: result.file_name}
    assert count_photometry(tom, target_id) == 12
    assert api.magnitudes(target_id) == csv_magnitudes(lc)


@pytest.mark.tom
def test_reupload_replaces_the_datasets_product_and_keeps_other_datasets(tom, api, tmp_path):  # noqa: F811
    name = "TEST-REPLACE-0001"
    target_id = api.create_target(name)
    product = f"{name}_{FILTER}"
    # Another dataset of the same target (another filter): must survive.
    other_lc = write_light_curve(tmp_path / "other.csv", 4, first_mjd=62000.0, flags=False)
    other_id = api.upload(target_id, other_lc, f"{name}_gp.csv")
    first = publish_photometry(tom, name, write_light_curve(tmp_path / "a.csv", 12), product)
    # A stray duplicate of this dataset (stored with a random suffix), as a
    # crash between upload and bookkeeping could leave behind.
    stray_id = api.upload(target_id, write_light_curve(tmp_path / "stray.csv", 12, flags=False), f"{product}.csv")
    assert api.products(target_id, name)[stray_id] != f"{product}.csv"

    # The first 12 points are identical to the ones already on the TOM: with
    # upload-then-delete they would be dropped and then deleted.
    lc = write_light_curve(tmp_path / "b.csv", 13)
    second = publish_photometry(tom, name, lc, product, first.product_id)

    assert set(second.deleted_product_ids) == {first.product_id, stray_id}
    products = api.products(target_id, name)
    assert set(products) == {second.product_id, other_id}
    assert second.n_points == 13
    assert count_photometry(tom, target_id) == 13 + 4
    assert api.magnitudes(target_id) == sorted(csv_magnitudes(lc) + csv_magnitudes(other_lc))


# --------------------------------------------------------------------------
# 3-5: credentials, availability, targets
# --------------------------------------------------------------------------


@pytest.mark.tom
def test_wrong_password_is_a_clear_error_and_uploads_nothing(tom_server, api, tmp_path):  # noqa: F811
    name = "TEST-AUTH-0001"
    target_id = api.create_target(name)
    lc = write_light_curve(tmp_path / "lc.csv", 7)
    session, adapter = counting_session()

    with pytest.raises(TomAuthError) as info:
        publish_photometry(tom_server.config(password="not-the-password", max_retries=3), name, lc,
                           f"{name}_{FILTER}", session=session)

    assert str(info.value) == (f"TOM at {tom_server.url} refused the credentials of user "
                               f"{tom_server.username}: Invalid username/password.")
    assert info.value.status == 401
    assert adapter.sent == [("GET", "/api/targets/")]  # a refusal is not retried
    assert api.products(target_id, name) == {}
    assert api.points(target_id) == []

    result = publish_photometry(tom_server.config(), name, lc, f"{name}_{FILTER}")
    assert result.n_points == 7
    assert len(api.points(target_id)) == 7


@pytest.mark.tom
def test_api_token_authenticates(tom_server, api, tmp_path):  # noqa: F811
    name = "TEST-TOKEN-0001"
    target_id = api.create_target(name)
    config = tom_server.config(username=None, password=None, api_token=tom_server.api_token)

    result = publish_photometry(config, name, write_light_curve(tmp_path / "lc.csv", 5), f"{name}_{FILTER}")

    assert result.n_points == 5
    assert len(api.points(target_id)) == 5
    with pytest.raises(TomAuthError, match="refused the API token: Invalid token"):
        publish_photometry(tom_server.config(username=None, password=None, api_token="0" * 40),
                           name, tmp_path / "lc.csv", f"{name}_{FILTER}")


def test_no_server_on_the_port_gives_unavailable_after_bounded_retries(tmp_path, caplog):
    url = f"http://127.0.0.1:{free_port()}"
    config = TomConfig(path=tmp_path / "tom_config.yaml", url=url, username="admin",
                               password="irrelevant", timeout_s=2.0, max_retries=2, backoff_s=0.05)
    session, adapter = counting_session()

    with pytest.raises(TomUnavailable) as info:
        publish_photometry(config, "TEST-DOWN-0001", write_light_curve(tmp_path / "lc.csv", 3),
                           "TEST-DOWN-0001_ip", session=session)

    assert str(info.value) == (f"TOM at {url} is unavailable: look-up of target TEST-DOWN-0001 "
                               "failed 3 time(s), last: connection refused")
    assert adapter.sent == [("GET", "/api/targets/")] * 3
    # Each retry is announced at WARNING (the stage's logger puts these in the dataset log).
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"TOM at {url}: look-up of target TEST-DOWN-0001 failed (connection refused); retry {i} of 2 in {delay} s"
        for i, delay in ((1, "0.1"), (2, "0.1"))]


def test_5xx_answers_are_retried_then_reported(tmp_path):
    hits = []

    class Failing(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(503)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html>maintenance</html>")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        config = TomConfig(path=tmp_path / "tom_config.yaml", url=url, username="admin",
                                   password="irrelevant", timeout_s=2.0, max_retries=3, backoff_s=0.01)
        with pytest.raises(TomUnavailable) as info:
            publish_photometry(config, "TEST-503", write_light_curve(tmp_path / "lc.csv", 3), "TEST-503_ip")
    finally:
        server.shutdown()
        server.server_close()

    assert len(hits) == 4
    assert info.value.status == 503
    assert str(info.value).endswith("failed 4 time(s), last: answered 503: Service Unavailable")


@pytest.mark.tom
def test_absent_target_is_an_error_unless_create_target(tom_server, tom, api, tmp_path):  # noqa: F811
    name = "TEST-NEW-0001"
    lc = write_light_curve(tmp_path / "lc.csv", 8)

    with pytest.raises(TomTargetNotFound, match=f"TOM at {tom_server.url} has no target named {name} "):
        publish_photometry(tom, name, lc, f"{name}_{FILTER}")
    assert find_target(tom, name) is None

    result = publish_photometry(tom, name, lc, f"{name}_{FILTER}", create_target=True,
                                ra_deg=269.5625, dec_deg=-27.25)

    created = find_target(tom, name)
    assert created["id"] == result.target_id
    assert (created["type"], created["ra"], created["dec"]) == ("SIDEREAL", 269.5625, -27.25)
    assert result.n_points == 8
    assert len(api.points(result.target_id)) == 8


@pytest.mark.tom
def test_exact_alias_finds_the_target(tom, api, tmp_path):  # noqa: F811
    target_id = api.create_target("KMT-2026-BLG-0123", aliases=("TEST-ALIAS-0001",))

    result = publish_photometry(tom, "TEST-ALIAS-0001",
                                write_light_curve(tmp_path / "lc.csv", 3), "TEST-ALIAS-0001_ip")

    assert result.target_id == target_id
    assert len(api.points(target_id)) == 3


# --------------------------------------------------------------------------
# 6: targets whose names contain ours
# --------------------------------------------------------------------------


@pytest.mark.tom
def test_targets_whose_names_contain_ours_are_never_touched(tom, api, tmp_path):  # noqa: F811
    ours = "OGLE-2026-BLG-0001"
    product = f"{ours}_{FILTER}"
    ours_id = api.create_target(ours)
    # Every one of these is found by the TOM's substring search for our name, and
    # holds a product with our dataset's very file name.
    others = {
        "OGLE-2026-BLG-0001b": api.create_target("OGLE-2026-BLG-0001b"),
        "XOGLE-2026-BLG-0001": api.create_target("XOGLE-2026-BLG-0001"),
        "MOA-2026-BLG-0099": api.create_target("MOA-2026-BLG-0099", aliases=("ogle-2026-blg-0001-moa",)),
    }
    for k, (name, target_id) in enumerate(others.items()):
        lc = write_light_curve(tmp_path / f"other{k}.csv", 5 + k, first_mjd=61100.0 + k, flags=False)
        api.upload(target_id, lc, f"{product}.csv")
    before = {name: (api.products(tid, name), api.points(tid)) for name, tid in others.items()}
    victim = next(iter(before["XOGLE-2026-BLG-0001"][0]))

    first = publish_photometry(tom, ours, write_light_curve(tmp_path / "a.csv", 10), product)
    # A previous product id that belongs to another target is not ours to delete.
    second = publish_photometry(tom, ours, write_light_curve(tmp_path / "b.csv", 11), product,
                                victim)
    publish_photometry(tom, ours, write_light_curve(tmp_path / "c.csv", 9), product,
                       second.product_id)

    assert first.target_id == ours_id
    assert second.deleted_product_ids == (first.product_id,)
    assert {name: (api.products(tid, name), api.points(tid)) for name, tid in others.items()} == before
    assert len(api.products(ours_id, ours)) == 1
    assert api.magnitudes(ours_id) == csv_magnitudes(tmp_path / "c.csv")


# --------------------------------------------------------------------------
# 7: credentials never leak
# --------------------------------------------------------------------------


@pytest.mark.tom
def test_credentials_appear_in_no_log_record_and_no_error(tom_server, api, tmp_path, caplog):  # noqa: F811
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="urllib3")
    name = "TEST-SECRET-0001"
    api.create_target(name)
    lc = write_light_curve(tmp_path / "lc.csv", 4)
    wrong_password, wrong_token = "Wr0ng-Pa55word-xyz", "f" * 40
    secrets = [tom_server.password, tom_server.api_token, wrong_password, wrong_token]
    token_config = tom_server.config(username=None, password=None, api_token=tom_server.api_token)
    down = f"http://127.0.0.1:{free_port()}"

    publish_photometry(tom_server.config(), name, lc, f"{name}_{FILTER}")
    publish_photometry(token_config, name, lc, f"{name}_{FILTER}")
    errors = []
    for config in (tom_server.config(password=wrong_password),
                   dataclasses.replace(token_config, api_token=wrong_token),
                   tom_server.config(url=down, timeout_s=1.0, max_retries=1, backoff_s=0.01),
                   dataclasses.replace(token_config, url=down, max_retries=0)):
        with pytest.raises(TomError) as info:
            publish_photometry(config, name, lc, f"{name}_{FILTER}")
        errors.append(info.value)

    assert [type(e) for e in errors] == [TomAuthError, TomAuthError, TomUnavailable, TomUnavailable]
    assert any(r.name.startswith("urllib3") for r in caplog.records)
    texts = [r.getMessage() for r in caplog.records] + [repr(r.args) for r in caplog.records]
    for error in errors:
        texts += [str(error), repr(error), repr(error.args)]
        # No chained requests exception (it would carry the Authorization header).
        assert error.__cause__ is None and error.__context__ is None
        copy = pickle.loads(pickle.dumps(error))
        assert (type(copy), str(copy), copy.status) == (type(error), str(error), error.status)
    for secret in secrets:
        assert not [t for t in texts if secret in t]


@pytest.mark.tom
def test_an_account_file_others_can_read_is_warned_about_once(tom_server, api, tmp_path, caplog):  # noqa: F811
    name = "TEST-PERM-0001"
    target_id = api.create_target(name)
    account = write_account(tmp_path / "tom_config.yaml", tom_server.config(), mode=0o640)

    publish_photometry(load_tom_config(account), name, write_light_curve(tmp_path / "lc.csv", 2),
                       f"{name}_{FILTER}")

    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"{account}: TOM configuration holds credentials but can be read by other users (mode 640); "
        f"run: chmod 600 {account}"]
    assert len(api.points(target_id)) == 2  # a warning, not a refusal


def test_tom_config_file_refuses_credentials_in_the_url_and_reads_backoff(tmp_path):
    path = tmp_path / "tom_config.yaml"
    path.write_text("url: 'https://me:s3cret-pw@tom.example.org'\ntom_user_id: me\ntom_password: x\n")
    with pytest.raises(ConfigError, match="url must not contain a user name or password") as info:
        load_tom_config(path)
    assert "s3cret-pw" not in str(info.value)

    path.write_text("url: 'https://tom.example.org/'\napi_token: abc\nbackoff_s: 0.25\n")
    assert (load_tom_config(path).url, load_tom_config(path).backoff_s) == ("https://tom.example.org", 0.25)


# --------------------------------------------------------------------------
# 8: refusals are not retried
# --------------------------------------------------------------------------


@pytest.mark.tom
def test_4xx_answers_are_not_retried_and_carry_the_toms_message(tom_server, tom, api, tmp_path):  # noqa: F811
    lc = write_light_curve(tmp_path / "lc.csv", 3)
    config = dataclasses.replace(tom, max_retries=3, backoff_s=0.01)
    session, adapter = counting_session()
    too_long = "TEST-" + "X" * 120  # the TOM's target names have at most 100 characters

    with pytest.raises(TomRejected) as info:
        publish_photometry(config, too_long, lc, "long_ip", create_target=True, ra_deg=270.0, dec_deg=-30.0,
                           session=session)

    assert info.value.status == 400
    assert str(info.value) == (f"TOM at {tom_server.url} rejected the creation of target {too_long} (400): "
                               "name: Ensure this field has no more than 100 characters.")
    assert adapter.sent == [("GET", "/api/targets/"), ("POST", "/api/targets/")]

    # A malformed upload: a target id that does not exist.
    adapter.sent.clear()
    with tom_client._Client(config, session, logging.getLogger("test")) as client:
        with pytest.raises(TomRejected, match=r'\(400\): target: Invalid pk "999999" - object does not exist'):
            client.upload({"id": 999999, "name": "nowhere"}, "nowhere_ip.csv", lc.read_bytes())
    assert adapter.sent == [("POST", "/api/dataproducts/")]


@pytest.mark.tom
def test_a_file_the_tom_cannot_process_is_not_retried_and_leaves_nothing(tom, api, tmp_path):  # noqa: F811
    name = "TEST-BADFILE-0001"
    target_id = api.create_target(name)
    bad = tmp_path / "bad.csv"
    bad.write_text("time,filter,magnitude,error\nyesterday,ip,17.1,0.01\n")
    session, adapter = counting_session()

    with pytest.raises(TomRejected, match="could not read photometry points from the file in the upload of "):
        publish_photometry(dataclasses.replace(tom, max_retries=3, backoff_s=0.01), name, bad, f"{name}_{FILTER}",
                           session=session)

    assert adapter.sent.count(("POST", "/api/dataproducts/")) == 1
    assert api.products(target_id, name) == {}
    assert api.points(target_id) == []


@pytest.mark.tom
def test_a_light_curve_without_points_changes_nothing_on_the_tom(tom, api, tmp_path):  # noqa: F811
    name = "TEST-EMPTY-0001"
    target_id = api.create_target(name)
    kept = publish_photometry(tom, name, write_light_curve(tmp_path / "lc.csv", 3),
                              f"{name}_{FILTER}")

    with pytest.raises(TomError, match="has no points; nothing published"):
        publish_photometry(tom, name, write_light_curve(tmp_path / "empty.csv", 0),
                           f"{name}_{FILTER}")

    assert list(api.products(target_id, name)) == [kept.product_id]
    assert len(api.points(target_id)) == 3
