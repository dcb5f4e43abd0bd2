"""UploadToTOM through the pipeline, against a real TOM Toolkit server (issue 6).

Every test runs the real command, ``luigi --module luigi_phot ReduceDataset
--red-dir D --local-scheduler``, on a small synthetic dataset whose
reduction_config.yaml says ``tom.upload: true`` and points at an account file
for the session's local TOM. Each test uses target names of its own, so the
tests share one server without seeing each other's data. What the TOM holds is
checked with plain requests to its API (tests.test_tom.Api), not with the
client under test.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
from pathlib import Path

import luigi
import pytest
import yaml
from astropy.table import Table
from astropy.time import Time

import luigi_phot.tasks
from luigi_phot.config import TomConfig, parse_dec, parse_ra
from luigi_phot.dataset import LOG_NAME, RECORD_NAME, UPLOAD_RECORD_NAME, read_json
from luigi_phot.synthetic import SyntheticConfig, generate_dataset
from tests.conftest import copy_dataset, reduce_dataset
from tests.test_tom import Api
from tests.tom_server import free_port

pytestmark = [pytest.mark.slow, pytest.mark.tom]

#: Small enough that a reduction takes a few seconds; N_FRAMES + 1 are made, one held back.
SPEC = SyntheticConfig(seed=23, n_frames=7, shape=(384, 384), n_stars=500, n_nights=3)
FILTER = SPEC.filter_name
#: `luigi` exit status when a task failed (luigi_phot's [retcode] default).
TASK_FAILED = 30


# --------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fresh_template(tmp_path_factory) -> Path:
    """The generated dataset, not reduced, with its last frame moved to ../spare."""
    root = tmp_path_factory.mktemp("upload")
    red = root / "ip"
    generated = generate_dataset(red, SPEC)
    (root / "spare").mkdir()
    last = max(generated.frame_paths)
    shutil.move(last, root / "spare" / last.name)
    return red


@pytest.fixture(scope="module")
def reduced_template(fresh_template, tmp_path_factory) -> Path:
    """fresh_template reduced once with the generator's `tom.upload: false`."""
    red = copy_dataset(fresh_template, tmp_path_factory.mktemp("upload-reduced") / "ip")
    done = reduce_dataset(red)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return red


def spare_frame(fresh_template: Path) -> Path:
    """The frame fresh_template holds back."""
    (frame,) = (fresh_template.parent / "spare").iterdir()
    return frame


@pytest.fixture
def dataset(reduced_template, tmp_path) -> Path:
    """A private copy of reduced_template: the light curve exists, nothing was uploaded."""
    return copy_dataset(reduced_template, tmp_path / "ip")


def write_account(path: Path, tom: TomConfig, mode: int = 0o600) -> Path:
    """A TOM account file (tom_config.yaml) with tom's fields, created with `mode`."""
    data = {"url": tom.url, "timeout_s": tom.timeout_s, "max_retries": tom.max_retries,
            "backoff_s": tom.backoff_s}
    if tom.api_token:
        data["api_token"] = tom.api_token
    else:
        data.update(tom_user_id=tom.username, tom_password=tom.password)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump(data, fh)
    os.chmod(path, mode)  # whatever the umask
    return path


def configure(red: Path, target: str, account: Path, **tom_keys) -> None:
    """Set target.name and the tom section of red's reduction_config.yaml."""
    path = red / "reduction_config.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["target"]["name"] = target
    cfg["tom"] = {"upload": True, "config_file": str(account), "data_label": target, **tom_keys}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def reduce(red: Path, *extra: str):
    """One pipeline run; returns (CompletedProcess, the log lines this run added)."""
    log = red / LOG_NAME
    before = log.stat().st_size if log.exists() else 0
    done = reduce_dataset(red, *extra)
    with open(log, encoding="utf-8") as fh:
        fh.seek(before)
        return done, fh.read().splitlines()


def upload_first(red: Path, target: str, account: Path, **tom_keys):
    """Configure red for target and reduce it once, successfully; returns
    (CompletedProcess, upload_record.json)."""
    configure(red, target, account, **tom_keys)
    done, _ = reduce(red)
    assert done.returncode == 0, ok(done)
    record = read_json(red / UPLOAD_RECORD_NAME)
    assert record["status"] == "uploaded"
    return done, record


def ok(done) -> str:
    return f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def csv_path(red: Path, target: str) -> Path:
    return red / f"{target}_{FILTER}_lc.csv"


def csv_points(red: Path, target: str) -> list[tuple[float, float, str]]:
    """(MJD, magnitude, filter) of every row of the light-curve CSV the pipeline wrote, sorted."""
    table = Table.read(csv_path(red, target), format="ascii.csv")
    assert table.colnames == ["time", "filter", "magnitude", "error"]
    return sorted((round(float(row["time"]), 6), float(row["magnitude"]), str(row["filter"])) for row in table)


def tom_points(api: Api, target_id: int) -> list[tuple[float, float, str]]:
    """(MJD, magnitude, band) of every photometry point the TOM holds for a target, sorted."""
    return sorted((round(Time(dt.datetime.fromisoformat(timestamp)).mjd, 6), magnitude, band)
                  for timestamp, magnitude, band in api.points(target_id))


def the_product(api: Api, target_id: int, target: str, label: str | None = None) -> int:
    """Id of the target's only data product, whose file carries the dataset's label
    (data_label, by default the target's name): <label>_<filter>.csv, or with
    _<7 characters> appended when the TOM still stores a file of that name (it
    keeps the files of deleted products)."""
    products = api.products(target_id, target)
    assert len(products) == 1, products
    (product_id, file_name), = products.items()
    assert re.fullmatch(rf"{label or target}_{FILTER}(_[A-Za-z0-9]{{7}})?\.csv", file_name), file_name
    return product_id


def target_id(api: Api, name: str) -> int | None:
    found = [t["id"] for t in api.get_all("/api/targets/", name=name) if t["name"] == name]
    return found[0] if found else None


def secrets_of(tom_server) -> list[str]:
    return [tom_server.password, tom_server.api_token]


def assert_no_secret(red: Path, secrets: list[str], *runs) -> None:
    """No password or token in the dataset's log and records, nor in a run's output."""
    texts = {name: (red / name).read_text() for name in (LOG_NAME, UPLOAD_RECORD_NAME, RECORD_NAME)
             if (red / name).exists()}
    for i, done in enumerate(runs):
        texts[f"run {i} stdout"] = done.stdout
        texts[f"run {i} stderr"] = done.stderr
    assert LOG_NAME in texts
    for where, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"a credential appears in {where}"


def stages_run(lines: list[str]) -> set[str]:
    """Task families that logged a line in these log lines ('[run] Family: ...')."""
    return {m.group(1) for line in lines if (m := re.search(r"\] (\w+): ", line))}


@pytest.fixture
def api(tom_server):
    return Api(tom_server)


@pytest.fixture
def account(tom_server, tmp_path) -> Path:
    """A private (mode 600) account file for the session's TOM, with password auth."""
    return write_account(tmp_path / "tom_config.yaml", tom_server.config())


# --------------------------------------------------------------------------
# Upload, replacement, unchanged content
# --------------------------------------------------------------------------


def test_first_upload_creates_one_product_holding_every_point_of_the_csv(
        fresh_template, tom_server, api, account, tmp_path):
    name = "UPL-FIRST-0001"
    red = copy_dataset(fresh_template, tmp_path / "ip")  # from scratch: every stage runs
    tid = api.create_target(name)
    configure(red, name, account)

    done, lines = reduce(red, "--workers", "2")

    assert done.returncode == 0, ok(done)
    record = read_json(red / UPLOAD_RECORD_NAME)
    assert record["status"] == "uploaded"
    points = csv_points(red, name)
    assert len(points) == SPEC.n_frames - 1
    assert api.products(tid, name) == {record["product_id"]: f"{name}_{FILTER}.csv"}
    assert record["n_points"] == len(points)
    assert tom_points(api, tid) == points
    assert read_json(red / RECORD_NAME)["upload"] == "uploaded"
    assert not (red / "dataset.lock").exists()
    assert any("UploadToTOM: uploaded" in line for line in lines)
    assert_no_secret(red, secrets_of(tom_server), done)


def test_one_more_frame_replaces_the_product_with_one_holding_one_more_point(
        dataset, fresh_template, tom_server, api, account):
    name = "UPL-REPLACE-0001"
    tid = api.create_target(name)
    first, first_record = upload_first(dataset, name, account)
    n_first = len(csv_points(dataset, name))

    shutil.copy2(spare_frame(fresh_template), dataset)
    second, lines = reduce(dataset)

    assert second.returncode == 0, ok(second)
    record = read_json(dataset / UPLOAD_RECORD_NAME)
    assert record["status"] == "uploaded"
    assert record["product_id"] != first_record["product_id"]
    assert the_product(api, tid, name) == record["product_id"]
    points = csv_points(dataset, name)
    assert len(points) == n_first + 1
    assert tom_points(api, tid) == points
    assert any(f"Deleted data product {first_record['product_id']}" in line for line in lines)
    assert_no_secret(dataset, secrets_of(tom_server), first, second)


def test_unchanged_light_curve_is_not_uploaded_again(dataset, tom_server, api, account):
    name = "UPL-SAME-0001"
    tid = api.create_target(name)
    first, uploaded = upload_first(dataset, name, account)
    csv_before = csv_path(dataset, name).read_bytes()

    # The light curve deleted by hand: it is built again from the same measurements, to the
    # same content (a frame only touched would change nothing: its content decides)
    next(dataset.glob("*_lc.ecsv")).unlink()
    second, lines = reduce(dataset)

    assert second.returncode == 0, ok(second)
    assert {"BuildLightcurve", "UploadToTOM"} <= stages_run(lines) and "MeasureImage" not in stages_run(lines)
    assert csv_path(dataset, name).read_bytes() == csv_before
    record = read_json(dataset / UPLOAD_RECORD_NAME)
    assert record["status"] == "unchanged"
    assert record["sha256"] == uploaded["sha256"]
    assert record["product_id"] == uploaded["product_id"]
    assert api.products(tid, name) == {uploaded["product_id"]: f"{name}_{FILTER}.csv"}
    assert tom_points(api, tid) == csv_points(dataset, name)
    assert any("not uploaded again" in line for line in lines)

    third, lines = reduce(dataset)  # nothing changed at all: nothing runs
    assert third.returncode == 0, ok(third)
    assert lines == []
    assert read_json(dataset / UPLOAD_RECORD_NAME) == record
    assert_no_secret(dataset, secrets_of(tom_server), first, second, third)


def test_light_curve_reduced_for_another_target_is_uploaded_to_it(dataset, tom_server, api, account):
    """The same frames reduced under another target name, with the same data_label:
    the CSV's content is unchanged, but the new target does not hold it yet."""
    label = "UPL-MOVE"
    first_name, second_name = "UPL-MOVE-0001", "UPL-MOVE-0002"
    first_id, second_id = api.create_target(first_name), api.create_target(second_name)
    first, first_record = upload_first(dataset, first_name, account, data_label=label)

    configure(dataset, second_name, account, data_label=label)
    second, lines = reduce(dataset)

    assert second.returncode == 0, ok(second)
    assert csv_path(dataset, second_name).read_bytes() == csv_path(dataset, first_name).read_bytes()
    record = read_json(dataset / UPLOAD_RECORD_NAME)
    assert record["status"] == "uploaded" and record["target_id"] == second_id
    assert the_product(api, second_id, second_name, label) == record["product_id"]
    assert tom_points(api, second_id) == csv_points(dataset, second_name)
    # The first target is another target: left as it was.
    assert the_product(api, first_id, first_name, label) == first_record["product_id"]
    assert tom_points(api, first_id) == csv_points(dataset, first_name)
    assert_no_secret(dataset, secrets_of(tom_server), first, second)


def test_account_file_pointed_at_another_address_uploads_there(dataset, tom_server, api, account):
    """Editing url in the account file (same file, same light curve) is noticed."""
    name = "UPL-ADDRESS-0001"
    tid = api.create_target(name)
    first, first_record = upload_first(dataset, name, account)

    # The same TOM under another address stands in for another TOM.
    other_url = tom_server.url.replace("127.0.0.1", "localhost")
    write_account(account, tom_server.config(url=other_url))
    second, lines = reduce(dataset)

    assert second.returncode == 0, ok(second)
    assert stages_run(lines) == {"LockDataset", "UploadToTOM", "ReleaseLock"}
    record = read_json(dataset / UPLOAD_RECORD_NAME)
    assert record["status"] == "uploaded" and record["url"] == other_url
    assert record["product_id"] != first_record["product_id"]
    assert the_product(api, tid, name) == record["product_id"]
    assert tom_points(api, tid) == csv_points(dataset, name)
    assert_no_secret(dataset, secrets_of(tom_server), first, second)


# --------------------------------------------------------------------------
# Failures: credentials, server down, target
# --------------------------------------------------------------------------


def test_wrong_password_is_a_clear_error_then_the_right_one_uploads_only(
        dataset, tom_server, api, tmp_path):
    name = "UPL-AUTH-0001"
    tid = api.create_target(name)
    wrong = "wrong-" + tom_server.password[::-1]
    account = write_account(tmp_path / "tom_config.yaml", tom_server.config(password=wrong))
    configure(dataset, name, account)

    failed, lines = reduce(dataset)

    assert failed.returncode == TASK_FAILED, ok(failed)
    message = (f"TOM at {tom_server.url} refused the credentials of user {tom_server.username}: "
               "Invalid username/password.")
    assert any(f"UploadToTOM: FAILED: {message}" in line for line in lines), lines
    assert message in failed.stderr + failed.stdout
    assert not any("retry" in line for line in lines)  # a 4xx answer is not retried
    assert api.products(tid, name) == {}
    assert api.points(tid) == []
    failed_record = read_json(dataset / UPLOAD_RECORD_NAME)
    assert "key" not in failed_record  # the stage stays incomplete
    assert {k: failed_record[k] for k in ("status", "error", "url", "target", "product_name", "product_id")} == {
        "status": "failed", "error": message, "url": tom_server.url, "target": name,
        "product_name": f"{name}_{FILTER}", "product_id": None}
    assert not (dataset / "dataset.lock").exists()
    assert_no_secret(dataset, secrets_of(tom_server) + [wrong], failed)

    write_account(account, tom_server.config())
    fixed, lines = reduce(dataset)

    assert fixed.returncode == 0, ok(fixed)
    assert stages_run(lines) == {"LockDataset", "UploadToTOM", "ReleaseLock"}
    record = read_json(dataset / UPLOAD_RECORD_NAME)
    assert record["status"] == "uploaded"
    assert the_product(api, tid, name) == record["product_id"]
    assert tom_points(api, tid) == csv_points(dataset, name)
    assert_no_secret(dataset, secrets_of(tom_server) + [wrong], failed, fixed)


def test_server_down_fails_after_bounded_retries_and_the_next_run_uploads_only(
        dataset, tom_server, api, tmp_path):
    name = "UPL-DOWN-0001"
    tid = api.create_target(name)
    down_url = f"http://127.0.0.1:{free_port()}"
    account = write_account(tmp_path / "tom_config.yaml",
                            tom_server.config(url=down_url, timeout_s=2.0, max_retries=2, backoff_s=0.1))
    configure(dataset, name, account)

    failed, lines = reduce(dataset)

    assert failed.returncode == TASK_FAILED, ok(failed)
    retries = [line for line in lines if "failed (connection refused); retry" in line]
    assert [re.search(r"retry \d of \d", line).group(0) for line in retries] == ["retry 1 of 2", "retry 2 of 2"]
    message = (f"TOM at {down_url} is unavailable: look-up of target {name} failed 3 time(s), "
               "last: connection refused")
    assert any(f"UploadToTOM: FAILED: {message}" in line for line in lines), lines
    assert message in failed.stderr + failed.stdout
    assert not (dataset / "dataset.lock").exists()
    failed_record = read_json(dataset / UPLOAD_RECORD_NAME)
    assert "key" not in failed_record
    assert (failed_record["status"], failed_record["error"], failed_record["url"]) == ("failed", message, down_url)
    assert csv_path(dataset, name).exists()  # the light curve stays
    assert api.products(tid, name) == {}

    write_account(account, tom_server.config())
    fixed, lines = reduce(dataset)

    assert fixed.returncode == 0, ok(fixed)
    assert stages_run(lines) == {"LockDataset", "UploadToTOM", "ReleaseLock"}
    record = read_json(dataset / UPLOAD_RECORD_NAME)
    assert record["status"] == "uploaded" and record["url"] == tom_server.url
    assert the_product(api, tid, name) == record["product_id"]
    assert tom_points(api, tid) == csv_points(dataset, name)
    assert_no_secret(dataset, secrets_of(tom_server), failed, fixed)


def test_absent_target_is_a_clear_error_and_targets_containing_its_name_are_never_touched(
        dataset, tom_server, api, account):
    name = "UPL-ABSENT-0001"
    # Its name contains ours, and it holds a product of the very file name ours gets.
    other = f"{name}-B"
    other_id = api.create_target(other)
    other_csv = dataset.parent / f"{name}_{FILTER}.csv"
    other_csv.write_text("time,filter,magnitude,error\n61000.5,ip,16.0,0.01\n61001.5,ip,16.1,0.01\n")
    other_product = api.upload(other_id, other_csv, other_csv.name)
    other_before = (api.products(other_id, other), api.points(other_id))
    configure(dataset, name, account)

    failed, lines = reduce(dataset)

    assert failed.returncode == TASK_FAILED, ok(failed)
    message = (f"TOM at {tom_server.url} has no target named {name} (create it there, or set "
               "tom.create_target: true to create it from the dataset's RA and Dec)")
    assert any(f"UploadToTOM: FAILED: {message}" in line for line in lines), lines
    assert target_id(api, name) is None
    assert (api.products(other_id, other), api.points(other_id)) == other_before
    assert other_product in other_before[0]

    # The opt-in switch creates it from the dataset's RA and Dec; the other target stays as it was.
    configure(dataset, name, account, create_target=True)
    created, lines = reduce(dataset)

    assert created.returncode == 0, ok(created)
    tid = target_id(api, name)
    assert tid is not None and tid != other_id
    target = api.get_all("/api/targets/", name=name)
    ra, dec = next((t["ra"], t["dec"]) for t in target if t["id"] == tid)
    cfg = yaml.safe_load((dataset / "reduction_config.yaml").read_text())["target"]
    assert (ra, dec) == pytest.approx((parse_ra(cfg["RA"]), parse_dec(cfg["Dec"])), abs=1e-6)
    assert tom_points(api, tid) == csv_points(dataset, name)
    assert (api.products(other_id, other), api.points(other_id)) == other_before
    assert_no_secret(dataset, secrets_of(tom_server), failed, created)


# --------------------------------------------------------------------------
# Credentials and settings
# --------------------------------------------------------------------------


def test_readable_account_file_is_warned_about_in_the_dataset_log(dataset, tom_server, api, tmp_path):
    name = "UPL-PERM-0001"
    tid = api.create_target(name)
    account = write_account(tmp_path / "tom_config.yaml", tom_server.config(), mode=0o640)
    configure(dataset, name, account)

    done, lines = reduce(dataset)

    assert done.returncode == 0, ok(done)
    warning = (f"{account}: TOM configuration holds credentials but can be read by other users "
               f"(mode 640); run: chmod 600 {account}")
    assert any("WARNING" in line and warning in line for line in lines), lines
    assert tom_points(api, tid) == csv_points(dataset, name)
    assert_no_secret(dataset, secrets_of(tom_server), done)


def test_upload_false_completes_the_stage_with_a_skipped_reason(reduced_template):
    record = read_json(reduced_template / UPLOAD_RECORD_NAME)
    assert record["status"] == "skipped"
    assert record["reason"] == "tom.upload is false"
    assert read_json(reduced_template / RECORD_NAME)["upload"] == "skipped"
    log = (reduced_template / LOG_NAME).read_text()
    assert "UploadToTOM: upload skipped (tom.upload is false)" in log


def test_no_task_takes_credentials_as_a_parameter():
    """The visualiser shows every task parameter to anyone who can reach it: the
    TOM account is read from its file inside run(), never passed as a parameter."""
    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    tasks = {t for t in subclasses(luigi.Task) if t.__module__.startswith("luigi_phot.")}
    assert {t.__name__ for t in tasks} >= set(luigi_phot.tasks.__all__)
    params = {name for task in tasks for name, _ in task.get_params()}
    assert "red_dir" in params and "run_id" in params
    credential = re.compile(r"pass|token|secret|user|auth|credential|login|tom|url", re.IGNORECASE)
    assert not [name for name in params if credential.search(name)]
