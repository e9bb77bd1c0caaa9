// The help page's search: hides the questions whose text does not hold every word typed.
"use strict";

const search = document.getElementById("help-search");
const entries = Array.from(document.querySelectorAll("article.faq"));
const count = document.getElementById("help-count");

function filter() {
  const words = search.value.toLowerCase().split(/\s+/).filter(Boolean);
  let shown = 0;
  for (const entry of entries) {
    const text = entry.textContent.toLowerCase();
    entry.hidden = !words.every((word) => text.includes(word));
    if (!entry.hidden) shown += 1;
  }
  if (shown === 0) count.textContent = `No answers match "${search.value.trim()}".`;
  else count.textContent = shown === 1 ? "1 answer" : `${shown} answers`;
}

search.addEventListener("input", filter);
filter(); // a search the browser restored on going back
