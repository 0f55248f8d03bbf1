"""Configuration of `trl-erprm search`: PRM-guided beam search and DVTS against Best-of-N at equal generated tokens."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..evaluation.metrics import resolve_vote_weight
from ..functional import STEP_AGGREGATIONS
from .compare import METHODS, check_n_values
from .search import SearchParams


GENERATION_BACKENDS = ("transformers", "vllm", "vllm_server")
#: What the PRM reads before the steps (`SearchConfig.prm_prompt`).
PRM_PROMPTS = ("problem", "generator_prompt")


@dataclass
class SearchConfig:
    """Arguments of a search evaluation (`trl-erprm search`).

    Args:
        dataset_name (`str`):
            Problems: a Hub id, a local `.jsonl` / `.json` / `.parquet` / `.csv` file or a `save_to_disk` folder.
        generator_model (`str`):
            The policy (folder or Hub id; for `vllm_server`, the served model's tokenizer).
        prm_model (`str`):
            The PRM (folder or Hub id).
        dataset_config (`str`, *optional*):
            Hub dataset configuration.
        dataset_split (`str`, *optional*):
            Split to evaluate. By default the only split there is (a local data file is the `"train"` split); a
            dataset with several splits (most Hub datasets) needs it, e.g. `--dataset_split test`.
        max_problems (`int`, *optional*):
            Evaluate only the first `max_problems` problems.
        prompt_column (`str`, *optional*, defaults to `"prompt"`):
            Column of the problem text.
        gold_column (`str`, *optional*, defaults to `"gold_answer"`):
            Column of the gold answer. A GSM8K-style solution ending in `#### N` gives `N`.
        generation_backend (`str`, *optional*, defaults to `"transformers"`):
            `"transformers"`, `"vllm"` (offline engine with prefix caching) or `"vllm_server"` (a running
            `trl vllm-serve`).
        vllm_server_url (`str`, *optional*, defaults to `"http://127.0.0.1:8000"`):
            URL of the server (`vllm_server`).
        vllm_gpu_memory_utilization (`float`, *optional*, defaults to `0.5`):
            Share of GPU memory the vLLM engine may take (the PRM needs the rest).
        vllm_max_model_len (`int`, *optional*):
            vLLM context length; defaults to the model's.
        temperature (`float`, *optional*, defaults to `0.8`):
            Sampling temperature of steps and of Best-of-N candidates.
        top_p (`float`, *optional*, defaults to `1.0`):
            Nucleus sampling.
        max_step_tokens (`int`, *optional*, defaults to `256`):
            Maximum tokens of one step; a step that reaches it ends its beam.
        max_new_tokens (`int`, *optional*, defaults to `1024`):
            Maximum tokens of a Best-of-N candidate and of a search's last iteration.
        use_chat_template (`bool`, *optional*, defaults to `False`):
            Put the prompt in a user turn of the generator's chat template.
        prompt_suffix (`str`, *optional*, defaults to `""`):
            Text appended to the prompt before generation.
        generation_batch_size (`int`, *optional*, defaults to `64`):
            Sequences per `generate` call (transformers backend).
        step_separator (`str`, *optional*, defaults to `"\\n\\n"`):
            Text between the generator's steps: a step's generation stops there, and Best-of-N candidates are split
            there into steps for the PRM.
        prm_type (`str`, *optional*, defaults to `"auto"`):
            `"auto"` (the head recorded in the PRM's `prm_config.json`, so a PRM saved by
            [`~trl_erprm.ImplicitPRMTrainer`] is implicit; else read from the architecture), `"token_classification"`,
            `"lm_head"` or `"implicit"`.
        prm_prompt (`str`, *optional*, defaults to `"problem"`):
            What the PRM reads before the steps: `"problem"` (the prompt column as is) or `"generator_prompt"` (the
            generator's prompt, with chat template and suffix: for PRMs trained on such prompts, e.g. the
            quickstart's).
        prm_step_separator (`str`, *optional*):
            Token-classification: the separator the PRM was trained with; LM head: text between a tag and the next
            step; implicit: text ending a step. Default: the one recorded in the PRM's `prm_config.json` (trl-erprm
            trainers write it), else `"\\n"`.
        step_tag (`str`, *optional*):
            LM-head PRMs: the step tag (default: the one in the PRM's `prm_config.json`, else `" ки"`).
        good_token (`str`, *optional*):
            LM-head PRMs (default: recorded in `prm_config.json`, else `"+"`): the "good step" token.
        bad_token (`str`, *optional*):
            LM-head PRMs (default: recorded in `prm_config.json`, else `"-"`): the "bad step" token.
        ref_model (`str`, *optional*):
            Implicit PRMs: the reference model, or `"adapter"`. Default: the one recorded in the PRM's
            `prm_config.json`, else none (reference-free).
        beta (`float`, *optional*):
            Implicit PRMs: the reward scale. Default: the one recorded in the PRM's `prm_config.json`
            ([`~trl_erprm.ImplicitPRMTrainer`] writes it), else `0.05`.
        implicit_value (`str`, *optional*, defaults to `"q"`):
            Implicit PRMs: step value, `"q"` or `"step_reward"`.
        prm_batch_size (`int`, *optional*, defaults to `8`):
            Solutions per PRM forward pass.
        max_length (`int`, *optional*):
            Maximum PRM tokens per solution.
        dtype (`str`, *optional*, defaults to `"float32"`):
            PRM weights dtype.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Whether to run model code from the Hub.
        methods (`list[str]`, *optional*, defaults to `["beam_search", "dvts", "best_of_n"]`):
            Methods to run; `best_of_n` also gives the majority vote.
        n_values (`list[int]`, *optional*, defaults to `[4, 16, 64]`):
            Values of N (samples per iteration for search, candidates for Best-of-N); multiples of `beam_width`.
        beam_width (`int`, *optional*, defaults to `4`):
            `M`: samples per kept beam (beam search keeps `N // M` beams; DVTS runs `N // M` subtrees).
        max_steps (`int`, *optional*, defaults to `40`):
            Maximum search iterations; the last one samples each beam to the end of its solution.
        aggregation (`str`, *optional*, defaults to `"last"`):
            How step scores become a solution's score, for pruning and for the final choice (`STEP_AGGREGATIONS`).
        finish_on_answer (`bool`, *optional*, defaults to `True`):
            End a beam whose new step holds a final answer (`\\boxed{}` or "The answer is").
        num_seeds (`int`, *optional*, defaults to `3`):
            Independent repetitions of every method; the table shows their mean and standard deviation.
        vote_weight (`str`, *optional*, defaults to `"auto"`):
            Weight of a candidate in the `_weighted` curves (`evaluation.metrics.VOTE_WEIGHTS`): `"score"` (its
            aggregated score, a probability), `"sigmoid"` (the sigmoid of an implicit PRM's value) or `"auto"`
            (`"sigmoid"` for an implicit PRM, explicit or recorded in its `prm_config.json`, else `"score"`). A
            negative weight is an error.
        seed (`int`, *optional*, defaults to `0`):
            Base seed of every sample.
        grading_num_workers (`int`, *optional*, defaults to `1`):
            Grader worker processes.
        grading_timeout (`float`, *optional*, defaults to `5.0`):
            Seconds allowed to grade one answer.
        chunk_size (`int`, *optional*, defaults to `8`):
            Problems searched (and written) together.
        output_dir (`str`, *optional*, defaults to `"search_eval"`):
            Folder of the per-problem results and the reports.
        overwrite (`bool`, *optional*, defaults to `False`):
            Delete a different run's results found in `output_dir`.
        plot (`bool`, *optional*, defaults to `True`):
            Write `accuracy_vs_n.png` and `accuracy_vs_tokens.png`.
    """

    dataset_name: str = field(metadata={"help": "Hub id, data file or save_to_disk folder of the problems."})
    generator_model: str = field(metadata={"help": "The policy that generates steps (folder or Hub id)."})
    prm_model: str = field(metadata={"help": "The PRM (folder or Hub id)."})
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration."})
    dataset_split: str | None = field(
        default=None, metadata={"help": "Split to evaluate (default: the only split; a local data file's is 'train')."}
    )
    max_problems: int | None = field(default=None, metadata={"help": "Evaluate only the first problems."})
    prompt_column: str = field(default="prompt", metadata={"help": "Column of the problem text."})
    gold_column: str = field(default="gold_answer", metadata={"help": "Column of the gold answer."})
    generation_backend: str = field(
        default="transformers", metadata={"help": "'transformers', 'vllm' or 'vllm_server'."}
    )
    vllm_server_url: str = field(default="http://127.0.0.1:8000", metadata={"help": "URL of a trl vllm-serve."})
    vllm_gpu_memory_utilization: float = field(default=0.5, metadata={"help": "GPU memory share of vLLM."})
    vllm_max_model_len: int | None = field(default=None, metadata={"help": "vLLM context length."})
    temperature: float = field(default=0.8, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling."})
    max_step_tokens: int = field(default=256, metadata={"help": "Maximum tokens of one step."})
    max_new_tokens: int = field(default=1024, metadata={"help": "Maximum tokens of a whole solution."})
    use_chat_template: bool = field(default=False, metadata={"help": "Use the generator's chat template."})
    prompt_suffix: str = field(default="", metadata={"help": "Text appended to the prompt for generation."})
    generation_batch_size: int = field(default=64, metadata={"help": "Sequences per generate call."})
    step_separator: str = field(default="\n\n", metadata={"help": "Text between the generator's steps."})
    prm_type: str = field(default="auto", metadata={"help": "auto, token_classification, lm_head or implicit."})
    prm_prompt: str = field(default="problem", metadata={"help": "PRM input: 'problem' or 'generator_prompt'."})
    prm_step_separator: str | None = field(
        default=None, metadata={"help": "Separator the PRM was trained with (default: its prm_config.json, else \\n)."}
    )
    step_tag: str | None = field(
        default=None, metadata={"help": "LM-head PRMs: the step tag (default: recorded, ' ки')."}
    )
    good_token: str | None = field(
        default=None, metadata={"help": "LM-head PRMs: the good-step token (default: recorded, +)."}
    )
    bad_token: str | None = field(
        default=None, metadata={"help": "LM-head PRMs: the bad-step token (default: recorded, -)."}
    )
    ref_model: str | None = field(
        default=None,
        metadata={"help": "Implicit PRMs: the reference model (default: its prm_config.json, else reference-free)."},
    )
    beta: float | None = field(
        default=None, metadata={"help": "Implicit PRMs: the reward scale (default: its prm_config.json, else 0.05)."}
    )
    implicit_value: str = field(default="q", metadata={"help": "Implicit PRMs: 'q' or 'step_reward'."})
    prm_batch_size: int = field(default=8, metadata={"help": "Solutions per PRM forward pass."})
    max_length: int | None = field(default=None, metadata={"help": "Maximum PRM tokens per solution."})
    dtype: str = field(default="float32", metadata={"help": "PRM weights dtype."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run model code from the Hub."})
    methods: list[str] = field(
        default_factory=lambda: list(METHODS), metadata={"help": "Methods: beam_search, dvts, best_of_n."}
    )
    n_values: list[int] = field(
        default_factory=lambda: [4, 16, 64], metadata={"help": "Values of N, multiples of beam_width."}
    )
    beam_width: int = field(default=4, metadata={"help": "Samples per kept beam (M)."})
    max_steps: int = field(default=40, metadata={"help": "Maximum search iterations."})
    aggregation: str = field(default="last", metadata={"help": "Step-score aggregation for pruning and choice."})
    finish_on_answer: bool = field(default=True, metadata={"help": "End a beam at a step with a final answer."})
    num_seeds: int = field(default=3, metadata={"help": "Independent repetitions of every method."})
    vote_weight: str = field(
        default="auto",
        metadata={"help": "Weighted vote: 'score', 'sigmoid' (implicit PRM values) or 'auto' (sigmoid if implicit)."},
    )
    seed: int = field(default=0, metadata={"help": "Base seed."})
    grading_num_workers: int = field(default=1, metadata={"help": "Grader worker processes."})
    grading_timeout: float = field(default=5.0, metadata={"help": "Seconds allowed to grade one answer."})
    chunk_size: int = field(default=8, metadata={"help": "Problems searched and written together."})
    output_dir: str = field(default="search_eval", metadata={"help": "Folder of results and reports."})
    overwrite: bool = field(default=False, metadata={"help": "Delete a different run's results in output_dir."})
    plot: bool = field(default=True, metadata={"help": "Write the plots."})

    def __post_init__(self):
        if self.generation_backend not in GENERATION_BACKENDS:
            raise ValueError(
                f"generation_backend must be one of {GENERATION_BACKENDS}, got {self.generation_backend!r}."
            )
        if self.prm_prompt not in PRM_PROMPTS:
            raise ValueError(f"prm_prompt must be one of {PRM_PROMPTS}, got {self.prm_prompt!r}.")
        if self.aggregation not in STEP_AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {sorted(STEP_AGGREGATIONS)}, got {self.aggregation!r}.")
        resolve_vote_weight(self.vote_weight, False)  # an unknown one is an error now, not at report time
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"methods {unknown or '[]'} invalid; choose from {list(METHODS)}.")
        for name in ("num_seeds", "chunk_size", "prm_batch_size", "generation_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        self.n_values = check_n_values(self.n_values, self.beam_width)
        self.params()  # validates the sampling and search limits

    def params(self) -> SearchParams:
        """The search parameters of this configuration.

        Returns:
            [`~trl_erprm.search.SearchParams`]: Separator, sampling, limits and aggregation.
        """
        return SearchParams(
            step_separator=self.step_separator,
            temperature=self.temperature,
            top_p=self.top_p,
            max_step_tokens=self.max_step_tokens,
            max_new_tokens=self.max_new_tokens,
            max_steps=self.max_steps,
            aggregation=self.aggregation,
            finish_on_answer=self.finish_on_answer,
        )

    def job(self) -> dict:
        """The arguments that decide the per-problem results (the resumption identity of a run).

        Returns:
            `dict`: All fields except those that only change speed, reporting or the folder itself.
        """
        skip = {
            "output_dir",
            "overwrite",
            "plot",
            "prm_batch_size",
            "generation_batch_size",
            "grading_num_workers",
            "chunk_size",
            "vote_weight",
            "vllm_server_url",
            "vllm_gpu_memory_utilization",
        }
        return {k: v for k, v in asdict(self).items() if k not in skip}
