"""The compose deployment's alert receiver: Alertmanager's webhook, made visible.

Every notification Alertmanager POSTs to /alerts is logged as one JSON line per alert
(status, name, severity, labels, summary) on stdout, so `make logs SERVICE=alert-webhook`
shows what fired and what resolved; GET /alerts returns the latest notifications as JSON
and GET /health answers "ok". Standard library only: it runs on the plain Python image.
"""

from __future__ import annotations

import json
import os
import sys
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Lock

KEEP = 100
_latest: deque[dict] = deque(maxlen=KEEP)
_lock = Lock()


class Receiver(BaseHTTPRequestHandler):
    def _answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        if self.path != "/alerts":
            return self._answer(404, b'{"error": "POST to /alerts"}')
        try:
            notification = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            alerts = notification["alerts"]
        except (ValueError, KeyError, TypeError):
            return self._answer(400, b'{"error": "not an Alertmanager webhook notification"}')
        with _lock:
            _latest.append(notification)
        for alert in alerts:
            labels = alert.get("labels", {})
            print(json.dumps({"status": alert.get("status"), "alertname": labels.get("alertname"),
                              "severity": labels.get("severity"), "summary": alert.get("annotations", {}).get("summary"),
                              "startsAt": alert.get("startsAt"), "labels": labels}), flush=True)
        self._answer(200, b'{"status": "received"}')

    def do_GET(self) -> None:
        if self.path == "/health":
            return self._answer(200, b"ok\n", "text/plain")
        if self.path == "/alerts":
            with _lock:
                return self._answer(200, json.dumps(list(_latest)).encode())
        self._answer(404, b'{"error": "GET /alerts or /health"}')

    def log_message(self, *args) -> None:  # one line per alert is logged above, not per request
        pass


def main() -> None:
    port = int(os.environ.get("PORT", "8080"))
    print(f"alert-webhook: listening on :{port}, POST /alerts", file=sys.stderr, flush=True)
    ThreadingHTTPServer(("0.0.0.0", port), Receiver).serve_forever()


if __name__ == "__main__":
    main()
