"""Loading models and tokenizers: one place, one policy.

Every model trl-erprm loads from a name (the trainers given a path, `ImplicitPRM`, the scorers, the labeler's rollout
backend, the quickstart) goes through [`load_model`] / [`load_tokenizer`], so the rules are the same everywhere:

- **Weights from safetensors only** (`use_safetensors=True`): a pickle checkpoint can run code when loaded.
- **No remote code** unless the caller sets `trust_remote_code=True`: model repositories are untrusted.
- **One dtype policy** ([`resolve_dtype`]): `"auto"` (the default) loads the dtype the checkpoint was saved in, as
  transformers 5 does, on every transformers version; a name (`"float32"`, `"bfloat16"`, `"float16"`) or a
  `torch.dtype` forces it; anything else is an error naming the choices.
- **A clear error for a missing folder**: a name that looks like a local path (absolute, `./`, `../`, `~`, or more
  than one `/`) and does not exist raises `FileNotFoundError("folder not found: <path>")` instead of the Hub's message
  about an invalid repository id.
- A folder holding a PEFT adapter (`adapter_config.json`) loads as a `PeftModel` on top of its base model.

A PRM saved by a trl-erprm trainer also holds `prm_config.json` ([`save_prm_config`] / [`load_prm_config`]): how it
reads steps (its head, step separator and, for an LM head, the step tag and the candidate tokens; for an implicit PRM,
its `beta` and reference), so that the scorers load it with no extra flag.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import torch


__all__ = [
    "DTYPES",
    "MODEL_TASKS",
    "PRM_CONFIG_NAME",
    "PRM_FIELD_CHECKS",
    "PRM_HEADS",
    "UNKNOWN_REFERENCE",
    "check_model_path",
    "load_config",
    "load_model",
    "load_prm_config",
    "load_tokenizer",
    "resolve_dtype",
    "save_prm_config",
]

#: Dtype names accepted everywhere a dtype is given as text (command lines, configs).
DTYPES = ("auto", "float32", "bfloat16", "float16")

#: Model kinds of [`load_model`]: the transformers auto class, and the PEFT auto class for adapter folders.
MODEL_TASKS = {
    "causal_lm": ("AutoModelForCausalLM", "AutoPeftModelForCausalLM"),
    "token_classification": ("AutoModelForTokenClassification", "AutoPeftModelForTokenClassification"),
}


def resolve_dtype(dtype: str | torch.dtype | None) -> str | torch.dtype:
    """The `dtype` to pass to `from_pretrained`, from a name, a `torch.dtype`, `"auto"` or `None`.

    Args:
        dtype (`str`, `torch.dtype` or `None`):
            `"auto"` or `None` (the checkpoint's own dtype), a name of [`DTYPES`] or any `torch` dtype name
            (`"float64"`...), or a `torch.dtype`.

    Returns:
        `str` or `torch.dtype`: `"auto"` or the `torch.dtype`.

    Raises:
        `ValueError`: If `dtype` names no torch dtype.
    """
    if dtype is None or dtype == "auto":
        return "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, dtype, None) if isinstance(dtype, str) else None
    if not isinstance(value, torch.dtype):
        raise ValueError(f"dtype {dtype!r} is not a dtype: use one of {list(DTYPES)} or a torch.dtype.")
    return value


def _looks_local(name: str) -> bool:
    """Whether a model name can only be a local path (a Hub id is `name` or `owner/name`)."""
    return (
        os.path.isabs(name)
        or name in (".", "..")
        or name.startswith(("./", "../", "~", ".\\", "..\\"))
        or name.count("/") > 1
        or name.endswith("/")
        or (os.sep != "/" and os.sep in name)
    )


def check_model_path(name_or_path: str | os.PathLike) -> str:
    """Check a model name before loading it, so that a mistyped folder gives a clear error.

    Args:
        name_or_path (`str` or `os.PathLike`):
            A Hub id or a local folder.

    Returns:
        `str`: The name, with a leading `~` expanded.

    Raises:
        `FileNotFoundError`: `"folder not found: <path>"` when the name looks like a local path (absolute, `./`, `../`,
            `~`, or more than one `/`) and does not exist.
        `NotADirectoryError`: When the name is an existing file, not a folder.
    """
    name = str(name_or_path)
    path = os.path.expanduser(name) if name.startswith("~") else name
    if os.path.isfile(path):
        raise NotADirectoryError(f"{path} is a file: pass the model folder (the one holding config.json).")
    if _looks_local(name) and not os.path.isdir(path):
        raise FileNotFoundError(
            f"folder not found: {path}. Pass an existing model folder, or a Hub id such as 'Qwen/Qwen2.5-0.5B'."
        )
    return path


def load_model(
    name_or_path: str | os.PathLike,
    task: str = "causal_lm",
    dtype: str | torch.dtype | None = "auto",
    trust_remote_code: bool = False,
    **kwargs: Any,
):
    """Load a model from a folder or the Hub with the project's loading policy (see the module docstring).

    Args:
        name_or_path (`str` or `os.PathLike`):
            A Hub id or a local folder. A folder with `adapter_config.json` loads as a PEFT model on its base.
        task (`str`, *optional*, defaults to `"causal_lm"`):
            One of [`MODEL_TASKS`]: `"causal_lm"` (`AutoModelForCausalLM`) or `"token_classification"`
            (`AutoModelForTokenClassification`; pass `num_labels=2` for a PRM head).
        dtype (`str`, `torch.dtype` or `None`, *optional*, defaults to `"auto"`):
            Weights dtype, see [`resolve_dtype`]. `torch_dtype` in `kwargs` is accepted as an alias.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Whether to run model code from the repository.
        **kwargs:
            Other keyword arguments of `from_pretrained` (`num_labels`, `device_map`, `quantization_config`,
            `attn_implementation`, `revision`...), for example a config's `model_init_kwargs`.

    Returns:
        [`~transformers.PreTrainedModel`] or `peft.PeftModel`: The model, in training mode as transformers returns it.

    Raises:
        `ValueError`: For an unknown `task`, an invalid `dtype`, or `use_safetensors=False`.
        `FileNotFoundError`: For a local-looking path that does not exist.
    """
    if task not in MODEL_TASKS:
        raise ValueError(f"task must be one of {sorted(MODEL_TASKS)}, got {task!r}.")
    if kwargs.pop("use_safetensors", True) is not True:
        raise ValueError("Weights load from safetensors only (use_safetensors=True): convert the checkpoint first.")
    alias = kwargs.pop("torch_dtype", None)
    dtype = resolve_dtype(alias if dtype in (None, "auto") and alias is not None else dtype)
    path = check_model_path(name_or_path)
    auto_class, peft_class = MODEL_TASKS[task]
    if os.path.isfile(os.path.join(path, "adapter_config.json")):
        import peft

        loader = getattr(peft, peft_class)
    else:
        import transformers

        loader = getattr(transformers, auto_class)
    return loader.from_pretrained(
        path, dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=True, **kwargs
    )


def load_tokenizer(name_or_path: str | os.PathLike, trust_remote_code: bool = False, **kwargs: Any):
    """Load a tokenizer from a folder or the Hub, with the same path check as [`load_model`].

    Args:
        name_or_path (`str` or `os.PathLike`):
            A Hub id or a local folder.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Whether to run tokenizer code from the repository.
        **kwargs:
            Other keyword arguments of `AutoTokenizer.from_pretrained`.

    Returns:
        [`~transformers.PreTrainedTokenizerBase`]: The tokenizer.
    """
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(check_model_path(name_or_path), trust_remote_code=trust_remote_code, **kwargs)


def load_config(name_or_path: str | os.PathLike, trust_remote_code: bool = False):
    """Load a model's configuration (for example to read its architecture), with the same path check.

    Args:
        name_or_path (`str` or `os.PathLike`):
            A Hub id or a local folder.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Whether to run configuration code from the repository.

    Returns:
        [`~transformers.PretrainedConfig`]: The configuration.
    """
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(check_model_path(name_or_path), trust_remote_code=trust_remote_code)


# ---------------------------------------------------------------------------------------------------------------------
# How a saved PRM reads steps: prm_config.json
# ---------------------------------------------------------------------------------------------------------------------

#: File, next to the weights, that records how a PRM reads steps ([`save_prm_config`]).
PRM_CONFIG_NAME = "prm_config.json"

#: The fields of `prm_config.json` each PRM head needs (the trainer writes more: `max_length`, `trainer`). Every field is
#: a string unless [`PRM_FIELD_CHECKS`] checks it otherwise.
PRM_HEADS = {
    "token_classification": ("step_separator",),
    "lm": ("step_separator", "step_tag", "good_token", "bad_token", "prompt_separator"),
    "implicit": ("step_separator", "beta", "ref_model"),
}

#: `ref_model` recorded for an implicit PRM whose reference was an in-memory model with no Hub id or folder: scoring
#: it needs the reference given explicitly ([`~trl_erprm.evaluation.scorers.load_scorer`] refuses to guess).
UNKNOWN_REFERENCE = "<unknown>"


def _check_beta(value: Any) -> str | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    return None if ok else "must be a positive finite number: the beta the implicit PRM was trained with"


def _check_reference(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and value):
        return None
    return "must be a Hub id or folder, 'adapter' (the PRM with its adapter disabled) or null (reference-free)"


#: The fields of `prm_config.json` that are not plain strings, each with its check (an error text, or `None`).
PRM_FIELD_CHECKS = {"beta": _check_beta, "ref_model": _check_reference}


def _check_prm_config(config: dict, where: str) -> dict:
    head = config.get("head")
    if head not in PRM_HEADS:
        raise ValueError(f"{where}: 'head' is {head!r}; it must be one of {sorted(PRM_HEADS)}.")
    fix = "fix the file, or write it again with save_prm_config (the trainers' save_model does)"
    strings = [key for key in PRM_HEADS[head] if key not in PRM_FIELD_CHECKS]
    missing = [key for key in strings if not isinstance(config.get(key), str)]
    if missing:
        raise ValueError(f"{where}: a PRM with head={head!r} needs the string field(s) {missing}; {fix}.")
    for key in PRM_HEADS[head]:
        if key not in PRM_FIELD_CHECKS:
            continue
        if key not in config:
            raise ValueError(f"{where}: a PRM with head={head!r} needs the field {key!r}; {fix}.")
        problem = PRM_FIELD_CHECKS[key](config[key])
        if problem:
            raise ValueError(f"{where}: field {key!r} is {config[key]!r}; it {problem}. To repair: {fix}.")
    return config


def save_prm_config(folder: str | os.PathLike, config: dict) -> str:
    """Write `prm_config.json` into a saved PRM's folder: how the PRM reads steps.

    Args:
        folder (`str` or `os.PathLike`):
            The folder the model was saved to.
        config (`dict`):
            `head` (one of [`PRM_HEADS`]: `"token_classification"`, `"lm"` or `"implicit"`), `step_separator` and,
            for `"lm"`, `step_tag`, `good_token`, `bad_token` and `prompt_separator` (strings); for `"implicit"`,
            `beta` (a positive finite number) and `ref_model` (a Hub id or folder, `"adapter"` for a PEFT PRM whose
            reference is its base with the adapter disabled, `None` for reference-free, or [`UNKNOWN_REFERENCE`]), see
            [`PRM_FIELD_CHECKS`].
            Other JSON fields (`max_length`, `trainer`) are kept as information.

    Returns:
        `str`: The path of the file.

    Raises:
        `ValueError`: For an unknown head, a missing field or an invalid value, naming the file and the field.
    """
    path = os.path.join(folder, PRM_CONFIG_NAME)
    _check_prm_config(config, path)
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)
    return path


def load_prm_config(name_or_path: str | os.PathLike, revision: str | None = None) -> dict | None:
    """Read `prm_config.json` from a PRM's folder or Hub repository.

    Args:
        name_or_path (`str` or `os.PathLike`):
            A local folder or a Hub id.
        revision (`str`, *optional*):
            Hub revision.

    Returns:
        `dict` or `None`: The recorded fields, or `None` when the PRM has no such file (a PRM trained elsewhere).

    Raises:
        `ValueError`: For a file that is not a valid PRM config (not JSON, unknown head, missing or invalid field),
            naming the file, the field and the fix.
    """
    path = check_model_path(name_or_path)
    if os.path.isdir(path):
        file = os.path.join(path, PRM_CONFIG_NAME)
        if not os.path.isfile(file):
            return None
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

        try:
            file = hf_hub_download(path, PRM_CONFIG_NAME, revision=revision)
        except (EntryNotFoundError, LocalEntryNotFoundError, HfHubHTTPError, OSError):
            return None
    try:
        with open(file, encoding="utf-8") as f:
            config = json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{file} is not valid JSON ({error}); delete it or write it again with save_prm_config."
        ) from None
    if not isinstance(config, dict):
        raise ValueError(f"{file} must hold a JSON object, got {type(config).__name__}.")
    return _check_prm_config(config, file)
