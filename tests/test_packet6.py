"""IPv6 segments: built by struct and by scapy alike, parsed past extension
headers, checksummed over the IPv6 pseudo-header, never raising on hostile
bytes; ICMPv6 errors read for the flow they quote."""

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import TCP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6PacketTooBig,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
)
from scapy.packet import Raw
from test_packet import flags, ports, u32

from cronos.packet import (
    ACK,
    SYN,
    Segment,
    build_ip,
    build_ip_scapy,
    own_segment,
    parse_icmp6,
    parse_ip,
    peek_flow,
    repeat_key,
    tcp_checksum_ok,
)  # fmt: skip

options = st.lists(st.sampled_from([("MSS", 1440), ("NOP", None), ("WScale", 7)]), max_size=3)

FIELDS = ("src", "dst", "sport", "dport", "seq", "ack", "flags", "window", "payload", "ttl",
          "df", "ip_id", "flow_label", "tclass")  # fmt: skip


@st.composite
def segments6(draw):
    return Segment(
        src=draw(st.sampled_from(["fd00:77::2", "2001:db8::1:0:0:2", "fe80::1"])),
        dst="fd00:77::1", sport=draw(ports), dport=draw(ports), seq=draw(u32), ack=draw(u32),
        flags=draw(flags), window=draw(st.integers(0, 65535)),
        payload=draw(st.binary(max_size=300)), options=tuple(draw(options)),
        ttl=draw(st.integers(1, 255)), df=False, ip_id=0,
        flow_label=draw(st.integers(0, 2**20 - 1)), tclass=draw(st.integers(0, 255)),
    )  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(segments6())
def test_v6_build_parse_round_trip_checksum_and_scapy_identity(seg):
    assert seg.v6
    raw = build_ip(seg)
    assert raw == build_ip_scapy(seg)
    assert raw[0] >> 4 == 6 and len(raw) == 40 + int.from_bytes(raw[4:6], "big")
    back = parse_ip(raw, verify_checksum=True)
    assert back is not None and back.checksum_ok and tcp_checksum_ok(raw)
    for field in FIELDS:
        assert getattr(back, field) == getattr(seg, field), field
    assert peek_flow(raw) == (seg.src, seg.sport, seg.dst, seg.dport)
    own = own_segment(raw)
    for field in FIELDS:
        assert getattr(own, field) == getattr(back, field), field


@settings(max_examples=300, deadline=None)
@given(segments6(), st.integers(0, 10_000), st.integers(1, 255))
def test_v6_any_flipped_byte_in_the_segment_or_addresses_fails(seg, pos, xor):
    raw = bytearray(build_ip(seg))
    i = 8 + pos % (len(raw) - 8)  # the addresses (pseudo-header), TCP header or payload
    raw[i] ^= xor
    back = parse_ip(bytes(raw), verify_checksum=True)
    assert back is None or not back.checksum_ok


def _with_ext(seg: Segment, *ext) -> bytes:
    pkt = IPv6(src=seg.src, dst=seg.dst, hlim=seg.ttl, fl=seg.flow_label, tc=seg.tclass)
    for h in ext:
        pkt = pkt / h
    tcp = TCP(sport=seg.sport, dport=seg.dport, seq=seg.seq, ack=seg.ack, flags=seg.flags,
              window=seg.window, options=list(seg.options))  # fmt: skip
    return bytes(pkt / tcp / seg.payload)


SEG = Segment("fd00:77::2", "fd00:77::1", 80, 40000, 7, 8, SYN | ACK, 65160, ttl=64,
              options=(("MSS", 1440), ("Timestamp", (100, 5))), df=False,
              flow_label=0x12345)  # fmt: skip


def test_extension_headers_are_skipped_and_the_checksum_still_holds():
    chains = [
        (IPv6ExtHdrHopByHop(),),
        (IPv6ExtHdrDestOpt(),),
        (IPv6ExtHdrFragment(offset=0, m=0, id=7),),  # an atomic fragment (RFC 6946)
        (IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt(), IPv6ExtHdrFragment(offset=0, m=0)),
    ]
    for chain in chains:
        raw = _with_ext(replace(SEG, payload=b"hello"), *chain)
        seg = parse_ip(raw, verify_checksum=True)
        assert seg is not None and seg.checksum_ok, chain
        for field in FIELDS:
            assert getattr(seg, field) == getattr(replace(SEG, payload=b"hello"), field), field
        assert peek_flow(raw) == ("fd00:77::2", 80, "fd00:77::1", 40000)
        assert repeat_key(raw) is not None


def test_fragments_truncations_and_endless_chains_are_not_segments():
    first = _with_ext(SEG, IPv6ExtHdrFragment(offset=0, m=1))  # more fragments follow
    later = _with_ext(SEG, IPv6ExtHdrFragment(offset=8, m=0))
    for raw in (first, later):
        assert parse_ip(raw) is None and peek_flow(raw) is None and repeat_key(raw) is None
    raw = build_ip(SEG)
    assert parse_ip(raw[:-1]) is None  # shorter than its payload length
    assert parse_ip(raw[:50]) is None
    long = _with_ext(SEG, *[IPv6ExtHdrDestOpt() for _ in range(12)])  # past MAX_EXT6
    assert parse_ip(long) is None and peek_flow(long) is None


def test_v6_repeat_key_ignores_only_checksums_and_options():
    again = replace(SEG, options=(("MSS", 1440), ("Timestamp", (1100, 5))))
    a, b = build_ip(SEG), build_ip(again)
    assert a != b and repeat_key(a) == repeat_key(b)
    for change in (dict(ttl=63), dict(flow_label=1), dict(tclass=4), dict(seq=9), dict(ack=9),
                   dict(window=1), dict(payload=b"x"), dict(sport=81),
                   dict(src="fd00:77::3")):  # fmt: skip
        assert repeat_key(build_ip(replace(SEG, **change))) != repeat_key(a), change


def test_icmp6_errors_name_the_flow_they_quote_and_are_not_segments():
    ours = build_ip(Segment("fd00:77::1", "fd00:77::2", 40000, 80, 1, 0, SYN, 64240, df=False))
    big = bytes(IPv6(src="fd00:99::1", dst="fd00:77::1") / ICMPv6PacketTooBig(mtu=1280) / Raw(ours))
    err = parse_icmp6(big)
    assert err is not None and err.kind == "too big" and err.mtu == 1280
    assert err.reporter == "fd00:99::1" and err.flow == ("fd00:77::1", 40000, "fd00:77::2", 80)
    unr = bytes(IPv6(src="fd00:77::2", dst="fd00:77::1") / ICMPv6DestUnreach(code=4) / Raw(ours))
    err = parse_icmp6(unr)
    assert err is not None and (err.kind, err.code, err.mtu) == ("unreachable", 4, None)
    for raw in (big, unr):
        assert parse_ip(raw) is None and peek_flow(raw) is None
    assert parse_icmp6(ours) is None and parse_icmp6(unr[:60]) is None


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=200))
def test_v6_random_bytes_never_raise(data):
    for raw in (b"\x60" + data, b"\x60\x00\x00\x00" + data[:2] + b"\x06" + data[2:]):
        parse_ip(raw, verify_checksum=True)
        peek_flow(raw)
        repeat_key(raw)
        parse_icmp6(raw)
        tcp_checksum_ok(raw)


@settings(max_examples=1000, deadline=None)
@given(segments6(), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8))
def test_v6_mutated_packets_never_raise_and_peek_agrees(seg, muts):
    raw = bytearray(build_ip(seg))
    for pos, val in muts:
        raw[pos % len(raw)] = val
    for data in (bytes(raw), bytes(raw[: len(raw) // 2])):
        got = parse_ip(data, verify_checksum=True)
        if got is not None:
            assert peek_flow(data) == (got.src, got.sport, got.dst, got.dport)
        repeat_key(data)
