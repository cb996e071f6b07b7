"""Suite files: expansion into runs, precedence of training settings, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import tests.benchmark.linear_task  # noqa: F401  (registers the "_linear" task)
from benchmark.config import ConfigError, load_suite, parse_suite
from benchmark.specs import TrainSpec


def suite(**changes):
    raw = {
        "name": "t",
        "seeds": [0, 1],
        "train": {"steps": 10},
        "tasks": [{"name": "_linear", "params": {"num_tasks": 3}, "train": {"lr": 0.5}}],
        "methods": ["ew", {"name": "graddrop", "grid": {"k": [0.0, 1.0]}, "train": {"level": "param"}}],
    }
    raw.update(changes)
    return raw


def test_runs_are_tasks_times_methods_times_grid_times_seeds() -> None:
    runs = parse_suite(suite()).runs
    assert len(runs) == 1 * (1 + 2) * 2
    assert [r.method.label for r in runs[::2]] == ["ew", "graddrop(k=0.0)", "graddrop(k=1.0)"]
    assert {r.seed for r in runs} == {0, 1}
    assert runs[2].method.params == {"k": 0.0}


def test_training_settings_merge_task_defaults_suite_task_and_method() -> None:
    ew, graddrop = parse_suite(suite()).runs[0].train, parse_suite(suite()).runs[2].train
    assert ew.optimizer == "sgd" and ew.batch_size == 4  # the task's own defaults
    assert ew.steps == 10 and ew.lr == 0.5 and ew.level is None  # suite, then task entry
    assert graddrop.level == "param"  # method entry wins
    assert ew.momentum == TrainSpec().momentum


def test_overrides_win_and_the_config_hash_covers_results_not_the_device() -> None:
    plain = parse_suite(suite()).runs[0]
    moved = parse_suite(suite(), overrides={"device": "meta"}).runs[0]
    longer = parse_suite(suite(), overrides={"steps": 11}).runs[0]
    assert moved.train.device == "meta" and moved.config_hash() == plain.config_hash()
    assert longer.train.steps == 11 and longer.config_hash() != plain.config_hash()
    assert plain.config_hash() == parse_suite(suite()).runs[0].config_hash()


def test_task_grid_keeps_one_label() -> None:
    raw = suite(tasks=[{"name": "_linear", "grid": {"num_tasks": [2, 3]}}], methods=["ew"], seeds=1)
    runs = parse_suite(raw).runs
    assert [r.task.label for r in runs] == ["_linear", "_linear"]
    assert [r.task.params["num_tasks"] for r in runs] == [2, 3]


def test_seed_count() -> None:
    assert [r.seed for r in parse_suite(suite(seeds=3, methods=["ew"])).runs] == [0, 1, 2]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"methods": ["ew", "pcgard"]}, "methods[1].name: unknown method 'pcgard' (did you mean 'pcgrad'?)"),
        ({"taks": []}, "taks: unknown key (did you mean 'tasks'?)"),
        ({"train": {"stpes": 3}}, "train.stpes: unknown key (did you mean 'steps'?)"),
        ({"train": {"steps": "many"}}, "steps: expected int, got 'many'"),
        ({"train": {"steps": 0}}, "steps: must be >= 1, got 0"),
        ({"train": {"optimizer": "adagrad"}}, "optimizer: got 'adagrad'; expected one of sgd, adam, adamw"),
        ({"train": {"level": "layer"}}, "level: got 'layer'"),
        (
            {"methods": [{"name": "graddrop", "params": {"leek": 0.5}}]},
            "methods[0].params.leek: unknown parameter",
        ),
        ({"methods": [{"name": "fixed", "params": {"weights": [1.0]}}]}, "methods[0]: method 'fixed'"),
        (
            {"methods": [{"name": "graddrop", "grid": {"k": 1.0}}]},
            "methods[0].grid.k: expected a non-empty list",
        ),
        ({"methods": ["ew", "ew"]}, "methods[1].label: label 'ew' is already used by methods[0]"),
        ({"methods": [{"label": "x"}]}, "methods[0]: missing 'name'"),
        ({"tasks": []}, "tasks: a suite needs at least one entry"),
        ({"tasks": [{"name": "_linear", "params": {"fail": True}}]}, "tasks[0]: task '_linear'"),
        ({"seeds": [0, "one"]}, "seeds: expected a positive count or a list of integers"),
        ({"train": {"device": "gpu0"}}, "train.device: not a torch device: 'gpu0'"),
        ({"plugins": ["nowhere.py"]}, "plugins[0]: plugin file not found"),
        (
            {"methods": [{"name": "graddrop", "weighting": "trimmed_mean"}]},
            "methods[0].weighting.name: 'trimmed_mean' gives no task weights; weightings: ",
        ),
        (
            {"methods": [{"name": "graddrop", "weighting": "ewe"}]},
            "methods[0].weighting.name: unknown method",
        ),
        (
            {"methods": [{"name": "graddrop", "weighting": {"name": "fixed", "params": {"weights": [1]}}}]},
            "method 'fixed' + 'graddrop' with {}: fixed: weights must be a finite number or 3 of them",
        ),
        ({"tasks": [{"name": "_linear", "weighting": "ew"}]}, "tasks[0].weighting: unknown key"),
    ],
)
def test_errors_name_the_key_and_the_value(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_suite(suite(**changes), source=Path("configs/x.yaml"))
    assert str(err.value).startswith("configs/x.yaml: ")
    assert message in str(err.value)


def test_a_device_is_parsed_here_and_checked_where_the_run_starts() -> None:
    """A driver without a GPU may plan GPU runs for remote workers (tests/benchmark/test_sweep.py)."""
    assert parse_suite(suite(), overrides={"device": "cuda:1"}).runs[0].train.device == "cuda:1"


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="suite file not found"):
        load_suite(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks: [unclosed")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_suite(bad)


def test_load_suite_names_the_suite_after_the_file_and_resolves_plugins(tmp_path: Path) -> None:
    plugin = tmp_path / "plugin_for_config_test.py"
    plugin.write_text(
        "from benchmark.method import WeightingMethod\n"
        "from benchmark.registry import METHODS\n"
        "import torch\n"
        "@METHODS.register('config_test_double')\n"
        "class Double(WeightingMethod):\n"
        "    def weights(self, losses, ctx=None):\n"
        "        return torch.full((self.num_tasks,), 2.0)\n"
    )
    raw = suite(methods=["config_test_double"], plugins=[plugin.name])
    raw.pop("name")
    path = tmp_path / "mysuite.yaml"
    path.write_text(yaml.safe_dump(raw))
    loaded = load_suite(path)
    assert loaded.name == "mysuite"
    assert loaded.runs[0].plugins == (str(plugin.resolve()),)


def test_a_weighting_composes_with_a_method_under_one_label() -> None:
    methods = [{"name": "graddrop", "weighting": {"name": "fixed", "params": {"weights": [1, 2, 3]}}}]
    (run, *_) = parse_suite(suite(methods=methods)).runs
    assert run.method.label == "fixed+graddrop"
    assert run.method.weighting.name == "fixed" and run.method.weighting.params == {"weights": [1, 2, 3]}
    plain = parse_suite(suite(methods=["graddrop"])).runs[0]
    assert run.config_hash() != plain.config_hash()


def test_a_method_default_grid_expands_into_one_run_per_task() -> None:
    runs = parse_suite(suite(methods=["stl"], seeds=[0])).runs
    assert [r.method.label for r in runs] == ["stl(task=0)", "stl(task=1)", "stl(task=2)"]
    assert [r.method.params for r in runs] == [{"task": 0}, {"task": 1}, {"task": 2}]
    pinned = parse_suite(suite(methods=[{"name": "stl", "params": {"task": 2}}], seeds=[0])).runs
    assert [(r.method.label, r.method.params) for r in pinned] == [("stl", {"task": 2})]
