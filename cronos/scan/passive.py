"""Timing series in anybody's capture (passive extraction).

A SYN-ACK sent again with the same 4-tuple, seq and ack is a SYN_RCVD
series; a FIN sent again with the same 4-tuple and
``fin_seq = seq + len(payload)`` is a LAST_ACK series if the peer's FIN came
first (peer closed first), FIN_WAIT1 otherwise. The target is the host that
retransmits. ``connect_us`` is the handshake RTT (last SYN to SYN-ACK, or
SYN-ACK to ACK when the capture looks taken at the server).

A pure function of ``[(ts, ipv4_bytes)]`` (``pcapio.read_pcap``), or of
``[(ts, Segment)]`` already parsed by ``packet.parse_packets``. Our own
scans are replayed instead (``cronos.scan.replay``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..model import Method, Observation, StateFingerprint, Status
from ..packet import ACK, FIN, RST, SYN, Segment, parse_packets
from ..probes.closing import seq_diff
from ..probes.syn import features_of

MASK = 0xFFFFFFFF
FlowKey = tuple[str, int, str, int]  # sender address, sender port, peer, peer port


@dataclass
class _Conn:
    """What passive extraction needs to know of one connection (client -> server)."""

    syn_at: list[float] = field(default_factory=list)  # client's SYNs
    established_at: float | None = None  # client's ACK of the SYN-ACK
    synack_seq: int | None = None
    synack_at: float | None = None  # first SYN-ACK after the client's last SYN
    syn_ttl: int = 0
    synack_ttl: int = 0
    fin_at: dict[str, float] = field(default_factory=dict)  # first FIN of each side


@dataclass
class _Series:
    sender: FlowKey  # (target, target port, peer, peer port)
    kind: str  # "synack" or "fin"
    ident: tuple
    times: list[float] = field(default_factory=list)
    first: Segment | None = None
    end_at: float | None = None  # acknowledged, or the connection went away
    rst_at: float | None = None
    peer_syns_during: int = 0


def passive(
    packets: Sequence[tuple[float, bytes | Segment]], *, min_packets: int = 2
) -> list[Observation]:
    """Retransmission series in anybody's capture, as observations (note "passive: ...").

    A series needs ``min_packets`` packets (the first and one retransmission)
    or one packet followed by the sender's RST.
    """
    segs = parse_packets(packets)
    if not segs:
        return []
    end_of_capture = segs[-1][0]
    conns: dict[frozenset, _Conn] = defaultdict(_Conn)
    series = _SeriesTable()
    order: list[_Series] = []
    for ts, seg in segs:
        _passive_step(ts, seg, conns, series, order)
    out = []
    tries: dict[tuple[str, int, Method], int] = defaultdict(int)
    for s in order:
        if len(s.times) < min_packets and s.rst_at is None:
            continue
        obs = _series_obs(s, conns, end_of_capture, tries)
        if obs is not None:
            out.append(obs)
    return out


def _conn_key(seg: Segment) -> frozenset:
    return frozenset({(seg.src, seg.sport), (seg.dst, seg.dport)})


def _passive_step(ts: float, seg: Segment, conns, series, order) -> None:
    c = conns[_conn_key(seg)]
    sender = (seg.src, seg.sport, seg.dst, seg.dport)
    flags = seg.flags
    if flags & (SYN | ACK) == SYN:
        if c.established_at is not None or c.fin_at:  # port reused: a new connection
            c = conns[_conn_key(seg)] = _Conn()
        c.syn_at.append(ts)
        c.syn_ttl = seg.ttl
        for s in _open_series(series, sender[2:] + sender[:2], "synack"):
            s.peer_syns_during += 1
        return
    if flags & RST:
        for s in _open_series(series, sender, None):
            s.rst_at, s.end_at = ts, ts
        for s in _open_series(series, sender[2:] + sender[:2], None):
            s.end_at = ts
        return
    if flags & (SYN | ACK) == SYN | ACK:
        c.synack_seq = seg.seq
        if c.synack_at is None or (c.syn_at and c.synack_at < c.syn_at[-1]):
            c.synack_at = ts
            c.synack_ttl = seg.ttl
        _add(series, order, sender, "synack", (seg.seq, seg.ack), ts, seg)
        return
    if flags & ACK:
        _on_peer_ack(ts, seg, c, series)
    if flags & FIN:
        side = f"{seg.src}:{seg.sport}"
        c.fin_at.setdefault(side, ts)
        _add(series, order, sender, "fin", ((seg.seq + len(seg.payload)) & MASK,), ts, seg)


class _SeriesTable(dict):
    """(sender, kind, ident) -> _Series, with the open series of each sender indexed."""

    def __init__(self):
        super().__init__()
        self.open: dict[FlowKey, list[_Series]] = defaultdict(list)

    def new(self, key: tuple, s: _Series) -> None:
        self[key] = s
        self.open[s.sender].append(s)


def _open_series(series: _SeriesTable, sender: FlowKey, kind: str | None):
    live = series.open.get(sender)
    if not live:
        return []
    live[:] = [s for s in live if s.end_at is None]  # prune the ended ones
    return [s for s in live if kind is None or s.kind == kind]


def _add(series, order, sender, kind, ident, ts, seg) -> None:
    k = (sender, kind, ident)
    s = series.get(k)
    if s is None or s.end_at is not None:
        if s is not None:
            return  # sent again after it was acknowledged: not a timing series
        s = _Series(sender, kind, ident, first=seg)
        series.new(k, s)
        order.append(s)
    s.times.append(ts)


def _on_peer_ack(ts: float, seg: Segment, c: _Conn, series) -> None:
    """An ACK from the peer ends the sender's series it acknowledges."""
    peer_of = (seg.dst, seg.dport, seg.src, seg.sport)
    acks_synack = c.synack_seq is not None and seg.ack == (c.synack_seq + 1) & MASK
    if acks_synack and c.established_at is None:
        c.established_at = ts
    for s in _open_series(series, peer_of, None):
        # both a SYN-ACK (ident: its seq) and a FIN (ident: fin_seq) use one number
        if seq_diff(seg.ack, (s.ident[0] + 1) & MASK) >= 0:
            s.end_at = ts


def _handshake_rtt_us(c: _Conn) -> int | None:
    """The handshake RTT, as the probe measures it (SYN -> SYN-ACK at the client).

    A capture taken at the server sees SYN -> SYN-ACK as ~0 and the RTT as
    SYN-ACK -> ACK. Packets sent by the capturing host carry an initial TTL
    (64, 128, 255) and remote ones usually a decremented TTL: if the SYN-ACK
    looks local and the SYN remote, the capture was taken at the server.
    """
    if c.synack_at is None:
        return None
    syns = [t for t in c.syn_at if t <= c.synack_at]
    if not syns:
        return None
    at_server = c.synack_ttl in _INITIAL_TTLS and c.syn_ttl not in _INITIAL_TTLS
    if at_server and c.established_at is not None:
        return round((c.established_at - c.synack_at) * 1e6)
    return round((c.synack_at - syns[-1]) * 1e6)


_INITIAL_TTLS = (32, 64, 128, 255)


def _series_obs(s: _Series, conns, end_of_capture: float, tries) -> Observation | None:
    target, tport, peer, pport = s.sender
    c = conns.get(frozenset({(target, tport), (peer, pport)}), _Conn())
    notes = []
    if s.kind == "synack":
        method = Method.SYN_RCVD
        notes.append(f"SYN-ACK series {target}:{tport} -> {peer}:{pport}")
        if s.peer_syns_during:
            notes.append(f"the peer sent its SYN {s.peer_syns_during} more time(s) meanwhile")
    else:
        mine, theirs = c.fin_at.get(f"{target}:{tport}"), c.fin_at.get(f"{peer}:{pport}")
        peer_first = theirs is not None and mine is not None and theirs < mine
        method = Method.LAST_ACK if peer_first else Method.FIN_WAIT1
        why = "the peer closed first" if peer_first else f"{target} closed first"
        notes.append(f"FIN series {target}:{tport} -> {peer}:{pport} ({why})")
    earlier_syns = [t for t in c.syn_at if t <= s.times[0]]
    t0 = earlier_syns[0] if earlier_syns else s.times[0]
    t_end = s.end_at if s.end_at is not None else end_of_capture
    connect_us = _handshake_rtt_us(c) if method is not Method.SYN_RCVD else None
    times = s.times
    fp = StateFingerprint(
        method=method,
        time_s=max(0, round(t_end - t0)),
        gaps_us=tuple(round((b - a) * 1e6) for a, b in zip(times, times[1:], strict=False)),
        connect_us=connect_us,
        rst_us=round((s.rst_at - times[-1]) * 1e6) if s.rst_at is not None else None,
    )
    tries[(target, tport, method)] += 1
    if s.end_at is not None and s.rst_at is None:
        notes.append("acknowledged or reset by the peer: series may be cut short")
    return Observation(
        target=target,
        port=tport,
        method=method,
        try_index=tries[(target, tport, method)],
        status=Status.OK,
        fingerprint=fp,
        features=features_of(s.first) if s.kind == "synack" and s.first else None,
        src_port=pport,
        started_at=t0,
        arrivals_us=tuple(round((t - t0) * 1e6) for t in times),
        packets_in=len(times),
        note="passive: " + "; ".join(notes),
        source="passive",
    )
