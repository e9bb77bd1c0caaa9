"""Probe registry: channel name -> probe class.

Built-in probes are imported lazily (a CI gate of HTTP checks should not import
Playwright); third-party probes register under the "cxtest.probes" entry-point group.
"""

from __future__ import annotations

import importlib
from functools import cache
from importlib.metadata import entry_points
from typing import Any

BUILT_IN = {
    "http": "probes.http:HttpProbe",
    "ivr": "probes.ivr:IvrProbe",
    "chat": "probes.chat:ChatProbe",
    "web": "probes.web:WebProbe",
    "phone": "probes.phone:PhoneProbe",
}


@cache
def _registry() -> dict[str, str]:
    found = dict(BUILT_IN)
    for ep in entry_points(group="cxtest.probes"):
        found.setdefault(ep.name, ep.value)
    return found


def channels() -> list[str]:
    return sorted(_registry())


@cache
def probe_class(channel: str) -> Any:
    module, _, name = _registry()[channel].partition(":")
    return getattr(importlib.import_module(module), name)
