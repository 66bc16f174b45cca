"""TCP segments over IPv4 and IPv6: parsing (scapy) and building, no I/O.

A ``Segment`` is the only packet type probes see. ``parse_ip`` turns captured
IPv4 or IPv6 bytes into one (or ``None`` for anything that is not a
well-formed TCP segment); ``build_ip`` turns one into bytes for the raw
socket. The family follows the addresses (an IPv6 address has a colon); in
IPv6 ``ttl`` is the hop limit, ``df`` is False and ``ip_id`` 0 (no such
fields), and ``flow_label`` / ``tclass`` are the IPv6 header's. IPv6
extension headers (hop-by-hop, routing, destination options, an atomic
fragment header) are skipped; a fragment, an ICMPv6 message (which quotes a
TCP header) or anything else is not a segment: ``parse_icmp6`` reads the
ICMPv6 errors that concern a flow.
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from struct import error as struct_error

logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

from scapy.error import Scapy_Exception  # noqa: E402
from scapy.layers.inet import IP, TCP, TCPerror  # noqa: E402
from scapy.layers.inet6 import (  # noqa: E402
    IPerror6,
    IPv6,
)
from scapy.packet import Raw  # noqa: E402

FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80

_OPT_LETTER = {
    "MSS": "M",
    "NOP": "N",
    "WScale": "W",
    "SAckOK": "S",
    "Timestamp": "T",
    "EOL": "E",
}

MAX_OPTIONS = 40  # bytes of TCP options; more is malformed


@dataclass(frozen=True)
class Segment:
    """One TCP segment with the IP fields Cron-OS looks at."""

    src: str
    dst: str
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int = 0
    payload: bytes = b""
    options: tuple[tuple[str, object], ...] = ()
    ttl: int = 64
    df: bool = True
    ip_id: int = 0
    checksum_ok: bool = True
    flow_label: int = 0  # IPv6 only
    tclass: int = 0  # IPv6 only

    @property
    def v6(self) -> bool:
        return ":" in self.src

    @property
    def seg_len(self) -> int:
        """Sequence space used: payload plus one for SYN and for FIN."""
        return len(self.payload) + (1 if self.flags & SYN else 0) + (1 if self.flags & FIN else 0)

    def option(self, name: str):
        for k, v in self.options:
            if k == name:
                return v
        return None

    @property
    def option_letters(self) -> str:
        return "".join(_OPT_LETTER.get(k, "?") for k, _ in self.options)

    def flag_str(self) -> str:
        return "".join(
            c for bit, c in zip((1, 2, 4, 8, 16, 32), "FSRPAU", strict=True) if self.flags & bit
        )


#: IPv6 extension headers skipped before TCP: hop-by-hop, routing,
#: destination options (length in 8-octet units after the first 8), and the
#: fragment header (8 octets; only an atomic fragment: offset 0, no M flag)
_EXT6 = (0, 43, 60)
_FRAG6 = 44
MAX_EXT6 = 8


def tcp_offset6(data: bytes) -> tuple[int, int] | None:
    """(offset of the TCP header, end of the segment) in IPv6 bytes, past the
    extension headers; None if not one whole, unfragmented TCP segment."""
    if len(data) < 60 or data[0] >> 4 != 6:
        return None
    end = 40 + int.from_bytes(data[4:6], "big")
    if end > len(data):
        return None
    nh, off = data[6], 40
    for _ in range(MAX_EXT6 + 1):
        if nh == 6:
            return (off, end) if off + 20 <= end else None
        if off + 8 > end:
            return None
        if nh in _EXT6:
            nh, off = data[off], off + (data[off + 1] + 1) * 8
        elif nh == _FRAG6:
            if int.from_bytes(data[off + 2 : off + 4], "big") & 0xFFF9:  # offset or M
                return None
            nh, off = data[off], off + 8
        else:
            return None
    return None


def _checksum_ok6(data: bytes) -> bool:
    where = tcp_offset6(data)
    if where is None:
        return False
    off, end = where
    seg = data[off:end]
    pseudo = data[8:40] + len(seg).to_bytes(4, "big") + b"\0\0\0\x06"
    return _fold(_sum16(pseudo + seg)) == 0xFFFF


def tcp_checksum_ok(data: bytes) -> bool:
    """Check the TCP checksum of raw IPv4 or IPv6 bytes (RFC 1071 sum over the
    pseudo-header and the segment, checksum field included, must be 0xFFFF)."""
    if data[:1] and data[0] >> 4 == 6:
        return _checksum_ok6(data)
    ihl = (data[0] & 0x0F) * 4
    total = int.from_bytes(data[2:4], "big")
    seg = data[ihl:total] if ihl <= total <= len(data) else data[ihl:]
    pseudo = data[12:20] + b"\0\x06" + len(seg).to_bytes(2, "big")
    buf = pseudo + seg
    if len(buf) % 2:
        buf += b"\0"
    acc = sum(struct.unpack(f"!{len(buf) // 2}H", buf))
    while acc >> 16:
        acc = (acc & 0xFFFF) + (acc >> 16)
    return acc == 0xFFFF


_FLOW = struct.Struct("!4s4sHH")


def peek_flow(data: bytes) -> tuple[str, int, str, int] | None:
    """(src, sport, dst, dport) of an unfragmented IPv4 or IPv6 TCP packet,
    or None.

    Only the fixed header fields, to route a captured packet to its probe (or
    drop it) before any full parse."""
    if data[:1] and data[0] >> 4 == 6:
        where = tcp_offset6(data)
        if where is None:
            return None
        sport, dport = struct.unpack_from("!HH", data, where[0])
        return _ntop6(data[8:24]), sport, _ntop6(data[24:40]), dport
    if len(data) < 40 or data[0] >> 4 != 4 or data[9] != 6:
        return None
    ihl = (data[0] & 0x0F) * 4
    if ihl < 20 or len(data) < ihl + 20 or int.from_bytes(data[6:8], "big") & 0x3FFF:
        return None
    src, dst, sport, dport = _FLOW.unpack_from(data, 12)[:2] + struct.unpack_from("!HH", data, ihl)
    return socket.inet_ntoa(src), sport, socket.inet_ntoa(dst), dport


def _ntop6(b: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6, b)


def repeat_key(data: bytes) -> bytes | None:
    """What must be equal for a packet to be a byte-for-byte copy of another
    but for its checksums and its TCP options: the IP header without its
    checksum (TTL and IP ID included), the fixed TCP header without its
    checksum, and the payload. ``None`` for a malformed header.

    A retransmission (a SYN-ACK or FIN sent again) differs from the first
    copy only there (a new timestamp option, so a new checksum): the engine
    gives it the Segment that ``parse_ip`` made of the first copy, instead of
    dissecting it again, once its own checksum is checked. Nothing is read
    out of these bytes; they are only compared. In IPv6: the whole header
    chain up to TCP (hop limit and flow label included)."""
    if data[:1] and data[0] >> 4 == 6:
        where = tcp_offset6(data)
        if where is None:
            return None
        off, end = where
        doff = (data[off + 12] >> 4) * 4
        if doff < 20 or off + doff > end:
            return None
        return b"".join((data[:off], data[off : off + 16], data[off + 18 : off + 20],
                         data[off + doff : end]))  # fmt: skip
    ihl = (data[0] & 0x0F) * 4
    total = int.from_bytes(data[2:4], "big")
    if ihl < 20 or total > len(data) or total < ihl + 20:
        return None
    doff = (data[ihl + 12] >> 4) * 4
    if doff < 20 or ihl + doff > total:
        return None
    return b"".join(
        (data[:10], data[12:ihl], data[ihl : ihl + 16], data[ihl + 18 : ihl + 20],
         data[ihl + doff : total])
    )  # fmt: skip


def own_segment(data: bytes) -> Segment:
    """A segment WE built and sent, read back from the capture: header fields
    only (no options), by struct. Foreign input always goes through
    ``parse_ip`` (scapy); this is our own bytes, and it keeps the ACK of a
    SYN-ACK from waiting behind a scapy parse of our own SYNs."""
    if data[0] >> 4 == 6:
        off, end = tcp_offset6(data) or (40, len(data))
        sport, dport, seq, ack, doff, flags, window = struct.unpack_from("!HHIIBBH", data, off)
        return Segment(
            src=_ntop6(data[8:24]), dst=_ntop6(data[24:40]), sport=sport, dport=dport, seq=seq,
            ack=ack, flags=flags, window=window, payload=bytes(data[off + (doff >> 4) * 4 : end]),
            ttl=data[7], df=False, ip_id=0, flow_label=int.from_bytes(data[1:4], "big") & 0xFFFFF,
            tclass=(int.from_bytes(data[0:2], "big") >> 4) & 0xFF,
        )  # fmt: skip
    ihl = (data[0] & 0x0F) * 4
    total = int.from_bytes(data[2:4], "big")
    sport, dport, seq, ack, off, flags, window = struct.unpack_from("!HHIIBBH", data, ihl)
    payload = data[ihl + (off >> 4) * 4 : total]
    return Segment(
        src=socket.inet_ntoa(data[12:16]), dst=socket.inet_ntoa(data[16:20]), sport=sport,
        dport=dport, seq=seq, ack=ack, flags=flags, window=window, payload=bytes(payload),
        ttl=data[8], df=bool(data[6] & 0x40), ip_id=int.from_bytes(data[4:6], "big"),
    )  # fmt: skip


_MISSING = object()


def _val(pkt, fields: dict, name: str):
    """A dissected field's value (``pkt.getfieldval`` for one not in the bytes)."""
    v = fields.get(name, _MISSING)
    return pkt.getfieldval(name) if v is _MISSING else v


def parse_ip(data: bytes, verify_checksum: bool = False) -> Segment | None:
    """Parse IPv4 or IPv6 bytes into a Segment; ``None`` if not a sane TCP segment.

    Never raises on hostile input: every scapy failure means "not ours".
    """
    if data[:1] and data[0] >> 4 == 6:
        return _parse_ip6(data, verify_checksum)
    if len(data) < 40 or data[0] >> 4 != 4 or data[0] & 0x0F < 5:
        return None  # an IHL below 5 is malformed (scapy would read options into it)
    try:
        ip = IP(data)
        f = ip.fields  # dissected values: read directly (scapy's __getattr__ is slow)
        if _val(ip, f, "proto") != 6 or _val(ip, f, "frag") != 0:
            return None
        ip_flags = int(_val(ip, f, "flags"))
        tcp = ip.payload
        if ip_flags & 0x1 or not isinstance(tcp, TCP):  # MF, or not TCP
            return None
        t = tcp.fields
        dataofs = _val(tcp, t, "dataofs")
        if dataofs is None or dataofs < 5:
            return None
        opts = _options(_val(tcp, t, "options"))
        pl = tcp.payload
        payload = pl.load if isinstance(pl, Raw) else bytes(pl) if pl else b""
        ok = tcp_checksum_ok(data) if verify_checksum else True
        ip_len = _val(ip, f, "len")
        if ip_len:
            payload = payload[: max(0, ip_len - _val(ip, f, "ihl") * 4 - dataofs * 4)]
        return Segment(
            src=_val(ip, f, "src"),
            dst=_val(ip, f, "dst"),
            **_tcp_fields(tcp, t),
            payload=payload,
            options=opts,
            ttl=int(_val(ip, f, "ttl")),
            df=bool(ip_flags & 0x2),
            ip_id=int(_val(ip, f, "id")),
            checksum_ok=ok,
        )
    except (Scapy_Exception, ValueError, TypeError, IndexError, AttributeError, struct_error):
        return None


def _parse_ip6(data: bytes, verify_checksum: bool) -> Segment | None:
    """The extension headers are walked by ``tcp_offset6`` (the one reading
    that ``peek_flow`` and the checksum share: scapy's own chain follows
    malformed headers its own way); scapy dissects the fixed header and TCP."""
    where = tcp_offset6(data)
    if where is None:  # a fragment, ICMPv6, truncated...: not a segment
        return None
    off, end = where
    try:
        ip = IPv6(data[:40])
        f = ip.fields
        layer = TCP(data[off:end])
        tcp, t = layer, layer.fields
        dataofs = _val(tcp, t, "dataofs")
        if dataofs is None or dataofs < 5:
            return None
        pl = tcp.payload
        payload = pl.load if isinstance(pl, Raw) else bytes(pl) if pl else b""
        payload = payload[: max(0, end - off - dataofs * 4)]
        return Segment(
            src=_val(ip, f, "src"),
            dst=_val(ip, f, "dst"),
            **_tcp_fields(tcp, t),
            payload=payload,
            options=_options(_val(tcp, t, "options")),
            ttl=int(_val(ip, f, "hlim")),
            df=False,
            ip_id=0,
            checksum_ok=_checksum_ok6(data) if verify_checksum else True,
            flow_label=int(_val(ip, f, "fl")),
            tclass=int(_val(ip, f, "tc")),
        )
    except (Scapy_Exception, ValueError, TypeError, IndexError, AttributeError, struct_error):
        return None


def _tcp_fields(tcp, t: dict) -> dict[str, int]:
    return {k: int(_val(tcp, t, k)) for k in ("sport", "dport", "seq", "ack", "flags", "window")}


def _options(raw) -> tuple[tuple[str, object], ...]:
    opts = []
    for opt in raw:
        if not isinstance(opt, tuple) or len(opt) != 2:
            continue
        name, value = opt
        if isinstance(name, int):
            name = f"opt{name}"
        opts.append((str(name), value))
    return tuple(opts)


def build_ip_scapy(seg: Segment) -> bytes:
    """Serialise a Segment with scapy (the reference ``build_ip`` is tested against)."""
    if seg.v6:
        net = IPv6(src=seg.src, dst=seg.dst, hlim=seg.ttl, fl=seg.flow_label, tc=seg.tclass)
    else:
        net = IP(src=seg.src, dst=seg.dst, ttl=seg.ttl, id=seg.ip_id, flags="DF" if seg.df else 0)
    pkt = net / TCP(
        sport=seg.sport,
        dport=seg.dport,
        seq=seg.seq & 0xFFFFFFFF,
        ack=seg.ack & 0xFFFFFFFF,
        flags=seg.flags,
        window=seg.window,
        options=list(seg.options),
    )
    if seg.payload:
        pkt = pkt / Raw(seg.payload)
    return bytes(pkt)


def _option_bytes(options) -> bytes:
    out = b""
    for name, value in options:
        if name == "MSS":
            out += struct.pack("!BBH", 2, 4, value)
        elif name == "NOP":
            out += b"\x01"
        elif name == "EOL":
            out += b"\x00"
        elif name == "WScale":
            out += struct.pack("!BBB", 3, 3, value)
        elif name == "SAckOK":
            out += b"\x04\x02"
        elif name == "Timestamp":
            out += struct.pack("!BBII", 8, 10, value[0], value[1])
        else:
            raise ValueError(f"cannot build TCP option {name!r}")
    if len(out) > MAX_OPTIONS:
        raise ValueError(f"{len(out)} bytes of TCP options: at most {MAX_OPTIONS}")
    return out + b"\x00" * (-len(out) % 4)  # EOL padding to 32 bits, as scapy


def _fold(acc: int) -> int:
    while acc >> 16:
        acc = (acc & 0xFFFF) + (acc >> 16)
    return acc


def _sum16(buf: bytes) -> int:
    if len(buf) % 2:
        buf += b"\0"
    return sum(struct.unpack(f"!{len(buf) // 2}H", buf))


def build_ip(seg: Segment) -> bytes:
    """Serialise a Segment to IPv4 bytes, checksums computed (struct: ~20x faster
    than scapy on the send path, where it delays our ACKs; byte-identical to
    ``build_ip_scapy``, which the tests check). IPv6: no extension header."""
    opts = _option_bytes(seg.options)
    offset = (20 + len(opts)) // 4
    v6 = seg.v6
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    src, dst = socket.inet_pton(fam, seg.src), socket.inet_pton(fam, seg.dst)
    tcp = struct.pack(
        "!HHIIBBHHH", seg.sport, seg.dport, seg.seq & 0xFFFFFFFF, seg.ack & 0xFFFFFFFF,
        offset << 4, seg.flags & 0xFF, seg.window, 0, 0,
    ) + opts + seg.payload  # fmt: skip
    if v6:
        pseudo = src + dst + struct.pack("!I3xB", len(tcp), 6)
    else:
        pseudo = src + dst + struct.pack("!BBH", 0, 6, len(tcp))
    csum = ~_fold(_sum16(pseudo + tcp)) & 0xFFFF
    tcp = tcp[:16] + struct.pack("!H", csum) + tcp[18:]
    if v6:
        first = (6 << 28) | ((seg.tclass & 0xFF) << 20) | (seg.flow_label & 0xFFFFF)
        return struct.pack("!IHBB", first, len(tcp), 6, seg.ttl) + src + dst + tcp
    total = 20 + len(tcp)
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, total, seg.ip_id, 0x4000 if seg.df else 0, seg.ttl, 6, 0,
        src, dst,
    )  # fmt: skip
    ip_csum = ~_fold(_sum16(ip)) & 0xFFFF
    return ip[:10] + struct.pack("!H", ip_csum) + ip[12:] + tcp


def parse_packets(packets: Iterable[tuple[float, bytes | Segment]]) -> list[tuple[float, Segment]]:
    """(ts, Segment) for every TCP segment; already parsed ones are kept as they are.

    Parsing (scapy) is the slow part: parse once, then give the result to
    both the replay and the passive extraction."""
    out = []
    for ts, data in packets:
        seg = data if isinstance(data, Segment) else parse_ip(data)
        if seg is not None:
            out.append((ts, seg))
    return out


@dataclass(frozen=True)
class Icmp6Error:
    """An ICMPv6 error about one of our segments: what it says and the flow
    of the segment it quotes (as that segment went: src, sport, dst, dport)."""

    kind: str  # "too big", "unreachable", "time exceeded", "parameter problem"
    code: int
    mtu: int | None  # "packet too big" only
    reporter: str  # who sent the error (a router, or the target)
    flow: tuple[str, int, str, int]


_ICMP6_KINDS = {1: "unreachable", 2: "too big", 3: "time exceeded", 4: "parameter problem"}


def parse_icmp6(data: bytes) -> Icmp6Error | None:
    """The ICMPv6 error in IPv6 bytes that quotes a TCP segment, else None
    (never raises: hostile input is "not ours")."""
    if len(data) < 48 or data[0] >> 4 != 6 or data[6] != 58 or data[40] not in _ICMP6_KINDS:
        return None
    try:
        ip = IPv6(data)
        icmp = ip.payload
        quoted = icmp.payload
        if not isinstance(quoted, IPerror6):
            return None
        tcp = quoted.payload
        if not isinstance(tcp, TCPerror):
            return None
        kind = _ICMP6_KINDS[int(icmp.fields.get("type", data[40]))]
        mtu = int(icmp.fields["mtu"]) if kind == "too big" and "mtu" in icmp.fields else None
        flow = (str(quoted.src), int(tcp.sport), str(quoted.dst), int(tcp.dport))
        return Icmp6Error(kind, int(icmp.fields.get("code", 0)), mtu, str(ip.src), flow)
    except (Scapy_Exception, ValueError, TypeError, IndexError, AttributeError, KeyError,
            struct_error):  # fmt: skip
        return None
