"""The report of one suite: ``index.md`` and a self-contained ``index.html`` (plots inlined), plus PNGs
and every table as CSV and LaTeX under ``tables/``.

The content is built once as a list of blocks (headings, text, tables, images, lists) and rendered
twice, to Markdown and to HTML. The HTML fits a laptop screen: the page is at most 1,100 pixels wide,
images shrink to it, and a table wider than the page scrolls inside its own wrapper.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmark import plots, stats
from benchmark.diagnostics import SUMMARY, pair_of
from benchmark.evaluate import (
    Evaluation,
    ReportSettings,
    TaskInfo,
    build_task,
    evaluate,
    front_counts,
    metric_task,
    step_times,
)
from benchmark.specs import STATUSES, TrainSpec
from benchmark.store import ResultsStore

logger = logging.getLogger(__name__)

SETTINGS_FILE = "settings.json"
LEGEND = (
    "Cells: mean ± the half-width of its 95 % Student-t confidence interval over the ok runs of a task "
    "and method label (seeds and task instances; n runs), rounded to 2 significant digits of the "
    "half-width. Bold: the best mean per metric (↑ higher is better, ↓ lower); °: not significantly "
    "different from the best; ▲ / ▼: significantly better / worse than the baseline. Tests: paired t-test "
    "where two methods ran on the same seeds and task instances, Welch's t-test otherwise, Holm-corrected "
    "across the methods of a table per metric, at 5 %. Δm%: the mean relative change over the metrics, "
    "Δp: the same averaged per task first (LibMTL); both against single-task runs where the suite has "
    "them, else against the baseline; lower is better. MR: mean rank over the metrics, 1 is best. "
    "Budget: configurations tried per method (tuned ones selected on validation). Failed and diverged "
    "runs are left out and listed at the end. ‡: a deterministic task and method, trained once per task "
    "instance whatever the suite's seeds (the seed cannot change the result), so n counts distinct results."
)

CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
.table-wrap { overflow-x: auto; max-width: 100%; margin: 1em 0; }
table { border-collapse: collapse; font-size: 0.9em; }
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
    """A table; ``name`` (a file stem) exports it to ``tables/<name>.csv`` and ``.tex``."""

    header: list[str]
    rows: list[list[str]]
    bold: set[tuple[int, int]] = field(default_factory=set)
    name: str = ""


@dataclass
class Image:
    path: Path
    alt: str


@dataclass
class Details:
    """A collapsible section (``<details>``, which GitHub's Markdown renders too)."""

    summary: str
    blocks: list[Block]


Block = Heading | Text | Items | Table | Image | Details


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
            case Details(summary, inner):
                out.append(f"<details><summary>{html.escape(summary)}</summary>\n\n{to_markdown(inner)}\n</details>")
    return "\n\n".join(out) + "\n"


def table_frame(table: Table) -> pd.DataFrame:
    """A table's cells as a frame of strings, its header as the columns."""
    return pd.DataFrame(table.rows, columns=table.header)


def write_tables(blocks: list[Block], folder: Path) -> list[Path]:
    """Every named table as ``<name>.csv`` (``DataFrame.to_csv``) and ``<name>.tex``
    (``DataFrame.to_latex``, a booktabs tabular; its bold cells in ``\\textbf``)."""
    written = []
    for block in blocks:
        if not isinstance(block, Table) or not block.name:
            continue
        folder.mkdir(parents=True, exist_ok=True)
        frame = table_frame(block)
        frame.to_csv(folder / f"{block.name}.csv", index=False)
        escaped = frame.map(_latex_escape)
        for i, j in block.bold:
            escaped.iat[i, j] = f"\\textbf{{{escaped.iat[i, j]}}}"
        escaped.columns = [_latex_escape(h) for h in frame.columns]
        latex = escaped.to_latex(
            index=False, escape=False, column_format="l" + "r" * (len(frame.columns) - 1)
        )
        (folder / f"{block.name}.tex").write_text(latex, encoding="utf-8")
        written += [folder / f"{block.name}.csv", folder / f"{block.name}.tex"]
    return written


LATEX_SPECIAL = {
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "\\": r"\textbackslash{}",
}
LATEX_SYMBOLS = {
    "±": r"$\pm$",
    "↑": r"$\uparrow$",
    "↓": r"$\downarrow$",
    "Δ": r"$\Delta$",
    "×": r"$\times$",
    "‡": r"$\ddagger$",
    "—": "--",
    "–": "--",
}


def _latex_escape(text: str) -> str:
    """LaTeX for a cell: special characters escaped, the report's symbols as math."""
    return "".join(LATEX_SPECIAL.get(c, LATEX_SYMBOLS.get(c, c)) for c in str(text))


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
    table_html = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    return f'<div class="table-wrap">{table_html}</div>'


def _html_image(image: Image) -> str:
    data = base64.b64encode(image.path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(image.alt)}" src="data:image/png;base64,{data}">'


def html_body(blocks: list[Block]) -> list[str]:
    """The HTML of each block."""
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
            case Details(summary, inner):
                content = "\n".join(html_body(inner))
                body.append(f"<details><summary>{_html_text(summary)}</summary>\n{content}\n</details>")
    return body


def to_html(blocks: list[Block], title: str) -> str:
    """A self-contained HTML page: inline CSS, PNGs embedded as data URIs."""
    body = html_body(blocks)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


# ---------------------------------------------------------------- content


def fmt(value: float) -> str:
    return "—" if pd.isna(value) else f"{value:.4g}"


def mean_std(mean: float, std: float, count: int) -> str:
    """``0.9123 ± 0.0042 (3)``, rounded to the spread (:func:`benchmark.stats.round_to_spread`); no ± for
    one run."""
    text, spread = stats.round_to_spread(mean, std)
    return f"{text}{f' ± {spread}' if spread else ''} ({count})"


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


def ci_cell(mean: float, half_width: float, count: int) -> str:
    """``0.912 ± 0.004 (3)``, rounded to the spread (:func:`benchmark.stats.round_to_spread`)."""
    mean_text, half_text = stats.round_to_spread(mean, half_width)
    return f"{mean_text}{f' ± {half_text}' if half_text else ''} ({count})"


def _markers(ev: Evaluation, label: str, name: str) -> dict[str, str]:
    """Per method, ``°`` (not significantly different from the best) and ``▲`` / ``▼`` (significantly
    better / worse than the baseline) on one metric of one table."""
    marks: dict[str, str] = {}
    near = ev.near_best
    if len(near):
        rows = near[(near["task_label"] == label) & (near["name"] == name) & near["near"].astype(bool)]
        for method in rows["method_label"]:
            marks[method] = "°"
    sig = ev.significance
    if len(sig):
        rows = sig[(sig["task_label"] == label) & (sig["name"] == name) & (sig["p_holm"] < stats.ALPHA)]
        for method, effect in zip(rows["method_label"], rows["effect"], strict=True):
            marks[method] = marks.get(method, "") + ("▲" if effect > 0 else "▼")
    return marks


def budgets(label: str, ev: Evaluation) -> pd.Series:
    """Configurations tried per method of a table (1 for an untuned method)."""
    tuning = ev.tuning[ev.tuning["task_label"] == label]
    return tuning.groupby("method_label", sort=False)["budget"].first()


def results_table(label: str, ev: Evaluation) -> Table:
    """The paper-table view of one task label: methods × metrics (mean ± CI half-width (n), markers),
    Δm%, Δp, mean rank and budget."""
    summary = ev.summary[ev.summary["task_label"] == label]
    declared = summary[summary["higher_is_better"].notna()]
    shown = declared if len(declared) else summary
    names = list(dict.fromkeys(shown["name"]))
    counts = ev.counts.loc[label]
    methods = list(counts.index)
    wide = shown.pivot(index="method_label", columns="name", values=["mean", "half_width", "count"])
    wide = wide.reindex(methods)
    directions = shown.groupby("name", sort=False)["higher_is_better"].first()
    ranks = ev.ranks[ev.ranks["task_label"] == label].set_index("method_label")["rank"]

    header = ["Method", "Runs", *(name + arrow(directions[name]) for name in names)]
    fixed = seed_independent(ev.runs[ev.runs["task_label"] == label])
    rows = [[method, runs_cell(counts.loc[method]) + (" ‡" if method in fixed else "")] for method in methods]
    bold: set[tuple[int, int]] = set()
    for j, name in enumerate(names, start=len(header) - len(names)):
        means, halves, ns = wide["mean"][name], wide["half_width"][name], wide["count"][name]
        marks = _markers(ev, label, str(name))
        for row, method, mean, half, n in zip(rows, methods, means, halves, ns, strict=True):
            row.append("—" if pd.isna(mean) else ci_cell(mean, half, int(n)) + marks.get(method, ""))
        if not pd.isna(directions[name]):
            bold |= {(i, j) for i in best_rows(list(means), bool(directions[name]))}
    deltas = ev.delta_m[ev.delta_m["task_label"] == label].set_index("method_label")
    reference = str(deltas["reference"].iloc[0]) if len(deltas) else ""
    columns = [
        (f"Δm% vs {reference} ↓", deltas["delta_m"] if len(deltas) else deltas),
        (f"Δp vs {reference} ↓", deltas["delta_p"] if len(deltas) else deltas),
        ("MR", ranks),
        ("Budget", budgets(label, ev)),
    ]
    for title, column in columns:
        if len(column):
            header.append(title)
            for row, method in zip(rows, methods, strict=True):
                value = column.get(method, float("nan"))
                row.append(f"{value:.2f}" if title.startswith("Δ") and not pd.isna(value) else fmt(value))
    return Table(header, rows, bold, name=f"{slug(label)}_results")


def budget_warning(label: str, ev: Evaluation) -> list[Block]:
    """A warning when the methods of a table had different tuning budgets."""
    budget = budgets(label, ev)
    if budget.nunique() <= 1:
        return []
    listed = ", ".join(f"{m} {int(b)}" for m, b in budget.items())
    return [Text(f"⚠ Unequal tuning budgets (configurations per method: {listed}): a method given more "
                 "configurations had more chances to do well on validation.")]


def tuning_table(label: str, ev: Evaluation) -> list[Block]:
    """Every tuning configuration of the table's tuned methods, its validation score, the one kept."""
    tuning = ev.tuning[(ev.tuning["task_label"] == label) & (ev.tuning["budget"] > 1)]
    if tuning.empty:
        return []
    rows = [
        [r.method_label, r.config, fmt(r.val_score), "✓" if r.selected else ""] for r in tuning.itertuples()
    ]
    return [Table(["Method", "Configuration", "Mean validation score", "Selected"], rows)]


def significance_table(label: str, ev: Evaluation) -> list[Block]:
    """The tests behind the markers: each method against the baseline, per metric."""
    sig = ev.significance[ev.significance["task_label"] == label]
    if sig.empty:
        return []
    rows = [
        [r.method_label, r.name, r.test, f"{r.n} / {r.n_reference}", effect_cell(r.effect, r.low, r.high),
         fmt(r.p), fmt(r.p_holm)]
        for r in sig.itertuples()
    ]
    header = ["Method", "Metric", "Test", "n / n baseline", "Improvement [95 % CI]", "p", "p (Holm)"]
    return [Text(f"Each method against the baseline `{ev.settings.baseline}`; improvement: the difference of "
                 "the means, signed so that positive is better."), Table(header, rows)]


def effect_cell(effect: float, low: float, high: float) -> str:
    """``+0.031 [0.004, 0.058]``, rounded to the interval's spread."""
    half = (high - low) / 2 if not (pd.isna(low) or pd.isna(high)) else float("nan")
    text, _ = stats.round_to_spread(effect, half)
    if pd.isna(half):
        return text
    low_text, _ = stats.round_to_spread(low, half)
    high_text, _ = stats.round_to_spread(high, half)
    return f"{text} [{low_text}, {high_text}]"


def per_task_summary(label: str, ev: Evaluation) -> pd.DataFrame:
    """For a task with 4 or more losses, the summary rows of its per-loss values (``<stat>/<task>``);
    empty for fewer losses."""
    first = ev.runs[ev.runs["task_label"] == label].iloc[0]
    info = ev.infos.get(int(first["run_id"]), TaskInfo())
    summary = ev.summary[ev.summary["task_label"] == label]
    if len(info.task_names) < 4:
        return summary.iloc[:0]
    return summary[summary["name"].map(lambda n: metric_task(n, info) is not None)]


def attribute_table(label: str, ev: Evaluation) -> list[Block]:
    """For a task with many losses, each per-loss value (``<stat>/<task>``) per method, in a table."""
    per_task = per_task_summary(label, ev)
    if per_task.empty:
        return []
    wide = per_task.pivot(index="name", columns="method_label", values="mean")
    methods = list(dict.fromkeys(per_task["method_label"]))
    names = list(dict.fromkeys(per_task["name"]))
    rows = [[name, *(fmt(wide.loc[name, m]) for m in methods)] for name in names]
    table = Table(["Value", *methods], rows)
    return [Details(f"{label}: {len(names)} per-task values (means over runs)", [table])]


def attribute_plot(label: str, ev: Evaluation, out_dir: Path, stem: str) -> list[Block]:
    """For a task with many losses, the first per-loss statistic of the table (``error`` of
    ``error/<attr>``) per attribute and method, sorted by the baseline's value."""
    per_task = per_task_summary(label, ev)
    if per_task.empty:
        return []
    stat = str(per_task["name"].iloc[0]).rpartition("/")[0]
    rows = per_task[per_task["name"].str.rpartition("/")[0] == stat]
    values = rows.assign(attribute=rows["name"].str.rpartition("/")[2])
    path = out_dir / f"{stem}_attributes.png"
    image = plots.attribute_points(values, stat, label, path, ev.settings.baseline)
    return [Image(image, f"{label} {stat} per attribute")]


def published_table(label: str, ev: Evaluation) -> list[Block]:
    """The suite's published numbers beside ours: difference, and whether ours covers them."""
    published = [p for p in ev.settings.published if p.task == label]
    if not published:
        return []
    summary = ev.summary[ev.summary["task_label"] == label].set_index(["method_label", "name"])
    rows = []
    for p in published:
        ours = summary.loc[(p.method, p.metric)] if (p.method, p.metric) in summary.index else None
        if ours is None:
            rows.append([p.method, p.metric, f"{p.value:g}", "—", "—", "—", f"{p.paper}, {p.table}, {p.row}"])
            continue
        inside = abs(p.value - ours["mean"]) <= ours["half_width"]
        rows.append([
            p.method, p.metric, f"{p.value:g}", ci_cell(ours["mean"], ours["half_width"], int(ours["count"])),
            fmt(ours["mean"] - p.value), "—" if pd.isna(ours["half_width"]) else ("yes" if inside else "no"),
            f"{p.paper}, table {p.table}, row {p.row}",
        ])
    header = ["Method", "Metric", "Published", "Ours", "Ours − published", "Within our 95 % CI", "Source"]
    return [Heading("Published numbers", 3), Table(header, rows)]


def claim_blocks(ev: Evaluation) -> list[Block]:
    """Each claim of the suite, its verdict per task label, and the comparisons behind it."""
    claims = ev.claims
    if claims.empty:
        return []
    blocks: list[Block] = [
        Heading("Claims"),
        Text("A claim is supported when the method is significantly better than each method it names "
             "(the tests of the tables, Holm-corrected across the claim's comparisons, at 5 %), not "
             "supported when it is significantly worse than one, and inconclusive otherwise."),
    ]
    for (_, label), part in claims.groupby(["claim", "task_label"], sort=False):
        first = part.iloc[0]
        blocks.append(Text(f"{first['text']} ({label}): **{first['verdict']}**"
                           + (f" ({first['note']})" if first["note"] else "")))
        tested = part[part["note"] == ""]
        if len(tested):
            rows = [
                [r.reference, r.test, f"{r.n} / {r.n_reference}", effect_cell(r.effect, r.low, r.high),
                 fmt(r.p), fmt(r.p_holm)]
                for r in tested.itertuples()
            ]
            blocks.append(Table(["Than", "Test", "n / n", "Improvement [95 % CI]", "p", "p (Holm)"], rows))
    return blocks


def front_lines(label: str, ev: Evaluation) -> list[str]:
    fronts = front_counts(ev.values)
    fronts = fronts[fronts["task_label"] == label]
    return [
        f"{r.method_label}: {r.on_front} of {r.runs} runs ended on the Pareto front"
        for r in fronts.itertuples()
    ]


def run_label(run: pd.Series, varying: list[str]) -> str:
    """A run's label within its method: the task parameters that vary across the label's runs, and
    the seed (``start=3, seed 0``)."""
    params = run["spec"]["task"]["params"]
    parts = [f"{key}={params.get(key)}" for key in varying]
    return ", ".join([*parts, f"seed {run['seed']}"])


def labelled_paths(
    runs: pd.DataFrame, metrics: pd.DataFrame, names: tuple[str, str], split: str
) -> dict[str, dict[str, np.ndarray]]:
    """Per method label, run label -> the run's path ``[steps, 2]`` through the two ``names``."""
    params = [r["task"]["params"] for r in runs["spec"]]
    keys = sorted({k for p in params for k in p})
    varying = [k for k in keys if len({repr(p.get(k)) for p in params}) > 1]
    by_id = runs.set_index("run_id")
    rows = metrics[(metrics["split"] == split) & metrics["name"].isin(names)]
    paths: dict[str, dict[str, np.ndarray]] = {}
    for (method, run_id), run in rows.groupby(["method_label", "run_id"], sort=False):
        wide = run.groupby(["step", "name"])["value"].last().unstack().reindex(columns=list(names))
        label = run_label(by_id.loc[run_id], varying)
        paths.setdefault(str(method), {})[label] = wide.to_numpy(dtype=float)
    return paths


def task_landscape(label: str, ev: Evaluation):
    """The label's landscape, if its task has one (built from its first run: only tasks that declare
    a landscape, or old runs whose declarations were not stored, are built)."""
    first = ev.runs[ev.runs["task_label"] == label].iloc[0]
    stored = first["info"]
    if stored is not None and not stored.landscape:
        return None
    try:
        return build_task(first["task"], first["spec"]["task"]["params"]).landscape()
    except Exception as exc:
        logger.warning("%s: no landscape plot, the task cannot be built (%s)", label, exc)
        return None


def landscape_blocks(
    label: str, ev: Evaluation, metrics: pd.DataFrame, out_dir: Path, stem: str
) -> list[Block]:
    """Trajectories over the task's landscape and the final points in loss space with the Pareto front."""
    landscape = task_landscape(label, ev)
    if landscape is None:
        return []
    runs = ev.runs[(ev.runs["task_label"] == label) & (ev.runs["status"] == "ok")]
    rows = metrics[(metrics["task_label"] == label) & (metrics["status"] == "ok")]
    if runs.empty or rows.empty:
        return []
    splits = ev.infos[int(runs.iloc[0]["run_id"])].eval_splits or tuple(dict.fromkeys(rows["split"]))
    paths = labelled_paths(runs, rows, landscape.trajectory, splits[0])
    if not paths:
        return []
    image = plots.landscape_trajectories(landscape, paths, label, out_dir / f"{stem}_landscape.png")
    blocks: list[Block] = [Image(image, f"{label} trajectories")]
    with torch.no_grad():
        front = landscape.losses(landscape.pareto_set.double()).double().numpy()
        finals = {
            method: landscape.losses(
                torch.tensor(np.array([p[-1] for p in by_run.values()]), dtype=torch.float64)
            )
            .double()
            .numpy()
            for method, by_run in paths.items()
        }
    if front.shape[1] == 2:
        image = plots.loss_space(front, finals, ("L1", "L2"), label, out_dir / f"{stem}_loss_space.png")
        blocks.append(Image(image, f"{label} final points in loss space"))
    return blocks


def final_loss_ratios(label: str, ev: Evaluation) -> dict[str, np.ndarray]:
    """For a two-loss task whose runs log ``loss/<task>`` and ``reference/<task>`` (its hypervolume's
    reference point), per method label each ok run's losses at its evaluation point divided by the
    reference, ``[runs, 2]``; empty for any other task."""
    runs = ev.runs[(ev.runs["task_label"] == label) & (ev.runs["status"] == "ok")]
    if runs.empty:
        return {}
    names = ev.infos.get(int(runs.iloc[0]["run_id"]), TaskInfo()).task_names
    if len(names) != 2:
        return {}
    columns = [f"{stat}/{name}" for stat in ("loss", "reference") for name in names]
    values = ev.values[ev.values["run_id"].isin(runs["run_id"]) & ev.values["name"].isin(columns)]
    wide = values.pivot_table(index=["method_label", "run_id"], columns="name", values="value", sort=False)
    wide = wide.reindex(columns=columns).dropna()
    ratios = wide[columns[:2]].to_numpy() / wide[columns[2:]].to_numpy()
    methods = wide.index.get_level_values("method_label")
    return {str(m): ratios[methods == m] for m in dict.fromkeys(methods)}


def loss_box_blocks(label: str, ev: Evaluation, out_dir: Path, stem: str) -> list[Block]:
    """The final points in loss space of a two-loss task without a landscape, against its reference box
    (:func:`final_loss_ratios`)."""
    finals = final_loss_ratios(label, ev)
    if not finals:
        return []
    names = ev.infos[int(ev.runs[ev.runs["task_label"] == label].iloc[0]["run_id"])].task_names
    image = plots.loss_box(finals, (names[0], names[1]), label, out_dir / f"{stem}_loss_space.png")
    return [Image(image, f"{label} final points in loss space")]


def timing_blocks(
    label: str, timings: pd.DataFrame, out_dir: Path, stem: str, baseline: str
) -> list[Block]:
    """Milliseconds per step (mean ± std over ok runs), relative to equal weighting, and total
    training time per method."""
    rows = timings[timings["task_label"] == label]
    steps = step_times(rows)
    if steps.empty:
        return []
    train = step_times(rows, "train_s").set_index("method_label")["mean"]
    base = steps.loc[steps["method_label"] == baseline, "mean"]
    relative = steps["mean"] / float(base.iloc[0]) if len(base) else pd.Series(np.nan, index=steps.index)
    table = Table(
        ["Method", "ms per step", f"× {baseline}", "train s"],
        [
            [
                r.method_label,
                mean_std(r.mean, r.std, r.count),
                fmt(rel),
                fmt(train.get(r.method_label, np.nan)),
            ]
            for r, rel in zip(steps.itertuples(), relative, strict=True)
        ],
        name=f"{stem}_step_time",
    )
    title = f"{label}: step time"
    image = plots.step_time_bars(steps, title, out_dir / f"{stem}_step_time.png", baseline)
    return [Heading("Step time", 3), table, Image(image, f"{label} step time")]


def curve_blocks(label: str, ev: Evaluation, metrics: pd.DataFrame, out_dir: Path, stem: str) -> list[Block]:
    """The selection metric (else the first declared one) over steps on the validation split (else the
    first evaluation split), mean over runs with its 95 % interval, per method."""
    runs = ev.runs[(ev.runs["task_label"] == label) & (ev.runs["status"] == "ok")]
    if runs.empty:
        return []
    info = ev.infos[int(runs.iloc[0]["run_id"])]
    metric = info.selection_metric or next(iter(info.directions), None)
    split = "val" if "val" in info.eval_splits else (info.eval_splits or (None,))[0]
    rows = metrics[
        metrics["run_id"].isin(runs["run_id"]) & (metrics["split"] == split) & (metrics["name"] == metric)
    ]
    if metric is None or rows["step"].nunique() < 2:
        return []
    title = f"{label}: {metric} on {split}"
    image = plots.validation_curves(
        rows, metric, info.directions.get(metric), title, out_dir / f"{stem}_curves.png"
    )
    return [Image(image, f"{label} {metric} over steps")]


def task_names_of(metrics: pd.DataFrame) -> list[str]:
    """The task's loss names in loss order, as the trainer logs them on the ``train_loss`` split."""
    return list(dict.fromkeys(metrics.loc[metrics["split"] == "train_loss", "name"]))


def cosine_matrices(diagnostics: pd.DataFrame, num_tasks: int) -> dict[str, np.ndarray]:
    """Per method label, the ``[T, T]`` pairwise cosines averaged over runs and steps (diagonal 1)."""
    matrices = {}
    pairs = diagnostics[diagnostics["name"].map(lambda n: pair_of(n) is not None)]
    for method, rows in pairs.groupby("method_label", sort=False):
        matrix = np.eye(num_tasks)
        for name, value in rows.groupby("name")["value"].mean().items():
            i, j = pair_of(str(name))
            if max(i, j) < num_tasks:
                matrix[i, j] = matrix[j, i] = value
        matrices[str(method)] = matrix
    return matrices


def diagnostics_blocks(
    label: str, diagnostics: pd.DataFrame, metrics: pd.DataFrame, out_dir: Path, stem: str
) -> list[Block]:
    """The gradient-conflict diagnostics of the label's ok runs: a table of each summary value's mean
    over runs and logged steps, the trajectory of the mean cosine and conflict share, the heatmaps."""
    rows = diagnostics[(diagnostics["task_label"] == label) & (diagnostics["status"] == "ok")]
    if rows.empty:
        return []
    summary = rows[rows["name"].isin(SUMMARY)].pivot_table(
        index="method_label", columns="name", values="value", aggfunc="mean", sort=False
    )
    names = [n for n in SUMMARY if n in summary.columns]
    table = Table(
        ["Method", *names],
        [[str(m), *(fmt(summary.loc[m, n]) for n in names)] for m in summary.index],
        name=f"{stem}_diagnostics",
    )
    text = (
        "Gradient conflict, from the per-task gradients of every logged step (`diagnostics: {every: N}`), "
        "averaged over runs and steps: mean pairwise cosine, share of pairs with cos < 0, gradient magnitude "
        "similarity (Yu et al. 2020), largest / smallest gradient norm, condition number of the Gramian."
    )
    blocks: list[Block] = [Heading("Gradient conflict", 3), Text(text), table]
    image = plots.conflict_trajectories(rows, label, out_dir / f"{stem}_conflict.png")
    blocks.append(Image(image, f"{label} gradient conflict over steps"))
    names = task_names_of(metrics[metrics["task_label"] == label])
    matrices = cosine_matrices(rows, len(names))
    if matrices and len(names) >= 2:
        image = plots.conflict_heatmaps(matrices, names, label, out_dir / f"{stem}_cosines.png")
        blocks.append(Image(image, f"{label} cosine heatmaps"))
    return blocks


def metric_ranges(infos: dict[int, TaskInfo]) -> dict[str, plots.Range]:
    """Metric name -> its declared ``(low, high)``."""
    return {m.name: (m.low, m.high) for info in infos.values() for m in info.metrics}


def task_section(
    label: str,
    ev: Evaluation,
    metrics: pd.DataFrame,
    timings: pd.DataFrame,
    diagnostics: pd.DataFrame,
    out_dir: Path,
    stem: str,
) -> list[Block]:
    """Everything about one task label: table, selection rule, Pareto-front counts, plots, step times,
    gradient-conflict diagnostics."""
    first = ev.runs[ev.runs["task_label"] == label].iloc[0]
    table = results_table(label, ev)
    table.name = f"{stem}_results"
    blocks: list[Block] = [
        Heading(label),
        table,
        Text(selection_text(ev.infos[int(first["run_id"])])),
        *budget_warning(label, ev),
        *published_table(label, ev),
        *attribute_table(label, ev),
        *attribute_plot(label, ev, out_dir, stem),
    ]
    detail = [*significance_table(label, ev), *tuning_table(label, ev)]
    if detail:
        blocks.append(Details(f"{label}: significance tests and tuning", detail))
    summary = ev.summary[ev.summary["task_label"] == label]
    if fronts := front_lines(label, ev):
        blocks.append(Items(fronts))
    if not summary.empty:
        shown = summary[summary["higher_is_better"].notna()]
        path = out_dir / f"{stem}_metrics.png"
        image = plots.metric_points(shown if len(shown) else summary, label, path, metric_ranges(ev.infos))
        blocks.append(Image(image, f"{label} metrics"))
    blocks += curve_blocks(label, ev, metrics, out_dir, stem)
    blocks += landscape_blocks(label, ev, metrics, out_dir, stem) or loss_box_blocks(label, ev, out_dir, stem)
    blocks += timing_blocks(label, timings, out_dir, stem, ev.settings.baseline)
    return blocks + diagnostics_blocks(label, diagnostics, metrics, out_dir, stem)


def failures(runs: pd.DataFrame) -> list[Block]:
    bad = runs[runs["status"] != "ok"]
    if bad.empty:
        return []
    items = [
        f"{r.task_label} / {r.method_label} / seed {r.seed}: {r.status}: {last_line(r.error)}"
        for r in bad.itertuples()
    ]
    return [Heading("Failed and diverged runs"), Items(items)]


def changed_settings(train: dict) -> dict:
    """The training settings of a stored spec that differ from :class:`TrainSpec`'s defaults."""
    defaults = TrainSpec()
    return {k: v for k, v in train.items() if getattr(defaults, k, object()) != v}


def method_text(spec: dict) -> str:
    """A method as configured: ``name(param=value, ...)``, its weighting first (``gradnorm+graddrop``)."""
    params = ", ".join(f"{k}={v!r}" for k, v in spec.get("params", {}).items())
    text = f"{spec['name']}({params})" if params else spec["name"]
    weighting = spec.get("weighting")
    return f"{method_text(weighting)} then {text}" if weighting else text


def setup_blocks(runs: pd.DataFrame, description: str) -> list[Block]:
    """The suite's description, each task's parameters and training settings, each method's
    hyperparameters (only the settings that differ from the built-in defaults)."""
    blocks: list[Block] = [Heading("Setup")]
    if description:
        blocks.append(Text(description.strip()))
    tasks, methods = {}, {}
    for spec in runs["spec"]:
        task = spec["task"]
        params = ", ".join(f"{k}={v!r}" for k, v in task["params"].items())
        settings = ", ".join(f"{k}={v!r}" for k, v in changed_settings(spec["train"]).items())
        tasks.setdefault(task["label"], [task["name"], set(), set()])
        tasks[task["label"]][1].add(params or "–")
        tasks[task["label"]][2].add(settings or "defaults")
        methods.setdefault(spec["method"]["label"], method_text(spec["method"]))
    seeds = sorted({int(s) for s in runs["seed"]})
    blocks.append(
        Text(f"Seeds: {', '.join(map(str, seeds))}. Training settings other than the built-in defaults:")
    )
    blocks.append(
        Table(
            ["Task", "Registered as", "Parameters", "Training settings"],
            [
                [label, name, "; ".join(sorted(p)), "; ".join(sorted(t))]
                for label, (name, p, t) in tasks.items()
            ],
            name="setup_tasks",
        )
    )
    blocks.append(
        Table(
            ["Method", "Configured as"],
            [[label, text] for label, text in methods.items()],
            name="setup_methods",
        )
    )
    return blocks


def report_blocks(
    store: ResultsStore, suite: str, out_dir: Path, settings: ReportSettings | None = None
) -> list[Block]:
    """The whole report; writes the PNGs it refers to into ``out_dir``."""
    runs = store.runs(suite)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    blocks: list[Block] = [
        Heading(f"Gradient Surgery Bench: {suite}", 1),
        Text(f"Generated {when} from the results store `{store.path.name}`."),
    ]
    if runs.empty:
        return [*blocks, Text(f"No runs of suite `{suite}` in the store: nothing to report.")]
    blocks.append(Text(status_line(runs)))
    blocks += setup_blocks(runs, store.suite_description(suite))
    blocks += [Heading("Results"), Text(LEGEND)]
    if not (runs["status"] == "ok").any():
        return [
            *blocks,
            Text("No run of this suite finished: there are no results to table."),
            *failures(runs),
        ]
    metrics, timings, diagnostics = store.metrics(suite), store.timings(suite), store.diagnostics(suite)
    ev = evaluate(runs, metrics, settings=settings)
    blocks.append(Text(f"Baseline of the tests: `{ev.settings.baseline}`."))
    for i, label in enumerate(dict.fromkeys(runs["task_label"])):
        blocks += task_section(label, ev, metrics, timings, diagnostics, out_dir, f"{i:02d}_{slug(label)}")
    return blocks + claim_blocks(ev) + failures(runs)


def write_report(
    store: ResultsStore, suite: str, out_dir: str | Path, settings: ReportSettings | None = None
) -> Path:
    """Write ``index.md``, ``index.html`` and the PNGs of ``suite`` into ``out_dir``; return the HTML path.

    ``settings`` (the suite file's baseline, claims and published numbers) are kept in ``out_dir`` as
    ``settings.json``; without them (``run_all.py report``, which has no suite file) the kept ones are
    used, else the defaults.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kept = out_dir / SETTINGS_FILE
    if settings is None and kept.is_file():
        settings = ReportSettings.from_dict(json.loads(kept.read_text(encoding="utf-8")))
    settings = settings or ReportSettings()
    kept.write_text(json.dumps(settings.to_dict(), indent=1), encoding="utf-8")
    blocks = report_blocks(store, suite, out_dir, settings)
    write_tables(blocks, out_dir / "tables")
    (out_dir / "index.md").write_text(to_markdown(blocks), encoding="utf-8")
    page = out_dir / "index.html"
    page.write_text(to_html(blocks, f"Gradient Surgery Bench: {suite}"), encoding="utf-8")
    logger.info("report of suite %r written to %s", suite, page)
    return page
