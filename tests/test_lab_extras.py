"""Lab extras: libslirp and PyTCP targets, NFQUEUE impairment.

Pure parts (spec parsing, the worker's bookkeeping) run anywhere; the rest
needs root and builds real labs (``@pytest.mark.netns``), ~30 s in all.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from cronos.errors import LabError
from cronos.lab import impair
from cronos.lab.impair import Impairment, parse_impairment

from helpers import lab_leftovers

HAVE_SLIRP = shutil.which("slirp4netns") is not None
HAVE_PYTCP = importlib.util.find_spec("pytcp") is not None
HAVE_NFQ = importlib.util.find_spec("netfilterqueue") is not None

needs_slirp = pytest.mark.skipif(not HAVE_SLIRP, reason="slirp4netns not installed (apt)")
needs_pytcp = pytest.mark.skipif(not HAVE_PYTCP, reason="PyPI pytcp not installed")
needs_nfq = pytest.mark.skipif(not HAVE_NFQ, reason="PyPI NetfilterQueue not installed")


def in_ns(ns: str, code: str, *args: str, timeout: float = 30) -> str:
    res = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code, *args],
                         capture_output=True, text=True, timeout=timeout)  # fmt: skip
    assert res.returncode == 0, res.stderr
    return res.stdout


HTTP_GET = """
import socket, sys
s = socket.create_connection((sys.argv[1], 80), timeout=5)
s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
d = b""
while (c := s.recv(4096)): d += c
print(d.decode(errors="replace"))
"""

# One SYN offering every option; the SYN-ACK shows what the stack supports.
SYNACK = """
import json, random, sys
from scapy.all import IP, TCP, conf, sr1
conf.verb = 0
syn = IP(dst=sys.argv[1]) / TCP(sport=random.randint(40000, 60000), dport=80, flags="S",
    options=[("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("WScale", 7)])
r = sr1(syn, timeout=3)
print(json.dumps({"ttl": r[IP].ttl, "win": r[TCP].window, "seq": r[TCP].seq,
                  "opts": [o[0] for o in r[TCP].options]}))
"""

RTT = """
import socket, statistics, sys, time
out = []
for _ in range(int(sys.argv[2])):
    s = socket.socket(); t = time.perf_counter()
    s.connect((sys.argv[1], 1234)); out.append((time.perf_counter() - t) * 1000); s.close()
print(statistics.median(out))
"""

SYN_BURST = """
import sys
from scapy.all import IP, TCP, RandShort, conf, send
conf.verb = 0
send(IP(dst=sys.argv[1]) / TCP(sport=RandShort(), dport=1234, flags="S"), count=int(sys.argv[2]),
     inter=0.001)
"""


# -- pure ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "want"),
    [
        ({"delay": "50ms", "jitter": "10ms", "loss": "5%"}, Impairment(50, 10, 5)),
        ({"delay": "0.2s"}, Impairment(200)),
        ({"delay": "500us", "loss": "0.5"}, Impairment(0.5, 0, 0.5)),
        ({"delay": "30"}, Impairment(30)),
        ({}, Impairment()),
    ],
)
def test_parse_impairment(args, want):
    assert parse_impairment(**args) == want


@pytest.mark.parametrize(
    "args",
    [{"delay": "fast"}, {"delay": "-5ms"}, {"jitter": "10 m"}, {"loss": "120%"},
     {"loss": "five"}, {"delay": "1e3ms"}],
)  # fmt: skip
def test_parse_impairment_rejects(args):
    with pytest.raises(LabError):
        parse_impairment(**args)


def test_each_link_draws_its_own_losses_and_runs_repeat():
    """One seed for every link made all the targets lose the same packet
    together (test_wan_lab failed once so: every SYN_RCVD series lost its
    third SYN-ACK at once)."""
    from cronos.lab.impair import link_seed

    def path(lab_id, ns):
        return f"/tmp/cronos-{lab_id}-imp-cronos-{lab_id}-{ns}.json"

    seeds = {link_seed(13, "a1b2c3", path("a1b2c3", ns)) for ns in ("t1", "t2", "t3", "scan")}
    assert len(seeds) == 4
    assert link_seed(13, "a1b2c3", path("a1b2c3", "t1")) == link_seed(
        13, "ffee00", path("ffee00", "t1")
    )
    assert link_seed(13, "a1b2c3", path("a1b2c3", "t1")) != link_seed(
        14, "a1b2c3", path("a1b2c3", "t1")
    )


class FakePacket:
    """An IPv4/TCP header prefix for one of 3 flows, and the verdict given."""

    def __init__(self, n: int):
        self.n, self.verdict = n, None
        self.flow = n % 3
        self.header = bytes([0x45] + [0] * 11 + [10, 0, 0, 1, 10, 0, 0, 2]) + bytes(
            [0x9C, 0x40 + self.flow, 0, 80]
        )

    def get_payload(self):
        return self.header

    def accept(self):
        self.verdict = "accept"

    def drop(self):
        self.verdict = "drop"


def test_flow_key():
    hdr = FakePacket(1).header
    assert impair.flow_key(hdr) == bytes([10, 0, 0, 1, 10, 0, 0, 2, 0x9C, 0x41, 0, 80])


def test_worker_keeps_order_and_reports_what_it_applied(tmp_path):
    path = str(tmp_path / "s.json")
    w = impair._Worker(Impairment(delay_ms=5, jitter_ms=4, loss_pct=10, seed=7), "ns", path)
    pkts = [FakePacket(i) for i in range(400)]
    for p in pkts:
        w.on_packet(p)
    released = []
    while w.held:
        time.sleep(w.timeout() or 0)
        before = {id(p) for p in pkts if p.verdict == "accept"}
        w.release_due()
        released += [p.n for p in pkts if p.verdict == "accept" and id(p) not in before]
    w.write_stats()
    s = impair.stats(path)
    for flow in range(3):  # FIFO within each flow even with jitter
        mine = [n for n in released if n % 3 == flow]
        assert mine == sorted(mine)
    assert released != sorted(released)  # flows do not wait for each other
    assert s.count == 400 and s.dropped == sum(p.verdict == "drop" for p in pkts)
    assert 4 <= s.loss_pct <= 16
    assert s.delay_min_ms >= 1 and s.delay_p50_ms >= 5  # real hold times, not draws
    with open(path) as fh:
        assert json.load(fh)["delay_distribution"] == "uniform"
    # the same seed draws the same losses
    w2 = impair._Worker(Impairment(delay_ms=5, jitter_ms=4, loss_pct=10, seed=7), "ns", path)
    pkts2 = [FakePacket(i) for i in range(400)]
    for p in pkts2:
        w2.on_packet(p)
    assert [p.verdict == "drop" for p in pkts2] == [p.verdict == "drop" for p in pkts]


# -- real stacks ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def user_stacks(request):
    if not (HAVE_SLIRP and HAVE_PYTCP):
        pytest.skip("needs slirp4netns and pytcp")
    return request.getfixturevalue("lab")


LAB_PROFILES = ["slirp", "pytcp", "linux-default"]  # the module's ``lab`` (conftest)


def _target(lab, kind):
    return next(t for t in lab.targets if t.kind == kind)


@pytest.mark.netns
@needs_slirp
@needs_pytcp
def test_slirp_answers_http_and_synack_is_libslirp(user_stacks):
    lab = user_stacks
    slirp, linux = _target(lab, "slirp"), _target(lab, "linux")
    assert slirp.ip == "10.0.2.2" and slirp.netns is None
    assert in_ns(lab.scanner_ns, HTTP_GET, slirp.ip).startswith("HTTP/1.0 200")
    assert slirp.ip6 == "fd00::2"  # libslirp's IPv6 gateway: its own stack over IPv6 too
    assert in_ns(lab.scanner_ns, HTTP_GET, slirp.ip6).startswith("HTTP/1.0 200")
    s = json.loads(in_ns(lab.scanner_ns, SYNACK, slirp.ip))
    k = json.loads(in_ns(lab.scanner_ns, SYNACK, linux.ip))
    # Linux echoes every offered option and scales its window; libslirp only
    # does MSS, a flat 65535 window, and ISNs stepping by 64000 (tcp_iss).
    assert s["opts"] == ["MSS"] and s["win"] == 65535 and (s["seq"] - 1) % 64000 == 0
    assert {"SAckOK", "Timestamp", "WScale"} <= set(k["opts"]) and k["win"] != 65535
    assert slirp.expected_ms["SYN_RCVD"][0] == 6000


@pytest.mark.netns
@needs_slirp
@needs_pytcp
def test_pytcp_answers_http(user_stacks):
    lab = user_stacks
    t = _target(lab, "pytcp")
    assert in_ns(lab.scanner_ns, HTTP_GET, t.ip).startswith("HTTP/1.0 200")
    assert in_ns(lab.scanner_ns, HTTP_GET, t.ip6).startswith("HTTP/1.0 200")  # and over IPv6
    s = json.loads(in_ns(lab.scanner_ns, SYNACK, t.ip))
    assert s["opts"] == ["MSS"] and s["win"] == 65535
    assert t.expected_ms["SYN_RCVD"] == (1150, 2270, 4560)


@pytest.mark.netns
@needs_nfq
def test_impairment_delay_gives_rtt_and_reports_it():
    from cronos.lab import Lab

    with Lab.create(["linux-orphan2"], impair=parse_impairment(delay="50ms", seed=1)) as lab:
        t = lab.targets[0]
        rtt = float(in_ns(lab.scanner_ns, RTT, t.ip, "10"))
        assert 99 <= rtt <= 130, rtt  # held 50 ms each way at least; later only under load
        time.sleep(0.7)  # next stats write
        (st,) = impair.stats(lab)
        assert st.ns == t.netns and st.spec.delay_ms == 50 and st.count >= 30
        assert 49.9 <= st.delay_p50_ms <= 65 and st.dropped == 0
        rules = subprocess.run(["ip", "netns", "exec", t.netns, "nft", "list", "ruleset"],
                               capture_output=True, text=True).stdout  # fmt: skip
        assert f"cronos_{lab.id}_imp" in rules
    assert lab_leftovers(lab.id) == [] and not os.path.exists(st.path)


@pytest.mark.netns
@needs_nfq
def test_impairment_loss_close_to_spec():
    from cronos.lab import Lab

    with Lab.create(["linux-default"], impair=parse_impairment(loss="5%", seed=3)) as lab:
        in_ns(lab.scanner_ns, SYN_BURST, lab.targets[0].ip, "800")
        time.sleep(0.7)
        (st,) = impair.stats(lab)
    assert st.count >= 1500  # SYN in, SYN-ACK out, RST in
    assert 3.0 <= st.loss_pct <= 7.0, st
    assert lab_leftovers(lab.id) == []


@pytest.mark.netns
@needs_nfq
@needs_pytcp
def test_impairment_in_scanner_ns_is_removed_by_cleanup():
    """pytcp's link is a tap in the scanner ns: rules match its address and go at cleanup."""
    from cronos.lab import Lab

    lab = Lab.create(["pytcp"], impair=parse_impairment(delay="20ms"))
    try:
        t = lab.targets[0]
        rtt = float(in_ns(lab.scanner_ns, RTT, t.ip, "5"))
        assert rtt >= 40, rtt  # both halves held in the scanner namespace
        ruleset = ["ip", "netns", "exec", lab.scanner_ns, "nft", "list", "ruleset"]
        assert t.ip in subprocess.run(ruleset, capture_output=True, text=True).stdout
        assert lab._ctx.run_cleanups() == []
        out = subprocess.run(ruleset, capture_output=True, text=True).stdout
        assert "cronos_" not in out and "queue" not in out
    finally:
        lab.destroy()
    assert lab_leftovers(lab.id) == []


@pytest.mark.netns
@needs_slirp
@needs_pytcp
def test_libslirp_is_named_alike_over_both_families(user_stacks, tmp_path):
    from helpers import read_verdicts, scan

    lab = user_stacks
    slirp = _target(lab, "slirp")
    out = tmp_path / "o.jsonl"
    _, recs = scan(lab, [slirp.ip, slirp.ip6], out, methods="s", timeout=13, full=False)
    assert {r["target"] for r in recs} == {slirp.ip, slirp.ip6}
    feats = {r["target"]: r["features"] for r in recs}
    assert feats[slirp.ip]["ttl"] == 64 and feats[slirp.ip6]["ttl"] == 255  # its hop limit
    verdicts = read_verdicts(out)
    for addr in (slirp.ip, slirp.ip6):
        assert "[lab slirp]" in verdicts[addr]["verdict"], (addr, verdicts[addr]["verdict"])
