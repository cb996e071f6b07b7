"""The report of one suite: ``index.md`` and a self-contained ``index.html`` (plots inlined), plus PNGs.

The content is built once as a list of blocks (headings, text, tables, images, lists) and rendered
twice, to Markdown and to HTML.
"""

from __future__ import annotations

import base64
import html
import logging
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from benchmark import plots
from benchmark.evaluate import (
    BASELINE,
    Evaluation,
    TaskInfo,
    build_task,
    evaluate,
    front_counts,
    step_times,
    trajectories,
)
from benchmark.specs import STATUSES
from benchmark.store import ResultsStore

logger = logging.getLogger(__name__)

LEGEND = (
    "Cells: mean ± std (ddof 1) over the ok runs of a task and method label (n runs); the best per metric "
    "in bold (↑ higher is better, ↓ lower); mean rank over the metrics, 1 is best. Failed and diverged "
    "runs are left out and listed at the end. ‡: a deterministic task and method, trained once per task "
    "instance whatever the suite's seeds (the seed cannot change the result), so n counts distinct results."
)

CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; }
code { background: #f4f4f4; padding: 0 0.2em; }
img { max-width: 100%; display: block; margin: 1em 0; }
"""


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Text:
    """A paragraph; ``backticks`` mark code."""

    text: str


@dataclass
class Items:
    items: list[str]


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    bold: set[tuple[int, int]] = field(default_factory=set)


@dataclass
class Image:
    path: Path
    alt: str


Block = Heading | Text | Items | Table | Image


# ---------------------------------------------------------------- rendering


def _md_cell(text: str, bold: bool) -> str:
    text = text.replace("|", "\\|")
    return f"**{text}**" if bold else text


def to_markdown(blocks: list[Block]) -> str:
    """Markdown; images are linked by file name, relative to the report directory."""
    out: list[str] = []
    for block in blocks:
        match block:
            case Heading(text, level):
                out.append(f"{'#' * level} {text}")
            case Text(text):
                out.append(text)
            case Items(items):
                out.append("\n".join(f"- {item}" for item in items))
            case Table(header, rows, bold):
                lines = [
                    "| " + " | ".join(_md_cell(h, False) for h in header) + " |",
                    "|" + "---|" * len(header),
                ]
                for i, row in enumerate(rows):
                    lines.append(
                        "| " + " | ".join(_md_cell(c, (i, j) in bold) for j, c in enumerate(row)) + " |"
                    )
                out.append("\n".join(lines))
            case Image(path, alt):
                out.append(f"![{alt}]({path.name})")
    return "\n\n".join(out) + "\n"


def _html_text(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{_html_text(h)}</th>" for h in table.header)
    rows = []
    for i, row in enumerate(table.rows):
        cells = (
            f"<b>{_html_text(c)}</b>" if (i, j) in table.bold else _html_text(c) for j, c in enumerate(row)
        )
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _html_image(image: Image) -> str:
    data = base64.b64encode(image.path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(image.alt)}" src="data:image/png;base64,{data}">'


def to_html(blocks: list[Block], title: str) -> str:
    """A self-contained HTML page: inline CSS, PNGs embedded as data URIs."""
    body: list[str] = []
    for block in blocks:
        match block:
            case Heading(text, level):
                body.append(f"<h{level}>{_html_text(text)}</h{level}>")
            case Text(text):
                body.append(f"<p>{_html_text(text)}</p>")
            case Items(items):
                body.append("<ul>" + "".join(f"<li>{_html_text(item)}</li>" for item in items) + "</ul>")
            case Table():
                body.append(_html_table(block))
            case Image():
                body.append(_html_image(block))
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


# ---------------------------------------------------------------- content


def fmt(value: float) -> str:
    return "—" if pd.isna(value) else f"{value:.4g}"


def mean_std(mean: float, std: float, count: int) -> str:
    """``0.9123 ± 0.0042 (3)``; no ± for a single run."""
    spread = "" if pd.isna(std) else f" ± {fmt(std)}"
    return f"{fmt(mean)}{spread} ({count})"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "task"


def last_line(error: object) -> str:
    lines = str(error).strip().splitlines() if isinstance(error, str) and error.strip() else []
    return lines[-1] if lines else "(no error message)"


def status_line(runs: pd.DataFrame) -> str:
    counts = runs["status"].value_counts()
    parts = [f"{counts.get(s, 0)} {s}" for s in STATUSES]
    return f"{len(runs)} runs: {', '.join(parts)}."


def selection_text(info: TaskInfo) -> str:
    """How the values of a task's table were read (see :func:`benchmark.evaluate.evaluation_point`)."""
    if not info.eval_splits:
        return "Task not available here: metric directions unknown; values at each run's selected step."
    if "val" not in info.eval_splits:
        return f"Values at the last evaluation on `{info.eval_splits[0]}`."
    read = "test" if "test" in info.eval_splits else "val"
    if info.selection_metric is not None:
        arrow = "↑" if info.directions.get(info.selection_metric, True) else "↓"
        rule = f"best `{info.selection_metric}` {arrow} on `val`"
    else:
        rule = "best mean of the higher-is-better metrics on `val`"
    return f"Model selection: each run is read on `{read}` at the step with the {rule}."


def runs_cell(counts: pd.Series) -> str:
    ok = int(counts.get("ok", 0))
    others = [f"{int(counts[s])} {s}" for s in STATUSES if s != "ok" and counts.get(s, 0)]
    return ", ".join([f"{ok} ok", *others]) if others else str(ok)


def seed_independent(runs: pd.DataFrame) -> set[str]:
    """Method labels all of whose runs were trained once for every seed (``TaskInfo.deterministic``)."""
    flags = runs["info"].map(lambda info: info is not None and info.deterministic)
    return {str(m) for m, every in flags.groupby(runs["method_label"]).all().items() if every}


def best_rows(means: list[float], higher_is_better: bool) -> set[int]:
    """Rows holding the best finite mean (all of them on ties)."""
    finite = [m for m in means if not pd.isna(m) and math.isfinite(m)]
    if not finite:
        return set()
    best = max(finite) if higher_is_better else min(finite)
    return {i for i, m in enumerate(means) if m == best}


def arrow(higher_is_better: object) -> str:
    return "" if pd.isna(higher_is_better) else (" ↑" if higher_is_better else " ↓")


def results_table(label: str, ev: Evaluation) -> Table:
    """Methods × metrics of one task label: ``mean ± std (n)``, the best in bold, and the mean rank."""
    summary = ev.summary[ev.summary["task_label"] == label]
    declared = summary[summary["higher_is_better"].notna()]
    shown = declared if len(declared) else summary
    names = list(dict.fromkeys(shown["name"]))
    counts = ev.counts.loc[label]
    methods = list(counts.index)
    wide = shown.pivot(index="method_label", columns="name", values=["mean", "std", "count"]).reindex(methods)
    directions = shown.groupby("name", sort=False)["higher_is_better"].first()
    ranks = ev.ranks[ev.ranks["task_label"] == label].set_index("method_label")["rank"]

    header = ["Method", "Runs", *(name + arrow(directions[name]) for name in names)]
    fixed = seed_independent(ev.runs[ev.runs["task_label"] == label])
    rows = [[method, runs_cell(counts.loc[method]) + (" ‡" if method in fixed else "")] for method in methods]
    bold: set[tuple[int, int]] = set()
    for j, name in enumerate(names, start=len(header) - len(names)):
        means, stds, ns = wide["mean"][name], wide["std"][name], wide["count"][name]
        for row, mean, std, n in zip(rows, means, stds, ns, strict=True):
            row.append("—" if pd.isna(mean) else mean_std(mean, std, int(n)))
        if not pd.isna(directions[name]):
            bold |= {(i, j) for i in best_rows(list(means), bool(directions[name]))}
    deltas = ev.delta_m[ev.delta_m["task_label"] == label].set_index("method_label")["delta_m"]
    for title, column in ((f"Δm% vs {BASELINE} ↓", deltas), ("Mean rank", ranks)):
        if len(column):
            header.append(title)
            for row, method in zip(rows, methods, strict=True):
                row.append(fmt(column.get(method, float("nan"))))
    return Table(header, rows, bold)


def front_lines(label: str, ev: Evaluation) -> list[str]:
    fronts = front_counts(ev.values)
    fronts = fronts[fronts["task_label"] == label]
    return [
        f"{r.method_label}: {r.on_front} of {r.runs} runs ended on the Pareto front"
        for r in fronts.itertuples()
    ]


def landscape_plot(label: str, ev: Evaluation, metrics: pd.DataFrame, path: Path) -> Path | None:
    """Trajectories over the task's landscape, if it has one (built from the label's first run: only
    tasks that declare a landscape, or old runs whose declarations were not stored, are built)."""
    runs = ev.runs[ev.runs["task_label"] == label]
    first = runs.iloc[0]
    stored = first["info"]
    if stored is not None and not stored.landscape:
        return None
    try:
        landscape = build_task(first["task"], first["spec"]["task"]["params"]).landscape()
    except Exception as exc:
        logger.warning("%s: no landscape plot, the task cannot be built (%s)", label, exc)
        return None
    if landscape is None:
        return None
    rows = metrics[(metrics["task_label"] == label) & (metrics["status"] == "ok")]
    splits = ev.infos[int(first["run_id"])].eval_splits or tuple(dict.fromkeys(rows["split"]))
    paths = trajectories(rows, landscape.trajectory, splits[0]) if splits else {}
    if not paths:
        return None
    return plots.landscape_trajectories(landscape, paths, label, path)


def timing_blocks(label: str, timings: pd.DataFrame, out_dir: Path, stem: str) -> list[Block]:
    """Milliseconds per step (mean ± std over ok runs) and total training time per method."""
    rows = timings[timings["task_label"] == label]
    steps = step_times(rows)
    if steps.empty:
        return []
    train = step_times(rows, "train_s").set_index("method_label")["mean"]
    table = Table(
        ["Method", "ms per step", "train s"],
        [
            [r.method_label, mean_std(r.mean, r.std, r.count), fmt(train.get(r.method_label, float("nan")))]
            for r in steps.itertuples()
        ],
    )
    image = plots.step_time_bars(steps, f"{label}: step time", out_dir / f"{stem}_step_time.png")
    return [Heading("Step time", 3), table, Image(image, f"{label} step time")]


def task_section(
    label: str, ev: Evaluation, metrics: pd.DataFrame, timings: pd.DataFrame, out_dir: Path, stem: str
) -> list[Block]:
    """Everything about one task label: table, selection rule, Pareto-front counts, plots, step times."""
    first = ev.runs[ev.runs["task_label"] == label].iloc[0]
    blocks: list[Block] = [
        Heading(label),
        results_table(label, ev),
        Text(selection_text(ev.infos[int(first["run_id"])])),
    ]
    summary = ev.summary[ev.summary["task_label"] == label]
    if fronts := front_lines(label, ev):
        blocks.append(Items(fronts))
    if not summary.empty:
        shown = summary[summary["higher_is_better"].notna()]
        image = plots.metric_points(shown if len(shown) else summary, label, out_dir / f"{stem}_metrics.png")
        blocks.append(Image(image, f"{label} metrics"))
    if image := landscape_plot(label, ev, metrics, out_dir / f"{stem}_landscape.png"):
        blocks.append(Image(image, f"{label} trajectories"))
    return blocks + timing_blocks(label, timings, out_dir, stem)


def failures(runs: pd.DataFrame) -> list[Block]:
    bad = runs[runs["status"] != "ok"]
    if bad.empty:
        return []
    items = [
        f"{r.task_label} / {r.method_label} / seed {r.seed}: {r.status}: {last_line(r.error)}"
        for r in bad.itertuples()
    ]
    return [Heading("Failed and diverged runs"), Items(items)]


def report_blocks(store: ResultsStore, suite: str, out_dir: Path) -> list[Block]:
    """The whole report; writes the PNGs it refers to into ``out_dir``."""
    runs = store.runs(suite)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    blocks: list[Block] = [
        Heading(f"Gradient Surgery Bench: {suite}", 1),
        Text(f"Generated {when} from `{store.path}`."),
    ]
    if runs.empty:
        return [*blocks, Text(f"No runs of suite `{suite}` in the store: nothing to report.")]
    blocks.append(Text(status_line(runs)))
    blocks.append(Text(LEGEND))
    if not (runs["status"] == "ok").any():
        return [
            *blocks,
            Text("No run of this suite finished: there are no results to table."),
            *failures(runs),
        ]
    metrics, timings = store.metrics(suite), store.timings(suite)
    ev = evaluate(runs, metrics)
    for i, label in enumerate(dict.fromkeys(runs["task_label"])):
        blocks += task_section(label, ev, metrics, timings, out_dir, f"{i:02d}_{slug(label)}")
    return blocks + failures(runs)


def write_report(store: ResultsStore, suite: str, out_dir: str | Path) -> Path:
    """Write ``index.md``, ``index.html`` and the PNGs of ``suite`` into ``out_dir``; return the HTML path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    blocks = report_blocks(store, suite, out_dir)
    (out_dir / "index.md").write_text(to_markdown(blocks), encoding="utf-8")
    page = out_dir / "index.html"
    page.write_text(to_html(blocks, f"Gradient Surgery Bench: {suite}"), encoding="utf-8")
    logger.info("report of suite %r written to %s", suite, page)
    return page
