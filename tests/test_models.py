"""The one model loader (`trl_erprm.models`): dtype policy, safetensors only, no remote code, clear path errors."""

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from trl_erprm.models import check_model_path, load_config, load_model, load_tokenizer, resolve_dtype


def test_resolve_dtype():
    assert resolve_dtype(None) == "auto" and resolve_dtype("auto") == "auto"
    assert resolve_dtype("bfloat16") is torch.bfloat16 and resolve_dtype(torch.float16) is torch.float16
    for bad in ("bf16", "Tensor", 16):
        with pytest.raises(ValueError, match="is not a dtype"):
            resolve_dtype(bad)


@pytest.mark.parametrize("path", ["/no/such/prm", "./no_such_prm", "../no_such_prm", "~/no_such_prm", "a/b/c", "x/"])
def test_a_missing_local_folder_says_folder_not_found(path):
    with pytest.raises(FileNotFoundError, match="folder not found: "):
        load_model(path)
    with pytest.raises(FileNotFoundError, match="folder not found: "):
        load_tokenizer(path)


def test_hub_ids_and_existing_folders_pass_the_check(causal_lm_path, tmp_path):
    assert check_model_path("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"  # a Hub id: left to the Hub
    assert check_model_path(causal_lm_path) == causal_lm_path
    (tmp_path / "weights.bin").write_text("")
    with pytest.raises(NotADirectoryError, match="is a file"):
        check_model_path(str(tmp_path / "weights.bin"))


def test_dtype_policy(causal_lm_path, token_cls_path):
    assert load_model(causal_lm_path).dtype == torch.float32  # "auto": the checkpoint's dtype
    assert load_model(causal_lm_path, dtype="bfloat16").dtype == torch.bfloat16
    assert load_model(causal_lm_path, torch_dtype="bfloat16").dtype == torch.bfloat16  # the old name still works
    model = load_model(token_cls_path, "token_classification", dtype=torch.float16, num_labels=2)
    assert model.dtype == torch.float16 and model.config.num_labels == 2
    assert load_config(token_cls_path).architectures[0].endswith("ForTokenClassification")
    with pytest.raises(ValueError, match="task must be one of"):
        load_model(causal_lm_path, "seq2seq")


def test_safetensors_only(causal_lm_path, tmp_path):
    with pytest.raises(ValueError, match="safetensors only"):
        load_model(causal_lm_path, use_safetensors=False)
    pickled = tmp_path / "pickled"  # the same model with its weights as a pickle (which can run code when loaded)
    model = AutoModelForCausalLM.from_pretrained(causal_lm_path)
    model.save_pretrained(pickled)
    (pickled / "model.safetensors").unlink()
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(OSError, match="safetensors"):
        load_model(str(pickled))


def test_remote_code_stays_off(causal_lm_path, tmp_path):
    """A repository that ships its own model code (`auto_map`) never gets it run unless trust_remote_code=True."""
    remote = tmp_path / "remote"
    model = AutoModelForCausalLM.from_pretrained(causal_lm_path)
    model.save_pretrained(remote)
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (remote / "config.json").write_text(json.dumps(config))
    (remote / "modeling_evil.py").write_text("raise RuntimeError('remote code ran')\n")
    assert type(load_model(str(remote))).__name__ == "Qwen2ForCausalLM"  # transformers' own class, no remote code
    with pytest.raises(RuntimeError, match="remote code ran"):
        load_model(str(remote), trust_remote_code=True)  # the flag is what lets it run


def test_adapter_folder_loads_as_peft_model(causal_lm_path, tmp_path):
    base = AutoModelForCausalLM.from_pretrained(causal_lm_path)
    lora = LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM", init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(tmp_path / "adapter")
    model = load_model(str(tmp_path / "adapter"))
    assert isinstance(model, PeftModel) and model.dtype == torch.float32
