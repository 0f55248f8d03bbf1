"""[`ImplicitPRMTrainer`]: train an implicit PRM offline from outcome-labelled completions (arXiv:2412.01981)."""

from __future__ import annotations

import copy
import textwrap
import warnings
from collections import defaultdict
from typing import Any

import torch
from accelerate.utils import is_peft_model
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback, set_seed
from trl.trainer.utils import disable_dropout_in_model

from ._compat import BaseTrainer, KeepColumnsMixin, ModelCardOnCheckpointMixin, prepare_inputs
from .data.outcome import DataCollatorForImplicitPRM, prepare_outcome_dataset
from .functional import (
    implicit_prm_ce_loss,
    implicit_prm_dpo_loss,
    implicit_prm_kto_loss,
    implicit_prm_nca_loss,
    kto_reference_point,
    log_ratio_tolerance,
    sequence_log_ratio,
    sign_accuracy,
)
from .implicit_prm import ImplicitPRM, completion_logps
from .implicit_prm_config import ImplicitPRMConfig
from .model_card import PRMModelCardMixin, implicit_prm_snippets, model_source, shown_name
from .models import UNKNOWN_REFERENCE, load_model, load_tokenizer


#: The pairwise losses by name: `(chosen_log_ratio (P,), rejected_log_ratio (P,), beta) -> (P,)`.
PAIRWISE_LOSSES = {"dpo": implicit_prm_dpo_loss, "nca": implicit_prm_nca_loss}


__all__ = ["PAIRWISE_LOSSES", "ImplicitPRMTrainer"]


# ---------------------------------------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------------------------------------


class ImplicitPRMTrainer(PRMModelCardMixin, ModelCardOnCheckpointMixin, KeepColumnsMixin, BaseTrainer):
    r"""Train an implicit PRM from outcome labels (Yuan et al., arXiv:2412.01981).

    The model's implicit outcome reward is `r(y) = beta * sum_t (log pi_theta(y_t|y<t) - log pi_ref(y_t|y<t))` over
    the completion tokens. The four losses of the paper (`args.loss_type`, formulas in
    [`~trl_erprm.functional`]): `"ce"`, `BCE(sigmoid(r(y)), label)` per row; `"dpo"`,
    `-log sigmoid(r(y_correct) - r(y_incorrect))` per pair of the same prompt; `"nca"`, the NCA loss on the same
    pairs; `"kto"`, the KTO loss per row, its reference point `z_0` estimated (without gradient) from the log-ratios of
    each row's prompt with the completion of another prompt ([`~trl_erprm.data.mismatched_rows`]), averaged over the
    batch of every process and clamped at 0. The trained model then gives step rewards with [`ImplicitPRM`].

    The reference `pi_ref` is, in this order: the model with its adapter disabled when the model is (or becomes, via
    `peft_config`) a PEFT model and no `ref_model` is given; `ref_model` when given; otherwise a frozen copy of the
    initial model (none is kept when `precompute_ref_log_probs=True`: the initial model computes the reference
    log-probs once before training).

    Args:
        model (`str`, [`~transformers.PreTrainedModel`] or `peft.PeftModel`):
            The causal LM to train, or its path / id (loaded with `args.model_init_kwargs`, safetensors only).
        ref_model (`str` or [`~transformers.PreTrainedModel`], *optional*):
            A separate reference model or its path.
        args ([`ImplicitPRMConfig`], *optional*):
            Training configuration; defaults to `ImplicitPRMConfig("<model name>-ImplicitPRM")`.
        train_dataset ([`~datasets.Dataset`]):
            Outcome-labelled rows: `prompt` (string or messages), `completion` (string or one assistant message),
            `label` (1/True correct, 0/False incorrect). Bad rows raise a `ValueError` naming the row and field.
        eval_dataset ([`~datasets.Dataset`] or `dict[str, Dataset]`, *optional*):
            Rows of the same format.
        processing_class ([`~transformers.PreTrainedTokenizerBase`], *optional*):
            Tokenizer; loaded from the model's path when `None`.
        callbacks (`list[TrainerCallback]`, *optional*):
            Training callbacks.
        optimizers (`tuple`, *optional*, defaults to `(None, None)`):
            Optimizer and learning-rate scheduler.
        peft_config (`peft.PeftConfig`, *optional*):
            If given, the model is wrapped with this adapter and the adapter-disabled model is the reference.
    """

    _tag_names = ["trl", "implicit-prm", "trl-erprm"]
    _name = "Implicit PRM"
    _paper = {
        "title": "Free Process Rewards without Process Labels",
        "id": "2412.01981",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @article{yuan2024free,
                title        = {{Free Process Rewards without Process Labels}},
                author       = {Lifan Yuan and Wendi Li and Huayu Chen and Ganqu Cui and Ning Ding and Kaiyan Zhang and Bowen Zhou and Zhiyuan Liu and Hao Peng},
                year         = 2024,
                journal      = {arXiv preprint arXiv:2412.01981},
            }"""),
    }
    # The loss is a mean over the micro-batch, so transformers must divide it by the gradient-accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: str | PreTrainedModel,
        ref_model: str | PreTrainedModel | None = None,
        args: ImplicitPRMConfig | None = None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | dict[str, Dataset] | None = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple = (None, None),
        peft_config: Any = None,
    ):
        model_id = model if isinstance(model, str) else getattr(getattr(model, "config", None), "name_or_path", "")
        if args is None:
            args = ImplicitPRMConfig(f"{str(model_id).rstrip('/').split('/')[-1] or 'model'}-ImplicitPRM")
        if train_dataset is None:
            raise ValueError("`train_dataset` is required: outcome-labelled rows with prompt, completion and label.")
        set_seed(args.seed)  # before PEFT initialises the adapter weights
        init_kwargs = args.model_init_kwargs or {}
        if isinstance(model, str):
            model = load_model(model, "causal_lm", **init_kwargs)
        if processing_class is None:
            processing_class = load_tokenizer(model_id, trust_remote_code=init_kwargs.get("trust_remote_code", False))
        if processing_class.pad_token_id is None:
            processing_class.pad_token = processing_class.eos_token

        if peft_config is not None:
            if is_peft_model(model):
                raise ValueError("Pass either a PeftModel or a `peft_config`, not both.")
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
        use_adapter_ref = is_peft_model(model) and ref_model is None
        if isinstance(ref_model, str):
            ref_model = load_model(ref_model, "causal_lm", **init_kwargs)
        elif ref_model is None and not use_adapter_ref and not args.precompute_ref_log_probs:
            ref_model = copy.deepcopy(model)  # the frozen initial model
        if ref_model is not None:
            ref_model.eval().requires_grad_(False)
        self._card_reference = "adapter" if use_adapter_ref else model_source(ref_model or model)
        self._warned_unknown_reference = False
        if is_peft_model(model) and args.gradient_checkpointing:
            model.enable_input_require_grads()
        if args.disable_dropout:
            disable_dropout_in_model(model)
            if ref_model is not None:
                disable_dropout_in_model(ref_model)

        train_dataset = prepare_outcome_dataset(train_dataset, processing_class, args, "train")
        if isinstance(eval_dataset, dict):
            eval_dataset = {
                k: prepare_outcome_dataset(v, processing_class, args, f"eval {k}") for k, v in eval_dataset.items()
            }
        elif eval_dataset is not None:
            eval_dataset = prepare_outcome_dataset(eval_dataset, processing_class, args, "eval")

        super().__init__(
            model=model,
            args=args,
            data_collator=DataCollatorForImplicitPRM(processing_class.pad_token_id),
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        self.model_accepts_loss_kwargs = False  # transformers < 5.19 reads this instead of `loss_is_scaled_for_ga`
        if hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags(self._tag_names)
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}

        if ref_model is not None:
            if self.is_deepspeed_enabled:
                from trl.models import prepare_deepspeed

                ref_model = prepare_deepspeed(ref_model, self.accelerator)
            else:
                ref_model = self.accelerator.prepare_model(ref_model, evaluation_mode=True)
        self.ref_model = ref_model
        unwrapped = self.accelerator.unwrap_model(self.model)
        reference = "adapter" if use_adapter_ref else (ref_model if ref_model is not None else unwrapped)
        batch_size = args.precompute_ref_batch_size or args.per_device_train_batch_size
        self._scorer = ImplicitPRM(unwrapped, reference, processing_class, beta=args.beta, batch_size=batch_size)
        if args.precompute_ref_log_probs:
            self.train_dataset = self._precompute_ref_logps(self.train_dataset, "train", batch_size)
            eval_batch = args.precompute_ref_batch_size or args.per_device_eval_batch_size
            if isinstance(self.eval_dataset, dict):
                self.eval_dataset = {
                    k: self._precompute_ref_logps(v, f"eval {k}", eval_batch) for k, v in self.eval_dataset.items()
                }
            elif self.eval_dataset is not None:
                self.eval_dataset = self._precompute_ref_logps(self.eval_dataset, "eval", eval_batch)

    def saved_prm_config(self) -> dict:
        """How this PRM is scored, written to `prm_config.json` with every saved model (`save_model`); warns once when
        the reference has no Hub id or folder.

        The trainer scores whole completions and has no step separator of its own: the recorded `step_separator` is
        [`ImplicitPRM`]'s default (`"\\n\\n"`), the one the model card's snippet uses. The reference is the one
        the model card names: `"adapter"` (a PEFT PRM scored against its base with the adapter disabled), the Hub id
        or folder the reference was loaded from, or [`~trl_erprm.models.UNKNOWN_REFERENCE`] when it was an in-memory
        model with no such source (then [`~trl_erprm.evaluation.scorers.load_scorer`] asks for `ref_model`).

        Returns:
            `dict`: `head` (`"implicit"`), `beta`, `ref_model`, `step_separator`, `max_length` and the trainer's name
            (see [`~trl_erprm.models.save_prm_config`]).
        """
        if not self._card_reference and not self._warned_unknown_reference:
            self._warned_unknown_reference = True
            warnings.warn(
                "ImplicitPRMTrainer: the reference model was built in memory (no Hub id or folder), so "
                f"prm_config.json records ref_model={UNKNOWN_REFERENCE!r} and load_scorer will ask for "
                "ref_model=<its folder>. Save the reference (save_pretrained) and pass its folder as ref_model to "
                "record it.",
                stacklevel=3,
            )
        return {
            "head": "implicit",
            "beta": self.args.beta,
            "ref_model": self._card_reference or UNKNOWN_REFERENCE,
            "step_separator": self._scorer.step_separator,
            "max_length": self.args.max_length,
            "trainer": type(self).__name__,
        }

    def card_summary(self) -> tuple[str, list[tuple[str, str]]]:
        """The card's summary: an implicit PRM, its loss, reference and beta.

        Returns:
            `tuple[str, list[tuple[str, str]]]`: The summary and the facts.
        """
        summary = (
            "An implicit process reward model ([Free Process Rewards without Process Labels]"
            "(https://huggingface.co/papers/2412.01981)): a causal language model `pi` whose log-ratio to a reference "
            "gives every token a process reward `r_t = beta * log pi(y_t | y_<t) / pi_ref(y_t | y_<t)`; the reward "
            "of a step is the sum over its tokens. It was trained on outcome labels only (is the final answer right)."
        )
        reference = self._card_reference
        shown = "the model with its adapter disabled" if reference == "adapter" else shown_name(reference)
        return summary, [
            ("Loss", f"`{self.args.loss_type}`"),
            ("Reference model", shown),
            ("beta", str(self.args.beta)),
        ]

    def card_snippets(self, location: str) -> list[tuple[str, str]]:
        """Scoring snippet of the saved implicit PRM ([`ImplicitPRM`] with the same reference and beta).

        Args:
            location (`str`):
                The PRM's Hub id or folder.

        Returns:
            `list[tuple[str, str]]`: One `(introduction, code)` pair.
        """
        reference = self._card_reference or UNKNOWN_REFERENCE  # not None: that would mean reference-free
        return implicit_prm_snippets(location, reference, self.args.beta, self._scorer.step_separator)

    def keep_columns(self) -> list[str]:
        """The columns [`~trl_erprm.data.DataCollatorForImplicitPRM`] reads (none is a model input).

        Returns:
            `list[str]`: Token ids, labels and precomputed reference log-probs of rows and pairs.
        """
        return [
            "prompt_ids",
            "completion_ids",
            "label",
            "ref_logps",
            "chosen_ids",
            "rejected_ids",
            "chosen_ref_logps",
            "rejected_ref_logps",
            "kl_completion_ids",
            "kl_ref_logps",
        ]

    def _precompute_ref_logps(self, dataset: Dataset, name: str, batch_size: int) -> Dataset:
        """Add the reference log-probs of every completion as columns, computed once (before training)."""
        collator = DataCollatorForImplicitPRM(self.processing_class.pad_token_id)
        is_pairs = "chosen_ids" in dataset.column_names
        chosen, rejected = [], []
        is_kto = "kl_completion_ids" in dataset.column_names
        mismatched = []
        for start in tqdm(range(0, len(dataset), batch_size), desc=f"Reference log-probs ({name})"):
            rows = dataset.select(range(start, min(start + batch_size, len(dataset))))
            batch = collator(list(rows))
            values = self._ref_logps_of(batch)
            half = len(values) // 2 if is_pairs else len(values)
            chosen.extend(values[:half])
            rejected.extend(values[half:])
            if is_kto:
                mismatched.extend(self._ref_logps_of(batch, "kl_"))
        if is_pairs:
            return dataset.add_column("chosen_ref_logps", chosen).add_column("rejected_ref_logps", rejected)
        if is_kto:
            dataset = dataset.add_column("kl_ref_logps", mismatched)
        return dataset.add_column("ref_logps", chosen)

    def _ref_logps_of(self, batch: dict[str, torch.Tensor], prefix: str = "") -> list[list[float]]:
        """Reference log-probs of the completions of a collated batch, one list per row (its completion's length)."""
        mask = batch[f"{prefix}completion_mask"]
        logps = self._scorer.compute_logps(
            batch[f"{prefix}input_ids"], batch[f"{prefix}attention_mask"], mask.shape[1], True
        )
        return [row[: int(n)].tolist() for row, n in zip(logps.cpu(), mask.sum(-1))]

    def _reference_logps(self, inputs: dict[str, torch.Tensor], prefix: str = "") -> torch.Tensor:
        if f"{prefix}ref_logps" in inputs:
            return inputs[f"{prefix}ref_logps"]
        T = inputs[f"{prefix}completion_mask"].shape[1]
        return self._scorer.compute_logps(
            inputs[f"{prefix}input_ids"], inputs[f"{prefix}attention_mask"], T, reference=True
        )

    def _kto_reference_point(self, model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """KTO's `z_0` from the mismatched rows of the batch, averaged over every process (no gradient)."""
        mask = inputs["kl_completion_mask"]
        with torch.no_grad():
            logps = completion_logps(model, inputs["kl_input_ids"], inputs["kl_attention_mask"], mask.shape[1])
            log_ratio = sequence_log_ratio(logps, self._reference_logps(inputs, "kl_"), mask).float()
            total = torch.stack([log_ratio.sum(), torch.tensor(float(log_ratio.numel()), device=log_ratio.device)])
            total = self.accelerator.reduce(total, reduction="sum")
        return kto_reference_point((total[0] / total[1]).reshape(1))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Mean CE, DPO, KTO or NCA loss of the micro-batch (divided by the accumulation steps by transformers).

        Args:
            model (`torch.nn.Module`):
                The (possibly wrapped) model being trained.
            inputs (`dict[str, torch.Tensor]`):
                A batch from [`DataCollatorForImplicitPRM`].
            return_outputs (`bool`, *optional*, defaults to `False`):
                Also return the implicit rewards `(B,)`.
            num_items_in_batch (`int`, *optional*):
                Unused (the loss is a per-row mean).

        Returns:
            `torch.Tensor` (scalar loss), or `(loss, {"rewards": rewards})` with `return_outputs=True`.
        """
        mask = inputs["completion_mask"]
        logps = completion_logps(model, inputs["input_ids"], inputs["attention_mask"], mask.shape[1])
        ref_logps = self._reference_logps(inputs)
        log_ratio = sequence_log_ratio(logps, ref_logps, mask)
        rewards = (self.args.beta * log_ratio).detach()
        # accuracy: the sign of a margin against the label, a margin within float noise a tie counting 1/2
        tolerance = log_ratio_tolerance(logps, ref_logps, mask)
        mode = "train" if model.training else "eval"
        args = self.args
        if args.loss_type in ("ce", "kto"):
            labels = inputs["outcome_labels"]
            correct = labels >= 0.5
            metrics = {"rewards/correct": rewards[correct], "rewards/incorrect": rewards[~correct]}
            if args.loss_type == "ce":
                loss = implicit_prm_ce_loss(log_ratio, labels, args.beta).mean()
                metrics["accuracy"] = sign_accuracy(log_ratio, labels, tolerance)
            else:
                z0 = self._kto_reference_point(model, inputs)
                loss = implicit_prm_kto_loss(
                    log_ratio, labels, args.beta, z0, args.desirable_weight, args.undesirable_weight
                ).mean()
                metrics["accuracy"] = sign_accuracy(log_ratio - z0, labels, tolerance)
                metrics["kl"] = z0.reshape(1)
            self._log_metrics(mode, metrics)
        else:
            n = log_ratio.shape[0] // 2
            loss = PAIRWISE_LOSSES[args.loss_type](log_ratio[:n], log_ratio[n:], args.beta).mean()
            self._log_metrics(
                mode,
                {
                    "rewards/chosen": rewards[:n],
                    "rewards/rejected": rewards[n:],
                    "rewards/margins": rewards[:n] - rewards[n:],
                    "accuracy": sign_accuracy(
                        log_ratio[:n] - log_ratio[n:], torch.ones(n), tolerance[:n] + tolerance[n:]
                    ),
                },
            )
        return (loss, {"rewards": rewards}) if return_outputs else loss

    def _log_metrics(self, mode: str, values: dict[str, torch.Tensor]) -> None:
        for key, value in values.items():
            gathered = self.accelerator.gather_for_metrics(value.float().reshape(-1))
            self._metrics[mode][key].extend(gathered.tolist())

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation loss of a batch: `(loss, None, None)`."""
        inputs = prepare_inputs(self, inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the averaged implicit-reward metrics since the last log to `logs`."""
        mode = "train" if self.model.training else "eval"
        prefix = "eval_" if mode == "eval" else ""
        for key, values in self._metrics[mode].items():
            if values:
                logs[prefix + key] = sum(values) / len(values)
        self._metrics[mode].clear()
        super().log(logs, start_time)
