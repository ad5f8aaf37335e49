"""The admin and the API speak Chinese to a browser that asks for it (LocaleMiddleware), English by
default: Django's own words and the project's. The committed catalogs are complete, and the compiled
.mo files say what the .po files say (a .po edited without compilemessages fails here)."""

import gettext
import os
import shutil
from pathlib import Path

import polib
import pytest
from django.core.management import call_command

from jobs.models import Job
from jobs.services import job_start
from jobs.worker.drain import job_drain

pytestmark = pytest.mark.django_db
LOCALE = Path(__file__).resolve().parent.parent / "locale" / "zh_Hans" / "LC_MESSAGES"
ZH = {"HTTP_ACCEPT_LANGUAGE": "zh-CN,zh;q=0.9,en;q=0.5"}


@pytest.mark.parametrize("domain", ["django", "djangojs"])
def test_every_message_is_translated_and_compiled(domain):
    po = polib.pofile(str(LOCALE / f"{domain}.po"))
    assert len(po) > 10
    assert [entry.msgid for entry in po.untranslated_entries()] == []
    assert [entry.msgid for entry in po.fuzzy_entries()] == []
    with (LOCALE / f"{domain}.mo").open("rb") as handle:
        compiled = gettext.GNUTranslations(handle)
    for entry in po.translated_entries():
        if entry.msgid_plural:
            assert compiled.ngettext(entry.msgid, entry.msgid_plural, 2) == entry.msgstr_plural[0], (
                entry.msgid
            )
        else:
            assert compiled.gettext(entry.msgid) == entry.msgstr, f"{entry.msgid!r}: run compilemessages"


@pytest.mark.skipif(
    not shutil.which("xgettext") and not os.environ.get("REQUIRE_GETTEXT"),
    reason="needs GNU gettext's xgettext (apt-get install gettext)",
)
def test_the_catalogs_hold_every_message_the_code_marks(tmp_path, settings, monkeypatch):
    """makemessages over the code (linked into a folder of its own), into a copy of the catalogs: a
    message marked since they were last made was shown in English on the Chinese screens."""
    copy = tmp_path / "locale" / "zh_Hans" / "LC_MESSAGES"
    shutil.copytree(LOCALE, copy)
    for app in ("eventproject", "extraction", "jobs", "ops", "webhooks"):
        (tmp_path / app).symlink_to(LOCALE.parents[2] / app)
    settings.LOCALE_PATHS = [tmp_path / "locale"]
    monkeypatch.chdir(tmp_path)
    for domain in ("django", "djangojs"):
        call_command(
            "makemessages", locale=["zh_Hans"], domain=domain, symlinks=True, no_obsolete=True, verbosity=0
        )
        po = polib.pofile(str(copy / f"{domain}.po"))
        missing = [entry.msgid for entry in po if not entry.translated() or entry.fuzzy]
        assert missing == [], f"{domain}: run makemessages -l zh_Hans and translate these"


def test_placeholders_survive_translation():
    import re

    for entry in polib.pofile(str(LOCALE / "django.po")):
        wanted = sorted(re.findall(r"%\(\w+\)[sdr]", entry.msgid))
        for text in [entry.msgstr, *entry.msgstr_plural.values()]:
            if text:
                assert sorted(set(re.findall(r"%\(\w+\)[sdr]", text))) == sorted(set(wanted)), entry.msgid


def test_the_admin_speaks_chinese_to_a_chinese_browser_and_english_by_default(client, personas, make_users):
    make_users(3)
    job = job_start(enqueue=False)
    job_drain(job.id)
    client.force_login(personas["operator"])
    listing = client.get("/admin/jobs/job/", **ZH).content.decode()
    assert '<html lang="zh-hans"' in listing
    # Django's own words: the page's title and the site's name.
    assert "<title>选择任务查看 | Django 站点管理员</title>" in listing
    assert '<div id="site-name"><a href="/admin/">Django 管理</a></div>' in listing
    assert "取消所选任务" in listing and "已完成" in listing  # the project's: actions, statuses
    page = client.get(f"/admin/jobs/job/{job.id}/change/", **ZH).content.decode()
    for words in ("进度", "吞吐量随时间变化", "按结果统计的用户", "平均：自任务开始以来", "任务项"):
        assert words in page, words
    start = client.get("/admin/jobs/job/add/", **ZH).content.decode()
    for words in (
        "启动抽取任务",
        "所有需要抽取的用户",
        "llm 抽取器的选项",
        "温度",
        "并发数",
        "估算",
        "启动任务",
    ):
        assert words in start, words
    english = client.get("/admin/jobs/job/add/").content.decode()
    assert "Start an extraction job" in english and "启动" not in english


def test_messages_and_form_errors_come_in_chinese(client, personas, make_users):
    make_users(2)
    job = job_start(user_ids=["u001"], enqueue=False)
    client.force_login(personas["operator"])
    response = client.post(f"/admin/jobs/job/{job.id}/cancel/", follow=True, **ZH)
    assert f"任务 {job.id} 已取消。" in response.content.decode()
    again = client.post(f"/admin/jobs/job/{job.id}/cancel/", follow=True, **ZH).content.decode()
    assert "只有排队中或运行中的任务可以取消" in again
    form = client.post(
        "/admin/jobs/job/add/", {"extractor": "rules", "who": "list", "user_ids": "ghost"}, **ZH
    )
    assert "未知用户：ghost" in form.content.decode()


def test_the_apis_errors_come_in_the_language_asked_for(api, make_users):
    make_users(1)
    operator = api("operator")
    body = operator.post("/api/v1/jobs/", {"user_ids": ["ghost"]}, format="json", **ZH).json()
    assert body == {"user_ids": ["未知用户：ghost"]}
    assert operator.post("/api/v1/jobs/", {"user_ids": ["ghost"]}, format="json").json() == {
        "user_ids": ["unknown users: ghost"]
    }
    job = job_start(user_ids=["u001"], enqueue=False)
    Job.objects.filter(id=job.id).update(status="completed")
    conflict = operator.post(f"/api/v1/jobs/{job.id}/cancel/", **ZH).json()
    assert "只有排队中或运行中的任务可以取消" in conflict["detail"]
    assert api(None).get("/api/v1/jobs/", **ZH).json() == {"detail": "身份认证信息未提供。"}  # DRF's own
    assert "权限" in api("analyst").get("/api/v1/jobs/", **ZH).json()["detail"]
    assert api("operator").get("/api/v1/nothing-here/", **ZH).json() == {"detail": "未找到。"}


def test_the_scripts_catalog_carries_the_progress_cards_words(client):
    catalog = client.get("/jsi18n/", **ZH).content.decode()
    assert '"Average throughput": "\\u5e73\\u5747\\u541e\\u5410\\u91cf"' in catalog  # 平均吞吐量
    assert '"Average throughput"' not in client.get("/jsi18n/").content.decode()  # English: no entry


def test_stored_texts_are_not_translated(client, personas, make_users):
    """A job's error as recorded stays as it was written (here English), whatever the page's language."""
    make_users(1)
    job = job_start(user_ids=["u001"], enqueue=False)
    Job.objects.filter(id=job.id).update(status="failed", error="the LLM endpoint rejected the API key")
    client.force_login(personas["operator"])
    page = client.get(f"/admin/jobs/job/{job.id}/change/", **ZH).content.decode()
    assert "the LLM endpoint rejected the API key" in page


def test_a_users_page_and_the_events_chart_name_categories_and_outcomes_in_chinese(
    client, personas, make_users
):
    """The user's page showed "conversion", "engagement" and "succeeded" as stored, and its sentence
    opened a full-width parenthesis that an ASCII one outside the translation closed."""
    from extraction.models import UserProfile

    make_users(1)
    job_drain(job_start(enqueue=False).id)
    client.force_login(personas["admin"])
    page = client.get("/admin/extraction/userprofile/u001/change/", **ZH).content.decode()
    assert "<td>转化</td>" in page and "<td>互动</td>" in page and "#1 购买 (purchase, 转化)" in page
    assert ">成功</strong>" in page and "（输入版本 1）。" in page
    UserProfile.objects.filter(user_id="u001").update(input_version=2)
    page = client.get("/admin/extraction/userprofile/u001/change/", **ZH).content.decode()
    assert "（输入版本 1，当前为 2：需要重新抽取）。" in page
    chart = client.get("/admin/extraction/extractedevent/", **ZH).content.decode()
    assert "转化" in chart and ">conversion<" not in chart and "conversion:" not in chart
