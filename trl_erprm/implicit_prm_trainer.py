"""[`ImplicitPRMTrainer`]: train an implicit PRM offline from outcome-labelled completions (arXiv:2412.01981)."""

from __future__ import annotations

import copy
import json
import math
import textwrap
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, IterableDataset
from tqdm.auto import tqdm
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback, set_seed
from trl.trainer.base_trainer import _BaseTrainer
from trl.trainer.utils import disable_dropout_in_model, pad

from .functional import implicit_prm_ce_loss, implicit_prm_dpo_loss, sequence_log_ratio
from .implicit_prm import (
    ImplicitPRM,
    _is_conversational,
    _is_peft_model,
    completion_logps,
    completion_text,
    encode_prompt,
    load_causal_lm,
    truncate_to_max_length,
)
from .implicit_prm_config import ImplicitPRMConfig


__all__ = [
    "DataCollatorForImplicitPRM",
    "ImplicitPRMTrainer",
    "build_dpo_pairs",
    "prepare_outcome_dataset",
    "validate_outcome_rows",
]

_REQUIRED_COLUMNS = ("prompt", "completion", "label")


# ---------------------------------------------------------------------------------------------------------------------
# Data: validation, pairing, tokenization, collation
# ---------------------------------------------------------------------------------------------------------------------


def _label_value(label: Any, index: int, loss_type: str) -> float:
    """Check one outcome label and return it as a float."""
    fix = "use 1/True for a correct completion and 0/False for an incorrect one"
    if loss_type == "ce":
        fix += " (or a float in [0, 1] for a soft label with loss_type='ce')"
    if isinstance(label, bool):
        return float(label)
    if isinstance(label, (int, float)) and not math.isnan(label):
        value = float(label)
        if value in (0.0, 1.0) or (loss_type == "ce" and 0.0 <= value <= 1.0):
            return value
    raise ValueError(f"Row {index}: field 'label' is {label!r}; {fix}.")


def validate_outcome_rows(dataset: Dataset, loss_type: str = "ce", name: str = "train") -> list[float]:
    """Check every row of an outcome-labelled dataset and return the labels as floats.

    Args:
        dataset ([`~datasets.Dataset`]):
            Rows with `prompt` (string or list of messages), `completion` (non-empty string, or a list holding one
            assistant message) and `label` (`0`/`1` or a bool; a float in `[0, 1]` is accepted for `loss_type="ce"`).
        loss_type (`str`, *optional*, defaults to `"ce"`):
            `"ce"` or `"dpo"` (which needs hard labels).
        name (`str`, *optional*, defaults to `"train"`):
            Name of the split, quoted in errors.

    Returns:
        `list[float]`: The labels.

    Raises:
        `ValueError`: naming the split, the row, the field and the fix, at the first bad row.
    """
    missing = [c for c in _REQUIRED_COLUMNS if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"The {name} dataset lacks the column(s) {missing} (it has {dataset.column_names}). An implicit PRM trains "
            "on outcome-labelled rows: 'prompt', 'completion' and 'label' (1 correct, 0 incorrect)."
        )
    labels = []
    for i, row in enumerate(dataset):
        try:
            prompt, completion = row["prompt"], row["completion"]
            if not (_is_conversational(prompt) and prompt) and not (isinstance(prompt, str) and prompt):
                raise ValueError(f"Row {i}: field 'prompt' is empty or not a string / list of messages; fill it in.")
            if not completion_text(completion, i):
                raise ValueError(f"Row {i}: field 'completion' is empty; drop the row or fill in the completion.")
            labels.append(_label_value(row["label"], i, loss_type))
        except ValueError as error:
            raise ValueError(f"{name} dataset: {error}") from None
    return labels


def build_dpo_pairs(
    prompt_keys: Sequence[str], labels: Sequence[float], max_pairs_per_prompt: int | None = None
) -> list[tuple[int, int]]:
    """Pair correct and incorrect completions of the same prompt for the DPO loss.

    Rows are grouped by prompt (exact match of the prompt text or messages), groups in order of first appearance. In a
    group with correct rows `c_0..c_{m-1}` and incorrect rows `w_0..w_{n-1}` (dataset order) every one of the `m * n`
    pairs is formed, enumerated diagonal by diagonal: `(c_i, w_{(i + d) mod n})` for `d = 0..n-1`, `i = 0..m-1`. So a
    cap `max_pairs_per_prompt` keeps pairs that use as many different completions as possible. Prompts whose
    completions are all correct or all incorrect give no pair.

    Args:
        prompt_keys (sequence of `str`):
            One hashable key per row identifying its prompt.
        labels (sequence of `float`):
            Outcome labels, `1.0` correct and `0.0` incorrect.
        max_pairs_per_prompt (`int`, *optional*):
            At most this many pairs per prompt; `None` keeps all.

    Returns:
        `list[tuple[int, int]]`: `(correct_row, incorrect_row)` indices.
    """
    groups: dict[str, tuple[list[int], list[int]]] = {}
    for i, (key, label) in enumerate(zip(prompt_keys, labels)):
        correct, incorrect = groups.setdefault(key, ([], []))
        (correct if label >= 0.5 else incorrect).append(i)
    pairs = []
    for correct, incorrect in groups.values():
        group = [
            (correct[i], incorrect[(i + d) % len(incorrect)])
            for d in range(len(incorrect))
            for i in range(len(correct))
        ]
        pairs.extend(group if max_pairs_per_prompt is None else group[:max_pairs_per_prompt])
    return pairs


def _prompt_key(prompt: str | list[dict]) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)


def _tokenize_rows(dataset: Dataset, tokenizer, max_length: int | None, num_proc: int | None, name: str) -> Dataset:
    def tokenize(row, index):
        prompt_ids = encode_prompt(tokenizer, row["prompt"], index)
        ids = tokenizer(completion_text(row["completion"], index), add_special_tokens=False)["input_ids"]
        prompt_ids, completion_ids, cut = truncate_to_max_length(prompt_ids, list(ids), max_length)
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "truncated": cut}

    tokenized = dataset.map(
        tokenize, with_indices=True, num_proc=num_proc, remove_columns=dataset.column_names, desc=f"Tokenizing {name}"
    )
    truncated = sum(tokenized["truncated"])
    if truncated:
        warnings.warn(
            f"{truncated} of {len(tokenized)} rows of the {name} dataset exceed max_length={max_length} tokens and were "
            "truncated (prompt cut from the left first, then the completion at its end).",
            stacklevel=3,
        )
    return tokenized.remove_columns("truncated")


def prepare_outcome_dataset(
    dataset: Dataset, tokenizer: PreTrainedTokenizerBase, args: ImplicitPRMConfig, name: str = "train"
) -> Dataset:
    """Validate and tokenize an outcome-labelled dataset; for `loss_type="dpo"`, also form the pairs.

    Args:
        dataset ([`~datasets.Dataset`]):
            Rows with `prompt`, `completion`, `label` (see [`validate_outcome_rows`]).
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            The model's tokenizer.
        args ([`ImplicitPRMConfig`]):
            Uses `loss_type`, `max_length`, `max_pairs_per_prompt`, `dataset_num_proc`.
        name (`str`, *optional*, defaults to `"train"`):
            Name of the split, quoted in errors and warnings.

    Returns:
        [`~datasets.Dataset`]: Columns `prompt_ids`, `completion_ids`, `label` ("ce") or `prompt_ids`, `chosen_ids`,
        `rejected_ids` ("dpo").
    """
    if isinstance(dataset, IterableDataset) or not isinstance(dataset, Dataset):
        raise TypeError(f"The {name} dataset must be a datasets.Dataset (map-style), got {type(dataset).__name__}.")
    labels = validate_outcome_rows(dataset, args.loss_type, name)
    tokenized = _tokenize_rows(dataset, tokenizer, args.max_length, args.dataset_num_proc, name)
    if args.loss_type == "ce":
        return tokenized.add_column("label", labels)
    pairs = build_dpo_pairs([_prompt_key(p) for p in dataset["prompt"]], labels, args.max_pairs_per_prompt)
    if not pairs:
        raise ValueError(
            f"The {name} dataset has no prompt with both a correct (label 1) and an incorrect (label 0) completion, so "
            "loss_type='dpo' has no pair to train on. Add such completions or use loss_type='ce'."
        )
    prompt_ids, completion_ids = tokenized["prompt_ids"], tokenized["completion_ids"]
    return Dataset.from_dict(
        {
            "prompt_ids": [prompt_ids[c] for c, _ in pairs],
            "chosen_ids": [completion_ids[c] for c, _ in pairs],
            "rejected_ids": [completion_ids[w] for _, w in pairs],
        }
    )


class DataCollatorForImplicitPRM:
    """Pad tokenized rows into the GRPO layout: left-padded prompt, then right-padded completion.

    DPO pairs are flattened to `2P` rows: the `P` chosen completions, then the `P` rejected ones.

    Args:
        pad_token_id (`int`):
            Id used for padding (masked out).

    Returns (when called on a list of rows):
        `dict[str, torch.Tensor]`: `input_ids` and `attention_mask` `(B, L)`, `completion_mask` `(B, T)`,
        `outcome_labels` `(B,)` for CE rows, and `ref_logps` `(B, T)` when the rows carry precomputed ones.
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if "chosen_ids" in rows[0]:
            prompts = [r["prompt_ids"] for r in rows] * 2
            completions = [r["chosen_ids"] for r in rows] + [r["rejected_ids"] for r in rows]
            refs = None
            if "chosen_ref_logps" in rows[0]:
                refs = [r["chosen_ref_logps"] for r in rows] + [r["rejected_ref_logps"] for r in rows]
        else:
            prompts = [r["prompt_ids"] for r in rows]
            completions = [r["completion_ids"] for r in rows]
            refs = [r["ref_logps"] for r in rows] if "ref_logps" in rows[0] else None
        prompt_ids = pad([torch.tensor(p, dtype=torch.long) for p in prompts], self.pad_token_id, "left")
        prompt_mask = pad([torch.ones(len(p), dtype=torch.long) for p in prompts], 0, "left")
        completion_ids = pad([torch.tensor(c, dtype=torch.long) for c in completions], self.pad_token_id)
        completion_mask = pad([torch.ones(len(c), dtype=torch.long) for c in completions], 0)
        batch = {
            "input_ids": torch.cat([prompt_ids, completion_ids], dim=1),
            "attention_mask": torch.cat([prompt_mask, completion_mask], dim=1),
            "completion_mask": completion_mask,
        }
        if "label" in rows[0]:
            batch["outcome_labels"] = torch.tensor([r["label"] for r in rows], dtype=torch.float32)
        if refs is not None:
            batch["ref_logps"] = pad([torch.tensor(x, dtype=torch.float32) for x in refs], 0.0)
        return batch


# ---------------------------------------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------------------------------------


class ImplicitPRMTrainer(_BaseTrainer):
    r"""Train an implicit PRM from outcome labels (Yuan et al., arXiv:2412.01981).

    The model's implicit outcome reward is `r(y) = beta * sum_t (log pi_theta(y_t|y<t) - log pi_ref(y_t|y<t))` over
    the completion tokens. With `loss_type="ce"` the loss is `BCE(sigmoid(r(y)), label)` per row; with
    `loss_type="dpo"` it is `-log sigmoid(r(y_correct) - r(y_incorrect))` per pair of the same prompt. The trained
    model then gives step rewards with [`ImplicitPRM`].

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
        model_id = model if isinstance(model, str) else getattr(getattr(model, "config", None), "_name_or_path", "")
        if args is None:
            args = ImplicitPRMConfig(f"{str(model_id).rstrip('/').split('/')[-1] or 'model'}-ImplicitPRM")
        if train_dataset is None:
            raise ValueError("`train_dataset` is required: outcome-labelled rows with prompt, completion and label.")
        set_seed(args.seed)  # before PEFT initialises the adapter weights
        if isinstance(model, str):
            model = load_causal_lm(model, args.model_init_kwargs)
        if processing_class is None:
            processing_class = AutoTokenizer.from_pretrained(model_id)
        if processing_class.pad_token_id is None:
            processing_class.pad_token = processing_class.eos_token

        if peft_config is not None:
            if _is_peft_model(model):
                raise ValueError("Pass either a PeftModel or a `peft_config`, not both.")
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
        use_adapter_ref = _is_peft_model(model) and ref_model is None
        if isinstance(ref_model, str):
            ref_model = load_causal_lm(ref_model, args.model_init_kwargs)
        elif ref_model is None and not use_adapter_ref and not args.precompute_ref_log_probs:
            ref_model = copy.deepcopy(model)  # the frozen initial model
        if ref_model is not None:
            ref_model.eval().requires_grad_(False)
        if _is_peft_model(model) and args.gradient_checkpointing:
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

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = [
                "prompt_ids",
                "completion_ids",
                "label",
                "ref_logps",
                "chosen_ids",
                "rejected_ids",
                "chosen_ref_logps",
                "rejected_ref_logps",
            ]

    def _precompute_ref_logps(self, dataset: Dataset, name: str, batch_size: int) -> Dataset:
        """Add the reference log-probs of every completion as columns, computed once (before training)."""
        collator = DataCollatorForImplicitPRM(self.processing_class.pad_token_id)
        is_pairs = "chosen_ids" in dataset.column_names
        chosen, rejected = [], []
        for start in tqdm(range(0, len(dataset), batch_size), desc=f"Reference log-probs ({name})"):
            rows = dataset.select(range(start, min(start + batch_size, len(dataset))))
            batch = collator(list(rows))
            mask = batch["completion_mask"]
            logps = self._scorer.compute_logps(batch["input_ids"], batch["attention_mask"], mask.shape[1], True)
            values = [row[: int(n)].tolist() for row, n in zip(logps.cpu(), mask.sum(-1))]
            half = len(values) // 2 if is_pairs else len(values)
            chosen.extend(values[:half])
            rejected.extend(values[half:])
        if is_pairs:
            return dataset.add_column("chosen_ref_logps", chosen).add_column("rejected_ref_logps", rejected)
        return dataset.add_column("ref_logps", chosen)

    def _reference_logps(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if "ref_logps" in inputs:
            return inputs["ref_logps"]
        T = inputs["completion_mask"].shape[1]
        return self._scorer.compute_logps(inputs["input_ids"], inputs["attention_mask"], T, reference=True)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Mean CE or DPO loss of the micro-batch (divided by the accumulation steps by transformers).

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
        log_ratio = sequence_log_ratio(logps, self._reference_logps(inputs), mask)
        rewards = (self.args.beta * log_ratio).detach()
        mode = "train" if model.training else "eval"
        if self.args.loss_type == "ce":
            labels = inputs["outcome_labels"]
            loss = implicit_prm_ce_loss(log_ratio, labels, self.args.beta).mean()
            correct = labels >= 0.5
            self._log_metrics(
                mode,
                {
                    "rewards/correct": rewards[correct],
                    "rewards/incorrect": rewards[~correct],
                    "accuracy": ((rewards > 0) == correct).float(),
                },
            )
        else:
            n = log_ratio.shape[0] // 2
            loss = implicit_prm_dpo_loss(log_ratio[:n], log_ratio[n:], self.args.beta).mean()
            self._log_metrics(
                mode,
                {
                    "rewards/chosen": rewards[:n],
                    "rewards/rejected": rewards[n:],
                    "rewards/margins": rewards[:n] - rewards[n:],
                    "accuracy": (rewards[:n] > rewards[n:]).float(),
                },
            )
        return (loss, {"rewards": rewards}) if return_outputs else loss

    def _log_metrics(self, mode: str, values: dict[str, torch.Tensor]) -> None:
        for key, value in values.items():
            gathered = self.accelerator.gather_for_metrics(value.float().reshape(-1))
            self._metrics[mode][key].extend(gathered.tolist())

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation loss of a batch: `(loss, None, None)`."""
        inputs = self._prepare_inputs(inputs)
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

    def _save_checkpoint(self, model, trial):
        model_name = Path(self.args.output_dir).name if self.args.hub_model_id is None else None
        self.create_model_card(model_name=model_name or self.args.hub_model_id.split("/")[-1])
        super()._save_checkpoint(model, trial)
