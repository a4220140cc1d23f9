"""End to end, without Stillroom code: a private Tor network reaches a fresh v3 onion service."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from stem.control import EventType
from stem.response.events import HSDescEvent

import tornet

HELLO = b"hello onion"


class HelloHandler(BaseHTTPRequestHandler):
    """Answer every GET with "hello onion"."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        """Send the greeting."""
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(HELLO)))
        self.end_headers()
        self.wfile.write(HELLO)

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output quiet."""


@contextmanager
def hello_server() -> Iterator[int]:
    """Serve HelloHandler on 127.0.0.1 in a thread and yield its port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), HelloHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_private_network_reaches_an_onion_service(
    tor_network: tornet.TorNetwork, tmp_path: Path
) -> None:
    with hello_server() as http_port:
        started = time.monotonic()
        service = tornet.TorProcess.launch(
            "service", tmp_path / "service", [*tor_network.join_config_lines(), "SocksPort 0"]
        )
        try:
            controller = service.connect(started + 60)
            service.wait_bootstrapped(controller, started + 60)
            bootstrapped = time.monotonic() - started

            events: list[tuple[str, str]] = []
            changed = threading.Condition()

            def on_hs_desc(event: HSDescEvent) -> None:
                with changed:
                    events.append((str(event.action), event.address))
                    changed.notify_all()

            def uploads_done() -> bool:
                """Tell whether every upload the service started ended, at least one well."""
                actions = [action for action, address in events if address == service_id]
                ended = actions.count("UPLOADED") + actions.count("FAILED")
                return actions.count("UPLOADED") > 0 and ended >= actions.count("UPLOAD")

            controller.add_event_listener(on_hs_desc, EventType.HS_DESC)
            publish_started = time.monotonic()
            reply = controller.msg(
                "ADD_ONION NEW:ED25519-V3 Flags=DiscardPK PoWDefensesEnabled=1"
                f" Port=80,127.0.0.1:{http_port}"
            )
            assert reply.is_ok(), str(reply)
            service_id = next(
                str(line).removeprefix("ServiceID=")
                for line in reply
                if str(line).startswith("ServiceID=")
            )
            with changed:
                published = changed.wait_for(uploads_done, timeout=30)
            assert published, f"descriptor not uploaded within 30 s\n{service.log_tail()}"
            upload_seconds = time.monotonic() - publish_started

            fetch_started = time.monotonic()
            status, headers, body = tor_network.fetch(f"http://{service_id}.onion/")
            fetch_seconds = time.monotonic() - fetch_started

            assert status == 200
            assert headers["content-type"] == "text/plain"
            assert body == HELLO
            memory = tor_network.rss_mib() + tornet.rss_mib([service.pid])
            print(
                f"\ntornet: network built in {tor_network.build_seconds:.1f} s"
                f" (attempt {tor_network.attempts_used};"
                + ", ".join(f" {k} {v:.1f} s" for k, v in tor_network.timings.items())
                + f"); service tor bootstrapped in {bootstrapped:.1f} s;"
                f" descriptor uploaded in {upload_seconds:.1f} s;"
                f" first fetch {fetch_seconds:.2f} s;"
                f" {len(tor_network.pids()) + 1} tors use {memory:.0f} MiB",
                flush=True,
            )
        finally:
            service.stop()
