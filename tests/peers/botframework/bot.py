"""The Bot Framework test bot: botbuilder-python on aiohttp, auth off (as with the Emulator).

    python bot.py PORT [--greet]     prints "botframework peer ready on http://127.0.0.1:PORT"

POST /api/messages takes activities; replies go to the activity's serviceUrl
(/v3/conversations/{id}/activities/{replyToId}). It answers the chat tests'
script (see tests/chat_peers.py); with --greet it also welcomes every member a
conversationUpdate adds, as Microsoft's welcome-user samples do.
"""

from __future__ import annotations

import argparse

from aiohttp import web
from botbuilder.core import ActivityHandler, CardFactory, MessageFactory, TurnContext
from botbuilder.integration.aiohttp import CloudAdapter, ConfigurationBotFrameworkAuthentication
from botbuilder.schema import (
    ActionTypes,
    Activity,
    ActivityTypes,
    Attachment,
    CardAction,
    ChannelAccount,
    HeroCard,
)

HOST = "127.0.0.1"
WELCOME = "Welcome to Acme Bank. How can I help?"
TOPICS = [("Billing", "billing"), ("Support", "support")]


class Settings:
    """No app id or password: the adapter neither checks callers nor fetches tokens."""

    APP_ID = ""
    APP_PASSWORD = ""
    APP_TYPE = "MultiTenant"
    APP_TENANTID = ""


def topic_buttons() -> list[CardAction]:
    return [CardAction(type=ActionTypes.im_back, title=title, value=value) for title, value in TOPICS]


class ScriptBot(ActivityHandler):
    def __init__(self, greet: bool) -> None:
        self.greet = greet

    async def on_members_added_activity(self, members_added: list[ChannelAccount], turn_context: TurnContext) -> None:
        if not self.greet:
            return
        for member in members_added:
            if member.id != turn_context.activity.recipient.id:
                await turn_context.send_activity(MessageFactory.suggested_actions(topic_buttons(), WELCOME))

    async def on_message_activity(self, turn_context: TurnContext) -> None:
        text = (turn_context.activity.text or "").strip()
        command = text.lower()
        if command in ("hi", "hello"):
            await turn_context.send_activity(MessageFactory.suggested_actions(topic_buttons(), WELCOME))
        elif command == "billing":
            await turn_context.send_activity("You can pay a bill or hear your balance.")
        elif command == "two":
            await turn_context.send_activity(Activity(type=ActivityTypes.typing))
            await turn_context.send_activity("First of two")
            await turn_context.send_activity("Second of two")
        elif command == "silence":
            pass
        elif command == "html":
            await turn_context.send_activity("<p>Opening hours: <b>9am to 5pm</b></p>")
        elif command == "card":
            card = HeroCard(title="Choose a topic", text="Billing or support?", buttons=topic_buttons())
            await turn_context.send_activity(MessageFactory.attachment(CardFactory.hero_card(card)))
        elif command == "close":
            # No on_turn_error handler: the adapter lets this out and aiohttp answers 500.
            raise RuntimeError("the test script's 'close': this turn fails")
        elif command == "badjson":
            # The connector client always sends valid JSON; the nearest fault it can carry is
            # an activity of the wrong shape: a hero card whose content is a string.
            await turn_context.send_activity(MessageFactory.attachment(
                Attachment(content_type=CardFactory.content_types.hero_card, content="not a card")))
        else:
            await turn_context.send_activity(f"Sorry, I did not understand: {text}")


def make_app(greet: bool) -> web.Application:
    adapter = CloudAdapter(ConfigurationBotFrameworkAuthentication(Settings()))
    bot = ScriptBot(greet)

    async def messages(request: web.Request) -> web.Response:
        return await adapter.process(request, bot)

    app = web.Application()
    app.router.add_post("/api/messages", messages)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--greet", action="store_true", help="welcome members a conversationUpdate adds")
    args = parser.parse_args()
    web.run_app(make_app(args.greet), host=HOST, port=args.port,
                print=lambda _: print(f"botframework peer ready on http://{HOST}:{args.port}", flush=True))


if __name__ == "__main__":
    main()
