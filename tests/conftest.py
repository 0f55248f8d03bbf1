"""Shared fixtures: tiny tokenizers and Qwen2 models built on disk, with no Hub access.

Every fixture is session-scoped and saved under a temporary folder, so a test can pass either the object or the
folder path (`model_path`) wherever TRL expects a model id.
"""

import os


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from trl_erprm.tiny import build_tiny_model, build_tokenizer  # noqa: E402


SAMPLE_DATA = Path(__file__).resolve().parent / "data"


# One thread: the test models are tiny, and on a loaded 2-core machine extra threads only contend.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """Root folder of the tiny models of this test session."""
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def tokenizer(tiny_dir):
    """Byte-level BPE tokenizer (no BOS) with a ChatML template; merges `".\\n\\n"` into one token."""
    return build_tokenizer(tiny_dir / "tokenizer")


@pytest.fixture(scope="session")
def bos_tokenizer(tiny_dir):
    """The same tokenizer, but prepending a BOS token like Llama tokenizers."""
    return build_tokenizer(tiny_dir / "tokenizer_bos", add_bos=True)


@pytest.fixture(scope="session")
def causal_lm_path(tokenizer, tiny_dir):
    """Folder of a tiny Qwen2 causal LM (safetensors + tokenizer)."""
    path = tiny_dir / "causal_lm"
    build_tiny_model(tokenizer, "causal_lm", save_dir=path, seed=0)
    return str(path)


@pytest.fixture(scope="session")
def token_cls_path(tokenizer, tiny_dir):
    """Folder of a tiny Qwen2 token-classification model with 2 labels (safetensors + tokenizer)."""
    path = tiny_dir / "token_cls"
    build_tiny_model(tokenizer, "token_classification", save_dir=path, seed=0)
    return str(path)


@pytest.fixture
def causal_lm(causal_lm_path):
    """A fresh copy of the tiny causal LM, loaded from its folder."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(causal_lm_path)


@pytest.fixture
def token_cls_model(token_cls_path):
    """A fresh copy of the tiny token-classification model, loaded from its folder."""
    from transformers import AutoModelForTokenClassification

    return AutoModelForTokenClassification.from_pretrained(token_cls_path)


@pytest.fixture(scope="session")
def sample_data():
    """Folder of the real public data samples shipped with the tests (`tests/data`, see its README)."""
    return SAMPLE_DATA


@pytest.fixture
def cpu_train_kwargs(tmp_path):
    """TrainingArguments fields for fast, deterministic CPU training runs in tests."""
    return {
        "output_dir": str(tmp_path / "out"),
        "use_cpu": True,
        "bf16": False,
        "report_to": "none",
        "save_strategy": "no",
        "gradient_checkpointing": False,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
        "seed": 0,
    }
