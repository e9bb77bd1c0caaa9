"""The directline connector against offline-directline (Direct Line 3.0 on 127.0.0.1) in front of a real botbuilder bot."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from chat_peers import BotFrameworkBot, OfflineDirectLine
from cxtest.errors import ProtocolError, TargetUnreachable
from probes.chat.connectors.base import BotMessage, Button, UserMessage
from probes.chat.connectors.directline import DirectLineConnector, DirectLineConversation, DirectLineTarget
from servers import closed_port

POLL_S = 0.05
QUIET_S = 0.4  # how long a test waits to be sure nothing more comes (several polls)
REPLY_S = 5.0  # how long a test waits for a reply that must come
TOPICS = (Button("Billing", "billing"), Button("Support", "support"))


@pytest.fixture(scope="module")
def bot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BotFrameworkBot]:
    with BotFrameworkBot(tmp_path_factory.mktemp("botframework")) as peer:
        yield peer


@pytest.fixture(scope="module")
def directline(tmp_path_factory: pytest.TempPathFactory, bot: BotFrameworkBot) -> Iterator[OfflineDirectLine]:
    with OfflineDirectLine(tmp_path_factory.mktemp("directline"), bot.messages_url) as peer:
        yield peer


def target(url: str) -> DirectLineTarget:
    return DirectLineTarget(connector="directline", url=url, secret="local-secret", poll_interval=POLL_S)


@pytest.fixture
async def connector() -> AsyncIterator[DirectLineConnector]:
    connector = DirectLineConnector()
    yield connector
    await connector.aclose()


@pytest.fixture
async def conversation(directline: OfflineDirectLine, connector: DirectLineConnector) -> AsyncIterator[DirectLineConversation]:
    conversation = await connector.open(target(directline.url), "cxtest-run1")
    yield conversation
    await conversation.close()


async def say(conversation: DirectLineConversation, text: str) -> BotMessage:
    await conversation.send(UserMessage(text))
    message = await conversation.receive(REPLY_S)
    assert message is not None, f"no reply to {text!r}"
    return message


async def test_right_answer_and_our_echo_left_out(conversation: DirectLineConversation) -> None:
    """The bot's reply, polled from the activity list, is one bot message; our own activity echoed there is not."""
    message = await say(conversation, "billing")
    assert message.text == "You can pay a bill or hear your balance."
    assert message.raw["from"]["id"] != "cxtest-run1"
    assert await conversation.receive(QUIET_S) is None


async def test_wrong_answer_is_delivered_as_sent(conversation: DirectLineConversation) -> None:
    """A reply that is not what one would expect is still delivered, word for word."""
    message = await say(conversation, "what is my balance?")
    assert message.text == "Sorry, I did not understand: what is my balance?"


async def test_bot_that_never_answers(conversation: DirectLineConversation) -> None:
    """A bot that says nothing: send() returns, receive() gives None at its timeout while polling goes on."""
    await conversation.send(UserMessage("silence"))
    assert await conversation.receive(QUIET_S) is None
    assert (await say(conversation, "billing")).text == "You can pay a bill or hear your balance."


async def test_html_is_kept_raw(conversation: DirectLineConversation) -> None:
    """HTML in a reply comes through untouched: normalising is the matcher's job."""
    message = await say(conversation, "html")
    assert message.text == "<p>Opening hours: <b>9am to 5pm</b></p>"


async def test_two_messages_in_order_typing_left_out(conversation: DirectLineConversation) -> None:
    """Two messages for one input come as two bot messages in order; the typing activity before them does not."""
    first = await say(conversation, "two")
    second = await conversation.receive(REPLY_S)
    assert (first.text, second and second.text) == ("First of two", "Second of two")
    assert await conversation.receive(QUIET_S) is None


async def test_buttons_and_clicks(conversation: DirectLineConversation) -> None:
    """suggestedActions and hero card buttons become buttons (title, value); clicking one sends its value."""
    welcome = await say(conversation, "hello")
    assert welcome.text == "Welcome to Acme Bank. How can I help?"
    assert welcome.buttons == TOPICS
    card = await say(conversation, "card")
    assert (card.text, card.buttons) == ("Choose a topic\nBilling or support?", TOPICS)
    await conversation.send(UserMessage("Support", card.buttons[1]))
    answer = await conversation.receive(REPLY_S)
    assert answer is not None and answer.text == "Sorry, I did not understand: support"


async def test_conversations_are_kept_apart(directline: OfflineDirectLine, connector: DirectLineConnector) -> None:
    """Each conversation polls its own activities: a reply in one never shows in the other."""
    first = await connector.open(target(directline.url), "cxtest-run2")
    second = await connector.open(target(directline.url), "cxtest-run3")
    assert (await say(first, "billing")).text == "You can pay a bill or hear your balance."
    assert await second.receive(QUIET_S) is None
    await first.close()
    await second.close()


async def test_bot_failing_its_turn_is_a_protocol_error(conversation: DirectLineConversation) -> None:
    """The bot crashes on a message and Direct Line passes its 500 on: send() raises ProtocolError with the status."""
    with pytest.raises(ProtocolError, match="500"):
        await conversation.send(UserMessage("close"))


async def test_activity_of_the_wrong_shape_ends_the_conversation(conversation: DirectLineConversation) -> None:
    """A hero card whose content is not a card: receive() raises ProtocolError, and again on every later call."""
    await conversation.send(UserMessage("badjson"))
    with pytest.raises(ProtocolError, match=r"card.hero\) of the wrong shape.*not a card"):
        await conversation.receive(REPLY_S)
    with pytest.raises(ProtocolError):
        await conversation.receive(0.05)


async def test_service_going_away_mid_conversation(tmp_path, bot: BotFrameworkBot, connector: DirectLineConnector) -> None:
    """Direct Line stops while the bot's answer is awaited: the failed poll surfaces at receive() as TargetUnreachable."""
    with OfflineDirectLine(tmp_path, bot.messages_url) as service:
        conversation = await connector.open(target(service.url), "cxtest-run4")
    with pytest.raises(TargetUnreachable, match="refused"):
        await conversation.receive(REPLY_S)
    await conversation.close()


async def test_nothing_listening_is_unreachable(connector: DirectLineConnector) -> None:
    """Nothing listening at the Direct Line URL: open() raises TargetUnreachable naming it."""
    with closed_port() as port:
        with pytest.raises(TargetUnreachable, match=f"refused.*{port}"):
            await connector.open(target(f"http://127.0.0.1:{port}/directline"), "cxtest-run5")


async def test_not_a_direct_line_service_is_a_protocol_error(bot: BotFrameworkBot, connector: DirectLineConnector) -> None:
    """A URL that is not Direct Line (the bot itself: 404 to /conversations): open() raises ProtocolError with what came."""
    with pytest.raises(ProtocolError, match="404.*Not Found"):
        await connector.open(target(bot.url), "cxtest-run6")
