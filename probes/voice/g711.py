"""G.711 codecs (PCMU and PCMA): 8 kHz, one byte per sample, RTP static payload types 0 and 8.

The converters are C functions from audioop (audioop-lts on Python 3.13+); they take
and give "pcm": signed 16-bit little-endian mono samples.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Python 3.11-3.12 warn that audioop leaves the stdlib in 3.13
    import audioop


@dataclass(frozen=True)
class Codec:
    """An audio codec as SDP names it; encode and decode convert whole buffers of pcm."""

    name: str
    payload_type: int
    encode: Callable[[bytes], bytes]
    decode: Callable[[bytes], bytes]
    clock_rate: int = 8000


def _ulaw_encode(pcm: bytes) -> bytes:
    return audioop.lin2ulaw(pcm, 2)


def _ulaw_decode(payload: bytes) -> bytes:
    return audioop.ulaw2lin(payload, 2)


def _alaw_encode(pcm: bytes) -> bytes:
    return audioop.lin2alaw(pcm, 2)


def _alaw_decode(payload: bytes) -> bytes:
    return audioop.alaw2lin(payload, 2)


PCMU = Codec("PCMU", 0, _ulaw_encode, _ulaw_decode)
PCMA = Codec("PCMA", 8, _alaw_encode, _alaw_decode)
CODECS = {"PCMU": PCMU, "PCMA": PCMA}
_BY_PAYLOAD_TYPE = {codec.payload_type: codec for codec in CODECS.values()}


def by_payload_type(payload_type: int) -> Codec | None:
    """The codec of a static payload type, or None when it is not one of ours."""
    return _BY_PAYLOAD_TYPE.get(payload_type)
