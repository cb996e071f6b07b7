"""The Ray executor: a local Ray gives the serial executor's metrics; dead workers, missing Ray."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from benchmark import ray_executor
from benchmark.config import parse_suite
from benchmark.errors import UserError
from benchmark.specs import RunSpec
from benchmark.store import ResultsStore
from benchmark.sweep import run_suite
from tests.benchmark import linear_task

pytest.importorskip("ray")

SUITE = {  # 2 task instances x 5 methods x 3 seeds = 30 runs
    "name": "ray_test",
    "seeds": 3,
    "plugins": [linear_task.__file__],
    "train": {"steps": 3, "eval_every": 3, "jacobian": "loop"},
    "tasks": [{"name": "_linear", "grid": {"num_tasks": [2, 3]}}],
    "methods": ["ew", "pcgrad", "mgda", "upgrad", "rlw"],
}
COLUMNS = ["task_label", "method_label", "seed", "step", "split", "name", "value"]


def metrics(store: ResultsStore) -> list[tuple]:
    return sorted(store.metrics("ray_test")[COLUMNS].itertuples(index=False, name=None), key=str)


@pytest.mark.slow
def test_a_30_run_suite_on_a_local_ray_equals_serial(tmp_path: Path) -> None:
    suite = parse_suite(SUITE)
    assert len(suite.runs) == 30
    by_ray, serial = ResultsStore(tmp_path / "ray.sqlite"), ResultsStore(tmp_path / "serial.sqlite")
    assert run_suite(suite, by_ray, executor="ray", workers=2, progress=False) == {"ok": 30}
    run_suite(suite, serial, progress=False)
    assert len(metrics(serial)) > 30
    assert metrics(by_ray) == metrics(serial)
    stored = by_ray.runs("ray_test")
    assert sorted(stored.config_hash) == sorted(s.config_hash() for s in suite.runs)
    assert {p for spec in stored.spec for p in spec["plugins"]} == {str(Path(linear_task.__file__).resolve())}


def test_resources_default_from_the_device_and_entries_override_them() -> None:
    raw = {
        **SUITE,
        "resources": {"num_cpus": 2},
        "tasks": [{"name": "_linear", "resources": {"num_gpus": 0.5}}],
        "methods": ["ew", {"name": "pcgrad", "resources": {"num_gpus": 0.25}}],
        "seeds": 1,
    }
    bare = {**raw, "resources": {}, "tasks": ["_linear"], "methods": ["ew"]}
    ew, pcgrad = parse_suite(raw).runs
    assert ray_executor.resources(ew) == {"num_cpus": 2.0, "num_gpus": 0.5}
    assert ray_executor.resources(pcgrad) == {"num_cpus": 2.0, "num_gpus": 0.25}
    plain = parse_suite({**SUITE, "seeds": 1, "methods": ["ew"]}).runs[0]
    assert ray_executor.resources(plain) == {"num_cpus": 1.0, "num_gpus": 0.0}
    cuda = parse_suite({**SUITE, "seeds": 1, "methods": ["ew"]}, overrides={"device": "cuda"}).runs[0]
    assert ray_executor.resources(cuda) == {"num_cpus": 1.0, "num_gpus": 1.0}
    assert ew.config_hash() == parse_suite(bare).runs[0].config_hash()  # resources: not the identity


def test_a_run_asking_for_more_than_the_cluster_has_is_refused() -> None:
    raw = {**SUITE, "seeds": 1, "methods": ["ew"]}
    spec: RunSpec = parse_suite(raw, overrides={"device": "cuda"}).runs[0]
    with pytest.raises(UserError, match=r"resources.num_gpus .*_linear / ew / seed 0 asks for 1, .* has 0"):
        ray_executor.check_capacity([spec], {"CPU": 2.0})
    ray_executor.check_capacity([spec], {"CPU": 2.0, "GPU": 1.0})


def test_without_ray_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(UserError, match=r"pip install -r requirements-ray\.txt"):
        ray_executor.import_ray()
