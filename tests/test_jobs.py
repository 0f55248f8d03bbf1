"""The one job store (`trl_erprm.jobs`): manifests, append-only parts, torn lines, merging in input order, one owner per
folder (an OS lock that dies with its process), take-over of a folder whose job wrote nothing, environment faults."""

import errno
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from trl_erprm import jobs


REPO = Path(__file__).resolve().parents[1]


def _manifest(**job):
    return jobs.make_manifest(
        "test-job/1", {"num_rollouts": 4, "seed": 0, **job}, num_rows=3, data_hash=jobs.content_hash([1, 2, 3])
    )


def _open(root, manifest=None, **kwargs):
    store = jobs.JobStore(root, manifest or _manifest(), **kwargs)
    return store, store.open()


def test_content_hash_depends_on_content_and_order():
    rows = [("q1", ["a", "b"], "3"), ("q2", ["c"], "4")]
    assert jobs.content_hash(rows) == jobs.content_hash([list(r) for r in rows])  # JSON: tuple == list
    assert jobs.content_hash(rows) != jobs.content_hash(rows[::-1])
    assert jobs.content_hash(rows) != jobs.content_hash([("q1", ["a", "b"], "3"), ("q2", ["c"], "5")])
    # Boundaries between values matter: ["ab", "c"] is not ["a", "bc"].
    assert jobs.content_hash(["ab", "c"]) != jobs.content_hash(["a", "bc"])


def test_open_creates_then_resumes_the_same_job_and_says_so(tmp_path, caplog):
    root = tmp_path / "job"
    store, done = _open(root)
    assert done == {} and not store.resumed
    assert json.loads((root / "manifest.json").read_text()) == _manifest()
    with store.writer() as writer:
        writer.write([{"index": 1, "v": 0.5}])
    store.close()
    with caplog.at_level(logging.INFO, logger="trl_erprm"):
        again, done = _open(root, unit="problems")
    assert done == {1: {"index": 1, "v": 0.5}} and again.resumed
    assert f"Resuming {root}: 1 of 3 problems done." in caplog.text
    again.close()


def test_differences_are_listed_and_overwrite_only_removes_job_files(tmp_path):
    root = tmp_path / "job"
    store, _ = _open(root, outputs=("summary.json",))
    with store.writer() as writer:
        writer.write([{"index": 0, "status": "ok"}])
    store.write_json("summary.json", {"rows": 1})
    store.close()
    (root / "my_notes.txt").write_text("keep me")
    with pytest.raises(ValueError) as error:
        _open(root, _manifest(num_rollouts=8, seed=1))
    message = str(error.value)
    assert "num_rollouts: 4 in the folder, 8 now" in message and "seed: 0 in the folder, 1 now" in message
    assert "overwrite=True" in message and "new output_dir" in message
    # A refused job leaves the folder as it was, and does not keep it locked.
    assert jobs.read_results(root) == {0: {"index": 0, "status": "ok"}}
    checker = jobs.JobStore(root, _manifest(seed=1), rank=1)
    with pytest.raises(ValueError, match="does not match"):
        checker.open()

    store, done = _open(root, _manifest(num_rollouts=8), outputs=("summary.json",), overwrite=True)
    assert done == {} and not (root / "summary.json").exists()
    assert (root / "my_notes.txt").read_text() == "keep me"
    assert json.loads((root / "manifest.json").read_text())["job"]["num_rollouts"] == 8
    store.close()


def test_refuses_a_non_empty_folder_that_is_not_a_job(tmp_path):
    (tmp_path / "data.csv").write_text("x")
    with pytest.raises(ValueError, match="not a job folder"):
        _open(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.csv"]  # not even a lock file left behind


def test_a_folder_whose_job_wrote_no_row_is_taken_over(tmp_path, caplog):
    """A job that failed at start-up (a wrong model path) recorded its arguments but wrote nothing: the corrected
    command runs in the same folder. Once a row exists, the folder is protected again."""
    root = tmp_path / "job"
    failed, _ = _open(root, _manifest(model="no/such/model"))
    (root / "parts" / "part-00000.jsonl").write_bytes(b'{"index": 0, "v"')  # killed in its very first write
    failed.close()
    with caplog.at_level(logging.INFO, logger="trl_erprm"):
        store, done = _open(root, _manifest(model="right/model"))
    assert done == {} and "previous job wrote no result (model: 'no/such/model' in the folder" in caplog.text
    assert json.loads((root / "manifest.json").read_text())["job"]["model"] == "right/model"
    with store.writer() as writer:
        writer.write([{"index": 0}])
    store.close()
    with pytest.raises(ValueError, match="different arguments"):
        _open(root, _manifest(model="third/model"))


def test_torn_last_line_is_ignored_by_readers_and_truncated_by_the_next_writer(tmp_path):
    store, _ = _open(tmp_path)
    with store.writer() as writer:
        writer.write([{"index": 0, "v": [1.0]}, {"index": 2, "v": [0.0]}])
    part = tmp_path / "parts" / "part-00000.jsonl"
    with open(part, "ab") as f:
        f.write(b'{"index": 1, "v": [0.')  # killed in the middle of a write
    assert jobs.read_results(tmp_path) == {0: {"index": 0, "v": [1.0]}, 2: {"index": 2, "v": [0.0]}}

    with store.writer() as writer:  # the restarted job
        writer.write([{"index": 1, "v": [0.5]}])
    assert part.read_text().splitlines() == [
        '{"index": 0, "v": [1.0]}',
        '{"index": 2, "v": [0.0]}',
        '{"index": 1, "v": [0.5]}',
    ]
    assert [r["v"] for r in jobs.ordered_results(jobs.read_results(tmp_path), 3)] == [[1.0], [0.5], [0.0]]
    store.close()


def test_results_of_several_ranks_are_merged_in_input_order(tmp_path):
    main, _ = _open(tmp_path)
    other, _ = _open(tmp_path, rank=1)  # rank 1 of the same job: its own lock and part
    with other.writer() as w1, main.writer() as w0:
        w1.write([{"index": 2, "r": "c"}])
        w0.write([{"index": 0, "r": "a"}])
        w1.write([{"index": 1, "r": "b"}])
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == ["part-00000.jsonl", "part-00001.jsonl"]
    assert [r["r"] for r in jobs.ordered_results(main.read_results(), 3)] == ["a", "b", "c"]
    with pytest.raises(jobs.JobLockedError):  # a second writer of rank 1
        _open(tmp_path, rank=1)
    main.close()
    other.close()


def test_corrupt_complete_line_missing_rows_and_conflicts_are_errors(tmp_path):
    _open(tmp_path)[0].close()
    part = tmp_path / "parts" / "part-00000.jsonl"
    part.write_text('{"index": 0}\nnot json\n')
    with pytest.raises(ValueError, match=r"part-00000.jsonl, line 2.*Delete that line"):
        jobs.read_results(tmp_path)

    part.write_text('{"index": 0, "v": 1}\n')
    (tmp_path / "parts" / "part-00001.jsonl").write_text('{"index": 0, "v": 2}\n')
    with pytest.raises(ValueError, match="Row 0 has two different results"):
        jobs.read_results(tmp_path)

    (tmp_path / "parts" / "part-00001.jsonl").write_text('{"index": 0, "v": 1}\n')  # an identical copy is harmless
    results = jobs.read_results(tmp_path)
    with pytest.raises(ValueError, match=r"no result for 2 row\(s\) \(first: \[1, 2\]\)"):
        jobs.ordered_results(results, 3)
    with pytest.raises(ValueError, match=r"results for 1 unknown row"):
        jobs.ordered_results({0: {}, 1: {}, 5: {}}, 2)


# ---------------------------------------------------------------------------------------------------------------------
# One owner per folder
# ---------------------------------------------------------------------------------------------------------------------


def test_a_second_job_on_a_held_folder_stops_at_once_naming_the_holder(tmp_path):
    first, _ = _open(tmp_path)
    with pytest.raises(jobs.JobLockedError) as error:
        _open(tmp_path)  # same arguments: it would resume, and write every row a second time
    message = str(error.value)
    assert "\n" not in message and str(tmp_path) in message
    assert f"pid {os.getpid()} on " in message and "started " in message and "choose another output_dir" in message
    first.close()
    second, _ = _open(tmp_path)  # released by close()
    second.close()


def test_the_lock_of_a_killed_job_is_not_stale(tmp_path):
    code = (
        "import sys, time\n"
        "from trl_erprm import jobs\n"
        f"store = jobs.JobStore({str(tmp_path)!r}, {_manifest()!r})\n"
        "store.open()\n"
        "print('locked', flush=True)\n"
        "time.sleep(600)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(jobs.JobLockedError, match=f"pid {holder.pid} on"):
            _open(tmp_path)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    store, _ = _open(tmp_path)  # the OS released the dead process's lock
    store.close()


# ---------------------------------------------------------------------------------------------------------------------
# Environment faults: one line naming the folder and the fix, nothing written damaged
# ---------------------------------------------------------------------------------------------------------------------


def _unwritable_folder(tmp_path):
    """A job folder path that cannot be created or written: a read-only folder's child where permissions are
    enforced, else (as root, who ignores them) a path under a regular file."""
    parent = tmp_path / "readonly"
    parent.mkdir()
    parent.chmod(0o555)
    if not os.access(parent, os.W_OK):
        return parent / "job", "Permission denied"
    parent.chmod(0o755)
    (tmp_path / "a_file").write_text("not a folder")
    return tmp_path / "a_file" / "job", "is a file"


def test_unwritable_output_folder_is_one_line_with_the_fix(tmp_path):
    root, reason = _unwritable_folder(tmp_path)
    with pytest.raises(jobs.JobFolderError) as error:
        _open(root)
    message = str(error.value)
    assert "\n" not in message and str(root) in message and reason in message
    assert "output_dir" in message


def test_a_full_disk_keeps_the_rows_already_written(tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.fail("this test needs /dev/full (Linux) to produce a real 'No space left on device' error")
    store, _ = _open(tmp_path)
    with store.writer() as writer:
        writer.write([{"index": 0, "v": 1}])
    other, _ = _open(tmp_path, rank=1)
    (tmp_path / "parts" / "part-00001.jsonl").symlink_to("/dev/full")  # rank 1 writes on a full device
    with pytest.raises(jobs.JobFolderError) as error, other.writer() as writer:
        writer.write([{"index": 1, "v": 2}])
    message = str(error.value)
    assert "\n" not in message and str(tmp_path) in message
    assert os.strerror(errno.ENOSPC) in message and "resumes after them" in message
    assert (tmp_path / "parts" / "part-00000.jsonl").read_text() == '{"index": 0, "v": 1}\n'
    assert json.loads((tmp_path / "manifest.json").read_text()) == _manifest()
    # A report written on a full disk: the previous one stays whole (atomic replace), no temporary file is left.
    store.write_json("summary.json", {"rows": 1})
    (tmp_path / "summary.json.tmp").symlink_to("/dev/full")
    with pytest.raises(jobs.JobFolderError, match="Cannot write summary.json"):
        store.write_json("summary.json", {"rows": 2})
    assert json.loads((tmp_path / "summary.json").read_text()) == {"rows": 1}
    assert not (tmp_path / "summary.json.tmp").exists()
    store.close()
    other.close()
    (tmp_path / "parts" / "part-00001.jsonl").unlink()
    assert jobs.read_results(tmp_path) == {0: {"index": 0, "v": 1}}


def test_last_complete_checkpoint_skips_a_checkpoint_cut_short(tmp_path):
    assert jobs.last_complete_checkpoint(tmp_path / "missing") is None
    assert jobs.last_complete_checkpoint(tmp_path) is None
    for step in (2, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (tmp_path / "checkpoint-11").mkdir()  # killed before its trainer state was written
    (tmp_path / "checkpoint-12").mkdir()
    (tmp_path / "checkpoint-12" / "trainer_state.json").write_text('{"global_st')  # killed while writing it
    (tmp_path / "checkpoint-x").mkdir()
    assert jobs.last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")  # 10 > 2 numerically
