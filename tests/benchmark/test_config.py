"""Suite files: expansion into runs, precedence of training settings, and errors that name the key."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

import pytest
import yaml

import tests.benchmark.linear_task  # noqa: F401  (registers the "_linear" task)
from benchmark.config import ConfigError, load_suite, parse_suite
from benchmark.data import ENV_VAR
from benchmark.registry import TASKS
from benchmark.specs import TrainSpec
from tests.benchmark.linear_task import LinearTask
from tests.benchmark.marker_task import MARKER


@TASKS.register("_bad_defaults")
class BadDefaultsTask(LinearTask):
    """The linear test task with a learning rate in its own defaults that no run can use."""

    train_defaults = MappingProxyType({**LinearTask.train_defaults, "lr": -1.0})


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
        # every message names where the value was written (bug 4)
        ({"train": {"lr": -1.0}}, "x.yaml: train.lr: must be > 0, got -1.0"),
        (
            {"tasks": [{"name": "_linear", "train": {"lr": 0}}]},
            "x.yaml: tasks[0].train.lr: must be > 0, got 0",
        ),
        (
            {"methods": ["ew", {"name": "pcgrad", "train": {"eval_every": 0}}]},
            "x.yaml: methods[1].train.eval_every: must be >= 1, got 0",
        ),
        (
            {"tasks": ["_bad_defaults"]},
            "tasks[0]: task '_bad_defaults' train_defaults.lr: must be > 0, got -1.0",
        ),
        # values that passed the check and then failed mid-sweep or silently (bug 9)
        ({"train": {"lr": float("nan")}}, "train.lr: must be a finite number, got nan"),
        ({"train": {"lr": float("inf")}}, "train.lr: must be a finite number, got inf"),
        ({"train": {"lr": "fast"}}, "train.lr: expected float, got 'fast'"),
        ({"train": {"weight_decay": -0.1}}, "train.weight_decay: must be >= 0, got -0.1"),
        ({"train": {"batch_size": -4}}, "train.batch_size: must be >= 1, got -4"),
        ({"train": {"clip_grad_norm": -1.0}}, "train.clip_grad_norm: must be > 0, got -1.0"),
        ({"train": {"warmup_steps": -5}}, "train.warmup_steps: must be >= 0, got -5"),
        ({"seeds": [0, -1]}, "seeds: expected a positive count or a list of integers >= 0, got [0, -1]"),
        ({"seeds": [0, 1, 0]}, "seeds: seed 0 appears twice"),
        (
            {"methods": [{"name": "graddrop", "grid": {"k": [0.5, 1.0, 0.5]}}]},
            "methods[0].grid.k: value 0.5 appears twice",
        ),
        (
            {"methods": [{"name": "graddrop", "params": {"k": 0.5}, "grid": {"k": [1.0, 2.0]}}]},
            "methods[0].grid.k: also set in params",
        ),
        (
            {
                "methods": [
                    {"name": "graddrop", "label": "graddrop(k=0.5)"},
                    {"name": "graddrop", "grid": {"k": [0.5]}},
                ]
            },
            "methods[1].label: label 'graddrop(k=0.5)' is already used by methods[0]",
        ),
        (
            {"tasks": ["_linear", {"name": "_linear", "params": {"num_tasks": 2}}]},
            "tasks[1].label: label '_linear'",
        ),
        ({"name": "../../x"}, "name: expected letters, digits, '_', '.' or '-' (it names the report folder)"),
        ({"name": ["a", "b"]}, "name: expected letters, digits"),
        (
            {"tasks": [{"name": "_linear", "data_root": "d"}]},
            "tasks[0].data_root: task '_linear' reads no data",
        ),
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


def write_suite(path: Path, **changes: object) -> Path:
    path.write_text(yaml.safe_dump(suite(**changes)))
    return path


def test_float_settings_accept_numbers_written_as_strings(tmp_path: Path) -> None:
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; it is the number the user meant."""
    path = tmp_path / "s.yaml"
    path.write_text("tasks: [_linear]\nmethods: [ew]\ntrain: {lr: 1e-3, lr_gamma: '5e-1'}\n")
    train = load_suite(path).runs[0].train
    assert (train.lr, train.lr_gamma) == (0.001, 0.5)


def test_a_key_given_twice_fails_naming_the_key_and_its_lines(tmp_path: Path) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text("tasks: [_linear]\nmethods: [ew]\ntrain:\n  lr: 0.1\n  steps: 3\n  lr: 0.2\n")
    with pytest.raises(
        ConfigError, match=r"twice\.yaml: .*line 6.*key 'lr' appears twice \(first on line 4\)"
    ):
        load_suite(path)


def test_a_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    path = tmp_path / "latin.yaml"
    path.write_bytes("name: caf\xe9\ntasks: [_linear]\nmethods: [ew]\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin\.yaml: not UTF-8 text \(byte 9"):
        load_suite(path)


def test_yaml_tags_build_no_objects(tmp_path: Path) -> None:
    path = tmp_path / "tag.yaml"
    path.write_text("tasks: [_linear]\nmethods: [ew]\nname: !!python/object/apply:os.getcwd []\n")
    with pytest.raises(ConfigError, match=r"tag\.yaml: not valid YAML: line 3"):
        load_suite(path)


def test_an_override_error_names_the_command_line_flag() -> None:
    with pytest.raises(ConfigError, match=r"^command line: --device: not a torch device: 'gpu0'"):
        parse_suite(suite(), source=Path("configs/x.yaml"), overrides={"device": "gpu0"})


def marker_suite(tmp_path: Path, **entry: object) -> Path:
    """A suite file in ``tmp_path`` running the data-reading test task."""
    return write_suite(tmp_path / "s.yaml", tasks=[{"name": "_marker", **entry}], methods=["ew"], seeds=1)


def data_folder(path: Path) -> Path:
    path.mkdir()
    (path / MARKER).write_text("ready")
    return path


def test_a_task_entry_data_root_is_relative_to_the_suite_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    root = data_folder(tmp_path / "data")
    (run,) = load_suite(marker_suite(tmp_path, data_root="data")).runs
    assert Path(run.data_root) == root.absolute()
    elsewhere = data_folder(tmp_path / "copy")
    (moved,) = load_suite(marker_suite(tmp_path, data_root="copy")).runs
    assert Path(moved.data_root) == elsewhere.absolute()
    assert moved.config_hash() == run.config_hash()  # where the data lives is not the run's identity


def test_the_data_root_comes_from_the_command_line_then_the_entry_then_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli, entry, env = (data_folder(tmp_path / name) for name in ("cli", "entry", "env"))
    monkeypatch.setenv(ENV_VAR, str(env))
    assert Path(load_suite(marker_suite(tmp_path, data_root="entry"), data_root=cli).runs[0].data_root) == cli
    assert Path(load_suite(marker_suite(tmp_path, data_root="entry")).runs[0].data_root) == entry.absolute()
    assert Path(load_suite(marker_suite(tmp_path)).runs[0].data_root) == env


def test_tasks_without_data_get_no_data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert load_suite(write_suite(tmp_path / "s.yaml"), data_root=tmp_path).runs[0].data_root is None


def test_missing_data_fails_before_anything_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"s\.yaml: tasks\[0\]: task '_marker' .*empty/marker: missing"):
        load_suite(marker_suite(tmp_path, data_root="empty"))
    with pytest.raises(ConfigError, match=r"tasks\[0\]: task '_marker' .*--data-root"):
        load_suite(marker_suite(tmp_path))
    with pytest.raises(ConfigError, match=r"tasks\[0\]\.data_root: expected a folder path, got 3"):
        load_suite(marker_suite(tmp_path, data_root=3))


def test_deterministic_task_and_method_train_once_whatever_the_seeds() -> None:
    runs = parse_suite(
        {"seeds": 3, "tasks": [{"name": "toy2d", "grid": {"start": [0, 1]}}], "methods": ["mgda", "pcgrad"]}
    ).runs
    seeds = {(r.task.params["start"], r.method.name): [] for r in runs}
    for r in runs:
        seeds[(r.task.params["start"], r.method.name)].append(r.seed)
    assert seeds == {(0, "mgda"): [0], (1, "mgda"): [0], (0, "pcgrad"): [0, 1, 2], (1, "pcgrad"): [0, 1, 2]}


def test_a_method_undefined_at_its_level_fails_at_load_time() -> None:
    raw = {
        "tasks": ["digits"],
        "methods": [{"name": "graddrop", "params": {"marginalize_batch": True}, "train": {"level": "param"}}],
    }
    with pytest.raises(ConfigError, match=r"methods\[0\].train.level: .param.: graddrop: marginalize_batch"):
        parse_suite(raw)


def test_the_config_hash_follows_the_plugin_code(tmp_path) -> None:
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text("# version 1\n")
    raw = {"tasks": ["toy2d"], "methods": ["ew"], "plugins": [str(plugin)]}
    first = parse_suite(raw).runs[0]
    plugin.write_text("# version 2\n")
    second = parse_suite(raw).runs[0]
    assert first.plugin_versions != second.plugin_versions
    assert first.config_hash() != second.config_hash()
    moved = tmp_path / "elsewhere.py"
    moved.write_text("# version 2\n")
    assert parse_suite({**raw, "plugins": [str(moved)]}).runs[0].config_hash() == second.config_hash()


# ---------------------------------------------------------------- tuning, baseline, claims, published


def test_tune_runs_every_combination_on_every_seed_labelled_under_the_method() -> None:
    methods = [
        "ew",
        {"name": "graddrop", "tune": {"lr": [0.1, "1e-2"], "k": [0.0, 1.0]}, "train": {"level": "param"}},
    ]
    runs = parse_suite(suite(methods=methods)).runs
    tuned = [r for r in runs if r.method.name == "graddrop"]
    assert len(tuned) == 2 * 2 * 2
    assert tuned[0].method.label == "graddrop[lr=0.1, k=0.0]" and tuned[0].train.lr == 0.1
    assert tuned[-1].method.label == "graddrop[lr=0.01, k=1.0]"
    assert tuned[-1].train.lr == 0.01 and tuned[-1].method.params == {"k": 1.0}
    assert len({r.config_hash() for r in tuned}) == 8


def test_a_tuned_fixed_baseline_searches_a_weight_grid_or_simplex_draws() -> None:
    methods = [{"name": "fixed", "tune": {"weights": {"grid": 4}}}]
    runs = parse_suite(suite(methods=methods, seeds=[0])).runs
    # T = 3, step 1/4, every weight positive: (1,1,2), (1,2,1), (2,1,1); scaled to sum to 3
    assert [r.method.params["weights"] for r in runs] == [
        [0.75, 0.75, 1.5],
        [0.75, 1.5, 0.75],
        [1.5, 0.75, 0.75],
    ]
    assert runs[0].method.label == "fixed[weights=(0.75, 0.75, 1.5)]"
    draws = parse_suite(suite(methods=[{"name": "fixed", "tune": {"weights": {"draws": 5}}}], seeds=[0])).runs
    weights = [r.method.params["weights"] for r in draws]
    assert len(weights) == 5 and all(sum(w) == pytest.approx(3.0) and min(w) > 0 for w in weights)
    again = parse_suite(suite(methods=[{"name": "fixed", "tune": {"weights": {"draws": 5}}}], seeds=[0])).runs
    assert [r.method.params["weights"] for r in again] == weights  # seeded
    assert draws[4].method.label == "fixed[weights=draw 4]"


def test_report_settings_are_read_and_checked() -> None:
    claims = [
        {"better": "graddrop(k=1.0)", "than": "all", "metric": "total"},
        {"better": "ew", "than": ["graddrop(k=0.0)"], "metric": "total", "task": "_linear"},
    ]
    published = [
        {
            "method": "ew",
            "task": "_linear",
            "metric": "total",
            "value": 1.5,
            "source": {"paper": "P", "table": 2, "row": "EW"},
        }
    ]
    settings = parse_suite(suite(baseline="ew", claims=claims, published=published)).settings
    assert settings.baseline == "ew"
    assert settings.claims[0].than == "all" and settings.claims[1].than == ("graddrop(k=0.0)",)
    assert settings.published[0].value == 1.5 and settings.published[0].table == "2"
    assert parse_suite(suite()).settings.claims == ()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"baseline": "pcgrad"}, "baseline: 'pcgrad' is not a method label"),
        (
            {"claims": [{"better": "gradrop", "than": "all", "metric": "total"}]},
            "claims[0].better: unknown method label 'gradrop'",
        ),
        (
            {"claims": [{"better": "ew", "than": "ew", "metric": "total"}]},
            "claims[0].than: 'ew' cannot be better than itself",
        ),
        (
            {"claims": [{"better": "ew", "than": "all", "metric": "acc"}]},
            "claims[0].metric: unknown metric 'acc'",
        ),
        (
            {"claims": [{"better": "ew", "than": "all", "metric": "total", "task": "x"}]},
            "claims[0].task: unknown task label 'x'",
        ),
        (
            {
                "published": [
                    {
                        "method": "ew",
                        "task": "_linear",
                        "metric": "total",
                        "value": "high",
                        "source": {"paper": "P", "table": "1", "row": "r"},
                    }
                ]
            },
            "published[0].value: expected a finite number",
        ),
        (
            {
                "published": [
                    {
                        "method": "ew",
                        "task": "_linear",
                        "metric": "total",
                        "value": 1.0,
                        "source": {"paper": "P", "table": "1"},
                    }
                ]
            },
            "published[0].source.row: the source's row is required",
        ),
        ({"methods": [{"name": "ew", "tune": {"lr": []}}]}, "methods[0].tune.lr: expected a non-empty list"),
        ({"methods": [{"name": "ew", "tune": {"lr": [-1.0]}}]}, "methods[0].tune.lr[0]: must be > 0"),
        (
            {"methods": [{"name": "ew", "tune": {"leak": [0.1]}}]},
            "methods[0].tune.leak: not a training setting",
        ),
        ({"methods": [{"name": "ew", "label": "a[b]"}]}, "methods[0].label: '[' marks tuning"),
        (
            {"methods": [{"name": "fixed", "tune": {"weights": {"grid": 0}}}]},
            "methods[0].tune.weights.grid: expected a positive integer",
        ),
        (
            {
                "tasks": [{"name": "_linear", "params": {"num_tasks": 4}}],
                "methods": [{"name": "fixed", "tune": {"weights": {"grid": 4}}}],
            },
            "methods[0].tune.weights: a weight grid needs T <= 3, got T = 4",
        ),
    ],
)
def test_report_and_tuning_errors_name_the_key_and_the_value(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_suite(suite(**changes))
    assert message in str(err.value)
