"""The hostile host: probes against a peer that floods, storms and lies.

Pure part: each probe in the scan core against ``cronos.lab.hostile.Responder``
on the simulated network of ``cronos.scan.sim`` (no network). Netns part
(root): the ``hostile`` lab profile scanned together with a real Linux
target, whose fingerprints must not change.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from cronos.lab.hostile import BEHAVIOURS, Budget, Responder, parse_frame
from cronos.model import Method, Status, parse_state_line
from cronos.packet import ACK, SYN, Segment, build_ip
from cronos.probes import ProbeConfig
from cronos.probes.closing import ClosingProbe
from cronos.probes.syn import SynProbe
from cronos.scan.core import CoreConfig, ScanCore
from cronos.scan.sim import Peer, SimNet

from helpers import CMD, assert_linux_profile, default_signals, skip_on_capture_loss

US, THEM = "10.77.1.1", "10.77.1.2"
FIN_NOTE = f"more than {ClosingProbe.MAX_FINS} FINs"
DATA_NOTE = f"more than {ClosingProbe.MAX_DATA_BYTES} bytes of data"


class _Hostile(Peer):
    """The lab's hostile responder as a peer of the simulated network."""

    def __init__(self, port: int, budget: Budget):
        self.address, self.port = THEM, port
        self.responder = Responder(THEM, budget, seed=port)
        self.sent = 0

    def _now(self, t: float, segs) -> list:
        self.sent += len(segs)
        return [(t, s) for s in segs]

    def on_segment(self, t, seg):
        return self._now(t, self.responder.on_segment(t, seg))

    def next_timer(self):
        return self.responder.next_at

    def on_timer(self, t):
        return self._now(t, self.responder.on_timer(t))


def _pair(method: Method, port: int, budget: Budget | None = None, limit_s: float = 60.0):
    """Run one probe in the scan core against the responder, in simulated time
    (no delay on the path); returns (probe, observation, segments it sent us)."""
    cfg = ProbeConfig(target=THEM, port=port, src_ip=US, src_port=40000 + port, isn=0xDEADBEEF,
                      timeout_s=3.0, window_s=30.0)  # fmt: skip
    peer = _Hostile(port, budget or Budget())
    net = SimNet(ScanCore(CoreConfig(timeout_s=3.0, window_s=30.0)), [peer], one_way_s=0.0,
                 capture_lag_s=0.0)  # fmt: skip
    net.launch(cfg, method, 1000.0)
    probe = net.core.probe((US, 40000 + port, THEM, port))
    net.run_until(1000.0 + limit_s)
    return probe, probe.result(), peer.sent


@pytest.mark.parametrize("port", sorted(BEHAVIOURS))
@pytest.mark.parametrize("method", list(Method))
def test_every_probe_ends_bounded_against_every_behaviour(method, port):
    probe, obs, n = _pair(method, port)
    assert probe.done, (method, port)
    assert obs.fingerprint.time_s <= 30
    back = parse_state_line(obs.fingerprint.line())
    assert back.gaps_us == obs.fingerprint.gaps_us
    if isinstance(probe, SynProbe):
        assert len(probe.synacks) <= SynProbe.MAX_SYNACKS
    else:
        assert len(probe.fins) <= probe.MAX_FINS and len(probe.ooo) <= probe.MAX_OOO
        assert probe.sent <= probe.MAX_SENT and probe.data_bytes <= probe.MAX_DATA_BYTES + 1460
    assert n <= Budget().max_packets + 4


@pytest.mark.parametrize("method", [Method.LAST_ACK, Method.FIN_WAIT1])
def test_budgets_show_in_notes(method):
    _, obs, _ = _pair(method, 81)  # FIN storm
    assert obs.status is Status.OK and FIN_NOTE in obs.note
    assert obs.fingerprint.nb_pkt == ClosingProbe.MAX_FINS - 1
    _, obs, _ = _pair(method, 83)  # endless data, zero window
    assert DATA_NOTE in obs.note, obs


def test_synack_flood_is_capped():
    probe, obs, n = _pair(Method.SYN_RCVD, 80)
    assert n == Budget().synack_flood + 1  # it goes on: the core drops it on its 4-tuple
    # the probe stopped listening at its cap
    assert obs.packets_in == SynProbe.MAX_SYNACKS + 1 < n
    assert obs.status is Status.OK and obs.fingerprint.nb_pkt == SynProbe.MAX_SYNACKS - 1
    assert "more than 256 SYN-ACKs: stopped" in obs.note


def test_responder_is_bounded_and_forgets_old_connections():
    b = Budget(max_conns=4, max_packets=50, storm_s=0.1, flood_s=0.1)
    peer = Responder(THEM, b)
    from cronos.packet import Segment

    total = 0
    for i in range(20):
        syn = Segment(US, THEM, 30000 + i, 80, i, 0, SYN)
        total += len(peer.on_segment(float(i), syn))
        total += len(peer.on_timer(float(i) + 0.05)) + len(peer.on_timer(float(i) + 1))
    assert len(peer.conns) == 4 and total <= 20 * 50
    assert peer.next_at is None  # every storm is over


def test_parse_frame_round_trip():
    from cronos.packet import Segment

    seg = Segment(US, THEM, 40000, 80, 7, 9, SYN, window=1234, payload=b"xy")
    got = parse_frame(b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + build_ip(seg))
    assert (got.src, got.dst, got.sport, got.dport, got.seq, got.ack, got.flags, got.payload) == (
        US, THEM, 40000, 80, 7, 9, SYN, b"xy")  # fmt: skip
    assert parse_frame(b"\x00" * 30) is None
    seg6 = Segment("fd77:0:0:1::1", "fd77:0:0:1::2", 40000, 80, 7, 9, SYN, window=1234,
                   payload=b"xy", df=False)  # fmt: skip
    got = parse_frame(b"\x02" * 6 + b"\x04" * 6 + b"\x86\xdd" + build_ip(seg6))
    assert (got.src, got.dst, got.sport, got.dport, got.seq, got.payload, got.v6) == (
        "fd77:0:0:1::1", "fd77:0:0:1::2", 40000, 80, 7, b"xy", True)  # fmt: skip


# -- real namespaces ----------------------------------------------------------------------

HOSTILE_PORTS = ",".join(map(str, sorted(BEHAVIOURS)))
LAB_PROFILES = ["hostile", "linux-orphan2"]
#: not a speed target: a bound that only a hung or runaway scan reaches
#: (the scan takes about 10 s; bench/ measures speed)
HANG_LIMIT_S = 180
RSS_LIMIT_KB = 400 * 1024


def _scan(lab, targets, ports, out):
    """Run a scan; (wall seconds, peak RSS in KiB, stderr, exit status)."""
    argv = [*CMD, "scan", "--netns", lab.scanner_ns, *targets, "-p", ports, "-m", "slf",
            "--timeout", "3", "--full", "-q", "--no-progress", "-oJ", str(out)]  # fmt: skip
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_signals)  # fmt: skip
    while True:  # wait4, not Popen.wait: we want the child's peak RSS
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() - t0 > HANG_LIMIT_S:
            proc.kill()
        time.sleep(0.05)
    wall = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, rusage.ru_maxrss, proc.stderr.read(), proc.returncode


def _records(path):
    with open(path) as fh:
        return [r for r in map(json.loads, fh) if "state" in r]


@pytest.fixture(scope="module")
def scans(lab, tmp_path_factory):
    """The Linux target alone, then with the hostile host (ports 80-84, slf)."""
    tmp = tmp_path_factory.mktemp("hostile")
    hostile, linux = (t.ip for t in lab.targets)
    alone, both = tmp / "alone.jsonl", tmp / "both.jsonl"
    ref = _scan(lab, [linux], "80", alone)
    run = _scan(lab, [hostile, linux], f"80,{HOSTILE_PORTS}", both)
    return hostile, linux, ref, _records(alone), run, _records(both)


@pytest.mark.netns
def test_hostile_scan_is_bounded_and_reports_budgets(scans, record_property):
    hostile, _, ref, _, (wall, rss_kb, err, rc), recs = scans
    record_property("wall_s", round(wall, 1))
    record_property("peak_rss_mb", round(rss_kb / 1024, 1))
    print(f"\nhostile+linux scan: {wall:.1f} s wall, peak RSS {rss_kb / 1024:.1f} MiB, exit {rc}"
          f" (linux alone: {ref[0]:.1f} s, {ref[1] / 1024:.1f} MiB)")  # fmt: skip
    assert "Traceback" not in err, err
    assert rc in (0, 1), err  # 1: the capture socket lost packets under the flood (said so)
    assert wall < HANG_LIMIT_S and 0 < rss_kb < RSS_LIMIT_KB
    by = {(r["target"], r["port"], r["method"]): r for r in recs}
    for port in BEHAVIOURS:
        for m in "slf":
            r = by[(hostile, port, m)]
            assert r["status"] in {s.value for s in Status}, r
            print(f"  {port} {m}: {r['status']:9} nb_pkt={r['nb_pkt']:3} in={r['packets_in']:5}"
                  f" note={r['note']!r}")  # fmt: skip
    for m in "lf":
        assert FIN_NOTE in by[(hostile, 81, m)]["note"]
        assert DATA_NOTE in by[(hostile, 83, m)]["note"]
    flood = by[(hostile, 80, "s")]  # the probe stops the flood at its cap, and says so
    assert flood["packets_in"] > SynProbe.MAX_SYNACKS and flood["nb_pkt"] < SynProbe.MAX_SYNACKS
    assert "more than 256 SYN-ACKs: stopped" in flood["note"]


@pytest.mark.netns
def test_other_hosts_results_are_unaffected(scans):
    """The Linux host measured next to the hostile one follows its stack's
    rules exactly as when measured alone, and gets the same verdict. Not the
    same microseconds: its closing RTO (hence the first gap and the orphan
    budget's count) moves with how late the scanner, busy with the floods,
    ACKs the handshake."""
    # the floods are cut short by the probes' caps and the engine's per-flow
    # packet budget, then dropped on their 4-tuple before any parse
    _, linux, ref, alone, run, recs = scans
    for r in (ref, run):
        skip_on_capture_loss(_Proc(r[3], r[2]))
        assert r[3] == 0, r[2]
    ref = {r["method"]: r for r in alone}
    got = {r["method"]: r for r in recs if r["target"] == linux and r["port"] == 80}
    for m in "slf":
        g, w = got[m], ref[m]
        print(f"  linux {m}: alone {w['gaps_us']} connect {w['connect_us']}; "
              f"with hostile {g['gaps_us']} connect {g['connect_us']}")  # fmt: skip
    for m in "slf":
        assert_linux_profile(ref[m], "linux-orphan2")
        assert_linux_profile(got[m], "linux-orphan2")
    # and the verdict on the Linux host is the same
    from cronos.analysis.db import load_db
    from cronos.analysis.match import match
    from cronos.model import Observation

    db = load_db()
    v_alone = match([Observation.from_dict(r) for r in ref.values()], db).verdict
    v_with = match([Observation.from_dict(r) for r in got.values()], db).verdict
    assert v_alone is not None and v_alone == v_with, (v_alone, v_with)


class _Proc:
    def __init__(self, returncode, stderr):
        self.returncode, self.stderr = returncode, stderr


@pytest.mark.netns
def test_the_hostile_host_over_ipv6_is_bounded_too(lab, tmp_path):
    hostile = next(t for t in lab.targets if t.kind == "hostile")
    assert hostile.ip6
    out = tmp_path / "six.jsonl"
    wall, rss_kb, err, rc = _scan(lab, [hostile.ip6], "80,84", out)
    assert "Traceback" not in err and rc in (0, 1), err
    assert wall < HANG_LIMIT_S and 0 < rss_kb < RSS_LIMIT_KB
    by = {(r["port"], r["method"]): r for r in _records(out)}
    assert len(by) == 6
    flood = by[(80, "s")]  # the same flood, the same cap, over IPv6
    assert flood["packets_in"] > SynProbe.MAX_SYNACKS and flood["nb_pkt"] < SynProbe.MAX_SYNACKS
    assert "more than 256 SYN-ACKs: stopped" in flood["note"]


def test_data_storm_fills_a_hole_its_peer_names():
    """A data segment lost on the way (a veth backlog full under host load)
    is sent again at the peer's first duplicate ACK, not at its ordinary
    ACKs: the probe then still counts its data cap in sequence."""
    r = Responder(THEM, Budget(), seed=1)
    syn = Segment(src=US, dst=THEM, sport=40083, dport=83, seq=1000, ack=0, flags=SYN)
    (synack,) = r.on_segment(0.0, syn)
    ack = Segment(src=US, dst=THEM, sport=40083, dport=83, seq=1001, ack=synack.seq + 1,
                  flags=ACK)  # fmt: skip
    assert r.on_segment(0.0, ack) == []  # the storm starts
    storm = r.on_timer(0.5)
    assert len(storm) > 10 and all(len(s.payload) == len(storm[0].payload) for s in storm)
    hole = storm[3].seq  # segments 0..2 arrived, 3 was lost, 4.. arrived
    acks = [Segment(src=US, dst=THEM, sport=40083, dport=83, seq=1001, ack=s.seq, flags=ACK)
            for s in storm[1:4]]  # fmt: skip
    assert [r.on_segment(0.5, a) for a in acks] == [[], [], []]  # in sequence: nothing again
    again = r.on_segment(0.5, acks[-1])  # the first duplicate of the ACK at the hole
    assert [(s.seq, s.payload) for s in again] == [(hole, storm[3].payload)]
    assert all(r.on_segment(0.5, acks[-1]) == [] for _ in range(63))
    assert len(r.on_segment(0.5, acks[-1])) == 1  # 64 duplicates later: once more


@pytest.mark.parametrize("method", [Method.LAST_ACK, Method.FIN_WAIT1])
@pytest.mark.parametrize("drop", ["every 20th", "a burst of 100", "the storm's last 1.6 s"])
def test_the_data_storm_reaches_the_cap_across_lost_frames(method, drop):
    """Frames of the storm lost on the way (a veth backlog full under host
    load: CI, busy CPU, 2026-12-03, the probe stuck at 684 segments): the
    probe ignores data beyond its 64 KiB window, so the segments after a hole
    are lost to it too; the responder, as a TCP sender would, sends again
    from what the peer acknowledges (fast retransmit, then go-back-N once
    the storm is over), and the probe still counts its data cap in sequence."""
    seen = [0]

    def loss(t, seg, outgoing):
        if outgoing or not seg.payload:
            return False
        seen[0] += 1
        if drop == "every 20th":
            return seen[0] % 20 == 0
        if drop == "a burst of 100":
            return 300 <= seen[0] < 400
        return 1000.4 <= t < 1002.1  # as in CI: the probe saw 684 segments, then none

    cfg = ProbeConfig(target=THEM, port=83, src_ip=US, src_port=40083, isn=0xDEADBEEF,
                      timeout_s=3.0, window_s=30.0)  # fmt: skip
    peer = _Hostile(83, Budget())
    net = SimNet(ScanCore(CoreConfig(timeout_s=3.0, window_s=30.0)), [peer], one_way_s=0.0005,
                 capture_lag_s=0.0, loss=loss)  # fmt: skip
    net.launch(cfg, method, 1000.0)
    probe = net.core.probe((US, 40083, THEM, 83))
    net.run_until(1060.0)
    obs = probe.result()
    assert DATA_NOTE in obs.note, (obs.note, probe.data_bytes, peer.sent)
    assert peer.sent <= Budget().max_packets


@pytest.mark.parametrize("method", [Method.LAST_ACK, Method.FIN_WAIT1])
def test_a_response_still_coming_keeps_the_probe_listening(method):
    """Data that moves the probe's rcv_nxt before any FIN is a response still
    coming: the probe waits ``timeout_s`` after it, not after the SYN-ACK.
    Under a busy CPU the hostile host sent port 83's first MiB over more
    than the 3 s the probe then listened (CI, 2026-12-03: 648 segments)."""
    _, obs, _ = _pair(method, 83, Budget(storm_s=16.0))  # 1 MiB takes 4 s of 16
    assert DATA_NOTE in obs.note, obs
    _, obs, _ = _pair(method, 83, Budget(storm_s=16.0, data_bytes=600 * 1460))
    assert obs.status is Status.NO_CLOSE and obs.note == "", obs  # it ends, 3 s after
