"""Cost of ImplicitPRM scoring, and memory of the shared-adapter reference against a separate reference copy.

Throughput: `ImplicitPRM.__call__` on text (tokenization with offset mappings, step ends, two forward passes under
`no_grad`, log-softmax, q values, aggregation) against the bare minimum it cannot avoid: two raw forward passes (PRM and
reference) of the same models over the same pre-tokenized, length-sorted, padded batches. Both run alternately in the
same process, `repeats` times; the ratio is computed per repeat (1.0 = no overhead over the two forward passes). On
CPU with one torch thread the times are CPU time of the process (other jobs on a shared machine barely move them), on
CUDA wall time after synchronizing.

Memory: a LoRA PRM scored with `ref_model="adapter"` (one base model in memory) against the same PRM with a separate
reference copy loaded from disk. Each setup runs in a fresh subprocess that loads its models and scores one batch; on
CPU it reports the peak resident set size (Linux `VmHWM`, reset through `/proc/self/clear_refs` after the imports)
minus the resident size before loading, on CUDA `torch.cuda.max_memory_allocated`. Parameter bytes are reported too.

    python benchmarks/bench_implicit_prm.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DESCRIPTION = (
    "ImplicitPRM scoring throughput against two raw forward passes of the same models (ratio per repeat, same run; "
    "CPU time with one thread on CPU, wall time on CUDA), "
    "and peak memory of the shared-adapter reference against a separate reference copy (fresh subprocess per setup; "
    "CPU: peak RSS delta, CUDA: max allocated)."
)

DEVICES = ("cpu", "cuda")

#: Throughput models are kept small (the machine is shared); memory models are larger so that parameters dominate noise.
#: Keys: `quick` on CPU; `"cuda"` is used on a GPU (larger models, quick or not).
SIZES = {
    "cuda": {
        "hidden_size": 1024,
        "num_hidden_layers": 8,
        "completions": 128,
        "batch_size": 32,
        "repeats": 9,
        "memory_hidden_size": 2048,
        "memory_num_hidden_layers": 8,
        "memory_batch_size": 16,
    },
    True: {
        "hidden_size": 128,
        "num_hidden_layers": 4,
        "completions": 16,
        "batch_size": 8,
        "repeats": 9,
        "memory_hidden_size": 512,
        "memory_num_hidden_layers": 4,
        "memory_batch_size": 4,
    },
    False: {
        "hidden_size": 256,
        "num_hidden_layers": 4,
        "completions": 32,
        "batch_size": 16,
        "repeats": 9,
        "memory_hidden_size": 1024,
        "memory_num_hidden_layers": 4,
        "memory_batch_size": 8,
    },
}


def _texts(n: int) -> tuple[list[str], list[str]]:
    """Prompts and multi-step completions from the tiny math corpus."""
    from trl_erprm.tiny import default_corpus

    lines = [line for line in default_corpus(4 * n) if "\n\n" in line]
    prompts, completions = [], []
    for line in lines[:n]:
        head, _, rest = line.partition("\n\n")
        prompts.append(head)
        completions.append(rest)
    return prompts, completions


def _build(tmp: Path, hidden_size: int, num_hidden_layers: int, seeds: dict[str, int]) -> dict[str, str]:
    """Save tiny Qwen2 causal LMs (with their tokenizer) of the requested size under `tmp`, one per name and seed."""
    from trl_erprm.tiny import build_tiny_model, build_tokenizer

    tokenizer = build_tokenizer()
    paths = {}
    for name, seed in seeds.items():
        build_tiny_model(
            tokenizer,
            save_dir=tmp / name,
            hidden_size=hidden_size,
            num_hidden_layers=num_hidden_layers,
            num_attention_heads=max(2, hidden_size // 64),
            intermediate_size=4 * hidden_size,
            seed=seed,
        )
        paths[name] = str(tmp / name)
    return paths


def _throughput(paths: dict[str, str], size: dict, device: str) -> tuple[dict, list[float]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_erprm.implicit_prm import ImplicitPRM

    tokenizer = AutoTokenizer.from_pretrained(paths["prm"])
    model = AutoModelForCausalLM.from_pretrained(paths["prm"]).to(device).eval()
    ref = AutoModelForCausalLM.from_pretrained(paths["ref"]).to(device).eval()
    prm = ImplicitPRM(model, ref_model=ref, tokenizer=tokenizer, batch_size=size["batch_size"])
    prompts, completions = _texts(size["completions"])

    # the raw baseline: the same sequences, tokenized once, length-sorted, padded, two forward passes per batch
    sequences = [
        tokenizer(p)["input_ids"] + tokenizer(c, add_special_tokens=False)["input_ids"]
        for p, c in zip(prompts, completions)
    ]
    sequences.sort(key=len)
    batches = []
    for start in range(0, len(sequences), size["batch_size"]):
        chunk = sequences[start : start + size["batch_size"]]
        width = max(len(s) for s in chunk)
        ids = torch.tensor([s + [0] * (width - len(s)) for s in chunk], device=device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in chunk], device=device)
        batches.append((ids, mask))

    def raw() -> None:
        with torch.no_grad():
            for ids, mask in batches:
                _ = model(input_ids=ids, attention_mask=mask).logits
                _ = ref(input_ids=ids, attention_mask=mask).logits

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    prm(prompts[: size["batch_size"]], completions[: size["batch_size"]])  # warm-up
    raw()
    # CPU: the CPU time of this (single-threaded) process, which other jobs on a shared machine barely move; CUDA: wall
    clock = time.perf_counter if device.startswith("cuda") else time.process_time
    implicit_s, raw_s = [], []
    for _ in range(size["repeats"]):
        sync()
        start = clock()
        prm(prompts, completions)
        sync()
        implicit_s.append(clock() - start)
        start = clock()
        raw()
        sync()
        raw_s.append(clock() - start)
    n = len(prompts)
    return {
        "implicit_prm_seq_per_s": [n / s for s in implicit_s],
        "raw_two_forward_seq_per_s": [n / s for s in raw_s],
        "tokens_per_sequence": statistics.mean(len(s) for s in sequences),
    }, [a / b for a, b in zip(implicit_s, raw_s)]


def _memory_child(setup: str, prm_path: str, size_json: str, device: str) -> dict:
    """Load the models of one setup and score one batch; report its peak memory (runs in a fresh process)."""
    import torch

    size = json.loads(size_json)

    def rss() -> int:
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_erprm.implicit_prm import ImplicitPRM

    prompts, completions = _texts(size["memory_batch_size"])
    tokenizer = AutoTokenizer.from_pretrained(prm_path)
    on_cuda = device.startswith("cuda")
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
        start_cuda = torch.cuda.memory_allocated()
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak RSS to the current RSS
        f.write("5")
    before, _ = rss()
    torch.manual_seed(0)
    config = LoraConfig(r=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(prm_path).to(device), config)
    reference = "adapter" if setup == "adapter" else prm_path
    prm = ImplicitPRM(model, ref_model=reference, tokenizer=tokenizer, batch_size=size["memory_batch_size"])
    scores = prm(prompts, completions)
    _, peak = rss()
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if prm.ref_model is not None:
        param_bytes += sum(p.numel() * p.element_size() for p in prm.ref_model.parameters())
    result = {"peak_rss_delta_bytes": peak - before, "param_bytes": param_bytes, "score_0": scores[0]}
    if on_cuda:
        result["cuda_peak_bytes"] = torch.cuda.max_memory_allocated() - start_cuda
    return result


def _memory(path: str, size: dict, device: str, repeats: int) -> tuple[dict, list[float]]:
    out: dict[str, list] = {}
    for _ in range(repeats):
        for setup in ("adapter", "separate"):
            command = [sys.executable, __file__, "--memory-child", setup, path, json.dumps(size), device]
            done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=600)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            for key, value in result.items():
                out.setdefault(f"{setup}_{key}", []).append(value)
    if any(abs(a - b) > 1e-5 for a, b in zip(out["adapter_score_0"], out["separate_score_0"])):
        raise RuntimeError("The two setups gave different scores: the comparison is not like for like.")
    key = "cuda_peak_bytes" if device.startswith("cuda") else "peak_rss_delta_bytes"
    return {
        "measured": "torch.cuda.max_memory_allocated" if device.startswith("cuda") else "peak RSS delta (VmHWM)",
        "adapter_reference_peak_mib": [b / 2**20 for b in out[f"adapter_{key}"]],
        "separate_reference_peak_mib": [b / 2**20 for b in out[f"separate_{key}"]],
        "adapter_reference_param_mib": out["adapter_param_bytes"][0] / 2**20,
        "separate_reference_param_mib": out["separate_param_bytes"][0] / 2**20,
    }, [s / a for s, a in zip(out[f"separate_{key}"], out[f"adapter_{key}"])]


def run(quick: bool = False, device: str = "cpu") -> dict:
    """Measure ImplicitPRM throughput against two raw forward passes, and reference memory with and without sharing.

    Args:
        quick (`bool`, *optional*, defaults to `False`):
            The smaller CPU settings of [`SIZES`] and 2 memory repeats instead of 3 (a few minutes on 2 busy cores).
        device (`str`, *optional*, defaults to `"cpu"`):
            `"cpu"` or `"cuda"` (the larger `SIZES["cuda"]` models; memory is `torch.cuda.max_memory_allocated`).

    Returns:
        `dict`: `settings`, `throughput` (`implicit_prm_seq_per_s`, `raw_two_forward_seq_per_s` per repeat,
        `tokens_per_sequence`), `memory` (peak MiB of each setup per repeat, parameter MiB), `ratios` (time of
        ImplicitPRM over the two raw forward passes, and peak memory of a separate reference over the shared adapter,
        per repeat) and `notes`.
    """
    import torch

    if device == "cpu":
        torch.set_num_threads(1)  # one thread: CPU time is then a clean measure on a shared machine
    size = SIZES["cuda" if device == "cuda" else bool(quick)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = _build(tmp / "speed", size["hidden_size"], size["num_hidden_layers"], {"prm": 0, "ref": 1})
        throughput, time_ratio = _throughput(paths, size, device)
        big = _build(tmp / "memory", size["memory_hidden_size"], size["memory_num_hidden_layers"], {"prm": 0})
        memory, memory_ratio = _memory(big["prm"], size, device, repeats=2 if quick else 3)
    return {
        "settings": {**size, "device": device},
        "throughput": throughput,
        "memory": memory,
        "ratios": {
            f"ImplicitPRM scoring / two raw forward passes, {'wall' if device == 'cuda' else 'CPU'} time": time_ratio,
            "separate reference copy / shared adapter reference, peak memory": memory_ratio,
        },
        "notes": (
            "A time ratio above 1 is ImplicitPRM's overhead over the two forward passes it must run (tokenization "
            "with offsets, step mapping, log-softmax gathers, q values). The memory setups hold the same LoRA PRM; "
            "'separate' adds a reference copy of the base. On CPU the peak RSS delta includes activations and "
            "allocator caching; the parameter MiB are exact."
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Smaller models and fewer repeats.")
    parser.add_argument("--device", default="cpu", choices=DEVICES, help="Where to run.")
    parser.add_argument("--memory-child", nargs=4, metavar=("SETUP", "PRM", "SIZE", "DEVICE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        print(json.dumps(_memory_child(*args.memory_child)))
        return
    print(json.dumps(run(quick=args.quick, device=args.device), indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
