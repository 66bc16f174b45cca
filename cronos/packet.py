"""TCP/IPv4 segments: parsing (scapy) and building, without any I/O.

A ``Segment`` is the only packet type probes see. ``parse_ip`` turns captured
IPv4 bytes into one (or ``None`` for anything that is not a well-formed TCP
segment); ``build_ip`` turns one into bytes for the raw socket.
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
from scapy.layers.inet import IP, TCP  # noqa: E402
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


def tcp_checksum_ok(data: bytes) -> bool:
    """Check the TCP checksum of raw IPv4 bytes (RFC 1071 sum over the
    pseudo-header and the segment, checksum field included, must be 0xFFFF)."""
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
    """(src, sport, dst, dport) of an unfragmented IPv4/TCP packet, or None.

    Only the fixed header fields, to route a captured packet to its probe (or
    drop it) before any full parse."""
    if len(data) < 40 or data[0] >> 4 != 4 or data[9] != 6:
        return None
    ihl = (data[0] & 0x0F) * 4
    if ihl < 20 or len(data) < ihl + 20 or int.from_bytes(data[6:8], "big") & 0x3FFF:
        return None
    src, dst, sport, dport = _FLOW.unpack_from(data, 12)[:2] + struct.unpack_from("!HH", data, ihl)
    return socket.inet_ntoa(src), sport, socket.inet_ntoa(dst), dport


def repeat_key(data: bytes) -> bytes | None:
    """What must be equal for a packet to be a byte-for-byte copy of another
    but for its checksums and its TCP options: the IP header without its
    checksum (TTL and IP ID included), the fixed TCP header without its
    checksum, and the payload. ``None`` for a malformed header.

    A retransmission (a SYN-ACK or FIN sent again) differs from the first
    copy only there (a new timestamp option, so a new checksum): the engine
    gives it the Segment that ``parse_ip`` made of the first copy, instead of
    dissecting it again, once its own checksum is checked. Nothing is read
    out of these bytes; they are only compared."""
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
    """Parse IPv4 bytes into a Segment; ``None`` if not a sane TCP segment.

    Never raises on hostile input: every scapy failure means "not ours".
    """
    if len(data) < 40 or data[0] >> 4 != 4:
        return None
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
        opts = []
        for opt in _val(tcp, t, "options"):
            if not isinstance(opt, tuple) or len(opt) != 2:
                continue
            name, value = opt
            if isinstance(name, int):
                name = f"opt{name}"
            opts.append((str(name), value))
        pl = tcp.payload
        payload = pl.load if isinstance(pl, Raw) else bytes(pl) if pl else b""
        ok = tcp_checksum_ok(data) if verify_checksum else True
        ip_len = _val(ip, f, "len")
        if ip_len:
            payload = payload[: max(0, ip_len - _val(ip, f, "ihl") * 4 - dataofs * 4)]
        return Segment(
            src=_val(ip, f, "src"),
            dst=_val(ip, f, "dst"),
            sport=int(_val(tcp, t, "sport")),
            dport=int(_val(tcp, t, "dport")),
            seq=int(_val(tcp, t, "seq")),
            ack=int(_val(tcp, t, "ack")),
            flags=int(_val(tcp, t, "flags")),
            window=int(_val(tcp, t, "window")),
            payload=payload,
            options=tuple(opts),
            ttl=int(_val(ip, f, "ttl")),
            df=bool(ip_flags & 0x2),
            ip_id=int(_val(ip, f, "id")),
            checksum_ok=ok,
        )
    except (Scapy_Exception, ValueError, TypeError, IndexError, AttributeError, struct_error):
        return None


def build_ip_scapy(seg: Segment) -> bytes:
    """Serialise a Segment with scapy (the reference ``build_ip`` is tested against)."""
    pkt = IP(
        src=seg.src,
        dst=seg.dst,
        ttl=seg.ttl,
        id=seg.ip_id,
        flags="DF" if seg.df else 0,
    ) / TCP(
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
    ``build_ip_scapy``, which the tests check)."""
    opts = _option_bytes(seg.options)
    offset = (20 + len(opts)) // 4
    src, dst = socket.inet_aton(seg.src), socket.inet_aton(seg.dst)
    tcp = struct.pack(
        "!HHIIBBHHH", seg.sport, seg.dport, seg.seq & 0xFFFFFFFF, seg.ack & 0xFFFFFFFF,
        offset << 4, seg.flags & 0xFF, seg.window, 0, 0,
    ) + opts + seg.payload  # fmt: skip
    pseudo = src + dst + struct.pack("!BBH", 0, 6, len(tcp))
    csum = ~_fold(_sum16(pseudo + tcp)) & 0xFFFF
    tcp = tcp[:16] + struct.pack("!H", csum) + tcp[18:]
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
