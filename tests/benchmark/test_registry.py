"""Plugin discovery, registration and lookup errors."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pytest

from benchmark.method import Method, get_method
from benchmark.registry import METHODS, TASKS, PluginError, Registry, UnknownNameError, load_plugin


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

    with pytest.raises(PluginError, match=r"widget 'x' is registered twice: by .*Second .*First"):

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
    assert load_plugin(plugin) == str(plugin.resolve())


WIDGET = "from benchmark.registry import WIDGETS_FOR_TEST as R\n@R.register({args})\nclass Widget: pass\n"


@pytest.fixture
def widgets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry[type]:
    """A registry whose built-in package ``gsb_test_builtins`` registers ``pcgrad`` (not yet imported)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    registry: Registry[type] = Registry("widget", "gsb_test_builtins")
    monkeypatch.setattr("benchmark.registry.WIDGETS_FOR_TEST", registry, raising=False)
    make_package(tmp_path, "gsb_test_builtins", {"pcgrad": WIDGET.format(args="'pcgrad'")})
    monkeypatch.delitem(sys.modules, "gsb_test_builtins", raising=False)
    monkeypatch.delitem(sys.modules, "gsb_test_builtins.pcgrad", raising=False)
    return registry


def plugin_file(folder: Path, args: str) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / "plugin.py"
    path.write_text(WIDGET.format(args=args))
    return path


def test_the_same_name_from_two_files_names_both(tmp_path: Path, widgets: Registry[type]) -> None:
    first, second = plugin_file(tmp_path / "a", "'w'"), plugin_file(tmp_path / "b", "'w'")
    load_plugin(first)
    with pytest.raises(PluginError) as err:
        load_plugin(second)
    assert f"widget 'w' is registered twice: by Widget ({second}) and by Widget ({first})" in str(err.value)
    assert inspect.getfile(widgets.get("w")) == str(first)  # the first one stays


def test_a_plugin_loaded_before_discovery_still_clashes_with_the_builtin(
    tmp_path: Path, widgets: Registry[type]
) -> None:
    assert not widgets._discovered  # the plugin comes first: discovery must not hide the clash
    with pytest.raises(
        PluginError, match=r"widget 'pcgrad' is registered twice: .*gsb_test_builtins.pcgrad\.py"
    ):
        load_plugin(plugin_file(tmp_path / "p", "'pcgrad'"))
    assert inspect.getfile(widgets.get("pcgrad")) == str(tmp_path / "gsb_test_builtins" / "pcgrad.py")


def test_override_replaces_with_a_warning_naming_both(
    tmp_path: Path, widgets: Registry[type], caplog: pytest.LogCaptureFixture
) -> None:
    plugin = plugin_file(tmp_path / "p", "'pcgrad', override=True")
    load_plugin(plugin)
    assert inspect.getfile(widgets.get("pcgrad")) == str(plugin)
    builtin = tmp_path / "gsb_test_builtins" / "pcgrad.py"
    assert f"widget 'pcgrad': Widget ({plugin}) overrides Widget ({builtin})" in caplog.text


def test_importing_the_same_file_again_is_not_a_clash(tmp_path: Path, widgets: Registry[type]) -> None:
    widgets.discover()  # imports gsb_test_builtins.pcgrad
    load_plugin(tmp_path / "gsb_test_builtins" / "pcgrad.py")  # the same file under another module name
    assert widgets.names() == ["pcgrad"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x = 1\ndef broken(:\n", r"plugin\.py:2: syntax error in plugin: invalid syntax"),
        (
            "raise RuntimeError('no GPU here')\n",
            r"plugin\.py: importing the plugin raised RuntimeError: no GPU here",
        ),
        (None, r"missing\.py: plugin file not found"),
    ],
)
def test_a_plugin_that_fails_names_the_file_and_the_error(
    tmp_path: Path, text: str | None, message: str
) -> None:
    path = tmp_path / ("missing.py" if text is None else "plugin.py")
    if text is not None:
        path.write_text(text)
    with pytest.raises(PluginError, match=message):
        load_plugin(path)
    if text is not None:  # a failed import is not remembered: the fixed file loads
        path.write_text("LOADED = True\n")
        load_plugin(path)
