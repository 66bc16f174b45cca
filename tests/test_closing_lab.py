"""LAST_ACK and FIN_WAIT1 end to end against real Linux stacks (issue: -m slf)."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, raw sockets)"),
]

CMD = [sys.executable, "-m", "cronos"]


@pytest.fixture(scope="module")
def lab():
    from cronos.lab import Lab

    with Lab.create(["linux-orphan2", "linux-rto20"]) as lab:
        yield lab


def scan(lab, targets, tmp_path, *extra, ports="80", method="slf", timeout=3):
    out = tmp_path / "o.jsonl"
    r = subprocess.run(
        [*CMD, "scan", "--netns", lab.scanner_ns, *targets, "-p", ports, "-m", method,
         "--timeout", str(timeout), "-oJ", str(out), "--full", *extra],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    with open(out) as fh:
        return r, [x for x in map(json.loads, fh) if "state" in x]  # not the verdicts


def assert_doubling_series(gaps_ms, expected_ms):
    """Same count; first gap near the profile's; each next one about twice the last."""
    assert len(gaps_ms) == len(expected_ms), (gaps_ms, expected_ms)
    first, want = gaps_ms[0], expected_ms[0]
    assert 0.8 * want - 5 <= first <= 1.5 * want + 10, (gaps_ms, expected_ms)
    # from the second gap on: the first one also holds our reaction time (the
    # RTO restarts at our ACK), which a busy scanner stretches
    for a, b in zip(gaps_ms[1:], gaps_ms[2:], strict=False):
        assert 1.7 <= b / a <= 2.4, gaps_ms


def test_slf_prints_three_lines_and_follows_each_profile(lab, tmp_path):
    r, recs = scan(lab, [t.ip for t in lab.targets], tmp_path)
    assert len(recs) == 2 * 3
    for t in lab.targets:
        assert f"Cron-OS scan report for {t.ip}" in r.stdout
        for rec in (x for x in recs if x["target"] == t.ip):
            assert rec["status"] == "ok", rec
            exp = t.expected_ms[rec["state"]]
            gaps_ms = [g / 1000 for g in rec["gaps_us"]]
            if rec["state"] == "SYN_RCVD":
                assert len(gaps_ms) == len(exp)
                assert all(abs(g - e) < 50 for g, e in zip(gaps_ms, exp, strict=True))
                continue
            assert_doubling_series(gaps_ms, exp)
            assert 0 < rec["connect_us"] < 20_000  # veth RTT: well under 20 ms
            name = {"LAST_ACK": "CronOS_LastAck", "FIN_WAIT1": "CronOS_FinWait"}[rec["state"]]
            assert rec["fingerprint"].startswith(f"{name}(nbPkt={len(exp)}%Time=")
            assert f"%Connect={rec['connect_us']}%p=" in rec["fingerprint"]
    assert r.stdout.count("CronOS_LastAck(") == 2 and r.stdout.count("CronOS_FinWait(") == 2


def test_statuses_no_close_reset_filtered(lab, tmp_path):
    ip = lab.targets[0].ip
    nobody = ip.rsplit(".", 1)[0] + ".99"  # in the lab subnet, no host there
    _, recs = scan(lab, [ip, nobody], tmp_path, ports="1235,1236", method="lf", timeout=2)
    status = {(r["target"], r["port"], r["method"]): r["status"] for r in recs}
    for m in "lf":
        assert status[(ip, 1235, m)] == "no-close"
        assert status[(ip, 1236, m)] == "reset"
        assert status[(nobody, 1235, m)] == "filtered"


def test_tries_repeat_each_state(lab, tmp_path):
    _, recs = scan(lab, [lab.targets[0].ip], tmp_path, "--tries", "3", method="lf")
    assert sorted((r["method"], r["try"]) for r in recs) == [
        (m, k) for m in "fl" for k in (1, 2, 3)
    ]
    assert len({r["src_port"] for r in recs}) == 6  # distinct source ports, concurrently
