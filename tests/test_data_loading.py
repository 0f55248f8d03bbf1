"""`load_any_dataset`, the one rule of every script and command for choosing a split (issue 16): the split asked
for, else the only split there is (a local data file is the `"train"` split), else an error naming the splits; and the
commands that use it need no split flag on a local file and fail before loading any model."""

import json

import pytest
from datasets import Dataset, DatasetDict

from trl_erprm.cli import main
from trl_erprm.data import load_any_dataset


ROWS = [{"prompt": "A", "answers": ["5", "7"], "correct": [0, 1], "scores": [[0.9], [0.6]]}]


@pytest.fixture
def jsonl(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return str(path)


@pytest.fixture
def two_splits(tmp_path):
    path = tmp_path / "two_splits"
    DatasetDict({"train": Dataset.from_list(ROWS * 2), "test": Dataset.from_list(ROWS)}).save_to_disk(path)
    return str(path)


def test_a_local_file_is_its_only_split(jsonl, tmp_path):
    assert load_any_dataset(jsonl).to_list() == ROWS
    assert load_any_dataset(jsonl, split="train").to_list() == ROWS
    with pytest.raises(ValueError, match=r"Split 'test' not found .* available splits: \['train'\] \(a single data"):
        load_any_dataset(jsonl, split="test")
    csv = tmp_path / "rows.csv"
    csv.write_text("prompt,gold_answer\nWhat is 2 + 2?,4\n")
    assert load_any_dataset(str(csv))[0] == {"prompt": "What is 2 + 2?", "gold_answer": 4}


def test_saved_folders(two_splits, tmp_path):
    with pytest.raises(ValueError, match=r"has several splits \['train', 'test'\]: choose one .*--dataset_split"):
        load_any_dataset(two_splits)
    assert len(load_any_dataset(two_splits, split="test")) == 1
    assert len(load_any_dataset(two_splits, split="train")) == 2
    one = tmp_path / "one"
    Dataset.from_list(ROWS).save_to_disk(one)
    assert load_any_dataset(str(one)).to_list() == ROWS
    assert load_any_dataset(str(one), split="train").to_list() == ROWS
    with pytest.raises(ValueError, match="saved Dataset is the 'train' split"):
        load_any_dataset(str(one), split="test")


def test_a_missing_data_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="No such data file: .*nope.jsonl"):
        load_any_dataset(str(tmp_path / "nope.jsonl"))


def test_bon_and_stepeval_on_a_local_file_need_no_split_flag(jsonl, tmp_path):
    """`trl-erprm bon` used to default to `--dataset_split test`, which a local file (split `train`) lacks."""
    argv = ["bon", "--dataset_name", jsonl, "--answers_column", "answers", "--correctness_column", "correct"]
    argv += ["--scores_column", "scores", "--num_seeds", "1", "--plot", "False", "--output_dir", str(tmp_path / "b")]
    assert main(argv) == 0
    assert json.loads((tmp_path / "b" / "results.json").read_text())["num_problems"] == 1

    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"problem": "p", "steps": ["a", "b"], "label": 1, "scores": [0.9, 0.2]}) + "\n")
    argv = ["stepeval", "--dataset_name", str(items), "--scores_column", "scores", "--threshold", "0.5"]
    assert main([*argv, "--output_dir", str(tmp_path / "s")]) == 0
    assert json.loads((tmp_path / "s" / "results.json").read_text())["eval"]["num_items"] == 1


@pytest.mark.parametrize(
    "command",
    [
        ["bon", "--prm_model", "{missing}"],
        ["stepeval", "--prm_model", "{missing}"],
        ["search", "--prm_model", "{missing}", "--generator_model", "{missing}"],
        ["label", "--model_name_or_path", "{missing}"],
    ],
    ids=lambda c: c[0],
)
def test_a_missing_split_fails_before_any_model_loads(command, two_splits, tmp_path, capsys):
    """The models do not exist: the error is about the split, so it came first (and fast)."""
    argv = [a.format(missing=tmp_path / "no-model") for a in command] + ["--dataset_name", two_splits]
    argv += ["--output_dir", str(tmp_path / "out")]
    if command[0] == "label":  # its default split is "train" (labeling usually reads a local file)
        argv += ["--dataset_split", "validation"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"trl-erprm {command[0]}: error: ") and err.count("\n") == 1, err
    assert "'train', 'test'" in err and "no-model" not in err
