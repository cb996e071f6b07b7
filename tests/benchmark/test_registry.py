"""Plugin discovery, registration and lookup errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmark.method import Method, get_method
from benchmark.registry import METHODS, TASKS, Registry, UnknownNameError, load_plugin


def test_every_module_in_methods_and_tasks_is_discovered() -> None:
    methods_dir = Path(__file__).parents[2] / "methods"
    assert {"ew", "fixed", "graddrop", "pcgrad", "mgda"} <= set(METHODS.names())
    assert {"toy2d", "digits"} <= set(TASKS.names())
    modules = {p.stem for p in methods_dir.glob("*.py") if not p.stem.startswith("_")}
    registered_modules = {METHODS.get(n).__module__.rsplit(".", 1)[-1] for n in METHODS.names()}
    assert modules <= registered_modules


def test_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(UnknownNameError, match=r"unknown method 'pcgard' \(did you mean 'pcgrad'"):
        METHODS.get("pcgard")
    with pytest.raises(UnknownNameError) as err:
        TASKS.get("zzzzzz")
    assert str(err.value) == "unknown task 'zzzzzz'"


def test_names_filter_with_a_pattern() -> None:
    assert METHODS.names("pc*") == ["pcgrad"]


def make_package(root: Path, name: str, modules: dict[str, str]) -> None:
    package = root / name
    package.mkdir()
    (package / "__init__.py").write_text("")
    for module, text in modules.items():
        (package / f"{module}.py").write_text(text)


def test_discovery_imports_every_public_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    registry: Registry[type] = Registry("widget", "gsb_test_widgets")
    monkeypatch.setattr("benchmark.registry.WIDGETS_FOR_TEST", registry, raising=False)
    body = "from benchmark.registry import WIDGETS_FOR_TEST as R\n@R.register('{0}')\nclass W{0}: pass\n"
    make_package(
        tmp_path, "gsb_test_widgets", {"a": body.format("a"), "b": body.format("b"), "_c": body.format("c")}
    )
    assert registry.names() == ["a", "b"]
    assert registry.get("a").name == "a"
    assert "b" in registry and "c" not in registry


def test_registering_two_classes_under_one_name_fails() -> None:
    registry: Registry[type] = Registry("widget", "json")

    @registry.register("x")
    class First:
        pass

    with pytest.raises(ValueError, match="widget 'x' is registered twice"):

        @registry.register("x")
        class Second:
            pass


def test_out_of_tree_plugin_is_usable_by_name(tmp_path: Path) -> None:
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text(
        "from benchmark.method import Method\n"
        "from benchmark.registry import METHODS\n"
        "@METHODS.register('registry_test_first_task_only')\n"
        "class FirstOnly(Method):\n"
        "    description = 'keep the first task'\n"
        "    def combine(self, grads, ctx=None):\n"
        "        return grads[0]\n"
    )
    load_plugin(plugin)
    load_plugin(plugin)  # loading twice is harmless
    method = get_method("registry_test_first_task_only", num_tasks=2)
    assert isinstance(method, Method)
    with pytest.raises(FileNotFoundError, match="plugin file not found"):
        load_plugin(tmp_path / "missing.py")
