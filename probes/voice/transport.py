"""SIP over UDP and TCP on one local address: datagrams, stream framing, connection reuse.

Parsing is sipmessage's; this module only moves bytes and says where they came
from, so the transaction layer can answer on the same path (RFC 3261 §18).
"""

from __future__ import annotations

import asyncio
import re
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from sipmessage import Message

log = structlog.get_logger("cxtest.voice")

_CONTENT_LENGTH = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*(\d+)", re.IGNORECASE | re.MULTILINE)
MAX_MESSAGE = 65535


@dataclass(frozen=True)
class Peer:
    """Where a message came from or goes to: the transport and the address (and, for TCP, its connection)."""

    transport: str  # "UDP" | "TCP"
    host: str
    port: int

    @property
    def addr(self) -> tuple[str, int]:
        return (self.host, self.port)

    def __str__(self) -> str:
        return f"{self.transport.lower()}:{self.host}:{self.port}"


OnMessage = Callable[[Message, Peer, bytes], None]
OnGarbage = Callable[[Peer, bytes, str], None]


# Linux's SO_TIMESTAMPNS (the socket module does not name it): each datagram comes with the time
# the kernel received it, as a struct timespec of CLOCK_REALTIME.
_SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("@qq")
_DRAIN = 64  # datagrams read per wake-up at most, so other sockets get their turn


class _Datagrams:
    """The UDP socket, read with recvmsg: every queued datagram per wake-up, each stamped with its kernel arrival.

    asyncio's datagram transport reads one datagram per pass of the event loop and the
    time it is read is all one knows; after a stall, a 180 Ringing was timed by when we got
    round to it (up to a second late in bench/number_sweep.py) and resends fired before the
    responses already waiting were read. The kernel's receive time keeps post-dial delay
    and answer times true to the wire whatever the loop was doing.
    """

    def __init__(self, owner: SipTransport, sock: socket.socket):
        self.owner, self.sock = owner, sock
        self.stamped = True
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        except OSError:
            self.stamped = False  # not Linux: the time we read it
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._read_ready)

    def _read_ready(self) -> None:
        to_monotonic = time.monotonic() - time.time()
        for _ in range(_DRAIN):
            try:
                data, ancillary, _flags, addr = self.sock.recvmsg(MAX_MESSAGE + 1, 64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # an ICMP error from an earlier send; the transaction timers decide
                log.debug("sip.udp_error", error=str(exc))
                continue
            arrival = time.monotonic()
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(value) >= _TIMESPEC.size:
                    seconds, nanoseconds = _TIMESPEC.unpack_from(value)
                    arrival = min(arrival, seconds + nanoseconds / 1e9 + to_monotonic)
            self.owner._received(data, Peer("UDP", addr[0], addr[1]), arrival)

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self.sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            log.warning("sip.udp_send_buffer_full", peer=f"{addr[0]}:{addr[1]}")  # lost like any datagram: timers resend
        except OSError as exc:
            log.debug("sip.udp_error", error=str(exc))

    def get_extra_info(self, name: str) -> object:
        return self.sock.getsockname() if name == "sockname" else None

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self._loop.remove_reader(self.sock.fileno())
            self.sock.close()


class _Stream:
    """One TCP connection: frames messages by Content-Length and hands them up."""

    def __init__(self, owner: SipTransport, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer):
        self.owner, self.reader, self.writer, self.peer = owner, reader, writer, peer
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                head = await self.reader.readuntil(b"\r\n\r\n")
                head = head.lstrip(b"\r\n")  # keep-alive CRLFs (RFC 5626) before a message
                if not head.strip():
                    continue
                match = _CONTENT_LENGTH.search(head)
                length = int(match.group(1)) if match else 0
                if length > MAX_MESSAGE:
                    self.owner._garbage(self.peer, head, f"Content-Length {length} too large")
                    break
                body = await self.reader.readexactly(length) if length else b""
                self.owner._received(head + body, self.peer, time.monotonic())
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            self.close()

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def close(self) -> None:
        self.owner._streams.pop(self.peer.addr, None)
        if not self.writer.is_closing():
            self.writer.close()


class SipTransport:
    """A UDP socket and a TCP listener on the same host:port, plus outgoing TCP connections."""

    def __init__(self, host: str, port: int, on_message: OnMessage, on_garbage: OnGarbage, *, tcp: bool = True):
        self.host, self.port, self.tcp = host, port, tcp
        self.on_message, self.on_garbage = on_message, on_garbage
        self._udp: _Datagrams | None = None
        self._server: asyncio.base_events.Server | None = None
        self._streams: dict[tuple[str, int], _Stream] = {}
        self._connecting: dict[tuple[str, int], asyncio.Future] = {}

    async def start(self) -> None:
        # Port 0 lets the OS choose the UDP port; TCP then listens on the same number.
        for _ in range(20):
            sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                sock.bind((self.host, self.port))
            except OSError:
                sock.close()
                raise
            udp = _Datagrams(self, sock)
            port = udp.get_extra_info("sockname")[1]
            if not self.tcp:
                break
            try:
                self._server = await asyncio.start_server(self._accepted, self.host, port)
                break
            except OSError:
                udp.close()
                if self.port:
                    raise
        else:
            raise OSError(f"no port on {self.host} free for both UDP and TCP")
        self._udp, self.port = udp, port

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = writer.get_extra_info("peername")[:2]
        peer = Peer("TCP", host, port)
        self._streams[peer.addr] = _Stream(self, reader, writer, peer)

    def _received(self, data: bytes, peer: Peer, arrival: float) -> None:
        if not data.strip():
            return  # keep-alive
        try:
            message = Message.parse(data)
        except (ValueError, UnicodeDecodeError, IndexError) as e:
            self._garbage(peer, data, str(e) or type(e).__name__)
            return
        message.arrival = arrival  # time.monotonic() when it reached us: the kernel's stamp for UDP
        self.on_message(message, peer, data)

    def _garbage(self, peer: Peer, data: bytes, why: str) -> None:
        self.on_garbage(peer, data, why)

    async def send(self, data: bytes, peer: Peer) -> None:
        """Send one message; TCP connects (or reuses the connection) first."""
        if peer.transport == "UDP":
            if self._udp is None:
                raise ConnectionError("SIP transport is closed")
            self._udp.sendto(data, peer.addr)
            return
        stream = self._streams.get(peer.addr) or await self._connect(peer)
        stream.send(data)

    def send_now(self, data: bytes, peer: Peer) -> None:
        """Send without waiting: UDP, or a TCP connection that already exists (answers, retransmissions)."""
        if peer.transport == "UDP":
            if self._udp is not None:
                self._udp.sendto(data, peer.addr)
        elif (stream := self._streams.get(peer.addr)) is not None:
            stream.send(data)
        else:
            asyncio.get_running_loop().create_task(self._send_logged(data, peer))

    async def _send_logged(self, data: bytes, peer: Peer) -> None:
        try:
            await self.send(data, peer)
        except OSError as e:
            log.warning("sip.send_failed", peer=str(peer), error=str(e))

    async def _connect(self, peer: Peer) -> _Stream:
        pending = self._connecting.get(peer.addr)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._connecting[peer.addr] = pending
            try:
                reader, writer = await asyncio.open_connection(peer.host, peer.port)
                stream = _Stream(self, reader, writer, peer)
                self._streams[peer.addr] = stream
                pending.set_result(stream)
            except OSError as e:
                pending.set_exception(e)
                pending.exception()  # retrieved here: waiters re-raise it themselves
            finally:
                del self._connecting[peer.addr]
        return await asyncio.shield(pending)

    async def aclose(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for stream in list(self._streams.values()):
            stream.close()
            stream.task.cancel()
        self._streams.clear()
