// offline-directline on 127.0.0.1: a local Direct Line 3.0 service in front of a bot.
//
//   node directline.js PORT BOT_URL     prints "directline peer ready on http://127.0.0.1:PORT/directline"
//
// The package's own initializeRoutes() listens on every interface, so this mounts
// its router on our own express app instead. The bot's replies come back to
// http://127.0.0.1:PORT/v3/conversations/... (the serviceUrl it hands the bot).

const express = require('express');
const directline = require('offline-directline');

const HOST = '127.0.0.1';
const port = Number(process.argv[2]);
const botUrl = process.argv[3];
if (!Number.isInteger(port) || port <= 0 || !botUrl) {
    console.error('usage: node directline.js PORT BOT_URL');
    process.exit(2);
}

const serviceUrl = `http://${HOST}:${port}`;
const app = express();
app.use(directline.getRouter(serviceUrl, botUrl));
const server = app.listen(port, HOST, () => {
    console.log(`directline peer ready on ${serviceUrl}/directline`);
});

process.on('SIGTERM', () => {
    server.close();
    process.exit(0);
});
