"""Results survive a kill: JSON Lines written and fsync'ed per record, and
``--resume`` measures only what is missing.

Three lab hosts with different schedules (``--timeout 5``, states ``sl``, two
tries): linux-orphan2 is done after about 6 s, linux-synack2 and
linux-default after 8 to 12 s. The scan is killed once the first host's
records are in the file, then resumed.
"""

import json
import signal
import subprocess
import time
from collections import Counter

import pytest

from helpers import assert_ran, cronos, spawn

pytestmark = pytest.mark.netns
LAB_PROFILES = ["linux-orphan2", "linux-synack2", "linux-default"]
METHODS, TRIES, PORT = "sl", 2, 80
PER_HOST = len(METHODS) * TRIES
FIELDS = {"target", "port", "src_port", "method", "state", "try", "status", "started_at",
          "time_s", "nb_pkt", "gaps_us", "arrivals_us", "packets_in", "fingerprint"}  # fmt: skip


def _args(lab, *extra):
    return ["scan", "--netns", lab.scanner_ns, *(t.ip for t in lab.targets),
            "-p", str(PORT), "-m", METHODS, "--tries", str(TRIES), "--timeout", "5",
            "--no-progress", *extra]  # fmt: skip


def _lines(path) -> tuple[list[dict], bytes]:
    """Parsed complete lines, and the partial last line (b"" if none)."""
    data = path.read_bytes() if path.exists() else b""
    *complete, tail = data.split(b"\n")
    return [json.loads(ln) for ln in complete], tail


def _measurements(records):
    return [r for r in records if "state" in r]


def _key(r):
    return (r["target"], r["port"], r["method"], r["try"])


def _wait_for_first_host(path, ip, proc, limit=30.0):
    deadline = time.time() + limit
    while time.time() < deadline and proc.poll() is None:
        try:
            recs = _measurements(_lines(path)[0])
        except ValueError:
            recs = []  # a line being written right now
        if sum(r["target"] == ip for r in recs) == PER_HOST:
            return
        time.sleep(0.05)
    pytest.fail("the first host's records never appeared")


def _check_complete(records):
    for r in _measurements(records):
        assert r.keys() >= FIELDS, r
        assert r["nb_pkt"] == len(r["gaps_us"])


def _resume(lab, path):
    r = cronos(*_args(lab, "--resume", str(path)), timeout=120)
    assert_ran(r)
    return r


def _check_exactly_once(lab, records):
    good = [r for r in _measurements(records) if r["status"] != "aborted"]
    counts = Counter(_key(r) for r in good)
    want = {(t.ip, PORT, m, k) for t in lab.targets for m in METHODS for k in range(1, TRIES + 1)}
    assert set(counts) == want
    assert set(counts.values()) == {1}, counts
    assert all(r["status"] == "ok" for r in good), [(_key(r), r["status"]) for r in good]


def test_sigkill_keeps_complete_records_and_resume_adds_only_the_missing(lab, tmp_path):
    out = tmp_path / "scan.jsonl"
    first = lab.targets[0].ip  # linux-orphan2: done first
    p = spawn(*_args(lab, "-oJ", str(out)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for_first_host(out, first, p)
    p.kill()
    p.communicate(timeout=30)
    assert p.returncode == -9

    records, tail = _lines(out)  # every complete line parses
    _check_complete(records)
    meas = _measurements(records)
    assert sum(r["target"] == first for r in meas) == PER_HOST
    assert all(r["status"] != "aborted" for r in meas)  # SIGKILL: only finished records
    done = len({_key(r) for r in meas})
    assert done < 3 * PER_HOST, "the scan finished before the kill"

    # a record cut by a crash (disk full, power loss) at the end of the file
    cut = json.dumps(meas[0]).encode()[:40]
    with open(out, "ab") as fh:
        fh.write(tail + cut)
    n_lines = len(records) + 1

    r = _resume(lab, out)
    assert f"{done} already done (--resume)" in r.stdout, r.stdout
    # one notice, for the cut line only (not for the verdict records)
    notices = [ln for ln in r.stderr.splitlines() if "incomplete record ignored" in ln]
    assert notices == [f"cron-os: {out}:{n_lines}: incomplete record ignored"], r.stderr

    data = out.read_bytes()
    assert data.endswith(b"\n")
    lines = data.split(b"\n")[:-1]
    assert lines[n_lines - 1] == tail + cut  # the cut line stays, alone on its line
    after = [json.loads(ln) for k, ln in enumerate(lines) if k != n_lines - 1]
    _check_complete(after)
    assert after[: len(records)] == records  # appended, nothing rewritten
    _check_exactly_once(lab, after)


def test_sigint_writes_aborted_records_and_resume_remeasures_them(lab, tmp_path):
    out = tmp_path / "scan.jsonl"
    first = lab.targets[0].ip
    p = spawn(*_args(lab, "-oJ", str(out)), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for_first_host(out, first, p)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 130, err
    assert "Traceback" not in err

    records, tail = _lines(out)
    assert tail == b""
    _check_complete(records)
    meas = _measurements(records)
    aborted = {_key(r) for r in meas if r["status"] == "aborted"}
    done = {_key(r) for r in meas if r["status"] != "aborted"}
    assert aborted and not aborted & done
    assert len(done | aborted) == 3 * PER_HOST  # every measurement was written

    r = _resume(lab, out)
    assert f"{len(done)} already done (--resume)" in r.stdout, r.stdout
    assert "incomplete record ignored" not in r.stderr, r.stderr
    after, tail = _lines(out)
    assert tail == b""
    assert after[: len(records)] == records
    new = _measurements(after[len(records) :])
    assert {_key(r) for r in new} == aborted  # only the aborted ones, re-measured
    _check_exactly_once(lab, after)
