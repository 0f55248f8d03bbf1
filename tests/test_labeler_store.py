"""The labeling job store: manifests, append-only parts, torn lines, merging in input order."""

import json

import pytest

from trl_erprm.labeling import store


def _manifest(**job):
    return store.make_manifest(
        {"num_rollouts": 4, "seed": 0, **job}, num_rows=3, data_hash=store.content_hash([1, 2, 3])
    )


def test_content_hash_depends_on_content_and_order():
    rows = [("q1", ["a", "b"], "3"), ("q2", ["c"], "4")]
    assert store.content_hash(rows) == store.content_hash([list(r) for r in rows])  # JSON: tuple == list
    assert store.content_hash(rows) != store.content_hash(rows[::-1])
    assert store.content_hash(rows) != store.content_hash([("q1", ["a", "b"], "3"), ("q2", ["c"], "5")])
    # Boundaries between values matter: ["ab", "c"] is not ["a", "bc"].
    assert store.content_hash(["ab", "c"]) != store.content_hash(["a", "bc"])


def test_prepare_creates_then_recognises_the_same_job(tmp_path):
    manifest = _manifest()
    assert store.prepare_job_dir(tmp_path / "job", manifest) is False
    assert json.loads((tmp_path / "job" / "manifest.json").read_text()) == manifest
    assert store.prepare_job_dir(tmp_path / "job", manifest) is True
    store.check_job_dir(tmp_path / "job", manifest)


def test_differences_are_listed_and_overwrite_only_removes_job_files(tmp_path):
    root = tmp_path / "job"
    store.prepare_job_dir(root, _manifest())
    with store.PartWriter(root, 0) as writer:
        writer.write([{"index": 0, "status": "ok"}])
    (root / "my_notes.txt").write_text("keep me")
    with pytest.raises(ValueError) as error:
        store.prepare_job_dir(root, _manifest(num_rollouts=8, seed=1))
    message = str(error.value)
    assert "num_rollouts: 4 in the folder, 8 now" in message and "seed: 0 in the folder, 1 now" in message
    assert "overwrite=True" in message and "new output_dir" in message
    with pytest.raises(ValueError, match="does not match"):
        store.check_job_dir(root, _manifest(seed=1))

    assert store.prepare_job_dir(root, _manifest(num_rollouts=8), overwrite=True) is False
    assert store.read_results(root) == {}
    assert (root / "my_notes.txt").read_text() == "keep me"
    assert json.loads((root / "manifest.json").read_text())["job"]["num_rollouts"] == 8


def test_refuses_a_non_empty_folder_that_is_not_a_job(tmp_path):
    (tmp_path / "data.csv").write_text("x")
    with pytest.raises(ValueError, match="not a labeling job folder"):
        store.prepare_job_dir(tmp_path, _manifest())


def test_torn_last_line_is_ignored_by_readers_and_truncated_by_the_next_writer(tmp_path):
    store.prepare_job_dir(tmp_path, _manifest())
    with store.PartWriter(tmp_path, 0) as writer:
        writer.write([{"index": 0, "v": [1.0]}, {"index": 2, "v": [0.0]}])
    part = tmp_path / "parts" / "part-00000.jsonl"
    with open(part, "ab") as f:
        f.write(b'{"index": 1, "v": [0.')  # killed in the middle of a write
    assert store.read_results(tmp_path) == {0: {"index": 0, "v": [1.0]}, 2: {"index": 2, "v": [0.0]}}

    with store.PartWriter(tmp_path, 0) as writer:  # the restarted job
        writer.write([{"index": 1, "v": [0.5]}])
    assert part.read_text().splitlines() == [
        '{"index": 0, "v": [1.0]}',
        '{"index": 2, "v": [0.0]}',
        '{"index": 1, "v": [0.5]}',
    ]
    assert [r["v"] for r in store.ordered_results(store.read_results(tmp_path), 3)] == [[1.0], [0.5], [0.0]]


def test_a_part_with_only_a_torn_line_reads_as_empty(tmp_path):
    store.prepare_job_dir(tmp_path, _manifest())
    (tmp_path / "parts" / "part-00001.jsonl").write_bytes(b'{"ind')
    assert store.read_results(tmp_path) == {}
    with store.PartWriter(tmp_path, 1) as writer:
        writer.write([{"index": 2}])
    assert (tmp_path / "parts" / "part-00001.jsonl").read_bytes() == b'{"index": 2}\n'


def test_results_of_several_parts_are_merged_in_input_order(tmp_path):
    store.prepare_job_dir(tmp_path, _manifest())
    with store.PartWriter(tmp_path, 1) as w1, store.PartWriter(tmp_path, 0) as w0:
        w1.write([{"index": 2, "r": "c"}])
        w0.write([{"index": 0, "r": "a"}])
        w1.write([{"index": 1, "r": "b"}])
    assert [r["r"] for r in store.ordered_results(store.read_results(tmp_path), 3)] == ["a", "b", "c"]


def test_corrupt_complete_line_missing_rows_and_conflicts_are_errors(tmp_path):
    store.prepare_job_dir(tmp_path, _manifest())
    part = tmp_path / "parts" / "part-00000.jsonl"
    part.write_text('{"index": 0}\nnot json\n')
    with pytest.raises(ValueError, match=r"part-00000.jsonl, line 2.*Delete that line"):
        store.read_results(tmp_path)

    part.write_text('{"index": 0, "v": 1}\n')
    (tmp_path / "parts" / "part-00001.jsonl").write_text('{"index": 0, "v": 2}\n')
    with pytest.raises(ValueError, match="Row 0 has two different results"):
        store.read_results(tmp_path)

    (tmp_path / "parts" / "part-00001.jsonl").write_text('{"index": 0, "v": 1}\n')  # an identical copy is harmless
    results = store.read_results(tmp_path)
    with pytest.raises(ValueError, match=r"no result for 2 row\(s\) \(first: \[1, 2\]\)"):
        store.ordered_results(results, 3)
    with pytest.raises(ValueError, match=r"results for 1 unknown row"):
        store.ordered_results({0: {}, 1: {}, 5: {}}, 2)
