// The chat widget: talks to the sandbox bot over its websocket, in Botkit's web adapter
// shape. It sends {"type": "message", "text", "user", "channel": "websocket"} and gets
// {"type": "typing"} then {"type": "message", "text", "quick_replies": [{"title", "payload"}]}.
// A quick-reply button sends its payload and shows its title, as Botkit's web client does.
//
// A frame that is not JSON throws in the page, uncaught, as a widget that trusts its
// back end would: the bot's failure words "html" and "badjson" make a page error.
"use strict";

const log = document.getElementById("chat-log");
const status = document.getElementById("chat-status");
const typing = document.getElementById("chat-typing");
const chatForm = document.getElementById("chat-form");
const input = document.getElementById("chat-input");
const sendButton = chatForm.querySelector("button[type=submit]");
const user = `web-${Math.random().toString(36).slice(2, 10)}`; // the bot remembers a conversation by its user

const url = new URL("/bot/ws", location.href);
url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
const socket = new WebSocket(url);

function setConnected(connected, text) {
  status.textContent = text;
  input.disabled = !connected;
  sendButton.disabled = !connected;
}

function addMessage(from, text) {
  const message = document.createElement("p");
  message.className = `from-${from}`;
  message.dataset.testid = from === "bot" ? "chat-message" : "chat-user-message";
  message.textContent = text;
  log.append(message);
  log.scrollTop = log.scrollHeight;
}

function clearQuickReplies() {
  for (const group of log.querySelectorAll(".quick-replies")) group.remove();
}

function addQuickReplies(replies) {
  const group = document.createElement("div");
  group.className = "quick-replies";
  group.setAttribute("role", "group");
  group.setAttribute("aria-label", "Suggested replies");
  for (const reply of replies) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "secondary";
    button.dataset.testid = "chat-button";
    button.textContent = reply.title;
    button.addEventListener("click", () => send(reply.payload, reply.title));
    group.append(button);
  }
  log.append(group);
}

function send(text, shown) {
  clearQuickReplies();
  addMessage("user", shown);
  socket.send(JSON.stringify({ type: "message", text, user, channel: "websocket" }));
}

socket.addEventListener("open", () => setConnected(true, "Connected to the Acme Bank assistant."));
socket.addEventListener("close", () => {
  typing.hidden = true;
  setConnected(false, "Chat disconnected.");
});
socket.addEventListener("message", (event) => {
  const frame = JSON.parse(event.data);
  if (frame.type === "typing") {
    typing.hidden = false;
  } else if (frame.type === "message") {
    typing.hidden = true;
    addMessage("bot", frame.text);
    if (frame.quick_replies && frame.quick_replies.length) addQuickReplies(frame.quick_replies);
  }
});

chatForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = input.value.trim();
  if (!text) return;
  input.value = "";
  send(text, text);
});
