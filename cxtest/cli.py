"""The `cxtest` command.

Exit codes: 0 all passed or degraded, 1 some failed, 2 usage or scenario errors,
3 some could not be tested.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Annotated, Optional, Sequence

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from cxtest import logs
from cxtest.errors import ScenarioError, StoreError
from cxtest.model import Outcome, Project, Result, Scenario, format_duration

app = typer.Typer(
    name="cxtest",
    help="CX assurance harness: synthetic customers for IVRs, phone numbers, chatbots and web touchpoints.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console()

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ERROR = 0, 1, 2, 3
STYLE = {
    Outcome.passed: "green",
    Outcome.degraded: "yellow",
    Outcome.failed: "red",
    Outcome.error: "magenta",
    Outcome.skipped: "dim",
}
MARK = {Outcome.passed: "✓", Outcome.degraded: "~", Outcome.failed: "✗", Outcome.error: "!", Outcome.skipped: "-"}

Paths = Annotated[Optional[list[Path]], typer.Argument(help="Scenario files or folders.", show_default=False)]


def exit_code(results: Sequence[Result]) -> int:
    outcomes = {r.outcome for r in results}
    if Outcome.failed in outcomes:
        return EXIT_FAILED
    if Outcome.error in outcomes:
        return EXIT_ERROR
    return EXIT_OK


def _load(paths: list[Path] | None, tags: list[str] | None = None) -> tuple[Project, list[Scenario]]:
    from cxtest.loader import load_scenarios

    try:
        project, scenarios = load_scenarios(paths or [Path("scenarios")])
    except ScenarioError as exc:
        for problem in exc.problems:
            console.print(escape(str(problem)), style="red", highlight=False, soft_wrap=True)
        files = len({p.file for p in exc.problems})
        console.print(f"{len(exc.problems)} problem(s) in {files} file(s)", style="bold red")
        raise typer.Exit(EXIT_USAGE) from None
    if tags:
        scenarios = [s for s in scenarios if set(tags) & set(s.tags)]
    return project, scenarios


def store_url(project: Project, override: str | None = None) -> str:
    """The project's store URL, with a relative SQLite file placed beside cxtest.yaml."""
    url = override or os.environ.get("CXTEST_STORE") or project.store
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        file = (project.root / url[len(prefix) :]).resolve()
        file.parent.mkdir(parents=True, exist_ok=True)
        return prefix + str(file)
    return url


def _open_store(project: Project, override: str | None):
    from cxtest.store import Store

    try:
        return Store(store_url(project, override))
    except StoreError as exc:
        console.print(f"store: {escape(str(exc))}", style="red")
        raise typer.Exit(EXIT_ERROR) from None


# --------------------------------------------------------------------------- commands


@app.callback()
def _main(
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")] = "warning",
) -> None:
    logs.configure(log_level)


@app.command()
def validate(paths: Paths = None) -> None:
    """Check scenario files and cxtest.yaml; every problem as file:line:col path: message."""
    _, scenarios = _load(paths)
    files = len({s.source.file for s in scenarios})
    console.print(f"ok: {len(scenarios)} scenario(s) in {files} file(s)", style="green")


@app.command()
def run(
    paths: Paths = None,
    tag: Annotated[Optional[list[str]], typer.Option("--tag", "-t", help="Only scenarios with this tag (repeatable).")] = None,
    junit: Annotated[Optional[Path], typer.Option(help="Write a JUnit XML report here.")] = None,
    json_report: Annotated[Optional[Path], typer.Option("--json", help="Write a JSON report here ('-' for stdout).")] = None,
    html: Annotated[Optional[Path], typer.Option(help="Write a self-contained HTML report here.")] = None,
    concurrency: Annotated[Optional[int], typer.Option(min=1, help="Scenarios at once (default from cxtest.yaml).")] = None,
    store: Annotated[Optional[str], typer.Option(help="Results store URL (default from cxtest.yaml).")] = None,
    no_store: Annotated[bool, typer.Option("--no-store", help="Do not save results.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the summary line.")] = False,
) -> None:
    """Run scenarios once (a CI gate): exit 0 passed, 1 failed, 2 bad scenarios, 3 could not test."""
    project, scenarios = _load(paths, tag)
    if not scenarios:
        console.print(f"no scenario has tag(s) {', '.join(tag or [])}", style="red")
        raise typer.Exit(EXIT_USAGE)
    results = execute(
        project,
        scenarios,
        concurrency=concurrency,
        store=None if no_store else _open_store(project, store),
        show_progress=not quiet and json_report != Path("-"),
    )
    write_reports(results, junit=junit, json_report=json_report, html=html)
    if json_report != Path("-"):
        summarize(results, table=not quiet)
    raise typer.Exit(exit_code(results))


@app.command()
def demo(
    broken: Annotated[bool, typer.Option("--break", help="Break the sandbox so one scenario fails with evidence.")] = False,
    paths: Paths = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the reports.")] = Path("out"),
) -> None:
    """Start the sandbox contact centre, run scenarios/demo against it, write reports to out/."""
    from cxtest.sandbox.server import Sandbox

    with Sandbox(broken=broken) as sandbox:
        os.environ["CXTEST_SANDBOX_URL"] = sandbox.url
        console.print(f"sandbox contact centre on {sandbox.url}" + (" (broken on purpose)" if broken else ""))
        project, scenarios = _load(paths or [Path("scenarios/demo")])
        store = _open_store(project, None)
        results = execute(project, scenarios, store=store, show_progress=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_reports(results, junit=out_dir / "junit.xml", json_report=out_dir / "results.json", html=out_dir / "report.html")
    summarize(results, table=True)
    console.print(f"reports: {out_dir}/report.html, {out_dir}/junit.xml, {out_dir}/results.json; results in {store_url(project)}")
    raise typer.Exit(exit_code(results))


@app.command()
def sandbox(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8480,
    broken: Annotated[bool, typer.Option("--break", help="Start broken: /api/status answers 503.")] = False,
) -> None:
    """Serve the demo contact centre on 127.0.0.1 until Ctrl-C."""
    from cxtest.sandbox.server import serve

    console.print(f"sandbox contact centre on http://127.0.0.1:{port}" + (" (broken)" if broken else ""))
    serve("127.0.0.1", port, broken)


@app.command()
def status(
    paths: Paths = None,
    store: Annotated[Optional[str], typer.Option(help="Results store URL (default from cxtest.yaml).")] = None,
) -> None:
    """The latest stored result of every scenario."""
    from cxtest.loader import find_project_file, load_project

    try:
        project = load_project(find_project_file((paths or [Path("scenarios")])[0]))
    except ScenarioError as exc:
        console.print("\n".join(str(p) for p in exc.problems), style="red")
        raise typer.Exit(EXIT_USAGE) from None
    with _open_store(project, store) as opened:
        latest = opened.latest()
    if not latest:
        console.print("no results stored yet")
        return
    table = Table("outcome", "scenario", "when", "duration", "message", box=None)
    for r in latest:
        table.add_row(
            f"[{STYLE[r.outcome]}]{r.outcome.value}[/]",
            escape(r.scenario_id),
            r.started_at.strftime("%Y-%m-%d %H:%M:%S"),
            format_duration(r.duration),
            escape(logs.redact(r.message)[:100]),
        )
    out.print(table)


# --------------------------------------------------------------------------- shared by run and demo


def execute(
    project: Project,
    scenarios: list[Scenario],
    *,
    concurrency: int | None = None,
    store=None,
    show_progress: bool = True,
) -> list[Result]:
    from cxtest.runner import Runner

    async def main() -> list[Result]:
        async with Runner(project, concurrency=concurrency, store=store) as runner:
            if not show_progress:
                return await runner.run_many(scenarios)
            with Progress(
                SpinnerColumn(),
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                transient=True,
            ) as progress:
                task = progress.add_task(f"running {len(scenarios)} scenario(s)", total=len(scenarios))

                def done(result: Result) -> None:
                    progress.advance(task)
                    if result.outcome is not Outcome.passed or len(scenarios) <= 50:
                        progress.console.print(
                            f"[{STYLE[result.outcome]}]{MARK[result.outcome]}[/] {escape(result.scenario_name)}"
                            f" [dim]{format_duration(result.duration)}[/]",
                            highlight=False,
                        )

                return await runner.run_many(scenarios, on_result=done)

    try:
        return asyncio.run(main())
    except StoreError as exc:
        console.print(f"store: {escape(str(exc))}", style="red")
        raise typer.Exit(EXIT_ERROR) from None
    finally:
        if store is not None:
            store.close()


def write_reports(results: list[Result], *, junit: Path | None, json_report: Path | None, html: Path | None) -> None:
    from cxtest.reports import results_to_dict, write_html, write_json, write_junit

    for path, writer in ((junit, write_junit), (html, write_html)):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            writer(results, path)
    if json_report == Path("-"):
        sys.stdout.write(json.dumps(results_to_dict(results), indent=2) + "\n")
    elif json_report is not None:
        json_report.parent.mkdir(parents=True, exist_ok=True)
        write_json(results, json_report)


def summarize(results: list[Result], *, table: bool) -> None:
    if table:
        grid = Table("", "scenario", "channel", "duration", "message", box=None, pad_edge=False)
        for r in sorted(results, key=lambda r: (-r.outcome.rank, r.scenario_id)):
            name = escape(r.scenario_name) + (" [yellow](flaky)[/]" if r.flaky else "")
            grid.add_row(
                f"[{STYLE[r.outcome]}]{MARK[r.outcome]} {r.outcome.value}[/]",
                name,
                r.channel,
                format_duration(r.duration),
                escape(logs.redact(r.message)),
            )
        out.print(grid)
        for r in results:
            if r.outcome in (Outcome.failed, Outcome.error) and r.artifacts:
                out.print(f"  [dim]evidence for {escape(r.scenario_name)}: {escape(str(Path(r.artifacts[0].path).parent))}[/]")
    counts = Counter(r.outcome for r in results)
    total = sum(r.duration for r in results)
    parts = [f"{counts[o]} {o.value}" for o in (Outcome.passed, Outcome.degraded, Outcome.failed, Outcome.error) if counts[o]]
    flaky = sum(r.flaky for r in results)
    if flaky:
        parts.append(f"{flaky} flaky")
    worst = Outcome.worst([r.outcome for r in results]) if results else Outcome.passed
    out.print(f"[bold {STYLE[worst]}]{', '.join(parts)}[/] in {len(results)} scenario(s), {format_duration(total)} of probe time")


def main() -> None:
    app()
