"""IPv6 beside IPv4, without a namespace: the SYN-ACK header line and its
IPv4 equivalent, the matcher's header cost, capture filters, the firewall's
sets, packet files of every link type, and the replay of an IPv6 scan run on
the simulated network."""

import struct

import numpy as np
import pytest

from cronos.errors import FingerprintSyntaxError
from cronos.model import SynAckFeatures, parse_hdr_line
from cronos.packet import SYN, Segment, build_ip

V4 = SynAckFeatures(65160, 64, True, 0, 1460, "MSTNW", 7)
V6 = SynAckFeatures(64260, 64, False, None, 1440, "MSTNW", 7, flow="R")


def test_hdr_line_round_trip_and_errors():
    assert V6.line() == "CronOS_Hdr(W=FB04%HL=64%FL=R%MSS=1440%O=MSTNW%WS=7)"
    assert parse_hdr_line(V6.line()) == V6 and parse_hdr_line(V4.line()) == V4
    for bad, why in [
        ("CronOS_Hdr(W=FB04%HL=64%FL=X%MSS=1440%O=M%WS=7)", "FL must be"),
        ("CronOS_Hdr(W=FB04%HL=64%MSS=1440%O=M%WS=7)", "missing FL"),
        ("CronOS_Hdr(W=FB04%HL=64%FL=0%TTL=64%DF=Y%ID=%MSS=1440%O=M%WS=7)", "without TTL"),
        ("CronOS_Hdr(W=FB04%HL=300%FL=0%MSS=1440%O=M%WS=7)", "HL"),
    ]:
        with pytest.raises(FingerprintSyntaxError, match=why):
            parse_hdr_line(bad)


def test_v4_equivalent_rescales_the_mss_and_a_whole_segment_window():
    same = V6.v4_equivalent()
    assert (same.window, same.mss, same.ttl, same.options) == (65160, 1460, 64, "MSTNW")
    no_ts = SynAckFeatures(64800, 64, False, None, 1440, "MNW", 7, flow="0")  # 45 x 1440
    # 45 x 1460 does not fit 16 bits: Linux sends 44 x 1460 over IPv4
    assert no_ts.v4_equivalent().window == 64240 and no_ts.v4_equivalent().mss == 1460
    odd = SynAckFeatures(65535, 128, False, None, 1440, "MNWST", 8, flow="0")
    assert odd.v4_equivalent().window == 65535  # not a whole number of segments: as is
    assert V4.v4_equivalent() is V4


def test_an_ipv6_header_costs_what_the_same_stack_costs_over_ipv4_but_df():
    from cronos.analysis.db import load_db
    from cronos.analysis.match import _compiled, header_costs

    db = load_db()
    c4, c6 = header_costs(db, V4), header_costs(db, V6)
    h = _compiled(db).header
    plain = np.array([s.features6 is None for s in db.signatures])  # no IPv6 line of their own
    # where the signature knows DF=Y, IPv4 pays for keeping it; IPv6 tells nothing of it
    rows = np.flatnonzero(h.has & h.df_known & h.df & plain)
    assert len(rows) > 10
    # (the IPv6 table's marginals count the blocks' IPv6 lines: a few 1e-3 apart)
    assert np.allclose(c6[rows], c4[rows], atol=0.01)
    # DF=N signatures: IPv4's DF=Y is a change, IPv6 has no DF to change
    rows = np.flatnonzero(h.has & h.df_known & ~h.df & plain)
    assert (c6[rows] < c4[rows]).all()
    # the best-fitting signatures are the same ones
    assert set(np.argsort(c4)[:20]) & set(np.argsort(c6)[:20])


def test_capture_filters_and_firewall_sets_by_family():
    from cronos.net.bpf import compile_filter, flows_filter
    from cronos.net.firewall import _by_set

    assert flows_filter(["10.0.0.1"]) == "ip and tcp and (host 10.0.0.1)"
    both = flows_filter(["10.0.0.1", "fe80::1%eth0"])
    assert "(ip or ip6) and tcp" in both and "host fe80::1)" in both and "icmp6" in both
    assert flows_filter([]).startswith("((ip or ip6) and tcp)")
    for expr in (both, flows_filter([]), flows_filter([f"fd00::{i:x}" for i in range(99)])):
        assert compile_filter(expr)
    assert _by_set([("10.0.0.1", 80, 5), ("fe80::1%eth0", 80, 6)]) == {
        "flows": [("10.0.0.1", 80, 5)], "flows6": [("fe80::1", 80, 6)]}  # fmt: skip


def _classic(path, frames, linktype):
    with open(path, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype))
        for k, frame in enumerate(frames):
            fh.write(struct.pack("<IIII", 1000 + k, 0, len(frame), len(frame)) + frame)


def test_packet_files_of_every_link_type_carry_ipv6(tmp_path):
    from cronos.net.pcapio import read_pcap

    p6 = build_ip(Segment("fd00::1", "fd00::2", 40000, 80, 1, 0, SYN, 64240, df=False))
    p4 = build_ip(Segment("10.0.0.1", "10.0.0.2", 40000, 80, 1, 0, SYN, 64240))
    eth = b"\x02" * 12
    cases = {
        101: [p6, p4], 229: [p6],
        1: [eth + b"\x86\xdd" + p6, eth + b"\x81\x00\x00\x05\x86\xdd" + p6, eth + b"\x08\x00" + p4],
        113: [b"\0" * 14 + b"\x86\xdd" + p6],
        276: [b"\x86\xdd" + b"\0" * 18 + p6],
        0: [struct.pack("<I", 24) + p6, struct.pack("<I", 28) + p6, struct.pack(">I", 30) + p6],
        108: [struct.pack(">I", 30) + p6, struct.pack(">I", 7) + p6],  # 7: not IP, skipped
    }  # fmt: skip
    for linktype, frames in cases.items():
        _classic(tmp_path / f"{linktype}.pcap", frames, linktype)
        got = [data for _, data in read_pcap(tmp_path / f"{linktype}.pcap")]
        want = [p4 if f.endswith(p4) else p6 for f in frames]
        if linktype == 108:
            want = want[:1]
        assert got == want, linktype


def test_an_ipv6_scan_on_the_simulated_network_replays_from_its_packets():
    from cronos.model import Method, Status
    from cronos.probes import ProbeConfig
    from cronos.scan.core import CoreConfig, ScanCore
    from cronos.scan.replay import replay_own
    from cronos.scan.sim import SimNet, StackPeer

    opts = (("MSS", 1440), ("SAckOK", b""), ("Timestamp", (1, 2)), ("NOP", None), ("WScale", 7))
    peer = StackPeer("fd00:77::2", 80, synack_gaps_s=(1.0, 2.0), fin_gaps_s=(0.2, 0.4, 0.8),
                     fin_rst_s=1.6, ttl=57, options=opts)  # fmt: skip
    net = SimNet(ScanCore(CoreConfig(timeout_s=3.0)), [peer], timer_lag_s=0.0013)
    methods = (Method.SYN_RCVD, Method.LAST_ACK, Method.FIN_WAIT1)
    for i, m in enumerate(methods):
        cfg = ProbeConfig(target="fd00:77::2", port=80, src_ip="fd00:77::1", src_port=40000 + i,
                          isn=1000 * (i + 1), timeout_s=3.0)  # fmt: skip
        net.launch(cfg, m, 1000.0 + i * 0.0004)
    net.run()
    live = sorted(net.observations, key=lambda o: methods.index(o.method))
    assert [o.status for o in live] == [Status.OK] * 3
    assert [len(o.fingerprint.gaps_us) for o in live] == [2, 3, 3]
    f = live[0].features
    assert f.v6 and f.mss == 1440 and f.ttl == 57 and f.ip_id is None
    assert all(b[0] >> 4 == 6 for _, b in net.captured)
    replayed = sorted(replay_own(net.captured, timeout_s=3.0),
                      key=lambda o: methods.index(o.method))  # fmt: skip
    assert replayed == live
    # passive mode (a capture that is not a Cron-OS scan's) reads IPv6 series too
    from cronos.scan.passive import passive

    seen = passive(net.captured)
    syn = [o for o in seen if o.method is Method.SYN_RCVD]
    assert syn and syn[0].target == "fd00:77::2"
    assert syn[0].fingerprint.gaps_us == live[0].fingerprint.gaps_us


def test_an_icmpv6_error_about_a_flow_is_noted_in_its_observation():
    from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6PacketTooBig, IPv6
    from scapy.packet import Raw

    from cronos.model import Method, Status
    from cronos.scan.core import MAX_ICMP_NOTES, CoreConfig, Job, ScanCore

    core = ScanCore(CoreConfig(timeout_s=2.0))
    (syn,) = core.start(Job("fd00:77::2", 80, Method.SYN_RCVD), 100.0, "fd00:77::1", 40000)
    quoted = Raw(build_ip(syn))
    unr = bytes(IPv6(src="fd00:99::1", dst="fd00:77::1") / ICMPv6DestUnreach(code=3) / quoted)
    assert core.receive(100.02, unr) == []  # ours: kept in a -w file, nothing to send
    other = build_ip(Segment("fd00:77::1", "fd00:77::2", 40001, 80, 1, 0, SYN, 64240, df=False))
    stray = bytes(IPv6(src="fd00:99::1", dst="fd00:77::1") / ICMPv6DestUnreach() / Raw(other))
    assert core.receive(100.03, stray) is None  # another flow's: not ours
    big = bytes(IPv6(src="fd00:99::1", dst="fd00:77::1") / ICMPv6PacketTooBig(mtu=1280) / quoted)
    for k in range(10):  # a flood of errors: a bounded note
        core.receive(100.04 + k / 1000, big)
    core.expire(110.0)
    (done,) = core.results()
    obs = done.observation
    assert obs.status is Status.FILTERED  # no reply: the errors are notes, not replies
    assert "ICMPv6 unreachable (code 3) from fd00:99::1 at +20 ms" in obs.note
    assert "ICMPv6 too big (code 0, MTU 1280)" in obs.note
    assert obs.note.count("ICMPv6") == MAX_ICMP_NOTES
    assert core.stats.icmp == 11


BLOCK = """Fingerprint Example stack [test]
Class Example | Example | 1.X | general purpose
Source a test
CronOS_Hdr(W=FFFF%HL=255%FL=0%MSS=1440%O=M%WS=)
CronOS_Hdr(W=FFFF%TTL=64%DF=N%ID=12%MSS=1460%O=M%WS=)
CronOS_Syn(nbPkt=2%Time=18%p=6000000%p=12000000)
"""


def test_a_block_may_give_one_header_per_family():
    from cronos.analysis.db import DatabaseError, parse_db_text

    (sig,) = parse_db_text(BLOCK, "t.db")
    assert not sig.features.v6 and sig.features.ttl == 64  # the IPv4 one is the block's
    assert sig.features6.v6 and sig.features6.ttl == 255
    assert sig.header_for(True) is sig.features6 and sig.header_for(False) is sig.features
    text = sig.block()
    assert text.index("%TTL=64%") < text.index("%HL=255%")  # IPv4 first, as parsed back
    assert parse_db_text(text, "again.db")[0].key() == sig.key()
    two4 = BLOCK.replace("HL=255%FL=0", "TTL=64%DF=N%ID=")
    with pytest.raises(DatabaseError, match="one per family at most"):
        parse_db_text(two4, "t.db")
    three = BLOCK.replace("CronOS_Syn", "CronOS_Hdr(W=1%HL=64%FL=R%MSS=1%O=M%WS=)\nCronOS_Syn")
    with pytest.raises(DatabaseError, match="one per family at most"):
        parse_db_text(three, "t.db")


def test_an_ipv6_header_of_the_block_is_what_an_ipv6_observation_is_compared_with():
    from cronos.analysis.db import Database, parse_db_text
    from cronos.analysis.match import header_costs

    with_v6 = Database(tuple(parse_db_text(BLOCK, "t.db")))
    v4_text = "\n".join(ln for ln in BLOCK.splitlines() if "HL=" not in ln)
    v4_only = Database(tuple(parse_db_text(v4_text, "t.db")))
    slirp6 = SynAckFeatures(65535, 255, False, None, 1440, "M", None, flow="0")  # libslirp's
    slirp4 = SynAckFeatures(65535, 64, False, 12, 1460, "M", None)
    # over IPv6 libslirp sends hop limit 255 (TTL 64 over IPv4): only the block's
    # own IPv6 line explains it without a change
    assert header_costs(with_v6, slirp6)[0] < header_costs(v4_only, slirp6)[0] - 1.0
    assert header_costs(with_v6, slirp4)[0] == header_costs(v4_only, slirp4)[0]


def test_the_port_header_reads_the_flow_label_across_flows():
    from dataclasses import asdict, replace

    from cronos.model import port_header

    a = replace(V6, flow="R", flow_label=0x12345)
    same, other = replace(a, flow_label=0x12345), replace(a, flow_label=0x54321)
    assert port_header([None, a, same]).flow == "C"  # one label in every flow: constant
    assert port_header([a, other]).flow == "R"  # Linux: a hash per flow
    assert port_header([a]).flow == "R"  # one flow cannot tell
    zero = replace(V6, flow="0", flow_label=0)
    assert port_header([zero, zero]).flow == "0" and port_header([V4, V4]) is V4
    assert port_header([None]) is None
    assert parse_hdr_line(port_header([a, same]).line()).flow == "C"
    assert a == other and hash(a) == hash(other)  # the label itself is not compared
    assert SynAckFeatures(**asdict(a)).flow_label == 0x12345  # JSON records keep it
