"""Model cards of every PRM trainer: the base model and data named honestly, and scoring snippets that run.

For PRMTrainer, ERPRMTrainer (both heads) and ImplicitPRMTrainer, a short training run is saved and its card built: it
must name the base model, hold no `None` and no local path inside a URL, link only Hub ids, and every Python snippet in
it must run against the saved folder and print the step scores (the scorer's and the plain forward pass's agree).
"""

import ast
import contextlib
import io
import re

import pytest
from datasets import Dataset

from trl_erprm import ERPRMConfig, ERPRMTrainer, ImplicitPRMConfig, ImplicitPRMTrainer, PRMConfig, PRMTrainer


STEPWISE = [
    {
        "prompt": f"What is {a} + 2?",
        "completions": [f"{a} + 2 = {a + 2}.", f"The answer is {a + 2}."],
        "labels": [1, 0],
    }
    for a in range(4)
]
OUTCOMES = [
    {
        "prompt": f"What is {a} + 3?",
        "completion": f"{a} + 3 = {a + 3 + k}.\n\nThe answer is {a + 3 + k}.",
        "label": k == 0,
    }
    for a in range(3)
    for k in (0, 1)
]


def _train_args(cpu_train_kwargs, config_class, **extra):
    return config_class(**{**cpu_train_kwargs, "max_steps": 1, "per_device_train_batch_size": 2, **extra})


def _trainer(kind, cpu_train_kwargs, causal_lm_path, token_cls_path, tokenizer):
    if kind == "prm":
        args = _train_args(cpu_train_kwargs, PRMConfig)
        from transformers import AutoModelForTokenClassification

        model = AutoModelForTokenClassification.from_pretrained(token_cls_path)
        return PRMTrainer(model, args, train_dataset=Dataset.from_list(STEPWISE), processing_class=tokenizer)
    if kind == "erprm":
        args = _train_args(cpu_train_kwargs, ERPRMConfig, step_separator="\n\n")
        return ERPRMTrainer(token_cls_path, args, train_dataset=Dataset.from_list(STEPWISE))
    if kind == "erprm_lm":
        args = _train_args(cpu_train_kwargs, ERPRMConfig, head="lm", good_token=" +", bad_token=" -")
        return ERPRMTrainer(causal_lm_path, args, train_dataset=Dataset.from_list(STEPWISE))
    args = _train_args(cpu_train_kwargs, ImplicitPRMConfig, beta=0.1)
    return ImplicitPRMTrainer(causal_lm_path, args=args, train_dataset=Dataset.from_list(OUTCOMES))


def _python_blocks(card: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card, re.S)


def _run(snippet: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(snippet, "model card", "exec"), {"__name__": "__card__"})
    return out.getvalue()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["prm", "erprm", "erprm_lm", "implicit"])
def test_card_names_its_sources_and_its_snippets_run(
    kind, cpu_train_kwargs, causal_lm_path, token_cls_path, tokenizer, sample_data, tmp_path
):
    trainer = _trainer(kind, cpu_train_kwargs, causal_lm_path, token_cls_path, tokenizer)
    trainer.train()
    trainer.save_model()
    data = str(sample_data / "math_shepherd_samples.jsonl")  # a local file: named, never linked
    trainer.create_model_card(dataset_name=data)
    out = cpu_train_kwargs["output_dir"]
    card = open(f"{out}/README.md").read()

    base = causal_lm_path if kind in ("erprm_lm", "implicit") else token_cls_path
    assert f"Base model: `{base}`" in card, card[:1500]
    assert f"Training data: `{data}`" in card
    assert "Model Card for out" in card and "None" not in card
    urls = re.findall(r"https?://[^\s)\]>]+", card)
    assert urls and not [u for u in urls if "/tmp" in u or str(tmp_path) in u or "None" in u], urls
    metadata = card.split("---")[1]
    assert "base_model:" not in metadata and "datasets:" not in metadata  # nothing to declare: no Hub id
    assert "text-generation" not in card  # a PRM, not a chat model
    assert ("2412.01981" if kind == "implicit" else "2412.11006" if kind.startswith("erprm") else "2211.14275") in card

    blocks = _python_blocks(card)
    assert len(blocks) == (1 if kind == "implicit" else 2)
    printed = [_run(block) for block in blocks]
    if kind == "implicit":
        step_rewards = ast.literal_eval(printed[0].split("] ")[0] + "]")
        assert len(step_rewards) == 2
        return
    assert f"load_scorer({out!r})" in blocks[0]
    scorer_scores = ast.literal_eval(printed[0].strip())[0]
    forward_scores = ast.literal_eval(printed[1].strip())
    assert len(scorer_scores) == 2 and all(0.0 < s < 1.0 for s in scorer_scores)
    assert forward_scores == pytest.approx(scorer_scores, abs=1e-5)  # the plain forward pass is the same layout


def test_hub_ids_are_linked_and_declared(cpu_train_kwargs, causal_lm_path, token_cls_path, tokenizer):
    trainer = _trainer("erprm_lm", cpu_train_kwargs, causal_lm_path, token_cls_path, tokenizer)
    trainer.model.config.name_or_path = "Qwen/Qwen2.5-Math-1.5B"
    trainer.args.hub_model_id = "me/my-prm"
    card = trainer.model_card_text(dataset_name="my-org/erprm-labels")
    assert card.startswith("---\nbase_model: Qwen/Qwen2.5-Math-1.5B\ndatasets:\n- my-org/erprm-labels\n")
    assert "[Qwen/Qwen2.5-Math-1.5B](https://huggingface.co/Qwen/Qwen2.5-Math-1.5B)" in card
    assert "[my-org/erprm-labels](https://huggingface.co/datasets/my-org/erprm-labels)" in card
    assert "# Model Card for my-prm" in card
    assert "Step layout: `prompt + ' ' + step_1 + ' ки' + '\\n'" in card and "good = `' +'`" in card
