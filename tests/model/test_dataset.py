"""dataset.toml and the CSVs it declares: every mistake is one line naming the file, the column and the line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from model.dataset import load_dataset, read_schema
from model.errors import RecguardError

ROOT = Path(__file__).resolve().parents[2]

TOML = """\
[users]
file = "people.csv"
id = "pid"
numeric = ["years"]
categorical = ["job"]
segment = "job"
personal = ["zip"]

[items]
file = "things.csv"
id = "tid"
numeric = ["cost"]
categorical = ["kind"]

[interactions]
file = "events.csv"
user = "who"
item = "what"
time = "when"
"""
PEOPLE = "pid,years,job,zip,note\np1,30,cook,01234,a\np2,41,cook,99999,b\np3,,pilot,12345,\n"
THINGS = "tid,cost,kind\nt1,1.5,x\nt2,2,y\nt3,,x\n"
EVENTS = "who,what,when\np1,t2,200\np1,t1,100\np2,t3,150\np3,t1,1000\np3,t2,20\n"


def write(root: Path, toml: str = TOML, people: str = PEOPLE, things: str = THINGS, events: str = EVENTS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in (("dataset.toml", toml), ("people.csv", people), ("things.csv", things), ("events.csv", events)):
        (root / name).write_text(text)
    return root


def error(root: Path) -> str:
    with pytest.raises(RecguardError) as caught:
        load_dataset(root)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_any_column_names_are_read_as_declared(tmp_path):
    data = load_dataset(write(tmp_path))
    assert data.user_ids == ["p1", "p2", "p3"] and data.item_ids == ["t1", "t2", "t3"]
    # numeric time sorts as numbers: 20 before 1000
    assert [s.tolist() for s in data.sequences] == [[0, 1], [2], [1, 0]]
    assert data.users[0] == {"pid": "p1", "years": 30, "job": "cook", "zip": "01234", "note": "a"}
    assert data.users[2]["years"] is None and data.items[1]["cost"] == 2.0
    schema = data.schema
    assert (schema.users.segment, schema.users.personal, schema.items.categorical) == ("job", ("zip",), ("kind",))


@pytest.mark.parametrize(("toml", "message"), [
    (TOML + "[extra]\nx = 1\n", "dataset.toml: unknown section [extra] (known: users, items, interactions)"),
    (TOML.replace('segment = "job"', 'segmnet = "job"'),
     "dataset.toml: [users] unknown key 'segmnet' (known: file, id, numeric, categorical, segment, personal)"),
    (TOML.replace('time = "when"\n', ""), "dataset.toml: [interactions] missing key 'time'"),
    (TOML.replace('numeric = ["years"]', 'numeric = "years"'), "dataset.toml: [users] numeric must be a list of column names"),
    (TOML.replace('categorical = ["job"]', 'categorical = ["job", "years"]'),
     "dataset.toml: [users] column 'years' is both numeric and categorical"),
    (TOML.replace('personal = ["zip"]', 'personal = ["zip", "pid"]'), "dataset.toml: [users] column 'pid' is both id and personal"),
    (TOML.replace('segment = "job"', 'segment = "years"'),
     "dataset.toml: [users] segment 'years' is also numeric; a segment is a categorical column"),
    (TOML.replace("[items]", "[items"), "dataset.toml: not valid TOML"),
    (TOML.replace("[items]", "[goods]"), "dataset.toml: unknown section [goods]"),
    (TOML[:TOML.index("[items]")], "dataset.toml: missing section [items]"),
    (TOML.replace('file = "events.csv"', "file = 3"), "dataset.toml: [interactions] file must be a file name"),
])
def test_declaration_mistakes(tmp_path, toml, message):
    assert error(write(tmp_path, toml=toml)).startswith(message)


def test_missing_declaration_and_missing_file(tmp_path):
    write(tmp_path)
    (tmp_path / "things.csv").unlink()
    assert error(tmp_path) == f"things.csv: not found in {tmp_path}"
    (tmp_path / "dataset.toml").unlink()
    assert error(tmp_path) == f"dataset.toml: not found in {tmp_path} (declare the data: docs/own-data.md)"


def test_declared_column_absent_from_the_header(tmp_path):
    root = write(tmp_path, people=PEOPLE.replace("years", "age"))
    assert error(root) == "people.csv: missing column 'years' (found: pid, age, job, zip, note)"


def test_non_numeric_value_in_a_numeric_column_names_the_line(tmp_path):
    root = write(tmp_path, things=THINGS.replace("t2,2,y", "t2,two,y"))
    assert error(root) == "things.csv: column 'cost' is declared numeric, line 3 has 'two'"


@pytest.mark.parametrize(("people", "things", "message"), [
    (PEOPLE + "p2,50,cook,11111,c\n", THINGS, "people.csv: column 'pid' (the id) repeats 'p2' on line 5 (first on line 3)"),
    (PEOPLE, THINGS + "t1,3,y\n", "things.csv: column 'tid' (the id) repeats 't1' on line 5 (first on line 2)"),
    (PEOPLE + ",50,cook,11111,c\n", THINGS, "people.csv: column 'pid' (the id) is empty on line 5"),
])
def test_duplicate_or_empty_ids(tmp_path, people, things, message):
    assert error(write(tmp_path, people=people, things=things)) == message


def test_a_file_that_is_not_utf8_csv_names_the_line(tmp_path):
    root = write(tmp_path)
    (root / "people.csv").write_bytes(PEOPLE.encode() + b"p4,20,cook,\xff,x\n")
    assert error(root) == "people.csv: line 5 is not UTF-8 text"
    (root / "people.csv").write_text(PEOPLE + "p4,20,cook,1," + "x" * 200_000 + "\n")
    assert error(root) == "people.csv: line 5 is not CSV (field larger than field limit (131072))"


def test_a_row_of_another_width(tmp_path):
    assert error(write(tmp_path, events=EVENTS + "p1,t3\n")) == "events.csv: line 7 has 2 fields, the header has 3"


def test_interactions_with_unknown_users_or_items_are_counted_and_refused(tmp_path):
    root = write(tmp_path, events=EVENTS + "ghost,t1,5\np1,t9,6\n")
    assert error(root) == ("events.csv: column 'who': 1 of 7 rows name a user not in people.csv "
                           "(first on line 7: 'ghost'); at most 1% may")


def test_a_few_unknown_references_are_dropped_and_counted(tmp_path):
    events = "who,what,when\n" + "".join(f"p{1 + n % 3},t{1 + n % 3},{n}\n" for n in range(300)) + "p1,t9,7\n"
    data = load_dataset(write(tmp_path, events=events))
    assert (data.interactions, data.dropped) == (300, 1)


@pytest.mark.system
def test_the_cli_reports_a_bad_declaration_in_one_line_exit_2(tmp_path):
    root = write(tmp_path, toml=TOML.replace('segment = "job"', 'segmnet = "job"'))
    for command in (["train", "--data", str(root), "--out", str(tmp_path / "b")],
                    ["profile", "--data", str(root), "--out", str(tmp_path / "b")],
                    ["split", "--data", str(root), "--out", str(tmp_path / "s")]):
        result = subprocess.run([sys.executable, "-m", "proxy.cli.main", *command], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr == (f"recguard {command[0]}: dataset.toml: [users] unknown key 'segmnet' "
                                 f"(known: file, id, numeric, categorical, segment, personal)\n")


def test_read_schema_resolves_files_beside_the_declaration(tmp_path):
    schema = read_schema(write(tmp_path) / "dataset.toml")
    assert schema.files == (tmp_path / "people.csv", tmp_path / "things.csv", tmp_path / "events.csv")


SHOP_COLUMNS = ("user_id", "item_id", "email", "first_name", "last_name", "country", "weight_kg", "height_cm",
                "age", "category", "size", "price", "timestamp")


def test_no_module_but_the_generators_names_a_column_of_the_shop():
    quoted = re.compile(r"""["'](%s)["']""" % "|".join(SHOP_COLUMNS))
    bare = re.compile(r"\b(weight_kg|height_cm|first_name|last_name)\b")
    offenders = []
    for path in sorted([*(ROOT / "model").rglob("*.py"), *(ROOT / "proxy").rglob("*.py")]):
        if path in (ROOT / "model" / "synthetic.py", ROOT / "model" / "streaming.py"):
            continue  # the generators: each knows its own world's columns
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if quoted.search(line) or bare.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def test_without_a_segment_profile_and_popularity_are_global(tmp_path):
    from model.popularity import build_popularity
    from model.profile import build_profile

    data = load_dataset(write(tmp_path, toml=TOML.replace('segment = "job"\n', "")))
    profile = build_profile(data)
    assert profile["segment_field"] is None and "segments" not in profile["fields"]["years"]
    assert profile["fields"]["job"]["role"] == "feature" and profile["fields"]["note"]["role"] == "contract"
    assert profile["fields"]["zip"] == {**profile["fields"]["zip"], "type": "string", "personal": True}
    assert "domain" not in profile["fields"]["zip"]
    popularity = build_popularity(data)
    assert popularity["segments"] == {} and popularity["global"]["items"][0] == "t1"


def test_an_undeclared_column_of_codes_with_leading_zeros_stays_text(tmp_path):
    people = "pid,years,job,zip,postcode,floor\np1,30,cook,1,02139,3\np2,41,cook,2,10115,12\np3,,pilot,3,75001,0\n"
    data = load_dataset(write(tmp_path, people=people))
    assert [user["postcode"] for user in data.users] == ["02139", "10115", "75001"]  # 02139 is no number
    assert [user["floor"] for user in data.users] == [3, 12, 0]  # a lone 0 is a number


@pytest.mark.parametrize("when", [
    ["2026-03-01T10:00:00Z", "2026-03-01T09:00:00Z", "2026-03-01T10:30:00+01:00", "2026-03-01T13:00:00+02:00",
     "2026-03-01T10:00:00Z"],
    ["1772359200", "1772355600", "1772361000", "1772362800", "1772362900"],
    ["1772359200000", "1772355600000", "1772361000000", "1772362800000", "1772362900000"],
], ids=["iso-with-offsets", "epoch-seconds", "epoch-milliseconds"])
def test_histories_follow_the_time_not_the_text(tmp_path, when):
    # p3 took t1 at 10:30+01:00 (09:30 UTC), then t2 at 10:00Z: as text the second sorts first
    events = "who,what,when\n" + "".join(f"{who},{what},{stamp}\n" for (who, what), stamp in zip(
        [("p1", "t2"), ("p1", "t1"), ("p3", "t1"), ("p2", "t3"), ("p3", "t2")], when))
    data = load_dataset(write(tmp_path, events=events))
    t1, t2, t3 = (data.item_ids.index(tid) for tid in ("t1", "t2", "t3"))
    assert [s.tolist() for s in data.sequences] == [[t1, t2], [t3], [t1, t2]]


@pytest.mark.parametrize("stamp", ["12/31/2023", "yesterday", "2026-13-01T00:00:00Z", "nan"])
def test_a_time_that_is_not_one_names_the_line(tmp_path, stamp):
    events = f"who,what,when\np1,t2,2026-03-01T10:00:00Z\np1,t1,{stamp}\n"
    message = error(write(tmp_path, events=events))
    assert message.startswith("events.csv: column 'when' (the time) is not a time on line 3: "), message
