"""A small OpenAI-compatible completions server for the server backend's unit tests (the real vLLM runs in
test_server_vllm.py). Its answers are a pure function of (prompt ids, seed, choice index), like a seeded server.

The same shape as vLLM 0.32's answer: each choice has ``index``, ``text``, ``finish_reason`` (``stop`` or
``length``), ``token_ids`` (with the stop token at the end when it stopped) and ``prompt_token_ids``.

Run as a script for ``server_command`` tests: ``python fake_server.py --port P --model NAME [--vocab V]``.
"""

import argparse
import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def completion_ids(
    prompt: list[int], seed: int, index: int, max_tokens: int, vocab: int, stop_id: int
) -> tuple[list[int], str]:
    digest = hashlib.sha256(json.dumps([prompt, seed, index]).encode()).digest()
    length = 1 + digest[0] % (max_tokens + 4)  # some samples run past max_tokens: truncated
    ids = [5 + digest[1 + i % 30] * (i + 1) % (vocab - 5) for i in range(min(length, max_tokens))]
    if length <= max_tokens:
        return ids + [stop_id], "stop"
    return ids, "length"


class FakeServer:
    """Serve on 127.0.0.1:``port`` (0: any free port) in a thread; knobs change its behaviour while it runs."""

    def __init__(self, model: str = "fake-model", port: int = 0, vocab: int = 256) -> None:
        self.model, self.vocab = model, vocab
        self.fail_status: int | None = None  # answer every completion with this HTTP status
        self.fail_after: int | None = None  # after this many completions, answer 500 (a dead engine)
        self.delay = 0.0  # seconds per completion
        self.error_message = "engine failure"
        self.echo_prefix: list[int] = []  # prepended to the echoed prompt ids (a server that adds a BOS)
        self.text_only: Any = None  # a tokenizer: answer with its decoded text and no ids (a non-vLLM server)
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = self.completions = 0
        self.headers: list[dict[str, str]] = []
        self.bodies: list[dict[str, Any]] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), self.handler())
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "FakeServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def answer(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if body.get("model") != self.model:
            return 404, {"error": {"message": f"The model `{body.get('model')}` does not exist.", "code": 404}}
        with self.lock:
            self.completions += 1
            dead = self.fail_after is not None and self.completions > self.fail_after
        if self.fail_status or dead:
            return self.fail_status or 500, {"error": {"message": self.error_message, "code": self.fail_status or 500}}
        (prompt,) = body["prompt"]
        if len(prompt) + body["max_tokens"] > 4096:
            return 400, {"error": {"message": "This model's maximum context length is 4096 tokens.", "code": 400}}
        choices = []
        for index in range(body.get("n", 1)):
            stop_id = (body.get("stop_token_ids") or [2])[0]
            ids, finish = completion_ids(prompt, body["seed"], index, body["max_tokens"], self.vocab, stop_id)
            echoed = self.echo_prefix + prompt
            if self.text_only is not None:
                text = self.text_only.decode([i for i in ids if i != stop_id], skip_special_tokens=True)
                choices.append({"index": index, "text": text, "finish_reason": finish, "logprobs": None})
                continue
            choices.append({"index": index, "text": " ".join(map(str, ids)), "finish_reason": finish,
                            "token_ids": ids, "prompt_token_ids": echoed, "logprobs": None})  # fmt: skip
        tokens = sum(len(c.get("token_ids", [])) for c in choices)
        usage = {"prompt_tokens": len(prompt), "completion_tokens": tokens, "total_tokens": len(prompt) + tokens}
        return 200, {"id": "cmpl-fake", "object": "text_completion", "created": 0, "model": self.model,
                     "choices": list(reversed(choices)), "usage": usage}  # fmt: skip

    def handler(self) -> type:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def reply(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                if self.path.rstrip("/") == "/v1/models":
                    self.reply(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]})
                elif self.path == "/health":
                    self.reply(200, {})
                else:
                    self.reply(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.headers.append({k.lower(): v for k, v in self.headers.items()})
                    server.bodies.append(body)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    time.sleep(server.delay)
                    self.reply(*server.answer(body))
                finally:
                    with server.lock:
                        server.in_flight -= 1

        return Handler


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="fake-model")
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--startup-delay", type=float, default=0.0)
    parser.add_argument("--exit-at-once", action="store_true")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds per completion")
    args = parser.parse_args()
    if args.exit_at_once:
        print("fake server: cannot load the model", flush=True)
        raise SystemExit(3)
    time.sleep(args.startup_delay)
    server = FakeServer(args.model, args.port, args.vocab)
    server.delay = args.delay
    print(f"fake server on {server.url}", flush=True)
    server.httpd.serve_forever()
