"""README and docs: every Python block runs, every command names files, configs and subcommands that exist."""

import os
import re
import shlex
from pathlib import Path

import pytest

from trl_erprm.cli import COMMANDS


ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)


def _blocks(page, language):
    return [body for lang, body in BLOCK.findall(page.read_text()) if lang == language]


@pytest.mark.parametrize("page", [p for p in PAGES if _blocks(p, "python")], ids=lambda p: p.name)
def test_python_blocks_run(page, tmp_path, monkeypatch):
    """The Python blocks of a page run top to bottom in one namespace, as a reader would paste them.

    They run in a scratch folder laid out like a checkout: `examples/` and the sample data `tests/data/` are there.
    """
    work = tmp_path / "work"
    work.mkdir()
    (work / "examples").symlink_to(ROOT / "examples")
    (work / "tests").mkdir()
    (work / "tests" / "data").symlink_to(ROOT / "tests" / "data")
    monkeypatch.chdir(work)
    namespace = {"__name__": "__docs__"}
    for block in _blocks(page, "python"):
        exec(compile(block, f"{page.name}", "exec"), namespace)


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
