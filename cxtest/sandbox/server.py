"""Run the sandbox app: in a background thread (tests, demo) or in the foreground (CLI).

    with Sandbox(broken=True) as sb:
        httpx.get(f"{sb.url}/api/status")      # 503, billing down

    with Sandbox(ivr=True) as sb:
        sb.ivr.uri()                            # "sip:ivr@127.0.0.1:PORT", the Acme Bank phone menu

The server binds its own socket on 127.0.0.1 before uvicorn starts, so with
``port=0`` the chosen port is known at once and nothing races for it.
"""

from __future__ import annotations

import errno
import socket
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING

import uvicorn
from starlette.applications import Starlette

from cxtest.sandbox.app import SandboxState, create_app

if TYPE_CHECKING:
    from cxtest.sandbox.ivr import IvrThread

#: How long ``start()`` waits for the server to accept connections.
START_TIMEOUT_S = 10.0
#: How long ``stop()`` waits for the server thread to finish.
STOP_TIMEOUT_S = 10.0


class SandboxError(RuntimeError):
    """The sandbox server could not start (port taken, startup failure, timeout)."""


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP so asyncio sets TCP_NODELAY on accepted connections
    # (it skips sockets whose proto is 0, and Nagle + delayed ACK costs 40 ms a request).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        why = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
        raise SandboxError(f"sandbox cannot listen on {host}:{port}: {why}") from exc
    sock.set_inheritable(True)
    return sock


def _config(app: Starlette, log_level: str, certfile: str | None = None) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=1,
        ssl_certfile=certfile,
        ssl_keyfile=certfile,
    )


def _url(host: str, port: int, scheme: str = "http") -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}"


class ThreadedServer:
    """An ASGI app served by uvicorn in a background thread on its own bound socket.

    ``port=0`` picks a free port; after :meth:`start`, ``url`` is the base URL.
    ``certfile`` (a PEM holding key and certificate) serves HTTPS.
    """

    def __init__(self, app: Starlette, host: str = "127.0.0.1", port: int = 0, certfile: str | None = None) -> None:
        self.app = app
        self.host = host
        self.requested_port = port
        self.certfile = certfile
        self.port: int | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._failure: BaseException | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise SandboxError("server is not running; call start() first")
        return _url(self.host, self.port, "https" if self.certfile else "http")

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = START_TIMEOUT_S) -> "ThreadedServer":
        if self.running:
            return self
        self._failure = None
        self._sock = _bind(self.host, self.requested_port)
        self.port = self._sock.getsockname()[1]
        self._server = uvicorn.Server(_config(self.app, "warning", self.certfile))
        self._thread = threading.Thread(target=self._run, name=f"cxtest-server-{self.port}", daemon=True)
        self._thread.start()
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _run(self) -> None:
        assert self._server is not None and self._sock is not None
        try:
            self._server.run(sockets=[self._sock])
        except BaseException as exc:  # SystemExit on startup failure included
            self._failure = exc

    def _wait_ready(self, timeout: float) -> None:
        assert self._server is not None and self._thread is not None and self.port is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._thread.is_alive():
                why = f": {self._failure!r}" if self._failure is not None else ""
                raise SandboxError(f"server on {self.host}:{self.port} exited during start-up{why}")
            if self._server.started:
                return  # uvicorn sets `started` once the socket is listening
            time.sleep(0.01)
        raise SandboxError(f"server on {self.host}:{self.port} did not start within {timeout:g}s")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        server, thread = self._server, self._thread
        if server is not None:
            server.should_exit = True
        if thread is not None and thread.is_alive():
            thread.join(timeout)
            if thread.is_alive() and server is not None:
                server.force_exit = True
                thread.join(2.0)
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = self._sock = None

    def __enter__(self) -> "ThreadedServer":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


class Sandbox(ThreadedServer):
    """The sandbox contact centre served in a background thread.

    ``state`` is the live :class:`SandboxState` (broken flag, tokens, received
    webhooks) shared with the running app. With ``ivr=True`` the SIP IVR answers
    too, on ``sip_port`` (0: a free one): ``ivr.uri()`` is its address.
    """

    def __init__(self, broken: bool = False, host: str = "127.0.0.1", port: int = 0, ivr: bool = False, sip_port: int = 0) -> None:
        super().__init__(create_app(broken=broken), host, port)
        self.ivr: IvrThread | None = None
        if ivr:
            from cxtest.sandbox.ivr import IvrThread  # the voice engine loads only when the IVR is asked for

            self.ivr = IvrThread(host=host, port=sip_port, broken=broken)

    def start(self, timeout: float = START_TIMEOUT_S) -> "Sandbox":
        super().start(timeout)
        if self.ivr is not None:
            try:
                self.ivr.start(timeout)
            except BaseException:
                super().stop()
                raise
        return self

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        if self.ivr is not None:
            self.ivr.stop(timeout)
        super().stop(timeout)

    @property
    def state(self) -> SandboxState:
        return self.app.state.sandbox

    @property
    def broken(self) -> bool:
        return self.state.broken

    def set_broken(self, broken: bool) -> None:
        """Break or mend the running sandbox (same effect as ``POST /admin/break``)."""
        self.state.broken = bool(broken)

    def __enter__(self) -> "Sandbox":
        return self.start()

    def __repr__(self) -> str:
        where = self.url if self.port is not None else "not started"
        return f"<Sandbox {where} broken={self.broken}>"


def start_ivr(host: str, sip_port: int, broken: bool = False) -> "IvrThread | None":
    """The SIP IVR in a background thread, or None after saying why it cannot run (the HTTP sandbox goes on without it)."""
    from cxtest.sandbox.ivr import IvrError, IvrThread

    try:
        return IvrThread(host=host, port=sip_port, broken=broken).start()
    except IvrError as exc:
        print(f"cxtest sandbox: no SIP IVR: {exc}", flush=True)
        return None


def serve(
    host: str = "127.0.0.1", port: int = 8765, broken: bool = False, log_level: str = "warning", sip_port: int | None = None
) -> None:
    """Serve the sandbox in the foreground until Ctrl+C (the ``cxtest sandbox`` command); the IVR too given a ``sip_port``."""
    app = create_app(broken=broken)
    sock = _bind(host, port)
    bound = sock.getsockname()[1]
    ivr = start_ivr(host, sip_port, app.state.sandbox.broken) if sip_port is not None else None
    if ivr is not None:
        users = ", ".join(ivr.ivr.menu.entries)
        print(f"cxtest sandbox IVR answering on {ivr.uri()}  (users: {users})", flush=True)
    mode = " (broken)" if app.state.sandbox.broken else ""
    print(f"cxtest sandbox{mode} listening on {_url(host, bound)}  (Ctrl+C to stop)", flush=True)
    server = uvicorn.Server(_config(app, log_level))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        if ivr is not None:
            ivr.stop()
