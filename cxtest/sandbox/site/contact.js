// The contact form: posts the fields as JSON to /api/contact, then shows the ticket
// number or the server's error beside each field.
//
// On purpose, this script has the bug real sites have: it takes every failed answer
// for a list of field errors. When the sandbox is broken, /api/contact answers 500
// without "errors", and reading them throws an uncaught TypeError.
"use strict";

const form = document.getElementById("contact-form");
const fields = ["name", "email", "topic", "message"];

function showErrors(errors) {
  for (const field of fields) {
    const input = document.getElementById(field);
    const text = errors[field] || "";
    document.getElementById(`${field}-error`).textContent = text;
    if (text) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
  }
}

async function send(event) {
  event.preventDefault();
  const button = form.querySelector("button[type=submit]");
  const body = Object.fromEntries(fields.map((field) => [field, form.elements[field].value]));
  button.disabled = true;
  try {
    const response = await fetch("/api/contact", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const answer = await response.json();
    if (!response.ok) {
      showErrors(answer.errors); // the bug: a 500 has no "errors"
      const first = Object.keys(answer.errors)[0];
      document.getElementById(first).focus();
      return;
    }
    showErrors({});
    document.getElementById("ticket").textContent = answer.ticket;
    document.getElementById("thanks").hidden = false;
    form.hidden = true;
  } finally {
    button.disabled = false;
  }
}

form.addEventListener("submit", send);
