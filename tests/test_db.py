"""The database loader: strict, every error names file:line."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from cronos.analysis.db import builtin_paths, load_db, parse_db_text
from cronos.errors import DatabaseError
from cronos.model import Method

GOOD = """\
# a comment
Fingerprint Test OS 1
Class Vendor | Family | 1.X | general purpose
Source test
CronOS_Hdr(W=FAF0%TTL=64%DF=Y%ID=0%MSS=1460%O=MSTNW%WS=7)
CronOS_Syn(nbPkt=2%Time=60%p=1000000%p=2000000)
CronOS_Rst(Syn=4000000)
Spread Syn=1000,2000 SynRst=3000 SynOffset=5000
"""


def write(tmp_path, text, name="t.db"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_builtin_database_loads():
    db = load_db()
    names = {p.name for p in builtin_paths()}
    assert {"hershel.db", "talk.db", "source.db", "lab.db"} <= names
    assert len(db) >= 500  # 536 Hershel/Hershel+ stacks + talk + source
    assert any(s.file.endswith("talk.db") for s in db.signatures)


def test_good_block_round_trips(tmp_path):
    (sig,) = parse_db_text(GOOD, "t.db")
    assert sig.where == "t.db:2"
    fp = sig.states[Method.SYN_RCVD]
    assert fp.gaps_us == (1000000, 2000000) and fp.rst_us == 4000000
    assert sig.spread_us[Method.SYN_RCVD] == (1000, 2000)
    assert sig.offset_spread_us[Method.SYN_RCVD] == 5000
    (again,) = parse_db_text(sig.block(), "u.db")
    assert again.key() == sig.key() and again.spread_us == sig.spread_us


def test_a_shift_that_slips_round_trips_and_bad_slips_are_refused(tmp_path):
    text = GOOD.replace("SynOffset=5000", "SynOffset=5000 SynSlip=-1420000,-200000,40")
    (sig,) = parse_db_text(text, "t.db")
    assert sig.offset_slip_us[Method.SYN_RCVD] == (-1420000, -200000, 40)
    (again,) = parse_db_text(sig.block(), "u.db")
    assert again.offset_slip_us == sig.offset_slip_us
    for bad, why in [
        ("SynSlip=-200000,-1420000,40", "LO <= HI"),
        ("SynSlip=-1,0,0", "1..100"),
        ("SynSlip=-1,0", "LO,HI,PERCENT"),
    ]:
        with pytest.raises(DatabaseError, match=why):
            load_db([write(tmp_path, GOOD.replace("SynOffset=5000", "SynOffset=5000 " + bad))],
                    builtin=False)  # fmt: skip
    with pytest.raises(DatabaseError, match="SynSlip without SynOffset"):
        load_db([write(tmp_path, GOOD.replace("SynOffset=5000", "SynSlip=-1,0,5"))],
                builtin=False)  # fmt: skip


def test_user_db_adds_to_builtin(tmp_path):
    n = len(load_db())
    db = load_db([write(tmp_path, GOOD)])
    assert len(db) == n + 1


@pytest.mark.parametrize(
    "text, line, reason",
    [
        ("Class a | b | c | d\n", 1, "must start with 'Fingerprint"),
        (GOOD.replace("Source test\n", ""), 2, "no Source"),
        (GOOD.replace("Class Vendor | Family | 1.X | general purpose\n", ""), 2, "no Class"),
        (GOOD.replace("Class Vendor | Family | 1.X", "Class Vendor | Family"), 3, "Class needs"),
        (GOOD.replace("%p=2000000)", ")"), 6, "nbPkt=2 but 1"),
        (GOOD.replace("TTL=64", "TTL=999"), 5, "TTL=999 out of range"),
        (GOOD.replace("Spread Syn=1000,2000", "Spread Syn=1000"), 8, "one value per p="),
        (GOOD + "Bogus line\n", 9, "unknown line"),
        (GOOD.replace("CronOS_Rst(Syn=4000000)", "CronOS_Rst(Foo=1)"), 7, "unknown state"),
        (
            GOOD.replace("CronOS_Rst(Syn=4000000)", "CronOS_Rst(Syn=4000000%Syn=-)"),
            2,
            "a signature has one Syn delay",
        ),
        (GOOD + "CronOS_Syn(nbPkt=0%Time=60)\n", 9, "second CronOS_Syn"),
        (GOOD + "Fingerprint B\n", 9, "without a blank line"),
    ],
)
def test_errors_name_file_and_line(tmp_path, text, line, reason):
    path = write(tmp_path, text)
    with pytest.raises(DatabaseError) as exc:
        load_db([path], builtin=False)
    msg = str(exc.value)
    assert msg.startswith(f"{path}:{line}: "), msg
    assert reason in msg


def test_duplicate_name(tmp_path):
    other = GOOD.replace("p=2000000", "p=3000000")
    path = write(tmp_path, GOOD + "\n" + other)
    with pytest.raises(DatabaseError, match=r":11: duplicate name 'Test OS 1', already at .*:2"):
        load_db([path], builtin=False)


def test_duplicate_signature_across_files(tmp_path):
    a = write(tmp_path, GOOD, "a.db")
    b = write(tmp_path, GOOD.replace("Test OS 1", "Test OS 2"), "b.db")
    with pytest.raises(DatabaseError) as exc:
        load_db([a, b], builtin=False)
    assert str(exc.value) == f"{b}:2: signature already covered by line {a}:2"


@pytest.mark.parametrize(
    "content, reason",
    [(b"", "empty file"), (b"  \n\n", "empty file"), (b"Fing\0erprint", "binary"),
     (b"\xff\xfe\x00", "binary"), (b"Fingerprint \xff\n", "not UTF-8")],
)  # fmt: skip
def test_rejects_empty_and_binary(tmp_path, content, reason):
    p = tmp_path / "x.db"
    p.write_bytes(content)
    with pytest.raises(DatabaseError, match=reason):
        load_db([p], builtin=False)


def test_rejects_long_lines(tmp_path):
    path = write(tmp_path, GOOD.replace("Source test", "Source " + "x" * 5000))
    with pytest.raises(DatabaseError, match=r":4: line longer than 4096"):
        load_db([path], builtin=False)


def test_missing_file(tmp_path):
    with pytest.raises(DatabaseError, match=r"nope.db:0: cannot read"):
        load_db([tmp_path / "nope.db"], builtin=False)


def test_comment_only_file_is_accepted(tmp_path):
    assert len(load_db([write(tmp_path, "# nothing yet\n")], builtin=False)) == 0


ROOT = Path(__file__).resolve().parents[1]
HERSHEL = ROOT.parent / "shared" / "data" / "hershel"


@pytest.mark.skipif(not HERSHEL.is_dir(), reason="Hershel data (../shared) not present")
def test_hershel_db_is_what_the_converter_writes():
    spec = importlib.util.spec_from_file_location("hershel2db", ROOT / "scripts" / "hershel2db.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["hershel2db"] = mod
    spec.loader.exec_module(mod)
    text, n = mod.render(HERSHEL)
    assert n == 116 + 420
    assert (ROOT / "cronos" / "data" / "hershel.db").read_text() == text


def test_base_targets_of_issue_15():
    """At least 25 blocks cover all three states and the blocks derived from
    source or measured in the lab span at least 20 families, each block with
    its provenance (a law counts once)."""
    db = load_db()
    blocks = {}
    for s in db.signatures:
        blocks.setdefault(s.law_block or s.name, s)
    assert all(s.sources for s in blocks.values())
    three = [n for n, s in blocks.items() if len(s.states) == 3]
    assert len(three) >= 25, three
    fams = {c.family for s in blocks.values() if s.sources[0].split()[0] in ("source", "lab")
            for c in s.classes if c.family}  # fmt: skip
    assert len(fams) >= 20, sorted(fams)
