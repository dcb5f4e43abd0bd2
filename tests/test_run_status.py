"""luigi_phot.run_status: the stages' status records, and what ReduceDataset reads from
them (how a run ended, its progress), without Luigi."""

from __future__ import annotations

from luigi_phot.run_status import (StageRecord, failure_summary, lost_lock_race, new_records_folder, read_records,
                                   run_progress, write_record)

RUN = "20261201T220000Z-abcdef"


def test_records_are_read_back_in_stage_order_and_only_for_their_run(tmp_path):
    assert write_record(tmp_path, "ReleaseLock_x", RUN, "ReleaseLock", "done")
    assert write_record(tmp_path, "MeasureImage_b", RUN, "MeasureImage", "failed", "cannot write b", frame="b.fits")
    assert write_record(tmp_path, "LockDataset_x", RUN, "LockDataset", "done")
    assert write_record(tmp_path, "LockDataset_y", "another-run", "LockDataset", "lock_held", "held by someone")
    records = read_records(tmp_path, RUN)
    assert [(r.stage, r.status) for r in records] == [("LockDataset", "done"), ("MeasureImage", "failed"),
                                                      ("ReleaseLock", "done")]
    assert records[1].frame == "b.fits" and records[1].reason == "cannot write b"
    assert read_records(tmp_path, "no-such-run") == []


def test_a_record_that_cannot_be_written_is_left_out_without_an_exception_or_a_temporary(tmp_path):
    folder = tmp_path / "records"
    folder.mkdir()
    (folder / "LockDataset_x.json").mkdir()   # a directory where the record should go
    assert not write_record(folder, "LockDataset_x", RUN, "LockDataset", "done")
    assert not write_record(tmp_path / "gone", "BuildCatalogue_x", RUN, "BuildCatalogue", "done")
    assert read_records(folder, RUN) == [] and [p.name for p in folder.iterdir()] == ["LockDataset_x.json"]


def test_each_run_gets_a_private_folder_outside_the_dataset():
    first, second = new_records_folder(RUN), new_records_folder(RUN)
    try:
        assert first != second and first.is_dir() and second.is_dir() and RUN in first.name
        assert oct(first.stat().st_mode & 0o777) == "0o700"
    finally:
        first.rmdir()
        second.rmdir()


def test_a_lost_race_for_the_lock_and_failures_are_told_apart():
    held = StageRecord("LockDataset", "lock_held", "T is being reduced by run r0 of ana")
    assert lost_lock_race([held]) == "T is being reduced by run r0 of ana"
    assert lost_lock_race([StageRecord("LockDataset", "failed", "cannot write T/dataset.lock")]) == ""
    disk = [StageRecord("MeasureImage", "failed", f"cannot write f{k}: No space left on device", frame=f"f{k}")
            for k in range(3)]
    summary = failure_summary([StageRecord("LockDataset", "done"), *disk,
                               StageRecord("BuildLightcurve", "failed", "no usable frame")])
    assert summary == ("MeasureImage: cannot write f0: No space left on device (and 2 more MeasureImage failures); "
                       "BuildLightcurve: no usable frame")
    assert failure_summary([StageRecord("ReleaseLock", "done")]) == ""


def test_progress_follows_the_stages_and_the_frames_measured():
    records = []
    assert run_progress(records) == (0, "starting")
    records.append(StageRecord("LockDataset", "done"))
    assert run_progress(records) == (5, "lock taken")
    records.append(StageRecord("BuildCatalogue", "done"))
    assert run_progress(records) == (15, "catalogue built")
    records.append(StageRecord("BuildLightcurve", "measuring", frames=6, to_measure=4))
    records += [StageRecord("MeasureImage", "done", frame=f"f{k}") for k in range(2)]
    assert run_progress(records) == (52, "2 of 4 frames measured (6 in the dataset)")
    records += [StageRecord("MeasureImage", "done", frame=f"f{k}") for k in range(2, 4)]
    assert run_progress(records)[0] == 90
    records.append(StageRecord("BuildLightcurve", "done"))
    assert run_progress(records) == (92, "light curve written")
    records += [StageRecord("UploadToTOM", "done"), StageRecord("ReleaseLock", "done")]
    assert run_progress(records) == (100, "finished; lock released")
    failed = run_progress(records[:3] + [StageRecord("MeasureImage", "failed", "cannot write f0", frame="f0")])
    assert failed == (33, "MeasureImage failed: cannot write f0")
