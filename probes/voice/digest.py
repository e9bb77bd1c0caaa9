"""SIP digest authentication (RFC 3261 §22, RFC 7616 algorithms via RFC 8760): MD5 and SHA-256, qop=auth.

httpx's DigestAuth computes the same thing but only inside an HTTP request
flow; this is the twenty lines it takes for a SIP request.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

_HASHES = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}
# RFC 8760 §2.4: when several challenges are offered, use the strongest we know.
_PREFERENCE = ("SHA-256", "SHA-256-SESS", "MD5", "MD5-SESS")


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str
    realm: str | None = None  # answer only challenges for this realm when set


class AuthError(ValueError):
    """A challenge we cannot answer (unknown scheme or algorithm, another realm)."""


@dataclass(frozen=True)
class Challenge:
    scheme: str
    parameters: dict[str, str]

    @classmethod
    def parse(cls, value: str) -> Challenge:
        # sipmessage's AuthChallenge splits on every comma, so qop="auth,auth-int" fails to parse.
        scheme, _, rest = value.strip().partition(" ")
        params = {k.lower(): v[1:-1].replace('\\"', '"') if v.startswith('"') else v for k, v in _PARAM.findall(rest)}
        if not scheme or not params:
            raise AuthError(f"unreadable challenge {value!r}")
        return cls(scheme, params)


_PARAM = re.compile(r'([\w-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]+)')


def choose(challenges: list[str]) -> Challenge:
    """The challenge to answer among the WWW-/Proxy-Authenticate values of one response."""
    parsed = []
    for value in challenges:
        try:
            challenge = Challenge.parse(value)
        except AuthError:
            continue
        if challenge.scheme.lower() == "digest" and challenge.parameters:
            parsed.append(challenge)
    if not parsed:
        raise AuthError(f"no Digest challenge in {challenges!r}")

    def rank(c: Challenge) -> int:
        algorithm = c.parameters.get("algorithm", "MD5").upper()
        return _PREFERENCE.index(algorithm) if algorithm in _PREFERENCE else len(_PREFERENCE)

    best = min(parsed, key=rank)
    if rank(best) == len(_PREFERENCE):
        raise AuthError(f"unsupported digest algorithm {best.parameters.get('algorithm')!r}")
    return best


def authorization(
    challenge: Challenge,
    credentials: Credentials,
    method: str,
    uri: str,
    *,
    nonce_count: int = 1,
    cnonce: str | None = None,
) -> str:
    """The Authorization / Proxy-Authorization header value answering `challenge`."""
    params = challenge.parameters
    realm = params.get("realm", "")
    if credentials.realm is not None and credentials.realm != realm:
        raise AuthError(f"challenge is for realm {realm!r}, credentials for {credentials.realm!r}")
    nonce = params.get("nonce")
    if nonce is None:
        raise AuthError("digest challenge without a nonce")
    algorithm = params.get("algorithm", "MD5")
    base = algorithm.upper().removesuffix("-SESS")
    if base not in _HASHES:
        raise AuthError(f"unsupported digest algorithm {algorithm!r}")

    def h(text: str) -> str:
        return _HASHES[base](text.encode()).hexdigest()

    cnonce = cnonce or secrets.token_hex(8)
    ha1 = h(f"{credentials.user}:{realm}:{credentials.password}")
    if algorithm.upper().endswith("-SESS"):
        ha1 = h(f"{ha1}:{nonce}:{cnonce}")
    ha2 = h(f"{method}:{uri}")
    qops = [q.strip() for q in params.get("qop", "").split(",") if q.strip()]
    fields = [
        f'username="{credentials.user}"',
        f'realm="{realm}"',
        f'nonce="{nonce}"',
        f'uri="{uri}"',
    ]
    if qops:
        if "auth" not in qops:
            raise AuthError(f"unsupported qop {params.get('qop')!r} (only auth)")
        nc = f"{nonce_count:08x}"
        response = h(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
        fields += [f'response="{response}"', f"algorithm={algorithm}", f'cnonce="{cnonce}"', "qop=auth", f"nc={nc}"]
    else:
        response = h(f"{ha1}:{nonce}:{ha2}")
        fields += [f'response="{response}"', f"algorithm={algorithm}"]
    if "opaque" in params:
        fields.append(f'opaque="{params["opaque"]}"')
    return "Digest " + ", ".join(fields)
