"""A Linux with settings no measured block lists, scanned live: named by the
Linux law's block with the values its timings read (issue 15's target)."""

import json
import re

import pytest

from helpers import assert_ran, cronos, law_reads

pytestmark = pytest.mark.netns
LAB_PROFILES = ["linux-unlisted"]  # tcp_synack_retries=4, tcp_orphan_retries=5, rto_min 50ms


def test_unlisted_linux_settings_are_read_off_its_timings(lab, tmp_path):
    out = tmp_path / "o.jsonl"
    ip = lab.targets[0].ip
    # listening to the end (--full), 20 s past the last packet: longer than
    # the next doubled gap (16.4 s for the SYN-ACKs, 7.3 s for the FINs), so
    # the counts are read (an early stop may end a series that a measured
    # stack explains as complete: the count is then a range)
    r = cronos("scan", "--netns", lab.scanner_ns, ip, "-p", "80", "-m", "slf", "--timeout", "20",
               "--tries", "2", "--full", "-oJ", str(out))  # fmt: skip
    assert_ran(r)
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    (v,) = [x for x in recs if x.get("type") == "verdict"]
    verdict = v["verdict"]
    assert "Linux 3.1-6.x, any TCP settings [family]: " in verdict, v["candidates"][:3]
    assert "tcp_synack_retries=4," in verdict, verdict
    # 7 FIN retransmissions: 5 (a neighbour that could send as many may be
    # named beside it: both are said)
    assert "5" in law_reads(verdict, "tcp_orphan_retries"), verdict
    # rto_min read off the first FIN gap: an estimate (RTT, timer lateness)
    read = re.search(r"rto_min~(\d+)ms", verdict)
    assert read is not None and 40 <= int(read.group(1)) <= 75, verdict
    assert v["confidence"] >= 0.5 and "not measured" not in verdict
