"""``cron-os db``: list, show, check (no root, no network)."""

from pathlib import Path

from helpers import cronos

ROOT = Path(__file__).resolve().parents[1]

USER_DB = """\
Fingerprint My gVisor copy
Class Google | gVisor | x | specialized
Source user measured at home
CronOS_Hdr(W=7200%TTL=64%DF=N%ID=57715%MSS=1460%O=MNNTNW%WS=5)
CronOS_Syn(nbPkt=5%Time=61%p=1005738%p=2000818%p=4001070%p=8000242%p=16000809)

Fingerprint Something new
Class Acme | AcmeOS | 1 | embedded
Source user measured
CronOS_Syn(nbPkt=3%Time=60%p=1700000%p=3900000%p=9100000)
"""


def test_list_counts_blocks_by_provenance_and_state():
    r = cronos("db", "list")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert any("[lab lwip]" in ln and ln.startswith("slf lab") for ln in lines)
    law = [ln for ln in lines if "any TCP settings [family]" in ln]
    assert len(law) == 1 and "558 settings" in law[0]  # a law is one block
    summary = r.stderr.strip().splitlines()[-1]
    assert "420 hershel+" in summary and "11 lab" in summary and "22 source" in summary


def test_list_by_class_and_a_class_nobody_has():
    r = cronos("db", "list", "--class", "solaris")
    assert r.returncode == 0 and len(r.stdout.splitlines()) >= 2
    assert any("Oracle Solaris 10" in ln and "source" in ln for ln in r.stdout.splitlines())
    assert "7 blocks" in r.stderr or "blocks (" in r.stderr
    r = cronos("db", "list", "--class", "no such os")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no block" in r.stderr


def test_show_a_block_and_a_law_as_written():
    r = cronos("db", "show", "lab uml")
    assert r.returncode == 0 and "CronOS_Syn(nbPkt=3" in r.stdout
    r = cronos("db", "show", "any TCP settings")
    assert r.returncode == 0
    assert "Law linux tcp_synack_retries=0..8" in r.stdout and "CronOS_Syn" not in r.stdout
    assert cronos("db", "show", "Plan 9").returncode == 2


def test_check_finds_what_another_block_already_explains(tmp_path):
    f = tmp_path / "user.db"
    f.write_text(USER_DB)
    r = cronos("db", "check", str(f))
    assert r.returncode == 1
    (line,) = r.stdout.splitlines()
    assert line.startswith(f"{f}:1: 'My gVisor copy' is already explained by 'gVisor netstack")
    assert "2 block(s) loaded, 1 already explained" in r.stderr
    f.write_text(USER_DB.split("\n\n")[1])
    assert cronos("db", "check", str(f)).returncode == 0


def test_check_reports_file_and_line(tmp_path):
    f = tmp_path / "bad.db"
    f.write_text(
        "Fingerprint X\nClass a | b | c | d\nSource user\nLaw linux tcp_synack_retries=1\n"
    )
    r = cronos("db", "check", str(f))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"cron-os: {f}:4: Law linux: missing tcp_orphan_retries, rto_min"


def test_the_derived_blocks_are_each_told_apart_from_the_rest():
    """Every block derived from source (source.db) is distinct from every
    other block of the database: none is explained by another."""
    r = cronos("db", "check", "cronos/data/source.db", cwd=str(ROOT))
    assert r.returncode == 0, r.stdout
    assert "22 block(s) loaded, 0 already explained" in r.stderr
