"""The scanner behind a bridge and behind a macvlan: each packet counted once.

Three targets with the same stack (linux-rto20's settings): one reached over
a plain veth, one through a bridge whose port is the veth, one through a
macvlan over the veth. A capture on every interface saw each packet twice on
the last two (``p=3%p=1006367%p=19``); bound to the route's interface it sees
them once, and the three give the same fingerprint lines, by the stack's
rules, and the same verdict.
"""

import subprocess
import sys

import pytest

from cronos.net.dedupe import dedupe
from cronos.net.pcapio import read_pcap

from helpers import assert_linux_profile, by_profile, cronos, names_profile, read_verdicts, scan

pytestmark = pytest.mark.netns
LAB_PROFILES = ["linux-rto20", "linux-bridge", "linux-macvlan"]
ROUTES = """
import sys
from cronos.net.route import RouteTable
t = RouteTable()
print(" ".join(t.lookup(ip).ifname for ip in sys.argv[1:]))
"""


def _shape(rec):
    return rec["state"], rec["status"], rec["nb_pkt"], rec["rst_us"] is not None


def test_routes_leave_through_the_bridge_and_the_macvlan(lab):
    ips = [by_profile(lab, p).ip for p in LAB_PROFILES]
    r = subprocess.run(["ip", "netns", "exec", lab.scanner_ns, sys.executable, "-c", ROUTES,
                        *ips], capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [f"cr{lab.id}s1", f"cr{lab.id}b2", f"cr{lab.id}m3"]


def test_same_fingerprint_lines_on_veth_bridge_and_macvlan(lab, tmp_path):
    out, pcap = tmp_path / "o.jsonl", tmp_path / "scan.pcap"
    ips = {p: by_profile(lab, p).ip for p in LAB_PROFILES}
    proc, recs = scan(lab, list(ips.values()), out, "-w", str(pcap), "--tries", "2",
                      methods="slf", timeout=3)  # fmt: skip
    by = {(r["target"], r["state"], r["try"]): r for r in recs}
    for profile, ip in ips.items():
        for state in ("SYN_RCVD", "LAST_ACK", "FIN_WAIT1"):
            for k in (1, 2):
                rec = by[(ip, state, k)]
                # no copy timed as a retransmission: the stack's own count and doubling
                assert_linux_profile(rec, "linux-rto20")
                assert min(rec["gaps_us"]) > 15_000, (profile, rec["fingerprint"])
        # SYN-ACK counts are the stack's setting, whatever the path: equal to the veth's
        assert (
            by[(ip, "SYN_RCVD", 1)]["nb_pkt"] == by[(ips["linux-rto20"], "SYN_RCVD", 1)]["nb_pkt"]
        )
    # one verdict for all three: the same stack
    verdicts = read_verdicts(out)
    for ip in ips.values():
        assert names_profile(verdicts[ip]["verdict"], "linux-rto20"), verdicts[ip]["candidates"][:2]
    # the capture file holds every packet once
    packets = read_pcap(pcap)
    assert list(dedupe(packets)) == packets
    assert "copies" not in proc.stdout  # nothing had to be dropped: bound to one interface


def test_interface_option_sends_and_captures_there(lab, tmp_path):
    bridge = by_profile(lab, "linux-bridge")
    _, recs = scan(lab, [bridge.ip], tmp_path / "o.jsonl", "-e", f"cr{lab.id}b2", methods="sl")
    for rec in recs:
        assert_linux_profile(rec, "linux-rto20")
    # through the veth of another target: the bridge's host is not on that link
    _, recs = scan(lab, [bridge.ip], tmp_path / "p.jsonl", "-e", f"cr{lab.id}s1", methods="s",
                   timeout=2)  # fmt: skip
    assert [r["status"] for r in recs] == ["filtered"]


def test_unknown_interface_is_one_line(lab):
    r = cronos("scan", "--netns", lab.scanner_ns, by_profile(lab, "linux-bridge").ip, "-e",
               "crnosuch0", timeout=60)  # fmt: skip
    assert r.returncode == 2 and r.stderr.strip() == "cron-os: -e crnosuch0: no such interface"
