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
from typing import TYPE_CHECKING, Annotated, Any, Optional, Sequence

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from cxtest import logs
from cxtest.errors import CxtestError, ScenarioError, StoreError
from cxtest.model import Outcome, Project, Result, Scenario, format_duration

if TYPE_CHECKING:
    from cxtest.reports.phone import InventorySummary

DEMO_NICENESS = 5  # how far `cxtest demo` lowers its own CPU priority below the sandbox IVR's

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
    results, previous = execute(
        project,
        scenarios,
        concurrency=concurrency,
        store=None if no_store else _open_store(project, store),
        show_progress=not quiet and json_report != Path("-"),
    )
    write_reports(results, junit=junit, json_report=json_report, html=html, previous=previous)
    if json_report != Path("-"):
        summarize(results, table=not quiet, previous=previous)
    raise typer.Exit(exit_code(results))


@app.command()
def baseline(
    paths: Paths = None,
    tag: Annotated[Optional[list[str]], typer.Option("--tag", "-t", help="Only scenarios with this tag (repeatable).")] = None,
) -> None:
    """Run the IVR and phone scenarios and record each prompt or greeting heard (words and an audio fingerprint) as its baseline.

    Baselines go to baselines/<scenario>.json beside each scenario file (for a phone
    inventory, one entry per number); commit them. Later runs report an IVR prompt that no
    longer sounds or reads like its baseline as degraded, with the word diff, and fail a
    number whose greeting (with no expected words) no longer sounds like its baseline.
    Only prompts that matched their expected words are recorded.
    """
    from probes.ivr import baseline_path

    project, scenarios = _load(paths, tag)
    scenarios = [s for s in scenarios if s.channel in ("ivr", "phone")]
    if not scenarios:
        console.print("no IVR or phone scenario to record a baseline from", style="red")
        raise typer.Exit(EXIT_USAGE)
    results, _ = execute(project, scenarios, store=None)
    files: dict[Path, dict[str, Any]] = {}
    table = Table("scenario", "prompts recorded", "baseline file")
    for scenario, result in zip(scenarios, results):
        timeline = next((a for a in result.artifacts if a.label == "call.json"), None)
        heard = json.loads(Path(timeline.path).read_text())["prompts"] if timeline else []
        prompts = {
            str(p["step"]): {"heard": p["heard"], "fingerprint": p["fingerprint"], "duration": p["duration"]}
            for p in heard
            if p["matched"]
        }
        if not prompts:
            table.add_row(escape(scenario.name), f"[red]none[/] ({result.outcome.value})", "")
            continue
        path = baseline_path(scenario.source.file)
        if scenario.channel == "phone":  # one file per inventory, an entry per number
            files.setdefault(path, {})[scenario.id.rpartition("/")[2]] = prompts
        else:
            files[path] = prompts
        table.add_row(escape(scenario.name), str(len(prompts)), str(path))
    for path, content in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content, indent=2) + "\n")
    out.print(table)
    raise typer.Exit(exit_code(results))


@app.command()
def demo(
    broken: Annotated[bool, typer.Option("--break", help="Break the sandbox so one scenario fails with evidence.")] = False,
    paths: Paths = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the reports.")] = Path("out"),
) -> None:
    """Start the sandbox contact centre, run scenarios/demo against it, write reports to out/."""
    from cxtest.sandbox.ivr import IvrError, IvrProcess
    from cxtest.sandbox.server import Sandbox

    with Sandbox(broken=broken) as sandbox:
        os.environ["CXTEST_SANDBOX_URL"] = sandbox.url
        console.print(f"sandbox contact centre on {sandbox.url}" + (" (broken on purpose)" if broken else ""))
        try:
            ivr = IvrProcess(broken=broken).start()  # its own process: our speech recognition must not stall its media clock
        except IvrError as exc:
            console.print(f"[yellow]no sandbox IVR:[/] {escape(str(exc))}")
            ivr = None
        try:
            if ivr is not None:
                os.environ["CXTEST_SANDBOX_SIP"] = f"127.0.0.1:{ivr.port}"
                console.print(f"sandbox IVR on {ivr.uri()}")
                # The sandbox IVR stands in for a contact centre on machines of its own: when our speech
                # recognition and browsers load every core, it must still play its prompts on time (a
                # starved media clock skips ticks, which puts pauses into prompts). We yield, it cannot rise.
                os.nice(DEMO_NICENESS)
            project, scenarios = _load(paths or [Path("scenarios/demo")])
            store = _open_store(project, None)
            results, previous = execute(project, scenarios, store=store, show_progress=True)
        finally:
            if ivr is not None:
                ivr.stop()
    out_dir.mkdir(parents=True, exist_ok=True)
    write_reports(
        results, junit=out_dir / "junit.xml", json_report=out_dir / "results.json", html=out_dir / "report.html", previous=previous
    )
    summarize(results, table=True, previous=previous)
    console.print(f"reports: {out_dir}/report.html, {out_dir}/junit.xml, {out_dir}/results.json; results in {store_url(project)}")
    raise typer.Exit(exit_code(results))


@app.command()
def sandbox(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8480,
    broken: Annotated[bool, typer.Option("--break", help="Start broken: /api/status answers 503.")] = False,
    sip_port: Annotated[int, typer.Option(help="SIP port (UDP and TCP) on 127.0.0.1 of the IVR; 0 picks a free one.")] = 5080,
) -> None:
    """Serve the demo contact centre (HTTP API and SIP IVR) on 127.0.0.1 until Ctrl-C."""
    from cxtest.sandbox.server import serve

    console.print(f"sandbox contact centre on http://127.0.0.1:{port}" + (" (broken)" if broken else ""))
    serve("127.0.0.1", port, broken, sip_port=sip_port)


@app.command()
def call(
    uri: Annotated[str, typer.Argument(help="Who to call, e.g. sip:ivr@127.0.0.1:5080 (;transport=tcp for TCP).")],
    auth: Annotated[Optional[str], typer.Option(help="Digest credentials USER:PASSWORD for 401/407 challenges.")] = None,
    dtmf: Annotated[str, typer.Option(help="Digits to send once answered (after --after seconds).")] = "",
    dtmf_method: Annotated[str, typer.Option(help="rfc4733, info or inband.")] = "rfc4733",
    after: Annotated[float, typer.Option(help="Seconds to listen before sending the digits.")] = 1.0,
    hold: Annotated[float, typer.Option(help="Seconds to stay on the call after the digits.")] = 5.0,
    no_answer_timeout: Annotated[float, typer.Option(help="Seconds of ringing before CANCEL.")] = 30.0,
    expect: Annotated[int, typer.Option(help="The final status that counts as success (exit 0).")] = 200,
    record: Annotated[Optional[Path], typer.Option(help="Write what the far end sent to this WAV (8 kHz).")] = None,
    trace: Annotated[Optional[Path], typer.Option(help="Write the call's SIP messages to this file.")] = None,
    local_host: Annotated[str, typer.Option(help="Our address for SIP and RTP.")] = "127.0.0.1",
) -> None:
    """Place one test call and report it: status, post-dial delay, answer time, codec, RTP loss and jitter."""
    from probes.voice import Credentials, UserAgent
    from probes.voice.dtmf import validate_digits

    try:
        validate_digits(dtmf)
        if dtmf_method not in ("rfc4733", "info", "inband"):
            raise ValueError(f"unknown DTMF method {dtmf_method!r}: rfc4733, info or inband")
    except ValueError as e:
        console.print(f"[red]error:[/] {escape(str(e))}")
        raise typer.Exit(EXIT_USAGE) from None
    credentials = None
    if auth is not None:
        user, _, password = auth.partition(":")
        credentials = Credentials(user, password)

    async def place():
        async with UserAgent(local_host) as ua:
            placed = await ua.dial(uri, auth=credentials, no_answer_timeout=no_answer_timeout)
            if placed.answered:
                with console.status(f"on the call to {uri}..."):
                    ended = asyncio.ensure_future(placed.ended.wait())
                    await asyncio.wait([ended], timeout=after)
                    if dtmf and not placed.is_over:
                        await placed.send_dtmf(dtmf, method=dtmf_method)
                    await asyncio.wait([ended], timeout=hold)
                    ended.cancel()
                    await placed.hangup()
            return placed

    try:
        placed = asyncio.run(place())
    except ValueError as e:  # a malformed URI
        console.print(f"[red]error:[/] {escape(str(e))}")
        raise typer.Exit(EXIT_USAGE) from None
    table = Table(show_header=False, box=None)
    table.add_row("status", f"{placed.status} {escape(placed.reason)}")
    table.add_row("responses", "  ".join(f"{p.status} at {p.at * 1000:.0f} ms" for p in placed.progress))
    if placed.pdd is not None:
        table.add_row("post-dial delay", f"{placed.pdd * 1000:.0f} ms")
    if placed.answered:
        media, stats = placed.negotiated, placed.media.stats
        table.add_row("answered after", f"{placed.time_to_answer * 1000:.0f} ms")
        table.add_row("codec", f"{media.codec.name}, telephone-event {media.dtmf_payload_type or 'not offered'}")
        table.add_row("RTP received", f"{stats.received} packets, lost {stats.lost} ({stats.loss_fraction:.1%}), jitter {stats.jitter_ms:.1f} ms")
        table.add_row("audio heard", f"{placed.media.recording.duration:.1f} s")
    if placed.digits_received:
        table.add_row("digits received", placed.digits_received)
    table.add_row("ended", escape(placed.end_reason))
    out.print(table)
    if record is not None and placed.media is not None:
        record.parent.mkdir(parents=True, exist_ok=True)
        placed.media.recording.write_wav(record)
        console.print(f"recording: {record}")
    if trace is not None:
        trace.parent.mkdir(parents=True, exist_ok=True)
        trace.write_text(placed.trace_text())
        console.print(f"SIP trace: {trace}")
    raise typer.Exit(EXIT_OK if placed.status == expect else EXIT_FAILED)


@app.command()
def status(
    paths: Paths = None,
    store: Annotated[Optional[str], typer.Option(help="Results store URL (default from cxtest.yaml).")] = None,
    run: Annotated[Optional[str], typer.Option("--run", help="The results of one run instead (a run id or a stress id).")] = None,
    outcome: Annotated[Optional[Outcome], typer.Option(help="With --run: only results with this outcome.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="With --run: at most this many, newest first.")] = 50,
) -> None:
    """The latest stored result of every scenario, with its open incidents; or one run's results (--run)."""
    from alerts.incidents import Incidents

    _, opened = _project_store(paths, store)
    if run is not None:
        with opened:
            results = opened.results(run_id=run, outcome=outcome, limit=limit)
        if not results:
            console.print(f"no {outcome.value + ' ' if outcome else ''}results stored for run {run}")
            return
        table = Table("outcome", "scenario", "when", "duration", "message", "evidence", box=None)
        for r in results:
            evidence = str(Path(r.artifacts[0].path).parent) if r.artifacts else ""
            table.add_row(
                f"[{STYLE[r.outcome]}]{r.outcome.value}[/]", escape(r.scenario_id), r.started_at.strftime("%Y-%m-%d %H:%M:%S"),
                format_duration(r.duration), escape(logs.redact(r.message)[:100]), escape(evidence),
            )
        out.print(table)
        return
    with opened:
        latest = opened.latest()
        open_by_scenario: dict[str, list[str]] = {}
        for incident in Incidents(opened).open_incidents():
            open_by_scenario.setdefault(incident.scenario_id, []).append(f"{incident.rule} ({incident.severity})")
    if not latest:
        console.print("no results stored yet")
        return
    table = Table("outcome", "scenario", "when", "duration", "open incidents", "message", box=None)
    for r in latest:
        table.add_row(
            f"[{STYLE[r.outcome]}]{r.outcome.value}[/]",
            escape(r.scenario_id),
            r.started_at.strftime("%Y-%m-%d %H:%M:%S"),
            format_duration(r.duration),
            f"[red]{escape(', '.join(open_by_scenario.get(r.scenario_id, [])))}[/]",
            escape(logs.redact(r.message)[:100]),
        )
    out.print(table)


@app.command()
def stress(
    path: Annotated[Path, typer.Argument(help="The scenario file to stress.", show_default=False)],
    scenario_id: Annotated[Optional[str], typer.Option("--scenario", help="Which scenario, when the file holds several (a phone inventory).")] = None,
    users: Annotated[Optional[int], typer.Option(min=1, help="Constant users (with --duration).")] = None,
    duration: Annotated[Optional[str], typer.Option(help="How long: 30s, 5m.")] = None,
    stage: Annotated[Optional[list[str]], typer.Option("--stage", help="Ramp: DURATION:TARGET, repeatable (30s:100 --stage 1m:100 --stage 10s:0).")] = None,
    rate: Annotated[Optional[float], typer.Option(min=0.001, help="Iterations started a second (constant arrival rate).")] = None,
    max_users: Annotated[Optional[int], typer.Option(min=1, help="With --rate: iterations at once at most.")] = None,
    think: Annotated[Optional[str], typer.Option(help="Pause between steps: 1s, or 0.5s-2s.")] = None,
    threshold: Annotated[Optional[list[str]], typer.Option("--threshold", help="k6-style: 'p95(turn_latency) < 800ms', 'rate(failed) < 1%' (repeatable).")] = None,
    abort_on_fail: Annotated[bool, typer.Option("--abort-on-fail", help="Stop as soon as a threshold is clearly lost.")] = False,
    max_duration: Annotated[Optional[str], typer.Option(help="Hard stop, whatever the shape says.")] = None,
    workers: Annotated[int, typer.Option(min=0, help="Worker processes (0: one per core, joining as the load needs them; N: N, all at work from the start).")] = 0,
    ray: Annotated[Optional[str], typer.Option(help="Run the workers as Ray actors on the cluster at this address.")] = None,
    json_stream: Annotated[bool, typer.Option("--json", help="One JSON line a second on stdout instead of the live table.")] = False,
    html: Annotated[Optional[Path], typer.Option(help="Write the HTML report here.")] = None,
    store: Annotated[Optional[str], typer.Option(help="Results store URL (default from cxtest.yaml).")] = None,
    no_store: Annotated[bool, typer.Option("--no-store", help="Do not save each iteration's result.")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Confirm a stress run against anything but this machine.")] = False,
) -> None:
    """Run one scenario as many virtual users at once; thresholds decide the exit code (0 held, 1 broken, 3 untested, 130 Ctrl-C)."""
    from pydantic import ValidationError

    from cxtest.loader import find_project_file
    from cxtest.stress import StressJob, StressPlan, remote_hosts

    project, scenarios = _load([path])
    if scenario_id is not None:
        scenarios = [s for s in scenarios if s.id == scenario_id]
    if len(scenarios) != 1:
        ids = ", ".join(s.id for s in scenarios[:5]) or "none"
        console.print(f"stress runs one scenario; {path} gives {len(scenarios)} ({ids}): pick one with --scenario ID", style="red")
        raise typer.Exit(EXIT_USAGE)
    [scenario] = scenarios
    given = scenario.stress.model_dump(exclude_unset=True) if scenario.stress else {}
    options = {
        "users": users, "duration": duration, "rate": rate, "max_users": max_users, "max_duration": max_duration,
        "stages": [_stage(text) for text in stage] if stage else None,
        "think": think.split("-", 1) if think and "-" in think else think,
        "thresholds": threshold, "abort_on_fail": abort_on_fail or None,
    }
    if options["stages"] or options["rate"] is not None or options["users"] is not None:
        for shape in ("users", "rate", "stages", "duration"):  # a shape on the command line replaces the file's
            given.pop(shape, None)
    try:
        plan = StressPlan.model_validate({**given, **{k: v for k, v in options.items() if v is not None}})
    except (ValidationError, ValueError) as exc:
        console.print(f"stress plan: {escape(_first_error(exc))}", style="red")
        raise typer.Exit(EXIT_USAGE) from None
    console.print(f"stress {escape(scenario.name)}: {plan.describe()}" + (f"; thresholds: {'; '.join(plan.thresholds)}" if plan.thresholds else ""))
    far = remote_hosts(scenario.target)
    if far and not yes:
        console.print(f"the target is not this machine ({', '.join(far)}): say --yes to send this load to it", style="red")
        raise typer.Exit(EXIT_USAGE)
    project_file = find_project_file(path)
    job = StressJob(
        scenario_file=str(path.resolve()), scenario_id=scenario.id, plan=plan,
        project_file=str(project_file) if project_file else None,
        store_url=None if no_store else store_url(project, store),
        artifacts_root=str((project.root / project.artifacts).resolve()), workers=workers, ray_address=ray,
        environment={k: v for k, v in os.environ.items() if k.startswith("CXTEST_")},
    )
    try:
        outcome = _stress_live(job, plan, json_stream)
    except CxtestError as exc:  # no cluster at --ray ADDRESS, and the like: nothing ran
        console.print(f"stress: {escape(str(exc))}", style="red")
        raise typer.Exit(EXIT_ERROR) from None
    if html is not None:
        from cxtest.reports.stress import write_stress_html

        html.parent.mkdir(parents=True, exist_ok=True)
        write_stress_html(outcome, html)
    _stress_summary(outcome, json_stream)
    raise typer.Exit(outcome.exit_code)


def _stage(text: str) -> dict[str, str]:
    length, _, target = text.partition(":")
    if not target:
        raise typer.BadParameter(f"--stage {text!r}: DURATION:TARGET, e.g. 30s:100")
    return {"duration": length, "target": target}


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        return f"{where}: {first['msg']}" if where else first["msg"].removeprefix("Value error, ")
    return str(exc)


def _stress_live(job: Any, plan: Any, json_stream: bool) -> Any:
    from rich.live import Live

    from cxtest.stress import run_stress
    from cxtest.stress.live import json_line, render

    if json_stream:
        def tick(snapshot: Any, totals: Any, verdicts: Any) -> None:
            line = json_line(snapshot.t, snapshot.users, snapshot.finished, totals, verdicts)
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()

        return run_stress(job, on_tick=tick)
    with Live(console=console, refresh_per_second=2, transient=True) as live:
        def show(snapshot: Any, totals: Any, verdicts: Any) -> None:
            live.update(render(plan, snapshot.t, snapshot.users, snapshot.finished, totals, verdicts))

        return run_stress(job, on_tick=show)


def _stress_summary(outcome: Any, json_stream: bool) -> None:
    totals = outcome.totals
    if json_stream:
        summary = {
            "stress_id": outcome.job.stress_id, "exit_code": outcome.exit_code, "interrupted": outcome.interrupted,
            "aborted": outcome.aborted, "errors": outcome.errors, "runs": dict(totals.runs), "workers": outcome.workers,
            "thresholds": [{"threshold": v.threshold.text, "seen": v.seen, "ok": v.ok, "text": v.text} for v in outcome.verdicts],
        }
        sys.stdout.write(json.dumps({"summary": summary}) + "\n")
        return
    from cxtest.stress.live import render

    last = outcome.snapshots[-1] if outcome.snapshots else None
    out.print(render(outcome.job.plan, outcome.duration, 0, last.finished if last else 0, totals, []))
    for error in outcome.errors:
        console.print(f"worker: {escape(error)}", style="red")
    if outcome.interrupted:
        console.print("stopped by Ctrl-C: the figures cover what finished", style="yellow")
    if outcome.aborted:
        console.print(f"aborted: {escape(outcome.aborted)} was clearly lost", style="red")
    finished = sum(totals.runs.values())
    parts = ", ".join(f"{count} {name}" for name, count in sorted(totals.runs.items())) or "none finished"
    out.print(f"{finished} iterations in {outcome.duration:.1f}s ({parts}); stress id {outcome.job.stress_id}")
    for verdict in outcome.verdicts:
        mark = "[green]✓[/]" if verdict.ok else "[red]✗[/]"
        out.print(f"{mark} {escape(verdict.text)}")


@app.command()
def monitor(
    paths: Paths = None,
    location: Annotated[Optional[str], typer.Option(help="This agent's location (default from cxtest.yaml).")] = None,
    store: Annotated[Optional[str], typer.Option(help="Results store URL (default from cxtest.yaml).")] = None,
    listen: Annotated[Optional[str], typer.Option(help="host:port of /healthz, /metrics and the status page; '' for none.")] = None,
) -> None:
    """Run every scheduled scenario until stopped; open and resolve incidents. SIGHUP reloads the files."""
    from cxtest.monitor import run_monitor

    _load(paths)  # located problems and exit 2 before anything starts
    try:
        run_monitor(paths or [Path("scenarios")], location=location, store_url=store, listen=listen)
    except StoreError as exc:
        console.print(f"store: {escape(str(exc))}", style="red")
        raise typer.Exit(EXIT_ERROR) from None


def _project_store(paths: list[Path] | None, store: str | None):
    from cxtest.loader import find_project_file, load_project

    try:
        project = load_project(find_project_file((paths or [Path("scenarios")])[0]))
    except ScenarioError as exc:
        console.print("\n".join(escape(str(p)) for p in exc.problems), style="red")
        raise typer.Exit(EXIT_USAGE) from None
    return project, _open_store(project, store)


@app.command()
def incidents(
    paths: Paths = None,
    all_: Annotated[bool, typer.Option("--all", help="Resolved incidents too.")] = False,
    store: Annotated[Optional[str], typer.Option(help="Results store URL (default from cxtest.yaml).")] = None,
) -> None:
    """Open incidents (or all of them), newest first."""
    from alerts.incidents import Incidents

    _, opened = _project_store(paths, store)
    with opened:
        book = Incidents(opened)
        found = book.history(limit=200) if all_ else book.open_incidents()
    if not found:
        console.print("no open incidents" if not all_ else "no incidents")
        return
    table = Table("id", "state", "severity", "incident", "opened", "resolved", "summary", box=None)
    for i in found:
        table.add_row(
            str(i.id),
            f"[{'red' if i.state.value == 'open' else 'green'}]{i.state.value}[/]",
            i.severity,
            escape(i.key),
            i.opened_at.strftime("%Y-%m-%d %H:%M:%S"),
            i.resolved_at.strftime("%Y-%m-%d %H:%M:%S") if i.resolved_at else "",
            escape(logs.redact(i.summary)[:120]),
        )
    out.print(table)


@app.command()
def deliveries(
    paths: Paths = None,
    incident: Annotated[Optional[int], typer.Option(help="Only this incident's deliveries.")] = None,
    state: Annotated[Optional[str], typer.Option(help="pending, sent or failed.")] = None,
    limit: Annotated[int, typer.Option(min=1)] = 50,
    store: Annotated[Optional[str], typer.Option(help="Results store URL (default from cxtest.yaml).")] = None,
) -> None:
    """The notification audit trail: every delivery and each attempt (time, status, response excerpt)."""
    from alerts.outbox import Outbox

    _, opened = _project_store(paths, store)
    with opened:
        outbox = Outbox(opened, {})
        try:
            found = outbox.deliveries(incident_id=incident, state=state, limit=limit)
        finally:
            asyncio.run(outbox.aclose())
    if not found:
        console.print("no deliveries")
        return
    table = Table("id", "incident", "notifier", "change", "state", "attempts", "sent", "last attempt", box=None)
    for d in found:
        last = d.attempts[-1] if d.attempts else None
        said = ""
        if last is not None:
            said = f"{last.at.strftime('%H:%M:%S')} {last.status_code or ''} {last.outcome.value} {last.error or last.excerpt}".strip()
        style = {"sent": "green", "pending": "yellow", "failed": "red"}.get(d.state.value, "")
        table.add_row(
            str(d.id),
            escape(d.incident_key),
            escape(d.notifier),
            d.change.value,
            f"[{style}]{d.state.value}[/]",
            str(d.attempt_count),
            d.sent_at.strftime("%Y-%m-%d %H:%M:%S") if d.sent_at else "",
            escape(logs.redact(said)[:100]),
        )
    out.print(table)


silence_app = typer.Typer(help="Silences: no incident opens for matching scenarios while one is active.", no_args_is_help=True)
app.add_typer(silence_app, name="silence")


@silence_app.command("add")
def silence_add(
    matcher: Annotated[str, typer.Argument(help="Scenario id or glob, e.g. 'billing/*' or '*'.")],
    duration: Annotated[str, typer.Option("--for", help="How long, e.g. 30m or 2h.")] = "1h",
    tag: Annotated[Optional[list[str]], typer.Option("--tag", help="Only scenarios with this tag (repeatable).")] = None,
    reason: Annotated[str, typer.Option(help="Why, for the audit trail (e.g. 'deploy 4.2').")] = "",
    created_by: Annotated[str, typer.Option("--by", help="Who (default: $USER).")] = "",
    paths: Annotated[Optional[list[Path]], typer.Option("--project", help="Scenario folder (finds cxtest.yaml).")] = None,
    store: Annotated[Optional[str], typer.Option(help="Results store URL (default from cxtest.yaml).")] = None,
) -> None:
    """Silence scenarios for a while, e.g. from a deploy job: cxtest silence add 'billing/*' --for 30m."""
    from alerts.incidents import Incidents

    _, opened = _project_store(paths, store)
    with opened:
        try:
            silence_id = Incidents(opened).silence_add(
                matcher, duration=duration, tags=tag or (), reason=reason, created_by=created_by or os.environ.get("USER", "")
            )
        except ValueError as exc:
            console.print(escape(str(exc)), style="red")
            raise typer.Exit(EXIT_USAGE) from None
    out.print(f"silence {silence_id}: {escape(matcher)} for {duration}")


@silence_app.command("list")
def silence_list(
    all_: Annotated[bool, typer.Option("--all", help="Expired silences too.")] = False,
    paths: Annotated[Optional[list[Path]], typer.Option("--project", help="Scenario folder (finds cxtest.yaml).")] = None,
    store: Annotated[Optional[str], typer.Option(help="Results store URL (default from cxtest.yaml).")] = None,
) -> None:
    """Active silences (or all of them)."""
    from alerts.incidents import Incidents

    _, opened = _project_store(paths, store)
    with opened:
        found = Incidents(opened).silences(active_only=not all_)
    if not found:
        console.print("no silences")
        return
    table = Table("id", "matcher", "tags", "from", "until", "by", "reason", box=None)
    for s in found:
        table.add_row(
            str(s.id), escape(s.matcher), ",".join(s.tags), s.starts_at.strftime("%Y-%m-%d %H:%M"),
            s.ends_at.strftime("%Y-%m-%d %H:%M"), escape(s.created_by), escape(s.reason),
        )
    out.print(table)


@silence_app.command("remove")
def silence_remove(
    silence_id: Annotated[int, typer.Argument(help="The id from `cxtest silence list`.")],
    paths: Annotated[Optional[list[Path]], typer.Option("--project", help="Scenario folder (finds cxtest.yaml).")] = None,
    store: Annotated[Optional[str], typer.Option(help="Results store URL (default from cxtest.yaml).")] = None,
) -> None:
    """End a silence now."""
    from alerts.incidents import Incidents

    _, opened = _project_store(paths, store)
    with opened:
        removed = Incidents(opened).silence_remove(silence_id)
    if not removed:
        console.print(f"no silence {silence_id}", style="red")
        raise typer.Exit(EXIT_USAGE)
    out.print(f"silence {silence_id} removed")


import_app = typer.Typer(help="Convert other tools' test scripts into cxtest scenarios.", no_args_is_help=True)
app.add_typer(import_app, name="import")


@import_app.command("botium")
def import_botium(
    folder: Annotated[Path, typer.Argument(help="A BotiumScript folder: *.convo.txt, *.pconvo.txt, *.utterances.txt (botium.json here or above).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the chat scenarios (one YAML file per convo).")] = Path("scenarios/botium"),
    target: Annotated[Optional[Path], typer.Option(help="A YAML mapping used as every scenario's target instead of botium.json's.")] = None,
) -> None:
    """Convert BotiumScript convos into chat scenarios; whatever has no equivalent is listed as file:line:col and exits 2."""
    import yaml

    from probes.chat.botium import convert_folder, write_scenarios

    chosen = None
    if target is not None:
        try:
            chosen = yaml.safe_load(target.read_text())
        except (OSError, yaml.YAMLError) as exc:
            console.print(f"--target {escape(str(target))}: {escape(str(exc))}", style="red")
            raise typer.Exit(EXIT_USAGE) from None
        if not isinstance(chosen, dict):
            console.print(f"--target {escape(str(target))}: expected a mapping (connector, url...)", style="red")
            raise typer.Exit(EXIT_USAGE)
    conversion = convert_folder(folder, chosen)
    for warning in conversion.warnings:
        console.print(escape(f"warning: {warning}"), style="yellow", highlight=False, soft_wrap=True)
    for problem in conversion.problems:
        console.print(escape(str(problem)), style="red", highlight=False, soft_wrap=True)
    written = write_scenarios(conversion, out_dir)
    console.print(f"wrote {len(written)} scenario(s) to {escape(str(out_dir))}", style="green" if not conversion.problems else None)
    if conversion.problems:
        files = len({p.file for p in conversion.problems})
        console.print(f"{len(conversion.problems)} thing(s) not converted in {files} file(s)", style="bold red")
        raise typer.Exit(EXIT_USAGE)


# --------------------------------------------------------------------------- shared by run and demo


def execute(
    project: Project,
    scenarios: list[Scenario],
    *,
    concurrency: int | None = None,
    store=None,
    show_progress: bool = True,
) -> tuple[list[Result], dict[str, Result] | None]:
    """Run the scenarios; return their results and, for phone numbers, each one's previous stored
    result (None when there is no store), fetched while the store is still open."""
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
        results = asyncio.run(main())
        return results, _previous_phone_results(store, results)
    except StoreError as exc:
        console.print(f"store: {escape(str(exc))}", style="red")
        raise typer.Exit(EXIT_ERROR) from None
    finally:
        if store is not None:
            store.close()


def _previous_phone_results(store, results: list[Result]) -> dict[str, Result] | None:
    """For the phone trend: each number's newest stored result from before this run; None without a store.

    A store that fails here only costs the trend: the results themselves are already saved.
    """
    from cxtest.reports.phone import group_by_inventory

    groups = group_by_inventory(results)
    if store is None or not groups:
        return None
    previous: dict[str, Result] = {}
    try:
        for inventory, members in groups.items():
            started = min(r.started_at for r in members)
            for r in store.previous_results(inventory + "/", before=started, exclude_run_id=members[0].run_id or None):
                previous[r.scenario_id] = r
    except StoreError as exc:
        console.print(f"[yellow]store: no trend for the phone inventories:[/] {escape(str(exc))}")
        return None
    return previous


def write_reports(
    results: list[Result],
    *,
    junit: Path | None,
    json_report: Path | None,
    html: Path | None,
    previous: dict[str, Result] | None = None,
) -> None:
    from cxtest.reports import results_to_dict, write_html, write_json, write_junit

    if junit is not None:
        junit.parent.mkdir(parents=True, exist_ok=True)
        write_junit(results, junit)
    if html is not None:
        html.parent.mkdir(parents=True, exist_ok=True)
        write_html(results, html, previous=previous)
    if json_report == Path("-"):
        sys.stdout.write(json.dumps(results_to_dict(results), indent=2) + "\n")
    elif json_report is not None:
        json_report.parent.mkdir(parents=True, exist_ok=True)
        write_json(results, json_report)


PHONE_WORST_SHOWN = 10


def summarize(results: list[Result], *, table: bool, previous: dict[str, Result] | None = None) -> None:
    """The run on the terminal: a row per result, except phone numbers, which get a block per
    inventory (`previous` gives the trend); then one line of totals."""
    from cxtest.reports.phone import is_phone, summarize_inventories

    if table:
        for inventory in summarize_inventories(results, previous):
            _print_inventory(inventory)
        others = [r for r in results if not is_phone(r)]
        grid = Table("", "scenario", "channel", "duration", "message", box=None, pad_edge=False)
        for r in sorted(others, key=lambda r: (-r.outcome.rank, r.scenario_id)):
            name = escape(r.scenario_name) + (" [yellow](flaky)[/]" if r.flaky else "")
            grid.add_row(
                f"[{STYLE[r.outcome]}]{MARK[r.outcome]} {r.outcome.value}[/]",
                name,
                r.channel,
                format_duration(r.duration),
                escape(logs.redact(r.message)),
            )
        if others:
            out.print(grid)
        for r in others:
            if r.outcome not in (Outcome.failed, Outcome.error):
                continue
            for step in r.steps:
                if step.outcome in (Outcome.failed, Outcome.error) and step.evidence.get("transcript"):
                    out.print(f"  [dim]{escape(r.scenario_name)}, step {step.index + 1}, {escape(logs.redact(step.evidence['transcript']))}[/]")
            if r.artifacts:
                out.print(f"  [dim]evidence for {escape(r.scenario_name)}: {escape(str(Path(r.artifacts[0].path).parent))}[/]")
    counts = Counter(r.outcome for r in results)
    total = sum(r.duration for r in results)
    parts = [f"{counts[o]} {o.value}" for o in (Outcome.passed, Outcome.degraded, Outcome.failed, Outcome.error) if counts[o]]
    flaky = sum(r.flaky for r in results)
    if flaky:
        parts.append(f"{flaky} flaky")
    worst = Outcome.worst([r.outcome for r in results]) if results else Outcome.passed
    out.print(f"[bold {STYLE[worst]}]{', '.join(parts)}[/] in {len(results)} scenario(s), {format_duration(total)} of probe time")


def _print_inventory(inventory: "InventorySummary") -> None:
    """An inventory in a few lines: outcome and class counts, PDD percentiles, trend, then its worst numbers."""
    from cxtest.reports.phone import pdd_change_text, trend_text

    head = Table(show_header=False, box=None, pad_edge=False, title_justify="left",
                 title=f"[bold]{escape(logs.redact(inventory.name))}[/] [dim]{escape(logs.redact(inventory.inventory))}[/]")
    head.add_row("numbers", f"{inventory.total}: " + ", ".join(
        f"[{STYLE[Outcome(o)]}]{n} {o}[/]" for o, n in inventory.outcomes.items() if n
    ))
    head.add_row("classes", ", ".join(f"{name} {n}" for name, n in inventory.classes.items()))
    pdd = inventory.pdd
    head.add_row("post-dial delay", "none measured" if pdd is None else (
        f"p50 {format_duration(pdd.p50)}, p90 {format_duration(pdd.p90)}, p95 {format_duration(pdd.p95)}, "
        f"min {format_duration(pdd.min)}, max {format_duration(pdd.max)} ({pdd.count} calls)"
    ))
    head.add_row("trend", escape(trend_text(inventory.trend)))
    out.print(head)
    worst = inventory.not_passing[:PHONE_WORST_SHOWN]
    if not worst:
        return
    named = any(row.name for row in worst)
    headers = ("", "number", *(["name"] if named else []), "class", "PDD", "trend")
    rows = []
    for row in worst:
        changes = [x for x in (row.trend, row.class_change) if x]
        if pdd_change_text(row):
            changes.append(f"PDD {pdd_change_text(row)}")
        outcome = f"{MARK[row.outcome]} {row.outcome.value}" + (" (flaky)" if row.flaky else "")
        cells = (outcome, logs.redact(row.number), *([logs.redact(row.name)] if named else []),
                 row.call_class, "" if row.pdd is None else format_duration(row.pdd), ", ".join(changes))
        rows.append((row, cells))
    # Two lines a number, cut at the terminal's edge: the columns, then the message under them.
    # CI logs are often 80 columns wide, too narrow for a message column beside the others.
    widths = [max(len(h), *(len(cells[i]) for _, cells in rows)) for i, h in enumerate(headers)]
    line = {"no_wrap": True, "overflow": "ellipsis", "highlight": False}
    out.print("[dim]" + escape("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()) + "[/]", **line)
    for row, (outcome, *rest) in rows:
        columns = "  ".join(c.ljust(w) for c, w in zip(rest, widths[1:])).rstrip()
        out.print(f"[{STYLE[row.outcome]}]{escape(outcome.ljust(widths[0]))}[/]  {escape(columns)}", **line)
        if row.message:
            out.print(f"  [dim]{escape(logs.redact(row.message))}[/]", **line)
    rest = len(inventory.not_passing) - len(worst)
    if rest:
        out.print(f"  [dim]... and {rest} more not-passing number(s): see the HTML report or `--json`[/]")


def main() -> None:
    app()
