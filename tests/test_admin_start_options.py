"""The start form's typed options (from each extractor's own schema) and its estimate."""

import pytest

from jobs.models import Job

pytestmark = pytest.mark.django_db
START = "/admin/jobs/job/add/"


@pytest.fixture
def operator(client, personas):
    """The test client, logged in as an operator (who may start jobs)."""
    client.force_login(personas["operator"])
    return client


def test_the_form_offers_each_extractors_options_as_typed_fields(operator):
    page = operator.get(
        START,
    ).content.decode()
    assert '<fieldset class="module aligned extractor-options" data-extractor="llm">' in page
    assert 'type="number" name="llm__temperature" value="0.0" data-extractor="llm" step="any"' in page
    assert 'min="1" max="64"' in page  # max_concurrency, from option_limits
    assert 'type="checkbox" name="llm__allow_new_event_types"' in page
    assert 'name="options"' not in page  # no raw JSON any more


def test_the_chunk_size_help_gives_each_extractors_own_default(operator, monkeypatch):
    from extraction.extractors.llm import LLMExtractor

    monkeypatch.setattr(LLMExtractor, "default_chunk_size", 150)
    page = operator.get(START).content.decode()
    assert "Default: the extractor&#x27;s own (llm 150, rules 500), else 100." in page


def test_typed_options_start_a_job_with_those_options(operator, make_users):
    make_users(2)
    response = operator.post(
        START,
        {
            "extractor": "llm",
            "who": "list",
            "user_ids": "u001 u002",
            "llm__model": "qwen-plus",
            "llm__temperature": "0.3",
            "llm__max_concurrency": "4",
            "llm__allow_new_event_types": "on",
            "test__fail_users": "ignored, because another extractor was chosen",
        },
    )
    assert response.status_code == 302, response.context["form"].errors
    options = Job.objects.get().options
    assert (options["model"], options["temperature"], options["max_concurrency"]) == ("qwen-plus", 0.3, 4)
    assert options["allow_new_event_types"] is True and options["token_budget"] == 12_000  # the default


def test_a_list_option_is_typed_as_comma_separated_text(operator, make_users):
    make_users(3)
    operator.post(
        START,
        {"extractor": "test", "who": "needing", "test__error": "no", "test__fail_users": "u001, u003"},
    )
    assert Job.objects.get().options["fail_users"] == ["u001", "u003"]


def test_the_estimate_counts_users_calls_and_tokens_and_starts_nothing(operator, make_users, run):
    make_users(5, behaviors=4)
    data = {"extractor": "llm", "who": "needing", "llm__token_budget": "2000", "_estimate": "1"}
    fragment = operator.post(START, data, headers={"X-Requested-With": "fetch"})
    assert fragment.status_code == 200
    html = fragment.content.decode()
    assert not Job.objects.exists()
    out, _ = run("extract", "--estimate", "--extractor", "llm", "--options", '{"token_budget": 2000}')
    # The same computation as the command's: "estimate for 5 users with extractor llm: N calls, …"
    calls = out.split(": ")[1].split(" calls")[0]
    prompt = out.split("about ")[1].split(" prompt")[0].replace(",", "")
    assert '<td data-estimate-field="users">5</td>' in html
    assert f'<td data-estimate-field="calls">{calls}</td>' in html
    assert f'<td data-estimate-field="prompt_tokens">{prompt}</td>' in html


def test_the_estimate_of_an_offline_extractor_counts_users_without_loading_them(operator, make_users):
    make_users(3)
    response = operator.post(
        START,
        {"extractor": "rules", "who": "list", "user_ids": "u001 u002 u002", "_estimate": "1"},
    )
    page = response.content.decode()  # without the page's script: the whole form again, with it
    assert (
        '<td data-estimate-field="users">2</td>' in page and '<td data-estimate-field="calls">0</td>' in page
    )
    assert "u001 u002 u002</textarea>" in page
    assert not Job.objects.exists()


def test_an_estimate_with_bad_options_names_the_field(operator, make_users):
    make_users(1)
    response = operator.post(
        START,
        {"extractor": "llm", "who": "needing", "llm__timeout": "3000", "_estimate": "1"},
        headers={"X-Requested-With": "fetch"},
    )
    assert response.status_code == 400
    assert (
        "Timeout (s): " in response.content.decode()
        and "but a chunk is sure of only" in response.content.decode()
    )
