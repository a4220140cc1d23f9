// Stillroom live chat: with JavaScript allowed, a WebSocket says when the chat changed and
// the message frame reloads at once. Without it (or if the socket fails) nothing changes:
// the frame keeps reloading itself.
(function () {
  "use strict";
  var page = document.querySelector("[data-live]");
  var feed = document.querySelector("iframe.feed");
  var note = document.getElementById("script-note");
  if (note) { note.hidden = false; } // one quiet line: the chat needs no script
  if (!page || !feed || !window.WebSocket) { return; }
  var scheme = location.protocol === "https:" ? "wss://" : "ws://";
  var tries = 0;
  function connect() {
    var socket = new WebSocket(scheme + location.host + page.getAttribute("data-live"));
    socket.onopen = function () { tries = 0; };
    socket.onmessage = function (event) {
      if (event.data === "news") { feed.contentWindow.location.reload(); }
    };
    socket.onclose = function (event) {
      if (event.code === 4001) { return; } // the session has ended: nothing more to hear
      tries += 1;
      if (tries < 5) { setTimeout(connect, 2000 * tries); }
    };
  }
  connect();
}());
