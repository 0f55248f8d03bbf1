"""Configuration of [`ERPRMTrainer`]."""

from dataclasses import dataclass, field
from typing import Any

from ._compat import add_dict_fields
from .functional import resolve_eta
from .prm.prm_config import PRMConfig


@add_dict_fields("model_init_kwargs")
@dataclass
class ERPRMConfig(PRMConfig):
    r"""
    Configuration class for [`ERPRMTrainer`], which trains a token-classification PRM on soft (entropy-regularized)
    step labels.

    It extends [`PRMConfig`] (trl-erprm's drop-in for TRL 1.13's) with the fields below; all of [`PRMConfig`]'s fields
    and defaults apply unchanged.

    Parameters:
        eta (`float`, *optional*, defaults to `1.0`):
            Entropy-regularization coefficient used when the dataset stores rollout outcomes (`outcomes_column`)
            instead of, or next to, labels: each step's label is `er_label(outcomes, eta)` computed at batch time.
            `0` gives the soft label (mean), `inf` the hard label (max), `-inf` the pessimistic one (min); in Python
            the names `"soft"`, `"hard"` and `"pessimistic"` are accepted too. Ignored for datasets with labels only.
        outcomes_column (`str`, *optional*, defaults to `"step_outcomes"`):
            Name of the column holding, for each step, the list of graded rewards of its rollouts (as written by
            [`ERPRMLabeler`]).
        label_threshold (`float`, *optional*, defaults to `0.5`):
            Threshold that turns soft labels and predicted probabilities into good/bad decisions for the accuracy,
            precision and recall metrics.
        model_init_kwargs (`dict[str, Any]` or `None`, *optional*, defaults to `None`):
            Keyword arguments for [`~trl_erprm.models.load_model`] (`AutoModelForTokenClassification.from_pretrained`)
            when the trainer is given a model id or path instead of a model (e.g. `{"dtype": "bfloat16"}`; the dtype
            defaults to the checkpoint's). `num_labels=2` and safetensors-only loading are set for you;
            `trust_remote_code` stays off unless you set it here.
    """

    eta: float = field(
        default=1.0,
        metadata={
            "help": "Entropy-regularization coefficient for datasets with rollout outcomes: 0 = soft (mean), "
            "inf = hard (max), -inf = pessimistic (min)."
        },
    )
    outcomes_column: str = field(
        default="step_outcomes",
        metadata={"help": "Column with the graded rollout rewards of each step (list of lists)."},
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
        if not 0.0 < self.label_threshold < 1.0:
            raise ValueError(f"label_threshold must be in (0, 1), got {self.label_threshold}.")
        super().__post_init__()
