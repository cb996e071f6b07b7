"""The README's promises: its plugin example works as printed, CI runs its test command, and its
methods table is what ``run_all.py list`` prints."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from benchmark.method import get_method
from benchmark.registry import METHODS, load_plugin
from benchmark.store import ResultsStore

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def test_plugin_example_works_as_printed(tmp_path: Path) -> None:
    (example,) = code_blocks("python")
    path = tmp_path / "sign_vote.py"
    path.write_text(example)
    load_plugin(path)
    assert "sign_vote" in METHODS.names()
    grads = torch.tensor([[1.0, -2.0, 0.5], [3.0, 4.0, 1.5]])
    update = get_method("sign_vote", num_tasks=2, scale=0.5).combine(grads)
    torch.testing.assert_close(update, torch.tensor([2.0, 2.0, 1.0]))


@pytest.mark.slow
def test_plugin_example_runs_in_worker_processes_from_the_command_line(tmp_path: Path) -> None:
    """``--plugin path/to/sign_vote.py`` with the default executor: every worker must load the file."""
    (example,) = code_blocks("python")
    plugin = tmp_path / "elsewhere" / "sign_vote.py"
    plugin.parent.mkdir()
    plugin.write_text(example)
    suite = tmp_path / "vote.yaml"
    methods = ["sign_vote", {"name": "sign_vote", "label": "half_vote", "params": {"scale": 0.5}}]
    raw = {"seeds": [0, 1], "train": {"steps": 4, "eval_every": 2}, "tasks": ["toy2d"], "methods": methods}
    suite.write_text(yaml.safe_dump(raw))
    store = tmp_path / "store.sqlite"
    command = [sys.executable, "run_all.py", "run", "--suite", str(suite), "--plugin", str(plugin)]
    command += ["--workers", "2", "--results", str(store), "--no-report"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    runs = ResultsStore(store).runs("vote")
    assert len(runs) == 4 and set(runs.status) == {"ok"}, runs.error.tolist()


def test_the_two_setup_commands_are_what_ci_runs() -> None:
    run_job, run_tests = [block.strip() for block in code_blocks("bash")[:2]]
    assert run_job == "pip install -r requirements.txt && python run_all.py"
    ci = (ROOT / ".ci" / "run").read_text()
    install, test = run_tests.split(" && ")
    assert install.replace("pip", "python -m pip", 1).split()[-1] in ci
    assert test in ci.splitlines()


def test_methods_table_is_what_list_prints() -> None:
    """In a fresh process: other tests register test-only methods in this one."""
    table = re.search(r"<!-- methods table: begin -->\n(.*?)<!-- methods table: end -->", README, re.DOTALL)
    assert table, "README lost its methods table markers"
    command = [sys.executable, "run_all.py", "list", "methods", "--markdown"]
    printed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert table.group(1) == printed, "regenerate: python run_all.py list methods --markdown"
