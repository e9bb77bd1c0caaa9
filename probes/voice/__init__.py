"""The voice engine: SIP user agent, RTP media, DTMF, audio.

    from probes.voice import UserAgent, Credentials

    async with UserAgent("127.0.0.1") as ua:
        call = await ua.dial("sip:ivr@127.0.0.1:5080", auth=Credentials("alice", "secret"))
        call.status, call.pdd, call.media.recording

Modules: sip (transactions, dialogs, calls), transport (UDP/TCP), sdp, digest,
rtp (packets, stats, the shared media clock, streams), g711, dtmf (RFC 4733,
SIP INFO, in-band tones and the Goertzel detector), audio (sources, recording).
"""

from probes.voice.audio import PcmSource, Recording, read_wav, silence, tone, wav_source
from probes.voice.digest import Credentials
from probes.voice.dtmf import DetectedDigit, ReceivedDigit, ToneDetector, detect_digits
from probes.voice.rtp import ReceiveStats, RtpStream
from probes.voice.sip import Call, CallEnded, Progress, Registration, Timers, UserAgent

__all__ = [
    "Call",
    "CallEnded",
    "Credentials",
    "DetectedDigit",
    "PcmSource",
    "Progress",
    "ReceiveStats",
    "ReceivedDigit",
    "Recording",
    "Registration",
    "RtpStream",
    "Timers",
    "ToneDetector",
    "UserAgent",
    "detect_digits",
    "read_wav",
    "silence",
    "tone",
    "wav_source",
]
