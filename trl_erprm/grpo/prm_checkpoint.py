r"""The online PRM of PRIME inside trainer checkpoints: written atomically, checked before resuming, with a model card.

A checkpoint of [`~trl_erprm.grpo.PRIMETrainer`] is `checkpoint-N/` as transformers writes it plus `checkpoint-N/prm/`:
the PRM's weights (safetensors, or the adapter of a PEFT PRM), its tokenizer, its AdamW state (`prm_optimizer.pt`),
a model card (`README.md`) and `prime_prm.json` (the global step, written last). The PRM folder is written to
`prm.tmp/` and renamed, *before* the trainer writes its own files, of which `trainer_state.json` is among the last;
so a checkpoint holding a readable `trainer_state.json` always holds the PRM of the same step, and a run killed while
saving leaves a checkpoint without `trainer_state.json`, which [`check_prime_checkpoint`] refuses with the name of
the last complete one.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import shutil
import textwrap

import torch
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..model_card import is_hub_id, model_source, shown_name
from ..models import UNKNOWN_REFERENCE, save_prm_config


logger = logging.getLogger(__name__)

__all__ = ["PRM_CHECKPOINT_FOLDER", "PRM_OPTIMIZER_NAME", "PRM_STATE_NAME", "check_prime_checkpoint", "prm_model_card"]

#: Folder of a trainer checkpoint (and of the final output folder) that holds the PRM.
PRM_CHECKPOINT_FOLDER = "prm"
#: The PRM optimizer's state, inside the PRM folder.
PRM_OPTIMIZER_NAME = "prm_optimizer.pt"
#: Written last inside the PRM folder: `{"global_step": N, "optimizer": bool}`.
PRM_STATE_NAME = "prime_prm.json"

PRIME_CITATION = textwrap.dedent("""\
    @article{cui2025process,
        title        = {{Process Reinforcement through Implicit Rewards}},
        author       = {Ganqu Cui and Lifan Yuan and Zefan Wang and Hanbin Wang and Wendi Li and Bingxiang He and Yuchen Fan and Tianyu Yu and Qixin Xu and Weize Chen and Jiarui Yuan and Huayu Chen and Kaiyan Zhang and Xingtai Lv and Shuo Wang and Yuan Yao and Xu Han and Hao Peng and Yu Cheng and Zhiyuan Liu and Maosong Sun and Bowen Zhou and Ning Ding},
        year         = 2025,
        journal      = {arXiv preprint arXiv:2502.01456},
    }""")
IMPLICIT_PRM_CITATION = textwrap.dedent("""\
    @article{yuan2024free,
        title        = {{Free Process Rewards without Process Labels}},
        author       = {Lifan Yuan and Wendi Li and Huayu Chen and Ganqu Cui and Ning Ding and Kaiyan Zhang and Bowen Zhou and Zhiyuan Liu and Hao Peng},
        year         = 2024,
        journal      = {arXiv preprint arXiv:2412.01981},
    }""")


# ---------------------------------------------------------------------------------------------------------------------
# Writing and reading the PRM folder
# ---------------------------------------------------------------------------------------------------------------------


def save_prm_folder(prm, optimizer, folder: str, global_step: int, card: str) -> None:
    """Write the PRM folder atomically: everything goes to `<folder>.tmp`, `prime_prm.json` last, then the folder is
    renamed into place (an older `folder` is replaced)."""
    tmp, old = f"{folder}.tmp", f"{folder}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    prm.model.save_pretrained(tmp, safe_serialization=True)
    prm.tokenizer.save_pretrained(tmp)
    if optimizer is not None:
        torch.save(optimizer.state_dict(), os.path.join(tmp, PRM_OPTIMIZER_NAME))
    with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
        f.write(card)
    record = implicit_prm_record(prm)
    if record is not None:
        save_prm_config(tmp, record)
    with open(os.path.join(tmp, PRM_STATE_NAME), "w", encoding="utf-8") as f:
        json.dump({"global_step": int(global_step), "optimizer": optimizer is not None}, f)
    if os.path.exists(folder):
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def reference_source(prm) -> str | None:
    """The reference of an [`~trl_erprm.ImplicitPRM`] as `prm_config.json` records it: `"adapter"`, the Hub id or
    folder it was loaded from, [`~trl_erprm.models.UNKNOWN_REFERENCE`] (a model built in memory) or `None`
    (reference-free)."""
    if prm.reference_is_adapter:
        return "adapter"
    if prm.ref_model is None:
        return None
    return model_source(prm.ref_model) or UNKNOWN_REFERENCE


def implicit_prm_record(prm) -> dict | None:
    """`prm_config.json` of PRIME's PRM (head `"implicit"`, see [`~trl_erprm.models.save_prm_config`]), so that
    [`~trl_erprm.evaluation.scorers.load_scorer`] scores the saved folder as an implicit PRM with its `beta`, reference
    and step separator. `None` (no file, with a warning) for a PRM without a step separator, which the file cannot
    record: such a folder is scored with `prm_type="implicit"`."""
    if prm.step_separator is None:
        logger.warning(
            "PRIME's PRM has step_separator=None (one step per completion): its folder gets no prm_config.json; score "
            "it with load_scorer(..., prm_type='implicit') or ImplicitPRM(..., step_separator=None)."
        )
        return None
    return {
        "head": "implicit",
        "beta": prm.beta,
        "ref_model": reference_source(prm),
        "step_separator": prm.step_separator,
        "max_length": prm.max_length,
        "trainer": "PRIMETrainer",
    }


def load_prm_folder(prm, optimizer, folder: str, device) -> bool:
    """Load the PRM weights (and the optimizer state, when saved) of a PRM folder in place; return whether the
    optimizer state was restored."""
    _load_safetensors_into(prm.model, folder)
    path = os.path.join(folder, PRM_OPTIMIZER_NAME)
    if optimizer is None or not os.path.isfile(path):
        return False
    optimizer.load_state_dict(torch.load(path, map_location=device, weights_only=True))
    return True


def _load_safetensors_into(model, folder: str) -> None:
    """Load the safetensors weights `save_pretrained` wrote in `folder` into `model`, in place."""
    from safetensors.torch import load_file

    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        path = os.path.join(folder, "adapter_model.safetensors")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No adapter_model.safetensors in {folder}: the PRM folder is incomplete.")
        result = set_peft_model_state_dict(model, load_file(path), adapter_name=model.active_adapter)
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"PRM adapter in {folder} has weights the model lacks: {result.unexpected_keys}.")
        return
    files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"No *.safetensors file in {folder}: the PRM folder is incomplete.")
    state = {}
    for path in files:
        state.update(load_file(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"PRM weights in {folder} include weights the model lacks: {unexpected[:5]}.")
    # save_pretrained drops tied duplicates (e.g. lm_head tied to the embeddings): those may be missing
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded_ptrs = {params[k].data_ptr() for k in state if k in params}
    untied = [k for k in missing if k not in params or params[k].data_ptr() not in loaded_ptrs]
    if untied:
        raise ValueError(f"PRM weights in {folder} lack weights of the model: {untied[:5]}.")


# ---------------------------------------------------------------------------------------------------------------------
# Whole or refused
# ---------------------------------------------------------------------------------------------------------------------


def _checkpoint_problem(checkpoint: str) -> str | None:
    """Why a PRIME checkpoint cannot be resumed from, or `None` if it is whole."""
    if not os.path.isdir(checkpoint):
        return "the folder does not exist"
    try:
        with open(os.path.join(checkpoint, TRAINER_STATE_NAME), encoding="utf-8") as f:
            step = json.load(f)["global_step"]
    except FileNotFoundError:
        return f"it has no {TRAINER_STATE_NAME}: the run was stopped while writing it"
    except (ValueError, KeyError):
        return f"its {TRAINER_STATE_NAME} is unreadable: the run was stopped while writing it"
    prm_state = os.path.join(checkpoint, PRM_CHECKPOINT_FOLDER, PRM_STATE_NAME)
    try:
        with open(prm_state, encoding="utf-8") as f:
            prm_step = json.load(f)["global_step"]
    except FileNotFoundError:
        return (
            f"it has no PRIME PRM ({PRM_CHECKPOINT_FOLDER}/{PRM_STATE_NAME} is missing): it was saved without "
            "PRIMETrainer, or by a version that wrote the PRM after the checkpoint"
        )
    except (ValueError, KeyError):
        return f"its {PRM_CHECKPOINT_FOLDER}/{PRM_STATE_NAME} is unreadable"
    if prm_step != step:
        return f"its PRM is from step {prm_step}, its trainer state from step {step}"
    return None


def check_prime_checkpoint(checkpoint: str) -> None:
    """Refuse a checkpoint that does not hold both the trainer's state and PRIME's PRM of the same step.

    Args:
        checkpoint (`str`):
            A `checkpoint-N` folder written by [`~trl_erprm.grpo.PRIMETrainer`].

    Raises:
        ValueError: The checkpoint is incomplete; the message names what is missing and the last complete checkpoint
            of the same folder (or says there is none).
    """
    problem = _checkpoint_problem(checkpoint)
    if problem is None:
        return
    parent = os.path.dirname(os.path.abspath(checkpoint))
    pattern = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
    siblings = sorted(
        (int(m.group(1)), os.path.join(parent, name))
        for name in (os.listdir(parent) if os.path.isdir(parent) else [])
        if (m := pattern.match(name))
    )
    complete = [path for _, path in siblings if _checkpoint_problem(path) is None]
    if complete:
        fix = f"Resume from the last complete one, resume_from_checkpoint={complete[-1]!r}, or delete {checkpoint}."
    else:
        fix = f"No complete PRIME checkpoint in {parent}: start a new run (or delete {checkpoint})."
    raise ValueError(f"Cannot resume PRIME from {checkpoint}: {problem}. {fix}")


# ---------------------------------------------------------------------------------------------------------------------
# Model card
# ---------------------------------------------------------------------------------------------------------------------


def prm_model_card(prm, location: str, policy: str | None, global_step: int, reward_funcs: list[str]) -> str:
    r"""The model card of a PRM trained online by PRIME: what it is, where it comes from, how to score steps with it.

    Args:
        prm ([`~trl_erprm.ImplicitPRM`]):
            The PRM.
        location (`str`):
            Where the PRM is (its folder or Hub id), used in the scoring snippet.
        policy (`str` or `None`):
            Name or path of the policy it was trained alongside.
        global_step (`int`):
            Optimizer steps of PRIME at saving time.
        reward_funcs (`list[str]`):
            Names of the outcome verifiers (the PRM's training labels).

    Returns:
        `str`: The card, markdown with YAML metadata.
    """
    base = model_source(prm.model)
    source = reference_source(prm)
    if source == "adapter":
        reference = "the PRM with its adapter disabled"
    elif source is None:
        reference = "none (reference-free: rewards are `beta * log pi_phi`)"
    else:
        reference = shown_name(None if source == UNKNOWN_REFERENCE else source)
    ref_arg = repr(source)
    metadata = ["library_name: transformers", "tags:"] + [
        f"- {t}" for t in ("trl", "trl-erprm", "prime", "implicit-prm", "process-reward-model")
    ]
    if is_hub_id(base):
        metadata.insert(0, f"base_model: {base}")
    separator = prm.step_separator
    completion = "2 + 2 = 4." + (separator or " ") + "The answer is 4."
    snippet = textwrap.dedent(f"""\
        from trl_erprm import ImplicitPRM

        prm = ImplicitPRM({location!r}, ref_model={ref_arg}, beta={prm.beta}, step_separator={separator!r})
        [result] = prm.score_steps(["What is 2 + 2?"], [{completion!r}])
        print(result["step_rewards"], result["score"])  # one reward per step; the score aggregates them (min)
        """)
    verifiers = ", ".join(f"`{name}`" for name in reward_funcs) or "the trainer's reward functions"
    return "\n".join(
        [
            "---",
            *metadata,
            "---",
            "",
            "# Implicit process reward model trained online with PRIME",
            "",
            "An implicit PRM ([Free Process Rewards without Process Labels](https://arxiv.org/abs/2412.01981)): a "
            "causal language model `pi_phi` whose log-ratio to a reference gives every token a process reward "
            "`r_t = beta * log pi_phi(y_t | y_<t) / pi_ref(y_t | y_<t)`; the reward of a step is the sum over its "
            "tokens. It was trained online by `trl_erprm.PRIMETrainer` "
            "([PRIME](https://arxiv.org/abs/2502.01456)) on the rollouts of the policy being trained, with a "
            "cross-entropy on the outcome of each rollout.",
            "",
            f"- Base model (initial weights): {shown_name(base)}",
            f"- Reference model: {reference}",
            f"- beta: {prm.beta}",
            f"- Policy trained alongside: {shown_name(policy)}",
            f"- Outcome labels from: {verifiers}",
            f"- PRIME optimizer steps: {global_step}",
            "",
            "## Score steps",
            "",
            "With [trl-erprm](https://github.com/trl-erprm/trl-erprm) (steps are split at `step_separator`; "
            "`ImplicitPRM` also works as a reward function of `trl.GRPOTrainer`):",
            "",
            "```python",
            snippet.rstrip(),
            "```",
            "",
            "## Citation",
            "",
            "```bibtex",
            PRIME_CITATION,
            "",
            IMPLICIT_PRM_CITATION,
            "```",
            "",
        ]
    )
