"""A real HTTP server on loopback speaking OpenAI's chat-completions protocol, for the LLM tests.

It reads the users out of the prompt (the JSON after the extractor's USERS marker) and answers
with plausible events built from their behaviour ids. `script` makes it misbehave in the ways
real endpoints do: slow, 429 with Retry-After, 500, timeouts, malformed JSON, <think> blocks,
code fences, missing / extra / foreign ids, a wrong API key. Its error bodies echo what the
request carried (the Authorization header, the query), as careless providers do.

It is also a gullible model: behaviour text holding `@@steer {json}` is obeyed, whoever's
behaviour it is, the way a prompt injection in one user's search keyword steers a real model's
answer for another user packed into the same prompt. The JSON: {"user": id, "events": [...]}
replaces that user's events ({"append": true} adds them); "behavior_ids": "all" stands for all
of that user's behaviour ids in the prompt; "grow": [keys, chars] makes the event's context that
many keys of that many characters (with formula signs, zero-width spaces, nested objects and a
number beyond 64 bits) and its label as long, with a bidi override and a NUL: a model talked into
writing a lot, as short behaviour text can do.
"""

import hashlib
import json
import random
import re
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import orjson

from extraction.extractors.llm import USERS_MARKER

DIRECTIVES = (
    "429",
    "500",
    "400",
    "timeout",
    "malformed",
    "think",
    "fence",
    "missing",
    "extra",
    "foreign",
    "empty",
    "deep",
    "echo",
)
API_KEY = "test-key"
MODEL = "fake-model"
STEER = re.compile(r"@@steer (\{.*\})")


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
        # Directives for the next requests, one each: "429", "500", "400", "timeout", "malformed",
        # "think", "fence", "missing", "extra", "foreign", "empty", "deep" (JSON nested 50,000 deep),
        # "echo" (no JSON, the prompt and the request's credentials repeated instead). The chaos
        # suite draws from DIRECTIVES.
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
            "query": headers.get(":query", {}),
            "authorization": headers.get("authorization", ""),
        }
        with self.lock:
            self.requests.append(record)
        echo = f" (request: authorization {headers.get('authorization')!r}, query {headers.get(':query')!r})"
        if headers.get("authorization") != f"Bearer {API_KEY}":
            return self._error(record, 401, "Incorrect API key provided" + echo, "invalid_api_key")
        if body.get("model") not in self.models:
            return self._error(
                record, 404, f"The model `{body.get('model')}` does not exist" + echo, "model_not_found"
            )
        if directive == "429":
            return self._error(
                record, 429, "Rate limit reached", "rate_limit_exceeded", {"Retry-After": self.retry_after}
            )
        if directive == "500":
            return self._error(record, 500, "The server had an error" + echo, "server_error")
        if directive == "400":
            return self._error(record, 400, "Bad request" + echo, "invalid_request_error")
        if directive == "timeout":
            time.sleep(self.timeout_seconds)
        answer = {user_id: answer_events(user["behaviors"]) for user_id, user in users.items()}
        steer(users, answer)
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
        # The standard library's JSON: a steered answer may hold numbers beyond 64 bits.
        content = json.dumps({"users": answer}, ensure_ascii=False)
        if directive == "malformed":
            content = content[: len(content) // 2]
        elif directive == "think":
            content = f"<think>\nThe user browsed a lot {{not json}}.\n</think>\n{content}"
        elif directive == "fence":
            content = f"Here are the events:\n```json\n{content}\n```"
        elif directive == "deep":
            content = '{"users": ' + "[" * 50_000 + "]" * 50_000 + "}"
        elif directive == "echo":  # a reply that is no JSON, but repeats what it was sent
            content = f"I cannot answer this. You sent me: {prompt}{echo}"
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


def steer(users: dict, answer: dict) -> None:
    """Obey every `@@steer {...}` found in any behaviour's text, as a gullible model would."""
    for user in users.values():
        for behavior in user["behaviors"]:
            for text in behavior[3:7]:
                match = STEER.search(text or "")
                if not match:
                    continue
                order = orjson.loads(match.group(1))
                target = order["user"]
                if target not in users:
                    continue
                events = []
                for event in order["events"]:
                    event = dict(event)
                    if event.get("behavior_ids") == "all":
                        event["behavior_ids"] = [b[0] for b in users[target]["behaviors"]]
                    if grow := event.pop("grow", None):
                        keys, chars = grow
                        filler = ("=cmd|' /C calc'!A0\u200b" + "买" * chars)[:chars]
                        event["context"] = {
                            **{f"k{n}": filler for n in range(keys)},
                            "nested": {"deeper": {"deepest": ["a"] * chars}},
                            "huge": 10**40,
                        }
                        event["label"] = "\u202e" + "买" * chars + "\u0000<script>alert(1)</script>"
                    events.append(event)
                answer[target] = [*answer.get(target, []), *events] if order.get("append") else events


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle's algorithm the body then waits for the
    # client's delayed ACK (40 ms on Linux) on every reused connection, as no real server does.
    disable_nagle_algorithm = True

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = orjson.loads(self.rfile.read(length) or b"{}")
        url = urlsplit(self.path)
        if url.path.rstrip("/") != "/v1/chat/completions":
            status, headers, payload = 404, {}, {"error": {"message": "no such path"}}
        else:
            request_headers = {k.lower(): v for k, v in self.headers.items()}
            request_headers[":query"] = dict(parse_qsl(url.query))
            status, headers, payload = self.server.fake.handle(request_headers, body)
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
