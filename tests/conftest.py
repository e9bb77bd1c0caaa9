"""Shared fixtures: real peers on 127.0.0.1, started here and stopped when the tests end."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

# The real SIP peers (SIPp, baresip, Kamailio) and chatbots (Botkit, a Bot Framework bot, offline-directline)
# with their `voice_peers` and `chat_peers` fixtures; loading them
# here, before any test module imports it, lets pytest rewrite its asserts.
pytest_plugins = ["voice_peers", "chat_peers"]

# =========================================================================== PostgreSQL
# A throwaway PostgreSQL cluster for the `postgres`-marked tests: initdb into a
# temporary folder, one server on 127.0.0.1 with trust auth, stopped at session end.

PG_ROOT = Path("/usr/lib/postgresql")
PG_START_TIMEOUT_S = 20.0
PG_STOP_TIMEOUT_S = 15.0


def _pg_bin_dir() -> Path:
    found = [p for p in PG_ROOT.glob("*/bin") if (p / "initdb").exists() and (p / "postgres").exists()]
    if not found:
        pytest.fail(
            f"PostgreSQL server binaries not found under {PG_ROOT}/*/bin: run `make test`, which installs postgresql",
            pytrace=False,
        )

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", path.parent.name)) or (0,)

    return max(found, key=version)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pg_log_tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a fresh PostgreSQL server with an empty `cxtest` database, for the whole session."""
    import psycopg

    bin_dir = _pg_bin_dir()
    as_root = os.geteuid() == 0
    # PostgreSQL refuses to run as root: run it as `postgres` in a folder that user owns.
    # mkdtemp under /tmp, not pytest's tmp_path: root's pytest folder is 0700 and closed to `postgres`.
    base = Path(tempfile.mkdtemp(prefix="cxtest-pg-"))
    data = base / "data"
    log = base / "server.log"
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    if as_root:
        shutil.chown(base, user="postgres", group="postgres")

    server: subprocess.Popen[bytes] | None = None
    try:
        init = subprocess.run(
            [*prefix, str(bin_dir / "initdb"), "-D", str(data), "--auth=trust", "--username=postgres",
             "--encoding=UTF8", "--no-locale", "--no-sync"],
            capture_output=True, text=True, timeout=120,
        )
        if init.returncode != 0:
            pytest.fail(f"initdb failed ({init.returncode}):\n{init.stdout}\n{init.stderr}", pytrace=False)

        port = _free_port()
        with open(log, "wb") as log_file:
            server = subprocess.Popen(
                [*prefix, str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(base),
                 "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off"],
                stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )

        admin = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        deadline = time.monotonic() + PG_START_TIMEOUT_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"PostgreSQL exited with {server.returncode}:\n{_pg_log_tail(log)}", pytrace=False)
            try:
                with psycopg.connect(admin, autocommit=True, connect_timeout=2) as conn:
                    conn.execute("CREATE DATABASE cxtest")
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"PostgreSQL did not accept connections within {PG_START_TIMEOUT_S:.0f}s:\n{_pg_log_tail(log)}",
                        pytrace=False,
                    )
                time.sleep(0.1)

        yield f"postgresql://postgres@127.0.0.1:{port}/cxtest"
    finally:
        if server is not None:
            _stop_postgres(server, data)
        shutil.rmtree(base, ignore_errors=True)


def _stop_postgres(server: subprocess.Popen[bytes], data: Path) -> None:
    # With runuser in front, server.pid is runuser's; postmaster.pid names the postmaster itself.
    pid = server.pid
    try:
        pid = int((data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    if server.poll() is None:
        try:
            # SIGINT is PostgreSQL's "fast" shutdown: SIGTERM would wait for pooled clients to hang up.
            os.kill(pid, signal.SIGINT)
        except ProcessLookupError:
            pass
        try:
            server.wait(timeout=PG_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            for target in {pid, server.pid}:
                try:
                    os.kill(target, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            server.wait(timeout=5)


# ======================================================================= end PostgreSQL
