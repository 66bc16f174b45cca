"""Fingerprints from a capture of our own scans (``scan -w FILE``, or tcpdump
running beside it), replayed through the scan core.

Our SYNs say which probe sent them (``probes.syn.SYN_OPTIONS``, window
64240: SYN_RCVD; MSS [+SAckOK], window 65535: a closing probe, then our FIN
says LAST_ACK and our request FIN_WAIT1). Each flow is adopted by a
``ScanCore`` with the same ``ProbeConfig`` (the ISN is the seq of our SYN)
and fed its packets in capture order with their timestamps, the core firing
timers and early-stop looks at their own times in between: the code that
decided live decides again on the same kernel timestamps, so the same
fingerprints. The scan's ``--timeout``/``--window`` are not in the file:
pass them (``timeout_s``, ``window_s``) for ``Time=``.

Anybody else's capture goes to passive extraction (``cronos.scan.passive``);
``analyse_pcap`` picks one or the other.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from ..model import Method, Observation
from ..packet import ACK, FIN, RST, SYN, Segment, parse_packets
from ..probes import ProbeConfig
from ..probes.closing import RCV_WINDOW, client_mss, seq_diff
from ..probes.syn import SYN_WINDOW, syn_options
from .core import CoreConfig, ScanCore, isn_for
from .passive import passive

MASK = 0xFFFFFFFF
SYN_RETX_SPAN_S = 3.5  # a closing probe's SYN retransmissions end 3 s after the first
FlowKey = tuple[str, int, str, int]  # our address, our port, target, target port


# --- our own scans --------------------------------------------------------------


def probe_kind(seg: Segment) -> str | None:
    """'s' or 'closing' for a SYN one of our probes sent, None for anything else."""
    if seg.flags & (SYN | ACK | RST | FIN) != SYN:
        return None
    if seg.window == SYN_WINDOW and seg.options == syn_options(seg.v6):
        return "s"
    names = tuple(k for k, _ in seg.options)
    if (
        seg.window == RCV_WINDOW
        and seg.option("MSS") == client_mss(seg.v6)
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
    # one core per flow: a later probe may reuse the 4-tuple while this one
    # still has timers to fire
    core = ScanCore(CoreConfig(timeout_s=timeout_s, window_s=window_s), stopper)
    core.adopt(cfg, method, flow.packets[0][0])  # what it sends is in the capture
    for ts, seg, _ in flow.packets:
        core.expire(ts)
        if not len(core):
            break
        core.receive(ts, seg)
    core.expire(float("inf"))
    (done,) = core.results()
    return done.observation


def _with_note(obs: Observation, text: str) -> Observation:
    return replace(obs, note="; ".join(x for x in (obs.note, text) if x))


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

    ``stopper``: the scan's early stop (``cronos.analysis.early.EarlyStopper``), so that
    a scan's capture replays to the same fingerprints; None for ``--full``.

    Exact copies are dropped first (``cronos.net.dedupe``): ``tcpdump -i any``
    sees a packet once per interface it crosses, and so did ``scan -w`` before
    its capture was bound to the route's interface. A capture whose last
    record is cut (a killed scan) is read up to it.
    """
    from ..net.dedupe import dedupe
    from ..net.pcapio import load_pcap

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
