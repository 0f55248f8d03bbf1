"""Configuration of the ER-PRM labeling job."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


#: Where the step prefix goes in the rollout prompt; see `ERPRMLabelerConfig.prefix_placement`.
PREFIX_PLACEMENTS = ("assistant", "user", "plain")

#: Instruction that follows the prefix in the user turn of the reference implementation (`prefix_placement="user"`).
REFERENCE_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass
class ERPRMLabelerConfig:
    r"""
    Configuration of [`ERPRMLabeler`]: Monte-Carlo rollout labeling of step-split solutions (ER-PRM, arXiv
    2412.11006).

    For every step `l < L` of a solution, `num_rollouts` completions are sampled from the prefix `a^[l]` with the
    generator and graded against the gold answer; the last step is labelled by grading the full solution (no
    rollouts). The label of a step is `er_label(outcomes, eta)`. Only the outcomes are stored in the job folder, so
    `eta` can be changed at the end (or at batch time, with the labeler's collator) without new rollouts.

    Using [`~transformers.HfArgumentParser`] (or TRL's `TrlParser`) this class turns into command-line arguments.

    Parameters:
        > Generator and backend

        model_name_or_path (`str`, *optional*):
            Folder or Hub id of the generator (the reference policy `pi_0`). Required unless a model object is passed
            to [`ERPRMLabeler`] or `backend="vllm_server"`.
        backend (`str`, *optional*, defaults to `"transformers"`):
            Rollout engine: `"transformers"` (`generate`, CPU and small jobs), `"vllm"` (offline engine with prefix
            caching, the GPU path) or `"vllm_server"` (a running `trl vllm-serve` server shared by many processes).
        dtype (`str`, *optional*, defaults to `"auto"`):
            Dtype of the generator weights (`"auto"`, `"float32"`, `"bfloat16"`, `"float16"`).
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Whether to run model code from the Hub. Off by default: model repositories are untrusted.
                generation_batch_size (`int`, *optional*, defaults to `64`):
            `"transformers"` backend: maximum number of rollouts decoded together (a chunk: prefixes times
            `num_rollouts`; each distinct prefix of a chunk is prefilled once). On a CPU, 128-256 decode faster.
        vllm_gpu_memory_utilization (`float`, *optional*, defaults to `0.9`):
            `"vllm"` backend: share of GPU memory the engine may take.
        vllm_max_model_len (`int`, *optional*):
            `"vllm"` backend: context length; defaults to the model's.
        vllm_enforce_eager (`bool`, *optional*, defaults to `False`):
            `"vllm"` backend: skip graph capture (faster start, slower decoding; use it on CPU).
        vllm_tensor_parallel_size (`int`, *optional*, defaults to `1`):
            `"vllm"` backend: GPUs per engine (single-process jobs only).
        vllm_server_base_url (`str`, *optional*, defaults to `"http://127.0.0.1:8000"`):
            `"vllm_server"` backend: URL of the server.
        vllm_server_timeout (`float`, *optional*, defaults to `240.0`):
            `"vllm_server"` backend: seconds to wait for the server to answer `/health`.

        > Sampling

        num_rollouts (`int`, *optional*, defaults to `16`):
            Completions sampled per step prefix (`N`; 16 in the paper).
        temperature (`float`, *optional*, defaults to `1.0`):
            Sampling temperature (1.0 in the paper).
        top_p (`float`, *optional*, defaults to `1.0`):
            Nucleus sampling mass (1.0 in the paper).
        max_new_tokens (`int`, *optional*, defaults to `1024`):
            Maximum tokens per rollout (1024 in the paper).
        seed (`int`, *optional*, defaults to `0`):
            Seed of the rollouts. The rollouts of a step prefix use a seed derived from `seed` and the prefix's rollout
            prompt only (`SEED_POLICY` of the labeler: not from its row), so an interrupted, resumed or multi-process
            job samples exactly what a one-shot job samples, and identical prefixes get identical rollouts.

        > Prompts

        prefix_placement (`str`, *optional*, defaults to `"assistant"`):
            How a step prefix is shown to a chat model. `"assistant"`: the problem and `user_instruction` are the user
            turn and the prefix starts the assistant turn, which the model continues (`continue_final_message=True`);
            the rollout graded is prefix + continuation. `"user"`: the problem, the prefix and `user_instruction` form the user turn and
            the model answers from scratch (the reference implementation); the rollout graded is the answer alone.
            `"plain"`: no chat template, the text `prompt + step_separator + prefix + step_separator` is continued
            (base models).
        user_instruction (`str`, *optional*, defaults to `"Please reason step by step, and put your final answer within \\boxed{}."`):
            Instruction in the user turn (after the problem with `prefix_placement="assistant"`, after the prefix with
            `"user"`; not added when the problem already contains it, and unused with `"plain"`). The default asks for
            `\\boxed{}`, the form the grader reads best; an empty string adds nothing.
        step_separator (`str`, *optional*, defaults to `"\n"`):
            The text that ends a step ([`~trl_erprm.steps.StepFormat`]): it joins the steps of the full solution and
            ends each prefix, so that the rollout starts a new step.

        > Dataset

        prompt_column (`str`, *optional*, defaults to `"prompt"`):
            Column holding the problem.
        completions_column (`str`, *optional*, defaults to `"completions"`):
            Column holding the solution as a list of step strings.
        gold_column (`str`, *optional*, defaults to `"gold_answer"`):
            Column holding the gold final answer (a number or LaTeX; converted with `str`).

        > Labels and grading

        eta (`float` or `str`, *optional*, defaults to `1.0`):
            ER-PRM coefficient of the stored `labels`: `0` gives the Math-Shepherd soft label, `inf` the hard label,
            negative values the pessimistic labels; the names `"soft"`, `"hard"` and `"pessimistic"` are accepted
            (also on the command line). Stored as a float. It is not part of the job's identity: changing it on a finished job only recomputes labels.
        grading_num_workers (`int`, *optional*, defaults to `1`):
            Worker processes of the math-verify grader.
        grading_timeout (`float`, *optional*, defaults to `5.0`):
            Seconds allowed to grade one answer (the worker is killed past it).

        > Job

        output_dir (`str`, *optional*, defaults to `"erprm-labels"`):
            Job folder: results are appended there as they are produced, and the merged dataset is saved in
            `output_dir/dataset`. Starting the same job again resumes it.
        batch_size (`int`, *optional*, defaults to `8`):
            Rows whose prefixes are generated (and written) together. Not part of the job's identity.
        reuse_rollouts (`bool`, *optional*, defaults to `True`):
            Roll out each distinct step prefix once: a prefix whose rollout key (the exact rollout prompt, the gold
            answer, the generator and every sampling argument) was already rolled out, in this job, a resumed run or
            another job sharing `rollout_cache_dir`, reuses the stored outcomes. The rows are the same either way
            (the seeds come from the prefixes); `False` rolls out every prefix of every row. Not part of the job's
            identity.
        rollout_cache_dir (`str`, *optional*):
            Folder of the stored rollout outcomes; defaults to `output_dir/rollouts`. Point several jobs (a job that
            only adds rows, a repeat with another `eta`...) at one folder to share their rollouts.
        overwrite (`bool`, *optional*, defaults to `False`):
            Delete the results of a job with different arguments found in `output_dir` and start again, instead of
            raising an error.
        push_to_hub (`bool`, *optional*, defaults to `False`):
            Push the merged dataset to the Hub as `hub_dataset_id` at the end.
        hub_dataset_id (`str`, *optional*):
            Hub repository of the dataset, required when `push_to_hub=True`.
        hub_private (`bool`, *optional*, defaults to `False`):
            Whether the Hub repository is private.
    """

    model_name_or_path: str | None = field(default=None, metadata={"help": "Folder or Hub id of the generator."})
    backend: str = field(
        default="transformers",
        metadata={"help": "Rollout engine.", "choices": ["transformers", "vllm", "vllm_server"]},
    )
    dtype: str = field(default="auto", metadata={"help": "Dtype of the generator weights."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Whether to run model code from the Hub."})
    generation_batch_size: int = field(default=64, metadata={"help": "transformers: sequences per generate call."})
    vllm_gpu_memory_utilization: float = field(default=0.9, metadata={"help": "vllm: share of GPU memory."})
    vllm_max_model_len: int | None = field(default=None, metadata={"help": "vllm: context length."})
    vllm_enforce_eager: bool = field(default=False, metadata={"help": "vllm: skip graph capture."})
    vllm_tensor_parallel_size: int = field(default=1, metadata={"help": "vllm: GPUs per engine."})
    vllm_server_base_url: str = field(default="http://127.0.0.1:8000", metadata={"help": "vllm_server: URL."})
    vllm_server_timeout: float = field(default=240.0, metadata={"help": "vllm_server: seconds to wait for /health."})
    num_rollouts: int = field(default=16, metadata={"help": "Completions sampled per step prefix (N)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass."})
    max_new_tokens: int = field(default=1024, metadata={"help": "Maximum tokens per rollout."})
    seed: int = field(default=0, metadata={"help": "Seed of the rollouts (per step prefix content)."})
    prefix_placement: str = field(
        default="assistant",
        metadata={"help": "Where the step prefix goes.", "choices": list(PREFIX_PLACEMENTS)},
    )
    user_instruction: str = field(
        default=REFERENCE_INSTRUCTION, metadata={"help": "Instruction in the user turn (asks for \\boxed{})."}
    )
    step_separator: str = field(
        default="\n", metadata={"help": "The text that ends a step (joins steps, ends prefixes)."}
    )
    prompt_column: str = field(default="prompt", metadata={"help": "Column holding the problem."})
    completions_column: str = field(default="completions", metadata={"help": "Column holding the steps."})
    gold_column: str = field(default="gold_answer", metadata={"help": "Column holding the gold final answer."})
    # Annotated `str` so that the command line accepts names ("hard") as well as numbers; a float after __post_init__.
    eta: str = field(default=1.0, metadata={"help": "ER-PRM coefficient: a number, inf, 'soft' or 'hard'."})
    grading_num_workers: int = field(default=1, metadata={"help": "Worker processes of the grader."})
    grading_timeout: float = field(default=5.0, metadata={"help": "Seconds allowed to grade one answer."})
    output_dir: str = field(default="erprm-labels", metadata={"help": "Job folder (resumable)."})
    batch_size: int = field(default=8, metadata={"help": "Rows generated and written together."})
    reuse_rollouts: bool = field(default=True, metadata={"help": "Roll out each distinct step prefix once."})
    rollout_cache_dir: str | None = field(
        default=None, metadata={"help": "Stored rollout outcomes, shareable by jobs (default: output_dir/rollouts)."}
    )
    overwrite: bool = field(default=False, metadata={"help": "Discard a different job's results in output_dir."})
    push_to_hub: bool = field(default=False, metadata={"help": "Push the merged dataset to the Hub."})
    hub_dataset_id: str | None = field(default=None, metadata={"help": "Hub repository of the dataset."})
    hub_private: bool = field(default=False, metadata={"help": "Whether the Hub repository is private."})

    def __post_init__(self):
        from ..functional import resolve_eta  # torch loads with the generator, not with the command line

        self.eta = resolve_eta(self.eta)
        if self.backend not in ("transformers", "vllm", "vllm_server"):
            raise ValueError(f"backend={self.backend!r}: choose 'transformers', 'vllm' or 'vllm_server'.")
        if self.prefix_placement not in PREFIX_PLACEMENTS:
            raise ValueError(f"prefix_placement={self.prefix_placement!r}: choose one of {PREFIX_PLACEMENTS}.")
        for name in ("num_rollouts", "max_new_tokens", "batch_size", "generation_batch_size", "grading_num_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if not self.step_separator:
            raise ValueError("step_separator is empty: pass the text that joins steps, e.g. '\\n' or '\\n\\n'.")
        if self.push_to_hub and not self.hub_dataset_id:
            raise ValueError("push_to_hub=True needs hub_dataset_id (e.g. 'user/gsm8k-erprm-labels').")

    def job_arguments(self) -> dict:
        """The arguments that decide the rollout outcomes, i.e. the identity of a job folder.

        Performance knobs (`batch_size`, `generation_batch_size`, workers, vLLM memory) and `eta` (applied when
        merging) are left out, so they may change between a job and its resumption.

        Returns:
            `dict`: JSON-serialisable arguments, compared field by field when a job folder is reused.
        """
        keys = (
            "model_name_or_path",
            "backend",
            "dtype",
            "num_rollouts",
            "temperature",
            "top_p",
            "max_new_tokens",
            "seed",
            "prefix_placement",
            "user_instruction",
            "step_separator",
            "prompt_column",
            "completions_column",
            "gold_column",
        )
        values = asdict(self)
        return {key: values[key] for key in keys}
