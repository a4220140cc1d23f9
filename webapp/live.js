// Stillroom live chat: with JavaScript allowed, a WebSocket says when the chat changed and
// the message frame reloads at once. While the socket is open the frame shows the feed
// without its timed refresh (?live=1); without script, or once the socket fails for
// good, the frame reloads itself as before.
(function () {
  "use strict";
  var page = document.querySelector("[data-live]");
  var feed = document.querySelector("iframe.feed");
  var compose = document.querySelector("iframe.compose");
  var note = document.getElementById("script-note");
  if (note) { note.hidden = false; } // one quiet line: the chat needs no script
  if (compose) { compose.addEventListener("load", refocus); }
  if (!page || !feed || !window.WebSocket) { return; }
  var plain = feed.getAttribute("src");
  var scheme = location.protocol === "https:" ? "wss://" : "ws://";
  var tries = 0;

  // After a send the compose frame is a new document, and focus is left on nothing:
  // put it back in the box, where the next message is written.
  function refocus() {
    var doc = compose.contentDocument;
    var box = doc && doc.getElementById("text");
    if (box && doc.querySelector("[role=status],[role=alert]")) { box.focus(); }
  }

  function showing(part) {
    try { return feed.contentWindow.location.search.indexOf(part) !== -1; } catch (e) { return false; }
  }

  // Replace, not navigate: the frame's loads stay out of the Back button's history.
  // A paused feed stays paused: the participant chose that.
  function load(url) {
    if (!showing("pause=1")) { feed.contentWindow.location.replace(url); }
  }

  function connect() {
    var socket = new WebSocket(scheme + location.host + page.getAttribute("data-live"));
    socket.onopen = function () {
      tries = 0;
      load(plain + "?live=1"); // also ends the held reload of the frame's first load
    };
    socket.onmessage = function (event) {
      if (event.data === "news") { load(plain + "?live=1"); }
    };
    socket.onclose = function (event) {
      tries += 1;
      if (event.code !== 4001 && tries < 5) { setTimeout(connect, 2000 * tries); return; }
      // Gone for good (4001: the session has ended): the frame's own refresh takes over.
      if (showing("live=1")) { load(plain); }
    };
  }
  connect();
}());
