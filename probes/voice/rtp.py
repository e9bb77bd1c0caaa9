"""RTP (RFC 3550) for hundreds of calls in one process: packets, receive statistics,
one shared 20 ms media clock per event loop, and one stream (socket) per call.

Per packet the work is one struct pack or unpack, one codec call, one socket call and
a few counter updates: no task, no log line, no timer per packet or per call.
"""

from __future__ import annotations

import asyncio
import random
import struct
import time
import weakref
from typing import Any, Callable, ClassVar, NamedTuple, Protocol

from probes.voice.audio import FRAME_BYTES, FRAME_SAMPLES, Recording, Source
from probes.voice.g711 import Codec, by_payload_type

_HEADER = struct.Struct("!BBHII")
_EXTENSION_LENGTH = struct.Struct("!H")
_VERSION_2 = 0x80
_MARKER = 0x80
_SEQ_MOD = 1 << 16
_TIMESTAMP_MOD = 1 << 32

Address = tuple[Any, ...]  # (host, port), or the 4-tuple of an IPv6 socket


class RtpPacket(NamedTuple):
    payload_type: int
    marker: bool
    seq: int
    timestamp: int
    ssrc: int
    payload: bytes


def pack(payload_type: int, seq: int, timestamp: int, ssrc: int, payload: bytes, marker: bool = False) -> bytes:
    second = payload_type | (_MARKER if marker else 0)
    return _HEADER.pack(_VERSION_2, second, seq % _SEQ_MOD, timestamp % _TIMESTAMP_MOD, ssrc) + payload


def parse(datagram: bytes) -> RtpPacket:
    """One RTP packet, CSRCs, header extension and padding removed; ValueError if it is not RTP."""
    if len(datagram) < _HEADER.size:
        raise ValueError(f"not RTP: {len(datagram)} bytes is shorter than the 12-byte header")
    first, second, seq, timestamp, ssrc = _HEADER.unpack_from(datagram)
    if first >> 6 != 2:
        raise ValueError(f"not RTP: version {first >> 6}, expected 2")
    start = _HEADER.size + 4 * (first & 0x0F)
    if first & 0x10:
        if len(datagram) < start + 4:
            raise ValueError("not RTP: header extension cut short")
        start += 4 + 4 * _EXTENSION_LENGTH.unpack_from(datagram, start + 2)[0]
    end = len(datagram)
    if first & 0x20:
        padding = datagram[-1]
        if padding == 0:
            raise ValueError("not RTP: padding flag set with a zero padding count")
        end -= padding
    if end < start:
        raise ValueError(f"not RTP: header and padding need {start + len(datagram) - end} bytes, got {len(datagram)}")
    return RtpPacket(second & 0x7F, bool(second & _MARKER), seq, timestamp, ssrc, datagram[start:end])


class ReceiveStats:
    """What arrived on one stream: RFC 3550 A.1 sequence accounting and A.8 interarrival jitter.

    Counting restarts when the SSRC changes or the sender restarts its sequence numbers;
    the totals (received, expected, lost, duplicates, out_of_order) include the earlier
    ones, jitter is the current SSRC's. A duplicate is recognised when it is at most
    DUPLICATE_WINDOW packets behind the newest; it does not count as received.
    """

    MAX_DROPOUT = 3000
    MAX_MISORDER = 100
    DUPLICATE_WINDOW = 64

    def __init__(self, clock_rate: int = 8000):
        self.clock_rate = clock_rate
        self.ssrc: int | None = None
        self.jitter = 0.0  # timestamp units
        self.max_gap_ms = 0.0
        self._last_arrival: float | None = None
        self._past_received = self._past_expected = self._past_lost = 0
        self._past_duplicates = self._past_out_of_order = 0
        self._restart(None, 0)

    def _restart(self, ssrc: int | None, seq: int) -> None:
        if self.ssrc is not None:
            self._past_received += self._received
            self._past_expected += self._expected()
            self._past_lost += max(0, self._expected() - self._received)
            self._past_duplicates += self._duplicates
            self._past_out_of_order += self._out_of_order
        self.ssrc = ssrc
        self.jitter = 0.0
        self._base_seq = seq
        self._max_seq = seq
        self._cycles = 0
        self._bad_seq = _SEQ_MOD + 1  # no sequence number equals it
        self._received = 0
        self._duplicates = 0
        self._out_of_order = 0
        self._seen = 1  # bit n: the packet n behind max_seq arrived
        self._jitter_timestamp: int | None = None
        self._jitter_arrival = 0.0

    def update(self, ssrc: int, seq: int, timestamp: int | None, arrival: float) -> None:
        """Account one packet; timestamp None for packets whose timestamp is not their
        sampling instant (RFC 4733 events), which then stay out of the jitter."""
        if self._last_arrival is not None:
            gap_ms = (arrival - self._last_arrival) * 1000
            if gap_ms > self.max_gap_ms:
                self.max_gap_ms = gap_ms
        self._last_arrival = arrival
        if ssrc != self.ssrc:
            self._restart(ssrc, seq)
        elif not self._count_seq(seq):
            return
        self._received += 1
        if timestamp is not None:
            self._update_jitter(timestamp, arrival)

    def _count_seq(self, seq: int) -> bool:
        """RFC 3550 A.1 update_seq, plus duplicates; False for a packet that does not count."""
        ahead = (seq - self._max_seq) % _SEQ_MOD
        if ahead == 0:
            self._duplicates += 1
            return False
        if ahead < self.MAX_DROPOUT:
            if seq < self._max_seq:
                self._cycles += _SEQ_MOD
            self._max_seq = seq
            self._seen = ((self._seen << ahead) | 1) & ((1 << self.DUPLICATE_WINDOW) - 1)
            return True
        if ahead <= _SEQ_MOD - self.MAX_MISORDER:
            # A big jump: the sender restarted if the next packet follows it, else it is a stray.
            if seq == self._bad_seq:
                self._restart(self.ssrc, seq)
                return True
            self._bad_seq = (seq + 1) % _SEQ_MOD
            return False
        behind = _SEQ_MOD - ahead
        if behind < self.DUPLICATE_WINDOW:
            if self._seen >> behind & 1:
                self._duplicates += 1
                return False
            self._seen |= 1 << behind
        self._out_of_order += 1
        return True

    def _update_jitter(self, timestamp: int, arrival: float) -> None:
        if self._jitter_timestamp is not None:
            advanced = (timestamp - self._jitter_timestamp) % _TIMESTAMP_MOD
            if advanced >= _TIMESTAMP_MOD // 2:
                advanced -= _TIMESTAMP_MOD
            d = abs((arrival - self._jitter_arrival) * self.clock_rate - advanced)
            self.jitter += (d - self.jitter) / 16
        self._jitter_timestamp = timestamp
        self._jitter_arrival = arrival

    def _expected(self) -> int:
        return self._cycles + self._max_seq - self._base_seq + 1 if self.ssrc is not None else 0

    @property
    def received(self) -> int:
        return self._past_received + self._received

    @property
    def expected(self) -> int:
        return self._past_expected + self._expected()

    @property
    def lost(self) -> int:
        return self._past_lost + max(0, self._expected() - self._received)

    @property
    def duplicates(self) -> int:
        return self._past_duplicates + self._duplicates

    @property
    def out_of_order(self) -> int:
        return self._past_out_of_order + self._out_of_order

    @property
    def loss_fraction(self) -> float:
        expected = self.expected
        return self.lost / expected if expected else 0.0

    @property
    def jitter_ms(self) -> float:
        return self.jitter * 1000 / self.clock_rate


class Tickable(Protocol):
    def tick(self) -> None: ...


class MediaClock:
    """The one 20 ms clock of an event loop; every registered stream sends on its ticks.

    Ticks are scheduled on an absolute grid (start + n * PERIOD), so lateness does not
    accumulate. After a late wake-up the missed ticks run back to back, at most
    MAX_CATCH_UP of them; older ones are skipped and counted in late_ticks_skipped.
    tick_index counts skipped ticks too, so a stream's RTP timestamp keeps real time.
    """

    PERIOD = 0.020
    MAX_CATCH_UP = 5
    _clocks: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, MediaClock]] = weakref.WeakKeyDictionary()

    def __init__(self) -> None:
        # The loop is held only while ticking: the registry keys clocks by loop, weakly.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._streams: dict[Tickable, None] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._started_at = 0.0
        self._ticks_since_start = 0
        self.tick_index = 0
        self.late_ticks_skipped = 0

    @classmethod
    def for_loop(cls) -> MediaClock:
        """The running loop's clock."""
        loop = asyncio.get_running_loop()
        clock = cls._clocks.get(loop)
        if clock is None:
            clock = cls._clocks[loop] = cls()
        return clock

    @property
    def running(self) -> bool:
        return self._timer is not None

    def add(self, stream: Tickable) -> None:
        self._streams[stream] = None
        if self._timer is None:
            self._loop = asyncio.get_running_loop()
            self._started_at = self._loop.time()
            self._ticks_since_start = 0
            self._timer = self._loop.call_at(self._started_at, self._run)

    def remove(self, stream: Tickable) -> None:
        self._streams.pop(stream, None)
        if not self._streams and self._timer is not None:
            self._stop()

    def _stop(self) -> None:
        self._timer.cancel()  # type: ignore[union-attr]
        self._timer = None
        self._loop = None

    def _run(self) -> None:
        timer, loop = self._timer, self._loop
        assert loop is not None
        elapsed = int((loop.time() - self._started_at) / self.PERIOD)
        due = max(1, elapsed + 1 - self._ticks_since_start)  # call_at may fire a hair early
        if due > self.MAX_CATCH_UP + 1:
            skipped = due - self.MAX_CATCH_UP - 1
            self.late_ticks_skipped += skipped
            self._ticks_since_start += skipped
            self.tick_index += skipped
            due = self.MAX_CATCH_UP + 1
        for _ in range(due):
            for stream in tuple(self._streams):  # a tick may close a stream
                try:
                    stream.tick()
                except Exception as exc:
                    # A bug in one call must not silence the others: drop that stream, say why.
                    self._streams.pop(stream, None)
                    loop.call_exception_handler(
                        {"message": f"media clock: {stream!r} failed to tick and was removed", "exception": exc}
                    )
            self._ticks_since_start += 1
            self.tick_index += 1
        if self._timer is not timer:
            return  # the last stream left during the ticks
        if not self._streams:
            self._stop()  # the last stream failed its tick
            return
        self._timer = loop.call_at(self._started_at + self._ticks_since_start * self.PERIOD, self._run)


class StreamClosed(Exception):
    """The stream closed (the call ended) before a play or an event finished."""


class OutgoingEvent(Protocol):
    """One RFC 4733 packet to send, as the dtmf module's sender makes it."""

    @property
    def payload(self) -> bytes: ...
    @property
    def marker(self) -> bool: ...
    @property
    def new_event(self) -> bool: ...  # the first packet of an event: its timestamp is taken now


class EventSender(Protocol):
    @property
    def done(self) -> bool: ...

    def tick(self) -> list[OutgoingEvent] | None:
        """The packets to send this tick instead of audio, or None to send audio."""
        ...


def _settle(future: asyncio.Future[bool] | None, outcome: bool | BaseException) -> None:
    if future is None or future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class RtpStream(asyncio.DatagramProtocol):
    """One call's media: a UDP socket that sends a packet every clock tick and records what arrives.

    It sends the frames of the source being played, or encoded silence when none is (a
    far end's jitter buffer and NATs expect a steady stream), or, while send_events()
    runs, the event packets it hands out. Received audio goes to `recording` (decoded
    by its own payload type, so a far end that answers PCMA to a PCMU offer is still
    heard), RFC 4733 packets to `on_event(payload, rtp_timestamp, arrival)`, and every
    valid packet to `stats`. Symmetric RTP: until update_remote() says otherwise, the
    first valid packet from an address other than the SDP one latches sending there.

    Make one with `await RtpStream.open()`.
    """

    def __init__(self) -> None:
        self.recording = Recording()
        self.stats = ReceiveStats()
        self.on_event: Callable[[bytes, int, float], None] | None = None
        self.local_port = 0
        self.sdp_remote: Address | None = None
        self.remote: Address | None = None  # where packets go: the SDP address or the latched one
        self.latched: Address | None = None
        self.last_received_at: float | None = None
        self.packets_sent = 0
        self.bytes_sent = 0  # RTP header and payload
        self.garbage_received = 0
        self.other_payload_received = 0  # neither G.711 nor the event payload type: comfort noise, say
        self._loop = asyncio.get_running_loop()
        self._clock = MediaClock.for_loop()
        self._transport: asyncio.DatagramTransport | None = None
        self._closed = False
        self.ssrc = random.getrandbits(32)
        self._seq = random.getrandbits(16)
        self._timestamp_base = random.getrandbits(32)
        self._event_timestamp = 0
        # Set by update_remote(), before the first tick.
        self._audio_payload_type: int
        self._encode: Callable[[bytes], bytes]
        self._silence: bytes
        self._dtmf_payload_type: int | None = None
        self._source: Source | None = None
        self._playing: asyncio.Future[bool] | None = None
        self._sender: EventSender | None = None
        self._sending: asyncio.Future[bool] | None = None

    @classmethod
    async def open(cls, local_host: str = "127.0.0.1") -> RtpStream:
        """A stream on a port the OS picks; it sends nothing until start()."""
        stream = cls()
        await stream._loop.create_datagram_endpoint(lambda: stream, local_addr=(local_host, 0))
        return stream

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self.local_port = transport.get_extra_info("sockname")[1]

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    def start(self, remote: Address, codec: Codec, dtmf_payload_type: int | None) -> None:
        """Begin sending to the SDP address with the negotiated codec and event payload type."""
        if self._closed:
            raise StreamClosed("the RTP stream is closed")
        self.update_remote(remote, codec, dtmf_payload_type)
        self._clock.add(self)

    def update_remote(self, remote: Address, codec: Codec, dtmf_payload_type: int | None) -> None:
        """A new SDP answer or offer (re-INVITE): new address and codec, latching starts over."""
        self.sdp_remote = self.remote = remote
        self.latched = None
        self._audio_payload_type = codec.payload_type
        self._encode = codec.encode
        self._silence = codec.encode(bytes(FRAME_BYTES))
        self._dtmf_payload_type = dtmf_payload_type

    def stop(self) -> None:
        """Stop sending; the socket stays open and keeps receiving. A pending play waits for start()."""
        self._clock.remove(self)

    async def play(self, source: Source) -> bool:
        """Send a source; True once all of it is sent, False if a newer play replaced it.

        Raises StreamClosed if the stream closes first. Cancelling the caller stops the playback.
        """
        if self._closed:
            raise StreamClosed("the RTP stream is closed")
        _settle(self._playing, False)
        done: asyncio.Future[bool] = self._loop.create_future()
        self._source, self._playing = source, done
        try:
            return await done
        finally:
            if self._playing is done:
                self._source = self._playing = None

    async def send_events(self, sender: EventSender) -> bool:
        """Send RFC 4733 packets in place of audio until the sender is done; True then, False
        if a newer send_events replaced it. Raises StreamClosed if the stream closes first.

        The source being played pauses while event packets go out and resumes after.
        """
        if self._closed:
            raise StreamClosed("the RTP stream is closed")
        if self._dtmf_payload_type is None:
            raise ValueError("no telephone-event payload type was negotiated: RFC 4733 events cannot be sent")
        _settle(self._sending, False)
        done: asyncio.Future[bool] = self._loop.create_future()
        self._sender, self._sending = sender, done
        try:
            return await done
        finally:
            if self._sending is done:
                self._sender = self._sending = None

    def tick(self) -> None:
        """Send this tick's packet(s). Called by the MediaClock; must stay cheap.

        A source or sender that raises fails its own awaitable; the clock and the other calls go on.
        """
        timestamp = (self._timestamp_base + FRAME_SAMPLES * self._clock.tick_index) % _TIMESTAMP_MOD
        if self._sender is not None:
            try:
                if self._send_events_tick(self._sender, timestamp):
                    return
            except Exception as exc:
                self._end_sending(exc)
        payload = self._silence
        if self._source is not None:
            try:
                frame = self._source.read_frame()
                if frame is None:
                    self._end_playing(True)
                else:
                    payload = self._encode(frame)
            except Exception as exc:
                self._end_playing(exc)
        self._send(self._audio_payload_type, timestamp, payload)

    def _send_events_tick(self, sender: EventSender, timestamp: int) -> bool:
        """Send the sender's packets for this tick; False when it has none and audio goes instead."""
        packets = sender.tick()
        if sender.done:
            self._end_sending(True)
        if packets is None:
            return False
        for packet in packets:
            if packet.new_event:
                self._event_timestamp = timestamp
            payload_type = self._dtmf_payload_type | (_MARKER if packet.marker else 0)  # type: ignore[operator]
            self._send(payload_type, self._event_timestamp, packet.payload)
        return True

    def _end_playing(self, outcome: bool | BaseException) -> None:
        _settle(self._playing, outcome)
        self._source = self._playing = None

    def _end_sending(self, outcome: bool | BaseException) -> None:
        _settle(self._sending, outcome)
        self._sender = self._sending = None

    def _send(self, payload_type_and_marker: int, timestamp: int, payload: bytes) -> None:
        datagram = _HEADER.pack(_VERSION_2, payload_type_and_marker, self._seq, timestamp, self.ssrc) + payload
        self._seq = (self._seq + 1) % _SEQ_MOD
        self._transport.sendto(datagram, self.remote)  # type: ignore[union-attr]
        self.packets_sent += 1
        self.bytes_sent += len(datagram)

    def datagram_received(self, data: bytes, addr: Address) -> None:  # type: ignore[override]
        arrival = time.monotonic()
        try:
            payload_type, _, seq, timestamp, ssrc, payload = parse(data)
        except ValueError:
            self.garbage_received += 1
            return
        if self.latched is None and addr != self.sdp_remote:
            self.latched = self.remote = addr
        self.last_received_at = arrival
        if payload_type == self._dtmf_payload_type:
            self.stats.update(ssrc, seq, None, arrival)
            if self.on_event is not None:
                self.on_event(payload, timestamp, arrival)
            return
        self.stats.update(ssrc, seq, timestamp, arrival)
        codec = by_payload_type(payload_type)
        if codec is None:
            self.other_payload_received += 1
        else:
            self.recording.add(timestamp, arrival, payload, codec)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop sending and close the socket; a pending play or send_events raises StreamClosed."""
        if self._closed:
            return
        self._closed = True
        self.stop()
        if self._transport is not None:
            self._transport.close()
        self._end_playing(StreamClosed("the RTP stream was closed"))
        self._end_sending(StreamClosed("the RTP stream was closed"))
