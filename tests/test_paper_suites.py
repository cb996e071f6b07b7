"""The paper suites run end to end from the command line on fixture data in the real on-disk formats,
with a step override (the real runs need the datasets and a GPU)."""

from __future__ import annotations

from pathlib import Path

import pytest

import run_all
from benchmark.store import ResultsStore
from tests.tasks.celeba_fixture import make_celeba, replace_line
from tests.tasks.transfer_fixture import write_cifar100, write_imagefolder

ROOT = Path(__file__).resolve().parents[1]
SHORT = ("--seeds", "1", "--set", "steps=1", "--set", "eval_every=1", "--set", "batch_size=4")


def run_suite(suite: str, data: Path, tmp_path: Path) -> ResultsStore:
    store = tmp_path / "store.sqlite"
    args = ["run", "--suite", str(ROOT / suite), "--data-root", str(data), *SHORT]
    args += ["--results", str(store), "--reports", str(tmp_path / "reports"), "--executor", "serial"]
    assert run_all.main(args) == 0
    return ResultsStore(store)


@pytest.mark.slow
def test_celeba_suite_runs_end_to_end_on_a_fixture(tmp_path: Path) -> None:
    make_celeba(tmp_path / "data")
    store = run_suite("configs/paper/celeba.yaml", tmp_path / "data", tmp_path)
    runs = store.runs("celeba")
    assert set(runs["status"]) == {"ok"} and len(runs) == 9
    assert "mean_error" in set(store.metrics("celeba")["name"])
    assert (tmp_path / "reports" / "celeba" / "index.html").is_file()


@pytest.mark.slow
def test_transfer_suite_runs_end_to_end_on_a_fixture(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_cifar100(data, classes=3, per_class=12)
    write_imagefolder(data, per_class=6)
    store = run_suite("configs/paper/transfer.yaml", data, tmp_path)
    runs = store.runs("transfer")
    assert set(runs["status"]) == {"ok"} and len(runs) == 7
    assert "target_accuracy" in set(store.metrics("transfer")["name"])


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (lambda data: (data / "list_eval_partition.txt").unlink(), "list_eval_partition.txt"),
        (
            lambda data: replace_line(data / "list_attr_celeba.txt", 5, "000003.jpg 1 -1"),
            "list_attr_celeba.txt:5",
        ),
        (lambda data: truncate(data / "list_attr_celeba.txt"), "list_attr_celeba.txt"),
    ],
    ids=["missing", "malformed", "truncated"],
)
def test_bad_celeba_data_exits_2_before_training_naming_the_file(
    damage, named: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    make_celeba(data)
    damage(data)
    args = ["run", "--suite", str(ROOT / "configs/paper/celeba.yaml"), "--data-root", str(data)]
    assert run_all.main([*args, "--results", str(tmp_path / "store.sqlite")]) == 2
    assert named in caplog.text and "Traceback" not in caplog.text
    assert not (tmp_path / "store.sqlite").exists()


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_bad_cifar_data_exits_2_before_training_naming_the_file(
    damage: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    write_cifar100(data)
    write_imagefolder(data)
    target = data / "cifar-100-python" / "train"
    if damage == "missing":
        target.unlink()
    else:
        truncate(target)
    args = ["run", "--suite", str(ROOT / "configs/paper/transfer.yaml"), "--data-root", str(data)]
    assert run_all.main([*args, "--results", str(tmp_path / "store.sqlite")]) == 2
    assert "cifar-100-python/train" in caplog.text and "Traceback" not in caplog.text


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
