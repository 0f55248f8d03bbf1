"""Helpers of the GRPO-subclass tests (PRIME, PRL, the compat contract), importable by the test files and by the
worker scripts that `accelerate launch` starts (they run with `tests/` on `sys.path`)."""

import os


os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

#: GRPOConfig fields of every test run: tiny batches, CPU, deterministic, nothing saved, logs at every step.
CPU_GRPO = {
    "per_device_train_batch_size": 4,
    "num_generations": 2,
    "max_completion_length": 6,
    "max_steps": 1,
    "learning_rate": 1e-2,
    "bf16": False,
    "use_cpu": True,
    "report_to": "none",
    "logging_steps": 1,
    "save_strategy": "no",
    "disable_tqdm": True,
    "seed": 0,
}


def user(text):
    """A conversational prompt of one user message."""
    return [{"role": "user", "content": text}]


def math_rows(solutions):
    """Dataset rows `{"prompt", "solution"}` from a `{question: solution}` dict."""
    return [{"prompt": user(q), "solution": s} for q, s in solutions.items()]


def scripted_rollout(table):
    """A GRPOTrainer `rollout_func` returning fixed completions: completion `j` of the group of a prompt is
    `table[prompt][j]`, `j` being the sample's position in the global batch modulo `num_generations` (so a run on
    several processes sees the same completions as a run on one)."""

    def rollout_func(prompts, trainer):
        tokenizer = trainer.processing_class
        start = trainer.accelerator.process_index * len(prompts)
        prompt_ids, completion_ids = [], []
        for i, prompt in enumerate(prompts):
            text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
            prompt_ids.append(tokenizer(text, add_special_tokens=False)["input_ids"])
            completion = table[prompt[-1]["content"]][(start + i) % trainer.num_generations]
            completion_ids.append(
                tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            )
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}

    return rollout_func


def state(model):
    """A detached copy of a model's state dict."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before, model):
    """Whether any weight of `model` differs from the copy `before`."""
    return any(not v.equal(before[k]) for k, v in model.state_dict().items())


def logged(trainer, key):
    """Every logged value of a metric, in order."""
    return [entry[key] for entry in trainer.state.log_history if key in entry]
