"""A server the benchmarks start in a child process: ready when it answers, stopped by its pid.

Shared by the benchmark scripts (they run as `python bench/NAME.py`, so this folder is
on sys.path). A child of its own keeps the server's CPU out of the measured process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


class BenchError(Exception):
    """The bench could not measure (a peer did not start, a run did not pass): said in one line, exit 2."""


def run_bench(main, stopped: str) -> None:
    """`sys.exit(main())`, with a bench error said in one line (exit 2) and Ctrl-C saying what was stopped (exit 130)."""
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"bench interrupted; {stopped}", file=sys.stderr)
        sys.exit(130)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def die_with_parent() -> None:
    """In a child before exec: SIGTERM when the bench dies, even by SIGKILL (Linux prctl)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class ServerProcess:
    """Start `command`, wait until ready() (GET `url + ready_path` answers 200), stop it by its pid.

    A peer that is not an HTTP server overrides ready() and `awaited` (what ready() waits
    for, for the error), and its `stop_signals` when it has a softer way out than SIGTERM.
    """

    stop_signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGKILL)

    def __init__(
        self,
        command: list[str],
        url: str = "",
        *,
        ready_path: str = "/",
        name: str = "server",
        pass_fds: tuple[int, ...] = (),
        preexec_fn: object = None,
        start_timeout: float = 15.0,
        stop_timeout: float = 10.0,
        error: type[Exception] = RuntimeError,
        cwd: Path | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.command = command
        self.url = url
        self.ready_path = ready_path
        self.name = name
        self.pass_fds = pass_fds
        self.preexec_fn = preexec_fn
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.error = error  # raised when it does not start
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        # Its output (stderr, and stdout too when it goes to a file): a traceback if it fails to start.
        self.log = open(log_path, "w+b") if log_path else tempfile.TemporaryFile()
        self.log_path = log_path

    @property
    def awaited(self) -> str:
        return f"answer on {self.url}"

    def ready(self) -> bool:
        import httpx

        try:
            return httpx.get(self.url + self.ready_path, timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def __enter__(self) -> "ServerProcess":
        self.proc = subprocess.Popen(
            self.command,
            cwd=self.cwd,
            pass_fds=self.pass_fds,
            stdin=subprocess.DEVNULL,
            stdout=self.log if self.log_path else subprocess.DEVNULL,
            stderr=subprocess.STDOUT if self.log_path else self.log,
            preexec_fn=self.preexec_fn,  # type: ignore[arg-type]
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise self.error(f"{self.name} exited during start-up (exit code {self.proc.returncode}): {self.stderr_tail()}")
            if self.ready():
                return
            if time.monotonic() > deadline:
                raise self.error(f"{self.name} did not {self.awaited} within {self.start_timeout:g}s: {self.stderr_tail()}")
            time.sleep(0.05)

    def stderr_tail(self, limit: int = 2000) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace").replace("\r", "\n")[-limit:].strip() or "(nothing written)"

    def cpu_seconds(self) -> float | None:
        """The child's user + system CPU so far (Linux /proc)."""
        try:
            assert self.proc is not None
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError, AssertionError):
            return None

    def stop(self) -> None:
        """Each of `stop_signals` in turn, by pid, until it is gone (the last one waits for as long as it takes)."""
        proc, self.proc = self.proc, None
        if proc is not None:
            for number, signum in enumerate(self.stop_signals, 1):
                if proc.poll() is not None:
                    break
                try:
                    os.kill(proc.pid, signum)
                    proc.wait(None if number == len(self.stop_signals) else self.stop_timeout)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass
        self.log.close()
