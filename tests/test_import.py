"""Fast start: `import trl_erprm` and `trl-erprm --help` import no heavy module; a subcommand imports only its own.

Each check runs in a fresh interpreter and reads `sys.modules` there (timings are in `benchmarks/bench_import.py`).
"""

import json
import subprocess
import sys

import pytest


#: Modules that take seconds to import: torch, transformers' models, TRL's trainers (GRPO above all), our trainers.
HEAVY = (
    "torch",
    "transformers",
    "datasets",
    "trl.trainer",
    "trl.trainer.grpo_trainer",
    "trl_erprm.erprm_trainer",
    "trl_erprm.prm.prm_trainer",
    "trl_erprm.implicit_prm",
    "trl_erprm.grpo.prime_trainer",
    "trl_erprm.labeling.labeler",
)


def _modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter has imported after running `code`."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_import_trl_erprm_imports_nothing_heavy():
    modules = _modules_after("import trl_erprm")
    assert not [m for m in HEAVY if m in modules]
    assert not [m for m in modules if m.startswith("trl_erprm.") and m != "trl_erprm._lazy"]


def test_help_imports_nothing_heavy():
    modules = _modules_after(
        "import contextlib, io\nfrom trl_erprm.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n    assert main(['--help']) == 0"
    )
    assert not [m for m in HEAVY if m in modules]


@pytest.mark.parametrize(
    "command, loaded, not_loaded",
    [
        ("label", "trl_erprm.labeling.labeler", ("trl_erprm.evaluation.bon", "trl_erprm.quickstart.pipeline")),
        ("bon", "trl_erprm.evaluation.bon", ("trl_erprm.labeling.labeler", "trl_erprm.quickstart.pipeline")),
    ],
)
def test_a_subcommand_imports_only_its_own_module(command, loaded, not_loaded):
    modules = _modules_after(
        "import contextlib, io\nfrom trl_erprm.cli import main\n"
        f"with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n    main(['{command}', '--help'])"
    )
    assert loaded in modules
    assert not [m for m in not_loaded if m in modules]
    assert "trl.trainer.grpo_trainer" not in modules


def test_public_names_resolve_on_first_use():
    import trl_erprm

    for name in trl_erprm.__all__:
        assert getattr(trl_erprm, name) is not None
    assert trl_erprm.PRMTrainer.__module__ == "trl_erprm.prm.prm_trainer"
    with pytest.raises(AttributeError, match="no attribute 'NoSuchName'"):
        trl_erprm.NoSuchName  # noqa: B018


def _static_imports() -> dict[str, set[str]]:
    """For every module of the package, the trl_erprm modules it imports (anywhere in its source, lazily or not)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "trl_erprm"
    found = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                name = ".".join(base + ([node.module] if node.module else []))
                deps |= {name} if node.module else {f"{name}.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.Import):
                deps |= {alias.name for alias in node.names}
        found[module] = {d for d in deps if d.startswith("trl_erprm")}
    return found


def test_import_arrows_point_one_way():
    """docs/architecture.md: the bottom layer imports nothing of ours, the data layer no trainer, labeler or scorer,
    the labeler and the scorers no trainer; only the CLI imports the quickstart, and nothing imports the CLI."""
    imports = _static_imports()
    assert len(imports) > 30 and imports["trl_erprm.data.stepwise"] == {"trl_erprm.functional", "trl_erprm.steps"}

    def breaking(modules, allowed=None, forbidden=None):
        """The imports of `modules` outside `allowed` or inside `forbidden` (prefixes)."""
        return {
            (m, d)
            for m in modules
            for d in imports[m]
            if (allowed is not None and not d.startswith(allowed)) or (forbidden and d.startswith(forbidden))
        }

    bottom = [f"trl_erprm.{name}" for name in ("steps", "functional", "models", "_lazy", "_compat", "tiny")]
    assert not breaking(bottom, allowed=())
    data = [m for m in imports if m.startswith("trl_erprm.data")]
    assert not breaking(data, allowed=("trl_erprm.data", "trl_erprm.steps", "trl_erprm.functional", "trl_erprm._lazy"))
    trainers = ("trl_erprm.prm", "trl_erprm.erprm_", "trl_erprm.implicit_prm_", "trl_erprm.grpo")
    users = [m for m in imports if m.startswith(("trl_erprm.labeling", "trl_erprm.evaluation"))]
    assert not breaking(users, forbidden=trainers)
    others = [m for m in imports if not m.startswith(("trl_erprm.quickstart", "trl_erprm.cli"))]
    assert not breaking(others, forbidden=("trl_erprm.quickstart", "trl_erprm.cli"))
