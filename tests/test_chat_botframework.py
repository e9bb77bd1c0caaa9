"""The botframework connector against a real botbuilder-python bot on 127.0.0.1, as the Emulator talks to it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from chat_peers import BotFrameworkBot
from cxtest.errors import ProtocolError, TargetUnreachable
from probes.chat.connectors.base import BotMessage, Button, UserMessage
from probes.chat.connectors.botframework import BotFrameworkConnector, BotFrameworkConversation, BotFrameworkTarget
from servers import closed_port

QUIET_S = 0.4  # how long a test waits to be sure nothing more comes
REPLY_S = 5.0  # how long a test waits for a reply that must come
SOON_S = 0.05  # for a message already queued (receive(0) may time out before it looks: asyncio.wait_for)
TOPICS = (Button("Billing", "billing"), Button("Support", "support"))


@pytest.fixture(scope="module")
def bot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BotFrameworkBot]:
    with BotFrameworkBot(tmp_path_factory.mktemp("botframework")) as peer:
        yield peer


def target(url: str, **fields: str) -> BotFrameworkTarget:
    return BotFrameworkTarget(connector="botframework", url=url, **fields)


@pytest.fixture
async def connector() -> AsyncIterator[BotFrameworkConnector]:
    connector = BotFrameworkConnector()
    yield connector
    await connector.aclose()


@pytest.fixture
async def conversation(bot: BotFrameworkBot, connector: BotFrameworkConnector) -> AsyncIterator[BotFrameworkConversation]:
    conversation = await connector.open(target(bot.url), "cxtest-run1")
    yield conversation
    await conversation.close()


async def say(conversation: BotFrameworkConversation, text: str) -> BotMessage:
    await conversation.send(UserMessage(text))
    message = await conversation.receive(REPLY_S)
    assert message is not None, f"no reply to {text!r}"
    return message


async def test_right_answer(conversation: BotFrameworkConversation) -> None:
    """A reply posted to the callback server arrives as one bot message, and nothing else comes."""
    message = await say(conversation, "billing")
    assert message.text == "You can pay a bill or hear your balance."
    assert message.buttons == ()
    assert message.raw["type"] == "message" and message.raw["replyToId"]
    assert await conversation.receive(QUIET_S) is None


async def test_wrong_answer_is_delivered_as_sent(conversation: BotFrameworkConversation) -> None:
    """A reply that is not what one would expect is still delivered, word for word."""
    message = await say(conversation, "what is my balance?")
    assert message.text == "Sorry, I did not understand: what is my balance?"


async def test_bot_that_never_answers(conversation: BotFrameworkConversation) -> None:
    """A bot that says nothing: send() returns, receive() gives None at its timeout."""
    await conversation.send(UserMessage("silence"))
    assert await conversation.receive(QUIET_S) is None


async def test_html_is_kept_raw(conversation: BotFrameworkConversation) -> None:
    """HTML in a reply comes through untouched: normalising is the matcher's job."""
    message = await say(conversation, "html")
    assert message.text == "<p>Opening hours: <b>9am to 5pm</b></p>"


async def test_two_messages_in_order_typing_left_out(conversation: BotFrameworkConversation) -> None:
    """Two messages for one input come as two bot messages in order; the typing indicator before them does not."""
    first = await say(conversation, "two")
    second = await conversation.receive(REPLY_S)
    assert (first.text, second and second.text) == ("First of two", "Second of two")
    assert first.at <= second.at
    assert await conversation.receive(QUIET_S) is None


async def test_suggested_actions_are_buttons_and_clicks_send_their_value(conversation: BotFrameworkConversation) -> None:
    """suggestedActions become buttons (title, value); clicking one sends its value."""
    welcome = await say(conversation, "hi")
    assert welcome.text == "Welcome to Acme Bank. How can I help?"
    assert welcome.buttons == TOPICS
    await conversation.send(UserMessage("Billing", welcome.buttons[0]))
    answer = await conversation.receive(REPLY_S)
    assert answer is not None and answer.text == "You can pay a bill or hear your balance."


async def test_hero_card_gives_text_and_buttons(conversation: BotFrameworkConversation) -> None:
    """A hero card without activity text: its title and text are the message text, its buttons the buttons."""
    message = await say(conversation, "card")
    assert message.text == "Choose a topic\nBilling or support?"
    assert message.buttons == TOPICS


async def test_bot_that_greets_on_join_greets(tmp_path, connector: BotFrameworkConnector) -> None:
    """Opening sends a conversationUpdate adding the user, so a bot that greets on join greets unasked."""
    with BotFrameworkBot(tmp_path, greet=True) as greeter:
        conversation = await connector.open(target(greeter.url), "cxtest-run2")
        message = await conversation.receive(REPLY_S)
        assert message is not None and message.text == "Welcome to Acme Bank. How can I help?"
        assert message.buttons == TOPICS
        assert await conversation.receive(QUIET_S) is None
        await conversation.close()


async def test_conversations_share_one_callback_server_and_get_their_own_replies(bot: BotFrameworkBot, connector: BotFrameworkConnector) -> None:
    """Replies are routed by conversation id: two conversations at once each get only their own."""
    first, second = [await connector.open(target(bot.url), f"cxtest-run{n}") for n in (3, 4)]
    assert first.id != second.id
    assert first.activity("message")["serviceUrl"] == second.activity("message")["serviceUrl"] == connector.service_url
    await asyncio.gather(first.send(UserMessage("billing")), second.send(UserMessage("elsewhere")))
    replies = [await first.receive(REPLY_S), await second.receive(REPLY_S)]
    assert [reply and reply.text for reply in replies] == [
        "You can pay a bill or hear your balance.", "Sorry, I did not understand: elsewhere"]
    assert await first.receive(QUIET_S) is None and await second.receive(SOON_S) is None
    await first.close()
    await second.close()


async def test_aclose_stops_the_callback_server(bot: BotFrameworkBot) -> None:
    """aclose() stops the callback server: its port refuses connections afterwards."""
    connector = BotFrameworkConnector()
    conversation = await connector.open(target(bot.url), "cxtest-run5")
    service_url = connector.service_url
    await conversation.close()
    await connector.aclose()
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.post(f"{service_url}/v3/conversations/x/activities", json={"type": "message"})


async def test_bot_failing_its_turn_is_a_protocol_error(conversation: BotFrameworkConversation) -> None:
    """A bot that crashes on a message answers 500: send() raises ProtocolError with the status."""
    with pytest.raises(ProtocolError, match="500"):
        await conversation.send(UserMessage("close"))


async def test_activity_of_the_wrong_shape_ends_the_conversation(conversation: BotFrameworkConversation) -> None:
    """A hero card whose content is not a card: receive() raises ProtocolError, and again on every later call."""
    await conversation.send(UserMessage("badjson"))
    with pytest.raises(ProtocolError, match=r"card.hero\) of the wrong shape.*not a card"):
        await conversation.receive(REPLY_S)
    with pytest.raises(ProtocolError):
        await conversation.receive(SOON_S)


async def test_bot_not_listening_is_unreachable(connector: BotFrameworkConnector) -> None:
    """Nothing listening at the bot's URL: open() raises TargetUnreachable naming it."""
    with closed_port() as port:
        with pytest.raises(TargetUnreachable, match=f"refused.*{port}"):
            await connector.open(target(f"http://127.0.0.1:{port}"), "cxtest-run6")
    assert connector.conversations == {}


async def test_wrong_endpoint_is_a_protocol_error(bot: BotFrameworkBot, connector: BotFrameworkConnector) -> None:
    """A URL that is not the bot's messaging endpoint (404): open() raises ProtocolError with what came."""
    with pytest.raises(ProtocolError, match="404.*Not Found"):
        await connector.open(target(bot.url, path="/api/nothing-here"), "cxtest-run7")
