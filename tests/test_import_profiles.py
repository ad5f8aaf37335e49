import pytest

from extraction.models import UserProfile

pytestmark = pytest.mark.django_db

PROFILES = (
    "\ufeffuser_id,age,city,interests,budget,purchase_intent,phone\r\n"
    'u1,28,北京,"SUV,新能源,自驾游",20-30万,0.8,013800001111\r\n'
    "u2,,上海,数码,,0.25,\r\n"
)


def test_it_keeps_every_column_with_numbers_and_lists(run, write_file):
    out, _ = run("import_data", "profiles", write_file("p.csv", PROFILES))
    assert "read 2, imported 2, updated 0, duplicates 0, rejected 0" in out
    assert UserProfile.objects.get(user_id="u1").attributes == {
        "age": 28,
        "city": "北京",
        "interests": ["SUV", "新能源", "自驾游"],
        "budget": "20-30万",
        "purchase_intent": 0.8,
        "phone": "013800001111",  # a leading zero means an identifier, not a number
    }
    assert UserProfile.objects.get(user_id="u2").attributes == {
        "age": None,
        "city": "上海",
        "interests": "数码",
        "budget": None,
        "purchase_intent": 0.25,
        "phone": None,
    }


def test_reimporting_the_same_profiles_changes_nothing(run, write_file):
    path = write_file("p.csv", PROFILES)
    run("import_data", "profiles", path)
    versions = dict(UserProfile.objects.values_list("user_id", "input_version"))
    out, _ = run("import_data", "profiles", path)
    assert "read 2, imported 0, updated 0, duplicates 2, rejected 0" in out
    assert dict(UserProfile.objects.values_list("user_id", "input_version")) == versions


def test_changed_attributes_are_updated_and_bump_the_input_version(run, write_file):
    run("import_data", "profiles", write_file("p.csv", PROFILES))
    changed = "user_id,age,city\nu1,29,北京\n"
    out, _ = run("import_data", "profiles", write_file("p2.csv", changed))
    assert "imported 0, updated 1" in out
    profile = UserProfile.objects.get(user_id="u1")
    assert profile.attributes == {"age": 29, "city": "北京"}
    assert profile.input_version == 2


def test_it_fills_the_profile_of_a_user_first_seen_in_behaviours(run, write_file):
    run("import_data", "behaviors", write_file("b.csv", "user_id,action,timestamp\nu1,browse,2024-06-01\n"))
    out, _ = run("import_data", "profiles", write_file("p.csv", PROFILES))
    assert "imported 1, updated 1" in out
    assert UserProfile.objects.get(user_id="u1").attributes["city"] == "北京"


def test_it_reports_rows_without_a_user_id(run, write_file):
    path = write_file("p.csv", "user_id,age\nu1,30\n,31\n")
    out, err = run("import_data", "profiles", path)
    assert "imported 1" in out and "rejected 1" in out
    assert f"{path}:3: missing user_id" in err


def test_the_last_row_of_a_user_wins(run, write_file):
    out, _ = run("import_data", "profiles", write_file("p.csv", "user_id,age\nu1,30\nu1,31\n"))
    assert "read 2, imported 1, updated 0, duplicates 1" in out
    assert UserProfile.objects.get().attributes == {"age": 31}


def test_it_reads_json_lines_as_typed(run, write_file):
    content = '{"user_id": "u1", "age": 30, "interests": ["汽车", "旅行"], "vip": true}\n'
    run("import_data", "profiles", write_file("p.jsonl", content))
    assert UserProfile.objects.get().attributes == {"age": 30, "interests": ["汽车", "旅行"], "vip": True}
