"""The public API is documented: every exported name and every public class appears in a `docs/*.md` page, and every
public class and function has a TRL-style docstring (an `Args:` section with one entry per argument).

Public means: in a module whose dotted name has no part starting with `_`, a name of the module's `__all__` (or, for a
module without `__all__`, a name not starting with `_`) that the module itself defines (re-exports are checked where
they are defined). The arguments of a class are those its own `__init__` takes, or, for a dataclass, the fields it
declares itself (a config documents its own fields, not those of `TrainingArguments`).
"""

import dataclasses
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import trl_erprm


ROOT = Path(__file__).resolve().parents[1]
DOCS = {path.name: path.read_text() for path in sorted((ROOT / "docs").glob("*.md"))}
#: Section headers of the argument list: `Args:` (TRL's trainers and functions) or `Parameters:` (TRL's configs).
ARGS_HEADER = re.compile(r"^(?P<indent>[ \t]*)(?:Args|Parameters):[ \t]*$", re.M)


def _modules():
    names = ["trl_erprm"] + [m.name for m in pkgutil.walk_packages(trl_erprm.__path__, "trl_erprm.")]
    return [name for name in names if not any(part.startswith("_") for part in name.split("."))]


MODULES = _modules()


def _public_objects():
    """`(qualified name, object)` of every public class and function, each once, where it is defined."""
    found = []
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        names = getattr(module, "__all__", None)
        if names is None:
            names = [name for name in vars(module) if not name.startswith("_")]
        for name in names:
            obj = getattr(module, name)
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__module__ == module_name:
                found.append((f"{module_name}.{name}", obj))
    return found


PUBLIC = _public_objects()
PUBLIC_CLASSES = [(name, obj) for name, obj in PUBLIC if inspect.isclass(obj)]


def _arguments(obj) -> list[str] | None:
    """Names of the arguments the docstring must describe, or `None` when the object defines no signature of its own
    (a class inheriting its `__init__` from another class, which is checked, or documented, where it is defined)."""
    if inspect.isclass(obj):
        if dataclasses.is_dataclass(obj):
            own = obj.__dict__.get("__annotations__", {})
            return [f.name for f in dataclasses.fields(obj) if f.name in own and f.init]
        if "__init__" not in obj.__dict__:
            return None
        function = obj.__init__
    else:
        function = obj
    parameters = list(inspect.signature(function).parameters.values())
    named = (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    )
    return [p.name for p in parameters if p.kind in named and p.name not in ("self", "cls")]


def _args_sections(docstring: str) -> str:
    """The text of every `Args:` / `Parameters:` section (up to the next line indented no deeper than its header)."""
    sections = []
    lines = docstring.splitlines()
    for i, line in enumerate(lines):
        match = ARGS_HEADER.match(line)
        if not match:
            continue
        indent = len(match["indent"].expandtabs())
        for body in lines[i + 1 :]:
            if body.strip() and len(body) - len(body.lstrip()) <= indent:
                break
            sections.append(body)
    return "\n".join(sections)


def test_the_walk_finds_the_api():
    # guards the discovery itself: a broken walk would make the other tests pass vacuously
    names = {name for name, _ in PUBLIC}
    assert {"trl_erprm.grpo.prime_trainer.PRIMETrainer", "trl_erprm.grpo.prl_config.PRLConfig"} <= names
    assert "trl_erprm.functional.er_label" in names and "trl_erprm._compat.GRPOTrainerHooks" not in names
    assert len(PUBLIC) > 50


@pytest.mark.parametrize("name", sorted(trl_erprm.__all__))
def test_exported_name_is_in_the_docs(name):
    assert hasattr(trl_erprm, name), f"trl_erprm.__all__ lists {name}, which trl_erprm does not define"
    pages = [page for page, text in DOCS.items() if re.search(rf"\b{re.escape(name)}\b", text)]
    assert pages, f"trl_erprm.{name} is exported but no docs/*.md page mentions it"


@pytest.mark.parametrize("qualified, cls", PUBLIC_CLASSES, ids=[name for name, _ in PUBLIC_CLASSES])
def test_public_class_is_in_the_docs(qualified, cls):
    pages = [page for page, text in DOCS.items() if re.search(rf"\b{re.escape(cls.__name__)}\b", text)]
    assert pages, f"{qualified} is a public class but no docs/*.md page mentions it"


@pytest.mark.parametrize("qualified, obj", PUBLIC, ids=[name for name, _ in PUBLIC])
def test_public_docstring_lists_every_argument(qualified, obj):
    docstring = obj.__doc__
    if dataclasses.is_dataclass(obj) and docstring and docstring.startswith(f"{obj.__name__}("):
        docstring = None  # the signature @dataclass writes when the class has no docstring
    assert docstring and docstring.strip(), f"{qualified} has no docstring"
    arguments = _arguments(obj)
    if not arguments:
        return
    section = _args_sections(inspect.cleandoc(docstring))
    assert section, f"{qualified} takes {arguments} but its docstring has no `Args:` section"
    missing = [name for name in arguments if not re.search(rf"^\s+{re.escape(name)} \(", section, re.M)]
    assert not missing, (
        f"{qualified}: the `Args:` section has no entry `name (`type`, ...):` for {missing} (TRL style: "
        "`name (`type`, *optional*, defaults to `x`):` followed by an indented description)"
    )
