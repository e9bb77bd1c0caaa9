"""SDP offer/answer (RFC 3264) for one audio stream: PCMU, PCMA and telephone-event.

Hand-written on purpose: the only maintained Python SDP code lives inside aiortc,
which drags in PyAV and cryptography for WebRTC; a telephony offer/answer is
one `m=audio` line, a few attributes and a codec choice.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from dataclasses import dataclass, field

from probes.voice.g711 import CODECS, Codec

DTMF_PAYLOAD_TYPE = 101
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
ANSWER_DIRECTION = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}
_STATIC = {0: ("PCMU", 8000), 8: ("PCMA", 8000)}
_versions = itertools.count(int(time.time()))


@dataclass(frozen=True)
class AudioDescription:
    """The audio stream one side of a call described: where to send, what it can decode."""

    host: str
    port: int
    formats: tuple[int, ...]
    rtpmap: dict[int, tuple[str, int]] = field(default_factory=dict)
    direction: str = "sendrecv"
    ptime: int | None = None

    @property
    def rejected(self) -> bool:
        return self.port == 0

    def payload_type(self, encoding: str) -> int | None:
        for pt in self.formats:
            name, rate = self.rtpmap.get(pt, _STATIC.get(pt, ("", 0)))
            if name.upper() == encoding.upper() and rate == 8000:
                return pt
        return None


@dataclass(frozen=True)
class Media:
    """What offer/answer settled on: where our RTP goes and in which codec."""

    remote: tuple[str, int]
    codec: Codec
    dtmf_payload_type: int | None
    direction: str


class SdpError(ValueError):
    """The SDP cannot be used: no audio line, no common codec, unreadable lines."""


def parse(text: str | bytes) -> AudioDescription:
    """Read the first audio stream of a session description."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    session_host = ""
    session_direction = "sendrecv"
    audio: dict | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if len(line) < 2 or line[1] != "=":
            continue
        kind, value = line[0], line[2:]
        if kind == "m":
            if audio is not None:
                break  # only the first audio stream is ours
            parts = value.split()
            if len(parts) < 4 or parts[0] != "audio":
                continue
            try:
                port = int(parts[1].split("/")[0])
                formats = tuple(int(f) for f in parts[3:] if f.isdigit())
            except ValueError:
                raise SdpError(f"unreadable media line: m={value}") from None
            audio = {"port": port, "formats": formats, "rtpmap": {}, "host": "", "direction": None, "ptime": None}
        elif kind == "c":
            host = value.split()[-1].split("/")[0]
            if audio is None:
                session_host = host
            else:
                audio["host"] = host
        elif kind == "a":
            name, _, arg = value.partition(":")
            if name in DIRECTIONS:
                if audio is None:
                    session_direction = name
                else:
                    audio["direction"] = name
            elif audio is not None and name == "rtpmap":
                pt, _, encoding = arg.partition(" ")
                codec, _, rate = encoding.partition("/")
                if pt.isdigit():
                    audio["rtpmap"][int(pt)] = (codec, int(rate.split("/")[0]) if rate[:1].isdigit() else 8000)
            elif audio is not None and name == "ptime" and arg.strip().isdigit():
                audio["ptime"] = int(arg)
    if audio is None:
        raise SdpError("no audio stream (m=audio) in the session description")
    host = audio["host"] or session_host
    if not host:
        raise SdpError("no connection address (c=) for the audio stream")
    return AudioDescription(
        host=host,
        port=audio["port"],
        formats=audio["formats"],
        rtpmap=audio["rtpmap"],
        direction=audio["direction"] or session_direction,
        ptime=audio["ptime"],
    )


def describe(
    host: str,
    port: int,
    codecs: tuple[Codec, ...],
    dtmf_payload_type: int | None = DTMF_PAYLOAD_TYPE,
    *,
    session_id: int | None = None,
    version: int | None = None,
    direction: str = "sendrecv",
) -> str:
    """Our session description: one audio stream, codecs in preference order, then telephone-event."""
    session_id = session_id if session_id is not None else next(_versions)
    version = version if version is not None else session_id
    formats = [c.payload_type for c in codecs] + ([dtmf_payload_type] if dtmf_payload_type is not None else [])
    lines = [
        "v=0",
        f"o=cxtest {session_id} {version} IN IP4 {host}",
        "s=cxtest",
        f"c=IN IP4 {host}",
        "t=0 0",
        f"m=audio {port} RTP/AVP {' '.join(map(str, formats))}",
    ]
    lines += [f"a=rtpmap:{c.payload_type} {c.name}/8000" for c in codecs]
    if dtmf_payload_type is not None:
        lines += [f"a=rtpmap:{dtmf_payload_type} telephone-event/8000", f"a=fmtp:{dtmf_payload_type} 0-16"]
    lines += ["a=ptime:20", f"a={direction}"]
    return "\r\n".join(lines) + "\r\n"


def negotiate(remote: AudioDescription, codecs: tuple[Codec, ...], *, answerer: bool) -> Media:
    """The codec both sides speak: the answerer keeps its own preference order, the offerer takes the answer's."""
    if remote.rejected:
        raise SdpError("the far end rejected the audio stream (port 0)")
    if answerer:
        chosen = next((c for c in codecs if remote.payload_type(c.name) is not None), None)
    else:
        ours = {c.name: c for c in codecs}
        chosen = next(
            (ours[name] for pt in remote.formats if (name := remote.rtpmap.get(pt, _STATIC.get(pt, ("", 0)))[0].upper()) in ours),
            None,
        )
    if chosen is None:
        offered = ", ".join(remote.rtpmap.get(pt, _STATIC.get(pt, (str(pt), 0)))[0] for pt in remote.formats)
        raise SdpError(f"no common codec: far end has {offered or 'none'}, we have {', '.join(c.name for c in codecs)}")
    pt = remote.payload_type(chosen.name)
    codec = chosen if pt == chosen.payload_type else dataclasses.replace(chosen, payload_type=pt)
    return Media(
        remote=(remote.host, remote.port),
        codec=codec,
        dtmf_payload_type=remote.payload_type("telephone-event"),
        direction=remote.direction,
    )


def codecs_named(names: tuple[str, ...] | list[str]) -> tuple[Codec, ...]:
    try:
        return tuple(CODECS[n.upper()] for n in names)
    except KeyError as e:
        raise SdpError(f"unknown codec {e.args[0]!r}; known: {', '.join(CODECS)}") from None
