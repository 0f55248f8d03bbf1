"""PRM scorers: per-step scores of (prompt, steps) pairs, one interface for three kinds of process reward model.

Every scorer has `score(prompts, steps) -> list[list[float]]`: for each solution, one score per step it could score.
A solution can get fewer scores than it has steps when the sequence is cut at `max_length` (the steps past the cut
are not scored); callers count that.

- [`TokenClassificationScorer`]: `AutoModelForTokenClassification(num_labels=2)` trained with TRL's PRMTrainer or
  [`~trl_erprm.ERPRMTrainer`]. Rows are laid out exactly as in training (TRL 1.13 `PRMTrainer.tokenize_row`: BOS if
  the tokenizer has one, the prompt, then each step tokenized on its own followed by the separator ids); the score of
  a step is `softmax(logits)[1]` at the last token of step + separator.
- [`LMHeadScorer`]: a causal LM that reads two candidate tokens at a step tag (Math-Shepherd, ER-PRM, RLHFlow style).
  The text is `prompt + prompt_separator + StepFormat(step_separator, tag=step_tag).join(steps)` (`step_1 + step_tag +
  step_separator + step_2 + step_tag ...`), tokenized in one piece; the tag of each step is found through the offset
  mapping ([`~trl_erprm.steps.locate_chars`], so a tag that merges with its neighbours is still found), and the score
  is `softmax([l_good, l_bad])[0]` there ([`~trl_erprm.functional.two_token_step_scores`]).
- [`ImplicitPRMScorer`]: an [`~trl_erprm.ImplicitPRM`]; the given steps are scored with `score_steps` (`q` at step
  ends by default, or the step rewards), each given step being one step even if it contains the separator.

Every scorer reads steps through [`~trl_erprm.steps.StepFormat`]: `step_separator` is the text that ends a step.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from ..data.lm_head import lm_head_candidate_ids, tokenize_lm_head_row
from ..data.stepwise import tokenize_stepwise_row
from ..functional import two_token_step_scores
from ..steps import StepFormat


logger = logging.getLogger(__name__)

#: PRM kinds accepted by [`load_scorer`].
PRM_TYPES = ("auto", "token_classification", "lm_head", "implicit")


def _batches(order: list[int], batch_size: int, desc: str, total: int):
    show = total > 4 * batch_size
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not show, unit="batch"):
        yield order[start : start + batch_size]


def _pad_forward(model, sequences: list[list[int]], pad_token_id: int) -> torch.Tensor:
    """Right-padded forward pass; returns the logits `(B, T, C)` in float32."""
    device = next(model.parameters()).device
    length = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for b, seq in enumerate(sequences):
        input_ids[b, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[b, : len(seq)] = 1
    with torch.no_grad():
        out = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device))
    return out.logits.float()


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return 0 if pad is None else int(pad)


def _check_inputs(prompts: Sequence[str], steps: Sequence[Sequence[str]]) -> None:
    if len(prompts) != len(steps):
        raise ValueError(
            f"score() got {len(prompts)} prompts but {len(steps)} step lists: pass one prompt per solution."
        )
    for i, (prompt, row) in enumerate(zip(prompts, steps)):
        if not isinstance(prompt, str):
            raise ValueError(f"Solution {i}: the prompt must be a string, got {type(prompt).__name__}.")
        if isinstance(row, str) or not all(isinstance(s, str) for s in row):
            raise ValueError(f"Solution {i}: steps must be a list of strings (split the solution with split_steps).")


class TokenClassificationScorer:
    """Per-step scores from a token-classification PRM (TRL PRMTrainer / ERPRMTrainer format).

    Args:
        model ([`~transformers.PreTrainedModel`]):
            An `AutoModelForTokenClassification` with 2 labels (class 1 = "the step is good").
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            Its tokenizer.
        step_separator (`str`, *optional*, defaults to `"\\n"`):
            The separator the PRM was trained with (`PRMConfig.step_separator`), appended to every step.
        batch_size (`int`, *optional*, defaults to `8`):
            Solutions per forward pass.
        max_length (`int`, *optional*):
            Maximum prompt + completion tokens (the training `max_length`); steps past it get no score.
    """

    def __init__(
        self, model, tokenizer, step_separator: str = "\n", batch_size: int = 8, max_length: int | None = None
    ):
        if getattr(model.config, "num_labels", 2) != 2:
            raise ValueError(f"A token-classification PRM needs num_labels=2, got {model.config.num_labels}.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.step_separator = step_separator
        self.batch_size = batch_size
        self.max_length = max_length

    def layout(self, prompt: str, steps: Sequence[str]) -> tuple[list[int], list[int]]:
        """Token ids of one solution and the position of the last token of each scored step + separator.

        Args:
            prompt (`str`):
                The problem.
            steps (`Sequence[str]`):
                The solution's steps.

        Returns:
            `tuple[list[int], list[int]]`: The input ids and, per scored step in order, its label position.
        """
        features = {"prompt": prompt, "completions": list(steps), "labels": [1.0] * len(steps)}
        input_ids, labels, _ = tokenize_stepwise_row(
            features, self.tokenizer, self.step_separator, self.max_length, None, False, True, label_type=float
        )
        return input_ids, [t for t, label in enumerate(labels) if label != -100]

    def score(self, prompts: Sequence[str], steps: Sequence[Sequence[str]]) -> list[list[float]]:
        """Score every step of every solution.

        Args:
            prompts (`Sequence[str]`):
                One prompt per solution.
            steps (`Sequence[Sequence[str]]`):
                The steps of each solution.

        Returns:
            `list[list[float]]`: Per solution, `softmax(logits)[1]` at each scored step's label position.
        """
        _check_inputs(prompts, steps)
        layouts = [self.layout(p, s) for p, s in zip(prompts, steps)]
        out: list[list[float]] = [[] for _ in layouts]
        order = sorted((i for i, (_, ends) in enumerate(layouts) if ends), key=lambda i: len(layouts[i][0]))
        for chunk in _batches(order, self.batch_size, "PRM scoring", len(order)):
            logits = _pad_forward(self.model, [layouts[i][0] for i in chunk], _pad_id(self.tokenizer))
            probs = logits.softmax(-1)[..., 1]
            for b, i in enumerate(chunk):
                out[i] = probs[b, layouts[i][1]].tolist()
        return out


class LMHeadScorer:
    """Per-step scores from a causal LM that reads a "good" and a "bad" token at each step tag (Math-Shepherd style).

    Args:
        model ([`~transformers.PreTrainedModel`]):
            An `AutoModelForCausalLM`.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            Its fast tokenizer (offset mappings are needed).
        step_tag (`str`, *optional*, defaults to `" ки"`):
            The tag written after every step ([`~trl_erprm.steps.StepFormat`] `tag`). Mind the leading space: `"ки"`
            and `" ки"` are different tokens in many tokenizers; use the tag the PRM was trained with. A warning is
            logged when the token under a tag is not the tag's own token.
        good_token (`str`, *optional*, defaults to `"+"`):
            The candidate meaning "good step"; must be one token.
        bad_token (`str`, *optional*, defaults to `"-"`):
            The candidate meaning "bad step"; must be one token.
        prompt_separator (`str`, *optional*, defaults to `" "`):
            Text between the prompt and the first step (Math-Shepherd: a space).
        step_separator (`str`, *optional*, defaults to `"\\n"`):
            The text that ends a step, after its tag (between a tag and the next step).
        batch_size (`int`, *optional*, defaults to `8`):
            Solutions per forward pass.
        max_length (`int`, *optional*):
            Maximum tokens; steps whose tag lies past it get no score.
    """

    def __init__(
        self,
        model,
        tokenizer,
        step_tag: str = " ки",
        good_token: str = "+",
        bad_token: str = "-",
        prompt_separator: str = " ",
        step_separator: str = "\n",
        batch_size: int = 8,
        max_length: int | None = None,
    ):
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("LMHeadScorer needs a fast tokenizer (it locates step tags with offset mappings).")
        if not step_tag:
            raise ValueError("step_tag must be a non-empty string such as ' ки'.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.step_tag = step_tag
        self.good_token_id, self.bad_token_id = lm_head_candidate_ids(tokenizer, good_token, bad_token)
        self.tag_token_id = tokenizer.encode(step_tag, add_special_tokens=False)[-1]
        self.prompt_separator = prompt_separator
        self.step_separator = step_separator
        self.step_format = StepFormat(step_separator, tag=step_tag)
        self.batch_size = batch_size
        self.max_length = max_length
        self.tag_mismatches = 0

    def layout(self, prompt: str, steps: Sequence[str]) -> tuple[list[int], list[int]]:
        """Token ids of one solution and the position of each scored step's tag.

        Args:
            prompt (`str`):
                The problem.
            steps (`Sequence[str]`):
                The solution's steps.

        Returns:
            `tuple[list[int], list[int]]`: The input ids and, per scored step in order, the (last) token holding the
            last character of its tag.
        """
        features = {"prompt": prompt, "completions": list(steps), "labels": [1.0] * len(steps)}
        ids, labels, _ = tokenize_lm_head_row(
            features, self.tokenizer, self.step_format, self.prompt_separator, self.max_length
        )
        positions = [t for t, label in enumerate(labels) if label != -100]
        mismatched = sum(ids[p] != self.tag_token_id for p in positions)
        if mismatched and not self.tag_mismatches:
            logger.warning(
                "The token under a step tag is not the tag's own token (%r is token %d): the tag merged with its "
                "neighbours. Check step_tag (' ки' and 'ки' differ) and step_separator against the PRM's training data.",
                self.step_tag,
                self.tag_token_id,
            )
        self.tag_mismatches += mismatched
        return ids, positions

    def score(self, prompts: Sequence[str], steps: Sequence[Sequence[str]]) -> list[list[float]]:
        """Score every step of every solution.

        Args:
            prompts (`Sequence[str]`):
                One prompt per solution.
            steps (`Sequence[Sequence[str]]`):
                The steps of each solution.

        Returns:
            `list[list[float]]`: Per solution, `softmax([l_good, l_bad])[0]` at each scored step's tag.
        """
        _check_inputs(prompts, steps)
        layouts = [self.layout(p, s) if s else ([], []) for p, s in zip(prompts, steps)]
        out: list[list[float]] = [[] for _ in layouts]
        order = sorted((i for i, (_, ends) in enumerate(layouts) if ends), key=lambda i: len(layouts[i][0]))
        for chunk in _batches(order, self.batch_size, "PRM scoring", len(order)):
            logits = _pad_forward(self.model, [layouts[i][0] for i in chunk], _pad_id(self.tokenizer))
            for b, i in enumerate(chunk):
                at_tags = logits[b, layouts[i][1]]
                out[i] = two_token_step_scores(at_tags, self.good_token_id, self.bad_token_id).tolist()
        return out


class ImplicitPRMScorer:
    """Per-step values from an [`~trl_erprm.ImplicitPRM`].

    The steps are given to `ImplicitPRM.score_steps` as they are: they are joined with the PRM's `step_separator` and
    each one ends where it was joined (a step that contains the separator stays one step), so the values are those of
    `ImplicitPRM` on the joined text whenever no step contains the separator.

    Args:
        prm ([`~trl_erprm.ImplicitPRM`]):
            The implicit PRM.
        value (`str`, *optional*, defaults to `"q"`):
            `"q"`: the implicit Q value at each step end (its minimum is the reference Best-of-N score);
            `"step_reward"`: `q(end_k) - q(end_{k-1})`. Neither is a probability: choose step-evaluation thresholds
            on a held-out split, and read weighted-majority results with care.
    """

    VALUES = {"q": "q_at_step_ends", "step_reward": "step_rewards"}

    def __init__(self, prm, value: str = "q"):
        if value not in self.VALUES:
            raise ValueError(f"value must be one of {sorted(self.VALUES)}, got {value!r}.")
        if not getattr(prm, "step_separator", None):
            raise ValueError(
                "ImplicitPRMScorer needs an ImplicitPRM with a step_separator (steps are joined with it)."
            )
        self.prm = prm
        self.value = value

    def score(self, prompts: Sequence[str], steps: Sequence[Sequence[str]]) -> list[list[float]]:
        """Score every step of every solution.

        Args:
            prompts (`Sequence[str]`):
                One prompt per solution.
            steps (`Sequence[Sequence[str]]`):
                The steps of each solution.

        Returns:
            `list[list[float]]`: Per solution, the chosen value at each step end (empty for a solution without steps).
        """
        _check_inputs(prompts, steps)
        keep = [i for i, s in enumerate(steps) if s]
        out: list[list[float]] = [[] for _ in steps]
        if keep:
            results = self.prm.score_steps([prompts[i] for i in keep], [list(steps[i]) for i in keep])
            for i, result in zip(keep, results):
                out[i] = [float(v) for v in result[self.VALUES[self.value]]]
        return out


#: Values used when neither the caller nor the PRM's `prm_config.json` gives them (Math-Shepherd's LM-head convention;
#: for an implicit PRM, the default `beta` and no reference).
SCORER_DEFAULTS = {
    "step_separator": "\n",
    "step_tag": " ки",
    "good_token": "+",
    "bad_token": "-",
    "prompt_separator": " ",
    "beta": 0.05,
    "ref_model": None,
}

#: `prm_type` of each head recorded in `prm_config.json` (the heads of [`~trl_erprm.models.PRM_HEADS`]).
_TYPE_OF_HEAD = {"token_classification": "token_classification", "lm": "lm_head", "implicit": "implicit"}


def resolve_prm_type(
    model_name_or_path: str, prm_type: str = "auto", trust_remote_code: bool = False
) -> tuple[str, dict | None]:
    """The kind of PRM [`load_scorer`] builds, and the `prm_config.json` it reads the step format from.

    Args:
        model_name_or_path (`str`):
            The PRM's folder or Hub id.
        prm_type (`str`, *optional*, defaults to `"auto"`):
            One of [`PRM_TYPES`]. `"auto"` takes the head recorded in `prm_config.json` (`"implicit"` for a PRM saved
            by [`~trl_erprm.ImplicitPRMTrainer`]); without the file, `"token_classification"` when the config's
            architecture is a `...ForTokenClassification`, else `"lm_head"`.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Whether to run configuration code from the Hub (only read without `prm_config.json`).

    Returns:
        `tuple[str, dict | None]`: The PRM type (never `"auto"`), and the recorded fields when the recorded head is
        that type (`None` otherwise: a recorded head that contradicts an explicit `prm_type` is not used).

    Raises:
        `ValueError`: For an unknown `prm_type`, or an invalid `prm_config.json`.
    """
    from ..models import load_config, load_prm_config

    if prm_type not in PRM_TYPES:
        raise ValueError(f"prm_type must be one of {PRM_TYPES}, got {prm_type!r}.")
    recorded = load_prm_config(model_name_or_path)
    if prm_type == "auto":
        if recorded is not None:
            prm_type = _TYPE_OF_HEAD[recorded["head"]]
        else:
            config = load_config(model_name_or_path, trust_remote_code=trust_remote_code)
            architectures = getattr(config, "architectures", None) or []
            is_token_cls = any(a.endswith("ForTokenClassification") for a in architectures)
            prm_type = "token_classification" if is_token_cls else "lm_head"
    if recorded is not None and _TYPE_OF_HEAD[recorded["head"]] != prm_type:
        recorded = None
    return prm_type, recorded


def is_implicit_prm(
    model_name_or_path: str | None, prm_type: str = "auto", scorer=None, trust_remote_code: bool = False
) -> bool:
    """Whether a run's step scores are an implicit PRM's values (unbounded: they vote with their sigmoid).

    Args:
        model_name_or_path (`str` or `None`):
            The PRM's folder or Hub id; `None` when the scores were given (then only an explicit `prm_type` says).
        prm_type (`str`, *optional*, defaults to `"auto"`):
            The run's `prm_type`; `"auto"` is resolved as [`load_scorer`] does ([`resolve_prm_type`]).
        scorer (*optional*):
            The scorer the run used, when it has one: with `"auto"`, an [`ImplicitPRMScorer`] is implicit.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Whether to run configuration code from the Hub.

    Returns:
        `bool`: `True` for an implicit PRM.
    """
    if prm_type != "auto":
        return prm_type == "implicit"
    if scorer is not None:
        return isinstance(scorer, ImplicitPRMScorer)
    if model_name_or_path is None:
        return False
    return resolve_prm_type(model_name_or_path, prm_type, trust_remote_code)[0] == "implicit"


def _check_recorded_reference(model_name_or_path: str, reference: str | None) -> None:
    """A reference folder recorded in `prm_config.json` that is not here (moved, deleted, or written on another
    machine) is an error naming the file, the field and the fix."""
    from ..models import PRM_CONFIG_NAME, UNKNOWN_REFERENCE, check_model_path

    if reference is None or reference in ("adapter", UNKNOWN_REFERENCE):
        return
    try:
        check_model_path(reference)
    except OSError as error:
        raise ValueError(
            f"{os.path.join(model_name_or_path, PRM_CONFIG_NAME)} records the reference ref_model={reference!r}, "
            f"which cannot be loaded here ({error}). Pass the reference's folder or Hub id: load_scorer(..., "
            "ref_model=...), --ref_model on the command line."
        ) from error


def load_scorer(
    model_name_or_path: str,
    prm_type: str = "auto",
    step_separator: str | None = None,
    step_tag: str | None = None,
    good_token: str | None = None,
    bad_token: str | None = None,
    ref_model: str | None = None,
    beta: float | None = None,
    implicit_value: str = "q",
    batch_size: int = 8,
    max_length: int | None = None,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    prompt_separator: str | None = None,
    device: str | None = None,
):
    """Load a PRM from a folder or Hub id and wrap it in the matching scorer.

    A PRM saved by a trl-erprm trainer records how it reads steps in `prm_config.json`
    ([`~trl_erprm.models.load_prm_config`]): its head, step separator and, for an LM head, its step tag, candidate tokens
    and prompt separator; for an implicit PRM ([`~trl_erprm.ImplicitPRMTrainer`]), its `beta` and reference. They are
    used for every argument left at `None`, so `load_scorer(folder)` needs no flag; an argument given explicitly always
    wins. Without the file (or when it records another head than an explicit `prm_type`), `"auto"` reads the
    architecture and the defaults of [`SCORER_DEFAULTS`] apply (Math-Shepherd's convention; `beta=0.05` and no
    reference for an implicit PRM).

    Args:
        model_name_or_path (`str`):
            The PRM (safetensors weights only).
        prm_type (`str`, *optional*, defaults to `"auto"`):
            One of [`PRM_TYPES`]. `"auto"` takes the head recorded in `prm_config.json`, else picks
            `"token_classification"` when the config's architecture is a `...ForTokenClassification`, else
            `"lm_head"` (see [`resolve_prm_type`]): an implicit PRM without `prm_config.json` must be asked for.
        step_separator (`str`, *optional*):
            The text that ends a step ([`~trl_erprm.steps.StepFormat`]), as the PRM was trained with: appended to
            every step (token classification), written after every tag (LM head), or where a completion is cut into
            steps (implicit). `None`: the recorded one, else `"\\n"`.
        step_tag (`str`, *optional*):
            LM head only: the step tag. `None`: the recorded one, else `" ки"`.
        good_token (`str`, *optional*):
            LM head only: the "good" candidate token. `None`: the recorded one, else `"+"`.
        bad_token (`str`, *optional*):
            LM head only: the "bad" candidate token. `None`: the recorded one, else `"-"`.
        ref_model (`str`, *optional*):
            Implicit only: the reference model, a folder or Hub id, or `"adapter"` (a PEFT PRM with its adapter
            disabled). `None`: the recorded one, else none (reference-free).
        beta (`float`, *optional*):
            Implicit only: the implicit reward scale. `None`: the recorded one, else `0.05`.
        implicit_value (`str`, *optional*, defaults to `"q"`):
            Implicit only: `"q"` or `"step_reward"` (see [`ImplicitPRMScorer`]).
        batch_size (`int`, *optional*, defaults to `8`):
            Solutions per forward pass.
        max_length (`int`, *optional*):
            Maximum tokens per solution.
        dtype (`str`, *optional*, defaults to `"float32"`):
            Weights dtype (`"float32"`, `"bfloat16"`, `"float16"` or `"auto"`, see
            [`~trl_erprm.models.resolve_dtype`]).
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Whether to run model code from the Hub.
        prompt_separator (`str`, *optional*):
            LM head only: the text between the prompt and the first step. `None`: the recorded one, else `" "`.
        device (`str`, *optional*):
            Where the PRM runs (`"cpu"`, `"cuda"`, `"cuda:1"`...); the weights are loaded straight onto it. `None`:
            CUDA when available, else the CPU.

    Returns:
        A scorer with `score(prompts, steps)`.

    Raises:
        `ValueError`: For an unknown `prm_type`, an invalid `prm_config.json` (naming the file and the field), or an
            implicit PRM whose recorded reference is unknown ([`~trl_erprm.models.UNKNOWN_REFERENCE`], a reference
            model that was built in memory) or a folder that is not here (moved, or the PRM copied to another
            machine) when no `ref_model` is given.
    """
    from ..models import load_model, load_tokenizer

    prm_type, recorded = resolve_prm_type(model_name_or_path, prm_type, trust_remote_code)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    kwargs = {"dtype": dtype, "trust_remote_code": trust_remote_code, "device_map": {"": torch.device(device)}}
    given = {
        "step_separator": step_separator,
        "step_tag": step_tag,
        "good_token": good_token,
        "bad_token": bad_token,
        "prompt_separator": prompt_separator,
        "beta": beta,
        "ref_model": ref_model,
    }
    if recorded is not None:
        logger.info("%s: step format read from its prm_config.json (%s).", model_name_or_path, recorded)
        given = {key: recorded.get(key) if value is None else value for key, value in given.items()}
    fmt = {key: SCORER_DEFAULTS[key] if value is None else value for key, value in given.items()}
    if prm_type == "implicit":
        from ..implicit_prm import ImplicitPRM

        if ref_model is None and recorded is not None:
            _check_recorded_reference(model_name_or_path, fmt["ref_model"])

        prm = ImplicitPRM(
            model_name_or_path,
            ref_model=fmt["ref_model"],
            beta=fmt["beta"],
            step_separator=fmt["step_separator"],
            batch_size=batch_size,
            max_length=max_length,
            model_init_kwargs={"dtype": dtype, "trust_remote_code": trust_remote_code},
            device=device,
        )
        logger.info("%s: implicit PRM scorer (%r).", model_name_or_path, prm)
        return ImplicitPRMScorer(prm, value=implicit_value)
    tokenizer = load_tokenizer(model_name_or_path, trust_remote_code=trust_remote_code)
    if prm_type == "token_classification":
        model = load_model(model_name_or_path, "token_classification", **kwargs)
        return TokenClassificationScorer(model, tokenizer, fmt["step_separator"], batch_size, max_length)
    model = load_model(model_name_or_path, "causal_lm", **kwargs)
    return LMHeadScorer(
        model,
        tokenizer,
        step_tag=fmt["step_tag"],
        good_token=fmt["good_token"],
        bad_token=fmt["bad_token"],
        prompt_separator=fmt["prompt_separator"],
        step_separator=fmt["step_separator"],
        batch_size=batch_size,
        max_length=max_length,
    )


def has_nan(values: Sequence[float]) -> bool:
    """Whether a list of scores holds a NaN.

    Args:
        values (`Sequence[float]`):
            Scores.

    Returns:
        `bool`: `True` if any value is NaN.
    """
    return any(math.isnan(v) for v in values)
