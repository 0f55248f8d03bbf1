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
    "trl_erprm.prime",
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
