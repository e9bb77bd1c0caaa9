"""The sandbox chatbot: Acme Bank's assistant, a few keyword rules with a memory per conversation.

    bot = AcmeBot()
    bot.answer("c1", "hi")          # two messages: "Hello! I am the Acme Bank assistant.", "How can I help?" + menu buttons
    bot.answer("c1", "/billing")    # a button payload: intent billing, confidence 1.0
    bot.answer("c1", "balance")     # understood because c1 is in billing: "Your balance is 120 pounds."
    bot.answer("c2", "balance")     # c2 never chose billing: the fallback

How the bot understands a text, first match wins:

1. a button payload (``/billing``) anywhere, or the title of a button the bot
   offered last in this conversation ("Billing" after the menu): confidence 1.0;
2. a keyword rule (``KEYWORDS``; ``BILLING_KEYWORDS`` too while the conversation
   is in billing): confidence 0.8;
3. an amount while the bot waits for one ("120" after "How much would you like to pay?"): 0.8;
4. otherwise the fallback intent, confidence 0.2.

``broken=True`` turns every billing intent into the fallback (the demo's
"the chatbot stopped understanding billing"). The wire shapes the sandbox speaks
(our REST, Rasa's REST channel, Botkit's web adapter) are built here from one
:class:`Reply`, so the three answer alike.

Failure words, test and demo hooks for the ways a chatbot goes wrong on the
wire: a text that is exactly one of them (trimmed, any case) never reaches the
rules or the memory, and makes the sandbox misbehave on every protocol
(``failure_word(text)``; the sandbox app does the misbehaving):

- ``silence``: no bot message at all (REST ``{"messages": []}`` with intent
  ``silence``; Rasa ``[]``; the websocket sends nothing and stays open);
- ``html``: an HTML error page where JSON belongs (HTTP 200 ``text/html``; one
  websocket text frame of HTML);
- ``badjson``: JSON cut off half way (HTTP 200 ``application/json``; one frame);
- ``close``: the connection dropped (HTTP: closed with no response at all; the
  websocket: closed with code 1011, "bot closed the conversation").

"When do you close?" is still a question about opening hours: only the bare word is a hook.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

#: Conversations remembered at once; the least recently used is forgotten first.
MAX_CONVERSATIONS = 10_000

#: A text containing this word is answered after SLOW_REPLY_S (max_latency demos).
SLOW_WORD = "slow"
SLOW_REPLY_S = 1.5

EXACT_CONFIDENCE = 1.0
KEYWORD_CONFIDENCE = 0.8
FALLBACK_CONFIDENCE = 0.2

FALLBACK = "fallback"
BILLING_INTENTS = frozenset({"billing", "balance", "pay_bill"})

BALANCE_POUNDS = 120


@dataclass(frozen=True)
class Button:
    title: str
    payload: str


@dataclass(frozen=True)
class Message:
    text: str
    buttons: tuple[Button, ...] = ()


@dataclass(frozen=True)
class Reply:
    """The bot's answer to one user text: one or more messages and the intent it understood."""

    messages: tuple[Message, ...]
    intent: str
    confidence: float


MENU = (
    Button("Billing", "/billing"),
    Button("Support", "/support"),
    Button("Opening hours", "/hours"),
    Button("Talk to a person", "/handoff"),
)
BILLING_MENU = (Button("Pay a bill", "/pay_bill"), Button("Balance", "/balance"))

#: Button payloads, Rasa style: "/intent" names the intent outright.
PAYLOADS = {f"/{intent}": intent for intent in ("greet", "billing", "balance", "pay_bill", "support", "hours", "handoff")}

#: Keyword rules understood anywhere, in priority order (the first rule with a word in the text wins).
KEYWORDS: tuple[tuple[str, frozenset[str]], ...] = (
    ("handoff", frozenset({"human", "person", "agent", "operator", "colleague", "someone", "representative"})),
    ("billing", frozenset({"bill", "bills", "billing", "invoice", "invoices"})),
    ("support", frozenset({"support", "help", "problem", "issue", "technical", "password", "login", "error"})),
    ("hours", frozenset({"hours", "open", "opening", "opens", "close", "closes", "closing", "closed"})),
    ("greet", frozenset({"hi", "hello", "hey", "start", "menu"})),
)

#: Keyword rules understood only while the conversation is in billing; they come before KEYWORDS.
BILLING_KEYWORDS: tuple[tuple[str, frozenset[str]], ...] = (
    ("pay_bill", frozenset({"pay", "payment"})),
    ("balance", frozenset({"balance", "owe"})),
)

WORD = re.compile(r"[a-z]+")
AMOUNT = re.compile(r"\d+(?:\.\d{1,2})?")


@dataclass
class Memory:
    """What the bot remembers of one conversation."""

    topic: str | None = None  # "billing" once the customer chose it
    offered: tuple[Button, ...] = ()  # the buttons of the bot's last message that had any
    awaiting_amount: bool = False  # the bot asked how much to pay


@dataclass
class AcmeBot:
    """The rules plus one Memory per conversation id, at most ``max_conversations`` of them."""

    max_conversations: int = MAX_CONVERSATIONS
    memories: OrderedDict[str, Memory] = field(default_factory=OrderedDict)

    def answer(self, conversation_id: str, text: str, broken: bool = False) -> Reply:
        memory = self._recall(conversation_id)
        intent, confidence = understand(memory, text)
        if broken and intent in BILLING_INTENTS:
            intent, confidence = FALLBACK, FALLBACK_CONFIDENCE
        reply = respond(memory, intent, confidence, text)
        offered = [m.buttons for m in reply.messages if m.buttons]
        if offered:
            memory.offered = offered[-1]
        return reply

    def _recall(self, conversation_id: str) -> Memory:
        memory = self.memories.pop(conversation_id, None) or Memory()
        self.memories[conversation_id] = memory  # most recently used last
        while len(self.memories) > self.max_conversations:
            self.memories.popitem(last=False)
        return memory


def understand(memory: Memory, text: str) -> tuple[str, float]:
    """The intent of ``text`` in this conversation, with its confidence."""
    said = " ".join(text.split()).casefold()
    if said in PAYLOADS:
        return PAYLOADS[said], EXACT_CONFIDENCE
    for button in memory.offered:
        if said == button.title.casefold():
            return PAYLOADS[button.payload], EXACT_CONFIDENCE
    words = set(WORD.findall(said))
    rules = (BILLING_KEYWORDS if memory.topic == "billing" else ()) + KEYWORDS
    for intent, keywords in rules:
        if words & keywords:
            return intent, KEYWORD_CONFIDENCE
    if memory.awaiting_amount and AMOUNT.search(said):
        return "pay_bill", KEYWORD_CONFIDENCE
    return FALLBACK, FALLBACK_CONFIDENCE


def respond(memory: Memory, intent: str, confidence: float, text: str) -> Reply:
    """The messages for ``intent``; moves the conversation's memory on."""
    if intent != FALLBACK:
        memory.topic = "billing" if intent in BILLING_INTENTS else None
        memory.awaiting_amount = False
    if intent == "greet":
        messages = [Message("Hello! I am the Acme Bank assistant."), Message("How can I help?", MENU)]
    elif intent == "billing":
        messages = [Message("Billing: would you like to pay a bill or hear your balance?", BILLING_MENU)]
    elif intent == "balance":
        messages = [Message(f"Your balance is {BALANCE_POUNDS} pounds.", BILLING_MENU[:1])]
    elif intent == "pay_bill":
        amount = AMOUNT.search(text)
        if amount is None:
            memory.awaiting_amount = True
            messages = [Message("How much would you like to pay?")]
        else:
            messages = [Message(f"Thank you. Your payment of {amount.group()} pounds has been received.")]
    elif intent == "support":
        messages = [
            Message("Technical support: you can reset your password on our website, or talk to a person.", MENU[3:])
        ]
    elif intent == "hours":
        messages = [Message("We are open Monday to Friday, 9am to 5pm.")]
    elif intent == "handoff":
        messages = [Message("I am handing you over to a colleague.")]
    else:
        messages = [Message("Sorry, I did not understand. You can ask about billing, support or opening hours.")]
    return Reply(tuple(messages), intent, confidence)


#: The failure words (see the module docstring); each names the way the bot fails.
SILENCE = "silence"
HTML = "html"
BADJSON = "badjson"
CLOSE = "close"
FAILURE_WORDS = frozenset({SILENCE, HTML, BADJSON, CLOSE})

#: What SILENCE answers: no message, and an intent that names the hook.
SILENT_REPLY = Reply((), SILENCE, EXACT_CONFIDENCE)

#: What HTML answers, on every protocol: a proxy's error page.
FAILURE_PAGE = (
    "<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n"
    "<body><h1>Bad Gateway</h1><p>The chatbot is not available.</p></body></html>\n"
)

#: What BADJSON answers: each shape's JSON, cut off inside the first message's text.
BADJSON_REST = '{"messages": [{"text": "half'
BADJSON_RASA = '[{"text": "half'
BADJSON_FRAME = '{"type": "message", "text": "half'

#: How CLOSE ends a websocket: 1011, the server met a condition it cannot handle (RFC 6455 7.4.1).
CLOSE_CODE = 1011
CLOSE_REASON = "bot closed the conversation"


def failure_word(text: str) -> str | None:
    """The failure word ``text`` is exactly (trimmed, any case), or None for a text for the rules."""
    said = text.strip().casefold()
    return said if said in FAILURE_WORDS else None


def is_slow(text: str) -> bool:
    """Whether the reply to ``text`` waits SLOW_REPLY_S first."""
    return SLOW_WORD in text.casefold()


# ------------------------------------------------------------------ wire shapes


def _buttons(message: Message) -> list[dict[str, str]]:
    return [{"title": b.title, "payload": b.payload} for b in message.buttons]


def rest_body(reply: Reply) -> dict[str, Any]:
    """Our REST shape: every message with its buttons, and the intent."""
    return {
        "messages": [{"text": m.text, "buttons": _buttons(m)} for m in reply.messages],
        "intent": {"name": reply.intent, "confidence": reply.confidence},
    }


def rasa_body(reply: Reply, recipient_id: str) -> list[dict[str, Any]]:
    """Rasa's REST channel shape: one object per message; "buttons" only on messages that have some."""
    body: list[dict[str, Any]] = []
    for m in reply.messages:
        item: dict[str, Any] = {"recipient_id": recipient_id, "text": m.text}
        if m.buttons:
            item["buttons"] = _buttons(m)
        body.append(item)
    return body


def botkit_message(message: Message) -> dict[str, Any]:
    """Botkit's web adapter shape for one message; "quick_replies" only when it has buttons."""
    item: dict[str, Any] = {"type": "message", "text": message.text}
    if message.buttons:
        item["quick_replies"] = _buttons(message)
    return item
