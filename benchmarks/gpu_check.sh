#!/usr/bin/env bash
# The labeler's GPU figures (issue 17) in one short run on a bare GPU machine, from the repository root:
#
#   bash benchmarks/gpu_check.sh              # on the GPU machine; results in $OUT (default ./gpu_check_out)
#   bash benchmarks/gpu_check.sh --dry-run    # anywhere: every step but the measurements (checks the script itself)
#
# 1. Installs the wheels of benchmarks/gpu_wheels.txt from .whl/ (no network, no dependency resolution) into
#    /tmp/site and puts it and the checkout on PYTHONPATH; checks that every requirement of those wheels is met by
#    what the machine has (a mismatch is printed, not hidden).
# 2. Prints the versions and nvidia-smi.
# 3. Runs tests/test_gpu.py (the CUDA paths against the CPU; about a minute), log in $OUT/test_gpu.log.
# 4. Runs `benchmarks/run.py --quick --device cuda --only labeler` (that is `bench_labeler.py --quick --device cuda`
#    rendered as a page): a random 12-layer Qwen2 of width 1024 in bfloat16, 8 rows of the issue's shapes (problem
#    ~150 tokens, 6-10 steps of ~40 tokens, rollouts up to 256 new tokens, N = 8 and 16), 2 repeats, times in wall
#    seconds with CUDA synchronised; about 3 minutes on an H200. It writes RESULTS_cuda.md and results_cuda.json to
#    $OUT. The transformers backend only: vLLM's wheel is larger than what a device run may carry (64 MiB), so vLLM
#    on the GPU is recorded as not measured.
# Exit status: that of the benchmark (0: it ran; 1: it failed, traceback in the page), else that of the tests, 2 without a GPU, 3 when the
# wheels do not install, 124 when it overran GPU_CHECK_TIMEOUT seconds (default 420).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DRY_RUN=0
[ "${1:-}" = "--dry-run" ] && DRY_RUN=1
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
PY="${PYTHON:-python3}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
start=$(date +%s)
echo "=== gpu_check: $(date -Iseconds), output in $OUT"

echo "=== wheels"
WHEELS=$(grep -v '^#' benchmarks/gpu_wheels.txt | cut -d' ' -f1 | grep .)
if ls .whl/*.whl >/dev/null 2>&1; then
    SITE="${GPU_CHECK_SITE:-/tmp/site}"
    rm -rf "$SITE"
    if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl; then
        echo "gpu_check: the wheels in .whl/ did not install into $SITE (see above)"
        exit 3
    fi
    export PYTHONPATH="$SITE:$PWD"
else
    echo "no .whl/ folder: using the packages this Python already has"
    export PYTHONPATH="$PWD"
fi
WHEELS="$WHEELS" "$PY" - <<'EOF' || exit 3
import importlib.metadata as md
import os

from packaging.requirements import Requirement

missing, unmet = [], []
for line in os.environ["WHEELS"].split():
    name, version = line.split("==")
    try:
        found = md.version(name)
    except md.PackageNotFoundError:
        missing.append(line)
        continue
    if found != version:
        unmet.append(f"{name} is {found}, benchmarks/gpu_wheels.txt says {version}")
    for text in md.requires(name) or []:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue  # an extra or another platform
        try:
            have = md.version(requirement.name)
        except md.PackageNotFoundError:
            unmet.append(f"{name} needs {requirement}: not installed")
            continue
        if not requirement.specifier.contains(have, prereleases=True):
            unmet.append(f"{name} needs {requirement}: {requirement.name} {have} is installed")
for problem in unmet:
    print("WARNING:", problem)
if missing:
    raise SystemExit(f"gpu_check: not installed: {', '.join(missing)}; put their wheels in .whl/ (benchmarks/gpu_wheels.txt)")
print(f"{len(os.environ['WHEELS'].split())} wheels present; {len(unmet)} requirement(s) not met (warnings above)")
EOF

echo "=== versions"
"$PY" - <<'EOF'
import importlib.metadata as md
import platform

print("python", platform.python_version())
for name in ("torch", "transformers", "accelerate", "peft", "safetensors", "tokenizers", "numpy", "pandas", "pyarrow",
             "fsspec", "huggingface_hub", "trl", "datasets", "math-verify", "vllm"):
    try:
        print(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name} not installed")
import torch

print("cuda available", torch.cuda.is_available(), "| torch cuda", torch.version.cuda,
      "| device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
      "| bf16", torch.cuda.is_available() and torch.cuda.is_bf16_supported())
EOF
if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi; else echo "nvidia-smi: not found"; fi
NOTE="vLLM on the GPU: not measured. Its wheel is larger than what a device run may carry (64 MiB), so this run has the transformers backend only; bench_labeler records the vLLM comparison as skipped."
echo "$NOTE" | tee "$OUT/vllm_not_measured.txt"

if [ "$DRY_RUN" = 1 ]; then
    echo "=== dry run: the benchmark's GPU branch without a GPU must say so cleanly"
    "$PY" - <<'EOF' | tee "$OUT/dry_run.json"
import importlib.util, json, sys

import torch

spec = importlib.util.spec_from_file_location("bench_labeler", "benchmarks/bench_labeler.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
print(json.dumps({"plan": bench.plan(quick=True, device="cuda")}))
if not torch.cuda.is_available():
    result = bench.run(quick=True, device="cuda")
    print(json.dumps(result))
    sys.exit(0 if result.get("skipped") else 1)
EOF
    status=$?
    echo "=== gpu_check dry run finished in $(( $(date +%s) - start )) s (status $status)"
    exit "$status"
fi

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA GPU is visible to torch; nothing measured (run with --dry-run to check the script)"
    exit 2
fi
echo "=== tests/test_gpu.py (CUDA against CPU: rollouts, implicit PRM, PRM training in bf16 and scoring)"
tests_status=0
if [ "${GPU_CHECK_SKIP_TESTS:-0}" != 1 ]; then
    "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_gpu.py 2>&1 | tee "$OUT/test_gpu.log"
    tests_status=${PIPESTATUS[0]}
fi
echo "=== bench_labeler --quick --device cuda (transformers backend)"
BENCH_LABELER_PARTIAL="$OUT/labeler_partial.json" timeout "${GPU_CHECK_TIMEOUT:-420}" "$PY" benchmarks/run.py --quick --device cuda --only labeler \
    --output "$OUT/RESULTS_cuda.md"
status=$?
[ "$status" = 124 ] && echo "gpu_check: the benchmark overran ${GPU_CHECK_TIMEOUT:-420} s and was stopped"
echo "=== gpu_check finished in $(( $(date +%s) - start )) s (benchmark status $status, tests status $tests_status); files in $OUT:"
ls -la "$OUT"
[ "$status" = 0 ] && status=$tests_status
exit "$status"
