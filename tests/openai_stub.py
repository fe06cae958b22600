"""A small OpenAI-compatible HTTP server on 127.0.0.1 for the text stage's tests and benchmark.

It answers /v1/completions, /v1/chat/completions and /v1/moderations like a real server, with a
deterministic completion per caption (recolor: "make it blue" and the caption with " in blue"),
and can be scripted: `statuses` are answered first, one per request (429, 500, 401, ...); captions
containing MALFORMED or UNCHANGED get completions the filters must reject; `delay` seconds are
waited before each answer; `flag` words make the moderation endpoint flag a text.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def answer_for(caption: str) -> str:
    if "MALFORMED" in caption:
        return "make it blue, with no separator"
    if "UNCHANGED" in caption:
        return f"do nothing\n%%\n{caption}."
    return f"make it blue\n%%\n{caption} in blue"


class Stub:
    def __init__(self, delay: float = 0.0):
        self.delay, self.statuses, self.flag = delay, deque(), set()
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                with stub.lock:
                    stub.requests.append({"path": self.path, "body": body})
                    status = stub.statuses.popleft() if stub.statuses else 200
                time.sleep(stub.delay)
                if status != 200:
                    return self.reply(status, {"error": {"message": f"scripted {status}", "type": "test"}})
                if self.path.endswith("/completions") and "chat" not in self.path:
                    caption = body["prompt"].rsplit("\n##\n", 1)[0]
                    return self.reply(
                        200,
                        {
                            "id": "c",
                            "object": "text_completion",
                            "created": 0,
                            "model": body["model"],
                            "choices": [
                                {"index": 0, "text": answer_for(caption), "finish_reason": "stop", "logprobs": None}
                            ],
                        },
                    )
                if self.path.endswith("/chat/completions"):
                    caption = body["messages"][-1]["content"]
                    message = {"role": "assistant", "content": answer_for(caption)}
                    return self.reply(
                        200,
                        {
                            "id": "c",
                            "object": "chat.completion",
                            "created": 0,
                            "model": body["model"],
                            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                        },
                    )
                if self.path.endswith("/moderations"):
                    texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
                    results = [
                        {"flagged": any(w in t for w in stub.flag), "categories": {}, "category_scores": {}}
                        for t in texts
                    ]
                    return self.reply(200, {"id": "m", "model": "moderation", "results": results})
                self.reply(404, {"error": {"message": "no such endpoint"}})

            def reply(self, status: int, payload: dict):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
