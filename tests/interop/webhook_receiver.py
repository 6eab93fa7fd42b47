"""An HTTP receiver built on Python's http.server: a webhook peer we did not write.

Usage: webhook_receiver.py PORT LOG [STATUS ...]
Answers each POST with the next STATUS of the list (then 200 once the list is used up) and
appends one JSON line per request to LOG: {"status", "path", "headers", "body"}. The line is
written and flushed before the answer goes out, so a client that saw the answer finds it.
Serves on 127.0.0.1:PORT until killed.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


def main(port: int, log_path: str, statuses: list[int]) -> None:
    remaining = list(statuses)

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            raw = self.rfile.read(length)
            status = remaining.pop(0) if remaining else 200
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
            with open(log_path, "a", encoding="utf-8") as log:
                log.write(
                    json.dumps(
                        {
                            "status": status,
                            "path": self.path,
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "body": body,
                        }
                    )
                    + "\n"
                )
                log.flush()
            reply = json.dumps({"received": status < 300}).encode()
            self.send_response(status)
            if status == 503:
                self.send_header("Retry-After", "0")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args) -> None:
            pass

    # One request at a time: the status list is consumed in arrival order.
    server = HTTPServer(("127.0.0.1", port), Receiver)
    server.serve_forever()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], [int(s) for s in sys.argv[3:]])
