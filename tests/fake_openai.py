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
import math
import random
import re
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import orjson

from extraction.extractors.llm_prompt import USERS_MARKER

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
    """Events for one user: runs of the same action and item become one event. Contexts hold the
    details the prompt asks for (model, keyword, place, app, count), as a schema-bound answer does."""
    events, run = [], None
    for behavior_id, _time, action, item, app, _media, place, _duration in behaviors:
        if events and run == (action, item):
            events[-1]["behavior_ids"].append(behavior_id)
            events[-1]["context"]["count"] = len(events[-1]["behavior_ids"])
            continue
        run = (action, item)
        if action == "visit":
            event_type = "store_visit" if "4S" in place else "place_visit"
            context = {"place": place}
        else:
            event_type = {"browse": "browse_model"}.get(action, action)
            context = {"keyword": item} if action == "search" else {"model": item} if item else {}
            if app:
                context["app"] = app
        conversion = event_type in ("purchase", "add_to_cart", "store_visit")
        events.append(
            {
                "event_type": event_type,
                "category": "conversion" if conversion else "engagement",
                "behavior_ids": [behavior_id],
                "context": context,
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
        # Provider personalities (see the block below `steer`): None is the plain, accepting server.
        self.personality: Personality | None = None
        self.bodies: deque[tuple[int, dict]] = deque()  # error answers for the next requests, verbatim
        # The provider's own limits (set with `limit()`): None, or what it enforces with 429s.
        self.limits: ProviderLimits | None = None

    def limit(self, *, tokens_per_minute: int = 0, requests_per_minute: int = 0, burst_seconds=2.0):
        """Enforce tokens and requests per minute as a provider does: 429 with Retry-After."""
        self.limits = ProviderLimits(tokens_per_minute, requests_per_minute, burst_seconds)

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
            "parameters": {key: value for key, value in body.items() if key != "messages"},
            "authorization": headers.get("authorization", ""),
        }
        with self.lock:
            self.requests.append(record)
        echo = f" (request: authorization {headers.get('authorization')!r}, query {headers.get(':query')!r})"
        if headers.get("authorization") != f"Bearer {API_KEY}":
            return self._error(record, 401, "Incorrect API key provided" + echo, "invalid_api_key")
        if refused := (self.bodies.popleft() if self.bodies else None) or (
            self.personality and self.personality.refusal(body, prompt)
        ):
            record["status"] = refused[0]
            return refused[0], {}, refused[1]
        if body.get("model") not in self.models and not self.personality:
            return self._error(
                record, 404, f"The model `{body.get('model')}` does not exist" + echo, "model_not_found"
            )
        if directive == "429":
            return self._error(
                record, 429, "Rate limit reached", "rate_limit_exceeded", {"Retry-After": self.retry_after}
            )
        asked = body.get("max_completion_tokens") or body.get("max_tokens") or 0
        estimate = len(prompt.encode()) // 3 + asked
        if self.limits and (wait := self.limits.admit(estimate)):
            return self._error(
                record,
                429,
                "Rate limit reached for requests or tokens per minute",
                "rate_limit_exceeded",
                {"Retry-After": f"{math.ceil(wait)}"},
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
        if self.personality:
            answer = self.personality.answer(body, answer)
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
        if self.limits:  # what the estimate held beyond the answer goes back
            self.limits.refund(estimate - len(prompt.encode()) // 3 - len(content.encode()) // 3)
        record["usage"] = usage = {
            "prompt_tokens": len(prompt.encode()) // 3,
            "completion_tokens": len(content.encode()) // 3,
            "total_tokens": (len(prompt.encode()) + len(content.encode())) // 3,
        }
        message = {"role": "assistant", "content": content}
        if self.personality:
            self.personality.dress(message, usage)
        return (
            200,
            {},
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
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


class ProviderLimits:
    """Tokens and requests per minute kept as a provider keeps them: buckets refilled at the rate,
    holding `burst_seconds` of it. A request is counted when it arrives by its prompt and the
    room it asks for the answer (max_tokens), as OpenAI counts it; what the answer did not use
    goes back when it is answered. A request arriving when a bucket is past its burst is refused,
    with the seconds until it would not be."""

    def __init__(self, tokens_per_minute: int, requests_per_minute: int, burst_seconds: float):
        self.tokens_per_minute, self.requests_per_minute = tokens_per_minute, requests_per_minute
        self.burst = burst_seconds
        self.lock = threading.Lock()
        self.tokens_at = self.requests_at = 0.0  # the time up to which each rate is spent

    def admit(self, tokens: int) -> float:
        """0: admitted and counted; else the seconds to wait (refused, nothing counted)."""
        with self.lock:
            now = time.monotonic()
            wait = max(
                self.tokens_at - self.burst - now if self.tokens_per_minute else 0.0,
                self.requests_at - self.burst - now if self.requests_per_minute else 0.0,
            )
            if wait > 0:
                return wait
            if self.tokens_per_minute:
                self.tokens_at = max(self.tokens_at, now) + tokens * 60 / self.tokens_per_minute
            if self.requests_per_minute:
                self.requests_at = max(self.requests_at, now) + 60 / self.requests_per_minute
            return 0.0

    def refund(self, tokens: int) -> None:
        if self.tokens_per_minute and tokens > 0:
            with self.lock:
                self.tokens_at -= tokens * 60 / self.tokens_per_minute


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


# Provider personalities (issue 25) -----------------------------------------------------------------
# Each one refuses what the real provider refuses, with the status and the error body it answers
# (their sources are cited beside them), serves its own model name, and returns reasoning the way
# the provider does. `fake.personality = PERSONALITIES[name]()` makes the server that provider.
REASONING = "用户先搜索车型，再多次浏览同一车型并对比，随后到店：把相邻的浏览合并为一个事件。"


class Personality:
    """A provider as the extractor meets it: what it refuses, how it answers."""

    model = MODEL
    guided = False  # answers follow a requested JSON schema (structured outputs, guided decoding)

    def refusal(self, body: dict, prompt: str) -> tuple[int, dict] | None:
        """(status, body) when the provider would refuse this request."""
        if body.get("model") != self.model:
            return self.unknown_model(str(body.get("model")))
        return None

    def unknown_model(self, model: str) -> tuple[int, dict]:
        raise NotImplementedError

    def answer(self, body: dict, answer: dict) -> dict:
        schema = (body.get("response_format") or {}).get("json_schema") or {}
        return conform(schema["schema"], answer) if self.guided and "schema" in schema else answer

    def dress(self, message: dict, usage: dict) -> None:
        """Add the provider's reasoning to an answer (in place): the message's fields, the usage."""


def conform(schema: dict, answer: dict) -> dict:
    """The answer as a decoder bound to `schema` writes it: only the users and properties the
    schema names, each required one present (null where the model had nothing to say)."""
    definitions = schema.get("$defs", {})

    def shape(node: dict, value):
        while "$ref" in node:
            node = definitions[node["$ref"].rsplit("/", 1)[-1]]
        kinds = node.get("type", [])
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if "object" in kinds:
            value = value if isinstance(value, dict) else {}
            return {key: shape(sub, value.get(key)) for key, sub in node.get("properties", {}).items()}
        if "array" in kinds:
            return [shape(node["items"], item) for item in (value if isinstance(value, list) else [])]
        if "enum" in node and value not in node["enum"]:
            return node["enum"][0]
        return value

    return shape(schema, {"users": answer})["users"]


def strict_schema_problem(node: dict, where: tuple = ()) -> str:
    """Why OpenAI's strict structured outputs would refuse this schema ("": it would not)."""
    if node.get("type") == "object" or "properties" in node:
        if node.get("additionalProperties") is not False:
            return f"In context={where}, 'additionalProperties' is required to be supplied and to be false."
        missing = [key for key in node.get("properties", {}) if key not in node.get("required", [])]
        if missing:
            return (
                f"In context={where}, 'required' is required to be supplied and to be an array including "
                f"every key in properties. Missing '{missing[0]}'."
            )
    children = [(("properties", key), sub) for key, sub in node.get("properties", {}).items()]
    children += [(("$defs", key), sub) for key, sub in node.get("$defs", {}).items()]
    if isinstance(node.get("items"), dict):
        children.append((("items",), node["items"]))
    for step, child in children:
        if problem := strict_schema_problem(child, where + step):
            return problem
    return ""


def openai_error(message: str, param: str | None, code: str | None, kind="invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class OpenAIReasoning(Personality):
    """OpenAI's reasoning models (o-series, gpt-5) on api.openai.com/v1: max_tokens and any
    temperature but 1 are refused, strict JSON schemas are enforced, reasoning is hidden and only
    counted (usage.completion_tokens_details.reasoning_tokens, a part of completion_tokens)."""

    model = "o4-mini"
    guided = True
    hidden_reasoning = 64  # tokens per answer

    def refusal(self, body, prompt):
        if refused := super().refusal(body, prompt):
            return refused
        if "max_tokens" in body:
            # Body as reported in griptape-ai/ComfyUI-Griptape#312 and
            # ITSpecialist111/ai_automation_suggester#38 (gpt-5, o1): HTTP 400.
            return 400, openai_error(
                "Unsupported parameter: 'max_tokens' is not supported with this model. "
                "Use 'max_completion_tokens' instead.",
                "max_tokens",
                "unsupported_parameter",
            )
        if "temperature" in body and body["temperature"] != 1:
            # Body as reported in gabrii/Cursor-Azure-GPT-5#33 and OpenHands/OpenHands#4131: HTTP 400.
            return 400, openai_error(
                f"Unsupported value: 'temperature' does not support {body['temperature']:g} with this "
                "model. Only the default (1) value is supported.",
                "temperature",
                "unsupported_value",
            )
        schema = (body.get("response_format") or {}).get("json_schema") or {}
        if problem := strict_schema_problem(schema.get("schema", {})) if schema.get("strict") else "":
            # Body as reported in dottxt-ai/outlines#844 and mavam/pi-web-providers#14: HTTP 400.
            return 400, openai_error(
                f"Invalid schema for response_format '{schema.get('name')}': {problem}",
                "response_format",
                "invalid_json_schema",
            )
        return None

    def unknown_model(self, model):
        # OpenAI's 404 for a model it does not serve (as quoted in zh-plus/openlrc#63).
        return 404, openai_error(
            f"The model `{model}` does not exist or you do not have access to it.", None, "model_not_found"
        )

    def dress(self, message, usage):
        usage["completion_tokens"] += self.hidden_reasoning
        usage["total_tokens"] += self.hidden_reasoning
        usage["completion_tokens_details"] = {"reasoning_tokens": self.hidden_reasoning, "audio_tokens": 0}
        usage["prompt_tokens_details"] = {"cached_tokens": 0, "audio_tokens": 0}


class DeepSeekReasoner(Personality):
    """DeepSeek's deepseek-reasoner on api.deepseek.com: no JSON schema, no JSON mode (R1), the
    temperature accepted and ignored (its reasoning guide: "will not trigger an error but will also
    have no effect"), the chain of thought in message.reasoning_content and counted in
    usage.completion_tokens_details.reasoning_tokens."""

    model = "deepseek-reasoner"

    def refusal(self, body, prompt):
        if refused := super().refusal(body, prompt):
            return refused
        kind = (body.get("response_format") or {}).get("type")
        if kind == "json_schema":
            # Body as quoted in llm-exe/llm-exe#662 and UKGovernmentBEIS/inspect_ai#4916: HTTP 400.
            return 400, openai_error(
                "This response_format type is unavailable now", None, "invalid_request_error"
            )
        if kind == "json_object":
            # Body as quoted in gomate-community/TrustRAG#140 (deepseek-ai/DeepSeek-R1#614): HTTP 400.
            return 400, openai_error(
                "deepseek-reasoner does not support Json Output.", None, "invalid_request_error"
            )
        return None

    def unknown_model(self, model):
        # DeepSeek answers an unknown model with HTTP 400 (langbot-app/LangBot#1643, ConardLi/easy-dataset#9).
        return 400, openai_error("Model Not Exist", None, "invalid_request_error")

    def dress(self, message, usage):
        reasoning = len(REASONING.encode()) // 3
        message["reasoning_content"] = REASONING
        usage["completion_tokens"] += reasoning
        usage["total_tokens"] += reasoning
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
        usage["prompt_cache_hit_tokens"], usage["prompt_cache_miss_tokens"] = 0, usage["prompt_tokens"]


class VLLM(Personality):
    """vLLM's OpenAI-compatible server (v0.10.1 and later: errors nested under "error", with the
    HTTP status as the code) serving Qwen3 with a reasoning parser and structured outputs: answers
    follow a requested JSON schema (guided decoding), the reasoning comes in message.reasoning and
    is not counted apart; a prompt and max_tokens beyond max_model_len, and schemas with features
    its xgrammar backend lacks, are refused."""

    model = "Qwen/Qwen3-8B"
    guided = True
    max_model_len = 32768
    unsupported_schema_keys = ("minItems", "maxItems", "pattern", "format")  # xgrammar before 0.1.19

    def refusal(self, body, prompt):
        if refused := super().refusal(body, prompt):
            return refused
        asked = body.get("max_completion_tokens") or body.get("max_tokens") or 0
        prompt_tokens = sum(len(m["content"].encode()) // 3 for m in body["messages"])
        if prompt_tokens + asked > self.max_model_len:
            # Message as in vllm-project/vllm#12886 and #20409; the nested shape of v0.10.1 and
            # later as in foundation-model-stack/fms-guardrails-orchestrator#511: HTTP 400.
            return 400, self.error(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you "
                f"requested {prompt_tokens + asked} tokens ({prompt_tokens} in the messages, {asked} in "
                "the completion). Please reduce the length of the messages or completion.",
                "BadRequestError",
                400,
            )
        schema = (body.get("response_format") or {}).get("json_schema") or {}
        if any(f'"{key}"' in json.dumps(schema) for key in self.unsupported_schema_keys):
            # Message as in vllm-project/vllm#16321 and #16880: HTTP 400.
            return 400, self.error(
                "The provided JSON schema contains features not supported by xgrammar.",
                "BadRequestError",
                400,
            )
        return None

    @staticmethod
    def error(message: str, kind: str, code: int, param: str | None = None) -> dict:
        return {"error": {"message": message, "type": kind, "param": param, "code": code}}

    def unknown_model(self, model):
        # vllm-project/vllm#58025 quotes this body (v0.28); HTTP 404.
        return 404, self.error(f"The model `{model}` does not exist.", "NotFoundError", 404, "model")

    def dress(self, message, usage):
        message["reasoning"] = REASONING
        usage["completion_tokens"] += len(REASONING.encode()) // 3
        usage["total_tokens"] += len(REASONING.encode()) // 3


class Ollama(Personality):
    """Ollama's OpenAI-compatible endpoint (http://host:11434/v1) serving deepseek-r1: max_tokens
    (its only cap: max_completion_tokens is not in its request struct and is ignored),
    JSON mode and JSON schemas (honoured, v0.5 and later; openai/openai.go FromChatRequest), the
    model's <think> block in the content, usage without details."""

    model = "deepseek-r1:8b"
    guided = True

    def unknown_model(self, model):
        # Body as quoted in netease-youdao/QAnything#555; the shape of openai/openai.go's
        # ErrorResponse (type "not_found_error" in later versions, "api_error" before): HTTP 404.
        return 404, openai_error(f'model "{model}" not found, try pulling it first', None, None, "api_error")

    def dress(self, message, usage):
        message["content"] = f"<think>\n{REASONING}\n</think>\n\n{message['content']}"
        usage["completion_tokens"] += len(REASONING.encode()) // 3
        usage["total_tokens"] += len(REASONING.encode()) // 3


PERSONALITIES = {
    "openai-reasoning": OpenAIReasoning,
    "deepseek-reasoner": DeepSeekReasoner,
    "vllm": VLLM,
    "ollama": Ollama,
}
# (end of the provider personalities) ---------------------------------------------------------------


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
        # shutdown() waits for the loop to look (every half second by default): once per test.
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> "FakeOpenAIServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
