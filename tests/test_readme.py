"""The README's promises: its plugin example works as printed, CI runs its test command, and its
methods table is what ``run_all.py list`` prints."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import torch

from benchmark.method import get_method
from benchmark.registry import METHODS, load_plugin

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
