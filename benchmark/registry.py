"""Plugin registries: methods and tasks register themselves with a decorator.

Every module in the `methods/` and `tasks/` packages is imported on first use, so a new file there is
picked up with no other change; files elsewhere are loaded with :func:`load_plugin`. A name belongs to
one class: a second class under it, from another file, is an error naming both files unless it is
registered with ``override=True`` (after timm's registry, which warns and names the module).
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import importlib
import importlib.util
import inspect
import logging
import pkgutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from benchmark.errors import UserError

T = TypeVar("T", bound=type)

log = logging.getLogger(__name__)


class UnknownNameError(UserError):
    """A name that no plugin registered; the message suggests the closest known names."""


class PluginError(UserError):
    """A plugin file that cannot be loaded, or a name registered twice; the message names the file(s)."""


class Registry(Generic[T]):
    """Name -> class mapping, filled by :meth:`register` and by importing a plugin package."""

    def __init__(self, kind: str, package: str | None) -> None:
        """``package``: the package whose modules register built-in entries (``None``: no discovery)."""
        self.kind = kind
        self.package = package
        self._entries: dict[str, T] = {}
        self._discovered = False

    def register(self, name: str, override: bool = False) -> Callable[[T], T]:
        """Class decorator: ``@METHODS.register("pcgrad")`` makes the class available as ``pcgrad``.

        A name already taken by a class of another file (or another class of the same file) raises
        :class:`PluginError` naming both files; ``override=True`` replaces it with a warning instead.
        The built-in package is discovered before any other file registers, so that the order of
        imports cannot hide such a clash.
        """

        def add(cls: T) -> T:
            if not _in_package(cls, self.package):
                self.discover()
            known = self._entries.get(name)
            if known is not None and (_origin(known), known.__qualname__) != (_origin(cls), cls.__qualname__):
                if not override:
                    raise PluginError(
                        f"{self.kind} {name!r} is registered twice: by {_describe(cls)} and by "
                        f"{_describe(known)}; rename one, or register with override=True"
                    )
                log.warning("%s %r: %s overrides %s", self.kind, name, _describe(cls), _describe(known))
            cls.name = name
            self._entries[name] = cls
            return cls

        return add

    def discover(self) -> None:
        """Import every module of the plugin package once, so that their decorators run."""
        if self._discovered or self.package is None:
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


def load_plugin(path: str | Path) -> str:
    """Import a Python file outside the tree so that its ``@register`` decorators run; loading the
    same file again does nothing. Returns the file's resolved path (what a worker loads).

    A missing file, a syntax error or an exception while importing raises :class:`PluginError` naming
    the file (and the line of a syntax error).
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise PluginError(f"{path}: plugin file not found")
    module_name = f"_gsb_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
    if module_name in sys.modules:
        return str(path)
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"{path}: not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as err:
        del sys.modules[module_name]  # a later load tries again rather than skipping a broken module
        if isinstance(err, PluginError) or not isinstance(err, Exception):
            raise
        raise PluginError(_import_failure(path, err)) from err
    return str(path)


def _import_failure(path: Path, err: Exception) -> str:
    """``file:line: syntax error in plugin: ...`` or ``file: importing the plugin raised ...``."""
    if isinstance(err, SyntaxError):
        return f"{err.filename or path}:{err.lineno}: syntax error in plugin: {err.msg}"
    return f"{path}: importing the plugin raised {type(err).__name__}: {err}"


def _origin(cls: type) -> str:
    """The resolved file that defines ``cls`` (its module's name where there is no file)."""
    file = getattr(sys.modules.get(cls.__module__), "__file__", None)
    return str(Path(file).resolve()) if file else cls.__module__


def _describe(cls: type) -> str:
    return f"{cls.__qualname__} ({_origin(cls)})"


def _in_package(cls: type, package: str | None) -> bool:
    return package is None or cls.__module__ == package or cls.__module__.startswith(f"{package}.")


METHODS: Registry[type] = Registry("method", "methods")
TASKS: Registry[type] = Registry("task", "tasks")
