"""A tiny policy for the synthetic arithmetic task, trained from scratch on the CPU in about a minute and a half.

[`train_policy`] trains a byte-level BPE tokenizer on the task's text and a small Qwen2 causal LM on chat-formatted
problem / demonstration pairs (loss on the assistant turn only), with a plain PyTorch loop on freshly generated
problems. The demonstrations are the gold solutions except for a designed misconception
([`~trl_erprm.quickstart.task.demonstration_steps`], probability `PolicyConfig.misconception` per multiplicative
step): the default policy masters single-digit arithmetic but solves "gets 3 times as many" additively about half of
the time, so it gets roughly 60% of the final answers right at temperature 1.0 and nearly all its errors are
`"wrong_operation"` steps that a process reward model can learn to see. The trained folder (safetensors +
tokenizer) is cached under a name derived from the settings, so a second call with the same settings reuses it.

The tokenizer follows Qwen2-Instruct: `<|im_end|>` is the EOS token (a sampled answer ends there, also for TRL
versions that stop on `tokenizer.eos_token_id` only) and `<|endoftext|>` pads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..models import load_model, load_tokenizer
from ..tiny import build_tiny_model, build_tokenizer
from .checker import check_solution
from .task import Problem, TaskConfig, demonstration_steps, generate_problems, task_corpus


#: Bump when the training procedure changes, so that cached policies trained the old way are not reused.
POLICY_FORMAT_VERSION = 2
POLICY_CONFIG_NAME = "policy_config.json"
EOS_TOKEN = "<|im_end|>"
#: The step tag of the quickstart's LM-head PRMs: it is in the tokenizer's training text, so it is one token.
STEP_TAG = " ки"


@dataclass
class PolicyConfig:
    """Settings of [`train_policy`]: the task, the model size and the optimisation.

    Args:
        task ([`TaskConfig`], *optional*):
            Difficulty of the training problems. Defaults to `TaskConfig()`.
        vocab_size (`int`, *optional*, defaults to `512`):
            Vocabulary size of the BPE tokenizer trained on the task's text.
        hidden_size (`int`, *optional*, defaults to `64`):
            Hidden size of the model (a multiple of 32 per head: vLLM's CPU build needs a head dimension >= 32).
        num_hidden_layers (`int`, *optional*, defaults to `2`):
            Number of decoder layers.
        num_attention_heads (`int`, *optional*, defaults to `2`):
            Number of attention heads.
        intermediate_size (`int`, *optional*, defaults to `256`):
            Size of the MLP.
        misconception (`float`, *optional*, defaults to `0.5`):
            Probability that a demonstration solves a multiplicative step additively (the designed error of the
            quickstart, see [`~trl_erprm.quickstart.task.demonstration_steps`]); `0` trains on gold solutions.
        max_steps (`int`, *optional*, defaults to `1500`):
            Number of optimiser steps (each on `batch_size` new problems).
        batch_size (`int`, *optional*, defaults to `16`):
            Problems per step.
        learning_rate (`float`, *optional*, defaults to `3e-3`):
            Peak learning rate of AdamW (linear warm-up, then cosine decay to 10% of it).
        warmup_steps (`int`, *optional*, defaults to `30`):
            Steps of linear warm-up.
        weight_decay (`float`, *optional*, defaults to `0.01`):
            AdamW weight decay.
        max_grad_norm (`float`, *optional*, defaults to `1.0`):
            Gradient clipping norm.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the training problems, the tokenizer corpus and the weight initialisation.
    """

    task: TaskConfig = field(default_factory=TaskConfig)
    vocab_size: int = 512
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    intermediate_size: int = 256
    misconception: float = 0.5
    max_steps: int = 1500
    batch_size: int = 16
    learning_rate: float = 3e-3
    warmup_steps: int = 30
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.task, dict):
            self.task = TaskConfig(**self.task)
        if self.hidden_size % self.num_attention_heads or self.hidden_size // self.num_attention_heads < 32:
            raise ValueError(
                f"PolicyConfig: hidden_size={self.hidden_size} with num_attention_heads={self.num_attention_heads} "
                "gives a head dimension below 32 or not whole; vLLM's CPU build needs hidden_size / heads >= 32 "
                "(e.g. hidden_size=128, num_attention_heads=4)."
            )
        if not 0.0 <= self.misconception <= 1.0:
            raise ValueError(f"PolicyConfig.misconception must be a probability in [0, 1], got {self.misconception}.")
        if self.max_steps < 1 or self.batch_size < 1:
            raise ValueError(
                f"PolicyConfig needs max_steps >= 1 and batch_size >= 1, got {self.max_steps}, {self.batch_size}."
            )

    def to_dict(self) -> dict:
        """Return the settings as a JSON-serialisable dict (the task nested under `"task"`)."""
        return dataclasses.asdict(self)

    def cache_key(self) -> str:
        """Return a short hash of the settings and of [`POLICY_FORMAT_VERSION`], naming the cached folder."""
        payload = json.dumps({"version": POLICY_FORMAT_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


def build_policy_tokenizer(config: PolicyConfig) -> PreTrainedTokenizerBase:
    """Train the policy's tokenizer on the task's text, with `<|im_end|>` as EOS and `<|endoftext|>` as padding.

    Args:
        config ([`PolicyConfig`]):
            Settings (task, vocabulary size, seed).

    Returns:
        [`~transformers.PreTrainedTokenizerFast`]: The tokenizer, with the ChatML template.
    """
    # The role names of the chat template are part of every sequence: let BPE merge them as well; the PRMs' step tag
    # too (after every step, as an LM-head PRM reads a solution), so that it is one token.
    corpus = [
        f"user\n{text}\nassistant".replace("\n\n", STEP_TAG + "\n\n")
        for text in task_corpus(2000, config.task, config.seed)
    ]
    tokenizer = build_tokenizer(corpus=corpus, vocab_size=config.vocab_size)
    tokenizer.eos_token = EOS_TOKEN
    return tokenizer


def format_prompt(tokenizer: PreTrainedTokenizerBase, problem: Problem | str) -> str:
    """Render a problem as the chat prompt the policy is trained on (one user turn, then the assistant header).

    Args:
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            Tokenizer with a chat template.
        problem ([`Problem`] or `str`):
            The problem or its statement.

    Returns:
        `str`: The prompt text.
    """
    text = problem.text if isinstance(problem, Problem) else problem
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )


def _encode_batch(tokenizer, problems: Sequence[Problem], solutions: Sequence[str]) -> dict[str, torch.Tensor]:
    """Right-padded `input_ids`, `attention_mask` and `labels` (`-100` on the prompt and padding), `(batch, seq_len)`."""
    prompts = tokenizer([format_prompt(tokenizer, p) for p in problems], add_special_tokens=False)["input_ids"]
    answers = tokenizer(list(solutions), add_special_tokens=False)["input_ids"]
    sequences = [p + a + [tokenizer.eos_token_id] for p, a in zip(prompts, answers)]
    length = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), length), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(sequences), length), -100, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, (prompt, seq) in enumerate(zip(prompts, sequences)):
        input_ids[i, : len(seq)] = torch.tensor(seq)
        attention_mask[i, : len(seq)] = 1
        labels[i, len(prompt) : len(seq)] = torch.tensor(seq[len(prompt) :])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _learning_rate(step: int, config: PolicyConfig) -> float:
    """Linear warm-up to `config.learning_rate`, then cosine decay to 10% of it at `config.max_steps`."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
    return config.learning_rate * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def policy_path(output_dir: str | os.PathLike, config: PolicyConfig | None = None) -> Path:
    """Return the folder where [`train_policy`] saves (or finds) the policy trained with `config`.

    Args:
        output_dir (`str` or `os.PathLike`):
            Cache root.
        config ([`PolicyConfig`], *optional*):
            Settings. Defaults to `PolicyConfig()`.

    Returns:
        `Path`: `output_dir / "policy-<hash of the settings>"`.
    """
    config = config if config is not None else PolicyConfig()
    return Path(output_dir) / f"policy-{config.cache_key()}"


def train_policy(
    output_dir: str | os.PathLike,
    config: PolicyConfig | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
    num_threads: int | None = 1,
) -> str:
    """Train the tiny policy from scratch (or reuse the one already trained with the same settings).

    The folder holds `model.safetensors`, the tokenizer and `policy_config.json` (the settings, the training time and
    the final loss). It is written to a temporary folder first and renamed when complete, so an interrupted run never
    leaves a half-written policy that a later call would reuse.

    Args:
        output_dir (`str` or `os.PathLike`):
            Cache root; the policy goes to [`policy_path`]`(output_dir, config)`.
        config ([`PolicyConfig`], *optional*):
            Settings. Defaults to `PolicyConfig()`.
        overwrite (`bool`, *optional*, defaults to `False`):
            Retrain even if a policy with these settings is cached.
        show_progress (`bool`, *optional*, defaults to `True`):
            Show a tqdm progress bar with the running loss.
        num_threads (`int`, *optional*, defaults to `1`):
            Torch intra-op threads while training (the previous setting is restored afterwards); `None` keeps the
            current setting. The model's matrices are too small to gain from more threads, and extra threads are
            several times slower on a busy machine. The trained weights do not depend on it.

    Returns:
        `str`: Path of the policy folder, loadable with `from_pretrained`.
    """
    config = config if config is not None else PolicyConfig()
    path = policy_path(output_dir, config)
    if not overwrite and (path / POLICY_CONFIG_NAME).is_file() and (path / "model.safetensors").is_file():
        return str(path)
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        _train(path, config, show_progress)
    finally:
        torch.set_num_threads(previous_threads)
    return str(path)


def _train(path: Path, config: PolicyConfig, show_progress: bool) -> None:
    """Train the policy of `config` and save it to `path` (through a temporary folder renamed at the end)."""
    start_time, start_cpu = time.perf_counter(), time.process_time()
    tokenizer = build_policy_tokenizer(config)
    model = build_tiny_model(
        tokenizer,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        seed=config.seed,
    )
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    problems = generate_problems(config.max_steps * config.batch_size, config.task, seed=config.seed + 1)
    demonstrator = random.Random(config.seed + 2)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, betas=(0.9, 0.98), weight_decay=config.weight_decay
    )
    model.train()
    losses = []
    progress = tqdm(range(config.max_steps), desc="Training the tiny policy", disable=not show_progress)
    for step in progress:
        chunk = problems[step * config.batch_size : (step + 1) * config.batch_size]
        demonstrations = ["\n\n".join(demonstration_steps(p, config.misconception, demonstrator)) for p in chunk]
        batch = _encode_batch(tokenizer, chunk, demonstrations)
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, config)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 10 == 0:
            progress.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    record = {
        "policy_config": config.to_dict(),
        "format_version": POLICY_FORMAT_VERSION,
        "train_seconds": round(time.perf_counter() - start_time, 2),
        "train_cpu_seconds": round(time.process_time() - start_cpu, 2),
        "final_loss": sum(losses[-20:]) / len(losses[-20:]),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "torch_version": torch.__version__,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / POLICY_CONFIG_NAME).write_text(json.dumps(record, indent=2))
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)


def load_policy(model_path: str | os.PathLike) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a saved policy (safetensors only, no remote code) and its tokenizer, in eval mode.

    Args:
        model_path (`str` or `os.PathLike`):
            Folder written by [`train_policy`] (or any causal LM folder with a chat-template tokenizer).

    Returns:
        `tuple[PreTrainedModel, PreTrainedTokenizerBase]`: The model and the tokenizer.
    """
    model = load_model(model_path, "causal_lm")
    tokenizer = load_tokenizer(model_path)
    model.eval()
    return model, tokenizer


@torch.no_grad()
def sample_solutions(
    model_path: str | os.PathLike | PreTrainedModel,
    problems: Sequence[Problem | str],
    n: int = 4,
    temperature: float = 1.0,
    seed: int = 0,
    max_new_tokens: int = 160,
    batch_size: int = 64,
    tokenizer: PreTrainedTokenizerBase | None = None,
    show_progress: bool = False,
) -> list[list[str]]:
    """Sample `n` solutions per problem with transformers `generate` (left-padded batches, pure temperature sampling).

    Sampling is seeded: the same model, problems, `n`, `temperature`, `seed` and `batch_size` give the same texts.

    Args:
        model_path (`str`, `os.PathLike` or [`~transformers.PreTrainedModel`]):
            Policy folder (e.g. from [`train_policy`]) or an already loaded causal LM (then pass `tokenizer`).
        problems (`Sequence[Problem | str]`):
            Problems or their statements.
        n (`int`, *optional*, defaults to `4`):
            Solutions per problem.
        temperature (`float`, *optional*, defaults to `1.0`):
            Sampling temperature (`top_k` and `top_p` are off); `0` means greedy decoding.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the sampling.
        max_new_tokens (`int`, *optional*, defaults to `160`):
            Longest solution, in tokens.
        batch_size (`int`, *optional*, defaults to `64`):
            Sequences generated together (problems per batch = `max(1, batch_size // n)`).
        tokenizer ([`~transformers.PreTrainedTokenizerBase`], *optional*):
            Tokenizer, required when a model object is passed; read from `model_path` otherwise.
        show_progress (`bool`, *optional*, defaults to `False`):
            Show a tqdm progress bar over batches.

    Returns:
        `list[list[str]]`: For each problem, its `n` solutions (special tokens removed).
    """
    if isinstance(model_path, PreTrainedModel):
        if tokenizer is None:
            raise ValueError("sample_solutions got a model object but no tokenizer: pass tokenizer=... as well.")
        model = model_path
    else:
        model, loaded = load_policy(model_path)
        tokenizer = tokenizer if tokenizer is not None else loaded
    if n < 1 or temperature < 0:
        raise ValueError(f"sample_solutions needs n >= 1 and temperature >= 0, got n={n}, temperature={temperature}.")
    per_batch = max(1, batch_size // n)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    results = []
    batches = range(0, len(problems), per_batch)
    for start in tqdm(batches, desc="Sampling solutions", disable=not show_progress):
        prompts = [format_prompt(tokenizer, p) for p in problems[start : start + per_batch]]
        inputs = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        inputs = inputs.to(model.device)
        if temperature > 0:
            sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
        else:  # greedy decoding gives one text per prompt, repeated n times
            sampling = {"do_sample": False}
        output = model.generate(
            **inputs,
            **sampling,
            max_new_tokens=max_new_tokens,
            num_return_sequences=n if temperature > 0 else 1,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        texts = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        if temperature == 0:
            texts = [text for text in texts for _ in range(n)]
        results += [texts[i : i + n] for i in range(0, len(texts), n)]
    torch.random.set_rng_state(generator_state)
    return results


def policy_accuracy(
    model_path: str | os.PathLike | PreTrainedModel,
    problems: Sequence[Problem],
    n: int = 4,
    temperature: float = 1.0,
    seed: int = 0,
    separator: str = "\n\n",
    **sample_kwargs,
) -> dict:
    """Sample solutions and measure them with the checker: final-answer accuracy and per-step correctness.

    Args:
        model_path (`str`, `os.PathLike` or [`~transformers.PreTrainedModel`]):
            Policy folder or model (then pass `tokenizer=` in `sample_kwargs`).
        problems (`Sequence[Problem]`):
            Evaluation problems.
        n (`int`, *optional*, defaults to `4`):
            Solutions per problem.
        temperature (`float`, *optional*, defaults to `1.0`):
            Sampling temperature.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the sampling.
        separator (`str`, *optional*, defaults to `"\\n\\n"`):
            Step separator used by the checker.
        **sample_kwargs:
            Passed on to [`sample_solutions`] (`max_new_tokens`, `batch_size`, `tokenizer`, `show_progress`).

    Returns:
        `dict`: `accuracy` (fraction of samples with the right final answer), `error_free` (fraction with no wrong
        step), `step_accuracy` (fraction of all written steps that are correct), `pass_at_n` (fraction of problems
        with at least one right answer), `first_error_index` (count of samples per first wrong step, `-1` for none),
        `first_error_kind` (count per kind of the first error, see
        [`~trl_erprm.quickstart.task.STEP_ERRORS`]), `mean_num_steps`, `num_samples`, and `solutions` (the samples).
    """
    solutions = sample_solutions(model_path, problems, n=n, temperature=temperature, seed=seed, **sample_kwargs)
    checks = [[check_solution(p, s, separator) for s in group] for p, group in zip(problems, solutions)]
    flat = [c for group in checks for c in group]
    steps = [ok for c in flat for ok in c.step_correct]
    return {
        "accuracy": sum(c.answer_correct for c in flat) / len(flat),
        "error_free": sum(c.first_error == -1 for c in flat) / len(flat),
        "step_accuracy": sum(steps) / len(steps),
        "pass_at_n": sum(any(c.answer_correct for c in group) for group in checks) / len(checks),
        "first_error_index": dict(sorted(Counter(c.first_error for c in flat).items())),
        "first_error_kind": dict(
            Counter(c.step_errors[c.first_error] for c in flat if c.first_error >= 0).most_common()
        ),
        "mean_num_steps": sum(len(c.steps) for c in flat) / len(flat),
        "num_samples": len(flat),
        "solutions": solutions,
    }
