"""`PRMConfig`: the drop-in for TRL 1.13's `trl.experimental.prm.PRMConfig`, used on every TRL version.

Same fields and defaults as TRL 1.13.0's class, so a PRM script written for TRL 1.13 runs on any supported TRL by
changing only its import.
"""

from dataclasses import dataclass, field

from .._compat import BaseConfig, adopt_activation_checkpointing


@dataclass
class PRMConfig(BaseConfig):
    r"""
    Configuration class for [`PRMTrainer`], the process reward model trainer.

    Only the parameters specific to PRM training are listed here; see [`~transformers.TrainingArguments`] for the rest.
    With [`~transformers.HfArgumentParser`] or [`~trl.TrlParser`] every field is also a command-line argument.

    Parameters:
        learning_rate (`float`, *optional*, defaults to `1e-5`):
            Initial learning rate of AdamW (overrides the `5e-5` of [`~transformers.TrainingArguments`]).
        max_length (`int` or `None`, *optional*, defaults to `1024`):
            Maximum length of the tokenized sequence (prompt + completion); longer sequences are cut on the right.
            `None` disables truncation.
        max_completion_length (`int` or `None`, *optional*, defaults to `None`):
            Maximum length of the completion (the concatenated steps with their separators), applied before
            `max_length`. `None` disables it.
        disable_dropout (`bool`, *optional*, defaults to `True`):
            Whether to disable dropout in the model.
        step_separator (`str`, *optional*, defaults to `"\n"`):
            The text that ends a step ([`~trl_erprm.steps.StepFormat`]), appended to every step, the last included;
            the step's label sits on the last token of step + separator.
        train_on_last_step_only (`bool`, *optional*, defaults to `False`):
            Whether to train on the last step's label only (evaluation still uses every step).
        dataset_num_proc (`int` or `None`, *optional*, defaults to `None`):
            Number of processes used to tokenize the dataset.

    > [!NOTE]
    > Defaults that differ from [`~transformers.TrainingArguments`], as in every TRL config: `logging_steps=10`,
    > `gradient_checkpointing=True`, `bf16=True` unless `fp16` is set, `learning_rate=1e-5`.
    """

    learning_rate: float = field(default=1e-5, metadata={"help": "The initial learning rate for AdamW."})
    max_length: int | None = field(
        default=1024,
        metadata={"help": "Maximum length of the sequences (prompt + completion) used for truncation."},
    )
    max_completion_length: int | None = field(
        default=None,
        metadata={"help": "Maximum length of the completion (concatenated steps) used for truncation."},
    )
    disable_dropout: bool = field(default=True, metadata={"help": "Whether to disable dropout in the model."})
    step_separator: str = field(
        default="\n", metadata={"help": "Separator appended to each step of the reasoning process."}
    )
    train_on_last_step_only: bool = field(default=False, metadata={"help": "Whether to train only on the last step."})
    dataset_num_proc: int | None = field(
        default=None, metadata={"help": "Number of processes to use for processing the dataset."}
    )

    def __post_init__(self):
        adopt_activation_checkpointing(self)  # TRL's default gradient_checkpointing=True must not warn
        super().__post_init__()
