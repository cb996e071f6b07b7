"""The command line end to end on a tiny suite with the real tasks and methods."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import run_all
from benchmark.store import ResultsStore

TINY = {
    "name": "tiny",
    "seeds": [0, 1],
    "train": {"steps": 6, "eval_every": 3},
    "tasks": [{"name": "toy2d", "grid": {"start": [0, 2]}}, {"name": "digits", "train": {"batch_size": 32}}],
    "methods": [
        "ew",
        "graddrop",
        {"name": "graddrop", "label": "random_graddrop", "params": {"k": 0.0}},
        "pcgrad",
        "mgda",
    ],
}


def cli(tmp_path: Path, *args: str) -> int:
    return run_all.main([*args, "--results", str(tmp_path / "store.sqlite"), "--reports", str(tmp_path)])


@pytest.mark.slow
def test_run_writes_the_store_and_the_report(tmp_path: Path) -> None:
    suite = tmp_path / "tiny.yaml"
    suite.write_text(yaml.safe_dump(TINY))
    assert cli(tmp_path, "run", "--suite", str(suite), "--executor", "serial") == 0
    runs = ResultsStore(tmp_path / "store.sqlite").runs("tiny")
    assert len(runs) == (2 + 1) * 5 * 2 and set(runs.status) == {"ok"}
    markdown = (tmp_path / "tiny" / "index.md").read_text()
    for label in ("toy2d", "digits", "random_graddrop", "pcgrad", "mgda", "Pareto front"):
        assert label in markdown
    assert "data:image/png;base64," in (tmp_path / "tiny" / "index.html").read_text()
    assert len(list((tmp_path / "tiny").glob("*.png"))) >= 3

    (tmp_path / "tiny" / "index.md").unlink()
    assert cli(tmp_path, "report") == 0  # from the store alone
    assert (tmp_path / "tiny" / "index.md").is_file()


def test_bad_suite_exits_with_2_and_names_the_key(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    suite = tmp_path / "bad.yaml"
    suite.write_text(yaml.safe_dump({**TINY, "methods": ["pcgard"]}))
    assert cli(tmp_path, "run", "--suite", str(suite)) == 2
    assert "methods[0].name: unknown method 'pcgard' (did you mean 'pcgrad'?)" in caplog.text


def test_a_file_that_is_not_a_store_exits_with_2(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "store.sqlite").write_text("not a database")
    assert cli(tmp_path, "report") == 2
    assert "store.sqlite" in caplog.text


def test_list_shows_methods_and_tasks_with_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_all.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("ew", "fixed", "graddrop", "pcgrad", "mgda", "toy2d", "digits"):
        assert f"  {name} " in out
    assert "k=1.0" in out and "variant='nashmtl'" in out


def test_list_shows_at_least_34_methods(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_all.main(["list", "methods"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert len(lines) // 2 >= 34  # a description line and a defaults line per method


def test_perf_tables_the_matching_methods(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "perf.md"
    args = ["perf", "*grad", "--tasks", "3", "--params", "50", "--repeats", "1", "--output", str(output)]
    assert run_all.main(args) == 0
    out = capsys.readouterr().out
    assert "| pcgrad |" in out and "| ew |" not in out
    assert output.read_text() == out
    assert run_all.main(["perf", "no_such_method"]) == 2


def test_options_alone_run_the_default_command() -> None:
    assert run_all.parse_args(["--workers", "1"]).command == "run"
    assert run_all.parse_args([]).suite == run_all.DEFAULT_SUITE


def test_a_plugin_that_does_not_parse_exits_with_2_and_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plugin = tmp_path / "broken_plugin.py"
    plugin.write_text("import torch\nclass Broken(:\n")
    assert run_all.main(["list", "--plugin", str(plugin)]) == 2
    (line,) = caplog.text.strip().splitlines()
    assert f"{plugin}:2: syntax error in plugin" in line
