"""Configuration of [`ImplicitPRMTrainer`]."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._compat import BaseConfig, add_dict_fields, adopt_activation_checkpointing


#: Losses of [`ImplicitPRMTrainer`] by name: the four of the implicit-PRM paper (arXiv:2412.01981).
IMPLICIT_PRM_LOSS_TYPES = ("ce", "dpo", "kto", "nca")
#: The losses that train on (correct, incorrect) pairs of the same prompt (see [`build_dpo_pairs`]).
PAIRWISE_LOSS_TYPES = ("dpo", "nca")


@add_dict_fields("model_init_kwargs")
@dataclass
class ImplicitPRMConfig(BaseConfig):
    r"""
    Configuration class for [`ImplicitPRMTrainer`], which trains an implicit process reward model (arXiv:2412.01981)
    from outcome-labelled completions.

    Only the parameters specific to the implicit PRM are listed here; see [`~transformers.TrainingArguments`] for the
    others.

    Parameters:
        > Parameters that control the model

        model_init_kwargs (`dict[str, Any]` or `str`, *optional*):
            Keyword arguments for [`~trl_erprm.models.load_model`] (`AutoModelForCausalLM.from_pretrained`), used when
            the `model` (or `ref_model`) argument of the trainer is a string. `dtype` may be a string such as
            `"bfloat16"` (default: the checkpoint's dtype); `trust_remote_code` is `False` unless set here. Weights are
            always loaded from safetensors.
        disable_dropout (`bool`, *optional*, defaults to `True`):
            Whether to disable dropout in the model and the reference model.

        > Parameters that control the data

        max_length (`int` or `None`, *optional*, defaults to `1024`):
            Maximum prompt + completion tokens. Longer rows are truncated (prompt cut from the left first, then the
            completion at its end) with a warning. `None` disables truncation.
        dataset_num_proc (`int`, *optional*):
            Number of processes used to tokenize the dataset.

        > Parameters that control the training

        learning_rate (`float`, *optional*, defaults to `1e-6`):
            Initial learning rate for AdamW. This overrides the default of [`~transformers.TrainingArguments`]; the
            reference setup of the paper uses `5e-7` on 7-8B models.
        beta (`float`, *optional*, defaults to `0.05`):
            Scale of the implicit reward `r = beta * log pi_theta(y) / pi_ref(y)`. Use the same value when scoring
            with [`ImplicitPRM`].
        loss_type (`str`, *optional*, defaults to `"ce"`):
            The four losses of the implicit-PRM paper. `"ce"`: binary cross-entropy of `sigmoid(r)` against each row's
            outcome label. `"dpo"`: `-log sigmoid(r_correct - r_incorrect)` on pairs of a correct and an incorrect
            completion of the same prompt (see [`build_dpo_pairs`] for the pairing rule). `"kto"` (Ethayarajh et al.
            2024): per row, `lambda_D (1 - sigmoid(r - z_0))` if correct, `lambda_U (1 - sigmoid(z_0 - r))` if not,
            with the reference point `z_0` estimated from mismatched (prompt, completion) pairs of the batch. `"nca"`
            (Chen et al. 2024): `-log sigmoid(r_w) - (log sigmoid(-r_w) + log sigmoid(-r_l)) / 2` on the pairs of
            `"dpo"`.
        max_pairs_per_prompt (`int`, *optional*):
            With `loss_type="dpo"` or `"nca"`, at most this many pairs per prompt (`None`: all correct x incorrect
            pairs).
        desirable_weight (`float`, *optional*, defaults to `1.0`):
            With `loss_type="kto"`: `lambda_D`, the weight of correct completions (KTO advises
            `lambda_D * n_correct / (lambda_U * n_incorrect)` in [1, 4/3]).
        undesirable_weight (`float`, *optional*, defaults to `1.0`):
            With `loss_type="kto"`: `lambda_U`, the weight of incorrect completions.
        precompute_ref_log_probs (`bool`, *optional*, defaults to `False`):
            Whether to compute the reference log-probabilities of the whole dataset once before training (then no
            reference forward pass runs during training, and without PEFT no reference copy is kept in memory).
        precompute_ref_batch_size (`int`, *optional*):
            Batch size of that precomputation; defaults to `per_device_train_batch_size` (and
            `per_device_eval_batch_size` for the evaluation set).
        remove_unused_columns (`bool`, *optional*, defaults to `False`):
            Overrides the default of [`~transformers.TrainingArguments`]: the trainer builds its own columns.
    """

    learning_rate: float = field(default=1e-6, metadata={"help": "The initial learning rate for AdamW."})
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={
            "help": "Keyword arguments for `AutoModelForCausalLM.from_pretrained`, used when the model or reference "
            "is given as a string. trust_remote_code is False unless set here."
        },
    )
    disable_dropout: bool = field(default=True, metadata={"help": "Whether to disable dropout in the models."})
    max_length: int | None = field(
        default=1024,
        metadata={"help": "Maximum prompt + completion tokens; longer rows are truncated with a warning."},
    )
    dataset_num_proc: int | None = field(
        default=None, metadata={"help": "Number of processes used to tokenize the dataset."}
    )
    beta: float = field(default=0.05, metadata={"help": "Scale of the implicit reward beta * log(pi/pi_ref)."})
    loss_type: str = field(
        default="ce",
        metadata={
            "help": "Loss: 'ce' (cross-entropy on outcome labels), 'dpo' or 'nca' (correct x incorrect pairs), "
            "'kto' (unpaired).",
            "choices": list(IMPLICIT_PRM_LOSS_TYPES),
        },
    )
    max_pairs_per_prompt: int | None = field(
        default=None, metadata={"help": "With loss_type='dpo'/'nca', at most this many pairs per prompt (None: all)."}
    )
    desirable_weight: float = field(default=1.0, metadata={"help": "KTO: weight of correct completions."})
    undesirable_weight: float = field(default=1.0, metadata={"help": "KTO: weight of incorrect completions."})
    precompute_ref_log_probs: bool = field(
        default=False,
        metadata={"help": "Whether to compute the reference log-probs of the whole dataset once before training."},
    )
    precompute_ref_batch_size: int | None = field(
        default=None, metadata={"help": "Batch size of the reference log-prob precomputation."}
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep False: the trainer builds its own columns."}
    )

    def __post_init__(self):
        if self.loss_type not in IMPLICIT_PRM_LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {IMPLICIT_PRM_LOSS_TYPES}, got {self.loss_type!r}.")
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}.")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"max_length must be at least 2 (or None), got {self.max_length}.")
        if not (self.desirable_weight > 0 and self.undesirable_weight > 0):
            raise ValueError(
                f"desirable_weight and undesirable_weight must be > 0, got {self.desirable_weight} and "
                f"{self.undesirable_weight}."
            )
        if self.max_pairs_per_prompt is not None and self.max_pairs_per_prompt < 1:
            raise ValueError(f"max_pairs_per_prompt must be >= 1 (or None), got {self.max_pairs_per_prompt}.")
        adopt_activation_checkpointing(self)  # TRL's default gradient_checkpointing=True must not warn
        super().__post_init__()
