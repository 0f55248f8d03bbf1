"""README and docs: every Python block runs as a saved script, every command names files, configs and subcommands
that exist."""

import builtins
import os
import re
import shlex
import subprocess
import symtable
import sys
from pathlib import Path

import pytest

from trl_erprm.cli import COMMANDS


ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)
GUARD = 'if __name__ == "__main__":'
#: What starts worker processes: the grader's (labeler, Best-of-N, search), vLLM's engine, DataLoader workers,
#: `datasets.map` processes. Some of them (vLLM's with `spawn`, DataLoader workers on macOS / Windows) re-import the
#: script that started them, so a block using one is written as a script with its `__main__` guard.
STARTS_WORKERS = re.compile(
    r"\b(ERPRMLabeler|MathVerifyGrader|bon_main|run_best_of_n|search_main|run_search|VLLMBackend|"
    r"dataloader_num_workers|dataset_num_proc|num_proc)\b|[\"']vllm[\"']"
)


def _blocks(page, language):
    return [body for lang, body in BLOCK.findall(page.read_text()) if lang == language]


def _script(page) -> str:
    """The Python blocks of a page, in order, as one script (later blocks use what earlier ones defined)."""
    return "\n".join(f"# --- {page.name}, block {i} ---\n{b}" for i, b in enumerate(_blocks(page, "python")))


@pytest.mark.parametrize("page", [p for p in PAGES if _blocks(p, "python")], ids=lambda p: p.name)
def test_python_blocks_run_as_a_script(page, tmp_path):
    """The Python blocks of a page, saved as one file and run with `python file.py` (so `__name__ == "__main__"`, as
    for a reader who copies them into a script), in a scratch folder laid out like a checkout: `examples/` and the
    sample data `tests/data/` are there."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "examples").symlink_to(ROOT / "examples")
    (work / "tests").mkdir()
    (work / "tests" / "data").symlink_to(ROOT / "tests" / "data")
    script = work / f"{page.stem}_blocks.py"
    script.write_text(_script(page))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(tmp_path / "hf_datasets_cache"),
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "WANDB_DISABLED": "true",
    }
    result = subprocess.run(
        [sys.executable, script.name], cwd=work, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{page.name} as a script failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"


def _undefined_names(code: str) -> set[str]:
    """Names a block reads but neither imports nor defines (nor are builtins): it is not a complete script."""
    top = symtable.symtable(code, "block", "exec")
    defined = {s.get_name() for s in top.get_symbols() if s.is_assigned() or s.is_imported()}
    used, tables = set(), [top]
    while tables:
        table = tables.pop()
        tables += table.get_children()
        for symbol in table.get_symbols():
            if symbol.is_referenced() and (table is top or symbol.is_global()):
                used.add(symbol.get_name())
    return used - defined - set(dir(builtins))


@pytest.mark.parametrize("page", [p for p in PAGES if _blocks(p, "python")], ids=lambda p: p.name)
def test_blocks_that_start_workers_are_complete_scripts(page):
    """A block that starts worker processes has its imports and its `__main__` guard: it runs when saved alone."""
    for i, block in enumerate(_blocks(page, "python")):
        if not STARTS_WORKERS.search(block):
            continue
        assert GUARD in block, f"{page.name} block {i} starts worker processes: write it as a script with `{GUARD}`"
        missing = _undefined_names(block)
        assert not missing, f"{page.name} block {i} starts worker processes but uses {sorted(missing)} from elsewhere"


def _commands(page):
    for block in _blocks(page, "bash"):
        for command in block.replace("\\\n", " ").splitlines():
            command = command.split("#")[0].strip()
            if command:
                yield command


@pytest.mark.parametrize("page", [p for p in PAGES if _blocks(p, "bash")], ids=lambda p: p.name)
def test_commands_reference_real_files(page):
    for command in _commands(page):
        for part in command.split("&&"):
            words = shlex.split(part)
            for i, word in enumerate(words):
                if re.match(r"^(examples|benchmarks)/.*\.(py|yaml)$", word):
                    assert (ROOT / word).exists(), f"{page.name}: `{part.strip()}` names missing {word}"
                if word == "--config_file":
                    assert (ROOT / words[i + 1]).exists(), f"{page.name}: missing config {words[i + 1]}"
            if words and words[0] == "trl-erprm":
                assert words[1] in COMMANDS, f"{page.name}: `trl-erprm {words[1]}` is not a subcommand"


def test_readme_has_the_two_newcomer_commands():
    commands = list(_commands(ROOT / "README.md"))
    assert any("pip install torch==2.13.0" in c and c.endswith("trl-erprm quickstart") for c in commands)
    assert any("pip install torch==2.13.0" in c and c.endswith("pytest") for c in commands)
    assert os.path.exists(ROOT / "CITATION.cff")
