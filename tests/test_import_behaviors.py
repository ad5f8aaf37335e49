import gzip
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from django.core.management.base import CommandError

from extraction.models import Behavior, UserProfile

pytestmark = pytest.mark.django_db
SHANGHAI = ZoneInfo("Asia/Shanghai")

LAYOUT_A = """\
user_id,action,timestamp,item_id,app_id,media_id,poi_id,duration
u1,browse,2024-06-01 10:00:00,比亚迪 汉EV,汽车之家,,,120
u1,visit,2024-06-02 15:30:00,,,,比亚迪4S店(朝阳店),3600
u2,search,2024-06-01T09:00:00+00:00,20万 SUV,懂车帝,,,
"""
LAYOUT_B = """\
user_id,event_time,action,item,duration,app,media,poi,price,page_url
u3,2024-06-03 11:00:00,purchase,特斯拉 Model 3,7200,,,特斯拉体验中心,245000,https://x.cn/p?id=1
u3,2024-06-03 10:00:00,click,ad:试驾,15,,抖音,,,
"""


def test_it_reads_the_first_layout(run, write_file):
    out, _ = run("import_data", "behaviors", write_file("a.csv", LAYOUT_A))
    assert "read 3, imported 3, updated 0, duplicates 0, rejected 0" in out
    browse = Behavior.objects.get(user_id="u1", action="browse")
    assert browse.item == "比亚迪 汉EV"
    assert browse.app == "汽车之家"
    assert browse.duration_seconds == 120
    # Naive times are read in the configured zone (Asia/Shanghai by default).
    assert browse.occurred_at == datetime(2024, 6, 1, 10, tzinfo=SHANGHAI)
    visit = Behavior.objects.get(user_id="u1", action="visit")
    assert visit.place == "比亚迪4S店(朝阳店)"
    search = Behavior.objects.get(user_id="u2")
    assert search.occurred_at == datetime(2024, 6, 1, 9, tzinfo=UTC)
    assert search.duration_seconds is None
    assert search.extra == {}


def test_it_reads_the_second_layout_and_keeps_unknown_columns(run, write_file):
    run("import_data", "behaviors", write_file("b.csv", LAYOUT_B))
    purchase = Behavior.objects.get(user_id="u3", action="purchase")
    assert purchase.item == "特斯拉 Model 3"
    assert purchase.place == "特斯拉体验中心"
    assert purchase.duration_seconds == 7200
    assert purchase.extra == {"price": 245000, "page_url": "https://x.cn/p?id=1"}
    click = Behavior.objects.get(user_id="u3", action="click")
    assert click.media == "抖音"
    assert click.extra == {}


def test_it_creates_a_profile_for_every_new_user(run, write_file):
    run("import_data", "behaviors", write_file("a.csv", LAYOUT_A))
    assert sorted(UserProfile.objects.values_list("user_id", flat=True)) == ["u1", "u2"]
    assert UserProfile.objects.get(user_id="u1").attributes == {}


def test_it_reads_spreadsheet_exports(run, write_file):
    content = (
        "\ufeffuser_id,action,timestamp,item_id,app_id,media_id,poi_id,duration\r\n"
        'u1,compare,2024/6/1 9:05,"汉EV, Model 3",易车,,,60\r\n'
        ",,,,,,,\r\n"  # a row Excel kept for its formatting: every cell empty, as a blank line
        'u1,visit,2024/06/01 18:00:00,,,,"星巴克(朝阳店), 2楼",\r\n'
        "\r\n"
        ", ,,,,,,\r\n"
    )
    out, err = run("import_data", "behaviors", write_file("excel.csv", content))
    assert "read 2, imported 2, updated 0, duplicates 0, rejected 0" in out, err
    compare = Behavior.objects.get(action="compare")
    assert compare.item == "汉EV, Model 3"
    assert compare.occurred_at == datetime(2024, 6, 1, 9, 5, tzinfo=SHANGHAI)
    assert Behavior.objects.get(action="visit").place == "星巴克(朝阳店), 2楼"
    assert UserProfile.objects.filter(user_id="u1").exists()  # BOM not part of the header


def test_it_reports_each_bad_row_with_its_line_and_imports_the_rest(run, write_file):
    content = (
        "user_id,action,timestamp,item_id,app_id,media_id,poi_id,duration\n"
        'u1,browse,2024-06-01 10:00:00,"a long\nmulti-line item",,,,10\n'  # lines 2-3
        ",browse,2024-06-01 10:00:00,,,,,\n"  # line 4
        "u1,browse,yesterday,,,,,\n"  # line 5
        "u1,browse,2024-06-01 11:00:00,,,,,12s\n"  # line 6
        "u1,,2024-06-01 11:00:00,,,,,\n"  # line 7
        "u1,browse,2024-06-01 12:00:00,,,,,-5\n"  # line 8
        "u1,search,2024-06-01 13:00:00,ok,,,,\n"  # line 9
    )
    path = write_file("bad.csv", content)
    out, err = run("import_data", "behaviors", path)
    assert "read 7, imported 2, updated 0, duplicates 0, rejected 5" in out
    assert f"{path}:4: missing user_id" in err
    assert f"{path}:5: unparseable timestamp 'yesterday'" in err
    assert f"{path}:6: non-numeric duration '12s'" in err
    assert f"{path}:7: missing action" in err
    assert (
        f"{path}:8: duration must be from 0 to 604,800 seconds (IMPORT_MAX_DURATION_SECONDS), got '-5'" in err
    )
    assert Behavior.objects.count() == 2


def test_strict_imports_nothing_when_a_row_is_bad(run, write_file):
    content = LAYOUT_A + "u9,browse,not a time,,,,,\n"
    with pytest.raises(CommandError, match="--strict: 1 bad rows, nothing was imported"):
        run("import_data", "behaviors", write_file("a.csv", content), "--strict", "--batch-size", "1")
    assert Behavior.objects.count() == 0
    assert UserProfile.objects.count() == 0


def test_strict_imports_everything_when_all_rows_are_good(run, write_file):
    out, _ = run("import_data", "behaviors", write_file("a.csv", LAYOUT_A), "--strict")
    assert "imported 3" in out
    assert Behavior.objects.count() == 3


def test_reimporting_the_same_file_adds_nothing(run, write_file):
    path = write_file("a.csv", LAYOUT_A)
    run("import_data", "behaviors", path)
    versions = dict(UserProfile.objects.values_list("user_id", "input_version"))
    out, _ = run("import_data", "behaviors", path, "--batch-size", "2")
    assert "read 3, imported 0, updated 0, duplicates 3, rejected 0" in out
    assert Behavior.objects.count() == 3
    assert dict(UserProfile.objects.values_list("user_id", "input_version")) == versions


def test_new_behaviours_bump_only_their_users_input_version(run, write_file):
    run("import_data", "behaviors", write_file("a.csv", LAYOUT_A))
    before = dict(UserProfile.objects.values_list("user_id", "input_version"))
    more = "user_id,action,timestamp\nu1,purchase,2024-06-09 10:00\n"
    run("import_data", "behaviors", write_file("more.csv", more))
    after = dict(UserProfile.objects.values_list("user_id", "input_version"))
    assert after["u1"] == before["u1"] + 1
    assert after["u2"] == before["u2"]


def test_it_reads_json_lines_in_both_layouts(run, write_file):
    content = (
        '{"user_id": "u1", "action": "browse", "timestamp": 1717207200, "item_id": "P7", "duration": 30}\n'
        "\n"
        '{"user_id": 42, "event_time": "2024-06-01 10:00:00", "action": "purchase", "price": 199000}\n'
        "{not json\n"
        '["a list"]\n'
        '{"user_id": "u1", "action": "search", "timestamp": 1717207260000, "item_id": "续航"}\n'
    )
    path = write_file("log.jsonl", content)
    out, err = run("import_data", "behaviors", path)
    assert "read 5, imported 3, updated 0, duplicates 0, rejected 2" in out
    assert f"{path}:4: invalid JSON" in err
    assert f"{path}:5: a line must hold a JSON object" in err
    browse = Behavior.objects.get(action="browse")
    assert browse.occurred_at == datetime(2024, 6, 1, 2, tzinfo=UTC)
    assert browse.duration_seconds == 30
    assert Behavior.objects.get(action="search").occurred_at == datetime(2024, 6, 1, 2, 1, tzinfo=UTC)
    assert Behavior.objects.get(user_id="42").extra == {"price": 199000}


def test_it_reads_gzipped_files(run, write_file):
    out, _ = run("import_data", "behaviors", write_file("a.csv.gz", gzip.compress(LAYOUT_A.encode())))
    assert "imported 3" in out


def test_it_names_a_missing_column(run, write_file):
    with pytest.raises(CommandError, match="no column for occurred_at"):
        run("import_data", "behaviors", write_file("a.csv", "user_id,action,when\nu1,browse,x\n"))


@pytest.mark.parametrize("content", [b"", b"\r\n\r\n", b"\xef\xbb\xbf"])
def test_an_empty_file_is_refused_not_imported_as_nothing(run, write_file, content):
    """Usually the wrong file, or an export that failed: it said "completed, read 0"."""
    with pytest.raises(CommandError, match="the file is empty: no header line"):
        run("import_data", "behaviors", write_file("empty.csv", content))


def test_the_header_is_checked_by_its_own_names_not_by_the_first_row(run, write_file):
    short_first = "user_id,action,timestamp\nu_short\nu1,browse,2024-06-01 10:00:00\n"
    out, err = run("import_data", "behaviors", write_file("a.csv", short_first))
    assert "read 2, imported 1, updated 0, duplicates 0, rejected 1" in out and ":2: missing action" in err
    with pytest.raises(CommandError, match="no column for action, occurred_at"):
        run("import_data", "behaviors", write_file("b.csv", "user_id,when\n"))  # no row to read


def test_a_header_name_given_twice_loses_no_column_and_one_with_nul_is_refused(run, write_file):
    twice = "user_id,action,timestamp,item,item\nu1,browse,2024-06-01 10:00:00,A,B\n"
    run("import_data", "behaviors", write_file("a.csv", twice))
    behavior = Behavior.objects.get()
    assert (behavior.item, behavior.extra) == ("A", {"item_5": "B"})  # the first fills the field
    with pytest.raises(CommandError, match="the name of column 4 holds a NUL character"):
        run("import_data", "behaviors", write_file("b.csv", "user_id,action,timestamp,no\x00te\nu1,a,2024\n"))


def test_compact_times_are_read_as_times_and_long_numbers_as_unix_time(run, write_file):
    rows = [
        "u1,a,202406011000",  # yyyymmddHHMM: not Unix milliseconds in 1976
        "u1,b,20240601100005",  # yyyymmddHHMMSS
        "u1,c,1717200000",  # Unix seconds
        "u1,d,1717200000000",  # Unix milliseconds
        "u1,e,202413011000",  # no 13th month: Unix milliseconds, as before
    ]
    run("import_data", "behaviors", write_file("a.csv", "user_id,action,timestamp\n" + "\n".join(rows)))
    times = dict(Behavior.objects.values_list("action", "occurred_at"))
    assert times["a"] == datetime(2024, 6, 1, 10, tzinfo=SHANGHAI)
    assert times["b"] == datetime(2024, 6, 1, 10, 0, 5, tzinfo=SHANGHAI)
    assert times["c"] == times["d"] == datetime(2024, 6, 1, 0, 0, tzinfo=UTC)
    assert times["e"] == datetime.fromtimestamp(202413011000 / 1000, tz=UTC)


def test_a_byte_order_mark_is_read_past_when_utf8_is_named(run, write_file):
    out, _ = run("import_data", "behaviors", write_file("a.csv", "\ufeff" + LAYOUT_A), "--encoding", "utf-8")
    assert "imported 3" in out


def test_it_explains_a_file_that_is_not_utf8(run, write_file):
    content = "user_id,action,timestamp\nu1,浏览,2024-06-01\n".encode("gbk")
    path = write_file("gbk.csv", content)
    out, err = run("import_data", "behaviors", path)
    assert f"{path}:2: bytes that are not valid text in the file's encoding" in err
    assert "imported 0" in out and "rejected 1" in out
    run("import_data", "behaviors", path, "--encoding", "gbk")
    assert Behavior.objects.get().action == "浏览"
    with pytest.raises(
        CommandError, match="the header is not valid UTF-8; save the file as UTF-8 or pass --encoding"
    ):
        run("import_data", "behaviors", write_file("gbk2.csv", "用户,action,timestamp\n".encode("gbk")))


def test_it_validates_its_options(run, write_file, tmp_path):
    path = write_file("a.csv", LAYOUT_A)
    with pytest.raises(CommandError, match="--timezone: unknown time zone 'Mars/Base'"):
        run("import_data", "behaviors", path, "--timezone", "Mars/Base")
    with pytest.raises(CommandError, match="no such file"):
        run("import_data", "behaviors", tmp_path / "missing.csv")
    with pytest.raises(CommandError, match="cannot tell the format"):
        run("import_data", "behaviors", write_file("a.txt", LAYOUT_A))
    with pytest.raises(CommandError, match="--batch-size must be at least 1"):
        run("import_data", "behaviors", path, "--batch-size", "0")


def test_it_applies_the_timezone_option(run, write_file):
    run("import_data", "behaviors", write_file("a.csv", LAYOUT_A), "--timezone", "UTC")
    browse = Behavior.objects.get(action="browse")
    assert browse.occurred_at == datetime(2024, 6, 1, 10, tzinfo=UTC)
