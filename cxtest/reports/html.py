"""One self-contained HTML file: summary cards, results table, step timing chart, failures.

Nothing is fetched from anywhere: CSS is inline, the chart is inline SVG, screenshots and
short recordings are base64 data URIs, text artifacts are inlined (truncated). Every string
comes from results_to_dict (already redacted) or is redacted here, and Jinja2 autoescapes.
"""

from __future__ import annotations

import base64
import datetime as _dt
import io
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import quote

import jinja2

from cxtest.logs import redact
from cxtest.checks import show_measure
from cxtest.model import Artifact, Result, format_duration

from ._common import OUTCOME_ORDER, PROBLEM_OUTCOMES, outcome_of, write_text_atomic
from .json_report import results_to_dict
from .phone import (
    InventorySummary,
    class_bar_svg,
    class_colour,
    pdd_change_text,
    pdd_histogram_svg,
    summarize_inventories,
    trend_text,
)

TEMPLATES = Path(__file__).with_name("templates")
CHART_MAX_ROWS = 50
TEXT_LIMIT = 64 * 1024  # bytes of a text/html artifact or evidence inlined
AUDIO_INLINE_LIMIT = 5 * 1024 * 1024
IMAGE_INLINE_LIMIT = 10 * 1024 * 1024
_TEXT_MARGIN = 4096  # read a little past the limit so a secret cut at the edge is still redacted

COLOURS = {
    "passed": "#16a34a",
    "degraded": "#d97706",
    "failed": "#dc2626",
    "error": "#7c3aed",
    "skipped": "#9ca3af",
}
_TOTAL_COLOUR = "#e5e7eb"

_env: jinja2.Environment | None = None


def _environment() -> jinja2.Environment:
    global _env
    if _env is None:
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(TEMPLATES)),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        env.filters["dur"] = lambda s: format_duration(max(float(s or 0.0), 0.0))
        env.filters["value"] = _display_value
        env.filters["measure"] = lambda value, name: show_measure(name, float(value))
        env.filters["clip"] = lambda s, n=200: s if len(s) <= n else s[: n - 1] + "…"
        _env = env
    return _env


def _display_value(value: Any) -> str:
    """A check's expected/actual as text: strings as they are, anything else as compact JSON."""
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def _clip_text(text: str, limit: int = TEXT_LIMIT) -> tuple[str, bool]:
    if len(text) <= limit:
        return text, False
    return text[:limit], True


# --------------------------------------------------------------------------- artifacts


def _image_mime(head: bytes, path: Path) -> str:
    if head.startswith(b"\x89PNG"):
        return "image/png"
    if head.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp", ".gif": "image/gif"}.get(
        path.suffix.lower(), "image/png"
    )


def _audio_mime(path: Path) -> str:
    return {".mp3": "audio/mpeg", ".ogg": "audio/ogg", ".opus": "audio/ogg", ".flac": "audio/flac"}.get(
        path.suffix.lower(), "audio/wav"
    )


def _href(path: Path, base_dir: Path) -> str:
    """A link to the artifact relative to the report, so the folder can be moved or archived."""
    try:
        rel = os.path.relpath(path.resolve(), base_dir.resolve())
    except ValueError:  # another drive on Windows
        return path.resolve().as_uri()
    return quote(Path(rel).as_posix(), safe="/")


def _artifact_view(artifact: Artifact, base_dir: Path) -> dict[str, Any]:
    path = Path(artifact.path)
    view: dict[str, Any] = {
        "label": redact(artifact.label),
        "kind": artifact.kind,
        "path": redact(str(artifact.path)),
        "href": redact(_href(path, base_dir)),
        "show": "link",
        "note": "",
    }
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise FileNotFoundError(artifact.path)
    except OSError:
        view.update(show="missing", note="file not found when the report was written")
        return view
    view["size"] = size
    try:
        if artifact.kind == "screenshot" and size <= IMAGE_INLINE_LIMIT:
            data = path.read_bytes()
            mime = _image_mime(data[:16], path)
            view.update(show="image", data_uri=f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}")
        elif artifact.kind in ("text", "html"):
            with path.open("rb") as handle:
                raw = handle.read(TEXT_LIMIT + _TEXT_MARGIN)
            text, clipped = _clip_text(redact(raw.decode("utf-8", errors="replace")))
            view.update(show="text", text=text)
            if clipped or size > TEXT_LIMIT + _TEXT_MARGIN:
                view["note"] = f"truncated to 64 KB of {size:,} bytes"
        elif artifact.kind == "recording" and size < AUDIO_INLINE_LIMIT:
            data = path.read_bytes()
            view.update(show="audio", data_uri=f"data:{_audio_mime(path)};base64,{base64.b64encode(data).decode('ascii')}")
        elif artifact.kind in ("recording", "screenshot"):
            view["note"] = f"{size / 1048576:.1f} MB, too large to inline"
    except OSError as exc:
        view.update(show="missing", note=f"could not be read: {redact(exc.strerror or str(exc))}")
    return view


# --------------------------------------------------------------------------- chart


def _chart_rows(views: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    if len(views) <= CHART_MAX_ROWS:
        return views, ""
    slowest = sorted(views, key=lambda v: v["duration"], reverse=True)[:CHART_MAX_ROWS]
    return slowest, f"Showing the {CHART_MAX_ROWS} slowest of {len(views)} scenarios, slowest first."


def _short(name: str, limit: int = 44) -> str:
    """Cut in the middle: similar names usually differ at their end ("... number 12")."""
    if len(name) <= limit:
        return name
    keep = (limit - 1) // 2
    return name[:keep] + "…" + name[-keep:]


_CHART_RC = {"svg.fonttype": "none", "svg.hashsalt": "cxtest", "text.parse_math": False, "font.size": 8}


def _timing_figure(rows: list[dict[str, Any]]) -> Any:
    """One row per scenario, its steps as consecutive bars coloured by outcome, over a grey whole-run bar."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, thread-safe
    from matplotlib.patches import Patch

    n = len(rows)
    fig = Figure(figsize=(10, max(1.6, 0.26 * n + 1.1)), layout="constrained")
    ax = fig.add_subplot()
    ys = list(range(n))
    ax.barh(ys, [r["duration"] for r in rows], height=0.8, color=_TOTAL_COLOUR, linewidth=0)
    sy, sl, sw, sc = [], [], [], []
    for y, row in enumerate(rows):
        for step in row["steps"]:
            sy.append(y)
            sl.append(step["started"])
            sw.append(step["duration"])
            sc.append(COLOURS[step["outcome"]])
    if sy:  # one barh call for every step of every row: plotting stays O(1) calls
        ax.barh(sy, sw, left=sl, height=0.56, color=sc, edgecolor="white", linewidth=0.6)
    labels = [_short(r["scenario_name"]) for r in rows]
    ax.set_yticks(ys, labels)
    ax.set_ylim(n - 0.5, -0.5)  # first scenario on top
    ax.set_xlim(left=0)
    ax.set_xlabel("seconds since the scenario started")
    ax.grid(axis="x", color="#e5e7eb", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    present = {s["outcome"] for r in rows for s in r["steps"]}
    handles = [Patch(color=COLOURS[o.value], label=o.value) for o in OUTCOME_ORDER if o.value in present]
    handles.append(Patch(color=_TOTAL_COLOUR, label="whole run"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False, fontsize=7)
    return fig


def _timing_svg(rows: list[dict[str, Any]]) -> str:
    """The timing chart as inline SVG (text kept as <text>, no XML declaration, no metadata)."""
    if not rows:
        return ""
    import matplotlib

    with matplotlib.rc_context(_CHART_RC):
        fig = _timing_figure(rows)
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={k: None for k in ("Creator", "Date", "Format", "Type")})
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]


def _call_timeline_svg(artifacts: Sequence[Artifact]) -> str:
    """An IVR call on the recording's time axis: each prompt heard (green matched, red not) and each input we sent."""
    found = next((a for a in artifacts if a.label == "call.json"), None)
    if found is None:
        return ""
    try:
        timeline = json.loads(Path(found.path).read_text())
    except (OSError, ValueError):
        return ""
    prompts, inputs = timeline.get("prompts", []), timeline.get("inputs", [])
    if not prompts and not inputs:
        return ""
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context(_CHART_RC):
        fig = Figure(figsize=(10, 1.9), layout="constrained")
        ax = fig.add_subplot()
        for p in prompts:
            colour = COLOURS["passed"] if p.get("matched") else COLOURS["failed"]
            ax.barh(1, p["duration"], left=p["at"], height=0.5, color=colour, edgecolor="white", linewidth=0.6)
            ax.text(p["at"], 1.38, _short(f"{p['step']}: {p['heard']}", 60), fontsize=6.5, va="bottom")
        for i in inputs:
            ax.barh(0, max(i["until"] - i["at"], 0.05), left=i["at"], height=0.5, color="#f59e0b", linewidth=0)
            ax.text(i["at"], -0.38, _short(i["what"], 30), fontsize=6.5, va="top")
        ax.set_yticks([0, 1], ["we sent", "IVR said"])
        ax.set_ylim(-0.9, 1.9)
        ax.set_xlim(left=0)
        ax.set_xlabel(f"seconds into the recording (call.wav){'; ' + timeline['end_reason'] if timeline.get('end_reason') else ''}")
        ax.grid(axis="x", color="#e5e7eb", linewidth=0.6)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={k: None for k in ("Creator", "Date", "Format", "Type")})
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]


# --------------------------------------------------------------------------- page


def _span(results: Sequence[Result]) -> tuple[str, str]:
    try:
        first = min(r.started_at for r in results)
        last = max(r.started_at + _dt.timedelta(seconds=max(r.duration, 0.0)) for r in results)
    except (TypeError, ValueError):
        return "", ""
    return first.isoformat(sep=" ", timespec="seconds"), format_duration((last - first).total_seconds())


def render_html(
    results: Sequence[Result],
    title: str = "cxtest report",
    base_dir: Path | None = None,
    previous: Mapping[str, Result] | None = None,
) -> str:
    """The report as a string; artifact links are made relative to `base_dir` (default: cwd).

    `previous` maps a phone number's scenario_id to its newest result before this run, for the trend.
    """
    results = list(results)
    base_dir = Path(base_dir) if base_dir is not None else Path.cwd()
    data = results_to_dict(results)
    views: list[dict[str, Any]] = data["results"]
    problems: list[dict[str, Any]] = []
    for number, (result, view) in enumerate(zip(results, views), start=1):
        view["number"] = number
        view["anchor"] = f"r{number}"
        if outcome_of(result.outcome) in PROBLEM_OUTCOMES:
            view["problem"] = True
            view["artifact_views"] = [_artifact_view(a, base_dir) for a in result.artifacts]
            view["call_timeline_svg"] = _call_timeline_svg(result.artifacts)
            for step in view["steps"]:
                step["evidence_views"] = []
                for name, text in step["evidence"].items():
                    clipped, cut = _clip_text(text)
                    step["evidence_views"].append({"name": name, "text": clipped, "truncated": cut})
            problems.append(view)
        else:
            view["problem"] = False

    chart_rows, chart_note = _chart_rows(views)
    summary = data["summary"]
    started, wall = _span(results)
    cards = [
        {"label": o.value, "value": summary[o.value], "colour": COLOURS[o.value]} for o in OUTCOME_ORDER
        if o.value != "skipped" or summary[o.value]
    ]
    cards.append({"label": "flaky", "value": summary["flaky"], "colour": "#0891b2"})
    return _environment().get_template("report.html.j2").render(
        title=redact(title),
        summary=summary,
        cards=cards,
        started=started,
        wall=wall,
        generated_at=data["generated_at"],
        results=views,
        problems=problems,
        chart_svg=_timing_svg(chart_rows),
        chart_note=chart_note,
        colours=COLOURS,
        inventories=[_inventory_view(s) for s in summarize_inventories(results, previous)],
    )


def write_html(
    results: Sequence[Result], path: Path, title: str = "cxtest report", previous: Mapping[str, Result] | None = None
) -> None:
    path = Path(path)
    write_text_atomic(path, render_html(results, title, base_dir=path.parent, previous=previous))


# --------------------------------------------------------------------------- phone inventories

PHONE_TABLE_MAX_ROWS = 200


def _optional(value: float | None, show) -> str:
    return "" if value is None else show(value)


def _inventory_view(summary: InventorySummary) -> dict[str, Any]:
    """An inventory's section: cards, class chips, the two plots, the trend and the worst numbers first."""
    rows = []
    for row in summary.numbers[:PHONE_TABLE_MAX_ROWS]:
        rows.append({
            "outcome": row.outcome.value,
            "number": redact(row.number),
            "name": redact(row.name),
            "call_class": row.call_class,
            "expected_class": row.expected_class or "",
            "class_colour": class_colour(row.call_class),
            "pdd": _optional(row.pdd, format_duration),
            "time_to_answer": _optional(row.time_to_answer, format_duration),
            "similarity": _optional(row.similarity, lambda v: f"{v:.2f}"),
            "quality": _optional(row.quality, lambda v: f"{v:.2f}"),
            "flaky": row.flaky,
            "message": redact(row.message),
            "trend": row.trend,
            "class_change": row.class_change,
            "pdd_change": pdd_change_text(row),
        })
    pdd = summary.pdd
    return {
        "inventory": redact(summary.inventory),
        "name": redact(summary.name),
        "total": summary.total,
        "outcomes": summary.outcomes,
        "classes": [{"name": n, "count": c, "colour": class_colour(n)} for n, c in summary.classes.items()],
        "pdd": None if pdd is None else {
            "count": pdd.count,
            **{k: format_duration(getattr(pdd, k)) for k in ("min", "p50", "p90", "p95", "max")},
        },
        "pdd_svg": pdd_histogram_svg(summary),
        "class_svg": class_bar_svg(summary),
        "trend": trend_text(summary.trend),
        "rows": rows,
        "named": any(row["name"] for row in rows),
        "rows_note": (
            f"Showing the {PHONE_TABLE_MAX_ROWS} worst of {summary.total} numbers."
            if summary.total > PHONE_TABLE_MAX_ROWS else ""
        ),
    }
