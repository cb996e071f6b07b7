"""Gradient Surgery Bench command line.

python run_all.py                               # run configs/quick.yaml, then write its report
python run_all.py run --suite configs/toy2d.yaml [--executor processes] [--device cuda] [--data-root DIR]
python run_all.py run --suite S.yaml --executor ray [--address auto|ray://host:port] [--max-retries 2]
python run_all.py report [--suite quick]        # reports from what the store holds
python run_all.py list [methods|tasks] [PATTERN] [--data-root DIR]
python run_all.py prepare NAME [--data-root DIR] [--workers N]   # convert a task's dataset once
python run_all.py perf [--params 100000 1000000] [PATTERN]   # aggregation cost per method vs the floor
python run_all.py export [--suite S] [--format csv|parquet] [--output DIR]   # the store as flat files
python run_all.py perf --step [--methods ew mgda] [--tasks-counts 40] [--trunks mlp] [--json F]  # step × ew
python run_all.py perf --step --variant batched_heads=true,optimizer_impl=fused   # and with these settings

Exit status: 0 on success, 1 when a run failed or on an internal error (with its traceback), 2 on a
user error (:class:`benchmark.errors.UserError`: a bad suite, argument, store or dataset), printed as
one line (``-v`` adds the traceback).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import yaml

from benchmark.config import check_train_settings, load_suite
from benchmark.data import require_root, resolve_data_root
from benchmark.errors import UserError
from benchmark.export import FORMATS, export_store
from benchmark.method import LEVELS
from benchmark.perf import aggregation_costs, cost_table
from benchmark.registry import METHODS, TASKS, load_plugin, unknown_name_message
from benchmark.report import write_report
from benchmark.step_perf import TRUNKS, Settings, step_benchmark, step_cases, step_json, step_table
from benchmark.store import ResultsStore, StoreError
from benchmark.sweep import EXECUTORS, default_workers, run_suite

ROOT = Path(__file__).resolve().parent
DEFAULT_SUITE = ROOT / "configs" / "quick.yaml"
DEFAULT_STORE = ROOT / "results" / "store.sqlite"
DEFAULT_REPORTS = ROOT / "reports"
PERF_OWN_SETTINGS = ("device", "level", "jacobian")  # perf --step sets these per case, not a --variant

log = logging.getLogger("run_all")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        for plugin in args.plugin:
            load_plugin(plugin)
        return args.handler(args)
    except UserError as err:
        log.error("error: %s", err, exc_info=args.verbose)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted: finished runs are stored; run the same command again to resume")
        return 130
    except Exception:
        log.exception("internal error (a bug; please report it with this traceback)")
        return 1


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Gradient Surgery Bench: compare multiloss methods.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--results", type=Path, default=DEFAULT_STORE, help="results store (SQLite file)")
    common.add_argument("--reports", type=Path, default=DEFAULT_REPORTS, help="folder for reports")
    common.add_argument("--plugin", action="append", type=existing_file, default=[], help="a plugin file")
    common.add_argument("-v", "--verbose", action="store_true", help="tracebacks with error messages")
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("--data-root", type=Path, help="folder of the datasets (default: $GSB_DATA)")
    workers = argparse.ArgumentParser(add_help=False)
    workers.add_argument("--workers", type=positive_int, default=default_workers())
    sub = parser.add_subparsers(dest="command")

    run = sub.add_parser(
        "run", parents=[common, data, workers], help="run a suite, write its report (default)"
    )
    run.add_argument("--suite", type=Path, default=DEFAULT_SUITE, help="suite YAML file")
    run.add_argument("--executor", choices=EXECUTORS.names(), default="processes")
    run.add_argument("--address", help="Ray cluster (auto, ray://host:port); default: a local Ray")
    run.add_argument(
        "--max-retries", type=non_negative_int, default=2, help="Ray: retries of a run whose worker died"
    )
    run.add_argument("--device", help="override every run's device, e.g. cuda")
    run.add_argument("--seeds", type=positive_int, help="run only the suite's first N seeds (a quick check)")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        type=setting,
        metavar="KEY=VALUE",
        help="override a training setting of every run, e.g. --set steps=10 (repeatable)",
    )
    run.add_argument("--rerun", action="store_true", help="run again runs the store already holds")
    run.add_argument("--no-report", action="store_true")
    run.set_defaults(handler=cmd_run)

    report = sub.add_parser("report", parents=[common], help="write reports from the results store")
    report.add_argument("--suite", action="append", help="suite name (default: every suite stored)")
    report.set_defaults(handler=cmd_report)

    lister = sub.add_parser("list", parents=[common, data], help="list methods and tasks with their defaults")
    lister.add_argument("kind", nargs="?", choices=("methods", "tasks", "all"), default="all")
    lister.add_argument("pattern", nargs="?", default="*", help="shell-style name filter")
    lister.add_argument("--markdown", action="store_true", help="Markdown tables (as in the README)")
    lister.set_defaults(handler=cmd_list)

    prepare = sub.add_parser("prepare", parents=[common, data, workers], help="convert a task's dataset once")
    prepare.add_argument("task", help="a task that reads data files")
    prepare.set_defaults(handler=cmd_prepare)

    perf = sub.add_parser("perf", parents=[common], help="time every method's combine against the floor")
    perf.add_argument("pattern", nargs="?", default="*", help="shell-style method filter")
    perf.add_argument("--tasks", type=int, default=40, help="T, rows of the gradient matrix")
    perf.add_argument("--params", type=int, nargs="+", default=[100_000, 1_000_000], help="P values")
    perf.add_argument("--repeats", type=int, default=7, help="timed calls per method (median)")
    perf.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    perf.add_argument("--output", type=Path, help="also write the Markdown table here")
    step = perf.add_argument_group("--step: the whole training step per method and level, × the ew step")
    step.add_argument("--step", action="store_true", help="time Trainer._step instead of combine")
    step.add_argument("--methods", nargs="+", default=["*"], help="shell-style method filters")
    step.add_argument("--tasks-counts", type=int, nargs="+", default=[2, 10, 40], help="T of the trunks")
    step.add_argument("--trunks", nargs="+", choices=sorted(TRUNKS), default=sorted(TRUNKS))
    step.add_argument("--task", nargs="+", default=[], help="also registered tasks, at their defaults")
    step.add_argument("--levels", nargs="+", choices=LEVELS, default=list(LEVELS), help="of gradient methods")
    step.add_argument("--rounds", type=int, default=5, help="interleaved rounds (ratios' spread)")
    step.add_argument("--device", default="cpu", help="torch device of the step")
    step.add_argument("--no-memory", action="store_true", help="skip the per-case peak-memory subprocesses")
    step.add_argument("--json", type=Path, help="also write every round's times and ratios here")
    step.add_argument(
        "--variant", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE...]",
        help="also every case with these TrainSpec settings (repeatable), × its own ew and the default ew",
    )
    perf.set_defaults(handler=cmd_perf)

    export = sub.add_parser("export", parents=[common], help="write the store's runs and metrics as files")
    export.add_argument("--suite", help="one suite (default: every suite stored)")
    export.add_argument("--format", choices=FORMATS, default="csv", help="parquet needs pyarrow")
    export.add_argument("--output", type=Path, default=ROOT / "results" / "export", help="output folder")
    export.set_defaults(handler=cmd_export)

    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["run", *argv]  # no command: options belong to the default one
    return parser.parse_args(argv)


def existing_file(text: str) -> Path:
    """argparse type: a path to an existing file."""
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"file not found: {text}")
    return Path(text)


def setting(text: str) -> tuple[str, object]:
    """argparse type: ``KEY=VALUE``, the value read as YAML (``steps=10`` gives the integer 10)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: the value is not valid YAML ({err})") from err


def variant(text: str) -> Settings:
    """A ``--variant``: ``KEY=VALUE[,KEY=VALUE...]`` TrainSpec settings (each as ``--set`` reads it),
    checked and coerced, as sorted key/value pairs."""
    values: dict[str, object] = {}
    for part in text.split(","):
        try:
            key, value = setting(part)
        except argparse.ArgumentTypeError as err:
            raise UserError(f"--variant {text}: {err}") from err
        if key in PERF_OWN_SETTINGS:
            raise UserError(f"--variant {text}: {key}: perf --step sets it per case, not a variant")
        if key in values:
            raise UserError(f"--variant {text}: {key}: given twice")
        values[key] = value
    return tuple(sorted(check_train_settings(values, f"--variant {text}").items()))


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def executor_options(args: argparse.Namespace) -> dict[str, object]:
    """The Ray executor's options; ``--address`` with another executor is a mistake."""
    if args.executor == "ray":
        return {"address": args.address, "max_retries": args.max_retries}
    if args.address is not None:
        raise UserError(f"--address {args.address}: only with --executor ray, got --executor {args.executor}")
    return {}


def cmd_run(args: argparse.Namespace) -> int:
    overrides = dict(args.set) | ({"device": args.device} if args.device else {})
    options = executor_options(args)
    suite = load_suite(args.suite, overrides, args.data_root, args.plugin, args.seeds)  # runs carry plugins
    store = ResultsStore(args.results)
    store.save_suite(suite.name, suite.description, suite.path)
    statuses = run_suite(suite, store, args.executor, args.workers, rerun=args.rerun, options=options)
    log.info("suite %s: %s", suite.name, dict(statuses) or "nothing to run, all results stored")
    if not args.no_report:
        write_report(store, suite.name, args.reports / suite.name, suite.settings)
    return 1 if statuses.get("failed") else 0


def cmd_report(args: argparse.Namespace) -> int:
    store = ResultsStore(args.results, create=False)
    held = store.suites()
    for name in args.suite or []:
        if name not in held:
            holds = f"; it holds {', '.join(held)}" if held else "; it holds no suite"
            raise StoreError(f"{store.path}: {unknown_name_message('suite', name, held)}{holds}")
    if not held:
        log.warning("%s holds no runs: no report written", store.path)
    for name in args.suite or held:
        write_report(store, name, args.reports / name)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    store = ResultsStore(args.results, create=False)
    export_store(store, args.output, args.suite, args.format)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    table = _markdown_table if args.markdown else _table
    blocks = []
    if args.kind in ("methods", "all"):
        blocks.append(table("methods", METHODS, args.pattern, ("level", "citation")))
    if args.kind in ("tasks", "all"):
        blocks.append(table("tasks", TASKS, args.pattern, ()))
        if not args.markdown:
            blocks[-1] += "\n" + _data_table(args.pattern, resolve_data_root(args.data_root))
    print("\n\n".join(blocks))
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    cls = TASKS.get(args.task)
    if not cls.needs_data:
        raise UserError(f"task {args.task!r} reads no data files: nothing to prepare")
    root = require_root(resolve_data_root(args.data_root), args.task)
    cls.prepare(root, args.workers)
    log.info("task %r: data prepared under %s", args.task, root)
    return 0


def cmd_perf(args: argparse.Namespace) -> int:
    if args.step:
        return cmd_perf_step(args)
    names = METHODS.names(args.pattern)
    if not names:
        raise UserError(f"no method matches {args.pattern!r}")
    torch.set_num_threads(args.threads)
    log.info("timing %d methods at T=%d, P=%s, %d threads", len(names), args.tasks, args.params, args.threads)
    table = cost_table(aggregation_costs(names, args.tasks, args.params, args.repeats))
    print(table)
    if args.output:
        args.output.write_text(table + "\n")
    return 0


def cmd_perf_step(args: argparse.Namespace) -> int:
    names = sorted({name for pattern in args.methods for name in METHODS.names(pattern)})
    if not names:
        raise UserError(f"--methods: no method matches {' '.join(args.methods)!r}")
    for name in args.task:
        TASKS.get(name)
    variants = [variant(text) for text in args.variant]
    torch.set_num_threads(args.threads)
    cases = step_cases(names, args.tasks_counts, args.trunks, args.task, args.levels, variants=variants)
    log.info("timing %d step configurations, %d rounds, %d threads", len(cases), args.rounds, args.threads)
    results = step_benchmark(cases, args.rounds, args.repeats, args.device, memory=not args.no_memory)
    table = step_table(results)
    print(table)
    if args.output:
        args.output.write_text(table + "\n")
    if args.json:
        args.json.write_text(step_json(results) + "\n")
    return 0


def _table(title: str, registry, pattern: str, columns: tuple[str, ...]) -> str:
    lines = [f"{title}:"]
    for name in registry.names(pattern):
        cls = registry.get(name)
        extra = "".join(f"  [{getattr(cls, c)}]" for c in columns if getattr(cls, c, ""))
        defaults = ", ".join(f"{k}={v!r}" for k, v in cls.defaults().items())
        lines.append(f"  {name:<18} {cls.description}{extra}")
        lines.append(f"  {'':<18} defaults: {defaults or '-'}")
    return "\n".join(lines)


def _data_table(pattern: str, root: Path | None) -> str:
    """Per task, whether its data is present under ``root`` and where it looks."""
    lines = [f"data ({root or 'no data root: give --data-root or set $GSB_DATA'}):"]
    lines += [f"  {name:<18} {TASKS.get(name).data_status(root)}" for name in TASKS.names(pattern)]
    return "\n".join(lines)


def _markdown_table(title: str, registry, pattern: str, columns: tuple[str, ...]) -> str:
    """The same as :func:`_table` as a Markdown table (the README's); ``title`` is the README's heading."""
    lines = [f"| key | what it does | {' | '.join(columns)}{' | ' if columns else ''}defaults |"]
    lines.append("|---" * (len(columns) + 3) + "|")
    for name in registry.names(pattern):
        cls = registry.get(name)
        cells = [f"`{name}`", cls.description, *(str(getattr(cls, c)) for c in columns)]
        defaults = ", ".join(f"`{k}={v!r}`" for k, v in cls.defaults().items()) or "–"
        lines.append("| " + " | ".join([*cells, defaults]) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
