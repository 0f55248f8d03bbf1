"""A PRM saved by ImplicitPRMTrainer records `prm_config.json` (head "implicit", beta, reference, step separator):
`load_scorer(folder)` and the CLIs then score it as an implicit PRM with no flag, an explicit argument still wins,
a bad file is a clear error, and an in-memory reference that cannot be recorded is refused instead of guessed."""

import json
import logging
import math
import os
import shutil

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from trl_erprm.data.outcome import encode_prompt
from trl_erprm.evaluation.bon import bon_main
from trl_erprm.evaluation.scorers import (
    ImplicitPRMScorer,
    LMHeadScorer,
    is_implicit_prm,
    load_scorer,
    resolve_prm_type,
)
from trl_erprm.implicit_prm import ImplicitPRM
from trl_erprm.implicit_prm_config import ImplicitPRMConfig
from trl_erprm.implicit_prm_trainer import ImplicitPRMTrainer
from trl_erprm.models import PRM_CONFIG_NAME, UNKNOWN_REFERENCE, load_prm_config, save_prm_config


BETA = 0.1
PROMPTS = ["What is 2 + 5?", "What is 3 + 6?"]
STEPS = [["2 + 5 = 7.", "The answer is 7."], ["3 + 6 = 10.", "So 10.", "The answer is 10."]]


def _rows(n: int = 4) -> list[dict]:
    rows = []
    for a in range(2, 2 + n):
        for k in (0, 1):
            completion = f"{a} + 3 = {a + 3 + k}.\n\n\\boxed{{{a + 3 + k}}}"
            rows.append({"prompt": f"What is {a} + 3?", "completion": completion, "label": k == 0})
    return rows


def _args(output_dir, **extra) -> ImplicitPRMConfig:
    kwargs = {
        "output_dir": str(output_dir),
        "use_cpu": True,
        "bf16": False,
        "report_to": "none",
        "gradient_checkpointing": False,
        "disable_tqdm": True,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-2,
        "max_steps": 2,
        "beta": BETA,
        "save_strategy": "no",
        "seed": 0,
    }
    return ImplicitPRMConfig(**{**kwargs, **extra})


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tokenizer, causal_lm_path):
    """An implicit PRM trained for 2 steps against the frozen initial model, with a checkpoint, then saved."""
    out = tmp_path_factory.mktemp("implicit_saved")
    args = _args(out / "out", save_strategy="steps", save_steps=2)
    trainer = ImplicitPRMTrainer(
        causal_lm_path, args=args, train_dataset=Dataset.from_list(_rows()), processing_class=tokenizer
    )
    trainer.train()
    trainer.save_model(str(out / "prm"))
    return str(out)


def _by_hand_last_q(folder, reference, tokenizer, prompt, steps, beta):
    """`q` at the end of the last step: beta * sum over the completion tokens of log pi - log pi_ref."""
    prompt_ids = encode_prompt(tokenizer, prompt)
    completion_ids = tokenizer("\n\n".join(steps), add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + completion_ids])
    total = 0.0
    for path, sign in ((folder, 1.0), (reference, -1.0)):
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        with torch.no_grad():
            logps = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
        targets = ids[0, 1:]
        token_logps = logps.gather(-1, targets[:, None])[:, 0][len(prompt_ids) - 1 :]
        total += sign * float(token_logps.sum())
    return beta * total


def test_saved_folder_and_checkpoint_record_the_implicit_head(saved, causal_lm_path):
    expected = {
        "head": "implicit",
        "beta": BETA,
        "ref_model": os.path.abspath(causal_lm_path),  # the frozen initial model, as the model card names it
        "step_separator": "\n\n",  # ImplicitPRM's default: the trainer scores whole completions
        "max_length": 1024,
        "trainer": "ImplicitPRMTrainer",
    }
    assert load_prm_config(f"{saved}/prm") == expected
    assert load_prm_config(f"{saved}/out/checkpoint-2") == expected
    assert resolve_prm_type(f"{saved}/prm") == ("implicit", expected)
    assert is_implicit_prm(f"{saved}/prm") and not is_implicit_prm(causal_lm_path)


def test_load_scorer_auto_scores_with_the_recorded_beta_and_reference(saved, causal_lm_path, tokenizer):
    folder = f"{saved}/prm"
    scorer = load_scorer(folder, device="cpu")
    assert isinstance(scorer, ImplicitPRMScorer)
    prm = scorer.prm
    assert (prm.beta, prm.step_separator, prm.has_reference, prm.reference_is_adapter) == (BETA, "\n\n", True, False)
    assert next(prm.model.parameters()).device.type == "cpu" and next(prm.ref_model.parameters()).device.type == "cpu"
    scores = scorer.score(PROMPTS, STEPS)
    by_hand = ImplicitPRM(folder, ref_model=causal_lm_path, beta=BETA, step_separator="\n\n")
    expected = [r["q_at_step_ends"] for r in by_hand.score_steps(PROMPTS, STEPS)]
    assert [len(s) for s in scores] == [2, 3]
    for got, want in zip(scores, expected):
        assert got == pytest.approx(want, abs=1e-6)
    for prompt, steps, got in zip(PROMPTS, STEPS, scores):
        last = _by_hand_last_q(folder, causal_lm_path, tokenizer, prompt, steps, BETA)
        assert abs(last) > 1e-4 and got[-1] == pytest.approx(last, abs=1e-5)
    # prm_type="implicit" given explicitly also reads the recorded values
    explicit = load_scorer(folder, prm_type="implicit", device="cpu")
    assert explicit.prm.beta == BETA
    for got, want in zip(explicit.score(PROMPTS, STEPS), scores):
        assert got == pytest.approx(want, abs=1e-6)


def test_explicit_arguments_win_over_the_recorded_ones(saved, causal_lm_path):
    folder = f"{saved}/prm"
    recorded = load_scorer(folder, device="cpu").score(PROMPTS, STEPS)
    doubled = load_scorer(folder, beta=2 * BETA, device="cpu").score(PROMPTS, STEPS)
    for a, b in zip(recorded, doubled):  # q is linear in beta
        assert b == pytest.approx([2 * v for v in a], abs=1e-6)
    with pytest.warns(UserWarning, match="identical log-probabilities"):  # the PRM against itself: all zero
        zero = load_scorer(folder, ref_model=folder, device="cpu").score(PROMPTS, STEPS)
    assert all(v == 0.0 for row in zero for v in row)
    newline = load_scorer(folder, step_separator="\n", device="cpu")
    assert newline.prm.step_separator == "\n" and newline.prm.beta == BETA
    # a recorded head that contradicts an explicit prm_type is not used (as for the explicit heads)
    lm = load_scorer(folder, prm_type="lm_head", device="cpu")
    assert isinstance(lm, LMHeadScorer) and lm.step_separator == "\n" and lm.step_tag == " ки"


def test_without_prm_config_the_old_defaults_apply(saved, tmp_path):
    folder = tmp_path / "prm"
    shutil.copytree(f"{saved}/prm", folder)
    (folder / PRM_CONFIG_NAME).unlink()
    assert isinstance(load_scorer(str(folder), device="cpu"), LMHeadScorer)  # the file is what tells
    prm = load_scorer(str(folder), prm_type="implicit", device="cpu").prm
    assert (prm.beta, prm.has_reference, prm.step_separator) == (0.05, False, "\n")


def test_a_recorded_reference_folder_that_is_gone_names_the_file_field_and_fix(saved, causal_lm_path, tmp_path):
    """The trainer records the reference's absolute folder: on another machine, or once the folder moved, scoring
    says where that path came from and how to give the reference (was: 'folder not found: <path>' alone)."""
    reference = tmp_path / "reference"
    shutil.copytree(causal_lm_path, reference)
    folder = tmp_path / "prm"
    shutil.copytree(f"{saved}/prm", folder)
    save_prm_config(str(folder), {**load_prm_config(str(folder)), "ref_model": str(reference)})
    before = load_scorer(str(folder), device="cpu").score(PROMPTS, STEPS)
    shutil.rmtree(reference)
    with pytest.raises(ValueError) as error:
        load_scorer(str(folder), device="cpu")
    message = str(error.value)
    assert str(folder / PRM_CONFIG_NAME) in message and f"ref_model={str(reference)!r}" in message
    assert "folder not found" in message and "Pass the reference's folder or Hub id" in message
    after = load_scorer(str(folder), ref_model=causal_lm_path, device="cpu").score(PROMPTS, STEPS)
    for got, want in zip(after, before):  # the same weights from another folder: the same scores
        assert got == pytest.approx(want, abs=1e-6)


GOOD = {"head": "implicit", "beta": 0.1, "ref_model": None, "step_separator": "\n\n"}
MISSING = object()


@pytest.mark.parametrize(
    "change, match",
    [
        ({"beta": 0}, r"field 'beta' is 0; it must be a positive finite number"),
        ({"beta": -0.5}, r"field 'beta' is -0.5; it must be a positive finite number"),
        ({"beta": math.nan}, r"field 'beta' is nan; it must be a positive finite number"),
        ({"beta": math.inf}, r"field 'beta' is inf; it must be a positive finite number"),
        ({"beta": "0.1"}, r"field 'beta' is '0.1'; it must be a positive finite number"),
        ({"beta": True}, r"field 'beta' is True; it must be a positive finite number"),
        ({"beta": MISSING}, r"needs the field 'beta'"),
        ({"ref_model": MISSING}, r"needs the field 'ref_model'"),
        ({"ref_model": 3}, r"field 'ref_model' is 3; it must be a Hub id or folder, 'adapter'"),
        ({"ref_model": ""}, r"field 'ref_model' is ''; it must be a Hub id or folder"),
        ({"step_separator": MISSING}, r"needs the string field\(s\) \['step_separator'\]"),
    ],
)
def test_a_bad_implicit_prm_config_names_the_file_and_field(tmp_path, change, match):
    config = {key: value for key, value in {**GOOD, **change}.items() if value is not MISSING}
    (tmp_path / PRM_CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=match) as error:
        load_prm_config(str(tmp_path))
    assert str(tmp_path / PRM_CONFIG_NAME) in str(error.value) and "save_prm_config" in str(error.value)
    with pytest.raises(ValueError, match=match):
        save_prm_config(str(tmp_path / "new"), config)
    assert not (tmp_path / "new").exists()  # nothing written


def test_valid_implicit_configs_round_trip(tmp_path):
    for ref_model in (None, "adapter", "Qwen/Qwen2.5-0.5B", "/some/folder", UNKNOWN_REFERENCE):
        for beta in (0.05, 1):
            config = {**GOOD, "ref_model": ref_model, "beta": beta}
            save_prm_config(str(tmp_path), config)
            assert load_prm_config(str(tmp_path)) == config


def test_an_in_memory_reference_is_recorded_as_unknown_and_refused(tokenizer, causal_lm_path, tmp_path):
    from trl_erprm.tiny import build_tiny_model

    model = build_tiny_model(tokenizer, "causal_lm", seed=0)  # built in memory: no Hub id, no folder
    assert not model.config.name_or_path
    trainer = ImplicitPRMTrainer(
        model, args=_args(tmp_path / "out"), train_dataset=Dataset.from_list(_rows(2)), processing_class=tokenizer
    )
    with pytest.warns(UserWarning, match="records ref_model='<unknown>'"):
        trainer.save_model(str(tmp_path / "prm"))
    assert load_prm_config(str(tmp_path / "prm"))["ref_model"] == UNKNOWN_REFERENCE
    with pytest.raises(ValueError, match=r"ref_model is '<unknown>'.*Pass ref_model=<the reference's folder"):
        load_scorer(str(tmp_path / "prm"), device="cpu")  # never silently reference-free
    scorer = load_scorer(str(tmp_path / "prm"), ref_model=causal_lm_path, device="cpu")
    assert scorer.prm.beta == BETA and scorer.prm.ref_model is not None
    card_code = trainer.card_snippets(str(tmp_path / "prm"))[0][1]
    assert "ref_model='<unknown>'" in card_code and "ref_model=None" not in card_code


@pytest.fixture(scope="module")
def lora_folder(tmp_path_factory, tokenizer, causal_lm_path) -> str:
    """A LoRA implicit PRM trained one step and saved: an adapter folder (no config.json of its own)."""
    from peft import LoraConfig

    tmp_path = tmp_path_factory.mktemp("lora_implicit")
    trainer = ImplicitPRMTrainer(
        causal_lm_path,
        args=_args(tmp_path / "out", max_steps=1),
        train_dataset=Dataset.from_list(_rows(2)),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
    )
    trainer.train()
    folder = str(tmp_path / "prm")
    trainer.save_model(folder)
    return folder


def test_a_peft_prm_records_the_adapter_reference(lora_folder):
    folder = lora_folder
    assert os.path.isfile(os.path.join(folder, "adapter_config.json"))
    assert load_prm_config(folder)["ref_model"] == "adapter"
    scorer = load_scorer(folder, device="cpu")
    assert scorer.prm.reference_is_adapter and scorer.prm.ref_model is None
    expected = ImplicitPRM(folder, ref_model="adapter", beta=BETA, step_separator="\n\n").score_steps(PROMPTS, STEPS)
    scores = scorer.score(PROMPTS, STEPS)
    assert any(abs(v) > 0 for row in scores for v in row)
    for got, want in zip(scores, expected):
        assert got == pytest.approx(want["q_at_step_ends"], abs=1e-6)


def test_prm_reward_reads_a_peft_implicit_prm_folder_with_the_default_prm_type(lora_folder):
    """An adapter folder has no config.json of its own: its prm_config.json says what it is (was: 'Unrecognized
    model ... Should have a model_type key' from PRMReward / PRMGRPOTrainer, while load_scorer read it)."""
    from trl_erprm.prm_reward import PRMReward

    folder = lora_folder
    reward = PRMReward(folder, aggregation="last", device="cpu")
    assert isinstance(reward.scorer, ImplicitPRMScorer) and reward.scorer.prm.reference_is_adapter
    assert reward.scorer.prm.beta == BETA
    completions = ["\n\n".join(steps) for steps in STEPS]
    expected = ImplicitPRM(folder, ref_model="adapter", beta=BETA).score_steps(PROMPTS, STEPS)
    got = reward(PROMPTS, completions)
    assert any(abs(v) > 0 for v in got)
    assert got == pytest.approx([r["q_at_step_ends"][-1] for r in expected], abs=1e-6)


def test_best_of_n_with_the_default_prm_type_scores_the_implicit_prm(saved, tmp_path, caplog):
    folder = f"{saved}/prm"
    candidates = [["2 + 5 = 7.\n\nThe answer is 7.", "2 + 5 = 8.\n\nThe answer is 8."]]
    rows = [{"prompt": PROMPTS[0], "completions": candidates[0], "answers": ["7", "8"], "correct": [1, 0]}]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["--dataset_name", str(data), "--dataset_split", "train", "--prm_model", folder]
    argv += ["--answers_column", "answers", "--correctness_column", "correct", "--aggregations", "min"]
    argv += ["--num_seeds", "1", "--plot", "False", "--output_dir", str(tmp_path / "out")]
    with caplog.at_level(logging.INFO, logger="trl_erprm"):
        report = bon_main(argv)
    assert "implicit PRM scorer" in caplog.text and "beta=0.1" in caplog.text
    assert report["arguments"]["prm_type"] == "auto" and "weighted_majority_min" in report["curves"]
    part = tmp_path / "out" / "parts" / "part-00000.jsonl"
    [record] = [json.loads(line) for line in part.read_text().splitlines()]
    steps = [c.split("\n\n") for c in candidates[0]]
    expected = load_scorer(folder, device="cpu").score([PROMPTS[0]] * 2, steps)
    assert len(record["step_scores"]) == 2
    for got, want in zip(record["step_scores"], expected):
        assert got == pytest.approx(want, abs=1e-6)


def test_implicit_prm_device_argument(causal_lm_path, tokenizer):
    prm = ImplicitPRM(causal_lm_path, ref_model=causal_lm_path, device="cpu")
    assert next(prm.model.parameters()).device == torch.device("cpu")
    assert next(prm.ref_model.parameters()).device == torch.device("cpu")
    model = AutoModelForCausalLM.from_pretrained(causal_lm_path)
    on_object = ImplicitPRM(model, ref_model=None, tokenizer=tokenizer, device=torch.device("cpu"))
    assert on_object.model is model and next(model.parameters()).device.type == "cpu"
    with pytest.warns(UserWarning, match="identical log-probabilities"):  # the reference is the PRM itself
        assert prm.score_steps(PROMPTS[:1], STEPS[:1])[0]["q_at_step_ends"] == [0.0, 0.0]
    with pytest.raises(ValueError, match="Pass either device='cpu' or model_init_kwargs\\['device_map'\\]"):
        ImplicitPRM(causal_lm_path, ref_model=None, device="cpu", model_init_kwargs={"device_map": "cpu"})
