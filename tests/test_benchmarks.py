"""The benchmark harness (`benchmarks/run.py`) on fake benchmark modules in a temporary folder.

The real benchmarks are not run here (they take minutes); these tests check the machinery: summaries, the page, the
JSON record, `--only`, `--device`, and that a failing benchmark is reported without stopping the others.
"""

import importlib.util
import json
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[1]

FAKE_OK = """
DESCRIPTION = "A fake benchmark."


def run(quick):
    return {
        "settings": {"size": 3 if quick else 9},
        "seconds_per_item": [0.3, 0.1, 0.2],
        "nested": {"a": [4, 8], "count": 7},
        "same": True,
        "ratios": {"ours / baseline": [1.0, 0.5, 2.0]},
        "checks": {"fast enough": True},
        "notes": "fake notes",
    }
"""
FAKE_FAIL = """
def run(quick):
    raise ValueError("broken on purpose")
"""
FAKE_NOT_A_DICT = """
def run(quick):
    return [1, 2, 3]
"""
FAKE_GPU = """
DEVICES = ("cpu", "cuda")


def run(quick, device="cpu"):
    return {"device_seen": device, "ratios": {"gpu / cpu": [1.5, 2.5]}, "checks": {"as fast as hoped": False}}
"""


@pytest.fixture(scope="module")
def harness():
    spec = importlib.util.spec_from_file_location("benchmarks_run", REPO / "benchmarks" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def bench_dir(tmp_path):
    folder = tmp_path / "benches"
    folder.mkdir()
    for name, text in (("ok", FAKE_OK), ("fail", FAKE_FAIL), ("notdict", FAKE_NOT_A_DICT), ("gpu", FAKE_GPU)):
        (folder / f"bench_{name}.py").write_text(text)
    return folder


def test_summarize_replaces_lists_of_numbers_by_median_and_spread(harness):
    out = harness.summarize(
        {"a": [3, 1, 2], "even": [10, 1, 3, 2], "b": [True, False], "c": "text", "d": {"e": [1.5]}, "f": [], "g": 4}
    )
    assert out["a"] == {"median": 2, "min": 1, "max": 3, "n": 3}
    assert out["even"] == {"median": 2.5, "min": 1, "max": 10, "n": 4}
    assert out["d"]["e"] == {"median": 1.5, "min": 1.5, "max": 1.5, "n": 1}
    assert out["b"] == [True, False]  # bools are verdicts, not samples
    assert (out["c"], out["f"], out["g"]) == ("text", [], 4)


def test_discover_puts_the_known_benchmarks_first(harness, tmp_path):
    for name in ("zeta", "trainer", "alpha", "prime"):
        (tmp_path / f"bench_{name}.py").write_text("def run(quick):\n    return {}\n")
    (tmp_path / "helpers.py").write_text("")
    assert harness.discover(tmp_path) == ["trainer", "prime", "alpha", "zeta"]
    assert harness.discover() == [
        "trainer", "grading", "labeler", "implicit_prm", "prime", "prm_reward", "prm_grpo", "import",
    ]  # fmt: skip


def test_only_runs_the_selected_benchmark_and_writes_page_and_json(harness, bench_dir, tmp_path):
    page_path = tmp_path / "out" / "RESULTS.md"
    page_path.parent.mkdir()
    assert harness.main(["--quick", "--only", "ok", "--bench-dir", str(bench_dir), "--output", str(page_path)]) == 0
    page = page_path.read_text()
    assert "| ok | ours / baseline | 1 | 0.5 - 2 | 3 |" in page
    assert "- ok: fast enough: **pass**" in page
    assert "| seconds_per_item | 0.2 | 0.1 - 0.3 | 3 |" in page
    assert "| nested a | 6 | 4 - 8 | 2 |" in page and "| nested count | 7 | | 1 |" in page
    assert "| same | True | | - |" in page
    assert "Settings: size: 3." in page and "A fake benchmark." in page and "fake notes" in page
    assert "## fail" not in page and "## gpu" not in page
    assert "`python benchmarks/run.py --quick`" in page
    record = json.loads((page_path.parent / "results.json").read_text())
    assert record["quick"] is True and record["device"] == "cpu" and list(record["results"]) == ["ok"]
    assert record["results"]["ok"]["ratios"]["ours / baseline"] == {"median": 1.0, "min": 0.5, "max": 2.0, "n": 3}
    assert record["machine"]["trl-erprm"] != "not installed"


def test_a_failing_benchmark_is_reported_and_the_others_still_run(harness, bench_dir, tmp_path):
    page_path = tmp_path / "RESULTS.md"
    code = harness.main(["--only", "fail,ok,notdict", "--bench-dir", str(bench_dir), "--output", str(page_path)])
    assert code == 1
    page = page_path.read_text()
    fail = page[page.index("## fail") : page.index("## ok")]
    assert "Failed:" in fail and "ValueError: broken on purpose" in fail
    assert "TypeError: run() must return a dict, got list" in page[page.index("## notdict") :]
    assert "| ok | ours / baseline | 1 | 0.5 - 2 | 3 |" in page  # the benchmark after the failure ran
    assert "Settings: size: 9." in page  # not quick
    record = json.loads((tmp_path / "results.json").read_text())
    assert "broken on purpose" in record["results"]["fail"]["error"]


def test_unknown_benchmark_is_a_usage_error(harness, bench_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        harness.main(["--only", "ok,nope", "--bench-dir", str(bench_dir), "--output", str(tmp_path / "R.md")])
    assert exit_info.value.code == 2
    assert "nope" in capsys.readouterr().err
    assert not (tmp_path / "R.md").exists()


def test_device_cuda_writes_separate_files_and_skips_cpu_only_benchmarks(harness, bench_dir, tmp_path):
    page_path = tmp_path / "RESULTS_cuda.md"
    code = harness.main(
        ["--device", "cuda", "--only", "ok,gpu", "--bench-dir", str(bench_dir), "--output", str(page_path)]
    )
    assert code == 0  # a skipped benchmark is not a failure
    page = page_path.read_text()
    assert page.startswith("# Benchmark results (CUDA)")
    assert "| device_seen | cuda | | - |" in page
    assert "- gpu: as fast as hoped: **FAIL**" in page
    assert "Skipped: runs on cpu only." in page[page.index("## ok") :]
    record = json.loads((tmp_path / "results_cuda.json").read_text())
    assert record["device"] == "cuda" and "gpu" in record["machine"]
    assert not (tmp_path / "results.json").exists()


def test_render_lists_ratios_of_every_benchmark_first(harness):
    results = {
        "one": {"ratios": {"x / y": {"median": 1.25, "min": 1.0, "max": 2.0, "n": 5}}, "seconds": 1.0},
        "two": {"error": "Traceback: boom", "seconds": 0.0},
        "three": {"ratios": {"p / q": 0.5}, "value": 3, "seconds": 2.0},
    }
    page = harness.render(results, {"date": "2026-01-01"}, quick=False)
    top = page[: page.index("## Machine")]
    assert "| one | x / y | 1.25 | 1 - 2 | 5 |" in top and "| three | p / q | 0.5 | | 1 |" in top
    assert "Traceback: boom" in page[page.index("## two") :]
    assert "`python benchmarks/run.py`" in page


def test_trainer_benchmark_takes_ratios_per_round_then_the_median():
    spec = importlib.util.spec_from_file_location("bench_trainer", REPO / "benchmarks" / "bench_trainer.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)  # stdlib imports only: no trainer runs here
    base, soft = "trl113/prm_hard", "trl113/erprm_soft"
    memory = {"peak_rss_mb": 500, "train_peak_mb": 100}
    results = {
        base: {"tokens": [100] * 4, "wall": [1, 1, 2, 2], "cpu": [1, 1, 1, 1], **memory},
        soft: {
            "tokens": [100] * 4,
            "wall": [9, 2, 4, 1],
            "cpu": [9, 1, 2, 1],
            "peak_rss_mb": 510,
            "train_peak_mb": 110,
        },
    }
    samples, ratios = bench._per_repeat(results, warmup=1)  # the first round is warm-up
    # rounds 1-3: base 100, 50, 50 tokens/s; soft 50, 25, 100 -> per-round ratios 0.5, 0.5, 2 -> median 0.5
    # (the ratio of the medians, 50 / 50, would be 1)
    assert ratios[f"{soft} / {base} tokens/s"] == 0.5
    # CPU time: base 100, 100, 100; soft 100, 50, 100 -> ratios 1, 0.5, 1 -> median 1
    assert ratios[f"{soft} / {base} tokens/CPU-s"] == 1.0
    assert ratios[f"{soft} / {base} training peak memory"] == pytest.approx(1.1)
    assert samples[soft] == {"tokens_per_s": 50.0, "tokens_per_cpu_s": 100.0, "peak_rss_mb": 510, "train_peak_mb": 110}
    assert samples[base]["tokens_per_s"] == 50.0
    assert not any(key.startswith(f"{base} /") for key in ratios)


@pytest.fixture(scope="module")
def bench_labeler():
    spec = importlib.util.spec_from_file_location("bench_labeler", REPO / "benchmarks" / "bench_labeler.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)  # stdlib imports only: no model is built here
    return bench


def test_labeler_benchmark_device_cuda_is_planned_and_skips_without_a_gpu(bench_labeler):
    """`--device cuda` is ready for a GPU session: its plan (a larger generator in bfloat16, more rows) and, on a
    machine without a GPU, a clean skip before anything is built."""
    import torch

    gpu, cpu = bench_labeler.plan(quick=True, device="cuda"), bench_labeler.plan(quick=True, device="cpu")
    assert gpu["dtype"] == "bfloat16" and gpu["rows"] > cpu["rows"] and gpu["model"]["hidden_size"] == 1024
    assert gpu["max_new_tokens"] == cpu["max_new_tokens"] == 256 and gpu["num_rollouts"] == [8, 16]
    assert bench_labeler.plan(quick=False, device="cpu")["repeats"] > cpu["repeats"]
    with pytest.raises(ValueError, match="device must be one of"):
        bench_labeler.plan(device="tpu")
    if not torch.cuda.is_available():
        assert bench_labeler.run(quick=True, device="cuda") == {
            "skipped": "--device cuda needs a CUDA GPU; none is visible"
        }
    assert "cuda" in bench_labeler.DEVICES


def test_labeler_benchmark_rows_have_the_realistic_shapes(bench_labeler, tokenizer):
    rows = bench_labeler.realistic_rows(tokenizer, 5)
    assert [len(r["completions"]) for r in rows] == [6, 7, 8, 9, 10]
    for row in rows:
        assert 140 <= len(tokenizer(row["prompt"])["input_ids"]) <= 160
        assert all(30 <= len(tokenizer(step)["input_ids"]) <= 50 for step in row["completions"])
    assert len({r["prompt"] for r in rows}) == 5  # distinct problems: no prefix repeats across rows


def test_labeler_benchmark_plain_generate_reproduces_the_backends_sequences(bench_labeler, causal_lm_path, tokenizer):
    """The labeler-vs-generate baseline does the same work as the labeler: plain `model.generate`, steered by the
    benchmark's logits processor, produces exactly the backend's sampled sequences (EOS included, none cut short),
    across chunks of different prompt lengths."""
    from trl_erprm.labeling.backends import Sampling, TransformersBackend

    backend = TransformersBackend(causal_lm_path, tokenizer=tokenizer, batch_size=4, device="cpu")
    prompts = [tokenizer(p)["input_ids"] for p in ("Ann has 3 apples.", "What is 7 * 6? Think.", "Q")]
    completions = backend.generate_completions(prompts, 3, Sampling(1.0, 1.0, 64), seeds=[1, 2, 3])
    sequences = [(p, c.token_ids) for p, row in zip(prompts, completions) for c in row]
    reasons = {c.finish_reason for row in completions for c in row}
    assert reasons == {"eos", "length"}, reasons  # fixed seeds: both kinds of ending occur
    forced = bench_labeler._forced_generate(backend.model, sequences, {"generation_batch_size": 4})
    assert forced == [list(ids) for _, ids in sequences]


@pytest.mark.slow
def test_labeler_benchmark_reuse_on_the_quickstart_runs_on_its_policy(bench_labeler, tmp_path, monkeypatch):
    """The reuse figure is taken on the quickstart's own policy and task (the `--fast` policy when the default one is
    not cached): it follows the quickstart's modules, and identical step prefixes are counted once."""
    monkeypatch.setenv("TRL_ERPRM_CACHE", str(tmp_path))  # an empty cache: the `--fast` policy is trained here
    out = {"notes": []}
    bench_labeler._reuse_on_quickstart(out, quick=True)
    for n in (4, 16):
        prefixes = out[f"quickstart {n} solutions per problem: step prefixes"]
        reused = out[f"quickstart {n} solutions per problem: share of step prefixes reused"]
        assert prefixes > 16 and 0.0 < reused < 1.0, (n, prefixes, reused)
    assert "training steps" in out["notes"][0]
