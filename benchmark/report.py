"""The report of one suite: ``index.md`` and a self-contained ``index.html`` (plots inlined), plus PNGs.

The content is built once as a list of blocks (headings, text, tables, images, lists) and rendered
twice, to Markdown and to HTML.
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

import pandas as pd

from benchmark import plots, stats
from benchmark.evaluate import (
    Evaluation,
    ReportSettings,
    TaskInfo,
    build_task,
    evaluate,
    front_counts,
    metric_task,
    step_times,
    trajectories,
)
from benchmark.specs import STATUSES
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
    return Table(header, rows, bold)


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


def attribute_table(label: str, ev: Evaluation) -> list[Block]:
    """For a task with many losses, each per-loss value (``<stat>/<task>``) per method, in a table."""
    first = ev.runs[ev.runs["task_label"] == label].iloc[0]
    info = ev.infos.get(int(first["run_id"]), TaskInfo())
    if len(info.task_names) < 4:
        return []
    summary = ev.summary[ev.summary["task_label"] == label]
    per_task = summary[summary["name"].map(lambda n: metric_task(n, info) is not None)]
    if per_task.empty:
        return []
    wide = per_task.pivot(index="name", columns="method_label", values="mean")
    methods = list(dict.fromkeys(per_task["method_label"]))
    names = list(dict.fromkeys(per_task["name"]))
    rows = [[name, *(fmt(wide.loc[name, m]) for m in methods)] for name in names]
    table = Table(["Value", *methods], rows)
    return [Details(f"{label}: {len(names)} per-task values (means over runs)", [table])]


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
        *budget_warning(label, ev),
        *published_table(label, ev),
        *attribute_table(label, ev),
    ]
    detail = [*significance_table(label, ev), *tuning_table(label, ev)]
    if detail:
        blocks.append(Details(f"{label}: significance tests and tuning", detail))
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


def report_blocks(
    store: ResultsStore, suite: str, out_dir: Path, settings: ReportSettings | None = None
) -> list[Block]:
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
    ev = evaluate(runs, metrics, settings=settings)
    blocks.append(Text(f"Baseline of the tests: `{ev.settings.baseline}`."))
    for i, label in enumerate(dict.fromkeys(runs["task_label"])):
        blocks += task_section(label, ev, metrics, timings, out_dir, f"{i:02d}_{slug(label)}")
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
    (out_dir / "index.md").write_text(to_markdown(blocks), encoding="utf-8")
    page = out_dir / "index.html"
    page.write_text(to_html(blocks, f"Gradient Surgery Bench: {suite}"), encoding="utf-8")
    logger.info("report of suite %r written to %s", suite, page)
    return page
