// The Botkit 4 test bot: the web adapter's websocket and webhook channels on
// 127.0.0.1, answering the chat tests' script (see tests/chat_peers.py).
//
//   node bot.js PORT        prints "botkit peer ready on http://127.0.0.1:PORT" once it listens

const http = require('http');
const express = require('express');
const { Botkit } = require('botkit');
const { WebAdapter } = require('botbuilder-adapter-web');

const HOST = '127.0.0.1';
const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0) {
    console.error('usage: node bot.js PORT');
    process.exit(2);
}

const WELCOME = {
    text: 'Welcome to Acme Bank. How can I help?',
    quick_replies: [
        { title: 'Billing', payload: 'billing' },
        { title: 'Support', payload: 'support' },
    ],
};

// Our own express app and server: Botkit's would listen on every interface.
const app = express();
app.use(express.json());
const server = http.createServer(app);

// The adapter would bind its websocket server to Botkit's own server (controller.http),
// which does not exist when we pass ours: hand it ours.
const adapter = new WebAdapter({ server });
const controller = new Botkit({ adapter, webserver: app, disable_console: true });

// What Botkit's web chat client sends when it connects (channel "socket" or "webhook").
controller.on(['hello', 'welcome_back'], async (bot, message) => {
    await bot.reply(message, WELCOME);
});

controller.on('message', async (bot, message) => {
    const text = (message.text || '').trim();
    switch (text.toLowerCase()) {
    case 'hi':
    case 'hello':
        await bot.reply(message, WELCOME);
        break;
    case 'billing':
        await bot.reply(message, 'You can pay a bill or hear your balance.');
        break;
    case 'two':
        // A typing indicator first, as bots on this channel do before a burst.
        await bot.reply(message, { type: 'typing' });
        await bot.reply(message, 'First of two');
        await bot.reply(message, 'Second of two');
        break;
    case 'silence':
        break;
    case 'html':
        await bot.reply(message, '<p>Opening hours: <b>9am to 5pm</b></p>');
        break;
    case 'close':
        if (message.incoming_message.channelId === 'websocket') {
            // Dropped without a close frame, as a crashed server or a cut network does.
            controller.adapter.getConnection(message.user).terminate();
        } else {
            bot.httpStatus(500);
        }
        break;
    case 'badjson':
        if (message.incoming_message.channelId === 'websocket') {
            controller.adapter.getConnection(message.user).send('{"type": "message", "text": ');
        } else {
            // The webhook answers through express's res.json(): it cannot send invalid JSON;
            // the nearest is JSON of the wrong shape, a string where a list of messages belongs.
            bot.httpBody('not a list of messages');
        }
        break;
    default:
        await bot.reply(message, `Sorry, I did not understand: ${text}`);
    }
});

controller.ready(() => {
    server.listen(port, HOST, () => {
        console.log(`botkit peer ready on http://${HOST}:${port}`);
    });
});

process.on('SIGTERM', () => {
    server.close();
    process.exit(0);
});
