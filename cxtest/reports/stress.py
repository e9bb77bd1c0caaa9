"""The HTML report of a stress exercise: the verdicts, plots over time, totals, errors and evidence.

One self-contained file like the run report (inline CSS, plots as inline SVG, nothing
fetched), except that the evidence is linked, not inlined: an exercise can keep hundreds
of recordings, so the report links to them relative to itself and the artifacts folder
travels beside it. Every figure comes from the exercise's merged Metrics (percentiles
from merged histograms, never averaged); the per-second plots from its snapshots.
"""

from __future__ import annotations

import io
import math
import os
import re
import shlex
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from cxtest.logs import redact
from cxtest.model import Outcome, format_duration
from cxtest.runner import _slug
from cxtest.store import redact_url
from cxtest.stress import Snapshot, StressOutcome
from cxtest.stress.live import timed_metrics
from cxtest.stress.stats import OUTCOMES, Metrics, is_seconds, percentiles_of

from ._common import write_text_atomic
from .html import _CHART_RC, COLOURS, _environment, _href, _short

PERCENTILES = (50.0, 95.0, 99.0)
PERCENTILE_COLOURS = {50.0: "#2563eb", 95.0: "#d97706", 99.0: "#dc2626"}
MAX_POINTS = 720  # longer exercises are plotted from merged groups of seconds: the SVG stays small
MAX_STEP_PANELS = 12
REASONS_SHOWN = 100
FAILED_SHOWN = 50
PASSED_SHOWN = 20
FILES_SHOWN = 20  # per iteration
UNKNOWN = "unknown"
_IMAGE = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif"})
_AUDIO = frozenset({".wav", ".mp3", ".ogg", ".opus", ".flac"})
_ITERATION = re.compile(r"w(\d+)-(\d+)")
_BAD = (Outcome.failed.value, Outcome.error.value)


# --------------------------------------------------------------------------- figures over time


@dataclass
class Series:
    """The exercise second by second (or group of seconds by group), as arrays ready to plot."""

    t: np.ndarray
    users: np.ndarray
    started: np.ndarray  # per second
    finished: dict[str, np.ndarray]  # outcome -> iterations finished per second
    dropped: np.ndarray  # per second
    bad_share: np.ndarray  # failed + error share of what finished, NaN when nothing finished
    percentiles: dict[str, np.ndarray]  # metric -> (points, len(PERCENTILES)) in natural units, NaN without data
    seconds_per_point: int = 1


@dataclass
class _Point:
    t: float
    users: int
    started: int
    dropped: int
    runs: Counter[str]
    counts: dict[str, np.ndarray]  # metric -> histogram counts (see percentiles_of)


def _points(snapshots: Sequence[Snapshot], size: int, names: Sequence[str]) -> Iterator[_Point]:
    """Consecutive snapshots `size` at a time: counters added, the histograms of `names` added bucket by bucket (exact).

    Each snapshot is decoded once and dropped: a decoded Metrics holds megabytes of counts.
    """
    for start in range(0, len(snapshots), size):
        part = snapshots[start:start + size]
        runs: Counter[str] = Counter()
        dropped = 0
        counts: dict[str, np.ndarray] = {}
        for snapshot in part:
            metrics = snapshot.metrics
            runs.update(metrics.runs)
            dropped += metrics.dropped
            histograms = metrics.histograms
            for name in names:
                histogram = histograms.get(name)
                if histogram is not None and histogram.total_count:
                    these = np.ctypeslib.as_array(histogram.counts)
                    counts[name] = these if name not in counts else counts[name] + these
        yield _Point(part[-1].t, max(s.users for s in part), sum(s.started for s in part), dropped, runs, counts)


def time_series(snapshots: Sequence[Snapshot], metrics: Sequence[str]) -> Series:
    """Per-point users, rates, outcome shares and percentiles of `metrics`, from the snapshots."""
    size = max(1, math.ceil(len(snapshots) / MAX_POINTS))
    n = math.ceil(len(snapshots) / size)
    t, users, started, dropped = (np.zeros(n) for _ in range(4))
    finished = {o: np.zeros(n) for o in OUTCOMES}
    values = {name: np.full((n, len(PERCENTILES)), np.nan) for name in metrics}
    for i, point in enumerate(_points(snapshots, size, metrics)):
        t[i], users[i], started[i], dropped[i] = point.t, point.users, point.started, point.dropped
        for outcome in OUTCOMES:
            finished[outcome][i] = point.runs[outcome]
        for name, counts in point.counts.items():
            values[name][i] = percentiles_of(counts, name, PERCENTILES)
    spans = np.diff(t, prepend=t[0] - size) if n else t
    spans = np.maximum(spans, 0.05)  # a late collect must not turn one second's runs into a spike
    total = sum(finished.values())
    bad = finished["failed"] + finished["error"]
    with np.errstate(invalid="ignore", divide="ignore"):
        bad_share = np.where(total > 0, bad / np.where(total > 0, total, 1), np.nan)
    return Series(
        t=t,
        users=users,
        started=started / spans,
        finished={o: counts / spans for o, counts in finished.items()},
        dropped=dropped / spans,
        bad_share=bad_share,
        percentiles=values,
        seconds_per_point=size,
    )


def _legend(ax: Any) -> None:
    """Beside the panel, not over the lines."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=7)


def _tidy(ax: Any, ylabel: str, seconds: bool = False) -> None:
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(4))  # fewer ticks: each is several artists to lay out and draw
    if seconds:  # "250ms", "1.5s": the units the tables and verdicts use
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: format_duration(max(value, 0.0))))
    ax.set_ylabel(ylabel)
    ax.grid(color="#e5e7eb", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.set_ylim(bottom=0)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _percentile_lines(ax: Any, t: np.ndarray, rows: np.ndarray) -> None:
    for column, p in enumerate(PERCENTILES):
        ax.plot(t, rows[:, column], color=PERCENTILE_COLOURS[p], linewidth=1.0, label=f"p{p:g}")


def _margins(fig: Any, top: float, bottom: float, right: float, hspace: float, wspace: float = 0.2) -> None:
    """Margins in inches at the top and bottom (so they stay the same whatever the figure's height)."""
    height = fig.get_figheight()
    fig.subplots_adjust(left=0.075, right=right, top=1 - top / height, bottom=bottom / height, hspace=hspace, wspace=wspace)


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={k: None for k in ("Creator", "Date", "Format", "Type")})
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]


def overview_svg(series: Series, plan: Any) -> str:
    """Four panels on one time axis: users, iterations a second by outcome, failed share, run duration."""
    if not len(series.t):
        return ""
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    t = series.t
    with matplotlib.rc_context(_CHART_RC):
        fig = Figure(figsize=(10, 8.4))
        # Fixed margins, not constrained layout: laying out by measuring text doubled the render time.
        _margins(fig, top=0.15, bottom=0.5, right=0.87, hspace=0.12)
        users, rates, shares, durations = fig.subplots(4, 1, sharex=True)
        users.plot(t, series.users, color="#374151", linewidth=1.2, label="running")
        if not plan.arrival:
            planned = [plan.users_at(x) if x >= 0 else 0.0 for x in t]
            users.plot(t, planned, color="#9ca3af", linewidth=1.0, linestyle="--", label="planned")
        _legend(users)
        _tidy(users, "users")

        order = [o for o in OUTCOMES if series.finished[o].any()]
        if order:
            rates.stackplot(t, *(series.finished[o] for o in order), colors=[COLOURS[o] for o in order], labels=order, linewidth=0)
        rates.plot(t, series.started, color="#111827", linewidth=0.9, label="started")
        if plan.arrival:
            rates.plot(t, [plan.rate_at(x) if x >= 0 else 0.0 for x in t], color="#9ca3af", linewidth=1.0, linestyle="--", label="planned")
        if series.dropped.any():
            rates.plot(t, series.dropped, color="#be185d", linewidth=1.0, label="dropped")
        _legend(rates)
        _tidy(rates, "iterations / s")

        shares.plot(t, series.bad_share * 100, color=COLOURS["failed"], linewidth=1.0, label="failed + error")
        _legend(shares)
        _tidy(shares, "% of finished")
        shares.set_ylim(0, 105)  # room above 100 so an all-failed line is not hidden by the frame

        _percentile_lines(durations, t, series.percentiles["duration"])
        _legend(durations)
        _tidy(durations, "iteration duration", seconds=True)
        durations.set_xlabel(_time_label(series))
        return _svg(fig)


def steps_svg(series: Series, steps: Sequence[str]) -> str:
    """One small panel per step (two columns), each with p50/p95/p99 of that step's duration."""
    if not steps or not len(series.t):
        return ""
    import matplotlib
    from matplotlib.figure import Figure

    columns = 1 if len(steps) == 1 else 2
    rows = math.ceil(len(steps) / columns)
    with matplotlib.rc_context(_CHART_RC):
        fig = Figure(figsize=(10, 0.8 + 1.8 * rows))
        _margins(fig, top=0.5, bottom=0.5, right=0.98, hspace=0.45, wspace=0.18)
        axes = np.atleast_1d(fig.subplots(rows, columns, sharex=True, squeeze=False)).ravel()
        for ax, name in zip(axes, steps):
            _percentile_lines(ax, series.t, series.percentiles[name])
            ax.set_title(_short(step_name(name), 70), fontsize=8, loc="left")
            _tidy(ax, "", seconds=True)
        for ax in axes[len(steps):]:
            ax.set_visible(False)
        for ax in axes[max(0, len(steps) - columns):len(steps)]:  # the lowest panel of each column, above a hidden one too
            ax.tick_params(labelbottom=True)
            ax.set_xlabel(_time_label(series))
        fig.legend(*axes[0].get_legend_handles_labels(), loc="upper center", ncols=len(PERCENTILES), frameon=False, fontsize=7)
        return _svg(fig)


def _time_label(series: Series) -> str:
    label = "seconds since the load started"
    if series.seconds_per_point > 1:
        label += f" (each point merges {series.seconds_per_point} s)"
    return label


def step_name(metric: str) -> str:
    """`step:hear 'Welcome'.duration` -> `hear 'Welcome'`."""
    return metric[len("step:"):].rpartition(".")[0] if metric.startswith("step:") else metric


# --------------------------------------------------------------------------- totals and errors


def show_value(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    return format_duration(max(value, 0.0)) if is_seconds(metric) else f"{value:g}"


def totals_rows(totals: Metrics, names: Sequence[str]) -> list[dict[str, Any]]:
    """One row per metric: p50/p95/p99, min, max, avg, count (one pass); shown in the metric's units."""
    rows = []
    for name in names:
        found = totals.summary(name, PERCENTILES) or {}
        rows.append({
            "metric": name,
            "values": [show_value(name, found.get(key)) for key in (*(f"p{p:g}" for p in PERCENTILES), "min", "max", "avg")],
            "count": f"{found.get('count', 0):.0f}",
        })
    return rows


def error_rows(totals: Metrics) -> list[dict[str, Any]]:
    bad = sum(totals.runs[o] for o in _BAD) or 1
    return [
        {"reason": redact(reason), "count": count, "share": f"{count / bad:.1%}", "example": redact(totals.examples.get(reason, ""))}
        for reason, count in totals.errors.most_common(REASONS_SHOWN)
    ]


# --------------------------------------------------------------------------- evidence


@dataclass
class Iteration:
    """One iteration that kept evidence: its folder, outcome and message (when known)."""

    name: str
    folder: Path
    outcome: str = UNKNOWN
    message: str = ""
    files: list[dict[str, Any]] = field(default_factory=list)


def _iteration_key(name: str) -> tuple[Any, ...]:
    match = _ITERATION.fullmatch(name)
    return (0, int(match.group(1)), int(match.group(2))) if match else (1, name)


def iteration_folders(scenario_dir: Path) -> list[Path]:
    """The iteration folders below the scenario's folder, in worker then start order."""
    try:
        entries = [Path(e.path) for e in os.scandir(scenario_dir) if e.is_dir()]
    except OSError:
        return []
    return sorted(entries, key=lambda p: _iteration_key(p.name))


def _iteration_of(artifact_path: str, stress_id: str, slug: str) -> str | None:
    """The iteration a stored artifact path belongs to: the part after <stress id>/<scenario slug>/."""
    parts = Path(artifact_path).parts
    for i in range(len(parts) - 2):
        if parts[i] == stress_id and parts[i + 1] == slug:
            return parts[i + 2]
    return None


def stored_outcomes(store_url: str, stress_id: str, slug: str) -> tuple[dict[str, tuple[str, str]], str]:
    """iteration -> (outcome, message) for every stored failed, errored or degraded iteration that kept files; a problem, if any.

    Only three columns of the exercise's non-passing rows, oldest ones included: the
    iterations that kept evidence are the first failures (a budget), which a newest-first
    Store.results(limit=...) would miss once failures number in the thousands.
    """
    from sqlalchemy import select
    from sqlalchemy.exc import SQLAlchemyError

    from cxtest.errors import StoreError
    from cxtest.store import Store, results_table as table

    wanted = [o.value for o in (Outcome.failed, Outcome.error, Outcome.degraded)]
    query = select(table.c.outcome, table.c.message, table.c.artifacts).where(
        table.c.run_id == stress_id, table.c.outcome.in_(wanted)
    )
    found: dict[str, tuple[str, str]] = {}
    try:
        with Store(store_url) as store, store.engine.connect() as conn:
            for outcome, message, artifacts in conn.execute(query):
                for artifact in artifacts or ():
                    iteration = _iteration_of(str(artifact.get("path", "")), stress_id, slug)
                    if iteration is not None:
                        found.setdefault(iteration, (outcome, message))
                        break
    except (StoreError, SQLAlchemyError) as exc:
        return {}, f"the store could not be read, so outcomes are known only from the files: {redact(redact_url(str(exc)))}"
    return found, ""


def _outcome_from_files(folder: Path) -> str:
    """Without the store: a crash trace means error, a failure screenshot means failed; otherwise unknown."""
    if (folder / "crash.txt").is_file():
        return Outcome.error.value
    if (folder / "failure.png").is_file():
        return Outcome.failed.value
    return UNKNOWN


def _file_views(folder: Path, base_dir: Path) -> list[dict[str, Any]]:
    try:
        paths = sorted(p for p in folder.rglob("*") if p.is_file())
    except OSError:
        return []
    views = []
    for path in paths[:FILES_SHOWN]:
        suffix = path.suffix.lower()
        show = "image" if suffix in _IMAGE else "audio" if suffix in _AUDIO else "link"
        views.append({"label": redact(path.relative_to(folder).as_posix()), "href": redact(_href(path, base_dir)), "show": show})
    if len(paths) > FILES_SHOWN:
        views.append({"label": f"{len(paths) - FILES_SHOWN} more files", "href": redact(_href(folder, base_dir)), "show": "link"})
    return views


def evidence_view(outcome: StressOutcome, base_dir: Path) -> dict[str, Any]:
    """The kept evidence: failed and errored iterations first (capped), then a sample of the others."""
    job = outcome.job
    slug = _slug(job.scenario_id)
    scenario_dir = Path(job.artifacts_root) / job.stress_id / slug
    folders = iteration_folders(scenario_dir)
    view: dict[str, Any] = {
        "folder": redact(str(scenario_dir)), "href": redact(_href(scenario_dir, base_dir)), "total": len(folders),
        "bad": [], "other": [], "bad_more": 0, "other_more": 0, "note": "",
    }
    if not folders:
        return view
    known: dict[str, tuple[str, str]] = {}
    if job.store_url:
        known, view["note"] = stored_outcomes(job.store_url, job.stress_id, slug)
    else:
        view["note"] = "No store was used: outcomes are known only from crash traces and failure screenshots."
    from_store = bool(job.store_url) and not view["note"]
    bad, other = [], []
    for folder in folders:
        if folder.name in known:
            outcome_value, message = known[folder.name]
        elif from_store:  # not among the stored failures: it passed
            outcome_value, message = Outcome.passed.value, ""
        else:
            outcome_value, message = _outcome_from_files(folder), ""
        (bad if outcome_value in _BAD else other).append(Iteration(folder.name, folder, outcome_value, redact(message)))
    for listed, shown, key in ((bad, FAILED_SHOWN, "bad"), (other, PASSED_SHOWN, "other")):
        for iteration in listed[:shown]:
            iteration.files = _file_views(iteration.folder, base_dir)
        view[key] = [
            {"name": i.name, "outcome": i.outcome, "message": i.message, "files": i.files, "href": redact(_href(i.folder, base_dir))}
            for i in listed[:shown]
        ]
        view[key + "_more"] = max(0, len(listed) - shown)
    return view


def list_failed_command(stress_id: str, store_url: str | None) -> str:
    """The command that lists the exercise's failed runs from the store, with their evidence folders."""
    if not store_url:
        return ""
    return f"cxtest status --store {shlex.quote(redact_url(store_url))} --run {shlex.quote(stress_id)} --outcome failed"


# --------------------------------------------------------------------------- page


def _plan_view(plan: Any) -> dict[str, Any]:
    stages = [f"{format_duration(s.duration)} → {s.target:g}" for s in plan.stages]
    think = "" if plan.think is None else " – ".join(format_duration(v) for v in sorted(set(plan.think)))
    return {
        "describe": plan.describe(),
        "stages": " · ".join(stages),
        "unit": "iterations/s" if plan.arrival else "users",
        "peak": f"{plan.peak_rate:g} iterations/s, at most {plan.peak_users} at once" if plan.arrival else f"{plan.peak_users} users",
        "length": format_duration(plan.length),
        "think": think,
        "graceful_stop": format_duration(plan.graceful_stop),
        "max_duration": format_duration(plan.max_duration) if plan.max_duration is not None else "",
        "thresholds": list(plan.thresholds),
    }


def headline(outcome: StressOutcome) -> str:
    """The verdict in a few words, agreeing with the exit code."""
    failed = sum(not v.ok for v in outcome.verdicts)
    if outcome.exit_code == 3:
        return "Nothing could be tested"
    if failed:
        return f"{failed} of {len(outcome.verdicts)} thresholds failed"
    if outcome.aborted:
        return "Aborted"
    if not outcome.verdicts:
        return "No thresholds were set"
    return "Every threshold held"


def _cards(outcome: StressOutcome, peak_users: int) -> list[dict[str, Any]]:
    totals = outcome.totals
    finished = outcome.finished_runs
    checks = totals.rate("checks")
    cards = [{"label": "iterations", "value": finished, "colour": "#374151"}]
    cards += [{"label": o, "value": totals.runs[o], "colour": COLOURS[o]} for o in OUTCOMES if o != "degraded" or totals.runs[o]]
    cards += [
        {"label": "dropped", "value": totals.dropped, "colour": "#be185d"},
        {"label": "checks passed", "value": "-" if checks is None else f"{checks:.2%}", "colour": "#374151"},
        {"label": "iterations/s", "value": f"{finished / outcome.duration:.1f}" if outcome.duration > 0 else "-", "colour": "#374151"},
        {"label": "peak users", "value": peak_users, "colour": "#374151"},
        {"label": "duration", "value": format_duration(outcome.duration), "colour": "#374151"},
    ]
    return cards


def render_stress_html(outcome: StressOutcome, base_dir: Path | None = None) -> str:
    """The report as a string; evidence links are relative to `base_dir` (default: cwd)."""
    base_dir = Path(base_dir) if base_dir is not None else Path.cwd()
    job, totals = outcome.job, outcome.totals
    recorded = totals.names()
    names = [n for n in timed_metrics(totals) if n in recorded]  # "duration" is listed even before any iteration ends
    steps = [n for n in names if n.startswith("step:")]
    series = time_series(outcome.snapshots, ["duration", *steps[:MAX_STEP_PANELS]])
    shown = set(names)
    rest = [n for n in recorded if n not in shown]
    return _environment().get_template("stress.html.j2").render(
        title=redact(f"Stress: {job.scenario_id}"),
        stress_id=job.stress_id,
        scenario_id=redact(job.scenario_id),
        scenario_file=redact(job.scenario_file),
        started=outcome.started_at.isoformat(sep=" ", timespec="seconds"),
        store=redact(redact_url(job.store_url)) if job.store_url else "",
        list_failed=redact(list_failed_command(job.stress_id, job.store_url)),
        plan=_plan_view(job.plan),
        verdicts=[{"ok": v.ok, "text": redact(v.text)} for v in outcome.verdicts],
        headline=headline(outcome),
        passed=outcome.exit_code == 0,
        exit_code=outcome.exit_code,
        interrupted=outcome.interrupted,
        aborted=redact(outcome.aborted or ""),
        worker_errors=[redact(e) for e in outcome.errors],
        cards=_cards(outcome, int(series.users.max()) if len(series.users) else 0),
        overview_svg=overview_svg(series, job.plan),
        steps_svg=steps_svg(series, steps[:MAX_STEP_PANELS]),
        steps_note=f"Showing the first {MAX_STEP_PANELS} of {len(steps)} steps; the table below has them all." if len(steps) > MAX_STEP_PANELS else "",
        percentiles=[f"p{p:g}" for p in PERCENTILES],
        totals=totals_rows(totals, names),
        other_totals=totals_rows(totals, rest),
        errors=error_rows(totals),
        errors_more=max(0, len(totals.errors) - REASONS_SHOWN),
        evidence=evidence_view(outcome, base_dir),
        colours={**COLOURS, UNKNOWN: "#6b7280"},
    )


def write_stress_html(outcome: StressOutcome, path: Path) -> None:
    path = Path(path)
    write_text_atomic(path, render_stress_html(outcome, base_dir=path.parent))
