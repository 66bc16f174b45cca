"""SYN_RCVD probe (method ``s``): the talk's first principle.

Send one SYN, never answer the SYN-ACK, time every retransmitted SYN-ACK (and
a final RST). Our SYN carries a fixed option set, the one a Linux client
sends (MSS 1460, SACK permitted, timestamps, NOP, window scale 7), so that the
target's SYN-ACK options are comparable with Hershel's measurements, whose
probe also offered MSS, window scaling, SACK and timestamps.
"""

from __future__ import annotations

from ..model import Method, Observation, StateFingerprint, Status, SynAckFeatures
from ..packet import ACK, RST, SYN, Segment
from .base import Probe
from .closing import client_mss

SYN_OPTIONS = (
    ("MSS", 1460),
    ("SAckOK", b""),
    ("Timestamp", (0x43524F53, 0)),  # "CROS"
    ("NOP", None),
    ("WScale", 7),
)
SYN_WINDOW = 64240


def syn_options(v6: bool) -> tuple[tuple[str, object], ...]:
    """Our SYN's options; over IPv6 the MSS is 20 bytes smaller (1440: a
    40-byte IP header)."""
    return (("MSS", client_mss(True)), *SYN_OPTIONS[1:]) if v6 else SYN_OPTIONS


def features_of(seg: Segment) -> SynAckFeatures:
    ws = seg.option("WScale")
    mss = seg.option("MSS")
    v6 = seg.v6
    return SynAckFeatures(
        window=seg.window,
        ttl=seg.ttl,
        df=False if v6 else seg.df,
        ip_id=None if v6 else seg.ip_id,
        mss=int(mss) if isinstance(mss, int) else None,
        options=seg.option_letters,
        wscale=int(ws) if isinstance(ws, int) else None,
        flow=("R" if seg.flow_label else "0") if v6 else None,
        flow_label=seg.flow_label if v6 else None,
    )


class SynProbe(Probe):
    method = Method.SYN_RCVD
    TRANSITIONS = {
        "INIT": frozenset({"SYN_SENT", "DONE"}),
        "SYN_SENT": frozenset({"SYN_RCVD", "DONE"}),  # peer in SYN_RCVD once it answers
        "SYN_RCVD": frozenset({"DONE"}),
    }
    MAX_SYNACKS = 256  # a hostile peer cannot grow us without bound

    def __init__(self, cfg):
        super().__init__(cfg)
        self.t_sent: float | None = None  # capture time of our SYN
        self.t_start: float | None = None  # when start() was called
        self.synacks: list[float] = []
        self.rst_at: float | None = None
        self.features: SynAckFeatures | None = None
        self.packets_in = 0
        self.status = Status.FILTERED
        self.early_note = ""
        self.server_isn = 0
        self.ignored = 0  # replies that look like ours but are not the connection's

    def start(self, now: float) -> list[Segment]:
        self._goto("SYN_SENT")
        self.t_start = now
        self.deadline = now + min(self.cfg.timeout_s, self.cfg.window_s)
        opts = syn_options(":" in self.cfg.target)
        return [self.seg(SYN, self.cfg.isn, 0, options=opts, window=SYN_WINDOW)]

    def on_packet(self, ts: float, seg: Segment, outgoing: bool) -> list[Segment]:
        if self.done:
            return []
        if outgoing:
            if self.is_ours(seg) and seg.flags & SYN and self.t_sent is None:
                self.t_sent = ts
            return []
        if not self.is_reply(seg):
            return []
        self.packets_in += 1
        if seg.flags & RST:
            self._on_rst(ts, seg)
        elif seg.flags & (SYN | ACK) == SYN | ACK and seg.ack == (self.cfg.isn + 1) & 0xFFFFFFFF:
            self._on_synack(ts, seg)
        return []

    def _on_synack(self, ts: float, seg: Segment) -> None:
        if not self.synacks:
            self._goto("SYN_RCVD")
            self.features = features_of(seg)
            self.status = Status.OK
            self.server_isn = seg.seq
        elif seg.seq != self.server_isn:
            self.ignored += 1  # a retransmission repeats the first SYN-ACK's ISN
            return
        if len(self.synacks) >= self.MAX_SYNACKS:  # a flood: stop, and say so
            self.early_note = f"more than {self.MAX_SYNACKS} SYN-ACKs: stopped"
            self._finish(ts)
            return
        self.synacks.append(ts)
        self._rearm(ts)

    def _on_rst(self, ts: float, seg: Segment) -> None:
        if self.synacks:
            # the connection's RST carries the server's next sequence number
            # (RFC 5961 accepts exactly that); anything else is a blind RST
            if (seg.seq - self.server_isn) & 0xFFFFFFFF not in (0, 1):
                self.ignored += 1
                return
            self.rst_at = ts
        elif seg.flags & ACK and seg.ack == (self.cfg.isn + 1) & 0xFFFFFFFF:
            self.status = Status.CLOSED
        else:
            return  # a blind RST that does not acknowledge our SYN: ignore it
        self._finish(ts)

    def _rearm(self, ts: float) -> None:
        assert self.t_start is not None
        self.deadline = min(ts + self.cfg.timeout_s, self.t_start + self.cfg.window_s)

    def on_timer(self, now: float) -> list[Segment]:
        if not self.done and self.deadline is not None and now >= self.deadline:
            self._finish(self.deadline)
        return []

    @property
    def timed_count(self) -> int:
        return len(self.synacks)

    def stop_early(self, now: float, note: str) -> None:
        if not self.done:
            self.early_note = note
            self._finish(now)

    def result(self) -> Observation:
        t0 = self.t_sent if self.t_sent is not None else (self.t_start or 0.0)
        t_end = self.t_end if self.t_end is not None else t0
        gaps = tuple(
            round((b - a) * 1e6) for a, b in zip(self.synacks, self.synacks[1:], strict=False)
        )
        rst_us = None
        if self.rst_at is not None and self.synacks:
            rst_us = round((self.rst_at - self.synacks[-1]) * 1e6)
        fp = StateFingerprint(
            method=Method.SYN_RCVD,
            time_s=max(0, round(t_end - t0)),
            gaps_us=gaps,
            rst_us=rst_us,
            listened_us=round((t_end - self.synacks[0]) * 1e6)
            if self.synacks and self.t_end is not None
            else None,
        )
        status = Status.ABORTED if self.aborted and self.status is Status.OK else self.status
        return Observation(
            target=self.cfg.target,
            port=self.cfg.port,
            method=Method.SYN_RCVD,
            try_index=self.cfg.try_index,
            status=status,
            fingerprint=fp,
            features=self.features,
            src_port=self.cfg.src_port,
            started_at=t0,
            arrivals_us=tuple(round((t - t0) * 1e6) for t in self.synacks),
            packets_in=self.packets_in,
            ttl_in=self.features.ttl if self.features else None,
            note="interrupted" if self.aborted else self.early_note,
        )
