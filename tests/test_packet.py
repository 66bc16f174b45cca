"""Packet parsing: scapy-backed, checksum-checked, never raising on hostile bytes."""

from hypothesis import given, settings
from hypothesis import strategies as st

from cronos.packet import (
    ACK,
    FIN,
    PSH,
    SYN,
    Segment,
    build_ip,
    build_ip_scapy,
    parse_ip,
    tcp_checksum_ok,
)  # fmt: skip

ports = st.integers(1, 65535)
u32 = st.integers(0, 2**32 - 1)
flags = st.sampled_from([SYN, SYN | ACK, ACK, FIN | ACK, FIN | PSH | ACK, 0x04, 0x14])
options = st.lists(
    st.sampled_from([("MSS", 1460), ("NOP", None), ("WScale", 7), ("SAckOK", b""),
                     ("Timestamp", (1, 2))]),
    max_size=3,  # at most 30 bytes: TCP allows 40
)  # fmt: skip


@st.composite
def segments(draw):
    return Segment(
        src="10.77.1.2", dst="10.77.1.1", sport=draw(ports), dport=draw(ports),
        seq=draw(u32), ack=draw(u32), flags=draw(flags), window=draw(st.integers(0, 65535)),
        payload=draw(st.binary(max_size=300)), options=tuple(draw(options)),
        ttl=draw(st.integers(1, 255)), df=draw(st.booleans()), ip_id=draw(st.integers(0, 65535)),
    )  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(segments())
def test_build_parse_round_trip_and_checksum(seg):
    raw = build_ip(seg)
    back = parse_ip(raw, verify_checksum=True)
    assert back is not None and back.checksum_ok and tcp_checksum_ok(raw)
    for field in ("src", "dst", "sport", "dport", "seq", "ack", "flags", "window", "payload",
                  "ttl", "df", "ip_id"):  # fmt: skip
        assert getattr(back, field) == getattr(seg, field), field
    # scapy pads options to 32 bits with EOL: trailing EOLs are padding
    names = [k for k, _ in back.options]
    while names and names[-1] == "EOL" and len(names) > len(seg.options):
        names.pop()
    assert names == [k for k, _ in seg.options]


@settings(max_examples=300, deadline=None)
@given(segments(), st.integers(0, 10_000), st.integers(1, 255))
def test_any_flipped_byte_in_the_segment_fails_the_checksum_or_the_parse(seg, pos, xor):
    raw = bytearray(build_ip(seg))
    i = 20 + pos % (len(raw) - 20)  # inside the TCP header or payload
    raw[i] ^= xor
    back = parse_ip(bytes(raw), verify_checksum=True)
    assert back is None or not back.checksum_ok


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise(data):
    parse_ip(data, verify_checksum=True)
    parse_ip(b"\x45" + data, verify_checksum=True)


@settings(max_examples=1000, deadline=None)
@given(segments(), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8))
def test_mutated_packets_never_raise(seg, muts):
    raw = bytearray(build_ip(seg))
    for pos, val in muts:
        raw[pos % len(raw)] = val
    parse_ip(bytes(raw), verify_checksum=True)
    parse_ip(bytes(raw[: len(raw) // 2]), verify_checksum=True)


@settings(max_examples=500, deadline=None)
@given(segments())
def test_fast_builder_is_byte_identical_to_scapy(seg):
    assert build_ip(seg) == build_ip_scapy(seg)


@settings(max_examples=300, deadline=None)
@given(segments())
def test_peek_flow_and_own_segment_agree_with_scapy(seg):
    from cronos.packet import own_segment, peek_flow

    raw = build_ip(seg)
    assert peek_flow(raw) == (seg.src, seg.sport, seg.dst, seg.dport)
    own, ref = own_segment(raw), parse_ip(raw)
    for f in ("src", "dst", "sport", "dport", "seq", "ack", "flags", "window", "payload",
              "ttl", "df", "ip_id"):  # fmt: skip
        assert getattr(own, f) == getattr(ref, f), f


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=120))
def test_peek_flow_never_raises(data):
    from cronos.packet import peek_flow

    peek_flow(data)
    peek_flow(b"\x45\x00" + data)


def _parse_by_attributes(data: bytes):
    """Reference for ``parse_ip``: the same reading through scapy's attribute
    access (``ip.ttl``, ``tcp.options``...), which ``parse_ip`` bypasses for
    speed by reading the dissected ``fields`` dicts."""
    from scapy.layers.inet import IP, TCP
    from scapy.packet import Raw

    if len(data) < 40 or data[0] >> 4 != 4 or data[0] & 0x0F < 5:  # IHL < 5: malformed
        return None
    try:
        ip = IP(data)
        if ip.proto != 6 or ip.frag != 0 or ip.flags.MF or TCP not in ip:
            return None
        tcp = ip[TCP]
        if tcp.dataofs is None or tcp.dataofs < 5:
            return None
        opts = []
        for opt in tcp.options:
            if isinstance(opt, tuple) and len(opt) == 2:
                name = f"opt{opt[0]}" if isinstance(opt[0], int) else str(opt[0])
                opts.append((name, opt[1]))
        payload = tcp.payload.load if isinstance(tcp.payload, Raw) else bytes(tcp.payload)
        if ip.len:
            payload = payload[: max(0, ip.len - ip.ihl * 4 - tcp.dataofs * 4)]
        return (ip.src, ip.dst, int(tcp.sport), int(tcp.dport), int(tcp.seq), int(tcp.ack),
                int(tcp.flags), int(tcp.window), payload, tuple(opts), int(ip.ttl),
                bool(ip.flags.DF), int(ip.id))  # fmt: skip
    except Exception:
        return None


@settings(max_examples=1500, deadline=None)
@given(
    segments(),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
    st.integers(0, 80),
)
def test_parse_reads_the_same_values_as_scapy_attribute_access(seg, muts, cut):
    raw = bytearray(build_ip(seg))
    for pos, val in muts:
        raw[pos % len(raw)] = val
    for data in (bytes(raw), bytes(raw[: max(0, len(raw) - cut)])):
        got = parse_ip(data)
        ref = _parse_by_attributes(data)
        assert (got is None) == (ref is None)
        if got is not None:
            names = ("src", "dst", "sport", "dport", "seq", "ack", "flags", "window",
                     "payload", "options", "ttl", "df", "ip_id")  # fmt: skip
            assert tuple(getattr(got, n) for n in names) == ref


def test_repeat_key_ignores_only_checksums_and_options():
    from dataclasses import replace

    from cronos.packet import repeat_key

    first = Segment("10.0.0.2", "10.0.0.1", 80, 40000, 7, 8, SYN | ACK, 65160,
                    options=(("MSS", 1460), ("Timestamp", (100, 5))), ip_id=0)  # fmt: skip
    again = replace(first, options=(("MSS", 1460), ("Timestamp", (1100, 5))))
    a, b = build_ip(first), build_ip(again)
    assert a != b and repeat_key(a) == repeat_key(b)  # new TSval, new checksum
    for change in (dict(ttl=63), dict(ip_id=1), dict(seq=9), dict(ack=9), dict(flags=ACK),
                   dict(window=1), dict(df=False), dict(payload=b"x"), dict(sport=81),
                   dict(src="10.0.0.3"), dict(options=(("MSS", 1460),))):  # fmt: skip
        assert repeat_key(build_ip(replace(first, **change))) != repeat_key(a), change
    bad = bytearray(a)
    bad[20 + 12] = 0x40  # data offset 16 bytes: malformed
    assert repeat_key(bytes(bad)) is None
    assert repeat_key(a[:-4]) is None  # shorter than its IP total length
