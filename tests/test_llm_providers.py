"""The LLM extractor against the providers people use, as they behave today: the test server's
personalities (tests/fake_openai.py) refuse what OpenAI's reasoning models, DeepSeek's reasoner,
vLLM and Ollama refuse, with their status codes and error bodies. A refused parameter is learned
once per endpoint and model, for every worker; answers are asked for as a JSON schema, a JSON
object or plain text, whichever the endpoint takes; reasoning tokens are counted apart."""

import hashlib
import json

import pytest
from django.core.exceptions import ValidationError

from extraction.extractors import make_extractor
from extraction.llm_cache import request_key
from extraction.llm_client import LLMCallError, LLMClient, LLMConfigError
from extraction.llm_tokens import estimate_tokens
from extraction.models import ExtractedEvent, LLMCacheEntry, LLMEndpointProfile, UserProfile
from extraction.selectors import user_inputs_load
from jobs.models import Job
from jobs.progress import job_progress
from jobs.services import job_start
from jobs.worker.drain import job_drain
from tests.cluster import wait_for
from tests.fake_openai import API_KEY, PERSONALITIES, REASONING, VLLM, OpenAIReasoning

pytestmark = pytest.mark.django_db(transaction=True)
USERS = 24
OPTIONS = {"max_concurrency": 4, "token_budget": 4000}  # about a user per call: many calls


@pytest.fixture
def sample_users(run) -> list[str]:
    run("generate_sample_data", "--users", str(USERS), "--seed", "7")
    return list(UserProfile.objects.order_by("user_id").values_list("user_id", flat=True))


def run_job(user_ids: list[str], **options) -> Job:
    job = job_start(
        user_ids=user_ids, extractor="llm", chunk_size=8, options={**OPTIONS, **options}, enqueue=False
    )
    job_drain(job.id)
    job.refresh_from_db()
    return job


def events_of(user_ids: list[str]) -> list[tuple]:
    return sorted(
        (
            e.user_id,
            e.event_type,
            e.category,
            e.label,
            tuple(e.behavior_ids),
            e.starts_at,
            e.ends_at,
            e.context,
        )
        for e in ExtractedEvent.objects.filter(user_id__in=user_ids)
    )


def answered(fake) -> list[dict]:
    return [request for request in fake.requests if request.get("status") == 200]


def refused(fake) -> list[dict]:
    return [request for request in fake.requests if request.get("status") not in (200, None)]


# What each personality costs and teaches: the parameters it refused (one extra call each, for the
# whole job), the format answers end up asked in, and how its reasoning is counted.
PROVIDERS = {
    "openai-reasoning": (
        ["max_tokens", "temperature"],
        "json_schema",
        [
            {"refused": "max_tokens", "instead": "max_completion_tokens"},
            {"refused": "temperature", "instead": ""},
        ],
        "reported",
    ),
    "deepseek-reasoner": (
        ["json_schema", "json_object"],
        "text",
        [{"refused": "response_format json_schema and json_object", "instead": ""}],
        "reported",
    ),
    "vllm": ([], "json_schema", [], "estimated"),
    "ollama": ([], "json_schema", [], "estimated"),
}


@pytest.mark.parametrize("name", list(PROVIDERS))
def test_an_llm_job_against_each_provider_ends_with_the_plain_servers_events(name, llm_server, sample_users):
    plain = run_job(sample_users)
    assert (plain.status, plain.succeeded_items) == ("completed", USERS)
    expected = events_of(sample_users)
    assert len(expected) > USERS
    ExtractedEvent.objects.all().delete()
    LLMCacheEntry.objects.all().delete()
    llm_server.requests.clear()

    personality = llm_server.personality = PERSONALITIES[name]()
    job = run_job(sample_users, model=personality.model)

    assert (job.status, job.succeeded_items, job.error) == ("completed", USERS, "")
    assert events_of(sample_users) == expected
    refusals, response_format, adapted, reasoning = PROVIDERS[name]
    # Each refused parameter cost one extra call for the whole job, however many calls it made.
    assert len(answered(llm_server)) >= 20
    assert len(refused(llm_server)) == len(refusals)
    assert [r["status"] for r in refused(llm_server)] == [400] * len(refusals)
    progress = job_progress(job)
    assert progress.llm == {
        "endpoint": llm_server.url,
        "model": personality.model,
        "response_format": response_format,
        "adapted": adapted,
    }
    last = answered(llm_server)[-1]["parameters"]
    assert last.get("response_format", {}).get("type", "text") == response_format
    if reasoning == "reported":
        reported = sum(
            r["usage"]["completion_tokens_details"]["reasoning_tokens"] for r in answered(llm_server)
        )
    else:  # estimated from the reasoning text, as the endpoint does not count it apart
        text = f"<think>\n{REASONING}\n</think>" if name == "ollama" else REASONING
        reported = len(answered(llm_server)) * estimate_tokens(text)
    # (shared among a call's users in proportion: each share is rounded)
    assert abs(job.reasoning_tokens - reported) <= USERS
    assert 0 < progress.reasoning_tokens == job.reasoning_tokens < job.completion_tokens


def test_a_refused_parameter_costs_one_extra_call_per_endpoint_and_model_across_workers(
    llm_server, make_users, clusters, api, client, personas
):
    """Two workers, two lanes each, eight calls in flight per worker: the first request to the
    endpoint and model goes alone and learns; every other request waits for it, then goes in the
    shape it learned. A second job pays nothing; another model learns for itself."""
    make_users(200, behaviors=3)
    llm_server.latency = 0.05
    llm_server.personality = OpenAIReasoning()
    cluster = clusters(OPENAI_BASE_URL=llm_server.url, OPENAI_API_KEY=API_KEY, Q_WORKERS="2")
    options = {"model": "o4-mini", "max_concurrency": 8, "token_budget": 1000}
    job = job_start(extractor="llm", chunk_size=20, options=options)
    wait_for(lambda: Job.objects.get(id=job.id).status == "completed", timeout=120, what="the job to finish")
    assert len(answered(llm_server)) >= 40
    assert [r["parameters"].get("max_tokens") for r in refused(llm_server)] == [8000, None]
    assert [(r["status"], "temperature" in r["parameters"]) for r in refused(llm_server)] == [
        (400, True),
        (400, True),
    ]
    log = cluster.log.read_text()
    assert "refused max_tokens for model 'o4-mini' (HTTP 400)" in log
    assert "refused temperature for model 'o4-mini' (HTTP 400)" in log

    # The API's progress and the admin's page say what was adapted.
    progress = api("viewer").get(f"/api/v1/jobs/{job.id}/progress/").json()
    assert progress["llm"]["adapted"] == [
        {"refused": "max_tokens", "instead": "max_completion_tokens"},
        {"refused": "temperature", "instead": ""},
    ]
    client.force_login(personas["admin"])
    page = client.get(f"/admin/jobs/job/{job.id}/change/").content.decode()
    assert "o4-mini at " in page and "refused max_tokens: sends max_completion_tokens instead" in page
    assert "refused temperature: sends nothing instead" in page

    before = len(llm_server.requests)
    again = job_start(
        user_ids=[f"u{i:03d}" for i in range(1, 101)], extractor="llm", chunk_size=20, options=options
    )
    wait_for(lambda: Job.objects.get(id=again.id).status == "completed", timeout=120, what="the second job")
    assert len(refused(llm_server)) == 2 and len(llm_server.requests) > before  # remembered: nothing refused

    llm_server.personality.model = "gpt-5-mini"  # the same endpoint, another model: it learns for itself
    third = job_start(
        user_ids=[f"u{i:03d}" for i in range(101, 201)],
        extractor="llm",
        chunk_size=20,
        options={**options, "model": "gpt-5-mini"},
    )
    wait_for(lambda: Job.objects.get(id=third.id).status == "completed", timeout=120, what="the third job")
    assert len(refused(llm_server)) == 4
    assert set(LLMEndpointProfile.objects.values_list("model", "token_parameter", "sends_temperature")) == {
        ("o4-mini", "max_completion_tokens", False),
        ("gpt-5-mini", "max_completion_tokens", False),
    }


def test_requests_waiting_for_a_probe_of_their_own_process_go_as_soon_as_it_is_answered(
    llm_server, sample_users, monkeypatch
):
    """They do not sleep out their poll of the database (kept for other processes' probes)."""
    monkeypatch.setattr("extraction.llm_client.PROBE_POLL_SECONDS", 30.0)
    llm_server.latency = 0.3
    job = run_job(sample_users)
    assert job.status == "completed"
    (_, probe_end), *others = sorted(llm_server.spans)
    assert others and probe_end <= others[0][0] < probe_end + 1.0


# Error bodies, as each provider sends them (sources beside the personalities in tests/fake_openai.py
# and below). First those naming a parameter the endpoint does without: the request is sent again
# without it, or as it asks, and answered.
def openai_error(message, param=None, code=None, kind="invalid_request_error"):
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


ADAPTED = {
    "openai max_tokens": (
        openai_error(
            "Unsupported parameter: 'max_tokens' is not supported with this model. Use "
            "'max_completion_tokens' instead.",
            "max_tokens",
            "unsupported_parameter",
        ),
        lambda sent: sent.get("max_completion_tokens") == 8000 and "max_tokens" not in sent,
    ),
    "openai temperature value": (
        openai_error(
            "Unsupported value: 'temperature' does not support 0 with this model. Only the default (1) "
            "value is supported.",
            "temperature",
            "unsupported_value",
        ),
        lambda sent: "temperature" not in sent and sent.get("max_tokens") == 8000,
    ),
    # o3-mini, as quoted in BeehiveInnovations/pal-mcp-server#78
    "openai temperature parameter": (
        openai_error(
            "Unsupported parameter: 'temperature' is not supported with this model.",
            "temperature",
            "unsupported_parameter",
        ),
        lambda sent: "temperature" not in sent,
    ),
    # langchain-ai/langchain#31490 (gpt-4 on Azure): no param, no code
    "openai json_schema for an older model": (
        openai_error(
            "Invalid parameter: 'response_format' of type 'json_schema' is not supported with this model. "
            "Learn more about supported models at the Structured Outputs guide: "
            "https://platform.openai.com/docs/guides/structured-outputs"
        ),
        lambda sent: sent["response_format"] == {"type": "json_object"},
    ),
    "openai invalid strict schema": (
        openai_error(
            "Invalid schema for response_format 'user_events': In context=(), 'additionalProperties' is "
            "required to be supplied and to be false.",
            "response_format",
            "invalid_json_schema",
        ),
        lambda sent: sent["response_format"] == {"type": "json_object"},
    ),
    "deepseek json_schema": (
        openai_error("This response_format type is unavailable now", None, "invalid_request_error"),
        lambda sent: sent["response_format"] == {"type": "json_object"},
    ),
    # vllm-project/vllm#16321: the flat body of vLLM before v0.10.1
    "vllm xgrammar": (
        {
            "object": "error",
            "message": "The provided JSON schema contains features not supported by xgrammar.",
            "type": "BadRequestError",
            "param": None,
            "code": 400,
        },
        lambda sent: sent["response_format"] == {"type": "json_object"},
    ),
    # agno-agi/agno#2553 (Volcengine Ark, Doubao): its own code, the parameter in `param`
    "volcengine json_schema": (
        {
            "error": {
                "code": "InvalidParameter",
                "message": "The parameter `response_format.type` specified in the request are not valid: "
                "invalid value: `json_schema`, supported values are: `json_object` and `text`.",
                "param": "response_format.type",
                "type": "BadRequest",
            }
        },
        lambda sent: sent["response_format"] == {"type": "json_object"},
    ),
}
SCHEMA = {
    "name": "answer",
    "strict": True,
    "schema": {"type": "object", "properties": {}, "required": [], "additionalProperties": False},
}
MESSAGES = [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "nothing"}]


def llm_client(**options) -> LLMClient:
    return LLMClient(model="fake-model", temperature=0.0, timeout=10, max_completion_tokens=8000, **options)


@pytest.mark.parametrize("name", list(ADAPTED))
def test_a_refused_parameter_is_sent_otherwise_and_remembered(name, llm_server, caplog):
    body, resent = ADAPTED[name]
    llm_server.bodies.append((400, body))
    completion = llm_client().complete(MESSAGES, schema=SCHEMA)
    assert completion.content == '{"users": {}}'
    first, again = llm_server.requests
    assert first["status"] == 400 and resent(again["parameters"])
    assert "refused" in caplog.text and "for every worker" in caplog.text
    assert body.get("error", body)["message"] not in caplog.text  # the provider's words are never logged
    llm_client().complete(MESSAGES, schema=SCHEMA)  # another client (a worker) sends it as learned
    assert resent(llm_server.requests[-1]["parameters"]) and len(llm_server.requests) == 3


def test_a_model_without_json_mode_is_asked_for_plain_text(llm_server):
    """DeepSeek's reasoner refused the schema, then JSON mode (gomate-community/TrustRAG#140)."""
    llm_server.bodies.extend(
        [
            (
                400,
                openai_error("This response_format type is unavailable now", None, "invalid_request_error"),
            ),
            (
                400,
                openai_error(
                    "deepseek-reasoner does not support Json Output.", None, "invalid_request_error"
                ),
            ),
        ]
    )
    llm_client().complete(MESSAGES, schema=SCHEMA)
    assert [r["parameters"].get("response_format", {}).get("type") for r in llm_server.requests] == [
        "json_schema",
        "json_object",
        None,
    ]


# Then those that cannot be adapted to: the job fails with the right diagnosis (an unknown model, a
# wrong URL), or the call fails naming what was refused, in our words, never the provider's.
TOO_LONG = (
    "the LLM endpoint refused the request (HTTP 400): the prompt and the room for the answer exceed "
    "the model's context; lower options.token_budget or options.max_completion_tokens"
)
DOES_NOT_KNOW = "the LLM endpoint at {url} does not know model 'fake-model' (HTTP {status}); check "
DIAGNOSED = {
    "openai unknown model": (
        404,
        openai_error(
            "The model `fake-model` does not exist or you do not have access to it.", None, "model_not_found"
        ),
        LLMConfigError,
        DOES_NOT_KNOW + "EXTRACTION_LLM_MODEL or the job's model option",
    ),
    "deepseek unknown model": (
        400,
        openai_error("Model Not Exist", None, "invalid_request_error"),
        LLMConfigError,
        DOES_NOT_KNOW + "EXTRACTION_LLM_MODEL or the job's model option",
    ),
    "vllm unknown model": (
        404,
        openai_error("The model `fake-model` does not exist.", "model", 404, "NotFoundError"),
        LLMConfigError,
        DOES_NOT_KNOW + "EXTRACTION_LLM_MODEL or the job's model option",
    ),
    # vllm-project/vllm#3485: before v0.10.1
    "vllm unknown model, flat": (
        404,
        {
            "object": "error",
            "message": "The model `fake-model` does not exist.",
            "type": "NotFoundError",
            "param": None,
            "code": 404,
        },
        LLMConfigError,
        DOES_NOT_KNOW + "EXTRACTION_LLM_MODEL or the job's model option",
    ),
    "ollama unknown model": (
        404,
        openai_error('model "fake-model" not found, try pulling it first', None, None, "api_error"),
        LLMConfigError,
        DOES_NOT_KNOW + "EXTRACTION_LLM_MODEL or the job's model option",
    ),
    "a path that is no endpoint": (
        404,
        {"detail": "Not Found"},
        LLMConfigError,
        "the LLM endpoint at {url} has no chat completions (HTTP 404); check OPENAI_BASE_URL "
        "(it usually ends in /v1)",
    ),
    "vllm context length": (
        400,
        openai_error(
            "This model's maximum context length is 8192 tokens. However, you requested 9700 "
            "tokens (1700 in the messages, 8000 in the completion). Please reduce the length of the "
            "messages or completion.",
            None,
            400,
            "BadRequestError",
        ),
        LLMCallError,
        TOO_LONG,
    ),
    # vLLM's newer wording names both token parameters: still no parameter to do without
    "vllm context length, newer": (
        400,
        openai_error(
            "'max_tokens' or 'max_completion_tokens' is too large: 8000. This model's maximum "
            "context length is 8192 tokens and your request has 1700 input tokens (8000 > 8192 - 1700).",
            None,
            400,
            "BadRequestError",
        ),
        LLMCallError,
        TOO_LONG,
    ),
    "openai context length": (
        400,
        openai_error(
            "This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 "
            "tokens. Please reduce the length of the messages.",
            "messages",
            "context_length_exceeded",
        ),
        LLMCallError,
        TOO_LONG,
    ),
    # gomate-community/TrustRAG#140's neighbour, lollipopkit/flutter_gpt_box#213: a parameter we never send
    "deepseek presence_penalty": (
        400,
        openai_error(
            "deepseek-reasoner does not support the parameter `presence_penalty`",
            None,
            "invalid_request_error",
        ),
        LLMCallError,
        "the LLM endpoint refused the request (HTTP 400)",
    ),
    "openai messages too long": (
        400,
        openai_error(
            "Invalid 'messages[1].content': string too long. Expected a string with maximum length "
            "10485760, but got a string with length 10485761 instead.",
            "messages[1].content",
            "string_above_max_length",
        ),
        LLMCallError,
        "the LLM endpoint refused the request (HTTP 400: parameter 'messages')",
    ),
    "a parameter echoing the key": (
        400,
        openai_error(f"bad key {API_KEY}", API_KEY, API_KEY),
        LLMCallError,
        "the LLM endpoint refused the request (HTTP 400)",
    ),
    "a quota": (  # no rate limit to wait out: nothing goes until someone pays
        429,
        openai_error("You exceeded your current quota, please check your plan.", None, "insufficient_quota"),
        LLMConfigError,
        "the LLM endpoint at {url} says the account's quota or balance is used up (HTTP 429); add "
        "credit, then resume the job",
    ),
}


@pytest.mark.parametrize("name", list(DIAGNOSED))
def test_a_refusal_that_cannot_be_adapted_to_is_named_for_what_it_is(name, llm_server, settings):
    settings.EXTRACTION_LLM_MAX_RETRIES = 1
    status, body, error, message = DIAGNOSED[name]
    llm_server.bodies.extend([(status, body)] * 2)
    with pytest.raises(error) as raised:
        llm_client().complete(MESSAGES, schema=SCHEMA)
    assert str(raised.value) == message.format(url=llm_server.url, status=status)
    assert "does not know model" not in str(raised.value) or "unknown model" in name
    assert LLMEndpointProfile.objects.get().token_parameter == "max_tokens"  # nothing learned


# The response format: chosen by the job, the settings, or learned ----------------------------------
def test_the_response_format_option_is_checked(llm_server, api, make_users):
    with pytest.raises(ValidationError) as raised:
        make_extractor("llm", {"response_format": "yaml"})
    assert raised.value.message_dict == {
        "options.response_format": ['must be one of: "", auto, json_schema, json_object, text']
    }
    make_users(1)
    response = api().post(
        "/api/v1/jobs/", {"extractor": "llm", "options": {"response_format": 3}}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["options.response_format"] == ["must be of type str"]


def test_a_job_keeps_the_settings_format_and_asks_for_it(llm_server, make_users, settings):
    settings.EXTRACTION_LLM_RESPONSE_FORMAT = "json_object"
    make_users(6, behaviors=3)
    job = job_start(extractor="llm", enqueue=False)
    assert job.options["response_format"] == "json_object"  # kept, whatever the settings become
    job_drain(job.id)
    job.refresh_from_db()
    assert job.status == "completed"
    assert {r["parameters"]["response_format"]["type"] for r in llm_server.requests} == {"json_object"}
    assert job_progress(job).llm["response_format"] == "json_object"


def test_a_job_asking_for_plain_text_sends_no_response_format(llm_server, make_users):
    make_users(6, behaviors=3)
    job = job_start(extractor="llm", options={"response_format": "text"}, enqueue=False)
    job_drain(job.id)
    assert Job.objects.get(id=job.id).status == "completed"
    assert all("response_format" not in r["parameters"] for r in llm_server.requests)


def test_a_job_insisting_on_a_format_the_endpoint_refuses_fails_saying_so(llm_server, make_users):
    llm_server.personality = PERSONALITIES["deepseek-reasoner"]()
    make_users(6, behaviors=3)
    job = job_start(
        extractor="llm",
        options={"model": "deepseek-reasoner", "response_format": "json_schema"},
        enqueue=False,
    )
    job_drain(job.id)
    job.refresh_from_db()
    assert job.status == "failed"
    assert job.error == (
        f"the LLM endpoint at {llm_server.url} refused response_format json_schema for model "
        "'deepseek-reasoner' (HTTP 400); set options.response_format to auto, or to a format it accepts"
    )
    # What it refused is learned all the same: an automatic job starts one format down.
    assert LLMEndpointProfile.objects.get().response_format == "json_object"


def test_the_schema_names_the_calls_users_and_passes_openais_strict_rules(llm_server, make_users):
    llm_server.personality = OpenAIReasoning()  # refuses a schema strict mode would not take
    make_users(3, behaviors=2)
    extractor = make_extractor("llm", {"model": "o4-mini", "allow_new_event_types": True})
    results = extractor.extract(user_inputs_load(["u001", "u002", "u003"]))
    assert all(isinstance(events, list) and events for events in results.values())
    (call,) = answered(llm_server)
    sent = call["parameters"]["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["strict"] is True
    users = sent["json_schema"]["schema"]["properties"]["users"]
    assert users["required"] == list(users["properties"]) == ["u001", "u002", "u003"]


def test_the_cache_key_names_the_format_and_keeps_answers_cached_before_formats(llm_server):
    before = hashlib.sha256(
        json.dumps(["m", 0.0, True, MESSAGES], ensure_ascii=False, sort_keys=True).encode()
    ).hexdigest()  # how every request was keyed when all were asked as JSON objects
    assert request_key("m", 0.0, MESSAGES, "json_object") == before
    keys = {
        request_key("m", 0.0, MESSAGES, "json_schema", SCHEMA),
        request_key("m", 0.0, MESSAGES, "json_object"),
        request_key("m", 0.0, MESSAGES, "text"),
        request_key("m", None, MESSAGES, "text"),
    }
    assert len(keys) == 4


def test_an_answer_is_cached_under_the_format_it_was_asked_in(llm_server, make_users):
    make_users(3, behaviors=2)
    inputs = user_inputs_load(["u001", "u002", "u003"])
    make_extractor("llm").extract(inputs)  # auto: asked with the call's schema
    assert [r["parameters"]["response_format"]["type"] for r in llm_server.requests] == ["json_schema"]
    LLMEndpointProfile.objects.update(response_format="json_object")  # as after a refusal of schemas
    make_extractor("llm").extract(inputs)  # the schema's answer is not the JSON object's: asked again
    assert [r["parameters"]["response_format"]["type"] for r in llm_server.requests] == [
        "json_schema",
        "json_object",
    ]
    make_extractor("llm", {"response_format": "json_schema"}).extract(inputs)  # both from the cache
    make_extractor("llm").extract(inputs)
    assert len(llm_server.requests) == 2


# Reasoning tokens and the cost estimate -----------------------------------------------------------
def test_reasoning_is_counted_shown_and_estimated(llm_server, make_users, run, api):
    llm_server.personality = PERSONALITIES["deepseek-reasoner"]()
    make_users(10, behaviors=4)
    users = user_inputs_load([f"u{i:03d}" for i in range(1, 11)])
    extractor = make_extractor("llm", {"model": "deepseek-reasoner"})
    assert extractor.estimate(users)["reasoning_tokens"] == 0  # never called: nothing known yet
    job = job_start(extractor="llm", options={"model": "deepseek-reasoner"}, enqueue=False)
    job_drain(job.id)
    job.refresh_from_db()
    assert job.status == "completed" and 0 < job.reasoning_tokens < job.completion_tokens
    items = job.items.all()
    assert job.completion_tokens == sum(item.completion_tokens for item in items)

    out, _ = run("job_status", str(job.id))
    assert f"{job.completion_tokens} completion ({job.reasoning_tokens} reasoning)" in out
    assert "llm          deepseek-reasoner at " in out and "answers as text" in out
    assert "adapted      refused response_format json_schema and json_object: sends nothing instead" in out
    assert (
        api("viewer").get(f"/api/v1/jobs/{job.id}/").json()["progress"]["reasoning_tokens"]
        == job.reasoning_tokens
    )

    # The estimate reasons in the share this endpoint and model reasoned so far.
    profile = LLMEndpointProfile.objects.get()
    share = profile.reasoning_tokens / (profile.completion_tokens - profile.reasoning_tokens)
    estimate = extractor.estimate(users)
    answers = estimate["completion_tokens"] - estimate["reasoning_tokens"]
    assert estimate["reasoning_tokens"] == round(answers * share) > 0
    out, _ = run(
        "extract",
        "--estimate",
        "--extractor",
        "llm",
        "--options",
        '{"model": "deepseek-reasoner"}',
        "--users",
        *[user.user_id for user in users],
    )
    assert f"{estimate['reasoning_tokens']:,} of them reasoning" in out


def test_a_prompt_beyond_the_models_context_fails_its_users_naming_the_options(llm_server, make_users):
    personality = llm_server.personality = VLLM()
    personality.max_model_len = 8192  # --max-model-len 8192: 8,000 tokens of answer leave too little room
    make_users(4, behaviors=3)
    job = job_start(extractor="llm", max_attempts=1, options={"model": personality.model}, enqueue=False)
    job_drain(job.id)
    job.refresh_from_db()
    assert (job.status, job.failed_items) == ("completed", 4)
    assert set(job.items.values_list("error", flat=True)) == {
        "the LLM endpoint refused the request (HTTP 400): the prompt and the room for the answer exceed the "
        "model's context; lower options.token_budget or options.max_completion_tokens"
    }
    job = job_start(
        extractor="llm", options={"model": personality.model, "max_completion_tokens": 2000}, enqueue=False
    )
    job_drain(job.id)
    assert Job.objects.get(id=job.id).succeeded_items == 4
