"""SYN_RCVD end to end against real Linux stacks in the lab's namespaces."""

import signal
import subprocess
import time

import pytest

from helpers import CMD, assert_linux_profile, assert_ran, cronos, read_records, spawn

pytestmark = pytest.mark.netns
LAB_PROFILES = ["linux-synack2", "linux-synack3", "linux-orphan2"]


def _scan(lab, targets, *extra, timeout=5, popen=False):
    args = [
        "scan",
        "--netns",
        lab.scanner_ns,
        *targets,
        "-p",
        "80",
        "--timeout",
        str(timeout),
        "--full",  # complete series: the schedules are what is checked
        *extra,
    ]
    if popen:
        return spawn(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return cronos(*args, timeout=120)


def _tables(lab):
    out = subprocess.run(
        ["ip", "netns", "exec", lab.scanner_ns, "nft", "list", "tables"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [ln.split()[-1] for ln in out.splitlines() if "cronos" in ln]


def test_gaps_match_profiles_and_nbpkt_equals_retries(lab, tmp_path):
    out = tmp_path / "o.jsonl"
    r = _scan(lab, [t.ip for t in lab.targets], "--tries", "2", "-oJ", str(out))
    assert_ran(r)
    recs = read_records(out)
    assert len(recs) == 3 * 2
    by_ip = {t.ip: t for t in lab.targets}
    for rec in recs:
        assert_linux_profile(rec, by_ip[rec["target"]].profile)  # count, 1 s doubling
        assert rec["fingerprint"].startswith(f"CronOS_Syn(nbPkt={rec['nb_pkt']}%Time=")
        assert rec["features"]["options"] == "MSTNW"
    # the human report carries the talk's line for every target
    assert r.stdout.count("CronOS_Syn(nbPkt=") == 6
    assert _tables(lab) == []  # the RST guard is gone after a normal end


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_scan_removes_table_and_keeps_measurements(lab, tmp_path, sig):
    out = tmp_path / "o.jsonl"
    p = _scan(lab, [lab.targets[1].ip], "-oJ", str(out), timeout=30, popen=True)
    deadline = time.time() + 10
    while time.time() < deadline and not _tables(lab):
        time.sleep(0.05)
    assert _tables(lab), "the scan did not install its table"
    time.sleep(2.5)  # at least two SYN-ACKs are in
    p.send_signal(sig)
    _, err = p.communicate(timeout=30)
    assert p.returncode in (130, 143), err
    assert "Traceback" not in err
    assert _tables(lab) == []
    recs = read_records(out)
    assert len(recs) == 1 and recs[0]["status"] == "aborted"
    assert recs[0]["nb_pkt"] >= 1  # what was measured before the signal is kept


def test_sigkill_leftover_is_removed_at_next_start_and_by_cleanup(lab):
    for remover in ("scan", "cleanup"):
        p = _scan(lab, [lab.targets[0].ip], timeout=30, popen=True)
        deadline = time.time() + 10
        while time.time() < deadline and not _tables(lab):
            time.sleep(0.05)
        p.kill()
        p.wait()
        left = _tables(lab)
        assert len(left) == 1
        if remover == "scan":
            r = _scan(lab, [lab.targets[2].ip], timeout=1)
            assert f"removed firewall table {left[0]} left by a killed run" in r.stderr
        else:
            r = subprocess.run(["ip", "netns", "exec", lab.scanner_ns, *CMD, "cleanup"],
                               capture_output=True, text=True, timeout=60)  # fmt: skip
            assert f"nft table {left[0]}" in r.stdout
        assert r.returncode == 0, r.stderr
        assert _tables(lab) == []


def test_closed_port_is_reported_closed(lab, tmp_path):
    out = tmp_path / "o.jsonl"
    r = cronos("scan", "--netns", lab.scanner_ns, lab.targets[0].ip, "-p", "81", "--timeout",
               "2", "-oJ", str(out), timeout=60)  # fmt: skip
    assert_ran(r)
    assert read_records(out)[0]["status"] == "closed"
