"""Plugin registries: methods and tasks register themselves with a decorator.

Every module in the `methods/` and `tasks/` packages is imported on first use, so a new file there is
picked up with no other change; files elsewhere are loaded with :func:`load_plugin`.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import importlib.util
import inspect
import pkgutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from benchmark.errors import UserError

T = TypeVar("T", bound=type)


class UnknownNameError(UserError):
    """A name that no plugin registered; the message suggests the closest known names."""


class Registry(Generic[T]):
    """Name -> class mapping, filled by :meth:`register` and by importing a plugin package."""

    def __init__(self, kind: str, package: str) -> None:
        self.kind = kind
        self.package = package
        self._entries: dict[str, T] = {}
        self._discovered = False

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: ``@METHODS.register("pcgrad")`` makes the class available as ``pcgrad``."""

        def add(cls: T) -> T:
            known = self._entries.get(name)
            if known is not None and known.__qualname__ != cls.__qualname__:
                raise ValueError(f"{self.kind} {name!r} is registered twice: {known} and {cls}")
            cls.name = name
            self._entries[name] = cls
            return cls

        return add

    def discover(self) -> None:
        """Import every module of the plugin package once, so that their decorators run."""
        if self._discovered:
            return
        self._discovered = True
        package = importlib.import_module(self.package)
        for module in pkgutil.iter_modules(package.__path__):
            if not module.name.startswith("_"):
                importlib.import_module(f"{self.package}.{module.name}")

    def get(self, name: str) -> T:
        """The class registered as ``name``; an unknown name raises with the closest suggestions."""
        self.discover()
        if name not in self._entries:
            raise UnknownNameError(unknown_name_message(self.kind, name, self._entries))
        return self._entries[name]

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style ``pattern``, sorted."""
        self.discover()
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.get(name)(*args, **kwargs)

    def __contains__(self, name: str) -> bool:
        self.discover()
        return name in self._entries


def unknown_name_message(kind: str, name: object, known: Any) -> str:
    """``unknown method 'pcgard' (did you mean 'pcgrad'?)``."""
    close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {kind} {name!r}{hint}"


def hyperparameters(cls: type, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Constructor arguments and their defaults (``inspect.Parameter.empty`` when required)."""
    params = inspect.signature(cls.__init__).parameters
    return {
        n: p.default
        for n, p in params.items()
        if n != "self" and n not in skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def load_plugin(path: str | Path) -> None:
    """Import a Python file outside the tree so that its ``@register`` decorators run."""
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"plugin file not found: {path}")
    module_name = f"_gsb_plugin_{path.stem}_{abs(hash(path)) % 10**8}"
    if module_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import plugin file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)


METHODS: Registry[type] = Registry("method", "methods")
TASKS: Registry[type] = Registry("task", "tasks")
