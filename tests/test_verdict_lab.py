"""Verdicts on the lab: each profile named first; a profile left out is its
family with its settings read off (the Linux law's block), or "no match",
never another stack with confidence."""

import json

import pytest

from helpers import assert_ran, cronos

pytestmark = pytest.mark.netns
LAB_PROFILES = ["linux-orphan2", "linux-rto20", "linux-synack3"]


@pytest.fixture(scope="module")
def scanned(lab, tmp_path_factory):
    out = tmp_path_factory.mktemp("verdict") / "o.jsonl"
    r = cronos("scan", "--netns", lab.scanner_ns, *[t.ip for t in lab.targets], "-p", "80",
               "-m", "slf", "--timeout", "6", "--tries", "2", "-oJ", str(out))  # fmt: skip
    assert_ran(r)
    targets = {t.ip: t.profile for t in lab.targets}
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    return r.stdout, recs, targets


def test_each_profile_is_named_first_with_tally_and_confidence(scanned):
    stdout, recs, targets = scanned
    verdicts = {v["target"]: v for v in recs if v.get("type") == "verdict"}
    assert set(verdicts) == set(targets)
    for ip, profile in targets.items():
        v = verdicts[ip]
        assert v["verdict"] != "no match", (profile, v["candidates"][:2])
        best = v["candidates"][0]
        names = [c["name"] for c in v["candidates"]]
        # its measured block, or the Linux law's block with its settings read
        assert f"[lab {profile}]" in best["name"] or _reads(best["name"], profile), (profile, names)
        assert best["tests"] == 6 and best["success"] >= 5, best
        assert v["confidence"] > 0.5
    assert "Remote OS guesses: " in stdout and "success/6tests" in stdout


#: what each profile's timings must read under the Linux law: synack and
#: orphan retries, and the start of the rto_min read off
SETTINGS = {
    "linux-orphan2": ("1", "2", "~20"),
    "linux-rto20": ("2", "2", "~2"),
    "linux-synack3": ("3", "1", "~20"),
}


def _read(name: str, key: str) -> list[str]:
    """The values a family verdict reads for ``key`` (``3 or 4`` -> both)."""
    if f"{key}=" not in name:
        return []
    return name.split(f"{key}=")[1].split(",")[0].split(";")[0].split(" or ")


def _reads(name: str, profile: str) -> bool:
    """``name`` is the Linux law's block reading ``profile``'s settings (a
    count cut short by the listening window reads as a range holding them)."""
    synack, orphan, rto = SETTINGS[profile]
    return (
        "[family]" in name
        and synack in _read(name, "tcp_synack_retries")
        and orphan in _read(name, "tcp_orphan_retries")
        and f"rto_min{rto}" in name
    )


def test_a_profile_left_out_of_the_database_is_its_family_or_no_match(scanned, tmp_path):
    from cronos.analysis.classify import read_jsonl
    from cronos.analysis.db import Database, load_db
    from cronos.analysis.match import match

    _, recs, targets = scanned
    db = load_db()
    for ip, profile in targets.items():
        without = Database(tuple(s for s in db.signatures if f"[lab {profile}]" not in s.name))
        assert len(without) == len(db) - 1
        obs = read_jsonl("\n".join(json.dumps(r) for r in recs if r.get("target") == ip
                                   and "state" in r))  # fmt: skip
        res = match(obs, without)
        if res.verdict is not None and "[family]" in res.verdict:
            assert _reads(res.verdict, profile), (profile, res.verdict)
            continue
        assert res.verdict is None or res.confidence < 0.5, (profile, res.verdict)
        if res.verdict is None:  # a block ready to paste into a --db file
            block = res.observation_block
            assert block.startswith("Fingerprint UNKNOWN") and "CronOS_LastAck(" in block
