"""A real HTTP server on loopback speaking OpenAI's chat-completions protocol, for the LLM tests.

It reads the users out of the prompt (the JSON after the extractor's USERS marker) and answers
with plausible events built from their behaviour ids. `script` makes it misbehave in the ways
real endpoints do: slow, 429 with Retry-After, 500, timeouts, malformed JSON, <think> blocks,
code fences, missing / extra / foreign ids, a wrong API key.
"""

import hashlib
import random
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson

from extraction.extractors.llm import USERS_MARKER

DIRECTIVES = ("429", "500", "timeout", "malformed", "think", "fence", "missing", "extra", "foreign", "empty")
API_KEY = "test-key"
MODEL = "fake-model"


def answer_events(behaviors: list[list]) -> list[dict]:
    """Events for one user: runs of the same action and item become one event."""
    events = []
    for behavior_id, _time, action, item, _app, _media, place, _duration in behaviors:
        last = events[-1] if events else None
        if last and last["context"].get("action") == action and last["context"].get("item") == item:
            last["behavior_ids"].append(behavior_id)
            continue
        if action == "visit":
            event_type = "store_visit" if "4S" in place else "place_visit"
        else:
            event_type = {"browse": "browse_model"}.get(action, action)
        conversion = event_type in ("purchase", "add_to_cart", "store_visit")
        events.append(
            {
                "event_type": event_type,
                "category": "conversion" if conversion else "engagement",
                "behavior_ids": [behavior_id],
                "context": {"action": action, "item": item},
            }
        )
    return events


class FakeLLM:
    """The server's behaviour and what it saw. Tests set `latency`, push onto `script`, read `requests`."""

    def __init__(self):
        self.lock = threading.Lock()
        self.latency = 0.0
        # Directives for the next requests, one each (see DIRECTIVES).
        self.script: deque[str] = deque()
        self.bad_users: set[str] = set()  # always answered with foreign ids
        self.foreign_ids = False  # every event cites ids that are not the user's (different each time)
        self.models = {MODEL}  # the models it serves
        self.retry_after = "1"
        self.timeout_seconds = 5.0
        self.requests: list[dict] = []  # users, status, digest, at, and the usage of answers
        # Random misbehaviour (the chaos suite): each unscripted request draws a directive with this
        # probability, from a seeded generator.
        self.fault_rate = 0.0
        self.faults = random.Random(0)
        self.in_flight = 0
        self.max_in_flight = 0
        self.busy_seconds = 0.0  # summed time requests spent inside the server
        self.spans: list[tuple[float, float]] = []  # (start, end) of each request

    def handle(self, headers: dict, body: dict) -> tuple[int, dict, dict]:
        """(status, extra headers, JSON body) for one request."""
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            directive = self.script.popleft() if self.script else ""
            if not directive and self.fault_rate and self.faults.random() < self.fault_rate:
                directive = self.faults.choice(DIRECTIVES)
        started = time.monotonic()
        try:
            time.sleep(self.latency)
            return self._answer(headers, body, directive)
        finally:
            with self.lock:
                self.in_flight -= 1
                if self.requests:
                    self.busy_seconds += time.monotonic() - started
                    self.spans.append((started, time.monotonic()))

    def _answer(self, headers, body, directive):
        prompt = body["messages"][-1]["content"]
        users = orjson.loads(prompt.split(USERS_MARKER, 1)[1]) if USERS_MARKER in prompt else {}
        record = {
            "users": list(users),
            "at": time.monotonic(),
            "directive": directive,
            "digest": hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest(),
        }
        with self.lock:
            self.requests.append(record)
        if headers.get("authorization") != f"Bearer {API_KEY}":
            return self._error(record, 401, "Incorrect API key provided", "invalid_api_key")
        if body.get("model") not in self.models:
            return self._error(
                record, 404, f"The model `{body.get('model')}` does not exist", "model_not_found"
            )
        if directive == "429":
            return self._error(
                record, 429, "Rate limit reached", "rate_limit_exceeded", {"Retry-After": self.retry_after}
            )
        if directive == "500":
            return self._error(record, 500, "The server had an error", "server_error")
        if directive == "timeout":
            time.sleep(self.timeout_seconds)
        answer = {user_id: answer_events(user["behaviors"]) for user_id, user in users.items()}
        first = next(iter(answer), None)
        if self.foreign_ids:
            for events in answer.values():
                for event in events:
                    event["behavior_ids"] = [i + 1_000_000 for i in event["behavior_ids"]]
        for user_id in self.bad_users & set(answer):
            answer[user_id] = [{"event_type": "purchase", "category": "conversion", "behavior_ids": [-1]}]
        if directive == "missing" and first:
            del answer[first]
        elif directive == "extra":
            answer["stranger"] = [{"event_type": "other", "category": "engagement", "behavior_ids": [1]}]
        elif directive == "foreign" and first:
            answer[first][0]["behavior_ids"] = [987654321]
        elif directive == "empty" and first:
            answer[first] = []
        content = orjson.dumps({"users": answer}).decode()
        if directive == "malformed":
            content = content[: len(content) // 2]
        elif directive == "think":
            content = f"<think>\nThe user browsed a lot {{not json}}.\n</think>\n{content}"
        elif directive == "fence":
            content = f"Here are the events:\n```json\n{content}\n```"
        record["status"] = 200
        record["usage"] = usage = {
            "prompt_tokens": len(prompt.encode()) // 3,
            "completion_tokens": len(content.encode()) // 3,
            "total_tokens": (len(prompt.encode()) + len(content.encode())) // 3,
        }
        return (
            200,
            {},
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": content},
                    }
                ],
                "usage": usage,
            },
        )

    @staticmethod
    def _error(record, status, message, code, headers=None):
        record["status"] = status
        return (
            status,
            headers or {},
            {"error": {"message": message, "type": "invalid_request_error", "code": code}},
        )


def tokens_reported(fake: FakeLLM, kind: str) -> int:
    """Tokens of `kind` (prompt_tokens, completion_tokens) the server reported in all its answers."""
    return sum(request["usage"][kind] for request in fake.requests if "usage" in request)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle's algorithm the body then waits for the
    # client's delayed ACK (40 ms on Linux) on every reused connection, as no real server does.
    disable_nagle_algorithm = True

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = orjson.loads(self.rfile.read(length) or b"{}")
        if self.path.rstrip("/") != "/v1/chat/completions":
            status, headers, payload = 404, {}, {"error": {"message": "no such path"}}
        else:
            status, headers, payload = self.server.fake.handle(
                {k.lower(): v for k, v in self.headers.items()}, body
            )
        data = orjson.dumps(payload)
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
            pass

    def log_message(self, *args):
        pass


class FakeOpenAIServer:
    """Serve a FakeLLM on 127.0.0.1 (a free port) in a background thread."""

    def __init__(self):
        self.fake = FakeLLM()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.fake = self.fake
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> "FakeOpenAIServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
