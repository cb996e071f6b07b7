"""The command line end to end on a tiny suite with the real tasks and methods."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

import run_all
import tests.benchmark.marker_task  # noqa: F401  (registers the "_marker" task)
from benchmark.data import ENV_VAR
from benchmark.store import ResultsStore
from tests.benchmark.marker_task import MARKER, RAW

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
    # (2 toy starts + digits) x 5 methods x 2 seeds, less the second seed of the toy's deterministic
    # methods (ew, mgda): their seeds cannot change a result
    assert len(runs) == (2 + 1) * 5 * 2 - 2 * 2 and set(runs.status) == {"ok"}
    markdown = (tmp_path / "tiny" / "index.md").read_text()
    for label in ("toy2d", "digits", "random_graddrop", "pcgrad", "mgda", "Pareto front"):
        assert label in markdown
    assert "| mgda | 2 ‡ |" in markdown and "| pcgrad | 4 |" in markdown  # 2 starts, once each; 2 x 2
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


def marker_suite(tmp_path: Path) -> Path:
    """A suite with the test task that reads ``marker`` under its data root."""
    suite = tmp_path / "marker.yaml"
    train = {"steps": 2, "eval_every": 1}
    suite.write_text(yaml.safe_dump({"tasks": ["_marker"], "methods": ["ew"], "train": train}))
    return suite


def test_user_errors_are_one_line_and_exit_2_internal_errors_keep_the_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    suite = tmp_path / "bad.yaml"
    suite.write_text(yaml.safe_dump({**TINY, "methods": ["pcgard"]}))
    assert cli(tmp_path, "run", "--suite", str(suite)) == 2
    assert "Traceback" not in caplog.text
    caplog.clear()
    assert cli(tmp_path, "run", "--suite", str(suite), "-v") == 2
    assert "Traceback" in caplog.text and "unknown method 'pcgard'" in caplog.text
    caplog.clear()

    def broken(args: object) -> int:
        raise ValueError("an internal mistake")

    monkeypatch.setattr(run_all, "cmd_list", broken)
    assert run_all.main(["list"]) == 1
    assert "Traceback" in caplog.text and "ValueError: an internal mistake" in caplog.text


@pytest.mark.parametrize("args", [["--workers", "-3"], ["--workers", "many"], ["--plugin", "nowhere.py"]])
def test_bad_arguments_exit_with_2(
    args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli(tmp_path, "run", *args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {args[0]}: " in err and args[1] in err


def test_report_on_a_missing_store_exits_2_and_creates_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert cli(tmp_path, "report") == 2
    assert "store.sqlite: no results store" in caplog.text
    assert not (tmp_path / "store.sqlite").exists()


def test_report_on_a_suite_the_store_does_not_hold_exits_2(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ResultsStore(tmp_path / "store.sqlite")
    assert cli(tmp_path, "report", "--suite", "quick") == 2
    assert "store.sqlite: unknown suite 'quick'; it holds no suite" in caplog.text
    assert not (tmp_path / "quick").exists()


def test_a_corrupted_store_exits_2_naming_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "store.sqlite"
    ResultsStore(path)
    data = bytearray(path.read_bytes())
    data[100:] = b"\x07" * (len(data) - 100)  # everything after the file header
    path.write_bytes(bytes(data))
    assert cli(tmp_path, "report") == 2
    assert "store.sqlite" in caplog.text and "Traceback" not in caplog.text


def test_a_non_utf8_suite_exits_2_naming_the_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    suite = tmp_path / "latin.yaml"
    suite.write_bytes("name: caf\xe9\n".encode("latin-1"))
    assert cli(tmp_path, "run", "--suite", str(suite)) == 2
    assert "latin.yaml: not UTF-8 text" in caplog.text


def test_missing_data_exits_2_before_anything_trains(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    data = tmp_path / "data"
    data.mkdir()
    suite = marker_suite(tmp_path)
    assert cli(tmp_path, "run", "--suite", str(suite), "--data-root", str(data)) == 2
    assert f"{data / MARKER}: missing" in caplog.text
    assert not (tmp_path / "store.sqlite").exists()


@pytest.mark.slow
def test_run_passes_the_data_root_to_the_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    data = tmp_path / "data"
    data.mkdir()
    (data / MARKER).write_text("ready")
    args = ("run", "--suite", str(marker_suite(tmp_path)), "--data-root", str(data), "--executor", "serial")
    assert cli(tmp_path, *args, "--no-report") == 0
    (spec,) = ResultsStore(tmp_path / "store.sqlite").runs("marker")["spec"]
    assert Path(spec["data_root"]) == data.absolute()


def test_list_tasks_shows_where_each_task_looks_for_its_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_all.main(["list", "tasks", "--data-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"  _marker            missing: {tmp_path / MARKER}" in out
    assert "  digits             no data files needed" in out
    (tmp_path / MARKER).write_text("ready")
    assert run_all.main(["list", "tasks", "_m*", "--data-root", str(tmp_path)]) == 0
    assert f"  _marker            present: {tmp_path / MARKER}" in capsys.readouterr().out
    assert run_all.main(["list", "tasks", "--markdown"]) == 0
    assert "missing" not in capsys.readouterr().out


def test_prepare_converts_a_task_dataset_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert run_all.main(["prepare", "_marker", "--data-root", str(tmp_path)]) == 2
    assert f"{tmp_path / RAW}: missing" in caplog.text
    (tmp_path / RAW).write_text("raw")
    assert run_all.main(["prepare", "_marker", "--data-root", str(tmp_path), "--workers", "3"]) == 0
    assert (tmp_path / MARKER).read_text() == "raw prepared by 3 workers"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("_markr", "unknown task '_markr' (did you mean '_marker'?)"),
        ("digits", "task 'digits' reads no data files: nothing to prepare"),
    ],
)
def test_prepare_refuses_unknown_tasks_and_tasks_without_data(
    name: str, message: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert run_all.main(["prepare", name, "--data-root", str(tmp_path)]) == 2
    assert message in caplog.text


def test_prepare_without_a_data_root_says_how_to_give_one(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert run_all.main(["prepare", "_marker"]) == 2
    assert "--data-root DIR" in caplog.text and ENV_VAR in caplog.text


def test_set_overrides_a_training_setting_and_a_bad_one_names_the_option(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    suite = tmp_path / "tiny.yaml"
    suite.write_text(yaml.safe_dump({**TINY, "tasks": [{"name": "toy2d"}], "methods": ["ew"]}))
    args = ("run", "--suite", str(suite), "--executor", "serial", "--no-report")
    assert cli(tmp_path, *args, "--set", "steps=4", "--set", "eval_every=2") == 0
    (spec,) = ResultsStore(tmp_path / "store.sqlite").runs("tiny")["spec"]
    assert (spec["train"]["steps"], spec["train"]["eval_every"]) == (4, 2)
    assert cli(tmp_path, *args, "--set", "lr=-1") == 2
    assert "command line: --set lr: must be > 0, got -1" in caplog.text


def test_the_gpu_check_scripts_perf_command_parses() -> None:
    """``scripts/gpu_check.sh`` runs only on a GPU machine: its ``perf --step`` arguments are checked here."""
    script = (run_all.ROOT / "scripts" / "gpu_check.sh").read_text().replace("\\\n", " ")
    line = next(x for x in script.splitlines() if "run_all.py perf" in x)
    words = shlex.split(line.split("run_all.py", 1)[1].split("2>", 1)[0].replace('"$OUT', '"out'))
    args = run_all.parse_args(words)
    assert args.step and args.device == "cuda" and args.json == Path("out/perf_step.json")
    assert len(args.variant) == 2
