"""LAST_ACK and FIN_WAIT1 end to end against real Linux stacks (issue: -m slf)."""

import pytest

from helpers import assert_linux_profile, scan

pytestmark = pytest.mark.netns
LAB_PROFILES = ["linux-orphan2", "linux-rto20"]


def test_slf_prints_three_lines_and_follows_each_profile(lab, tmp_path):
    r, recs = scan(lab, [t.ip for t in lab.targets], tmp_path / "o.jsonl", methods="slf")
    assert len(recs) == 2 * 3
    for t in lab.targets:
        assert f"Cron-OS scan report for {t.ip}" in r.stdout
        for rec in (x for x in recs if x["target"] == t.ip):
            assert_linux_profile(rec, t.profile)
            if rec["state"] == "SYN_RCVD":
                continue
            assert 0 < rec["connect_us"] < 20_000  # veth RTT: well under 20 ms
            name = {"LAST_ACK": "CronOS_LastAck", "FIN_WAIT1": "CronOS_FinWait"}[rec["state"]]
            assert rec["fingerprint"].startswith(f"{name}(nbPkt={rec['nb_pkt']}%Time=")
            assert f"%Connect={rec['connect_us']}%p=" in rec["fingerprint"]
    assert r.stdout.count("CronOS_LastAck(") == 2 and r.stdout.count("CronOS_FinWait(") == 2


def test_statuses_no_close_reset_filtered(lab, tmp_path):
    ip = lab.targets[0].ip
    nobody = ip.rsplit(".", 1)[0] + ".99"  # in the lab subnet, no host there
    _, recs = scan(lab, [ip, nobody], tmp_path / "o.jsonl", ports="1235,1236", methods="lf",
                   timeout=2)  # fmt: skip
    status = {(r["target"], r["port"], r["method"]): r["status"] for r in recs}
    for m in "lf":
        assert status[(ip, 1235, m)] == "no-close"
        assert status[(ip, 1236, m)] == "reset"
        assert status[(nobody, 1235, m)] == "filtered"


def test_tries_repeat_each_state(lab, tmp_path):
    _, recs = scan(lab, [lab.targets[0].ip], tmp_path / "o.jsonl", "--tries", "3", methods="lf")
    assert sorted((r["method"], r["try"]) for r in recs) == [
        (m, k) for m in "fl" for k in (1, 2, 3)
    ]
    assert len({r["src_port"] for r in recs}) == 6  # distinct source ports, concurrently
