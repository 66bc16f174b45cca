"""Fingerprints from packet captures: replay of our own scans, passive extraction.

``replay_own(packets)``
    A capture of a Cron-OS scan (``scan -w FILE``, or tcpdump running beside
    it). Our SYNs say which probe sent them (``probes.syn.SYN_OPTIONS``, window
    64240: SYN_RCVD; MSS [+SAckOK], window 65535: a closing probe, then our
    FIN says LAST_ACK and our request FIN_WAIT1). Each flow gets a fresh probe
    of that class with the same ``ProbeConfig`` (the ISN is the seq of our
    SYN) and is fed its packets in capture order with their timestamps, and
    ``on_timer`` at each deadline in between, exactly as the engine does:
    the same probe code on the same kernel timestamps gives the same
    fingerprint as the live scan. The scan's ``--timeout``/``--window`` are
    not in the file: pass them (``timeout_s``, ``window_s``) for ``Time=``.

``passive(packets)``
    Anybody's capture. A SYN-ACK sent again with the same 4-tuple, seq and
    ack is a SYN_RCVD series; a FIN sent again with the same 4-tuple and
    ``fin_seq = seq + len(payload)`` is a LAST_ACK series if the peer's FIN
    came first (peer closed first), FIN_WAIT1 otherwise. The target is the
    host that retransmits. ``connect_us`` is the handshake RTT (last SYN to
    SYN-ACK, or SYN-ACK to ACK when the capture looks taken at the server).

Both are pure functions of ``[(ts, ipv4_bytes)]`` (``pcapio.read_pcap``), or
of ``[(ts, Segment)]`` already parsed by ``parse_packets``.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from .early import step as early_step
from .model import Method, Observation, StateFingerprint, Status
from .packet import ACK, FIN, RST, SYN, Segment, parse_ip
from .probes import PROBES, ProbeConfig
from .probes.closing import CLIENT_MSS, RCV_WINDOW, seq_diff
from .probes.syn import SYN_OPTIONS, SYN_WINDOW, features_of

MASK = 0xFFFFFFFF
SYN_RETX_SPAN_S = 3.5  # a closing probe's SYN retransmissions end 3 s after the first
MAX_TIMER_STEPS = 10_000  # a probe needs a handful; more means a bug, not a capture
FlowKey = tuple[str, int, str, int]  # our address, our port, target, target port


# --- our own scans --------------------------------------------------------------


def probe_kind(seg: Segment) -> str | None:
    """'s' or 'closing' for a SYN one of our probes sent, None for anything else."""
    if seg.flags & (SYN | ACK | RST | FIN) != SYN:
        return None
    if seg.window == SYN_WINDOW and seg.options == SYN_OPTIONS:
        return "s"
    names = tuple(k for k, _ in seg.options)
    if (
        seg.window == RCV_WINDOW
        and seg.option("MSS") == CLIENT_MSS
        and names
        in (
            ("MSS",),
            ("MSS", "SAckOK"),
        )
    ):
        return "closing"
    return None


@dataclass
class _Flow:
    key: FlowKey
    kind: str
    syn: Segment | None
    packets: list[tuple[float, Segment, bool]] = field(default_factory=list)
    syn_at: float = 0.0
    isn: int = 0
    method: Method | None = None
    payload: bytes = b""


def _new_probe(flow: _Flow, kind: str, ts: float) -> bool:
    """A probe SYN on a known flow: a retransmission, or a later probe reusing the port?

    The SYN probe never retransmits; a closing probe does, twice within 3 s,
    and only while nothing came back.
    """
    if kind == "s" or flow.kind != kind:
        return True
    answered = any(not outgoing for _, _, outgoing in flow.packets)
    return answered or ts - flow.syn_at > SYN_RETX_SPAN_S


def parse_packets(packets: Iterable[tuple[float, bytes | Segment]]) -> list[tuple[float, Segment]]:
    """(ts, Segment) for every TCP segment; already parsed ones are kept as they are.

    Parsing (scapy) is the slow part: parse once, then give the result to
    both ``replay_own`` and ``passive``.
    """
    out = []
    for ts, data in packets:
        seg = data if isinstance(data, Segment) else parse_ip(data)
        if seg is not None:
            out.append((ts, seg))
    return out


def _our_flows(segs: list[tuple[float, Segment]], key: bytes | None) -> list[_Flow]:
    """Flows started by one of our probe SYNs, with every packet of each."""
    flows: dict[FlowKey, _Flow] = {}
    order: list[_Flow] = []
    for ts, seg in segs:
        fk = (seg.src, seg.sport, seg.dst, seg.dport)
        rk = (seg.dst, seg.dport, seg.src, seg.sport)
        flow = flows.get(fk)
        kind = probe_kind(seg)
        if kind is not None and (flow is None or _new_probe(flow, kind, ts)) and _isn_ok(key, seg):
            if rk in flows:  # the same port pair used both ways: not ours
                continue
            flow = flows[fk] = _Flow(fk, kind, seg, syn_at=ts, isn=seg.seq)
            order.append(flow)
        if flow is not None:
            flow.packets.append((ts, seg, True))
            _classify_outgoing(flow, seg)
        elif rk in flows:
            flows[rk].packets.append((ts, seg, False))
    return order


def _isn_ok(key: bytes | None, seg: Segment) -> bool:
    if key is None:
        return True
    from .net.engine import isn_for  # the keyed hash lives with the engine

    return isn_for(key, seg.src, seg.sport, seg.dst, seg.dport) == seg.seq


def _classify_outgoing(flow: _Flow, seg: Segment) -> None:
    """Our first segment after the handshake tells LAST_ACK (FIN) from FIN_WAIT1 (data)."""
    if flow.kind == "s":
        flow.method = Method.SYN_RCVD
    elif flow.method is None and not seg.flags & SYN:
        if seg.flags & FIN:
            flow.method = Method.LAST_ACK
        elif seg.payload:
            flow.method = Method.FIN_WAIT1
            flow.payload = seg.payload


def replay_own(
    packets: Sequence[tuple[float, bytes | Segment]],
    key: bytes | None = None,
    *,
    timeout_s: float = 60.0,
    window_s: float = 180.0,
    replies_only: bool = False,
    stopper=None,
) -> list[Observation]:
    """Replay every flow of our probes found in ``packets``; results in start order.

    ``key``: the scan's ISN key, if known; then only flows whose ISN is its
    keyed hash are ours. Closing probes that never completed a handshake
    (filtered, closed) cannot tell LAST_ACK from FIN_WAIT1: they are reported
    as LAST_ACK with a note.

    ``replies_only``: the capture holds the targets' packets but not ours (a
    Cron-OS ``-w`` file written by an engine whose capture misses outgoing
    packets). Flows are then found from SYN-ACKs acknowledging ``ISN + 1``
    and the probe kind from what the target sent; gaps and RST are exact,
    ``Connect`` is unknown (None) and ``Time`` counts from the first reply.
    """
    segs = parse_packets(packets)
    flows = _reply_flows(segs, key) if replies_only else _our_flows(segs, key)
    tries: dict[tuple[str, int, Method], int] = defaultdict(int)
    out = []
    for flow in flows:
        method = flow.method or Method.LAST_ACK
        tries[(flow.key[2], flow.key[3], method)] += 1
        n = tries[(flow.key[2], flow.key[3], method)]
        obs = _replay_flow(flow, method, n, timeout_s, window_s, stopper)
        if flow.method is None and flow.kind == "closing":
            obs = _with_note(obs, "closing probe without handshake: LAST_ACK or FIN_WAIT1")
        if replies_only:
            fp = replace(obs.fingerprint, connect_us=None)
            obs = replace(obs, fingerprint=fp, note="")
            obs = _with_note(obs, "replayed from the target's packets only (ours not captured)")
        out.append(obs)
    return out


def _reply_flows(segs: list[tuple[float, Segment]], key: bytes | None) -> list[_Flow]:
    """Flows of our probes seen from the target's side only."""
    flows: dict[FlowKey, _Flow] = {}
    order: list[_Flow] = []
    for ts, seg in segs:
        rk = (seg.dst, seg.dport, seg.src, seg.sport)
        flow = flows.get(rk)
        if flow is None and seg.flags & (SYN | ACK | RST) == SYN | ACK:
            isn = (seg.ack - 1) & MASK
            if key is not None and not _isn_ok(
                key,
                replace(seg, seq=isn, src=seg.dst, sport=seg.dport, dst=seg.src, dport=seg.sport),
            ):
                continue
            flow = flows[rk] = _Flow(rk, "?", None, syn_at=ts, isn=isn)
            order.append(flow)
        if flow is not None:
            flow.packets.append((ts, seg, False))
    for flow in order:
        _kind_from_replies(flow)
    return order


def _kind_from_replies(flow: _Flow) -> None:
    """A closing probe ACKs the SYN-ACK, so the target sends more than SYN-ACKs;
    it acknowledges our FIN (ISN + 2) or our request (ISN + 1 + its length)."""
    isn1 = (flow.isn + 1) & MASK
    later = [s for _, s, _ in flow.packets if not s.flags & (SYN | RST)]
    if not later:
        flow.kind, flow.method = "s", Method.SYN_RCVD
        return
    flow.kind = "closing"
    acked = max(seq_diff(s.ack, isn1) for s in later)
    if acked == 1 and not any(s.payload for s in later):
        flow.method = Method.LAST_ACK
    elif acked >= 1:
        flow.method = Method.FIN_WAIT1
        default = ProbeConfig.payload
        flow.payload = default if len(default) == acked else b"?" * acked


def _replay_flow(
    flow: _Flow, method: Method, try_index: int, timeout_s, window_s, stopper=None
) -> Observation:
    src, sport, dst, dport = flow.key
    cfg = ProbeConfig(
        target=dst,
        port=dport,
        src_ip=src,
        src_port=sport,
        isn=flow.isn,
        timeout_s=timeout_s,
        window_s=window_s,
        try_index=try_index,
        payload=flow.payload or ProbeConfig.payload,
        sack=flow.syn is not None and flow.syn.option("SAckOK") is not None,
        ttl=flow.syn.ttl if flow.syn is not None else 64,
    )
    probe = PROBES[method](cfg)
    probe.start(flow.packets[0][0])  # what it would send is already in the capture
    early = _EarlyReplay(probe, stopper)
    for ts, seg, outgoing in flow.packets:
        _run_timers(probe, ts, early)
        if probe.done:
            break
        probe.on_packet(ts, seg, outgoing)
        if not outgoing:
            early.check(ts)
    _run_timers(probe, float("inf"), early)
    return probe.result()


class _EarlyReplay:
    """The engine's early stop, replayed: asked after each timed packet and at
    the recheck times it names, with the same timestamps, so the same stop."""

    def __init__(self, probe, stopper):
        self.probe, self.stopper = probe, stopper
        self.seen = 0
        self.recheck: float | None = None

    def check(self, now: float, force: bool = False) -> None:
        p = self.probe
        if self.stopper is None or p.done or (not force and p.timed_count == self.seen):
            return
        self.seen = p.timed_count
        _, self.recheck = early_step(self.stopper, p, now)


def _run_timers(probe, until: float, early: _EarlyReplay | None = None) -> None:
    """Fire every deadline (and early-stop recheck) up to ``until`` at its exact time."""
    for _ in range(MAX_TIMER_STEPS):
        d = probe.deadline
        r = early.recheck if early is not None else None
        if probe.done:
            return
        if r is not None and r <= until and (d is None or r < d):
            early.recheck = None
            early.check(r, force=True)
            continue
        if d is None or d > until:
            return
        probe.on_timer(d)
    raise RuntimeError("probe deadline does not advance")  # pragma: no cover


def _with_note(obs: Observation, text: str) -> Observation:
    return replace(obs, note="; ".join(x for x in (obs.note, text) if x))


# --- passive extraction ------------------------------------------------------------


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


# --- one entry point for ``classify --pcap`` ------------------------------------------


def analyse_pcap(
    path: str | os.PathLike,
    *,
    timeout_s: float = 60.0,
    window_s: float = 180.0,
    key: bytes | None = None,
    stopper=None,
) -> tuple[str, list[Observation]]:
    """``("replay", obs)`` if the file holds our probes, else ``("passive", obs)``.

    ``stopper``: the scan's early stop (``cronos.early.EarlyStopper``), so that
    a scan's capture replays to the same fingerprints; None for ``--full``.

    Exact copies are dropped first (``cronos.dedupe``): ``tcpdump -i any``
    sees a packet once per interface it crosses, and so did ``scan -w`` before
    its capture was bound to the route's interface. A capture whose last
    record is cut (a killed scan) is read up to it.
    """
    from .dedupe import dedupe
    from .pcapio import load_pcap

    data = load_pcap(path, strict=False)
    pkts = parse_packets(list(dedupe(data.packets)))
    own = replay_own(pkts, key, timeout_s=timeout_s, window_s=window_s, stopper=stopper)
    if own:
        return "replay", own
    if data.raw_ip:  # a Cron-OS -w file without our own packets
        own = replay_own(pkts, key, timeout_s=timeout_s, window_s=window_s, replies_only=True,
                         stopper=stopper)  # fmt: skip
        if own:
            return "replay", own
    return "passive", passive(pkts)
