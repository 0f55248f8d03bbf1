"""`trl-erprm raft`: RAFT rounds (sample N, score, select, fine-tune with TRL's SFTTrainer, evaluate), resumable.

Layout of `output_dir` (a [`~trl_erprm.jobs.JobStore`]: one record per finished stage in `parts/`):

```
output_dir/
  manifest.json, parts/       the run's identity and its finished stages (round, stage, summary)
  round-0/eval/               accuracy of the initial policy on the held-out problems (a job store per stage)
  round-k/samples/            N completions per training problem
  round-k/scores/             their scores (and grades)
  round-k/selection.json      the kept samples per problem
  round-k/sft/, round-k/policy/   the fine-tuning run (its checkpoints) and the round's policy
  round-k/eval/               held-out accuracy of the round's policy
  results.json, table.md, accuracy.png
```

A stage whose record exists is never run again; a stage killed half-way resumes where it stopped (its problems already
written are kept, the fine-tuning resumes from its last checkpoint). Under `accelerate launch`, sampling, scoring and
evaluation are sharded over the processes (chunk `j` of problems goes to process `j % num_processes`) and the
fine-tuning runs on all of them.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..jobs import JobStore, content_hash, folder_errors, last_complete_checkpoint, make_manifest, write_json_atomic
from .raft_config import RAFTConfig
from .selection import SCORINGS, keepable, majority_scores, outcome_scores, select_samples


logger = logging.getLogger(__name__)

RAFT_FORMAT = "trl-erprm-raft/1"
#: The stages of a round, in order; round 0 only evaluates the initial policy.
STAGES = ("sample", "score", "select", "train", "eval")
REPORTS = ("results.json", "table.md", "accuracy.png")


# ---------------------------------------------------------------------------------------------------------------------
# Problems
# ---------------------------------------------------------------------------------------------------------------------


def _rows(name: str, config_name: str | None, split: str, limit: int | None, c: RAFTConfig) -> list[dict]:
    from ..data import load_any_dataset
    from ..evaluation.bon import gold_answer_text
    from ..prm_reward import prompt_text

    dataset = load_any_dataset(name, config_name, split)
    missing = [col for col in (c.prompt_column, c.gold_column) if col not in dataset.column_names]
    if missing:
        raise ValueError(
            f"Dataset {name!r} ({split}) has no column(s) {missing}; its columns are {dataset.column_names}. Pass the "
            "right --prompt_column / --gold_column."
        )
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    problems = []
    for i, row in enumerate(dataset):
        prompt = row[c.prompt_column]
        if isinstance(prompt, str):
            if not prompt.strip():
                raise ValueError(f"Row {i} of {name!r}: the prompt column {c.prompt_column!r} is empty.")
            question, prompt = prompt, prompt + c.prompt_suffix
            if c.use_chat_template:
                prompt = [{"role": "user", "content": prompt}]
        else:
            question = prompt_text(prompt, i)
        problems.append({"prompt": prompt, "question": question, "gold": gold_answer_text(row[c.gold_column])})
    return problems


def load_problems(config: RAFTConfig) -> tuple[list[dict], list[dict]]:
    """The training and held-out problems of a configuration.

    Each problem is `{"prompt": str or list of messages, "question": the text a PRM reads, "gold": str or None}`.
    Without `eval_dataset_split`, `eval_fraction` of the training problems (a seeded shuffle) are held out.

    Args:
        config ([`RAFTConfig`]):
            The configuration.

    Returns:
        `tuple[list[dict], list[dict]]`: The training and the held-out problems.
    """
    if config.dataset_name is None:
        raise ValueError("RAFT needs problems: set --dataset_name (or pass train_problems to run_raft).")
    train = _rows(config.dataset_name, config.dataset_config, config.dataset_split, config.max_problems, config)
    if config.eval_dataset_split is not None:
        name = config.eval_dataset_name or config.dataset_name
        config_name = config.dataset_config if config.eval_dataset_name is None else None
        held_out = _rows(name, config_name, config.eval_dataset_split, config.max_eval_problems, config)
    else:
        order = list(range(len(train)))
        random.Random(config.seed).shuffle(order)
        cut = max(1, round(config.eval_fraction * len(train)))
        held = set(order[:cut])
        held_out = [p for i, p in enumerate(train) if i in held][: config.max_eval_problems]
        train = [p for i, p in enumerate(train) if i not in held]
    if not train or not held_out:
        raise ValueError(f"RAFT needs training and held-out problems; got {len(train)} and {len(held_out)}.")
    return train, held_out


def _check_problems(problems: Sequence[dict], what: str) -> list[dict]:
    from ..prm_reward import prompt_text

    out = []
    for i, p in enumerate(problems):
        if not isinstance(p, dict) or "prompt" not in p:
            raise ValueError(f"{what} problem {i}: pass a dict with 'prompt' (text or messages) and 'gold'.")
        out.append({"prompt": p["prompt"], "question": p.get("question") or prompt_text(p["prompt"], i), **p})
        out[-1].setdefault("gold", None)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------------------------------


class _Run:
    """The state of one RAFT run: its store, the current policy, the scorer and the grader."""

    def __init__(self, config, policy, tokenizer, train, held_out, scorer, grader, on_stage_end, samples=None):
        from accelerate import PartialState

        from ..models import load_tokenizer

        _ = config.device  # let the config set up accelerate's state (CPU with use_cpu) before we read it
        self.config, self.state = config, PartialState()
        self.policy = policy
        self.tokenizer = tokenizer or load_tokenizer(
            policy if isinstance(policy, (str, os.PathLike)) else policy.name_or_path,
            trust_remote_code=config.trust_remote_code,
        )
        self.train, self.held_out = train, held_out
        self.scorer, self.grader = scorer, grader
        self.owned: list = []
        self.on_stage_end = on_stage_end
        self.root = Path(config.output_dir)
        self.samples = samples  # round 1's completions, sampled beforehand (or None)
        self.problems_hash = content_hash([train, held_out] + ([samples] if samples is not None else []))
        self.run_id = content_hash([config.job(), train, held_out] + ([samples] if samples is not None else []))[:16]

    # -- the store of finished stages -------------------------------------------------------------------------------

    def open(self) -> dict[int, dict]:
        manifest = make_manifest(RAFT_FORMAT, self.config.job(), len(self.train), self.problems_hash)
        rounds = tuple(f"round-{k}" for k in range(self.config.num_rounds + 1))
        self.store = JobStore(
            self.root, manifest, rank=self.state.process_index, outputs=REPORTS + rounds,
            overwrite=self.config.overwrite, unit="stages",
        )  # fmt: skip
        if self.state.is_main_process:
            self.store.open()
        self.state.wait_for_everyone()
        if not self.state.is_main_process:
            self.store.open()
        return {r["index"]: r for r in self.store.read_results().values()}

    def finish(self, k: int, stage: str, record: dict) -> dict:
        record = {"index": k * len(STAGES) + STAGES.index(stage), "round": k, "stage": stage, **record}
        if self.state.is_main_process:
            with self.store.writer() as writer:
                writer.write([record])
        self.state.wait_for_everyone()
        if self.on_stage_end is not None:
            self.on_stage_end(k, stage, record)
        return record

    # -- sharded row jobs --------------------------------------------------------------------------------------------

    def sharded(self, folder: Path, kind: str, num_rows: int, work: Callable[[list[int]], list[dict]], desc: str):
        """Run `work` on chunks of rows `0..num_rows-1`, sharded over processes, resumable; all records by index."""
        from tqdm.auto import tqdm

        manifest = make_manifest(f"trl-erprm-raft-{kind}/1", {"run": self.run_id}, num_rows, self.run_id)
        # A folder of another run was left by a run this one replaces (the run's identity is checked above).
        store = JobStore(folder, manifest, rank=self.state.process_index, overwrite=True, unit="problems")
        try:
            if self.state.is_main_process:
                store.open()
            self.state.wait_for_everyone()
            done = store.open() if not self.state.is_main_process else store.read_results()
            size = self.config.chunk_size
            chunks = [list(range(s, min(s + size, num_rows))) for s in range(0, num_rows, size)]
            mine = [c for j, c in enumerate(chunks) if j % self.state.num_processes == self.state.process_index]
            todo = [[i for i in c if i not in done] for c in mine]
            total = sum(len(c) for c in mine)
            show = self.state.is_local_main_process
            with (
                store.writer() as writer,
                tqdm(
                    total=total, initial=total - sum(len(c) for c in todo), desc=desc, unit="problem", disable=not show
                ) as bar,
            ):
                for chunk in todo:
                    if chunk:
                        writer.write(work(chunk))
                        bar.update(len(chunk))
            delay = 0.2
            while len(results := store.read_results()) < num_rows:  # the other processes' shards
                time.sleep(delay)
                delay = min(2 * delay, 5.0)
            self.state.wait_for_everyone()
            return results
        finally:
            store.close()

    # -- generation --------------------------------------------------------------------------------------------------

    def prompt_ids(self, problem: dict) -> list[int]:
        prompt = problem["prompt"]
        if isinstance(prompt, str):
            return self.tokenizer(prompt)["input_ids"]
        text = self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def generator(self):
        from ..labeling.backends import TransformersBackend, VLLMBackend, VLLMServerBackend

        c = self.config
        if c.generation_backend == "vllm_server":
            if getattr(self, "server", None) is None:
                self.server = VLLMServerBackend(c.vllm_server_url, tokenizer=self.tokenizer)
            return self.server
        if c.generation_backend == "vllm":
            return VLLMBackend(
                self.policy_path(), gpu_memory_utilization=c.vllm_gpu_memory_utilization,
                max_model_len=c.vllm_max_model_len, trust_remote_code=c.trust_remote_code,
            )  # fmt: skip
        return TransformersBackend(
            self.policy_model(), self.tokenizer, c.generation_batch_size, device=self.state.device
        )

    def policy_model(self):
        """The current policy as a model: the object given, or the folder of the last round loaded (once)."""
        if not isinstance(self.policy, (str, os.PathLike)):
            return self.policy
        from ..models import load_model

        if getattr(self, "_loaded", (None, None))[0] != str(self.policy):
            dtype = (self.config.model_init_kwargs or {}).get("dtype", "auto")
            model = load_model(
                str(self.policy), "causal_lm", dtype=dtype, trust_remote_code=self.config.trust_remote_code
            )
            self._loaded = (str(self.policy), model)
        return self._loaded[1]

    def policy_path(self) -> str:
        if isinstance(self.policy, (str, os.PathLike)):
            return str(self.policy)
        path = self.root / "round-0" / "policy"  # an in-memory initial policy, saved for an engine that loads paths
        if self.state.is_main_process and not (path / "config.json").is_file():
            self.policy.save_pretrained(path)
            self.tokenizer.save_pretrained(path)
        self.state.wait_for_everyone()
        return str(path)

    def release(self, generator) -> None:
        if generator is not getattr(self, "server", None):
            generator.close()
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def generate(self, problems: list[dict], indices: list[int], n: int, temperature: float, max_tokens: int, salt):
        from ..labeling.backends import Sampling, derive_seed

        sampling = Sampling(temperature=temperature, top_p=self.config.top_p, max_tokens=max_tokens)
        seeds = [derive_seed(self.config.seed, salt, i) for i in indices]
        return self._generator.generate_completions(
            [self.prompt_ids(problems[i]) for i in indices], n, sampling, seeds
        )

    # -- the stages ---------------------------------------------------------------------------------------------------

    def sample(self, k: int) -> dict:
        c = self.config
        if k == 1 and self.samples is not None:  # given: recorded as they are, nothing is generated

            def given(chunk):
                return [{"index": i, "completions": list(self.samples[i]), "finish": None} for i in chunk]

            self.sharded(self.root / "round-1" / "samples", "samples", len(self.train), given, "RAFT round 1: samples")
            return {"samples": sum(len(texts) for texts in self.samples), "truncated_fraction": None, "given": True}
        self._generator = self.generator()
        try:

            def work(chunk):
                outs = self.generate(self.train, chunk, c.num_samples, c.temperature, c.max_new_tokens, f"sample-{k}")
                return [
                    {"index": i, "completions": [s.text for s in out], "finish": [s.finish_reason for s in out]}
                    for i, out in zip(chunk, outs)
                ]

            records = self.sharded(
                self.root / f"round-{k}" / "samples", "samples", len(self.train), work, f"RAFT round {k}: sampling"
            )
        finally:
            self.release(self._generator)
        finish = [f for r in records.values() for f in r["finish"]]
        return {"samples": len(finish), "truncated_fraction": finish.count("length") / max(len(finish), 1)}

    def read(self, k: int, kind: str) -> dict[int, dict]:
        from ..jobs import read_results

        return read_results(self.root / f"round-{k}" / kind)

    def score(self, k: int) -> dict:
        from ..evaluation.metrics import graded_problems, normalize_answer
        from ..labeling.answers import extract_final_answer

        samples = self.read(k, "samples")
        scorer = self.sample_scorer()

        def work(chunk):
            completions = [samples[i]["completions"] for i in chunk]
            flat = [text for texts in completions for text in texts]
            golds = [self.train[i]["gold"] for i in chunk for _ in samples[i]["completions"]]
            # Every sample is graded: a missing gold is that problem's own "gold_unparsable", never its chunk's.
            statuses = [r.status for r in self.grading().grade(flat, golds)]
            if scorer == "outcome":
                scores = outcome_scores(statuses)
            elif scorer == "majority":
                scores = []
                for texts in completions:
                    scores += majority_scores([normalize_answer(extract_final_answer(t)) for t in texts])
            else:
                prompts = [self.train[i]["question"] for i in chunk for _ in samples[i]["completions"]]
                scores = [math.nan if s is None else float(s) for s in scorer(prompts, flat)]
            records, start = [], 0
            for i, texts in zip(chunk, completions):
                end = start + len(texts)
                records.append({"index": i, "scores": scores[start:end], "statuses": statuses[start:end]})
                start = end
            return records

        records = self.sharded(
            self.root / f"round-{k}" / "scores", "scores", len(self.train), work, f"RAFT round {k}: scoring"
        )
        # Bon's rule (graded_problems): a problem with a grading timeout or an unparsable gold is left out, counted.
        graded = [r["statuses"] for r in records.values() if None not in r["statuses"]]
        kept, left_out = graded_problems(graded)
        correct = [[s == "correct" for s in graded[i]] for i in kept]
        return {
            "sample_accuracy": _mean([c for problem in correct for c in problem]) if correct else None,
            "pass_at_n": _mean([any(problem) for problem in correct]) if correct else None,
            **left_out,
            "grading_timeouts": sum(s == "timeout" for statuses in graded for s in statuses),
        }

    def select(self, k: int) -> dict:
        from ..evaluation.metrics import UNKNOWN_GRADES

        c = self.config
        scores = self.read(k, "scores")
        scorer = c.scoring if self.scorer is None else self.scorer
        scoring = scorer if isinstance(scorer, str) and scorer in SCORINGS else "prm"  # a PRM path or object: "prm"
        kept = {}
        for i in range(len(self.train)):
            allowed = keepable(scoring, scores[i]["scores"])  # outcome: correct only; majority: the majority answer
            if c.require_correct:
                allowed = [a and s == "correct" for a, s in zip(allowed, scores[i]["statuses"])]
            kept[i] = select_samples(scores[i]["scores"], c.selection, c.top_k, c.score_threshold, allowed)
        chosen = [(i, j) for i, js in kept.items() for j in js]
        statuses = [scores[i]["statuses"][j] for i, j in chosen]
        summary = {
            "selected": len(chosen),
            "problems_kept": sum(bool(js) for js in kept.values()),
            "problems_with_nothing_kept": sum(not js for js in kept.values()),
            "mean_selected_score": _mean([scores[i]["scores"][j] for i, j in chosen]),
            # A selected sample whose grading timed out is no wrong answer: left out, as the statistics of `score`.
            "selected_accuracy": _mean([s == "correct" for s in statuses if s not in UNKNOWN_GRADES])
            if None not in statuses
            else None,
        }
        if self.state.is_main_process:
            with folder_errors(self.root, "write the selection"):
                write_json_atomic(self.root / f"round-{k}" / "selection.json", {"kept": kept, **summary})
        if not chosen:
            summary["stopped"] = (
                f"Round {k} kept no sample: scoring={scoring!r}, selection={c.selection!r}"
                + (f", score_threshold={c.score_threshold}" if c.selection == "threshold" else "")
                + (", require_correct=True" if c.require_correct else "")
                + f" found nothing among {len(self.train)} problems x {c.num_samples} samples ('outcome' keeps correct "
                "samples only, 'majority' those giving the majority answer only). RAFT stops here rather than "
                "fine-tune on nothing: lower the threshold, drop require_correct, or sample more (num_samples, "
                "temperature)."
            )
        return summary

    def sft_rows(self, k: int) -> list[dict]:
        samples, selection = (
            self.read(k, "samples"),
            json.loads((self.root / f"round-{k}" / "selection.json").read_text()),
        )
        rows = []
        for i, js in sorted(((int(i), js) for i, js in selection["kept"].items())):
            prompt = self.train[i]["prompt"]
            for j in js:
                text = samples[i]["completions"][j]
                completion = text if isinstance(prompt, str) else [{"role": "assistant", "content": text}]
                rows.append({"prompt": prompt, "completion": completion})
        return rows

    def train_policy(self, k: int) -> dict:
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        c = self.config
        folder = self.root / f"round-{k}"
        values = {f.name: getattr(c, f.name) for f in dataclasses.fields(SFTConfig) if f.init}
        args = SFTConfig(**{**values, "output_dir": str(folder / "sft")})
        rows = self.sft_rows(k)
        trainer = SFTTrainer(
            model=self.policy_model(),
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=self.tokenizer,
        )
        last = last_complete_checkpoint(args.output_dir)  # a checkpoint cut short by a kill is skipped
        output = trainer.train(resume_from_checkpoint=last)
        trainer.save_model(str(folder / "policy"))
        if self.state.is_main_process:
            self.tokenizer.save_pretrained(folder / "policy")
        self.state.wait_for_everyone()
        if c.generation_backend == "vllm_server":
            self.push_to_server(trainer)
        del trainer
        self._loaded = (None, None)
        self.policy = str(folder / "policy")  # the saved weights: the same policy whether or not the run resumed
        return {"train_loss": output.training_loss, "train_rows": len(rows), "resumed_from": last}

    def push_to_server(self, trainer) -> None:
        """Load the round's weights into the `trl vllm-serve` server (TRL's weight sync; needs CUDA)."""
        if self.state.is_main_process:
            client = self.generator().client
            if not getattr(self, "communicator", False):
                client.init_communicator(device=self.state.device)
                self.communicator = True
            client.update_model_params(trainer.accelerator.unwrap_model(trainer.model))
            client.reset_prefix_cache()
        self.state.wait_for_everyone()

    def evaluate(self, k: int) -> dict:
        c = self.config
        self._generator = self.generator()
        try:

            def work(chunk):
                outs = self.generate(
                    self.held_out, chunk, 1, c.eval_temperature, c.eval_max_new_tokens or c.max_new_tokens, "eval"
                )
                texts = [out[0].text for out in outs]
                golds = [self.held_out[i]["gold"] for i in chunk]
                results = self.grading().grade(texts, golds)
                return [{"index": i, "completion": t, "status": r.status} for i, t, r in zip(chunk, texts, results)]

            records = self.sharded(
                self.root / f"round-{k}" / "eval", "eval", len(self.held_out), work, f"RAFT round {k}: evaluation"
            )
        finally:
            self.release(self._generator)
        statuses = [r["status"] for r in records.values()]
        graded = [s for s in statuses if s in ("correct", "incorrect", "no_answer")]
        return {
            "accuracy": graded.count("correct") / len(graded) if graded else None,
            "eval_problems": len(statuses),
            "eval_not_graded": len(statuses) - len(graded),
        }

    # -- scorer and grader -------------------------------------------------------------------------------------------

    def grading(self):
        if self.grader is None:
            from ..labeling.grading import MathVerifyGrader

            self.grader = MathVerifyGrader(self.config.grading_num_workers, self.config.grading_timeout)
            self.owned.append(self.grader)
        return self.grader

    def sample_scorer(self):
        """`"outcome"`, `"majority"`, or a callable `(prompts, completions) -> list[float]` (a PRMReward)."""
        from ..prm_reward import PRMReward

        c = self.config
        scorer = self.scorer if self.scorer is not None else c.scoring
        if scorer in ("outcome", "majority"):
            return scorer
        if scorer == "prm":
            if c.prm_model is None:
                raise ValueError("scoring='prm' needs --prm_model (or a scorer given to run_raft).")
            scorer = c.prm_model
        if not isinstance(scorer, PRMReward) and (isinstance(scorer, (str, os.PathLike)) or hasattr(scorer, "score")):
            kwargs = {}
            if isinstance(scorer, (str, os.PathLike)):
                kwargs = {
                    "prm_type": c.prm_type, "step_tag": c.step_tag, "good_token": c.good_token, "bad_token": c.bad_token,
                    "ref_model": c.ref_model, "beta": c.prm_beta, "implicit_value": c.implicit_value,
                    "batch_size": c.prm_batch_size, "max_length": c.prm_max_length, "dtype": c.prm_dtype,
                }  # fmt: skip
            scorer = PRMReward(
                scorer, aggregation=c.aggregation, step_separator=c.prm_step_separator, split_method=c.split_method,
                empty_value=c.empty_step_value, **kwargs,
            )  # fmt: skip
        if not callable(scorer):
            raise TypeError(
                f"scorer must be 'prm', 'outcome', 'majority', a PRM path, a scorer or a PRMReward, got {scorer!r}."
            )
        self.scorer = scorer
        return scorer

    def close(self) -> None:
        for owner in self.owned:
            owner.close()
        if getattr(self, "server", None) is not None:
            self.server.close()
        self.store.close()


def _check_samples(samples: Sequence[Sequence[str]], num_problems: int, num_samples: int) -> list[list[str]]:
    """Round 1's given completions as lists of texts, one list of `num_samples` per training problem."""
    if isinstance(samples, str) or len(samples) != num_problems:
        raise ValueError(
            f"samples must hold one list of completions per training problem ({num_problems}), got "
            f"{'a str' if isinstance(samples, str) else len(samples)}."
        )
    out = []
    for i, texts in enumerate(samples):
        if isinstance(texts, str) or len(texts) != num_samples or not all(isinstance(t, str) for t in texts):
            raise ValueError(
                f"samples[{i}] must be a list of num_samples={num_samples} completion texts, got {texts!r:.80}."
            )
        out.append(list(texts))
    return out


def _mean(values: Sequence[float]) -> float | None:
    values = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(values) / len(values) if values else None


# ---------------------------------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------------------------------


def run_raft(
    config: RAFTConfig,
    policy=None,
    tokenizer=None,
    train_problems: Sequence[dict] | None = None,
    eval_problems: Sequence[dict] | None = None,
    scorer=None,
    grader=None,
    on_stage_end: Callable[[int, str, dict], None] | None = None,
    samples: Sequence[Sequence[str]] | None = None,
    start_eval: dict | None = None,
) -> dict:
    """Run RAFT end to end, resuming what `config.output_dir` already holds, and write the reports.

    Args:
        config ([`RAFTConfig`]):
            The configuration.
        policy (`str` or [`~transformers.PreTrainedModel`], *optional*):
            The initial policy; `config.model_name_or_path` when `None`. A model object is fine-tuned in place in
            round 1; later rounds load the policy each round saved.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`], *optional*):
            The policy's tokenizer (with a chat template for conversational problems); loaded with the policy when
            `None`.
        train_problems (`Sequence[dict]`, *optional*):
            Problems `{"prompt": text or messages, "gold": str, "question": text the PRM reads (optional)}`; loaded
            from the configuration's dataset when `None`.
        eval_problems (`Sequence[dict]`, *optional*):
            Held-out problems, same layout; needed with `train_problems`.
        scorer (*optional*):
            How samples are scored, instead of `config.scoring`: `"prm"`, `"outcome"`, `"majority"`, a PRM path, an
            evaluation scorer (`score(prompts, steps)`, read with the configuration's aggregation) or a
            [`~trl_erprm.PRMReward`] (any callable `(prompts, completions) -> list[float]` works).
        grader (*optional*):
            A grader with `grade(completions, golds)` (a [`~trl_erprm.labeling.grading.MathVerifyGrader`] when
            `None`).
        on_stage_end (`Callable[[int, str, dict], None]`, *optional*):
            Called on every process after each finished stage with the round, the stage name and its record.
        samples (`Sequence[Sequence[str]]`, *optional*):
            Round 1's completions, sampled beforehand: `config.num_samples` texts per training problem, in the order
            of the problems. Round 1 scores and selects them instead of sampling, so several runs that differ only in
            their scorer (RAFT with several PRMs, outcome or majority selection) share one sampling pass. They are
            part of the run's identity; later rounds sample from the round's policy as usual.
        start_eval (`dict`, *optional*):
            Round 0's evaluation of the SAME initial policy on the same held-out problems with the same settings and
            seed, by another run (its `report["rounds"][0]`, with `accuracy` and `eval_problems`): recorded instead of
            evaluating the initial policy again (runs that differ only in their scorer measure the same start).

    Returns:
        `dict`: The report written to `results.json`: `rounds` (one summary per round: `accuracy`, `selected`,
        `problems_kept`, `problems_with_nothing_kept`, `mean_selected_score`, `sample_accuracy`, `pass_at_n`,
        `selected_accuracy`, `train_loss`, ...), `accuracy` (held-out accuracy per round, round 0 the initial policy), `policy` (folder of the last
        policy), `stopped` (the message when a round kept nothing, else `None`), `table` and `files`.
    """
    if (train_problems is None) != (eval_problems is None):
        raise ValueError("Pass both train_problems and eval_problems, or neither (they are loaded from the config).")
    if train_problems is None:
        train, held_out = load_problems(config)
    else:
        train, held_out = _check_problems(train_problems, "training"), _check_problems(eval_problems, "held-out")
        if not train or not held_out:
            raise ValueError(f"RAFT needs training and held-out problems; got {len(train)} and {len(held_out)}.")
    policy = policy if policy is not None else config.model_name_or_path
    if policy is None:
        raise ValueError("RAFT needs a policy: set --model_name_or_path (or pass policy to run_raft).")
    if samples is not None:
        samples = _check_samples(samples, len(train), config.num_samples)
    if start_eval is not None and (
        not isinstance(start_eval, dict)
        or "accuracy" not in start_eval
        or start_eval.get("eval_problems") != len(held_out)
    ):
        raise ValueError(
            f"start_eval must be round 0 of a run on the same {len(held_out)} held-out problems (a dict with 'accuracy' "
            f"and 'eval_problems'), got {start_eval!r:.120}."
        )
    run = _Run(config, policy, tokenizer, train, held_out, scorer, grader, on_stage_end, samples)
    done = run.open()
    rounds, stopped = [], None
    try:
        for k in range(config.num_rounds + 1):
            summary = {"round": k}
            for stage in STAGES if k else ("eval",):
                index = k * len(STAGES) + STAGES.index(stage)
                if index in done:
                    record = done[index]
                    if stage == "train":
                        run.policy = str(run.root / f"round-{k}" / "policy")
                else:
                    action = {
                        "sample": run.sample,
                        "score": run.score,
                        "select": run.select,
                        "train": run.train_policy,
                    }
                    if k == 0 and start_eval is not None:  # the initial policy, measured by another run
                        action["eval"] = lambda _: {**start_eval, "given": True}
                    record = run.finish(k, stage, action.get(stage, run.evaluate)(k))
                summary.update({key: v for key, v in record.items() if key not in ("index", "round", "stage")})
                if record.get("stopped"):
                    stopped = record["stopped"]
                    logger.warning(stopped)
                    break
            rounds.append(summary)
            if stopped:
                break
        return _report(run, rounds, stopped)
    finally:
        run.close()


def format_raft_table(rounds: list[dict]) -> str:
    """Markdown table of a RAFT run, one line per round.

    Args:
        rounds (`list[dict]`):
            The per-round summaries of the report.

    Returns:
        `str`: The table.
    """

    def pct(value):
        return "n/a" if value is None else f"{100 * value:.1f}"

    def num(value):
        return "n/a" if value is None else f"{value:.3g}"

    lines = [
        "| round | held-out accuracy (%) | sample accuracy (%) | pass@N (%) | kept samples | problems kept | "
        "mean kept score | kept accuracy (%) | SFT loss |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rounds:
        lines.append(
            f"| {r['round']} | {pct(r.get('accuracy'))} | {pct(r.get('sample_accuracy'))} | {pct(r.get('pass_at_n'))} "
            f"| {r.get('selected', '')} | {r.get('problems_kept', '')} | {num(r.get('mean_selected_score'))} | "
            f"{pct(r.get('selected_accuracy'))} | {num(r.get('train_loss'))} |"
        )
    return "\n".join(lines)


def _plot(rounds: list[dict], path: Path) -> str:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    points = [(r["round"], 100 * r["accuracy"]) for r in rounds if r.get("accuracy") is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label="held-out accuracy")
    kept = [(r["round"], 100 * r["selected_accuracy"]) for r in rounds if r.get("selected_accuracy") is not None]
    if kept:
        ax.plot([p[0] for p in kept], [p[1] for p in kept], marker="s", linestyle="--", label="kept samples correct")
    ax.set_xticks([r["round"] for r in rounds])
    ax.set_xlabel("RAFT round (0: initial policy)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("RAFT")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def _report(run: _Run, rounds: list[dict], stopped: str | None) -> dict:
    table = format_raft_table(rounds)
    out = run.root
    files = {"results": str(out / "results.json"), "table": str(out / "table.md")}
    report = {
        "rounds": rounds,
        "accuracy": [r.get("accuracy") for r in rounds],
        "policy": run.policy if isinstance(run.policy, str) else None,
        "stopped": stopped,
        "table": table,
        "arguments": run.config.job(),
        "files": files,
    }
    if run.state.is_main_process:
        with folder_errors(out, "write the reports"):
            if run.config.plot:
                files["plot"] = _plot(rounds, out / "accuracy.png")
            (out / "table.md").write_text(table + "\n")
            write_json_atomic(out / "results.json", report)
        print(table)
        if stopped:
            print(stopped)
    run.state.wait_for_everyone()
    return report


def raft_main(argv: list[str] | None = None) -> int:
    """Command-line entry point of `trl-erprm raft`.

    Args:
        argv (`list[str]`, *optional*):
            Arguments (defaults to `sys.argv[1:]`); a YAML file can be given with `--config`.

    Returns:
        `int`: 0, or 1 when a round kept no sample (the message says which and what to change).
    """
    from ..script_utils import check_launch, make_parser

    (config,) = make_parser((RAFTConfig,), prog="trl-erprm raft").parse_args_and_config(argv)
    check_launch(config)
    report = run_raft(config)
    return 1 if report["stopped"] else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(raft_main(sys.argv[1:]))
