"""A catalogue of malformed inputs through the command line: each exits 2 with one message naming the
file, key and value to fix, and no traceback."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import run_all
import tests.benchmark.marker_task  # noqa: F401  (registers the "_marker" task)
from benchmark.store import ResultsStore

BASE = "tasks: [toy2d]\nmethods: [ew]\ntrain: {steps: 1}\n"


@dataclass(frozen=True)
class Case:
    """``files`` are written under the test's folder, ``{tmp}`` in ``argv`` is that folder; the output
    must contain every string of ``expect`` (``{tmp}`` replaced too)."""

    argv: tuple[str, ...]
    expect: tuple[str, ...]
    files: dict[str, str | bytes] = field(default_factory=dict)
    setup: str = ""


def suite(text: str, *expect: str) -> Case:
    """A ``run`` of the suite file ``s.yaml`` holding ``text``; its message names the file too. (Each
    suite must fail: one that loads would train toy2d's default 35k steps.)"""
    argv = ("run", "--suite", "{tmp}/s.yaml", "--results", "{tmp}/store.sqlite", "--no-report")
    return Case(argv, ("{tmp}/s.yaml", *expect), {"s.yaml": text})


def plugin(code: str, *expect: str) -> Case:
    return Case(("list", "--plugin", "{tmp}/p.py"), ("{tmp}/p.py", *expect), {"p.py": code})


def args(*argv: str, expect: tuple[str, ...]) -> Case:
    run = ("run", "--suite", "{tmp}/s.yaml", "--results", "{tmp}/store.sqlite")
    return Case((*run, *argv), expect, {"s.yaml": BASE})


def store(setup: str, *expect: str) -> Case:
    return Case(("report", "--results", "{tmp}/store.sqlite"), ("{tmp}/store.sqlite", *expect), setup=setup)


CASES = {
    # suite files
    "unknown method": suite("tasks: [toy2d]\nmethods: [pcgard]\n", "methods[0].name", "'pcgard'", "'pcgrad'"),
    "unknown task": suite("tasks: [toy3d]\nmethods: [ew]\n", "tasks[0].name", "'toy3d'"),
    "unknown suite key": suite(BASE + "trian: {}\n", "trian", "did you mean 'train'"),
    "unknown train key": suite(BASE.replace("steps: 1", "stepz: 1"), "train.stepz", "'steps'"),
    "lr below zero": suite("tasks: [toy2d]\nmethods: [ew]\ntrain: {lr: -0.1}\n", "train.lr", "-0.1"),
    "zero steps": suite("tasks: [toy2d]\nmethods: [ew]\ntrain: {steps: 0}\n", "train.steps", "got 0"),
    "lr not a number": suite("tasks: [toy2d]\nmethods: [ew]\ntrain: {lr: fast}\n", "train.lr", "'fast'"),
    "unknown optimizer": suite(BASE.replace("steps: 1", "optimizer: adamm"), "train.optimizer", "'adamm'"),
    "unknown level": suite(BASE.replace("steps: 1", "level: layer"), "train.level", "'layer'"),
    "bad device": suite(BASE.replace("steps: 1", "device: gpu9"), "train.device", "'gpu9'"),
    "negative seeds": suite(BASE + "seeds: -1\n", "seeds", "-1"),
    "repeated seed": suite(BASE + "seeds: [1, 1]\n", "seeds", "seed 1 appears twice"),
    "key given twice": suite(BASE + "methods: [pcgrad]\n", "'methods' appears twice", "line"),
    "python object tag": suite(BASE + "name: !!python/object/apply:os.system ['true']\n", "python/object"),
    "not YAML": suite("tasks: [toy2d\n", "not valid YAML", "line 2"),
    "not a mapping": suite("- toy2d\n- ew\n", "expected a mapping", "['toy2d', 'ew']"),
    "no methods": suite("tasks: [toy2d]\nmethods: []\n", "methods", "at least one entry"),
    "unknown method parameter": suite(
        "tasks: [toy2d]\nmethods: [{name: graddrop, params: {lek: 0.5}}]\n", "methods[0].params.lek", "'leak'"
    ),
    "grid not a list": suite(
        "tasks: [toy2d]\nmethods: [{name: graddrop, grid: {leak: 0.5}}]\n", "methods[0].grid.leak", "0.5"
    ),
    "bad method value": suite(
        "tasks: [toy2d]\nmethods: [{name: graddrop, params: {purity_fn: cubic}}]\n", "methods[0]", "cubic"
    ),
    "weighting that gives no weights": suite(
        "tasks: [toy2d]\nmethods: [{name: pcgrad, weighting: trimmed_mean}]\n",
        "methods[0].weighting.name",
        "'trimmed_mean'",
    ),
    "label used twice": suite(
        "tasks: [toy2d]\nmethods: [ew, {name: pcgrad, label: ew}]\n", "methods[1].label", "'ew'"
    ),
    "unknown resource": suite(BASE + "resources: {num_tpus: 1}\n", "resources.num_tpus", "unknown key"),
    "negative resource": suite(
        "tasks: [toy2d]\nmethods: [{name: ew, resources: {num_cpus: -1}}]\n",
        "methods[0].resources.num_cpus",
        "-1",
    ),
    "suite name with a path": suite(BASE + "name: ../x\n", "name", "'../x'"),
    "data root for a task without data": suite(
        "tasks: [{name: toy2d, data_root: d}]\nmethods: [ew]\n", "tasks[0].data_root", "'toy2d'"
    ),
    "not UTF-8": suite("name: caf\xe9\n", "not UTF-8"),
    "missing suite plugin": suite(BASE + "plugins: [missing.py]\n", "plugins[0]", "missing.py"),
    "suite plugin raising": Case(
        ("run", "--suite", "{tmp}/s.yaml", "--results", "{tmp}/store.sqlite", "--no-report"),
        ("{tmp}/s.yaml", "plugins[0]", "{tmp}/boom.py", "boom!"),
        {"s.yaml": BASE + "plugins: [boom.py]\n", "boom.py": "raise RuntimeError('boom!')\n"},
    ),
    # plugin files on the command line
    "plugin syntax error": plugin("import torch\nclass Broken(:\n", "p.py:2", "syntax error"),
    "plugin raising on import": plugin("raise ImportError('needs cupy')\n", "needs cupy"),
    "plugin registering a taken key": plugin(
        "from benchmark.method import Method\nfrom benchmark.registry import METHODS\n\n"
        "@METHODS.register('pcgrad')\nclass Again(Method):\n    pass\n",
        "'pcgrad'",
        "pcgrad.py",
    ),
    "missing plugin": Case(("list", "--plugin", "{tmp}/none.py"), ("--plugin", "{tmp}/none.py")),
    # command-line arguments
    "zero workers": args("--workers", "0", expect=("--workers", "'0'")),
    "unknown executor": args("--executor", "nope", expect=("--executor", "'nope'")),
    "negative retries": args("--executor", "ray", "--max-retries", "-1", expect=("--max-retries", "'-1'")),
    "address without ray": args("--address", "auto", expect=("--address auto", "--executor processes")),
    "bad --device": args("--device", "bogus", expect=("--device", "'bogus'")),
    "unknown command": Case(("sweep",), ("argument command", "'sweep'")),
    "prepare a task without data": Case(("prepare", "toy2d"), ("'toy2d'", "reads no data files")),
    # data roots
    "data root is a file": Case(
        ("run", "--suite", "{tmp}/s.yaml", "--results", "{tmp}/store.sqlite", "--data-root", "{tmp}/s.yaml"),
        ("{tmp}/s.yaml", "tasks[0]", "'_marker'", "not a folder"),
        {"s.yaml": "tasks: [_marker]\nmethods: [ew]\n"},
    ),
    "data missing": Case(
        ("run", "--suite", "{tmp}/s.yaml", "--results", "{tmp}/store.sqlite", "--data-root", "{tmp}"),
        ("{tmp}/s.yaml", "tasks[0]", "{tmp}/marker", "missing"),
        {"s.yaml": "tasks: [_marker]\nmethods: [ew]\n"},
    ),
    # store files
    "store is a text file": store("text", "not a results store"),
    "store is a folder": store("folder", "is a directory"),
    "store from a newer version": store("newer", "schema version 99", "update Gradient Surgery Bench"),
    "another SQLite database": store("other", "not a results store"),
    "no store": store("", "no results store here"),
    "unknown suite in the store": Case(
        ("report", "--results", "{tmp}/store.sqlite", "--suite", "quik"), ("{tmp}/store.sqlite", "'quik'"),
        setup="empty",
    ),
}


def prepare_store(path: Path, setup: str) -> None:
    if setup == "text":
        path.write_text("not a database\n" * 100)
    elif setup == "folder":
        path.mkdir()
    elif setup in ("newer", "other"):
        with closing(sqlite3.connect(path)) as conn:
            conn.execute("CREATE TABLE t (x)")
            if setup == "newer":
                conn.execute("PRAGMA user_version = 99")
            conn.commit()
    elif setup == "empty":
        ResultsStore(path)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_malformed_input_exits_2_naming_file_key_and_value(
    case: Case, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, content in case.files.items():
        target = tmp_path / name
        target.write_bytes(content.encode("latin-1") if "\xe9" in content else content.encode())
    prepare_store(tmp_path / "store.sqlite", case.setup)
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in case.argv]
    try:
        status = run_all.main(argv)
    except SystemExit as exit_:  # argparse: a usage line and the message on stderr
        status = exit_.code
    output = caplog.text + capsys.readouterr().err
    assert status == 2, output
    for expected in case.expect:
        assert expected.replace("{tmp}", str(tmp_path)) in output, output
    assert "Traceback" not in output


def test_the_catalogue_has_at_least_30_cases() -> None:
    assert len(CASES) >= 30
