"""Lazy package namespaces (internal): `import trl_erprm` imports no submodule until one of its names is used.

The pattern is TRL's (`trl/__init__.py` with `trl._lazy_module._LazyModule`, itself from optuna and transformers): a
package's `__init__` maps each public name to the submodule defining it and replaces itself in `sys.modules` by a
[`LazyModule`] that imports the submodule on first access. TRL's class is private, so trl-erprm keeps this small
equivalent instead of depending on it. Static type checkers and IDEs read the `if TYPE_CHECKING:` imports of each
`__init__`.
"""

from __future__ import annotations

import importlib
import os
from itertools import chain
from types import ModuleType
from typing import Any


class LazyModule(ModuleType):
    """A package module whose public names are imported from their submodules on first access.

    Args:
        name (`str`):
            Dotted name of the package (its `__name__`).
        module_file (`str`):
            Path of the package's `__init__.py` (its `__file__`).
        import_structure (`dict[str, list[str]]`):
            For each submodule (relative dotted name, e.g. `"data.stepwise"`), the names it defines and the package
            exports.
        module_spec (`importlib.machinery.ModuleSpec`, *optional*):
            The package's `__spec__`.
        extra_objects (`dict[str, Any]`, *optional*):
            Values defined in the package itself (e.g. `__version__`).
    """

    def __init__(
        self,
        name: str,
        module_file: str,
        import_structure: dict[str, list[str]],
        module_spec=None,
        extra_objects: dict[str, Any] | None = None,
    ):
        super().__init__(name)
        self._name_to_module = {value: key for key, values in import_structure.items() for value in values}
        self._objects = dict(extra_objects or {})
        self._import_structure = import_structure
        self.__all__ = sorted(set(chain(*import_structure.values())) | {k for k in self._objects if k[0] != "_"})
        self.__file__ = module_file
        self.__spec__ = module_spec
        self.__path__ = [os.path.dirname(module_file)]
        self.__doc__ = (extra_objects or {}).get("__doc__")

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self.__all__))

    def __getattr__(self, name: str) -> Any:
        if name in self._objects:
            return self._objects[name]
        if name not in self._name_to_module:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        module = importlib.import_module("." + self._name_to_module[name], self.__name__)
        value = getattr(module, name)
        setattr(self, name, value)
        return value

    def __reduce__(self):
        return (self.__class__, (self.__name__, self.__file__, self._import_structure))
