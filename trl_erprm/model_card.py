"""Model cards of trl-erprm's PRM trainers: what the PRM is, what it was trained from, and how to score steps with it.

TRL's cards are written for chat models (a text-generation quick start, a Hub link built from whatever the base model
and dataset names are). A PRM needs a different card: the base model and the data named honestly (a Hub link only for
a Hub id, never a URL built from a local path), how the PRM reads steps, a scoring snippet that runs against the
saved folder, and the paper. [`PRMModelCardMixin`] gives [`~trl_erprm.PRMTrainer`], [`~trl_erprm.ERPRMTrainer`] and
[`~trl_erprm.ImplicitPRMTrainer`] such a `create_model_card`, with the same signature as TRL's; each trainer supplies
its summary and snippets ([`PRMModelCardMixin.card_summary`], [`PRMModelCardMixin.card_snippets`]). The online PRM
of PRIME checkpoints builds its card from the same helpers.
"""

from __future__ import annotations

import os
import re
import textwrap
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .models import save_prm_config


__all__ = [
    "PRMModelCardMixin",
    "TRL_ERPRM_URL",
    "implicit_prm_snippets",
    "is_hub_id",
    "lm_head_snippets",
    "model_source",
    "render_model_card",
    "shown_name",
    "token_classification_snippets",
]

#: The project's home page, linked from every card.
TRL_ERPRM_URL = "https://github.com/trl-erprm/trl-erprm"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_VERSIONS = ("trl-erprm", "trl", "transformers", "torch", "datasets", "tokenizers")


def is_hub_id(name: str | None) -> bool:
    """Whether a model or dataset name is a Hub repository id (`owner/name`) rather than a local path.

    Args:
        name (`str` or `None`):
            The name.

    Returns:
        `bool`: `True` for `owner/name` that is not an existing local path.
    """
    return bool(name) and bool(_HUB_ID.match(name)) and not os.path.exists(name)


def model_source(model) -> str | None:
    """Where a model's weights came from: the Hub id or folder it was loaded from (the base model of a PEFT model).

    Args:
        model ([`~transformers.PreTrainedModel`], `peft.PeftModel` or `None`):
            The model.

    Returns:
        `str` or `None`: The Hub id, the absolute folder (so that a snippet runs from any working directory), or
        `None` for a model built from a configuration.
    """
    if model is None:
        return None
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    name = getattr(getattr(model, "config", None), "name_or_path", None) or None
    return os.path.abspath(name) if name and os.path.isdir(name) else name


def shown_name(name: str | None, kind: str = "model") -> str:
    """A model or dataset name for a card: a Hub link for a Hub id, the name in backticks otherwise.

    Args:
        name (`str` or `None`):
            The name.
        kind (`str`, *optional*, defaults to `"model"`):
            `"model"` or `"dataset"` (the Hub URL differs).

    Returns:
        `str`: Markdown; `"not recorded"` for no name.
    """
    if not name:
        return "not recorded"
    if is_hub_id(name):
        prefix = "datasets/" if kind == "dataset" else ""
        return f"[{name}](https://huggingface.co/{prefix}{name})"
    return f"`{name}`"


def _versions() -> str:
    lines = []
    for package in _VERSIONS:
        try:
            lines.append(f"- {package}: {version(package)}")
        except PackageNotFoundError:
            continue
    return "\n".join(lines)


def render_model_card(
    title: str,
    summary: str,
    facts: list[tuple[str, str]],
    snippets: list[tuple[str, str]],
    citations: list[str],
    metadata: dict,
) -> str:
    """Write a model card: YAML metadata, a summary, a list of facts, the scoring snippets and the citations.

    Args:
        title (`str`):
            The model's name.
        summary (`str`):
            What the model is (a paragraph of markdown).
        facts (`list[tuple[str, str]]`):
            `(name, value)` lines: base model, data, trainer, step format...
        snippets (`list[tuple[str, str]]`):
            `(introduction, python code)` pairs of the "Score steps" section.
        citations (`list[str]`):
            BibTeX entries.
        metadata (`dict`):
            Fields of `huggingface_hub.ModelCardData` (`base_model`, `datasets`, `tags`, `pipeline_tag`...); `None`
            values are left out.

    Returns:
        `str`: The card, markdown with YAML metadata.
    """
    from huggingface_hub import ModelCardData

    data = ModelCardData(**{k: v for k, v in metadata.items() if v is not None})
    parts = ["---", data.to_yaml(), "---", "", f"# Model Card for {title}", "", summary, ""]
    parts += [f"- {name}: {value}" for name, value in facts]
    parts += ["", "## Score steps", ""]
    for intro, code in snippets:
        parts += [intro, "", "```python", code.strip(), "```", ""]
    parts += ["## Framework versions", "", _versions(), "", "## Citations", "", "```bibtex"]
    parts += ["\n\n".join(c.strip() for c in citations), "```", ""]
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------------------------------
# Scoring snippets (each one runs against the saved folder: tests/test_model_cards.py executes them)
# ---------------------------------------------------------------------------------------------------------------------

_PROMPT, _STEPS = "What is 2 + 3?", ["2 + 3 = 5.", "The answer is 5."]


def _scorer_snippet(location: str) -> tuple[str, str]:
    code = f"""\
        from trl_erprm.evaluation.scorers import load_scorer

        scorer = load_scorer({location!r})  # reads how the PRM reads steps from its prm_config.json
        print(scorer.score([{_PROMPT!r}], [{_STEPS!r}]))  # P(good step) for each step
        """
    intro = (
        f"With [trl-erprm]({TRL_ERPRM_URL}) (the scorer behind `trl-erprm bon` and `stepeval`; it takes the steps as "
        "a list and lays them out exactly as in training):"
    )
    return intro, textwrap.dedent(code)


def token_classification_snippets(location: str, step_separator: str, is_adapter: bool = False) -> list:
    """Scoring snippets of a token-classification PRM (TRL's PRMTrainer layout).

    Args:
        location (`str`):
            The PRM's Hub id or folder.
        step_separator (`str`):
            The separator it was trained with.
        is_adapter (`bool`, *optional*, defaults to `False`):
            Whether the folder holds a PEFT adapter (loaded with `peft.AutoPeftModelForTokenClassification`).

    Returns:
        `list[tuple[str, str]]`: `(introduction, code)` pairs: trl-erprm's scorer, then plain transformers.
    """
    if is_adapter:
        load = "from peft import AutoPeftModelForTokenClassification as AutoModelForTokenClassification"
    else:
        load = "from transformers import AutoModelForTokenClassification"
    code = f"""\
        import torch
        {load}
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained({location!r})
        model = AutoModelForTokenClassification.from_pretrained({location!r})
        prompt, steps, separator = {_PROMPT!r}, {_STEPS!r}, {step_separator!r}
        # The training layout: [BOS] prompt, then each step tokenized on its own followed by the separator's tokens.
        ids = [tokenizer.bos_token_id] if tokenizer.bos_token else []
        ids += tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ends = []
        for step in steps:
            ids += tokenizer(step, add_special_tokens=False)["input_ids"]
            ids += tokenizer(separator, add_special_tokens=False)["input_ids"]
            ends.append(len(ids) - 1)  # a step's score is read on the last token of step + separator
        with torch.no_grad():
            probs = model(input_ids=torch.tensor([ids])).logits[0].softmax(-1)[:, 1]
        print(probs[ends].tolist())  # P(good step) for each step
        """
    intro = 'With transformers alone (a forward pass; class 1 is "good step"):'
    return [_scorer_snippet(location), (intro, textwrap.dedent(code))]


def lm_head_snippets(
    location: str,
    step_separator: str,
    step_tag: str,
    good_token: str,
    bad_token: str,
    prompt_separator: str,
    is_adapter: bool = False,
) -> list:
    """Scoring snippets of an LM-head PRM (a causal LM reading two candidate tokens at each step tag).

    Args:
        location (`str`):
            The PRM's Hub id or folder.
        step_separator (`str`):
            The text after each tag, between two steps.
        step_tag (`str`):
            The step tag.
        good_token (`str`):
            The "good step" candidate.
        bad_token (`str`):
            The "bad step" candidate.
        prompt_separator (`str`):
            The text between the prompt and the first step.
        is_adapter (`bool`, *optional*, defaults to `False`):
            Whether the folder holds a PEFT adapter (loaded with `peft.AutoPeftModelForCausalLM`).

    Returns:
        `list[tuple[str, str]]`: `(introduction, code)` pairs: trl-erprm's scorer, then plain transformers.
    """
    if is_adapter:
        load = "from peft import AutoPeftModelForCausalLM as AutoModelForCausalLM"
    else:
        load = "from transformers import AutoModelForCausalLM"
    code = f"""\
        import torch
        {load}
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained({location!r})
        model = AutoModelForCausalLM.from_pretrained({location!r})
        prompt, steps = {_PROMPT!r}, {_STEPS!r}
        tag, separator, prompt_separator = {step_tag!r}, {step_separator!r}, {prompt_separator!r}
        good = tokenizer.encode({good_token!r}, add_special_tokens=False)[0]
        bad = tokenizer.encode({bad_token!r}, add_special_tokens=False)[0]
        # The training layout: prompt + prompt_separator + step_1 + tag + separator + step_2 + tag ...
        text, tag_ends = prompt + prompt_separator, []
        for k, step in enumerate(steps):
            text += step + tag
            tag_ends.append(len(text) - 1)  # the step is scored on the token holding the last character of its tag
            text += separator if k + 1 < len(steps) else ""
        encoded = tokenizer(text, return_offsets_mapping=True)
        spans = encoded["offset_mapping"]
        positions = [max(t for t, (a, b) in enumerate(spans) if b > a and a <= end) for end in tag_ends]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([encoded["input_ids"]])).logits[0, positions]
        print(torch.stack([logits[:, good], logits[:, bad]], -1).softmax(-1)[:, 0].tolist())  # P(good step)
        """
    intro = "With transformers alone (a forward pass; the score is `softmax([l_good, l_bad])[0]` at each tag):"
    return [_scorer_snippet(location), (intro, textwrap.dedent(code))]


def implicit_prm_snippets(location: str, ref_model: str | None, beta: float, step_separator: str = "\n\n") -> list:
    """Scoring snippet of an implicit PRM.

    Args:
        location (`str`):
            The PRM's Hub id or folder.
        ref_model (`str` or `None`):
            The reference: a Hub id or folder, `"adapter"` (the PRM with its adapter disabled), `None`
            (reference-free) or [`~trl_erprm.models.UNKNOWN_REFERENCE`] (an in-memory model: the snippet then raises
            an error asking for the reference).
        beta (`float`):
            The implicit reward scale it was trained with.
        step_separator (`str`, *optional*, defaults to `"\\n\\n"`):
            Where completions are cut into steps.

    Returns:
        `list[tuple[str, str]]`: One `(introduction, code)` pair.
    """
    completion = step_separator.join(["2 + 3 = 5.", "The answer is 5."])
    code = f"""\
        from trl_erprm import ImplicitPRM

        prm = ImplicitPRM({location!r}, ref_model={ref_model!r}, beta={beta}, step_separator={step_separator!r})
        [result] = prm.score_steps([{_PROMPT!r}], [{completion!r}])
        print(result["step_rewards"], result["score"])  # one reward per step; the score aggregates them (min of q)
        """
    intro = (
        f"With [trl-erprm]({TRL_ERPRM_URL}): the process reward of token `t` is `beta * log pi(y_t) / pi_ref(y_t)`, "
        "the reward of a step the sum over its tokens (`ImplicitPRM` also works as a reward function of "
        "`trl.GRPOTrainer`):"
    )
    return [(intro, textwrap.dedent(code))]


class PRMModelCardMixin:
    """`create_model_card` for PRM trainers, with TRL's signature: a card that says what the PRM is, where it comes from
    and how to score steps with it (see the module docstring). Put it before the trainer base class in the bases.

    A trainer supplies [`card_summary`] and [`card_snippets`]; `_tag_names`, `_name` and `_paper` (TRL's model-card
    attributes) give the tags, the trainer's name and the citation. It also supplies [`saved_prm_config`]: how the
    saved PRM is scored, which [`save_model`] writes to `prm_config.json` beside the weights.
    """

    #: Extra citations after the trainer's own paper.
    _extra_citations: tuple[str, ...] = ()
    #: `pipeline_tag` of the card's metadata.
    _pipeline_tag: str | None = None

    def saved_prm_config(self) -> dict | None:
        """How the saved PRM is scored (see [`~trl_erprm.models.save_prm_config`]); `None` writes no file.

        Returns:
            `dict` or `None`: The fields of `prm_config.json`.
        """
        return None

    def save_model(self, output_dir: str | None = None, **kwargs) -> None:
        """Save the model and tokenizer as [`~transformers.Trainer.save_model`] does, plus `prm_config.json`
        ([`saved_prm_config`]), main process only. The scorers
        ([`~trl_erprm.evaluation.scorers.load_scorer`]) read it to score the folder as it was trained, with no flag.
        Checkpoints get it too.

        Args:
            output_dir (`str`, *optional*):
                Folder to save to; defaults to `args.output_dir`.
            **kwargs:
                Passed to [`~transformers.Trainer.save_model`].
        """
        super().save_model(output_dir, **kwargs)
        config = self.saved_prm_config() if self.args.should_save else None
        if config is not None:
            save_prm_config(output_dir or self.args.output_dir, config)

    def card_summary(self) -> tuple[str, list[tuple[str, str]]]:
        """What the PRM is: a summary paragraph and `(name, value)` facts beyond base model, data and trainer.

        Returns:
            `tuple[str, list[tuple[str, str]]]`: The summary and the extra facts.
        """
        return f"A process reward model trained with `{type(self).__name__}`.", []

    def card_snippets(self, location: str) -> list[tuple[str, str]]:
        """How to score steps with the saved PRM.

        Args:
            location (`str`):
                Where the PRM is: its Hub id, or the absolute folder it is saved to.

        Returns:
            `list[tuple[str, str]]`: `(introduction, python code)` pairs.
        """
        return []

    def model_card_location(self) -> str:
        """Where the saved PRM is for the card's snippets: the Hub repository when pushing, else the output folder.

        Returns:
            `str`: A Hub id or an absolute folder.
        """
        hub = getattr(self, "hub_model_id", None) or (self.args.hub_model_id if self.args.push_to_hub else None)
        return hub or os.path.abspath(self.args.output_dir)

    def model_card_text(
        self, model_name: str | None = None, dataset_name: str | None = None, tags: str | list[str] | None = None
    ) -> str:
        """The model card of the trained PRM, as [`create_model_card`] writes it.

        Args:
            model_name (`str`, *optional*):
                The model's name; defaults to the Hub repository's name, else the output folder's name.
            dataset_name (`str`, *optional*):
                The training data: a Hub id (linked) or a local file or folder (named, not linked).
            tags (`str` or `list[str]`, *optional*):
                More tags for the card's metadata.

        Returns:
            `str`: The card.
        """
        location = self.model_card_location()
        if not model_name:
            model_name = (self.args.hub_model_id or "").split("/")[-1] or Path(self.args.output_dir).name
        base = model_source(self.model)
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        tags = list(dict.fromkeys(["trl", "trl-erprm", "process-reward-model", *self._tag_names, *tags]))
        paper = self._paper or {}
        summary, facts = self.card_summary()
        trainer = f"`{type(self).__name__}` ([trl-erprm]({TRL_ERPRM_URL}))"
        if paper.get("id"):
            trainer += f", {self._name}: [{paper['title']}](https://huggingface.co/papers/{paper['id']})"
        facts = [
            ("Base model", shown_name(base) if base else "none recorded (a model built from a configuration)"),
            ("Training data", shown_name(dataset_name, "dataset")),
            ("Trained with", trainer),
            *facts,
        ]
        metadata = {
            "base_model": base if is_hub_id(base) else None,
            "datasets": [dataset_name] if is_hub_id(dataset_name) else None,
            "library_name": "peft" if hasattr(self.model, "get_base_model") else "transformers",
            "pipeline_tag": self._pipeline_tag,
            "tags": tags,
            "model_name": model_name,
        }
        citations = [c for c in (paper.get("citation"), *self._extra_citations) if c]
        return render_model_card(model_name, summary, facts, self.card_snippets(location), citations, metadata)

    def create_model_card(
        self, model_name: str | None = None, dataset_name: str | None = None, tags: str | list[str] | None = None
    ) -> None:
        """Write the PRM's model card to `args.output_dir/README.md` (main process only); TRL's signature.

        Args:
            model_name (`str`, *optional*):
                The model's name; defaults to the Hub repository's name, else the output folder's name.
            dataset_name (`str`, *optional*):
                The training data: a Hub id (linked) or a local file or folder (named, not linked).
            tags (`str` or `list[str]`, *optional*):
                More tags for the card's metadata.
        """
        if not self.is_world_process_zero():
            return
        text = self.model_card_text(model_name, dataset_name, tags)
        os.makedirs(self.args.output_dir, exist_ok=True)
        with open(os.path.join(self.args.output_dir, "README.md"), "w", encoding="utf-8") as f:
            f.write(text)
