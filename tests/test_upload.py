"""UploadToTOM through the pipeline, against a real TOM Toolkit server (issue 6).

Every test runs the real command, ``luigi --module luigi_phot ReduceDataset
--red-dir D --local-scheduler``, on a small synthetic dataset whose
reduction_config.yaml says ``tom.upload: true`` and points at an account file
for the session's local TOM. Each test uses target names of its own, so the
tests share one server without seeing each other's data. What the TOM holds is
checked with plain requests to its API (tests.tom_api), not with the client
under test.

Only what the stage shows is tested here: which stages a run does, the upload
decision (sent, or not sent again), the dataset's upload record and log, and
that a failed upload is reported and the next run redoes the upload only. The
client's behaviour in detail (replacement, error texts, retries, targets whose
names contain ours, credential hygiene) is tested in tests/test_tom.py.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import luigi
import pytest
import yaml
from astropy.table import Table

import luigi_phot.tasks
from luigi_phot.config import parse_dec, parse_ra
from luigi_phot.dataset import LOG_NAME, RECORD_NAME, UPLOAD_RECORD_NAME, read_json
from luigi_phot.synthetic import SyntheticConfig, generate_dataset
from tests.conftest import copy_dataset, reduce_dataset
from tests.tom_api import Api, target_id, tom_points, write_account

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


def upload_first(red: Path, target: str, account: Path, **tom_keys) -> dict:
    """Configure red for target and reduce it once, successfully; returns upload_record.json."""
    configure(red, target, account, **tom_keys)
    done, _ = reduce(red)
    assert done.returncode == 0, ok(done)
    record = read_json(red / UPLOAD_RECORD_NAME)
    assert record["status"] == "uploaded"
    return record


def ok(done) -> str:
    return f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def csv_path(red: Path, target: str) -> Path:
    return red / f"{target}_{FILTER}_lc.csv"


def csv_points(red: Path, target: str) -> list[tuple[float, float, str]]:
    """(MJD, magnitude, filter) of every row of the light-curve CSV the pipeline wrote, sorted."""
    table = Table.read(csv_path(red, target), format="ascii.csv")
    assert table.colnames == ["time", "filter", "magnitude", "error"]
    return sorted((round(float(row["time"]), 6), float(row["magnitude"]), str(row["filter"])) for row in table)


def the_product(api: Api, tid: int, target: str, label: str | None = None) -> int:
    """Id of the target's only data product, whose file carries the dataset's label
    (data_label, by default the target's name): <label>_<filter>.csv, or with
    _<7 characters> appended when the TOM still stores a file of that name (it
    keeps the files of deleted products)."""
    products = api.products(tid, target)
    assert len(products) == 1, products
    (product_id, file_name), = products.items()
    assert re.fullmatch(rf"{label or target}_{FILTER}(_[A-Za-z0-9]{{7}})?\.csv", file_name), file_name
    return product_id


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
# Upload, replacement, the upload decision
# --------------------------------------------------------------------------


def test_first_upload_from_scratch_then_one_more_frame_replaces_the_product(
        fresh_template, tom_server, api, account, tmp_path):
    name = "UPL-FIRST-0001"
    red = copy_dataset(fresh_template, tmp_path / "ip")  # from scratch: every stage runs
    tid = api.create_target(name)
    configure(red, name, account)

    first, lines = reduce(red, "--workers", "2")

    assert first.returncode == 0, ok(first)
    first_record = read_json(red / UPLOAD_RECORD_NAME)
    assert first_record["status"] == "uploaded"
    points = csv_points(red, name)
    assert len(points) == SPEC.n_frames - 1
    assert api.products(tid, name) == {first_record["product_id"]: f"{name}_{FILTER}.csv"}
    assert first_record["n_points"] == len(points)
    assert tom_points(api, tid) == points
    assert read_json(red / RECORD_NAME)["upload"] == "uploaded"
    assert not (red / "dataset.lock").exists()
    assert any("UploadToTOM: uploaded" in line for line in lines)

    # The next frame of the night arrives: the dataset's product is replaced.
    shutil.copy2(spare_frame(fresh_template), red)
    second, lines = reduce(red)

    assert second.returncode == 0, ok(second)
    record = read_json(red / UPLOAD_RECORD_NAME)
    assert record["status"] == "uploaded"
    assert record["product_id"] != first_record["product_id"]
    assert the_product(api, tid, name) == record["product_id"]
    points = csv_points(red, name)
    assert len(points) == SPEC.n_frames
    assert tom_points(api, tid) == points
    assert any(f"Deleted data product {first_record['product_id']}" in line for line in lines)
    assert_no_secret(red, secrets_of(tom_server), first, second)


def test_unchanged_light_curve_is_not_uploaded_again(dataset, api, account):
    name = "UPL-SAME-0001"
    tid = api.create_target(name)
    uploaded = upload_first(dataset, name, account)
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


def test_the_same_light_curve_goes_up_again_to_another_target_or_another_address(
        dataset, tom_server, api, account):
    """The same frames reduced under another target name, with the same data_label
    (the CSV's content is unchanged, but the new target does not hold it yet); then
    the account file edited to another address of the TOM (same file, same light
    curve), and left readable by others."""
    label = "UPL-MOVE"
    first_name, second_name = "UPL-MOVE-0001", "UPL-MOVE-0002"
    api.create_target(first_name)
    second_id = api.create_target(second_name)
    upload_first(dataset, first_name, account, data_label=label)

    configure(dataset, second_name, account, data_label=label)
    moved, lines = reduce(dataset)

    assert moved.returncode == 0, ok(moved)
    assert csv_path(dataset, second_name).read_bytes() == csv_path(dataset, first_name).read_bytes()
    moved_record = read_json(dataset / UPLOAD_RECORD_NAME)
    assert moved_record["status"] == "uploaded" and moved_record["target_id"] == second_id
    assert the_product(api, second_id, second_name, label) == moved_record["product_id"]
    assert tom_points(api, second_id) == csv_points(dataset, second_name)

    # The same TOM under another address stands in for another TOM.
    other_url = tom_server.url.replace("127.0.0.1", "localhost")
    write_account(account, tom_server.config(url=other_url), mode=0o640)
    readdressed, lines = reduce(dataset)

    assert readdressed.returncode == 0, ok(readdressed)
    assert stages_run(lines) == {"LockDataset", "UploadToTOM", "ReleaseLock"}
    # The client's warning about the account file goes to the dataset's log.
    assert any(" WARNING " in line and "can be read by other users (mode 640)" in line for line in lines), lines
    record = read_json(dataset / UPLOAD_RECORD_NAME)
    assert record["status"] == "uploaded" and record["url"] == other_url
    assert record["product_id"] != moved_record["product_id"]
    assert the_product(api, second_id, second_name, label) == record["product_id"]
    assert tom_points(api, second_id) == csv_points(dataset, second_name)


# --------------------------------------------------------------------------
# A failed upload
# --------------------------------------------------------------------------


def test_a_failed_upload_is_reported_and_the_next_run_uploads_only(dataset, tom_server, api, tmp_path):
    """A wrong password, then a target the TOM does not have: each run fails in the
    upload stage, says why in the dataset log and on the console, and leaves the
    stage incomplete; the run after the fix redoes the upload, and only the upload."""
    name = "UPL-FAIL-0001"
    wrong = "wrong-" + tom_server.password[::-1]
    account = write_account(tmp_path / "tom_config.yaml", tom_server.config(password=wrong))
    configure(dataset, name, account)

    refused, lines = reduce(dataset)

    assert refused.returncode == TASK_FAILED, ok(refused)
    message = (f"TOM at {tom_server.url} refused the credentials of user {tom_server.username}: "
               "Invalid username/password.")
    assert any(f"UploadToTOM: FAILED: {message}" in line for line in lines), lines
    assert message in refused.stderr + refused.stdout
    failed_record = read_json(dataset / UPLOAD_RECORD_NAME)
    assert "key" not in failed_record  # the stage stays incomplete
    assert {k: failed_record[k] for k in ("status", "error", "url", "target", "product_name", "product_id")} == {
        "status": "failed", "error": message, "url": tom_server.url, "target": name,
        "product_name": f"{name}_{FILTER}", "product_id": None}
    assert not (dataset / "dataset.lock").exists()
    assert csv_path(dataset, name).exists()  # the light curve stays

    # The right password; the target is not on the TOM, and tom.create_target is false.
    write_account(account, tom_server.config())
    absent, lines = reduce(dataset)

    assert absent.returncode == TASK_FAILED, ok(absent)
    assert stages_run(lines) & {"MeasureImage", "BuildCatalogue", "BuildLightcurve"} == set()
    assert any(f"UploadToTOM: FAILED: TOM at {tom_server.url} has no target named {name} " in line
               for line in lines), lines
    assert target_id(api, name) is None
    assert read_json(dataset / UPLOAD_RECORD_NAME)["status"] == "failed"

    # The opt-in switch creates it from the dataset's RA and Dec.
    configure(dataset, name, account, create_target=True)
    created, lines = reduce(dataset)

    assert created.returncode == 0, ok(created)
    assert stages_run(lines) == {"LockDataset", "UploadToTOM", "ReleaseLock"}
    record = read_json(dataset / UPLOAD_RECORD_NAME)
    tid = target_id(api, name)
    assert record["status"] == "uploaded" and record["target_id"] == tid
    (ra, dec), = [(t["ra"], t["dec"]) for t in api.get_all("/api/targets/", name=name) if t["id"] == tid]
    cfg = yaml.safe_load((dataset / "reduction_config.yaml").read_text())["target"]
    assert (ra, dec) == pytest.approx((parse_ra(cfg["RA"]), parse_dec(cfg["Dec"])), abs=1e-6)
    assert the_product(api, tid, name) == record["product_id"]
    assert tom_points(api, tid) == csv_points(dataset, name)
    assert_no_secret(dataset, secrets_of(tom_server) + [wrong], refused, absent, created)


# --------------------------------------------------------------------------
# Credentials and settings
# --------------------------------------------------------------------------


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
