/* The broadcast add page of the admin: a count of the message's characters under it, and a
   preview (the level in words with its icon, and the text) that follows what the sender types
   and picks. Loaded through BroadcastAdmin.Media: a file, as the Content-Security-Policy wants
   (no inline code), writing text only (textContent). Without it the page works as before. */
"use strict";

(function () {
  const EMPTY_MESSAGE = "Your message appears here.";

  // What the server counts: characters (not UTF-16 units), and a line break as the two ("\r\n")
  // the browser sends, so the count reaches the limit where the form says it is too long.
  function serverLength(text) {
    return Array.from(text).length + (text.match(/\n/g) || []).length;
  }

  function showCount(message, count) {
    count.textContent = `${serverLength(message.value)} / ${message.maxLength} characters`;
  }

  function showPreview(message, level, preview, icons) {
    const option = level.options[level.selectedIndex];
    const value = option && option.value in icons ? option.value : "info";
    const card = preview.querySelector(".broadcast-preview-card");
    card.className = `broadcast-preview-card level-${value}`;
    card.setAttribute("data-level", value);
    preview.querySelector(".broadcast-preview-icon").textContent = icons[value];
    preview.querySelector(".broadcast-preview-label").textContent = option ? option.text : "";
    const text = preview.querySelector(".broadcast-preview-message");
    text.textContent = message.value.trim() || EMPTY_MESSAGE;
    text.classList.toggle("empty", !message.value.trim());
  }

  function start() {
    const message = document.getElementById("id_message");
    const level = document.getElementById("id_level");
    const count = document.getElementById("broadcast-message-count");
    const preview = document.getElementById("broadcast-preview");
    const iconsData = document.getElementById("broadcast-level-icons");
    if (!message || !level || !count || !preview || !iconsData) return;  // not the add page
    const icons = JSON.parse(iconsData.textContent);
    const update = () => {
      showCount(message, count);
      showPreview(message, level, preview, icons);
    };
    message.addEventListener("input", update);
    level.addEventListener("change", update);
    update();
    count.hidden = false;
    preview.hidden = false;
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
