"""``/metrics``, ``/healthz`` and ``/readyz`` over HTTP (docs/DESIGN.md §11), on a daemon thread."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

Probe = Callable[[], tuple[int, dict]]


class Endpoints:
    """Serves a registry and two probes; ``port`` 0 picks a free port (``self.port`` tells which)."""

    def __init__(self, registry: CollectorRegistry, healthz: Probe, readyz: Probe, port: int, host: str = "0.0.0.0"):
        routes: dict[str, Callable[[], tuple[int, str, bytes]]] = {
            "/metrics": lambda: (200, CONTENT_TYPE_LATEST, generate_latest(registry)),
            "/healthz": lambda: _json(*healthz()),
            "/readyz": lambda: _json(*readyz()),
        }

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                route = routes.get(self.path.split("?", 1)[0])
                if route is None:
                    status, kind, body = 404, "text/plain", b"not found: /metrics, /healthz, /readyz\n"
                else:
                    try:
                        status, kind, body = route()
                    except Exception as error:  # noqa: BLE001 - a probe that crashes answers 500, named
                        status, kind, body = _json(500, {"status": "error", "error": repr(error)})
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args) -> None:  # probes every few seconds: no access log
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="stream-endpoints", daemon=True)

    def start(self) -> Endpoints:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _json(status: int, body: dict) -> tuple[int, str, bytes]:
    return status, "application/json", (json.dumps(body, sort_keys=True) + "\n").encode()
