"""The SIP user agent: transactions (RFC 3261 §17), dialogs (§12), calls as caller and callee.

    async with UserAgent("127.0.0.1") as ua:
        call = await ua.dial("sip:ivr@127.0.0.1:5080", auth=Credentials("alice", "secret"))
        if call.answered:
            await call.send_dtmf("1")
            await call.hangup()
        call.status, call.reason, call.pdd       # 486 "Busy Here" is data, not an exception

One UserAgent serves every call of a probe: one SIP socket pair (UDP + TCP),
one RTP socket per call, all media driven by the shared 20 ms clock.
Transactions run as short tasks that only retransmit and time out; a caller that
gets no answer (or whose task is cancelled) sends CANCEL and ACKs the 487.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog
from sipmessage import URI, Address, Message, Request, Response

from cxtest.errors import StepFailed
from probes.voice import dtmf, sdp
from probes.voice.audio import PcmSource, Source
from probes.voice.digest import AuthError, Credentials, authorization, choose
from probes.voice.rtp import RtpStream, StreamClosed
from probes.voice.transport import Peer, SipTransport

log = structlog.get_logger("cxtest.voice")

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, NOTIFY, REFER"
USER_AGENT = "cxtest"
MAX_TRACE = 200  # SIP messages kept per call as evidence


@dataclass(frozen=True)
class Timers:
    """RFC 3261 timer values; tests shrink T1 so Timer B/F (64*T1) end quickly."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0

    @property
    def b(self) -> float:
        return 64 * self.t1


@dataclass(frozen=True)
class Progress:
    """One response to our INVITE, timed from when it was first sent."""

    at: float  # seconds after the INVITE
    status: int
    reason: str


@dataclass
class TraceEntry:
    at: float  # seconds after the call started
    direction: str  # "sent" | "received"
    peer: str
    text: str


class CallEnded(StepFailed):
    """The call was over before the operation could run (the far end hung up, cancelled, or never answered)."""


def _branch() -> str:
    return "z9hG4bK" + secrets.token_hex(8)


def _tag() -> str:
    return secrets.token_hex(6)


def _synthetic(status: int, reason: str) -> Response:
    """A final response the transaction layer makes up (408 on timeout, 503 on transport error)."""
    return Response(status, reason)


def _arrival(message: Message) -> float:
    """When a message reached us (time.monotonic(), stamped by the transport); now for one we made up."""
    return getattr(message, "arrival", None) or time.monotonic()


def sip_uri(text: str) -> URI:
    """Parse a sip:/sips: URI, or say what a valid one looks like."""
    try:
        uri = URI.parse(text)
    except ValueError:
        uri = None
    if uri is None or uri.scheme not in ("sip", "sips") or not uri.host:
        raise ValueError(f"not a SIP URI: {text!r} (expected sip:user@host[:port][;transport=tcp])")
    return uri


def _answer_challenge(response: Response, credentials: Credentials, method: str, uri: str) -> tuple[str, str, bool]:
    """The header answering a 401/407 (name, value) and whether the server called our nonce stale."""
    proxy = response.code == 407
    challenge = choose(response.headers.getlist("Proxy-Authenticate" if proxy else "WWW-Authenticate"))
    stale = challenge.parameters.get("stale", "").lower() == "true"
    return ("Proxy-Authorization" if proxy else "Authorization"), authorization(challenge, credentials, method, uri), stale


# --------------------------------------------------------------------------- transactions


class _ClientTransaction:
    """Sends a request, retransmits it over UDP (Timer A/E), and settles on its final response (or 408 at Timer B/F)."""

    def __init__(self, ua: UserAgent, data: bytes, method: str, branch: str, peer: Peer, on_provisional=None, ack=None):
        self.ua, self.data, self.method, self.branch, self.peer = ua, data, method, branch, peer
        self.on_provisional = on_provisional
        self.ack = ack  # builds the ACK for a 3xx-6xx final response (INVITE only)
        self.final: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self.proceeding = False
        self._ack_bytes: bytes | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.branch, self.method)

    async def start(self) -> None:
        self.ua._client[self.key] = self
        try:
            await self.ua._send(self.data, self.peer)
        except OSError as e:
            # RFC 3261 §8.1.3.1: a transport error is a 503 from the transaction.
            self.ua._client.pop(self.key, None)
            self.settle(_synthetic(503, f"Service Unavailable (transport error: {e.strerror or e})"))
            return
        self.ua._spawn(self._timers())

    async def _timers(self) -> None:
        timers = self.ua.timers
        reliable = self.peer.transport != "UDP"
        interval = timers.t1
        deadline = asyncio.get_running_loop().time() + timers.b
        loop = asyncio.get_running_loop()
        try:
            while not self.final.done():
                remaining = deadline - loop.time()
                if self.method == "INVITE" and self.proceeding:
                    await asyncio.wait([self.final])  # ringing: the caller's no-answer timer decides
                    break
                if remaining <= 0:
                    self.settle(_synthetic(408, self.ua._timeout_reason(self.peer)))
                    break
                wait = remaining if reliable else min(interval, remaining)
                done, _ = await asyncio.wait([self.final], timeout=wait)
                if done or (self.method == "INVITE" and self.proceeding):
                    continue
                if not reliable and loop.time() < deadline:
                    self.ua._transport.send_now(self.data, self.peer)
                    interval = interval * 2 if self.method == "INVITE" else min(interval * 2, timers.t2)
        finally:
            self._linger()

    def _linger(self) -> None:
        # Timer D / K: stay to absorb retransmitted finals (re-ACK a 3xx-6xx) before forgetting.
        wait = 0 if self.peer.transport != "UDP" else (32.0 if self.method == "INVITE" else self.ua.timers.t4)
        wait = min(wait, self.ua.timers.b)
        asyncio.get_running_loop().call_later(wait, self.ua._client.pop, self.key, None)

    def receive(self, response: Response) -> None:
        status = response.code
        if status < 200:
            if not self.final.done():
                self.proceeding = True
                if self.on_provisional is not None:
                    self.on_provisional(response)
            return
        if self.method == "INVITE" and status >= 300:
            if self._ack_bytes is None:
                self._ack_bytes = self.ack(response)
            self.ua._transport.send_now(self._ack_bytes, self.peer)
        self.settle(response)

    def settle(self, response: Response) -> None:
        """The final response: received, or made up when we give up (retransmissions then stop)."""
        if not self.final.done():
            self.final.set_result(response)


class _ServerInvite:
    """The far end's INVITE: answers retransmissions with our last response; retransmits our final until ACK."""

    def __init__(self, ua: UserAgent, request: Request, peer: Peer):
        self.ua, self.request, self.peer = ua, request, peer
        self.branch = request.via[0].parameters.get("branch", "")
        self.last: bytes | None = None
        self.call: Call | None = None
        self.final_sent = False
        self.acked = asyncio.Event()

    def respond(self, data: bytes, final: bool) -> None:
        self.last = data
        self.ua._send_now(data, self.peer)
        if final and not self.final_sent:
            self.final_sent = True
            # Kept while ringing, however long: a CANCEL must still find it. Once final, it lives on
            # for retransmissions and the ACK (Timer H/J), then goes.
            asyncio.get_running_loop().call_later(self.ua.timers.b + 1, self.ua._forget_server, self)
            if self.peer.transport == "UDP":
                self.ua._spawn(self._retransmit(data))
            else:
                self.acked.set()

    async def _retransmit(self, data: bytes) -> None:
        # Timer G (non-2xx) and the UAS core's 2xx retransmission (§13.3.1.4) share one shape.
        interval, deadline = self.ua.timers.t1, time.monotonic() + self.ua.timers.b
        while time.monotonic() < deadline:
            try:
                await asyncio.wait_for(self.acked.wait(), timeout=interval)
                return
            except TimeoutError:
                if self.last is not data:
                    return
                self.ua._send_now(data, self.peer)
                interval = min(interval * 2, self.ua.timers.t2)


# --------------------------------------------------------------------------- dialogs and calls


@dataclass
class _Dialog:
    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: str  # From (ours) without tag, as sent
    remote_uri: str  # To (theirs) without tag
    remote_target: URI
    route_set: list[str]
    local_cseq: int
    peer: Peer  # where in-dialog requests go (the first route, or the remote target)
    remote_cseq: int = -1


class Call:
    """One call, as caller (role "uac") or callee ("uas"); its outcome, timing, media and evidence."""

    def __init__(self, ua: UserAgent, role: str, uri: str):
        self.ua, self.role, self.uri = ua, role, uri
        self.call_id = secrets.token_hex(12)
        self.local_tag = _tag()
        self.started_at = time.monotonic()
        self.status: int | None = None
        self.reason = ""
        self.progress: list[Progress] = []
        self.answered_at: float | None = None
        self.ended_at: float | None = None
        self.end_reason = ""
        self.cancelled = False
        self.media: RtpStream | None = None
        self.negotiated: sdp.Media | None = None
        self.early_media = False
        self.trace: list[TraceEntry] = []
        self.events: list[tuple[float, str, str]] = []  # (seconds after start, what, detail): re-INVITE, REFER, INFO...
        self.digits: asyncio.Queue[dtmf.ReceivedDigit] = asyncio.Queue()
        self.digits_received = ""
        self.ended = asyncio.Event()
        self._dialog: _Dialog | None = None
        self._ack: bytes | None = None
        self._sdp_version = 0
        self._direction = "sendrecv"
        self._session_id = int(time.time() * 1000) % 10**10
        self._codecs: tuple = ()
        self._event_receiver = dtmf.EventReceiver()
        self._tasks: set[asyncio.Task] = set()
        self._auth: Credentials | None = None
        self._auth_header: tuple[str, str] | None = None  # reused on in-dialog requests once challenged
        self._server: _ServerInvite | None = None  # the INVITE being answered (callee, or a re-INVITE)
        self._txn: _ClientTransaction | None = None  # our INVITE while it is pending
        self._invite: dict = {}  # what our INVITE carried, for CANCEL and the dialog
        self._cancel_requested = asyncio.Event()
        self._acks: dict[int, bytes] = {}  # CSeq -> our ACK, re-sent when a 2xx is retransmitted
        self.reason_detail = ""
        self.dialled_user = ""  # the Request-URI's user part: which number or service was called

    # -- what tests and probes read

    @property
    def answered(self) -> bool:
        return self.answered_at is not None

    @property
    def pdd(self) -> float | None:
        """Post-dial delay: INVITE to the first ringing/progress (180/183) or the final response."""
        for p in self.progress:
            if p.status in (180, 181, 182, 183) or p.status >= 200:
                return p.at
        return None

    @property
    def time_to_answer(self) -> float | None:
        return None if self.answered_at is None else self.answered_at - self.started_at

    @property
    def duration(self) -> float | None:
        if self.answered_at is None:
            return None
        return (self.ended_at or time.monotonic()) - self.answered_at

    @property
    def is_over(self) -> bool:
        return self.ended.is_set()

    def trace_text(self) -> str:
        """Every SIP message of the call, timed: the evidence a failed call keeps."""
        lines = []
        for entry in self.trace:
            arrow = "->" if entry.direction == "sent" else "<-"
            lines.append(f"--- {entry.at:8.3f}s {arrow} {entry.peer}\n{entry.text.rstrip()}\n")
        return "\n".join(lines)

    def raise_for_status(self) -> None:
        if not self.answered:
            raise CallEnded(f"call to {self.uri} not answered: {self.status} {self.reason}".strip())

    # -- what a caller or callee does

    async def hangup(self) -> None:
        """End the call: BYE when answered, CANCEL while ringing; waits for the far end's answer (bounded by Timer F)."""
        if self.is_over:
            return
        if self.role == "uac" and not self.answered:
            self._cancel_requested.set()
            await self.ended.wait()
            return
        if self._dialog is None:  # callee before answering
            await self.reject(480, "Temporarily Unavailable")
            return
        response = await self.ua._in_dialog(self, "BYE")
        self._end("local bye" if response.code < 300 else f"local bye ({response.code} {response.phrase})")

    async def wait_ended(self, timeout: float | None = None) -> str:
        await asyncio.wait_for(self.ended.wait(), timeout)
        return self.end_reason

    async def play(self, source: Source | bytes) -> bool:
        """Play audio into the call: True once all of it was sent, False if a newer play replaced it.

        Bytes are 8 kHz 16-bit mono PCM. Raises CallEnded when the call ends first.
        """
        media = self._live_media()
        try:
            return await media.play(PcmSource(source) if isinstance(source, bytes) else source)
        except StreamClosed:
            raise CallEnded(f"call to {self.uri} ended while playing ({self.end_reason})") from None

    async def send_dtmf(self, digits: str, *, method: str = "rfc4733", tone_ms: int = 100, gap_ms: int = 100) -> None:
        """Send digits as RFC 4733 events (paced in real time), SIP INFO requests, or in-band tones."""
        digits = dtmf.validate_digits(digits)
        if method == "rfc4733":
            media = self._live_media()
            if self.negotiated is None or self.negotiated.dtmf_payload_type is None:
                raise ValueError("the far end did not offer telephone-event (RFC 4733); send DTMF with method 'info' or 'inband'")
            try:
                await media.send_events(dtmf.EventSender(digits, tone_ms=tone_ms, gap_ms=gap_ms))
            except StreamClosed:
                raise CallEnded(f"call to {self.uri} ended while sending DTMF ({self.end_reason})") from None
        elif method == "info":
            for digit in digits:
                content_type, body = dtmf.info_body(digit, tone_ms)
                response = await self.ua._in_dialog(self, "INFO", body=body, content_type=content_type)
                if response.code >= 300:
                    raise CallEnded(f"INFO for DTMF {digit!r} refused: {response.code} {response.phrase}")
                await asyncio.sleep((tone_ms + gap_ms) / 1000)
        elif method == "inband":
            await self.play(dtmf.tones_pcm(digits, tone_ms=tone_ms, gap_ms=gap_ms))
        else:
            raise ValueError(f"unknown DTMF method {method!r}: rfc4733, info or inband")
        self._event("dtmf sent", f"{digits} ({method})")

    async def next_digit(self, timeout: float | None = None) -> dtmf.ReceivedDigit:
        """The next digit the far end sent (RFC 4733 or SIP INFO); TimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            # An RFC 4733 event whose end packets were all lost is reported once it falls quiet.
            if (late := self._event_receiver.flush(time.monotonic())) is not None:
                self._digit(late, "rfc4733")
            if not self.digits.empty():
                return self.digits.get_nowait()
            wait = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
            if wait <= 0:
                raise TimeoutError(f"no DTMF digit within {timeout:g} s")
            try:
                return await asyncio.wait_for(self.digits.get(), wait)
            except TimeoutError:
                continue

    # -- callee side

    async def ring(self) -> None:
        self._respond_invite(180, "Ringing")

    async def progress_media(self) -> None:
        """183 Session Progress with our SDP: early media flows before the answer."""
        await self._prepare_answer_media()
        self._respond_invite(183, "Session Progress", body=self._local_sdp())
        self.early_media = True

    async def answer(self) -> None:
        if self.is_over:
            raise CallEnded(f"call from {self.uri} ended before it was answered: {self.end_reason}")
        await self._prepare_answer_media()
        request = self._server.request
        contact = request.contact[0].uri if request.contact else URI.parse(self.uri)
        self._dialog = _Dialog(
            call_id=self.call_id,
            local_tag=self.local_tag,
            remote_tag=request.from_address.parameters.get("tag", ""),
            local_uri=str(Address(uri=request.to_address.uri, name=request.to_address.name)),
            remote_uri=str(Address(uri=request.from_address.uri, name=request.from_address.name)),
            remote_target=contact,
            route_set=list(request.headers.getlist("Record-Route")),
            local_cseq=secrets.randbelow(10_000),
            peer=self.ua._first_hop(request.headers.getlist("Record-Route"), contact, self._server.peer),
            remote_cseq=request.cseq.sequence,
        )
        self._respond_invite(200, "OK", body=self._local_sdp())
        self.answered_at = time.monotonic()
        self.status, self.reason = 200, "OK"
        self._start_media()
        self._watch(self._await_ack())

    async def reject(self, status: int = 486, reason: str = "Busy Here") -> None:
        if self.is_over:
            return
        self._respond_invite(status, reason)
        self.status, self.reason = status, reason
        self._end(f"rejected ({status} {reason})")

    # -- internals

    def _live_media(self) -> RtpStream:
        if self.is_over or self.media is None:
            raise CallEnded(f"call to {self.uri} is over ({self.end_reason or 'no media'})")
        return self.media

    def _event(self, what: str, detail: str = "") -> None:
        self.events.append((time.monotonic() - self.started_at, what, detail))

    def _record(self, direction: str, peer: Peer, data: bytes) -> None:
        if len(self.trace) < MAX_TRACE:
            text = data.decode("utf-8", "replace")
            self.trace.append(TraceEntry(time.monotonic() - self.started_at, direction, str(peer), text))

    def _watch(self, coro: Awaitable) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _local_sdp(self) -> str:
        assert self.media is not None
        codecs, dtmf_pt = self._codecs, sdp.DTMF_PAYLOAD_TYPE
        if self.negotiated is not None:  # once settled, describe what was agreed (the far end's telephone-event number)
            codecs, dtmf_pt = (self.negotiated.codec,), self.negotiated.dtmf_payload_type
        return sdp.describe(
            self.ua.host, self.media.local_port, codecs, dtmf_pt,
            session_id=self._session_id, version=self._session_id + self._sdp_version, direction=self._direction,
        )

    async def _open_media(self) -> None:
        if self.media is None:
            self.media = await RtpStream.open(self.ua.host)
            self.media.on_event = self._rtp_event

    def _rtp_event(self, payload: bytes, timestamp: int, arrival: float) -> None:
        try:
            digit = self._event_receiver.feed(payload, timestamp, arrival)
        except ValueError:
            return
        if digit is not None:
            self._digit(digit, "rfc4733")

    def _digit(self, digit: dtmf.ReceivedDigit, method: str) -> None:
        self.digits_received += digit.digit
        self.digits.put_nowait(digit)
        self._event("dtmf received", f"{digit.digit} ({method})")

    def _take_answer(self, body: bytes, *, answerer: bool) -> None:
        remote = sdp.parse(body)
        self.negotiated = sdp.negotiate(remote, self._codecs, answerer=answerer)
        # RFC 3264 §6.1: answer hold (sendonly) with recvonly, and so on.
        self._direction = sdp.ANSWER_DIRECTION[remote.direction] if answerer else "sendrecv"

    def _start_media(self) -> None:
        if self.media is None or self.negotiated is None:
            return
        media = self.negotiated
        if self.media.sdp_remote is not None:
            self.media.update_remote(media.remote, media.codec, media.dtmf_payload_type)
        else:
            self.media.start(media.remote, media.codec, media.dtmf_payload_type)

    async def _prepare_answer_media(self) -> None:
        await self._open_media()
        if self.negotiated is None and self._server.request.body:
            self._take_answer(self._server.request.body, answerer=True)
            self._start_media()

    def _respond_invite(self, status: int, reason: str, body: str = "") -> None:
        if self._server.final_sent:
            raise CallEnded(f"the INVITE from {self.uri} was already answered")
        data = self.ua._response(self._server.request, status, reason, to_tag=self.local_tag, body=body, contact=status < 300)
        self._record("sent", self._server.peer, data)
        self._server.respond(data, final=status >= 200)

    async def _await_ack(self) -> None:
        try:
            await asyncio.wait_for(self._server.acked.wait(), self.ua.timers.b)
        except TimeoutError:
            # §13.3.1.4: no ACK for our 2xx within 64*T1 ends the dialog with a BYE.
            if not self.is_over:
                await self.ua._in_dialog(self, "BYE")
                self._end("no ACK for our 200 OK")

    def _end(self, reason: str) -> None:
        if self.is_over:
            return
        self.end_reason = reason
        self.ended_at = time.monotonic()
        if self.media is not None:
            self.media.close()
        self._event("ended", reason)
        self.ua._forget(self)
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        self.ended.set()


# --------------------------------------------------------------------------- the user agent


@dataclass
class Registration:
    """A binding at a registrar, refreshed before it expires until unregistered."""

    status: int
    reason: str
    expires: int
    contact: str
    _refresh: asyncio.Task | None = field(default=None, repr=False)
    _unregister: Callable[[], Awaitable[Response]] | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    async def unregister(self) -> int:
        if self._refresh is not None:
            self._refresh.cancel()
        if self._unregister is None or not self.ok:
            return self.status
        response = await self._unregister()
        return response.code


class UserAgent:
    """A SIP user agent on one local address: places calls, takes calls, registers, pings."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        transport: str = "UDP",
        user: str = "cxtest",
        display_name: str = "",
        timers: Timers = Timers(),
        tcp: bool = True,
    ):
        self.host, self.user, self.display_name = host, user, display_name
        self.default_transport = transport.upper()
        self.timers = timers
        self._transport = SipTransport(host, port, self._on_message, self._on_garbage, tcp=tcp or self.default_transport == "TCP")
        self._client: dict[tuple[str, str], _ClientTransaction] = {}
        self._server: dict[str, _ServerInvite] = {}
        self._calls: dict[tuple[str, str], Call] = {}
        self._registrations: list[Registration] = []
        self._garbage: dict[tuple[str, int], tuple[int, str]] = {}
        self.garbage_received = 0
        self.on_invite: Callable[[Call], Awaitable[None]] | None = None
        self._tasks: set[asyncio.Task] = set()  # transaction timers, retransmissions, incoming-call handlers
        self._cseq = itertools.count(secrets.randbelow(10_000) + 1)

    @property
    def port(self) -> int:
        return self._transport.port

    @property
    def calls(self) -> list[Call]:
        return list(self._calls.values())

    async def start(self) -> UserAgent:
        await self._transport.start()
        return self

    async def __aenter__(self) -> UserAgent:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Hang up what is still up (bounded), stop registrations, close every socket."""
        live = [c for c in self._calls.values() if not c.is_over]
        if live:
            await asyncio.wait([asyncio.ensure_future(c.hangup()) for c in live], timeout=2 * self.timers.t1 + 1)
        for call in live:
            call._end("user agent closed")
        for registration in self._registrations:
            if registration._refresh is not None:
                registration._refresh.cancel()
        for txn in list(self._client.values()):
            txn.settle(_synthetic(503, "Service Unavailable (user agent closed)"))
        for task in list(self._tasks):
            task.cancel()
        await self._transport.aclose()

    # -- placing calls

    async def dial(
        self,
        uri: str,
        *,
        auth: Credentials | None = None,
        from_user: str | None = None,
        display_name: str | None = None,
        codecs: tuple[str, ...] = ("PCMU", "PCMA"),
        headers: dict[str, str] | None = None,
        no_answer_timeout: float = 60.0,
        proxy: str | None = None,
    ) -> Call:
        """Call `uri` and return when it is answered or has failed; the outcome is data on the Call.

        No final answer within `no_answer_timeout` sends CANCEL (status 487,
        `cancelled` set). Cancelling the awaiting task cancels the call the same way.
        """
        call = Call(self, "uac", uri)
        call._codecs = sdp.codecs_named(codecs)
        call._auth = auth
        call._cancel_requested = asyncio.Event()
        target = sip_uri(uri)
        call.dialled_user = target.user or ""
        first_hop = self._peer_for_uri(sip_uri(proxy) if proxy else target, None)
        from_addr = self._local_address(from_user, display_name)
        self._calls[(call.call_id, call.local_tag)] = call
        await call._open_media()
        offer = call._local_sdp().encode()
        extra = dict(headers or {})
        call.started_at = time.monotonic()  # post-dial delay and answer time count from the INVITE, not the socket set-up
        try:
            response = await self._invite_with_auth(call, target, first_hop, from_addr, offer, extra, no_answer_timeout)
        except asyncio.CancelledError:
            await asyncio.shield(self._abandon(call))
            raise
        self._settle_call(call, response, target, first_hop, from_addr)
        if call.cancelled and call.answered:
            await call.hangup()  # answered in the race with our CANCEL: the caller had already given up
        return call

    async def _invite_with_auth(self, call, target, first_hop, from_addr, offer, extra, no_answer_timeout) -> Response:
        deadline = time.monotonic() + no_answer_timeout
        auth_headers: dict[str, str] = {}
        for attempt in range(3):
            cseq = next(self._cseq)
            branch = _branch()
            call._invite = dict(target=target, peer=first_hop, from_addr=from_addr, cseq=cseq, branch=branch, headers={**extra, **auth_headers})
            data = self._request(
                "INVITE", target, branch=branch, peer=first_hop, from_addr=f"{from_addr};tag={call.local_tag}",
                to_addr=f"<{target}>", call_id=call.call_id, cseq=cseq, body=offer.decode(), content_type="application/sdp",
                headers={**extra, **auth_headers}, contact=True,
            )
            call._record("sent", first_hop, data)
            txn = _ClientTransaction(
                self, data, "INVITE", branch, first_hop,
                on_provisional=lambda r, call=call: self._provisional(call, r),
                ack=lambda r, data=data: self._ack_for_failure(data, r),
            )
            call._txn = txn
            await txn.start()
            response = await self._await_final(call, txn, deadline)
            if response.code in (401, 407) and call._auth is not None and attempt < 2 and not call.cancelled:
                try:
                    name, value, stale = _answer_challenge(response, call._auth, "INVITE", str(target))
                    if auth_headers and not stale:
                        return response  # our credentials were refused
                    auth_headers = {name: value}
                    call._auth_header = (name, value)
                except AuthError as e:
                    call.reason_detail = str(e)
                    return response
                # The call's clock leaves out our own time between the challenge and our answer to it:
                # a busy event loop is not the network's post-dial delay.
                call.started_at += time.monotonic() - _arrival(response)
                continue
            return response
        return response

    async def _await_final(self, call: Call, txn: _ClientTransaction, deadline: float) -> Response:
        cancel = asyncio.ensure_future(call._cancel_requested.wait())
        try:
            done, _ = await asyncio.wait([txn.final, cancel], timeout=max(0.0, deadline - time.monotonic()), return_when=asyncio.FIRST_COMPLETED)
        finally:
            cancel.cancel()
        if txn.final.done():
            return txn.final.result()
        return await self._cancel(call, txn)

    async def _cancel(self, call: Call, txn: _ClientTransaction) -> Response:
        """No answer in time (or asked to stop): CANCEL if the far end is ringing, then take the INVITE's final."""
        call.cancelled = True
        if not txn.proceeding:
            # §9.1: no CANCEL before a provisional; with none, the far end never saw us ringing.
            txn.settle(_synthetic(408, "Request Timeout (no response before the no-answer timeout)"))
            return txn.final.result()
        info = call._invite
        data = self._request(
            "CANCEL", info["target"], branch=info["branch"], peer=info["peer"], from_addr=f"{info['from_addr']};tag={call.local_tag}",
            to_addr=f"<{info['target']}>", call_id=call.call_id, cseq=info["cseq"], headers={},
        )
        call._record("sent", info["peer"], data)
        cancel_txn = _ClientTransaction(self, data, "CANCEL", info["branch"], info["peer"])
        await cancel_txn.start()
        done, _ = await asyncio.wait([txn.final], timeout=self.timers.b)
        if not done:
            txn.settle(_synthetic(408, "Request Timeout (no final response after CANCEL)"))
        return txn.final.result()

    async def _abandon(self, call: Call) -> None:
        """The dialling task was cancelled: cancel the INVITE and end the call cleanly."""
        txn = getattr(call, "_txn", None)
        if txn is not None and not txn.final.done():
            response = await self._cancel(call, txn)
            if 200 <= response.code < 300:
                info = call._invite
                self._settle_call(call, response, info["target"], info["peer"], info["from_addr"])
                await call.hangup()
        call._end("dialling cancelled")

    def _provisional(self, call: Call, response: Response) -> None:
        call.progress.append(Progress(_arrival(response) - call.started_at, response.code, response.phrase))
        if response.code in (180, 183) and response.body and call.negotiated is None:
            try:
                call._take_answer(response.body, answerer=False)
                call._start_media()
                call.early_media = True
            except sdp.SdpError as e:
                call._event("bad early SDP", str(e))

    def _settle_call(self, call: Call, response: Response, target: URI, first_hop: Peer, from_addr: str) -> None:
        call.status, call.reason = response.code, response.phrase
        if not call.progress or call.progress[-1].status != response.code:
            call.progress.append(Progress(_arrival(response) - call.started_at, response.code, response.phrase))
        if not 200 <= response.code < 300:
            call._end(f"{'cancelled' if call.cancelled and response.code == 487 else 'failed'}: {response.code} {response.phrase}")
            return
        contact = response.contact[0].uri if response.contact else target
        record_route = list(reversed(response.headers.getlist("Record-Route")))
        call._dialog = _Dialog(
            call_id=call.call_id,
            local_tag=call.local_tag,
            remote_tag=response.to_address.parameters.get("tag", ""),
            local_uri=from_addr,
            remote_uri=f"<{target}>",
            remote_target=contact,
            route_set=record_route,
            local_cseq=call._invite["cseq"],
            peer=self._first_hop(record_route, contact, first_hop),
        )
        ack = call._acks[call._invite["cseq"]] = self._in_dialog_request(call, "ACK", cseq=call._invite["cseq"])
        call._record("sent", call._dialog.peer, ack)
        self._send_now(ack, call._dialog.peer)
        call.answered_at = _arrival(response)
        try:
            if response.body:
                call._take_answer(response.body, answerer=False)
            call._start_media()
        except sdp.SdpError as e:
            call._event("bad SDP in 200 OK", str(e))
            call._watch(call.hangup())
            return
        expires = response.headers.get("Session-Expires")
        if expires and "refresher=uac" in expires.replace(" ", "").lower():
            interval = int(expires.split(";")[0].strip())
            call._watch(self._refresh_session(call, interval))

    async def _refresh_session(self, call: Call, interval: int) -> None:
        """RFC 4028: we are the refresher; re-INVITE at half the interval or the far end drops the call."""
        while not call.is_over:
            await asyncio.sleep(max(1.0, interval / 2))
            response = await self._in_dialog(call, "INVITE", body=call._local_sdp(), content_type="application/sdp")
            if response.code in (408, 481):
                await self._in_dialog(call, "BYE")
                call._end(f"session refresh failed: {response.code} {response.phrase}")

    # -- requests in a dialog

    def _in_dialog_request(
        self, call: Call, method: str, *, cseq: int | None = None, body: str | bytes = "", content_type: str = "", headers=None, branch: str | None = None
    ) -> bytes:
        dialog = call._dialog
        assert dialog is not None
        if cseq is None:
            dialog.local_cseq += 1
            cseq = dialog.local_cseq
        extra = dict(headers or {})
        if call._auth_header is not None and method != "ACK":
            extra.setdefault(*call._auth_header)
        return self._request(
            method, dialog.remote_target, branch=branch or _branch(), peer=dialog.peer,
            from_addr=f"{dialog.local_uri};tag={dialog.local_tag}", to_addr=f"{dialog.remote_uri};tag={dialog.remote_tag}",
            call_id=dialog.call_id, cseq=cseq, body=body, content_type=content_type, headers=extra, routes=dialog.route_set,
            contact=method in ("INVITE", "UPDATE"),
        )

    async def _in_dialog(self, call: Call, method: str, *, body: str | bytes = "", content_type: str = "") -> Response:
        """Send a request inside the call's dialog, answer one digest challenge, return the final response."""
        if call._dialog is None:
            return _synthetic(481, "Call/Transaction Does Not Exist (no dialog)")
        headers: dict[str, str] = {}
        for _ in range(2):
            branch = _branch()
            data = self._in_dialog_request(call, method, body=body, content_type=content_type, headers=headers, branch=branch)
            call._record("sent", call._dialog.peer, data)
            dialog = call._dialog
            txn = _ClientTransaction(
                self, data, method, branch, dialog.peer, ack=lambda r, data=data: self._ack_for_failure(data, r)
            )
            await txn.start()
            response = await txn.final
            if response.code in (401, 407) and call._auth is not None and not headers:
                try:
                    name, value, _ = _answer_challenge(response, call._auth, method, str(dialog.remote_target))
                    headers = {name: value}
                except AuthError:
                    return response
                continue
            if method == "INVITE" and 200 <= response.code < 300:
                ack = call._acks[dialog.local_cseq] = self._in_dialog_request(call, "ACK", cseq=dialog.local_cseq)
                self._send_now(ack, dialog.peer)
            return response
        return response

    # -- registering and pinging

    async def options(self, uri: str, *, proxy: str | None = None) -> tuple[Response, float]:
        """Ping `uri` with OPTIONS; the response (408 when nothing answers) and the round trip in seconds."""
        target = sip_uri(uri)
        peer = self._peer_for_uri(sip_uri(proxy) if proxy else target, None)
        started = time.monotonic()
        branch = _branch()
        data = self._request(
            "OPTIONS", target, branch=branch, peer=peer, from_addr=f"{self._local_address(None, None)};tag={_tag()}",
            to_addr=f"<{target}>", call_id=secrets.token_hex(12), cseq=next(self._cseq), headers={"Accept": "application/sdp"},
        )
        txn = _ClientTransaction(self, data, "OPTIONS", branch, peer)
        await txn.start()
        response = await txn.final
        return response, time.monotonic() - started

    async def register(self, registrar: str, *, user: str | None = None, auth: Credentials | None = None, expires: int = 300) -> Registration:
        """Register our contact for `user` at `registrar`; refreshed at 80% of the granted time until unregistered."""
        user = user or self.user
        registrar_uri = sip_uri(registrar)
        peer = self._peer_for_uri(registrar_uri, None)
        aor = f"<sip:{user}@{registrar_uri.host}>"
        call_id, tag = secrets.token_hex(12), _tag()

        async def send(expiry: int) -> Response:
            headers: dict[str, str] = {"Expires": str(expiry)}
            response = _synthetic(503, "Service Unavailable")
            for _ in range(2):
                branch = _branch()
                data = self._request(
                    "REGISTER", registrar_uri, branch=branch, peer=peer, from_addr=f"{aor};tag={tag}", to_addr=aor,
                    call_id=call_id, cseq=next(self._cseq), headers=headers, contact=True, contact_user=user,
                )
                txn = _ClientTransaction(self, data, "REGISTER", branch, peer)
                await txn.start()
                response = await txn.final
                if response.code in (401, 407) and auth is not None and len(headers) == 1:
                    try:
                        name, value, _ = _answer_challenge(response, auth, "REGISTER", str(registrar_uri))
                        headers[name] = value
                    except AuthError:
                        return response
                    continue
                return response
            return response

        response = await send(expires)
        granted = expires
        for contact in response.contact:
            if "expires" in contact.parameters and contact.uri.user == user:
                granted = int(contact.parameters["expires"])
        if response.headers.get("Expires", "").isdigit():
            granted = int(response.headers["Expires"])
        registration = Registration(response.code, response.phrase, granted, self._contact(user))

        async def refresh() -> None:
            while True:
                await asyncio.sleep(max(1.0, registration.expires * 0.8))
                refreshed = await send(expires)
                registration.status, registration.reason = refreshed.code, refreshed.phrase

        if registration.ok:
            registration._refresh = asyncio.get_running_loop().create_task(refresh())
            registration._unregister = lambda: send(0)
            self._registrations.append(registration)
        return registration

    # -- message building

    def _local_address(self, user: str | None, display_name: str | None) -> str:
        name = display_name if display_name is not None else self.display_name
        uri = f"sip:{user or self.user}@{self.host}:{self.port}"
        return f'"{name}" <{uri}>' if name else f"<{uri}>"

    def _contact(self, user: str | None = None, transport: str = "UDP") -> str:
        suffix = ";transport=tcp" if transport == "TCP" else ""
        return f"<sip:{user or self.user}@{self.host}:{self.port}{suffix}>"

    def _request(
        self, method: str, uri: URI, *, branch: str, peer: Peer, from_addr: str, to_addr: str, call_id: str, cseq: int,
        body: str | bytes = "", content_type: str = "", headers: dict[str, str] | None = None, routes: list[str] | None = None,
        contact: bool = False, contact_user: str | None = None,
    ) -> bytes:
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/{peer.transport} {self.host}:{self.port};branch={branch};rport",
            "Max-Forwards: 70",
        ]
        lines += [f"Route: {route}" for route in routes or ()]
        lines += [f"From: {from_addr}", f"To: {to_addr}", f"Call-ID: {call_id}", f"CSeq: {cseq} {method}"]
        if contact:
            lines.append(f"Contact: {self._contact(contact_user, peer.transport)}")
        if method in ("INVITE", "OPTIONS", "UPDATE"):
            lines += [f"Allow: {ALLOW}", "Supported: timer"]
        lines.append(f"User-Agent: {USER_AGENT}")
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        if body:
            lines.append(f"Content-Type: {content_type}")
        encoded = body.encode() if isinstance(body, str) else body
        lines.append(f"Content-Length: {len(encoded)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + encoded

    def _response(
        self, request: Request, status: int, reason: str, *, to_tag: str | None = None, body: str = "",
        contact: bool = False, headers: dict[str, str] | None = None,
    ) -> bytes:
        lines = [f"SIP/2.0 {status} {reason}"]
        lines += [f"Via: {via}" for via in request.headers.getlist("Via")]
        if 100 < status < 300 and request.method == "INVITE":
            lines += [f"Record-Route: {rr}" for rr in request.headers.getlist("Record-Route")]
        to = request.headers["To"]
        if to_tag and status > 100 and ";tag=" not in to:
            to = f"{to};tag={to_tag}"
        lines += [f"From: {request.headers['From']}", f"To: {to}", f"Call-ID: {request.call_id}", f"CSeq: {request.headers['CSeq']}"]
        if contact:
            lines.append(f"Contact: {self._contact()}")
        if request.method in ("INVITE", "OPTIONS"):
            lines.append(f"Allow: {ALLOW}")
        lines.append(f"User-Agent: {USER_AGENT}")
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        if body:
            lines.append("Content-Type: application/sdp")
        encoded = body.encode()
        lines.append(f"Content-Length: {len(encoded)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + encoded

    def _ack_for_failure(self, invite: bytes, response: Response) -> bytes:
        """§17.1.1.3: the ACK for a 3xx-6xx is part of the INVITE transaction: same branch, Route and Request-URI."""
        head = invite.split(b"\r\n\r\n", 1)[0].decode()
        lines = head.split("\r\n")
        method_line = lines[0].replace("INVITE ", "ACK ", 1)
        kept = []
        seen_via = False
        for line in lines[1:]:
            name = line.split(":", 1)[0].strip().lower()
            if name in ("via", "v"):
                if not seen_via:
                    kept.append(line)
                    seen_via = True
            elif name in ("route", "from", "f", "call-id", "i", "max-forwards"):
                kept.append(line)
            elif name == "cseq":
                kept.append(line.replace("INVITE", "ACK"))
            elif name in ("authorization", "proxy-authorization"):
                kept.append(line)
        kept.append(f"To: {response.headers['To']}")
        kept.append("Content-Length: 0")
        return ("\r\n".join([method_line, *kept]) + "\r\n\r\n").encode()

    # -- where messages go

    def _peer_for_uri(self, uri: URI, default: Peer | None) -> Peer:
        transport = uri.parameters.get("transport", "")
        transport = transport.upper() if transport else (default.transport if default else self.default_transport)
        if uri.scheme == "sips":
            transport = "TCP"  # TLS is not supported; sips reaches TCP so the failure is visible, not silent
        return Peer(transport, uri.host, uri.port or 5060)

    def _first_hop(self, routes: list[str], target: URI, default: Peer) -> Peer:
        if routes:
            first = Address.parse(routes[0]).uri
            return self._peer_for_uri(first, default)
        return self._peer_for_uri(target, default)

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _send(self, data: bytes, peer: Peer) -> None:
        await self._transport.send(data, peer)

    def _send_now(self, data: bytes, peer: Peer) -> None:
        self._transport.send_now(data, peer)

    def _timeout_reason(self, peer: Peer) -> str:
        garbage = self._garbage.get(peer.addr)
        if garbage:
            count, excerpt = garbage
            return f"Request Timeout (no SIP response from {peer}; {count} unreadable message(s), first: {excerpt!r})"
        return f"Request Timeout (no response from {peer} within {self.timers.b:g} s)"

    def _forget(self, call: Call) -> None:
        # Kept for Timer B so retransmitted 2xx and late BYEs still find the dialog; then dropped.
        asyncio.get_running_loop().call_later(
            min(self.timers.b, 32.0), self._calls.pop, (call.call_id, call.local_tag), None
        )

    # -- receiving

    def _on_garbage(self, peer: Peer, data: bytes, why: str) -> None:
        self.garbage_received += 1
        count, excerpt = self._garbage.get(peer.addr, (0, ""))
        self._garbage[peer.addr] = (count + 1, excerpt or data[:80].decode("utf-8", "replace"))
        if count == 0:
            log.warning("sip.garbage", peer=str(peer), why=why, excerpt=data[:80].decode("utf-8", "replace"))

    def _on_message(self, message: Message, peer: Peer, raw: bytes) -> None:
        try:
            if isinstance(message, Response):
                self._on_response(message, peer, raw)
            else:
                self._on_request(message, peer, raw)
        except (ValueError, KeyError, IndexError) as e:
            # Parsed as SIP but missing what a SIP message must have (Via, CSeq, Call-ID...).
            self._on_garbage(peer, raw, f"incomplete SIP message: {e!r}")

    def _on_response(self, response: Response, peer: Peer, raw: bytes) -> None:
        branch = response.via[0].parameters.get("branch", "")
        method = response.cseq.method
        txn = self._client.get((branch, method))
        call = self._calls.get((response.call_id, response.from_address.parameters.get("tag", "")))
        if call is not None:
            call._record("received", peer, raw)
            ack = call._acks.get(response.cseq.sequence) if method == "INVITE" and 200 <= response.code < 300 else None
            if ack is not None and call._dialog is not None:
                self._send_now(ack, call._dialog.peer)  # a retransmitted 2xx: our ACK was lost
                return
        if txn is not None:
            txn.receive(response)

    def _on_request(self, request: Request, peer: Peer, raw: bytes) -> None:
        method = request.method
        branch = request.via[0].parameters.get("branch", "")
        if method == "ACK":
            server = self._server.get(branch)
            if server is not None:
                server.acked.set()  # ACK for a non-2xx final: same transaction
                return
            call = self._dialog_call(request)
            if call is not None and call._server is not None:
                call._record("received", peer, raw)
                call._server.acked.set()
                if call.negotiated is None and request.body:
                    call._take_answer(request.body, answerer=False)
                    call._start_media()
            return
        if method == "CANCEL":
            self._on_cancel(request, peer, branch, raw)
            return
        server = self._server.get(branch)
        if method == "INVITE" and server is not None:
            if server.last is not None:
                self._send_now(server.last, peer)  # a retransmitted INVITE
            return
        to_tag = request.to_address.parameters.get("tag")
        if to_tag:
            call = self._calls.get((request.call_id, to_tag))
            if call is None:
                self._send_now(self._response(request, 481, "Call/Transaction Does Not Exist"), peer)
                return
            call._record("received", peer, raw)
            self._in_dialog_request_received(call, request, peer)
            return
        if method == "INVITE":
            self._incoming_invite(request, peer, raw)
        elif method == "OPTIONS":
            self._send_now(self._response(request, 200, "OK", to_tag=_tag(), headers={"Accept": "application/sdp"}), peer)
        elif method == "BYE":
            self._send_now(self._response(request, 481, "Call/Transaction Does Not Exist"), peer)
        else:
            self._send_now(self._response(request, 405, "Method Not Allowed", to_tag=_tag(), headers={"Allow": ALLOW}), peer)

    def _dialog_call(self, request: Request) -> Call | None:
        return self._calls.get((request.call_id, request.to_address.parameters.get("tag", "")))

    def _forget_server(self, server: _ServerInvite) -> None:
        if self._server.get(server.branch) is server:
            del self._server[server.branch]

    def _on_cancel(self, request: Request, peer: Peer, branch: str, raw: bytes) -> None:
        server = self._server.get(branch)
        if server is None:
            self._send_now(self._response(request, 481, "Call/Transaction Does Not Exist"), peer)
            return
        self._send_now(self._response(request, 200, "OK", to_tag=_tag()), peer)
        call = getattr(server, "call", None)
        if call is not None and not server.final_sent:
            call._record("received", peer, raw)
            call._respond_invite(487, "Request Terminated")
            call.status, call.reason, call.cancelled = 487, "Request Terminated", True
            call._end("cancelled by the caller")

    def _in_dialog_request_received(self, call: Call, request: Request, peer: Peer) -> None:
        method = request.method
        dialog = call._dialog
        if dialog is not None:
            if request.cseq.sequence < dialog.remote_cseq and method != "ACK":
                self._send_now(self._response(request, 500, "Server Internal Error", headers={"Retry-After": "1"}), peer)
                return
            dialog.remote_cseq = request.cseq.sequence
        if method == "BYE":
            self._send_now(self._response(request, 200, "OK"), peer)
            call._end("remote bye")
        elif method in ("INVITE", "UPDATE"):
            # A re-INVITE / UPDATE (hold, session refresh, media change): accept, keep our media, follow theirs.
            call._event(f"re-{method}" if method == "INVITE" else method, "")
            body = ""
            if request.body:
                try:
                    call._sdp_version += 1
                    call._take_answer(request.body, answerer=True)
                    call._start_media()
                    body = call._local_sdp()
                except sdp.SdpError as e:
                    self._send_now(self._response(request, 488, "Not Acceptable Here", headers={"Warning": f'399 cxtest "{e}"'}), peer)
                    return
            elif method == "INVITE":
                body = call._local_sdp()
            headers = {}
            expires = request.headers.get("Session-Expires")
            if expires:
                headers = {"Session-Expires": f"{expires.split(';')[0].strip()};refresher=uac", "Require": "timer"}
            data = self._response(request, 200, "OK", body=body, contact=True, headers=headers)
            call._record("sent", peer, data)
            if method == "INVITE":
                server = _ServerInvite(self, request, peer)
                self._server[server.branch] = server
                server.respond(data, final=True)
                call._server = server
            else:
                self._send_now(data, peer)
        elif method == "INFO":
            digit = dtmf.parse_info_body(request.headers.get("Content-Type", ""), request.body)
            self._send_now(self._response(request, 200, "OK"), peer)
            if digit is not None:
                call._digit(dtmf.ReceivedDigit(digit, 0, time.monotonic()), "info")
        elif method == "REFER":
            call._event("REFER", request.headers.get("Refer-To", ""))
            self._send_now(self._response(request, 202, "Accepted"), peer)
        elif method in ("OPTIONS", "NOTIFY"):
            self._send_now(self._response(request, 200, "OK"), peer)
        else:
            self._send_now(self._response(request, 501, "Not Implemented"), peer)

    def _incoming_invite(self, request: Request, peer: Peer, raw: bytes) -> None:
        server = _ServerInvite(self, request, peer)
        self._server[server.branch] = server
        call = Call(self, "uas", str(request.from_address.uri))
        call.call_id = request.call_id
        call._codecs = sdp.codecs_named(("PCMU", "PCMA"))
        call._server = server
        call.dialled_user = request.uri.user or ""
        server.call = call
        call._record("received", peer, raw)
        self._calls[(call.call_id, call.local_tag)] = call
        server.respond(self._response(request, 100, "Trying"), final=False)
        if self.on_invite is None:
            call._respond_invite(480, "Temporarily Unavailable")
            call._end("no handler for incoming calls")
            return
        self._spawn(self._handle(call))

    async def _handle(self, call: Call) -> None:
        try:
            await self.on_invite(call)
        except CallEnded:
            pass
        except Exception:
            log.exception("sip.handler_failed", call_id=call.call_id)
            if not call.is_over and not call._server.final_sent:
                call._respond_invite(500, "Server Internal Error")
                call._end("handler failed")
