"""Tiny tokenizers and Qwen2 models built locally, with no Hub access.

They back the test suite, the offline quickstart and the CPU benchmarks: a byte-level BPE tokenizer trained with
`tokenizers` on a small math corpus, wrapped in a [`~transformers.PreTrainedTokenizerFast`] with a ChatML template, and
small randomly initialised `Qwen2` models (causal LM or token classification) saved as safetensors.
"""

from __future__ import annotations

import os
import random

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForTokenClassification,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
)


EOS_TOKEN = "<|endoftext|>"
BOS_TOKEN = "<|startoftext|>"
CHAT_TOKENS = ["<|im_start|>", "<|im_end|>"]
STEP_TAG = " ки"
# The pre-tokenization rule of Qwen2 tokenizers: punctuation is kept together with the newlines that follow it, so
# BPE learns tokens such as ".\n\n" that merge a step separator with its neighbour.
QWEN2_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] }}"
    "{% if not (loop.last and message['role'] == 'assistant' and continue_final_message is defined "
    "and continue_final_message) %}{{ '<|im_end|>\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def default_corpus(num_lines: int = 400, seed: int = 0) -> list[str]:
    """Return a small deterministic math corpus: word problems, numbered steps, `\\boxed{}` answers and step tags.

    Args:
        num_lines (`int`, *optional*, defaults to `400`):
            Number of text lines to generate.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the generator, so every call returns the same corpus.

    Returns:
        `list[str]`: The corpus lines.
    """
    rng = random.Random(seed)
    names = ["Ann", "Bob", "Cara", "Dan", "Eve", "Finn", "Gus", "Hana"]
    items = ["apples", "books", "coins", "eggs", "pens", "stamps", "marbles", "cards"]
    lines = []
    for i in range(num_lines):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        name, item = rng.choice(names), rng.choice(items)
        op, res = rng.choice([("+", a + b), ("-", a - b), ("*", a * b)])
        lines.append(
            f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have?\n\n"
            f"Step 1: {name} starts with {a} {item}.{STEP_TAG}\n\n"
            f"Step 2: {a} {op} {b} = {res}.{STEP_TAG}\n\n"
            f"The answer is \\boxed{{{res}}}.{STEP_TAG}"
        )
        lines.append(f"{name} buys {a} {item}.\n\nThen {b} more.\n\nSo {a} + {b} = {a + b}.\n\n\\boxed{{{a + b}}}")
        if i % 7 == 0:
            lines.append("Please reason step by step, and put your final answer within \\boxed{}. + - ки")
    return lines


def build_tokenizer(
    save_dir: str | os.PathLike | None = None,
    corpus: list[str] | None = None,
    vocab_size: int = 512,
    add_bos: bool = False,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on a small corpus and wrap it as a [`~transformers.PreTrainedTokenizerFast`].

    The tokenizer has `<|endoftext|>` as EOS and padding token, ChatML tokens and a ChatML chat template (which
    supports `continue_final_message`). Pre-tokenization follows Qwen2's rule and the corpus is full of `".\\n\\n"`, so
    BPE learns tokens that merge the step separator with the preceding character: the situation step-boundary code
    must handle.

    Args:
        save_dir (`str` or `os.PathLike`, *optional*):
            Folder to save the tokenizer to with `save_pretrained`. Not saved if `None`.
        corpus (`list[str]`, *optional*):
            Training text. Defaults to [`default_corpus`].
        vocab_size (`int`, *optional*, defaults to `512`):
            Target vocabulary size (the 256 byte symbols are always included).
        add_bos (`bool`, *optional*, defaults to `False`):
            Whether the tokenizer prepends a `<|startoftext|>` BOS token when `add_special_tokens=True`, like Llama
            tokenizers do.

    Returns:
        [`~transformers.PreTrainedTokenizerFast`]: The tokenizer.
    """
    corpus = corpus if corpus is not None else default_corpus()
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    special = [EOS_TOKEN, *CHAT_TOKENS] + ([BOS_TOKEN] if add_bos else [])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    if add_bos:
        bos_id = tokenizer.token_to_id(BOS_TOKEN)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A $B", special_tokens=[(BOS_TOKEN, bos_id)]
        )
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        bos_token=BOS_TOKEN if add_bos else None,
        additional_special_tokens=CHAT_TOKENS,
        model_max_length=2048,
    )
    wrapped.chat_template = CHATML_TEMPLATE
    if save_dir is not None:
        wrapped.save_pretrained(save_dir)
    return wrapped


def build_tiny_model(
    tokenizer: PreTrainedTokenizerFast,
    kind: str = "causal_lm",
    save_dir: str | os.PathLike | None = None,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 2,
    intermediate_size: int = 128,
    num_labels: int = 2,
    seed: int = 0,
) -> PreTrainedModel:
    """Build a small randomly initialised Qwen2 model for `tokenizer`.

    The defaults (hidden size 64, 2 heads of dimension 32) also load in the CPU build of vLLM, whose attention
    kernels need a head dimension of at least 32.

    Args:
        tokenizer ([`~transformers.PreTrainedTokenizerFast`]):
            Tokenizer whose vocabulary and special tokens the model uses.
        kind (`str`, *optional*, defaults to `"causal_lm"`):
            `"causal_lm"` for `AutoModelForCausalLM` or `"token_classification"` for
            `AutoModelForTokenClassification`.
        save_dir (`str` or `os.PathLike`, *optional*):
            Folder to save the model (safetensors) and the tokenizer to. The saved folder loads with
            `from_pretrained(save_dir)` like any Hub model.
        hidden_size (`int`, *optional*, defaults to `64`):
            Hidden size.
        num_hidden_layers (`int`, *optional*, defaults to `2`):
            Number of decoder layers.
        num_attention_heads (`int`, *optional*, defaults to `2`):
            Number of attention heads (and of key/value heads).
        intermediate_size (`int`, *optional*, defaults to `128`):
            Size of the MLP.
        num_labels (`int`, *optional*, defaults to `2`):
            Number of labels of a token classification model.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the weight initialisation.

    Returns:
        [`~transformers.PreTrainedModel`]: The model, in float32 and in eval mode.
    """
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_attention_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        num_labels=num_labels,
    )
    torch.manual_seed(seed)
    if kind == "causal_lm":
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    elif kind == "token_classification":
        model = AutoModelForTokenClassification.from_config(config, dtype=torch.float32)
    else:
        raise ValueError(f"kind must be 'causal_lm' or 'token_classification', got {kind!r}.")
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.eval()
    if save_dir is not None:
        model.save_pretrained(save_dir, safe_serialization=True)
        tokenizer.save_pretrained(save_dir)
    return model
