"""PRIMETrainer checkpoints: the PRM and its optimizer are part of every checkpoint, a checkpoint is whole or refused,
and the PRM folder carries a model card whose scoring snippet runs.

The kill test runs this file as a script in a subprocess: a PRIMETrainer whose PRM write at step 2 is followed by a
real SIGKILL of its own process, i.e. the run dies after PRIME saved the PRM and before the trainer wrote its files.
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from grpo_helpers import CPU_GRPO, changed, math_rows, scripted_rollout, state
from safetensors.torch import load_file
from trl import GRPOConfig, GRPOTrainer
from trl.rewards import accuracy_reward

from trl_erprm.grpo import PRIMEConfig, PRIMETrainer
from trl_erprm.grpo.prm_checkpoint import PRM_OPTIMIZER_NAME, PRM_STATE_NAME, check_prime_checkpoint, prm_model_card
from trl_erprm.implicit_prm import ImplicitPRM


TABLE = {
    "What is 2 + 2?": ["Step 1: 2 + 2 = 4.\n\nThe answer is \\boxed{4}.", "2 + 2 = 5.\n\\boxed{5}"],
    "What is 3 * 3?": ["3 * 3 = 9, so \\boxed{9}", "Step 1: 3 * 3 = 6.\n\nStep 2: \\boxed{6}."],
}
SOLUTIONS = {"What is 2 + 2?": "$4$", "What is 3 * 3?": "$9$"}


def trainer_for(model_path, output_dir, **overrides) -> PRIMETrainer:
    """A PRIMETrainer on scripted completions (every group kept), PRM built from the policy's folder."""
    config = {**CPU_GRPO, "max_completion_length": 32, "prm_learning_rate": 1e-3, "accuracy_lower_bound": 0.0}
    config.update(output_dir=str(output_dir), **overrides)
    return PRIMETrainer(
        model=model_path,
        reward_funcs=[accuracy_reward],
        args=PRIMEConfig(**config),
        train_dataset=Dataset.from_list(math_rows(SOLUTIONS)),
        rollout_func=scripted_rollout(TABLE),
    )


@pytest.fixture(scope="module")
def trained(causal_lm_path, tmp_path_factory):
    """An uninterrupted run of 2 steps with a checkpoint at each step, and the PRM it ends with."""
    out = tmp_path_factory.mktemp("prime_ckpt") / "out"
    trainer = trainer_for(causal_lm_path, out, max_steps=2, save_strategy="steps", save_steps=1)
    trainer.train()
    return {"out": out, "prm": state(trainer.prm.model), "policy": state(trainer.model)}


def copy_run(trained, tmp_path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(trained["out"], out)
    return out


def prm_weights(folder) -> dict:
    return load_file(str(Path(folder) / "prm" / "model.safetensors"))


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoints hold the PRM; resume restores it
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_every_checkpoint_holds_the_prm_of_its_step(trained):
    for step in (1, 2):
        folder = trained["out"] / f"checkpoint-{step}" / "prm"
        assert (folder / "model.safetensors").is_file() and (folder / PRM_OPTIMIZER_NAME).is_file()
        assert json.loads((folder / PRM_STATE_NAME).read_text()) == {"global_step": step, "optimizer": True}
        assert not (trained["out"] / f"checkpoint-{step}" / "prm.tmp").exists()
        check_prime_checkpoint(str(folder.parent))  # whole
    final = prm_weights(trained["out"] / "checkpoint-2")
    assert all(torch.equal(final[k], v) for k, v in trained["prm"].items() if k in final)
    assert any(not torch.equal(prm_weights(trained["out"] / "checkpoint-1")[k], v) for k, v in final.items())


@pytest.mark.slow
def test_resume_restores_the_prm_and_its_optimizer(trained, causal_lm_path, tmp_path):
    out = copy_run(trained, tmp_path)
    resumed = trainer_for(causal_lm_path, out, max_steps=2)
    assert changed(trained["prm"], resumed.prm.model)  # a fresh PRM starts from the initial weights
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    assert not changed(trained["prm"], resumed.prm.model)
    assert resumed.prm_optimizer.state_dict()["state"][0]["step"].item() == 2


@pytest.mark.slow
def test_resume_continues_like_an_uninterrupted_run(trained, causal_lm_path, tmp_path):
    out = copy_run(trained, tmp_path)
    shutil.rmtree(out / "checkpoint-2")
    resumed = trainer_for(causal_lm_path, out, max_steps=2)
    resumed.train(resume_from_checkpoint=True)  # the last checkpoint: step 1
    assert resumed.prm_optimizer.state_dict()["state"][0]["step"].item() == 2
    for name, weight in resumed.prm.model.state_dict().items():
        torch.testing.assert_close(weight, trained["prm"][name], atol=1e-6, rtol=0)
    for name, weight in resumed.model.state_dict().items():
        torch.testing.assert_close(weight, trained["policy"][name], atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------------------------------
# Whole or refused
# ---------------------------------------------------------------------------------------------------------------------


def kill_worker(model_path: str, output_dir: str) -> None:
    """Train 3 steps with a checkpoint per step; die by SIGKILL right after PRIME wrote the PRM of step 2."""

    class KilledAfterPRM(PRIMETrainer):
        def save_extra_state(self, folder):
            super().save_extra_state(folder)
            if self.state.global_step == 2:
                os.kill(os.getpid(), signal.SIGKILL)

    def make(**overrides):
        config = {**CPU_GRPO, "max_completion_length": 32, "prm_learning_rate": 1e-3, "accuracy_lower_bound": 0.0}
        return KilledAfterPRM(
            model=model_path,
            reward_funcs=[accuracy_reward],
            args=PRIMEConfig(**{**config, "output_dir": output_dir, **overrides}),
            train_dataset=Dataset.from_list(math_rows(SOLUTIONS)),
            rollout_func=scripted_rollout(TABLE),
        )

    make(max_steps=3, save_strategy="steps", save_steps=1).train()


@pytest.mark.slow
def test_a_run_killed_between_the_prm_and_the_trainer_state_resumes_only_from_a_whole_checkpoint(
    causal_lm_path, tmp_path
):
    out = tmp_path / "out"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [sys.executable, __file__, "--model", causal_lm_path, "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    assert (out / "checkpoint-2" / "prm" / PRM_STATE_NAME).is_file()  # PRIME wrote its part ...
    assert not (out / "checkpoint-2" / "trainer_state.json").exists()  # ... the trainer did not
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}

    resumed = trainer_for(causal_lm_path, out, max_steps=3)
    expected = re.escape(str(out / "checkpoint-1"))
    with pytest.raises(ValueError, match=rf"checkpoint-2: it has no trainer_state.json.*{expected}"):
        resumed.train(resume_from_checkpoint=True)
    with pytest.raises(ValueError, match="no trainer_state.json"):
        resumed.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before  # nothing touched

    # the last whole checkpoint resumes with the PRM of its step
    resumed = trainer_for(causal_lm_path, out, max_steps=1)
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-1"))
    saved = prm_weights(out / "checkpoint-1")
    assert all(torch.equal(resumed.prm.model.state_dict()[k], v) for k, v in saved.items())
    assert resumed.prm_optimizer.state_dict()["state"][0]["step"].item() == 1


@pytest.mark.slow
def test_checkpoints_without_the_prm_or_with_another_steps_prm_are_refused(trained, causal_lm_path, tmp_path):
    out = copy_run(trained, tmp_path)
    resumed = trainer_for(causal_lm_path, out, max_steps=2)

    # the failure mode of the old callback: the trainer's checkpoint, and no PRM (also: a plain GRPO checkpoint)
    shutil.rmtree(out / "checkpoint-2" / "prm")
    with pytest.raises(ValueError, match=r"no PRIME PRM.*resume_from_checkpoint='.*checkpoint-1'"):
        resumed.train(resume_from_checkpoint=str(out / "checkpoint-2"))

    # a PRM of another step
    shutil.copytree(out / "checkpoint-1" / "prm", out / "checkpoint-2" / "prm")
    with pytest.raises(ValueError, match="its PRM is from step 1, its trainer state from step 2"):
        resumed.train(resume_from_checkpoint=str(out / "checkpoint-2"))

    # a truncated trainer_state.json
    (out / "checkpoint-1" / "trainer_state.json").write_text('{"global_st')
    with pytest.raises(ValueError, match="unreadable.*No complete PRIME checkpoint"):
        resumed.train(resume_from_checkpoint=str(out / "checkpoint-1"))


@pytest.mark.slow
def test_a_plain_grpo_checkpoint_is_refused(causal_lm_path, tmp_path):
    out = tmp_path / "out"
    args = GRPOConfig(**{**CPU_GRPO, "output_dir": str(out), "save_strategy": "steps", "save_steps": 1})
    GRPOTrainer(
        model=causal_lm_path,
        reward_funcs=[accuracy_reward],
        args=args,
        train_dataset=Dataset.from_list(math_rows(SOLUTIONS)),
    ).train()
    with pytest.raises(ValueError, match=r"no PRIME PRM.*saved without PRIMETrainer.*start a new run"):
        trainer_for(causal_lm_path, out).train(resume_from_checkpoint=True)


# ---------------------------------------------------------------------------------------------------------------------
# The PRM's model card
# ---------------------------------------------------------------------------------------------------------------------


def python_block(card: str) -> str:
    [block] = re.findall(r"```python\n(.*?)```", card, re.S)
    return block


@pytest.mark.slow
def test_the_prm_folder_has_a_model_card_whose_snippet_runs(trained, causal_lm_path, capsys):
    folder = trained["out"] / "checkpoint-2" / "prm"
    card = (folder / "README.md").read_text()
    assert f"Base model (initial weights): `{causal_lm_path}`" in card  # a local folder: named, not linked
    assert "PRIME optimizer steps: 2" in card and "`accuracy_reward`" in card
    assert "2502.01456" in card and "2412.01981" in card and "@article{cui2025process" in card
    urls = re.findall(r"https?://[^\s)\]]+", card)
    assert urls and not [u for u in urls if "None" in u or str(Path(causal_lm_path).parent) in u]
    assert "base_model:" not in card  # no Hub id to declare

    snippet = python_block(card)
    assert repr(str(folder)) in snippet and f"ref_model={causal_lm_path!r}" in snippet
    exec(compile(snippet, "model card", "exec"), {})
    printed = capsys.readouterr().out
    step_rewards = json.loads(printed.split("] ")[0] + "]")
    assert len(step_rewards) == 2 and any(r != 0 for r in step_rewards)  # the trained PRM differs from its reference


@pytest.mark.slow
def test_the_prm_folder_records_itself_so_load_scorer_scores_it_as_the_implicit_prm(trained, causal_lm_path):
    from trl_erprm.evaluation.scorers import ImplicitPRMScorer, load_scorer
    from trl_erprm.models import load_prm_config

    folder = trained["out"] / "checkpoint-2" / "prm"
    recorded = load_prm_config(str(folder))
    assert recorded["head"] == "implicit" and recorded["ref_model"] == causal_lm_path
    assert recorded["step_separator"] == "\n\n" and recorded["trainer"] == "PRIMETrainer"
    scorer = load_scorer(str(folder), device="cpu")  # prm_type="auto": no flag needed
    assert isinstance(scorer, ImplicitPRMScorer) and scorer.prm.beta == recorded["beta"]
    steps = ["2 + 2 = 4.", "The answer is 4."]
    by_hand = ImplicitPRM(str(folder), ref_model=causal_lm_path, beta=recorded["beta"], device="cpu")
    [expected] = by_hand.score_steps(["What is 2 + 2?"], ["\n\n".join(steps)])
    [scores] = scorer.score(["What is 2 + 2?"], [steps])
    torch.testing.assert_close(torch.tensor(scores), torch.tensor(expected["q_at_step_ends"]))
    assert any(v != 0 for v in expected["step_rewards"])  # the trained PRM differs from its reference


def test_a_prm_without_a_step_separator_writes_no_prm_config(causal_lm_path, tokenizer, tmp_path, caplog):
    from trl_erprm.grpo.prm_checkpoint import implicit_prm_record, save_prm_folder

    prm = ImplicitPRM(causal_lm_path, ref_model=None, tokenizer=tokenizer, step_separator=None)
    with caplog.at_level("WARNING", logger="trl_erprm"):
        assert implicit_prm_record(prm) is None
        save_prm_folder(prm, None, str(tmp_path / "prm"), 1, "card")
    assert "prm_type='implicit'" in caplog.text
    assert not (tmp_path / "prm" / "prm_config.json").exists()
    record = implicit_prm_record(ImplicitPRM(causal_lm_path, ref_model=None, tokenizer=tokenizer))
    assert record["ref_model"] is None and record["head"] == "implicit"  # reference-free is recorded as such


def test_model_card_of_a_hub_model_links_it(causal_lm_path, tokenizer):
    prm = ImplicitPRM(causal_lm_path, ref_model=None, tokenizer=tokenizer)
    prm.model.config.name_or_path = "Qwen/Qwen2.5-Math-1.5B-Instruct"
    card = prm_model_card(prm, "user/my-prm", "Qwen/Qwen2.5-Math-1.5B-Instruct", 10, ["accuracy_reward"])
    assert card.startswith("---\nbase_model: Qwen/Qwen2.5-Math-1.5B-Instruct\n")
    assert "[Qwen/Qwen2.5-Math-1.5B-Instruct](https://huggingface.co/Qwen/Qwen2.5-Math-1.5B-Instruct)" in card
    assert "ImplicitPRM('user/my-prm', ref_model=None" in python_block(card)
    assert "reference-free" in card


@pytest.mark.slow
def test_save_model_writes_the_policy_and_the_prm(trained, causal_lm_path, tmp_path):
    trainer = trainer_for(causal_lm_path, tmp_path / "final")
    trainer.save_model()
    assert (tmp_path / "final" / "model.safetensors").is_file()
    assert (tmp_path / "final" / "prm" / "model.safetensors").is_file()
    assert (tmp_path / "final" / "prm" / "README.md").read_text().startswith("---\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    cli = parser.parse_args()
    kill_worker(cli.model, cli.out)
