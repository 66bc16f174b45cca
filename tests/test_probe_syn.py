"""SYN_RCVD probe, pure: fed recorded packets (a real Linux capture), no network."""

from pathlib import Path

import pytest
from scapy.utils import RawPcapReader

from cronos.errors import ProbeStateError
from cronos.model import Method, Status
from cronos.packet import ACK, RST, SYN, Segment, parse_ip
from cronos.probes import PROBES, ProbeConfig
from cronos.probes.syn import SynProbe

DATA = Path(__file__).parent / "data"


def _recorded(name):
    """(ts, Segment) from a pcap recorded on the lab's veth (Ethernet link type)."""
    out = []
    for raw, meta in RawPcapReader(str(DATA / name)):
        ts = meta.sec + meta.usec / 1e6
        seg = parse_ip(raw[14:], verify_checksum=True)
        assert seg is not None and seg.checksum_ok
        out.append((ts, seg))
    return out


def _probe_for(recorded, **kw):
    syn = recorded[0][1]
    cfg = ProbeConfig(
        target=syn.dst, port=syn.dport, src_ip=syn.src, src_port=syn.sport, isn=syn.seq, **kw
    )
    return SynProbe(cfg)


def test_recorded_linux_synack2_gives_the_talk_syntax():
    rec = _recorded("syn_linux_synack2.pcap")
    probe = _probe_for(rec, timeout_s=5)
    out = probe.start(rec[0][0] - 0.0001)
    assert len(out) == 1 and out[0].flags == SYN and out[0].seq == rec[0][1].seq
    assert out[0].option_letters == "MSTNW"
    for ts, seg in rec:
        assert probe.on_packet(ts, seg, outgoing=seg.src == probe.cfg.src_ip) == []
    assert not probe.done
    probe.on_timer(rec[-1][0] + 4.9)
    assert not probe.done
    probe.on_timer(rec[-1][0] + 5.0)
    assert probe.done
    obs = probe.result()
    assert obs.status is Status.OK and obs.method is Method.SYN_RCVD
    assert obs.fingerprint.nb_pkt == 2
    # tcp_synack_retries=2 on Linux: ~1.02 s then ~2.02 s (timer-wheel quantised)
    g1, g2 = obs.fingerprint.gaps_us
    assert abs(g1 - 1_023_234) < 50 and abs(g2 - 2_015_962) < 50
    assert obs.features.window == 65160 and obs.features.options == "MSTNW"
    assert obs.features.wscale == 10 and obs.features.mss == 1460 and obs.features.df
    assert obs.fingerprint.line() == f"CronOS_Syn(nbPkt=2%Time=8%p={g1}%p={g2})"
    assert obs.arrivals_us[0] < 1000  # first SYN-ACK ~0.04 ms after our SYN


def _cfg(**kw):
    base = dict(target="10.0.0.2", port=80, src_ip="10.0.0.1", src_port=40000, isn=1000)
    base.update(kw)
    return ProbeConfig(**base)


def _synack(ack=1001, flags=SYN | ACK):
    return Segment(
        "10.0.0.2",
        "10.0.0.1",
        80,
        40000,
        5000,
        ack,
        flags,
        window=8192,
        options=(("MSS", 1460),),
        ttl=128,
        df=True,
    )


def test_rst_after_synacks_is_recorded_and_ends():
    p = SynProbe(_cfg())
    p.start(100.0)
    for t in (100.1, 103.1, 109.1):
        p.on_packet(t, _synack(), False)
    p.on_packet(121.1, _synack(flags=RST | ACK), False)
    obs = p.result()
    assert p.done and obs.status is Status.OK
    assert obs.fingerprint.gaps_us == (3_000_000, 6_000_000)
    assert obs.fingerprint.rst_us == 12_000_000


def test_closed_port_and_filtered():
    p = SynProbe(_cfg())
    p.start(0.0)
    p.on_packet(0.01, _synack(flags=RST | ACK), False)
    assert p.done and p.result().status is Status.CLOSED
    q = SynProbe(_cfg(timeout_s=3))
    q.start(0.0)
    q.on_timer(2.9)
    assert not q.done
    q.on_timer(3.0)
    assert q.done and q.result().status is Status.FILTERED and q.result().fingerprint.nb_pkt == 0


def test_wrong_ack_blind_rst_and_other_flows_are_ignored():
    p = SynProbe(_cfg())
    p.start(0.0)
    p.on_packet(0.1, _synack(ack=999), False)  # does not acknowledge our ISN
    p.on_packet(0.2, _synack(flags=RST), False)  # blind RST, no ACK
    other = Segment("10.0.0.3", "10.0.0.1", 80, 40000, 1, 1001, SYN | ACK)
    p.on_packet(0.3, other, False)
    assert not p.done and p.synacks == []


def test_storm_is_bounded_and_says_so():
    p = SynProbe(_cfg(timeout_s=10, window_s=60))
    p.start(0.0)
    for i in range(5000):
        p.on_packet(0.001 * i, _synack(), False)
    assert p.done and len(p.synacks) == SynProbe.MAX_SYNACKS
    assert "more than 256 SYN-ACKs" in p.result().note


def test_window_caps_listening():
    p = SynProbe(_cfg(timeout_s=10, window_s=12))
    p.start(0.0)
    for t in (0.1, 1.1, 3.1, 7.1, 11.1):
        p.on_packet(t, _synack(), False)
    p.on_timer(12.0)
    assert p.done and p.result().fingerprint.time_s == 12 and p.result().fingerprint.nb_pkt == 4


def test_synack_with_another_isn_and_blind_rst_are_not_timed():
    p = SynProbe(_cfg())
    p.start(0.0)
    p.on_packet(0.1, _synack(), False)
    forged = Segment("10.0.0.2", "10.0.0.1", 80, 40000, 777, 1001, SYN | ACK)
    p.on_packet(0.5, forged, False)  # acks our ISN, but another connection's ISN
    blind = Segment("10.0.0.2", "10.0.0.1", 80, 40000, 123456, 1001, RST | ACK)
    p.on_packet(0.6, blind, False)
    assert not p.done and len(p.synacks) == 1 and p.ignored == 2
    p.on_packet(1.1, _synack(), False)
    p.on_packet(3.1, _synack(flags=RST | ACK), False)  # the real one: ISN (+0 or +1)
    assert p.done and p.result().fingerprint.rst_us == 2_000_000


def test_abort_keeps_what_was_measured():
    p = SynProbe(_cfg())
    p.start(0.0)
    p.on_packet(0.1, _synack(), False)
    p.on_packet(1.1, _synack(), False)
    p.abort(1.5)
    obs = p.result()
    assert obs.status is Status.ABORTED and obs.fingerprint.gaps_us == (1_000_000,)


def test_illegal_transition_names_the_state():
    p = SynProbe(_cfg())
    with pytest.raises(ProbeStateError, match="INIT -> SYN_RCVD"):
        p._goto("SYN_RCVD")


def test_registry_has_syn():
    assert PROBES[Method.SYN_RCVD] is SynProbe
