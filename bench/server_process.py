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
    """Start `command`, wait until GET `url + ready_path` answers 200, stop it by its pid (SIGTERM, then SIGKILL)."""

    def __init__(
        self,
        command: list[str],
        url: str,
        *,
        ready_path: str,
        name: str = "server",
        pass_fds: tuple[int, ...] = (),
        preexec_fn: object = None,
        start_timeout: float = 15.0,
        stop_timeout: float = 10.0,
        error: type[Exception] = RuntimeError,
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
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tempfile.TemporaryFile()  # its stderr: a traceback if it fails to start

    def __enter__(self) -> "ServerProcess":
        self.proc = subprocess.Popen(
            self.command,
            pass_fds=self.pass_fds,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
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
        import httpx

        deadline = time.monotonic() + self.start_timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise self.error(f"{self.name} exited during start-up (exit code {self.proc.returncode}): {self.stderr_tail()}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise self.error(f"{self.name} did not answer on {self.url} within {self.start_timeout:g}s: {self.stderr_tail()}")
            time.sleep(0.05)

    def stderr_tail(self, limit: int = 2000) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-limit:].strip()

    def cpu_seconds(self) -> float | None:
        """The child's user + system CPU so far (Linux /proc)."""
        try:
            assert self.proc is not None
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError, AssertionError):
            return None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
            except ProcessLookupError:
                pass
        self.log.close()
