"""Real chatbot peers on 127.0.0.1 for the chat tests: a Botkit bot, a Bot Framework bot, offline-directline.

Each peer is a child process on a free loopback port, started by a context
manager that returns once the peer printed its ready line and listens, and
stopped on exit (terminate, then kill): the same life cycle as the voice peers
(tests/voice_peers.py), whose process base this reuses.

    with BotkitPeer(tmp_path) as botkit:                    # node tests/peers/botkit/bot.js PORT
        botkit.websocket_url     # ws://127.0.0.1:PORT/
        botkit.webhook_url       # http://127.0.0.1:PORT/api/messages

    with BotFrameworkBot(tmp_path, greet=False) as bot:     # python tests/peers/botframework/bot.py PORT
        bot.url                  # http://127.0.0.1:PORT (POST /api/messages)

    with OfflineDirectLine(tmp_path, bot.messages_url) as dl:   # node tests/peers/directline/directline.js
        dl.url                   # http://127.0.0.1:PORT/directline: the Direct Line base URL

Or through the `chat_peers` fixture, which stops every peer at teardown; a peer
whose runtime or packages are missing skips the test with the command to run:

    def test_x(chat_peers):
        botkit = chat_peers.botkit()
        dl = chat_peers.directline()          # starts a Bot Framework bot behind it

The script every peer answers (the text is trimmed and compared case-folded):

    "hi", "hello"  one message "Welcome to Acme Bank. How can I help?" with buttons
                   Billing (value "billing") and Support (value "support")
    "billing"      "You can pay a bill or hear your balance."
    "two"          a typing indicator, then "First of two", then "Second of two"
    "silence"      nothing at all
    "html"         "<p>Opening hours: <b>9am to 5pm</b></p>" (as is)
    "close"        Botkit websocket: the socket is dropped (no close frame; code 1006 at the client);
                   Botkit webhook: HTTP 500, empty body; Bot Framework bot: the turn raises, the
                   bot answers HTTP 500 (through offline-directline: 500 with {"id": ...})
    "badjson"      Botkit websocket: a text frame that is not JSON ('{"type": "message", "text": ');
                   Botkit webhook: res.json() cannot send invalid JSON, so the body is a JSON string,
                   "not a list of messages", where a list belongs; Bot Framework bot: botbuilder's
                   client cannot send invalid JSON either, so a message whose hero card attachment's
                   content is a string, not a card object
    "card"         Bot Framework bot only: a hero card ("Choose a topic" / "Billing or support?")
                   with the same two imBack buttons, and no activity text
    anything else  "Sorry, I did not understand: <text as sent, trimmed>"

What Botkit 4.15 with botbuilder-adapter-web 1.0.10 puts on the wire
=====================================================================

Websocket (ws://127.0.0.1:PORT/, any path): every frame both ways is one JSON object.

* Client -> bot: {"type": "message", "text": "hi", "user": "<user id>", "channel": "websocket"}.
  `user` is required: the adapter keys its open sockets by it (a second socket with the same
  user takes the replies over) and replies go to the socket of that user. A `type` other than
  "message" becomes a Botkit event of that name with no text. Botkit's web client, on
  connecting, sends {"type": "hello", "user", "channel": "socket", "user_profile": null}
  ("welcome_back" instead of "hello" when it knew the user from a cookie); this bot answers
  both with the welcome message. Frames that are not JSON are logged by the bot and dropped.
* Bot -> client: {"type": "message", "text": "..."} plus every field Botkit keeps in the
  activity's channelData, here `quick_replies`: [{"title": "Billing", "payload": "billing"}, ...]
  (a click sends the payload as the text of a new message). Typing indicators are frames
  {"type": "typing"} (no text). Nothing else comes: no ids, no timestamps, no "user" field.
* The server pings every 30 s and terminates a socket that missed the previous pong.

Webhook (POST /api/messages, Content-Type application/json):

* Request: {"type": "message", "text": "hi", "user": "<user id>", "channel": "webhook"}; the
  web client's connect event is {"type": "hello" | "welcome_back", "user", "channel": "webhook"}.
* Response: 200 with a JSON list of the same frames the websocket would carry, in order
  (typing frames included), e.g. [{"type": "typing"}, {"type": "message", "text": "First of two"},
  ...]; 200 with an empty body (no content type) when the bot said nothing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from voice_peers import HOST, PeerError, _Peer, free_port

PEERS_DIR = Path(__file__).parent / "peers"
BOTKIT_DIR = PEERS_DIR / "botkit"
BOTFRAMEWORK_BOT = PEERS_DIR / "botframework" / "bot.py"
DIRECTLINE_DIR = PEERS_DIR / "directline"

READY_TIMEOUT_S = 30.0  # node loading Botkit, or Python importing botbuilder, on a cold CI machine

__all__ = ["BotFrameworkBot", "BotkitPeer", "ChatPeers", "OfflineDirectLine", "PeerError", "chat_peers"]


def node() -> str:
    """The node binary; skips the test when it is missing."""
    found = shutil.which("node")
    if found is None:
        pytest.skip("node is not installed: install the Debian packages nodejs and npm (scripts/setup.sh)")
    return found


def require_node_modules(folder: Path) -> None:
    """Skip the test, saying how to fix it, when a node peer's packages are not installed."""
    if not (folder / "node_modules").is_dir():
        pytest.skip(f"{folder}/node_modules is missing: run scripts/setup.sh (npm ci there)")


def require_botbuilder() -> None:
    for module in ("botbuilder.core", "botbuilder.integration.aiohttp"):
        if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: pip install -e '.[test]' (scripts/setup.sh)")


class _HttpPeer(_Peer):
    """A peer serving HTTP on one free port; ready once it printed `ready_line` and listens."""

    ready_line = ""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def _wait_ready(self) -> None:
        self._wait_until(f"ready line {self.ready_line!r}", lambda: self.ready_line in self.log(), READY_TIMEOUT_S)
        self._wait_bound(self.port, "tcp")


class BotkitPeer(_HttpPeer):
    """Botkit 4 on the web adapter: websocket and webhook channels on one port."""

    name = "botkit"
    ready_line = "botkit peer ready on"

    @property
    def websocket_url(self) -> str:
        return f"ws://{HOST}:{self.port}/"

    @property
    def webhook_url(self) -> str:
        return f"{self.url}/api/messages"

    def start(self) -> BotkitPeer:
        binary = node()
        require_node_modules(BOTKIT_DIR)
        self._spawn([binary, str(BOTKIT_DIR / "bot.js"), str(self.port)])
        self._wait_ready()
        return self


class BotFrameworkBot(_HttpPeer):
    """A botbuilder-python bot on aiohttp with auth off; `greet`: it welcomes members a conversationUpdate adds."""

    name = "botframework"
    ready_line = "botframework peer ready on"

    def __init__(self, workdir: Path, *, greet: bool = False) -> None:
        super().__init__(workdir)
        self.greet = greet

    @property
    def messages_url(self) -> str:
        return f"{self.url}/api/messages"

    def start(self) -> BotFrameworkBot:
        require_botbuilder()
        argv = [sys.executable, str(BOTFRAMEWORK_BOT), str(self.port)]
        self._spawn(argv + (["--greet"] if self.greet else []))
        self._wait_ready()
        return self


class OfflineDirectLine(_HttpPeer):
    """offline-directline in front of the bot at `bot_url`: Direct Line 3.0 polling, no websocket stream.

    Its routes live under /directline (not /v3/directline); starting a conversation
    returns {conversationId, expiresIn} only (no token, no streamUrl); GET activities
    returns every activity of the conversation after the watermark, the user's own
    included, with a numeric watermark; the bot's replies get from {"id": "id", "name": "Bot"}.
    It forwards each user activity to the bot and answers with the bot's HTTP status.
    """

    name = "directline"
    ready_line = "directline peer ready on"

    def __init__(self, workdir: Path, bot_url: str) -> None:
        super().__init__(workdir)
        self.bot_url = bot_url

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/directline"

    def start(self) -> OfflineDirectLine:
        binary = node()
        require_node_modules(DIRECTLINE_DIR)
        self._spawn([binary, str(DIRECTLINE_DIR / "directline.js"), str(self.port), self.bot_url])
        self._wait_ready()
        return self


# =========================================================================== pytest fixtures


class ChatPeers:
    """Starts chat peers in a test's tmp_path and stops them all at teardown (the `chat_peers` fixture)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self._stack = contextlib.ExitStack()

    def botkit(self) -> BotkitPeer:
        return self._stack.enter_context(BotkitPeer(self.workdir))

    def botframework(self, **options: Any) -> BotFrameworkBot:
        return self._stack.enter_context(BotFrameworkBot(self.workdir, **options))

    def directline(self, bot_url: str | None = None) -> OfflineDirectLine:
        """offline-directline in front of `bot_url`, or in front of a new Bot Framework bot."""
        if bot_url is None:
            bot_url = self.botframework().messages_url
        return self._stack.enter_context(OfflineDirectLine(self.workdir, bot_url))

    def close(self) -> None:
        self._stack.close()


@pytest.fixture
def chat_peers(tmp_path: Path) -> Iterator[ChatPeers]:
    """Start the Botkit, Bot Framework and offline-directline peers on 127.0.0.1; all stopped when the test ends."""
    peers = ChatPeers(tmp_path)
    try:
        yield peers
    finally:
        peers.close()
