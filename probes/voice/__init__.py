"""The voice engine: SIP user agent, RTP media, DTMF, audio."""
