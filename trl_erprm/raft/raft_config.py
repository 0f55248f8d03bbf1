from __future__ import annotations

from dataclasses import dataclass, field

from trl import SFTConfig

from .._compat import adopt_activation_checkpointing
from ..functional import STEP_AGGREGATIONS
from ..steps import STEP_SPLITTERS
from .selection import SCORINGS, SELECTIONS


GENERATION_BACKENDS = ("transformers", "vllm", "vllm_server")
#: Fields of the SFT step that decide a round's result (part of a run's identity with the RAFT fields).
SFT_IDENTITY = (
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "lr_scheduler_type",
    "warmup_ratio",
    "warmup_steps",
    "weight_decay",
    "max_grad_norm",
    "max_length",
    "completion_only_loss",
    "bf16",
    "fp16",
    "seed",
)
#: RAFT fields that change speed or reporting only (not part of a run's identity: they may change on resume), and
#: `num_rounds` (raise it to continue a finished run).
NOT_IDENTITY = (
    "num_rounds",
    "generation_batch_size",
    "vllm_server_url",
    "vllm_gpu_memory_utilization",
    "vllm_max_model_len",
    "prm_batch_size",
    "grading_num_workers",
    "grading_timeout",
    "chunk_size",
    "overwrite",
    "plot",
)


@dataclass
class RAFTConfig(SFTConfig):
    r"""Configuration of RAFT (rejection-sampling fine-tuning, as ER-PRM improves its policy with its PRM):
    [`~trl_erprm.raft.run_raft`] and `trl-erprm raft`.

    Every round samples `num_samples` completions per training problem with the current policy, scores them (a PRM, the
    grader, or majority vote), keeps some per problem (best-of-N, top-k, or a score threshold; optionally the
    graded-correct ones only), fine-tunes the policy on the kept ones with TRL's [`~trl.SFTTrainer`] (loss on the
    completion only) and measures its accuracy on held-out problems with the grader. Every [`~trl.SFTConfig`] field
    applies to the fine-tuning of each round (`learning_rate`, `num_train_epochs`, `bf16`, `max_length`, DeepSpeed,
    ...); `output_dir` is the run's folder. ER-PRM's settings (SPEC section 10): `num_samples=16`, `temperature=1.0`,
    `max_new_tokens=512`, `aggregation="min"`, `selection="best_of_n"`, 2 epochs at learning rate 5e-7 (cosine),
    batch 32, bf16, 3 rounds.

    Parameters:
        model_name_or_path (`str` or `None`, *optional*, defaults to `None`):
            The initial policy (folder or Hub id); required unless [`run_raft`] is given the policy.
        dataset_name (`str` or `None`, *optional*, defaults to `None`):
            Training problems: Hub id, data file or `save_to_disk` folder; required unless given in memory.
        dataset_config (`str` or `None`, *optional*, defaults to `None`):
            Hub dataset configuration.
        dataset_split (`str`, *optional*, defaults to `"train"`):
            Split of the training problems (a single data file is the `"train"` split).
        prompt_column (`str`, *optional*, defaults to `"prompt"`):
            Column of the problem: a string, or a list of chat messages.
        gold_column (`str`, *optional*, defaults to `"gold_answer"`):
            Column of the gold answer (a GSM8K solution ending in `#### N` gives `N`).
        max_problems (`int` or `None`, *optional*, defaults to `None`):
            Use only the first training problems.
        eval_dataset_name (`str` or `None`, *optional*, defaults to `None`):
            Held-out problems (default: `dataset_name`).
        eval_dataset_split (`str` or `None`, *optional*, defaults to `None`):
            Split of the held-out problems; `None` holds out `eval_fraction` of the training problems instead.
        eval_fraction (`float`, *optional*, defaults to `0.1`):
            Share of the training problems held out (seeded shuffle) when there is no `eval_dataset_split`.
        max_eval_problems (`int` or `None`, *optional*, defaults to `None`):
            Use only the first held-out problems.
        use_chat_template (`bool`, *optional*, defaults to `False`):
            Put a string problem into a user message (the policy's chat template renders it).
        prompt_suffix (`str`, *optional*, defaults to `""`):
            Text appended to a string problem (e.g. `" Please reason step by step, and put your final answer within
            \boxed{}."`).
        num_rounds (`int`, *optional*, defaults to `3`):
            Rounds of sample, score, select, fine-tune, evaluate. Raise it and run again to continue a finished run.
        num_samples (`int`, *optional*, defaults to `16`):
            `N`, completions sampled per problem and round (at least 2: RAFT selects among them).
        temperature (`float`, *optional*, defaults to `1.0`):
            Sampling temperature.
        top_p (`float`, *optional*, defaults to `1.0`):
            Nucleus sampling.
        max_new_tokens (`int`, *optional*, defaults to `512`):
            Maximum tokens per sample.
        generation_backend (`str`, *optional*, defaults to `"transformers"`):
            `"transformers"`, `"vllm"` (offline engine, one per process) or `"vllm_server"` (a running `trl
            vllm-serve` of the initial policy; the new weights are pushed to it after each round).
        generation_batch_size (`int`, *optional*, defaults to `64`):
            Sequences per `generate` call (transformers backend).
        vllm_server_url (`str`, *optional*, defaults to `"http://127.0.0.1:8000"`):
            URL of the `trl vllm-serve` server.
        vllm_gpu_memory_utilization (`float`, *optional*, defaults to `0.5`):
            Share of GPU memory the vLLM engine may take (released before fine-tuning).
        vllm_max_model_len (`int` or `None`, *optional*, defaults to `None`):
            vLLM context length.
        scoring (`str`, *optional*, defaults to `"prm"`):
            How samples are scored: `"prm"`, `"outcome"` (the grader; keeps correct samples only) or `"majority"`
            (vote share; keeps samples giving the majority answer only).
        selection (`str`, *optional*, defaults to `"best_of_n"`):
            Which samples are kept per problem: `"best_of_n"`, `"top_k"` or `"threshold"`.
        top_k (`int`, *optional*, defaults to `1`):
            `"top_k"`: samples kept per problem.
        score_threshold (`float` or `None`, *optional*, defaults to `None`):
            `"threshold"`: the lowest score kept.
        require_correct (`bool`, *optional*, defaults to `False`):
            Keep graded-correct samples only.
        prm_model (`str` or `None`, *optional*, defaults to `None`):
            `scoring="prm"`: the PRM (folder or Hub id).
        prm_type (`str`, *optional*, defaults to `"auto"`):
            `"auto"`, `"token_classification"`, `"lm_head"` or `"implicit"`.
        prm_step_separator (`str` or `None`, *optional*, defaults to `None`):
            Text that ends a step, as the PRM was trained with (default: the PRM's own).
        step_tag (`str` or `None`, *optional*, defaults to `None`):
            LM-head PRMs: the step tag.
        good_token (`str` or `None`, *optional*, defaults to `None`):
            LM-head PRMs: the "good step" token.
        bad_token (`str` or `None`, *optional*, defaults to `None`):
            LM-head PRMs: the "bad step" token.
        ref_model (`str` or `None`, *optional*, defaults to `None`):
            Implicit PRMs: the reference model.
        prm_beta (`float` or `None`, *optional*, defaults to `None`):
            Implicit PRMs: the reward scale.
        implicit_value (`str` or `None`, *optional*, defaults to `None`):
            Implicit PRMs: `"q"` or `"step_reward"`.
        prm_batch_size (`int`, *optional*, defaults to `8`):
            Samples per PRM forward pass.
        prm_max_length (`int` or `None`, *optional*, defaults to `None`):
            Maximum PRM tokens per sample.
        prm_dtype (`str`, *optional*, defaults to `"float32"`):
            dtype of the PRM weights.
        aggregation (`str`, *optional*, defaults to `"min"`):
            How step scores become a sample's score (ER-PRM: `"min"`).
        split_method (`str` or `None`, *optional*, defaults to `None`):
            Cut samples into steps with this named rule instead of the PRM's step format.
        empty_step_value (`float`, *optional*, defaults to `0.0`):
            Score of a sample with no step (ER-PRM: 0).
        eval_temperature (`float`, *optional*, defaults to `0.0`):
            Sampling temperature of the held-out evaluation (`0.0`: greedy).
        eval_max_new_tokens (`int` or `None`, *optional*, defaults to `None`):
            Maximum tokens of an evaluation answer (default: `max_new_tokens`).
        grading_num_workers (`int`, *optional*, defaults to `1`):
            Grader worker processes.
        grading_timeout (`float`, *optional*, defaults to `5.0`):
            Seconds allowed to grade one answer.
        chunk_size (`int`, *optional*, defaults to `32`):
            Problems sampled (or scored) and written together.
        overwrite (`bool`, *optional*, defaults to `False`):
            Delete another run's results found in `output_dir`.
        plot (`bool`, *optional*, defaults to `True`):
            Write `accuracy.png`.
    """

    model_name_or_path: str | None = field(default=None, metadata={"help": "The initial policy (folder or Hub id)."})
    dataset_name: str | None = field(default=None, metadata={"help": "Training problems: Hub id, file or folder."})
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration."})
    dataset_split: str = field(default="train", metadata={"help": "Split of the training problems."})
    prompt_column: str = field(default="prompt", metadata={"help": "Column of the problem (text or messages)."})
    gold_column: str = field(default="gold_answer", metadata={"help": "Column of the gold answer."})
    max_problems: int | None = field(default=None, metadata={"help": "Use only the first training problems."})
    eval_dataset_name: str | None = field(default=None, metadata={"help": "Held-out problems (default: dataset)."})
    eval_dataset_split: str | None = field(
        default=None, metadata={"help": "Split of the held-out problems (None: hold out eval_fraction)."}
    )
    eval_fraction: float = field(default=0.1, metadata={"help": "Share of the problems held out without eval split."})
    max_eval_problems: int | None = field(default=None, metadata={"help": "Use only the first held-out problems."})
    use_chat_template: bool = field(default=False, metadata={"help": "Put a string problem into a user message."})
    prompt_suffix: str = field(default="", metadata={"help": "Text appended to a string problem."})
    num_rounds: int = field(default=3, metadata={"help": "Rounds of sample, score, select, fine-tune, evaluate."})
    num_samples: int = field(default=16, metadata={"help": "N: completions per problem and round (>= 2)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling."})
    max_new_tokens: int = field(default=512, metadata={"help": "Maximum tokens per sample."})
    generation_backend: str = field(
        default="transformers", metadata={"help": "'transformers', 'vllm' or 'vllm_server'."}
    )
    generation_batch_size: int = field(default=64, metadata={"help": "Sequences per generate call (transformers)."})
    vllm_server_url: str = field(default="http://127.0.0.1:8000", metadata={"help": "URL of a trl vllm-serve."})
    vllm_gpu_memory_utilization: float = field(default=0.5, metadata={"help": "GPU memory share of vLLM."})
    vllm_max_model_len: int | None = field(default=None, metadata={"help": "vLLM context length."})
    scoring: str = field(default="prm", metadata={"help": "'prm', 'outcome' (the grader) or 'majority'."})
    selection: str = field(default="best_of_n", metadata={"help": "'best_of_n', 'top_k' or 'threshold'."})
    top_k: int = field(default=1, metadata={"help": "top_k selection: samples kept per problem."})
    score_threshold: float | None = field(default=None, metadata={"help": "threshold selection: lowest kept score."})
    require_correct: bool = field(default=False, metadata={"help": "Keep graded-correct samples only."})
    prm_model: str | None = field(default=None, metadata={"help": "The PRM (folder or Hub id)."})
    prm_type: str = field(default="auto", metadata={"help": "'auto', 'token_classification', 'lm_head', 'implicit'."})
    prm_step_separator: str | None = field(
        default=None, metadata={"help": "Text that ends a step for the PRM (default: its prm_config.json, else \\n)."}
    )
    step_tag: str | None = field(default=None, metadata={"help": "LM-head PRMs: the step tag."})
    good_token: str | None = field(default=None, metadata={"help": "LM-head PRMs: the 'good step' token."})
    bad_token: str | None = field(default=None, metadata={"help": "LM-head PRMs: the 'bad step' token."})
    ref_model: str | None = field(default=None, metadata={"help": "Implicit PRMs: the reference model."})
    prm_beta: float | None = field(default=None, metadata={"help": "Implicit PRMs: the reward scale."})
    implicit_value: str | None = field(default=None, metadata={"help": "Implicit PRMs: 'q' or 'step_reward'."})
    prm_batch_size: int = field(default=8, metadata={"help": "Samples per PRM forward pass."})
    prm_max_length: int | None = field(default=None, metadata={"help": "Maximum PRM tokens per sample."})
    prm_dtype: str = field(default="float32", metadata={"help": "dtype of the PRM weights."})
    aggregation: str = field(default="min", metadata={"help": "How step scores become a sample's score."})
    split_method: str | None = field(default=None, metadata={"help": "Named rule cutting samples into steps."})
    empty_step_value: float = field(default=0.0, metadata={"help": "Score of a sample with no step."})
    eval_temperature: float = field(default=0.0, metadata={"help": "Temperature of the held-out evaluation."})
    eval_max_new_tokens: int | None = field(default=None, metadata={"help": "Maximum tokens of an eval answer."})
    grading_num_workers: int = field(default=1, metadata={"help": "Grader worker processes."})
    grading_timeout: float = field(default=5.0, metadata={"help": "Seconds allowed to grade one answer."})
    chunk_size: int = field(default=32, metadata={"help": "Problems sampled or scored, and written, together."})
    overwrite: bool = field(default=False, metadata={"help": "Delete another run's results in output_dir."})
    plot: bool = field(default=True, metadata={"help": "Write accuracy.png."})

    def __post_init__(self):
        errors = []
        if self.num_samples < 2:
            errors.append(
                f"num_samples={self.num_samples}: RAFT selects among N >= 2 samples per problem (ER-PRM uses 16); "
                "with one sample there is nothing to reject."
            )
        if self.num_rounds < 1:
            errors.append(f"num_rounds must be >= 1, got {self.num_rounds}.")
        if self.scoring not in SCORINGS:
            errors.append(f"scoring={self.scoring!r}; choose one of {SCORINGS}.")
        if self.selection not in SELECTIONS:
            errors.append(f"selection={self.selection!r}; choose one of {SELECTIONS}.")
        if self.selection == "threshold" and self.score_threshold is None:
            errors.append("selection='threshold' needs --score_threshold.")
        if self.top_k < 1:
            errors.append(f"top_k must be >= 1, got {self.top_k}.")
        if self.generation_backend not in GENERATION_BACKENDS:
            errors.append(f"generation_backend={self.generation_backend!r}; choose one of {GENERATION_BACKENDS}.")
        if self.aggregation not in STEP_AGGREGATIONS:
            errors.append(f"aggregation={self.aggregation!r}; choose one of {sorted(STEP_AGGREGATIONS)}.")
        if self.split_method is not None and self.split_method not in STEP_SPLITTERS:
            errors.append(f"split_method={self.split_method!r}; choose one of {sorted(STEP_SPLITTERS)}.")
        if self.eval_dataset_split is None and not 0.0 < self.eval_fraction < 1.0:
            errors.append(f"eval_fraction must be in (0, 1) without eval_dataset_split, got {self.eval_fraction}.")
        if self.chunk_size < 1:
            errors.append(f"chunk_size must be >= 1, got {self.chunk_size}.")
        if errors:
            raise ValueError("RAFTConfig: " + " ".join(errors))
        adopt_activation_checkpointing(self)  # no FutureWarning from TRL's own gradient_checkpointing default
        super().__post_init__()

    def job(self) -> dict:
        """The arguments that decide the run's results: its identity in `output_dir` (the RAFT fields but speed and
        reporting settings, and the SFT fields of `SFT_IDENTITY`).

        Returns:
            `dict`: JSON-serialisable arguments.
        """
        from dataclasses import fields

        own = {f.name for f in fields(RAFTConfig)} - {f.name for f in fields(SFTConfig)}
        job = {name: getattr(self, name) for name in sorted(own) if name not in NOT_IDENTITY}
        job.update({name: getattr(self, name, None) for name in SFT_IDENTITY})
        job["lr_scheduler_type"] = getattr(job["lr_scheduler_type"], "value", str(job["lr_scheduler_type"]))
        return job
