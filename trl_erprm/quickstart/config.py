"""Settings of `trl-erprm quickstart`: one dataclass, parsed like every other command (TRL's `TrlParser`)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field


#: Sizes of the default run: fields left at `None` take these (or [`FAST_SETTINGS`] with `--fast`).
DEFAULT_SETTINGS = {
    "policy_steps": 1500,
    "num_train_problems": 256,
    "samples_per_problem": 4,
    "num_rollouts": 8,
    "etas": [0.0, 1.0, 2.0, 5.0, 10.0, math.inf],
    "prm_epochs": 3.0,
    "num_test_problems": 200,
    "num_candidates": 16,
    "num_subset_draws": 10,
    "raft_num_samples": 8,
    "raft_eval_samples": 4,
    "search_problems": 64,
    "search_n_values": [4, 8, 16],
}

#: Toy sizes of `--fast`: every stage runs, in about a minute; the numbers mean nothing.
FAST_SETTINGS = {
    "policy_steps": 300,
    "num_train_problems": 24,
    "samples_per_problem": 2,
    "num_rollouts": 2,
    "etas": [0.0, 2.0, math.inf],
    "prm_epochs": 1.0,
    "num_test_problems": 12,
    "num_candidates": 4,
    "num_subset_draws": 3,
    "raft_num_samples": 2,
    "raft_eval_samples": 1,
    "search_problems": 4,
    "search_n_values": [4, 8],
}

#: RAFT selectors that are not a PRM: the grader's verdict on the final answer, and majority vote.
OTHER_SELECTORS = ("outcome", "majority")


def prm_name(eta: float) -> str:
    """Name of the PRM trained with ER labels of coefficient `eta`: `"soft"` (0), `"hard"` (inf), else `"er<eta>"`.

    Args:
        eta (`float`):
            The coefficient.

    Returns:
        `str`: The name, e.g. `"er2"`.
    """
    return "soft" if eta == 0 else "hard" if math.isinf(eta) else f"er{eta:g}"


@dataclass
class QuickstartConfig:
    r"""Settings of `trl-erprm quickstart`. Sizes left at `None` are those of the default run ([`DEFAULT_SETTINGS`]), or
    of `--fast` ([`FAST_SETTINGS`]); a size given explicitly always wins.

    Args:
        output_dir (`str`, *optional*, defaults to `"erprm-quickstart"`):
            Folder of the results and plots; each seed's labels, PRMs and RAFT runs go to `seed-<seed>/`.
        policy_dir (`str` or `None`, *optional*, defaults to `None`):
            Cache folder of the tiny policies (one per seed and settings). Defaults to [`default_policy_dir`].
        seed (`int`, *optional*, defaults to `0`):
            First seed; seed `s` seeds everything of its run (policy, problems, sampling, rollouts, training).
        seeds (`int`, *optional*, defaults to `1`):
            Number of seeds (`seed`, `seed + 1`, ...): the tables give mean ± std over seeds and each seed's value.
        fast (`bool`, *optional*, defaults to `False`):
            Toy sizes, to check the pipeline end to end in about a minute.
        num_threads (`int`, *optional*, defaults to `1`):
            Torch threads (one is fastest for these tiny models).
        policy_steps (`int` or `None`, *optional*, defaults to `None`):
            Training steps of the tiny policy (1500; `--fast`: 300).
        misconception (`float`, *optional*, defaults to `0.5`):
            Probability that a demonstration of the policy solves a multiplicative step additively (the designed
            error, see [`~trl_erprm.quickstart.task.demonstration_steps`]).
        num_train_problems (`int` or `None`, *optional*, defaults to `None`):
            Training problems: their sampled solutions train the PRMs, and RAFT fine-tunes on them (256; 24).
        samples_per_problem (`int` or `None`, *optional*, defaults to `None`):
            Solutions sampled per training problem for the PRMs (4; 2).
        num_rollouts (`int` or `None`, *optional*, defaults to `None`):
            Monte-Carlo rollouts per step prefix, in ONE labelling job (8; 2).
        etas (`list[float]` or `None`, *optional*, defaults to `None`):
            The eta sweep: one PRM per value, all from the same stored rollout outcomes (`0` soft, `inf` hard;
            `[0, 1, 2, 5, 10, inf]`; `[0, 2, inf]`).
        er_eta (`float` or `str`, *optional*, defaults to `2.0`):
            The ER-PRM of the headline comparisons (one of `etas`; `"soft"` and `"hard"` are accepted).
        head (`str`, *optional*, defaults to `"lm"`):
            PRM convention: `"lm"` (the policy's own LM head reads `" +"` / `" -"` at a step tag) or
            `"token_classification"` (a new 2-label head).
        max_new_tokens (`int`, *optional*, defaults to `96`):
            Longest sampled solution or rollout, in tokens.
        prm_epochs (`float` or `None`, *optional*, defaults to `None`):
            Training epochs of each PRM (3; 1).
        prm_learning_rate (`float`, *optional*, defaults to `1e-3`):
            Learning rate of the PRMs.
        prm_batch_size (`int`, *optional*, defaults to `16`):
            Solutions per PRM training step.
        implicit_beta (`float`, *optional*, defaults to `0.1`):
            `beta` of the implicit PRM (`r = beta * log pi / pi_ref`).
        implicit_learning_rate (`float`, *optional*, defaults to `3e-4`):
            Learning rate of the implicit PRM.
        num_test_problems (`int` or `None`, *optional*, defaults to `None`):
            Held-out problems, whose arithmetic differs from every training problem's (200; 12).
        num_candidates (`int` or `None`, *optional*, defaults to `None`):
            Candidates sampled per held-out problem: the largest N of Best-of-N (16; 4).
        num_subset_draws (`int` or `None`, *optional*, defaults to `None`):
            Random candidate subsets per problem and N (10; 3).
        aggregation (`str`, *optional*, defaults to `"min"`):
            How step scores become a solution's score (`functional.STEP_AGGREGATIONS`), for Best-of-N and RAFT.
        raft_rounds (`int`, *optional*, defaults to `1`):
            RAFT rounds (`0` skips RAFT). Round 1 of every selector uses the same samples; later rounds sample from
            each selector's own policy.
        raft_selectors (`list[str]` or `None`, *optional*, defaults to `None`):
            Who chooses the kept sample of each problem: PRM names (`soft`, `hard`, `er<eta>`, `control`,
            `implicit`) and `outcome` (the final answer is right) or `majority`. Default: soft, ER, hard, outcome,
            majority.
        raft_num_samples (`int` or `None`, *optional*, defaults to `None`):
            Samples per training problem and round (8; 2).
        raft_learning_rate (`float`, *optional*, defaults to `3e-4`):
            Learning rate of RAFT's fine-tuning.
        raft_epochs (`float`, *optional*, defaults to `2.0`):
            Epochs of RAFT's fine-tuning per round.
        raft_eval_samples (`int` or `None`, *optional*, defaults to `None`):
            Samples per held-out problem (temperature 1) when measuring each policy (4; 1).
        search (`bool`, *optional*, defaults to `False`):
            Also compare beam search, DVTS and Best-of-N with the ER-PRM at equal generated tokens.
        search_problems (`int` or `None`, *optional*, defaults to `None`):
            Held-out problems of the search stage (64; 4).
        search_n_values (`list[int]` or `None`, *optional*, defaults to `None`):
            Values of N of the search stage, multiples of `search_beam_width` (`[4, 8, 16]`; `[4, 8]`).
        search_beam_width (`int`, *optional*, defaults to `4`):
            Beam width `M` of the search stage.
        plot (`bool`, *optional*, defaults to `True`):
            Write the PNG plots.
    """

    output_dir: str = field(default="erprm-quickstart", metadata={"help": "Folder of the results and plots."})
    policy_dir: str | None = field(default=None, metadata={"help": "Cache folder of the tiny policies."})
    seed: int = field(default=0, metadata={"help": "First seed."})
    seeds: int = field(default=1, metadata={"help": "Number of seeds (mean ± std over seeds)."})
    fast: bool = field(default=False, metadata={"help": "Toy sizes: check the pipeline end to end in a minute."})
    num_threads: int = field(default=1, metadata={"help": "Torch threads (1 is fastest for tiny models)."})
    policy_steps: int | None = field(default=None, metadata={"help": "Training steps of the policy (1500; fast 300)."})
    misconception: float = field(default=0.5, metadata={"help": "Probability of the designed additive error."})
    num_train_problems: int | None = field(default=None, metadata={"help": "Training problems (256; fast 24)."})
    samples_per_problem: int | None = field(default=None, metadata={"help": "Solutions per training problem (4; 2)."})
    num_rollouts: int | None = field(default=None, metadata={"help": "MC rollouts per step prefix (8; 2)."})
    etas: list[float] | None = field(default=None, metadata={"help": "The eta sweep (0 1 2 5 10 inf; 0 2 inf)."})
    er_eta: str = field(
        default=2.0, metadata={"help": "The ER-PRM of the headline comparisons (a number, soft, hard)."}
    )
    head: str = field(default="lm", metadata={"help": "PRM convention.", "choices": ["lm", "token_classification"]})
    max_new_tokens: int = field(default=96, metadata={"help": "Longest solution or rollout, in tokens."})
    prm_epochs: float | None = field(default=None, metadata={"help": "Training epochs of each PRM (3; 1)."})
    prm_learning_rate: float = field(default=1e-3, metadata={"help": "Learning rate of the PRMs."})
    prm_batch_size: int = field(default=16, metadata={"help": "Solutions per PRM training step."})
    implicit_beta: float = field(default=0.1, metadata={"help": "beta of the implicit PRM."})
    implicit_learning_rate: float = field(default=3e-4, metadata={"help": "Learning rate of the implicit PRM."})
    num_test_problems: int | None = field(default=None, metadata={"help": "Held-out problems (200; 12)."})
    num_candidates: int | None = field(default=None, metadata={"help": "Candidates per held-out problem (16; 4)."})
    num_subset_draws: int | None = field(default=None, metadata={"help": "Candidate subsets per problem, N (10; 3)."})
    aggregation: str = field(default="min", metadata={"help": "Step aggregation of a solution's score."})
    raft_rounds: int = field(default=1, metadata={"help": "RAFT rounds (0 skips RAFT)."})
    raft_selectors: list[str] | None = field(
        default=None,
        metadata={"help": "RAFT selectors: PRM names, outcome, majority (soft er2 hard outcome majority)."},
    )
    raft_num_samples: int | None = field(default=None, metadata={"help": "RAFT samples per problem and round (8; 2)."})
    raft_learning_rate: float = field(default=3e-4, metadata={"help": "Learning rate of RAFT's fine-tuning."})
    raft_epochs: float = field(default=2.0, metadata={"help": "Epochs of RAFT's fine-tuning per round."})
    raft_eval_samples: int | None = field(default=None, metadata={"help": "Samples per held-out problem (4; 1)."})
    search: bool = field(default=False, metadata={"help": "Also compare beam search, DVTS and Best-of-N."})
    search_problems: int | None = field(default=None, metadata={"help": "Problems of the search stage (64; 4)."})
    search_n_values: list[int] | None = field(default=None, metadata={"help": "N of the search stage (4 8 16; 4 8)."})
    search_beam_width: int = field(default=4, metadata={"help": "Beam width of the search stage."})
    plot: bool = field(default=True, metadata={"help": "Write the PNG plots."})

    def __post_init__(self):
        from ..functional import STEP_AGGREGATIONS, resolve_eta

        sizes = FAST_SETTINGS if self.fast else DEFAULT_SETTINGS
        for name, value in sizes.items():
            if getattr(self, name) is None:
                setattr(self, name, list(value) if isinstance(value, list) else value)
        self.etas = [resolve_eta(eta) for eta in self.etas]
        self.er_eta = resolve_eta(self.er_eta)
        if len(set(self.etas)) != len(self.etas) or any(eta < 0 for eta in self.etas):
            raise ValueError(f"etas={self.etas}: give distinct values >= 0 (0 soft, inf hard).")
        if self.er_eta not in self.etas:
            raise ValueError(f"er_eta={self.er_eta} is not in etas={self.etas}: add it or choose one of them.")
        if self.aggregation not in STEP_AGGREGATIONS:
            raise ValueError(f"aggregation={self.aggregation!r}: choose one of {sorted(STEP_AGGREGATIONS)}.")
        if self.head not in ("lm", "token_classification"):
            raise ValueError(f"head={self.head!r}: choose 'lm' or 'token_classification'.")
        if self.raft_selectors is None:
            names = ["soft", prm_name(self.er_eta), "hard", *OTHER_SELECTORS]
            self.raft_selectors = [n for n in dict.fromkeys(names) if n in OTHER_SELECTORS or n in self._prms()]
        known = [*self._prms(), *OTHER_SELECTORS]
        unknown = [s for s in self.raft_selectors if s not in known]
        if unknown or len(set(self.raft_selectors)) != len(self.raft_selectors):
            raise ValueError(f"raft_selectors={self.raft_selectors}: give distinct names among {known}.")
        counts = ("seeds", "num_threads", "policy_steps", "num_train_problems", "samples_per_problem", "num_rollouts")
        counts += ("max_new_tokens", "prm_batch_size", "num_test_problems", "num_candidates", "num_subset_draws")
        counts += ("raft_num_samples", "raft_eval_samples", "search_problems", "search_beam_width")
        for name in counts:
            if getattr(self, name) < 1:
                raise ValueError(f"QuickstartConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if self.raft_rounds < 0:
            raise ValueError(f"QuickstartConfig.raft_rounds must be >= 0, got {self.raft_rounds}.")
        positive = ("prm_epochs", "prm_learning_rate", "implicit_beta", "implicit_learning_rate")
        for name in (*positive, "raft_learning_rate", "raft_epochs"):
            if not getattr(self, name) > 0:
                raise ValueError(f"QuickstartConfig.{name} must be > 0, got {getattr(self, name)}.")
        if not 0.0 <= self.misconception <= 1.0:
            raise ValueError(f"misconception must be a probability in [0, 1], got {self.misconception}.")
        if self.search and (not self.search_n_values or any(n % self.search_beam_width for n in self.search_n_values)):
            raise ValueError(
                f"search_n_values={self.search_n_values} must be multiples of search_beam_width={self.search_beam_width}."
            )

    def _prms(self) -> list[str]:
        return [*map(prm_name, self.etas), "control", "implicit"]

    @property
    def seed_list(self) -> list[int]:
        """`list[int]`: The seeds of the run: `seed, seed + 1, ..., seed + seeds - 1`."""
        return [self.seed + k for k in range(self.seeds)]


def quickstart_config(fast: bool = False, **overrides) -> QuickstartConfig:
    """Build a [`QuickstartConfig`]: the default sizes, or [`FAST_SETTINGS`] with `fast`, then `overrides`.

    Args:
        fast (`bool`, *optional*, defaults to `False`):
            Start from the toy sizes.
        **overrides:
            Fields of [`QuickstartConfig`].

    Returns:
        [`QuickstartConfig`]: The settings.
    """
    return QuickstartConfig(fast=fast, **overrides)


def default_policy_dir() -> str:
    """Cache folder of the quickstart policy: `$TRL_ERPRM_CACHE/quickstart`, else `$XDG_CACHE_HOME/trl-erprm/quickstart`,
    else `~/.cache/trl-erprm/quickstart`.

    Returns:
        `str`: The folder (not created).
    """
    if os.environ.get("TRL_ERPRM_CACHE"):
        return os.path.join(os.environ["TRL_ERPRM_CACHE"], "quickstart")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "trl-erprm", "quickstart")


def make_quickstart_parser():
    """The parser of `trl-erprm quickstart` ([`~trl_erprm.script_utils.make_parser`] over [`QuickstartConfig`]).

    Returns:
        `trl.TrlParser`: The parser.
    """
    from ..script_utils import make_parser

    return make_parser(
        (QuickstartConfig,),
        description="The ER-PRM experiment end to end, offline, on a CPU: a tiny policy with a designed misconception, "
        "one Monte-Carlo labelling job, an eta sweep of PRMs, Best-of-N against voting, RAFT with each PRM, over "
        "--seeds seeds.",
    )
