"""Configuration of [`ERPRMTrainer`]."""

from dataclasses import dataclass, field
from typing import Any

from ._compat import add_dict_fields
from .functional import resolve_eta
from .prm.prm_config import PRMConfig


#: PRM conventions of [`ERPRMTrainer`] (`ERPRMConfig.head`).
ERPRM_HEADS = ("token_classification", "lm")


@add_dict_fields("model_init_kwargs")
@dataclass
class ERPRMConfig(PRMConfig):
    r"""
    Configuration class for [`ERPRMTrainer`], which trains a PRM on soft (entropy-regularized) step labels, with a
    token-classification head or an LM head.

    It extends [`PRMConfig`] (trl-erprm's drop-in for TRL 1.13's) with the fields below; all of [`PRMConfig`]'s fields
    and defaults apply unchanged (`step_separator`, the text that ends a step, also for `head="lm"`: it follows each
    tag).

    Parameters:
        > Parameters that control the PRM's head

        head (`str`, *optional*, defaults to `"token_classification"`):
            The PRM convention. `"token_classification"`: an `AutoModelForTokenClassification` with 2 labels, TRL's
            layout (each step followed by `step_separator`, its label on the last token of step + separator).
            `"lm"`: an `AutoModelForCausalLM` that reads the logits of `good_token` and `bad_token` at the step tag
            after every step (Math-Shepherd, ER-PRM, RLHFlow); it can start from a policy's own LM head.
        step_tag (`str`, *optional*, defaults to `" ки"`):
            `head="lm"`: the tag written after every step (Math-Shepherd's). Mind the leading space: `"ки"` and
            `" ки"` are different tokens in most tokenizers; the tag is located by its characters, so a tag the
            tokenizer merges with its neighbours (`"7ки"`) is still found.
        good_token (`str`, *optional*, defaults to `"+"`):
            `head="lm"`: the candidate token meaning "good step"; must be one token. ER-PRM's reference code uses
            `" +"` (with a space).
        bad_token (`str`, *optional*, defaults to `"-"`):
            `head="lm"`: the candidate token meaning "bad step"; must be one token (ER-PRM's code: `" -"`).
        prompt_separator (`str`, *optional*, defaults to `" "`):
            `head="lm"`: the text between the prompt and the first step (Math-Shepherd: a space).

        > Parameters that control the labels

        eta (`float` or `str`, *optional*, defaults to `1.0`):
            Entropy-regularization coefficient used when the dataset stores rollout outcomes (`outcomes_column`)
            instead of, or next to, labels: each step's label is `er_label(outcomes, eta)` computed at batch time.
            `0` gives the soft label (mean), `inf` the hard label (max), `-inf` the pessimistic one (min); the names
            `"soft"`, `"hard"` and `"pessimistic"` are accepted too, also on the command line. Ignored for datasets
            with labels only.
        outcomes_column (`str`, *optional*, defaults to `"step_outcomes"`):
            Name of the column holding, for each step, the list of graded rewards of its rollouts (as written by
            [`ERPRMLabeler`]); rewards must lie in [0, 1].
        skip_failed_rows (`bool`, *optional*, defaults to `False`):
            Drop the rows whose `status` column is not `"ok"` (rows [`ERPRMLabeler`] could not label, whose labels are
            `None`), with a warning giving the count per status. By default such rows raise an error naming their
            status.
        label_threshold (`float`, *optional*, defaults to `0.5`):
            Threshold that turns soft labels and predicted probabilities into good/bad decisions for the accuracy,
            precision and recall metrics.
        model_init_kwargs (`dict[str, Any]` or `None`, *optional*, defaults to `None`):
            Keyword arguments for [`~trl_erprm.models.load_model`] when the trainer is given a model id or path
            instead of a model (e.g. `{"dtype": "bfloat16"}`; the dtype defaults to the checkpoint's). For
            `head="token_classification"`, `num_labels=2` is set for you; weights load from safetensors only and
            `trust_remote_code` stays off unless you set it here.
    """

    head: str = field(
        default="token_classification",
        metadata={"help": "PRM convention: token_classification or lm.", "choices": list(ERPRM_HEADS)},
    )
    step_tag: str = field(default=" ки", metadata={"help": "head=lm: the tag after every step (' ки' != 'ки')."})
    good_token: str = field(default="+", metadata={"help": "head=lm: the single-token 'good step' candidate."})
    bad_token: str = field(default="-", metadata={"help": "head=lm: the single-token 'bad step' candidate."})
    prompt_separator: str = field(default=" ", metadata={"help": "head=lm: text between the prompt and step 1."})
    eta: str = field(
        default=1.0,
        metadata={
            "help": "Entropy-regularization coefficient for datasets with rollout outcomes: a number, 'soft' (0), "
            "'hard' or inf, 'pessimistic' or -inf."
        },
    )
    outcomes_column: str = field(
        default="step_outcomes",
        metadata={"help": "Column with the graded rollout rewards of each step (list of lists)."},
    )
    skip_failed_rows: bool = field(
        default=False, metadata={"help": "Drop rows whose `status` is not 'ok' instead of raising an error."}
    )
    label_threshold: float = field(
        default=0.5, metadata={"help": "Threshold on labels and probabilities for accuracy/precision/recall."}
    )
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "Keyword arguments for from_pretrained when the model is given as a path or Hub id."},
    )

    def __post_init__(self):
        self.eta = resolve_eta(self.eta)
        if self.head not in ERPRM_HEADS:
            raise ValueError(f"head must be one of {ERPRM_HEADS}, got {self.head!r}.")
        if self.head == "lm":
            if not isinstance(self.step_tag, str) or not self.step_tag.strip():
                raise ValueError(f"head='lm' needs a step_tag such as ' ки', got {self.step_tag!r}.")
            if self.good_token == self.bad_token:
                raise ValueError(f"good_token and bad_token must differ, both are {self.good_token!r}.")
        if not 0.0 < self.label_threshold < 1.0:
            raise ValueError(f"label_threshold must be in (0, 1), got {self.label_threshold}.")
        super().__post_init__()
