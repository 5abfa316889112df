"""A stand-in for `trtllm-serve` (no GPU here): a real child process on loopback that takes the
same command line and answers /health, /v1/models, /v1/completions and /v1/chat/completions in
the shapes trtllm-serve's OpenAI server streams. Standard library only.

Its "model" emits a deterministic word per step, derived from the prompt: ` w<N>` with
N = (sum(prompt ids) + 7 * step) % 97. Environment knobs for the supervision tests:
STANDIN_STARTUP_DELAY (seconds of 503 on /health), STANDIN_FAIL_FILE (a file holding a count:
while positive, the process decrements it and exits 3 at start), STANDIN_TOKEN_DELAY.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

STARTED = time.monotonic()
DELAY = float(os.environ.get("STANDIN_STARTUP_DELAY", "0"))
TOKEN_DELAY = float(os.environ.get("STANDIN_TOKEN_DELAY", "0"))


def words(prompt: list[int] | str, n: int) -> list[str]:
    base = sum(prompt) if isinstance(prompt, list) else sum(map(ord, prompt))
    return [f" w{(base + 7 * i) % 97}" for i in range(n)]


class Handler(BaseHTTPRequestHandler):
    model_id = "model"
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/health":
            ready = time.monotonic() - STARTED >= DELAY
            self.send_response(200 if ready else 503)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": self.model_id, "object": "model"}]})
        else:
            self._json(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        chat = self.path == "/v1/chat/completions"
        if self.path not in ("/v1/completions", "/v1/chat/completions"):
            return self._json(404, {"error": {"message": "not found"}})
        if body.get("model") != self.model_id:
            return self._json(
                404, {"object": "error", "message": f"model {body.get('model')} not found"}
            )
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        out = words(prompt, int(body.get("max_tokens") or 16))
        stops = body.get("stop") or []
        text, finish = "", "length"
        emitted: list[str] = []
        for w in out:
            text += w
            if any(s in text for s in stops):
                finish = "stop"
                break
            emitted.append(w)
        if not body.get("stream"):
            msg = (
                {"message": {"role": "assistant", "content": "".join(emitted)}}
                if chat
                else {"text": "".join(emitted)}
            )
            usage = {
                "prompt_tokens": len(prompt),
                "completion_tokens": len(emitted),
                "total_tokens": len(prompt) + len(emitted),
            }
            return self._json(
                200,
                {
                    "id": "cmpl-1",
                    "choices": [{"index": 0, **msg, "finish_reason": finish}],
                    "usage": usage,
                },
            )
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        kind = "chat.completion.chunk" if chat else "text_completion"

        def send(payload: object) -> None:
            self.wfile.write(f"data: {json.dumps(payload)}\n\n".encode())
            self.wfile.flush()

        try:
            for i, w in enumerate(emitted):
                last = i == len(emitted) - 1
                piece = {"delta": {"content": w}} if chat else {"text": w}
                send(
                    {
                        "id": "cmpl-1",
                        "object": kind,
                        "model": self.model_id,
                        "choices": [
                            {"index": 0, **piece, "finish_reason": finish if last else None}
                        ],
                    }
                )
                time.sleep(TOKEN_DELAY)
            if not emitted:
                send(
                    {
                        "id": "cmpl-1",
                        "object": kind,
                        "choices": [{"index": 0, "text": "", "finish_reason": finish}],
                    }
                )
            if (body.get("stream_options") or {}).get("include_usage"):
                send(
                    {
                        "id": "cmpl-1",
                        "object": kind,
                        "choices": [],
                        "usage": {
                            "prompt_tokens": len(prompt),
                            "completion_tokens": len(emitted),
                            "total_tokens": len(prompt) + len(emitted),
                        },
                    }
                )
            self.wfile.write(b"data: [DONE]\n\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (a cancelled request)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--tokenizer")
    parser.add_argument("--backend")
    args, _ = parser.parse_known_args()
    fail_file = os.environ.get("STANDIN_FAIL_FILE")
    if fail_file and Path(fail_file).exists():
        left = int(Path(fail_file).read_text() or 0)
        if left > 0:
            Path(fail_file).write_text(str(left - 1))
            sys.exit(3)
    Handler.model_id = args.model  # trtllm-serve names the model by its path
    ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
