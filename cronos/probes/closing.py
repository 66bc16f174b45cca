"""Closing-state probes: LAST_ACK (method ``l``) and FIN_WAIT1 (method ``f``).

The talk's second and third principles. A userspace TCP client over raw
packets opens a connection, drives the server into a closing state, never
acknowledges the server's FIN and times every retransmission of that FIN.

``l`` (LAST_ACK)
    Right after the handshake we send our FIN. The server's kernel ACKs it
    (server in CLOSE_WAIT); its application reads EOF and closes, and its FIN
    puts it in LAST_ACK.
``f`` (FIN_WAIT1)
    Right after the handshake we send ``cfg.payload`` (``GET / HTTP/1.0``).
    The server answers and closes first (HTTP/1.0): its FIN puts it in
    FIN_WAIT1. We never close our side.

In both, the server's data is acknowledged cumulatively (``ack = rcv_nxt``,
out-of-order data gets a duplicate ACK, its sequence range is remembered so
the hole can be filled), and ``rcv_nxt`` never goes past the server's FIN, so
no ACK we send ever acknowledges it. Segments that carry the FIN again are
not answered at all, so we never send the duplicate ACKs that could trigger a
fast retransmit and disturb the timing.

Our SYN offers MSS 1460 only (plus SACK permitted if ``cfg.sack``): no window
scaling, no timestamps, so the server's segments need no timestamp echo and
its window is unscaled. Our window is 65535.

States are named after the *server's* state, the one the probe drives it
into; ``l`` and ``f`` share INIT, SYN_SENT and ESTABLISHED. The tables are
``LastAckProbe.TRANSITIONS`` and ``FinWaitProbe.TRANSITIONS``; every state
may also go to DONE (abort, deadline, RST, a bound reached):

    state                 event                                   next
    --------------------  --------------------------------------  ---------------
    INIT                  start(): SYN (again at +1 s and +3 s)   SYN_SENT
    SYN_SENT              SYN-ACK acking our SYN: send ACK        ESTABLISHED
    SYN_SENT              RST acking our SYN                      DONE closed
    SYN_SENT              deadline                                DONE filtered
    ESTABLISHED           l: send our FIN|ACK at once             CLOSE_WAIT
    CLOSE_WAIT            l: the server's FIN                     LAST_ACK
    ESTABLISHED           f: (request sent) the server's FIN      FIN_WAIT1
    ESTABLISHED/CLOSE_W.  RST in window, no FIN yet               DONE reset
    ESTABLISHED/CLOSE_W.  deadline, no FIN                        DONE no-close
    LAST_ACK/FIN_WAIT1    its FIN again: time it, no answer       (same)
    LAST_ACK/FIN_WAIT1    RST (rst_us) or deadline                DONE ok
    any                   abort(now)                              DONE aborted
    any after SYN_SENT    a MAX_* bound reached                   DONE (+ note)

Timing. The series is the first arrival of the server's FIN, then every
segment with FIN set and the same ``fin_seq = seq + len(payload)`` (a
retransmission may carry data again). ``gaps_us`` are differences between
successive kernel capture timestamps; ``arrivals_us`` are relative to the
capture time of our first SYN (``started_at``). ``connect_us`` is the
SYN-ACK's capture time minus the capture time of the last SYN we sent before
it (Karn's ambiguity: if the SYN was retransmitted we assume the SYN-ACK
answers the latest one). The probe stops ``cfg.timeout_s`` after the last
timed packet (the SYN-ACK, then each FIN) or the last data that moved
``rcv_nxt`` before the FIN (a response still coming, whose FIN follows it:
a long one on a slow path, or a host too busy to send it faster), or
``cfg.window_s`` after start.

Our own segments are retransmitted so that loss does not fake a result: the
SYN twice (1 s, 2 s), our FIN (``l``) or request (``f``) up to three times
(1, 2, 4 s) until the server acknowledges it.

Everything a peer can make us store or send is bounded (``MAX_*``). Peer
input never raises; only an illegal internal transition raises
``ProbeStateError``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..model import Method, Observation, StateFingerprint, Status
from ..packet import ACK, FIN, PSH, RST, SYN, Segment
from .base import Probe, ProbeConfig

MASK = 0xFFFFFFFF
RCV_WINDOW = 65535  # our advertised window, unscaled (we offer no WScale)
CLIENT_MSS = 1460


def client_mss(v6: bool) -> int:
    """Our SYN's MSS: 1460, or 1440 over IPv6 (a 40-byte IP header)."""
    return CLIENT_MSS - 20 if v6 else CLIENT_MSS


def seq_diff(a: int, b: int) -> int:
    """``a - b`` in 32-bit sequence space, in [-2**31, 2**31)."""
    return ((a - b + 0x80000000) & MASK) - 0x80000000


@dataclass
class _Retx:
    """Retransmission timer of our outstanding segment (SYN, FIN or request)."""

    at: float
    interval: float
    left: int


class ClosingProbe(Probe):
    """What LAST_ACK and FIN_WAIT1 share: a minimal TCP client that never ACKs a FIN."""

    PEER_FIN_STATE = ""  # state entered on the server's first FIN
    STIMULUS_STATE = ""  # state entered once our stimulus is sent ("" = stay)

    MAX_FINS = 256  # timed FINs; one more ends the probe
    MAX_DATA_BYTES = 1 << 20  # data we acknowledge; more ends the probe
    MAX_SENT = 4096  # segments we send in total
    MAX_OOO = 64  # out-of-order ranges remembered
    MAX_SYN_CAPTURES = 8
    MAX_SYNACK_REACKS = 3
    SYN_RETRIES = 2
    STIMULUS_RETRIES = 3
    RETX_FIRST_S = 1.0

    def __init__(self, cfg: ProbeConfig):
        super().__init__(cfg)
        self.t_start: float | None = None  # when start() was called
        self.syn_sent_at: list[float] = []  # capture times of our SYNs
        self.ack_sent_at: float | None = None  # capture time of our handshake ACK
        self.syn_clock: list[float] = []  # engine clock when we emitted them (fallback)
        self.synack_at: float | None = None
        self.fins: list[float] = []  # arrivals of the server's FIN
        self.ttl_in: int | None = None  # TTL of the server's first FIN
        self.fin_seq: int | None = None
        self.rst_at: float | None = None
        self.last_timed: float | None = None
        self.isn1 = (cfg.isn + 1) & MASK
        self.snd_una = self.snd_nxt = self.isn1
        self.irs: int | None = None  # the server's ISN
        self.rcv_nxt = 0
        self.ooo: list[tuple[int, int]] = []
        self.data_bytes = 0
        self.sent = 0
        self.synack_reacks = 0
        self.retx: _Retx | None = None
        self.packets_in = 0
        self.status = Status.FILTERED
        self.notes: list[str] = []

    # -- what a subclass decides -----------------------------------------------
    def _stimulus(self) -> tuple[int, bytes] | None:
        """Flags and payload of the segment sent after the handshake."""
        raise NotImplementedError

    # -- contract ---------------------------------------------------------------
    def start(self, now: float) -> list[Segment]:
        self._goto("SYN_SENT")
        self.t_start = self.last_timed = now
        self.retx = _Retx(now + self.RETX_FIRST_S, self.RETX_FIRST_S, self.SYN_RETRIES)
        self._update_deadline()
        self.syn_clock.append(now)
        return self._emit(now, [self._syn()])

    def on_packet(self, ts: float, seg: Segment, outgoing: bool) -> list[Segment]:
        if self.done:
            return []
        if outgoing:
            self._on_outgoing(ts, seg)
            return []
        if not self.is_reply(seg):
            return []
        self.packets_in += 1
        if self.state == "SYN_SENT":
            return self._in_syn_sent(ts, seg)
        if self.state == "INIT":
            return []
        return self._emit(ts, self._in_connection(ts, seg))

    def on_timer(self, now: float) -> list[Segment]:
        if self.done or self.deadline is None or now < self.deadline:
            return []
        final = self._final_deadline()
        if now >= final:
            self._finish(final)
            return []
        out = self._retransmit(now)
        self._update_deadline()
        return self._emit(now, out)

    # -- handshake ----------------------------------------------------------------
    def _syn(self) -> Segment:
        opts: list[tuple[str, object]] = [("MSS", client_mss(":" in self.cfg.target))]
        if self.cfg.sack:
            opts.append(("SAckOK", b""))
        return self.seg(SYN, self.cfg.isn, 0, options=opts, window=RCV_WINDOW)

    def _on_outgoing(self, ts: float, seg: Segment) -> None:
        if not self.is_ours(seg):
            return
        is_syn = seg.flags & (SYN | ACK) == SYN and seg.seq & MASK == self.cfg.isn & MASK
        if is_syn and len(self.syn_sent_at) < self.MAX_SYN_CAPTURES:
            self.syn_sent_at.append(ts)
        elif seg.flags & ACK and not seg.flags & SYN and self.ack_sent_at is None:
            self.ack_sent_at = ts  # our handshake ACK: where the server's RTT sample ends

    def _in_syn_sent(self, ts: float, seg: Segment) -> list[Segment]:
        acks_syn = bool(seg.flags & ACK) and seg.ack & MASK == self.isn1
        if seg.flags & RST:
            if acks_syn:  # a blind RST that does not acknowledge our SYN is ignored
                self.status = Status.CLOSED
                self._finish(ts)
            return []
        if seg.flags & SYN and acks_syn:
            return self._emit(ts, self._on_synack(ts, seg))
        return []

    def _on_synack(self, ts: float, seg: Segment) -> list[Segment]:
        self._goto("ESTABLISHED")
        self.status = Status.NO_CLOSE
        self.synack_at = ts
        self.irs = seg.seq & MASK
        self.rcv_nxt = (seg.seq + 1) & MASK
        self.retx = None
        self._rearm(ts)
        out = [self._ack()]
        stim = self._stimulus()
        if stim is not None:
            flags, payload = stim
            self.snd_nxt = (self.isn1 + len(payload) + (1 if flags & FIN else 0)) & MASK
            self.retx = _Retx(ts + self.RETX_FIRST_S, self.RETX_FIRST_S, self.STIMULUS_RETRIES)
            self._update_deadline()
            out.append(self._stimulus_seg())
        if self.STIMULUS_STATE:
            self._goto(self.STIMULUS_STATE)
        return out

    def _stimulus_seg(self) -> Segment:
        stim = self._stimulus()
        assert stim is not None
        flags, payload = stim
        return self.seg(flags, self.isn1, self.rcv_nxt, payload)

    def _ack(self) -> Segment:
        return self.seg(ACK, self.snd_nxt, self.rcv_nxt)

    # -- established: the server's segments --------------------------------------
    def _in_connection(self, ts: float, seg: Segment) -> list[Segment]:
        if seg.flags & RST:
            self._on_rst(ts, seg)
            return []
        if seg.flags & SYN:
            return self._on_dup_synack(seg)
        if not seg.flags & ACK or not self._acceptable_ack(seg.ack):
            return []  # Linux drops these too; a forged ack must not move us
        self._on_ack(seg.ack & MASK)
        if seg.flags & FIN:
            self._on_fin(ts, seg)
            if self.done:
                return []
        return self._on_data(ts, seg)

    def _acceptable_ack(self, ack: int) -> bool:
        return seq_diff(ack, self.isn1) >= 0 and seq_diff(ack, self.snd_nxt) <= 0

    def _on_ack(self, ack: int) -> None:
        if seq_diff(ack, self.snd_una) > 0:
            self.snd_una = ack
        if self.snd_una == self.snd_nxt and self.retx is not None:
            self.retx = None  # our FIN / request got there
            self._update_deadline()

    def _on_dup_synack(self, seg: Segment) -> list[Segment]:
        """The server did not get our ACK: ACK its SYN-ACK again (a few times)."""
        same = seg.flags & ACK and seg.seq & MASK == self.irs and seg.ack & MASK == self.isn1
        if not same or self.synack_reacks >= self.MAX_SYNACK_REACKS:
            return []
        self.synack_reacks += 1
        return [self._ack()]

    def _on_rst(self, ts: float, seg: Segment) -> None:
        if not 0 <= seq_diff(seg.seq, self.rcv_nxt) <= RCV_WINDOW:
            return  # out of window: not from the server's connection
        if self.fins:
            self.rst_at = ts
        else:
            self.status = Status.RESET
        self._finish(ts)

    def _on_fin(self, ts: float, seg: Segment) -> None:
        fin_seq = (seg.seq + len(seg.payload)) & MASK
        if self.fin_seq is None:
            if not 0 <= seq_diff(fin_seq, self.rcv_nxt) <= RCV_WINDOW:
                return
            self.fin_seq = fin_seq
            self.ttl_in = seg.ttl
            self._goto(self.PEER_FIN_STATE)
            self.status = Status.OK
            if self.snd_una != self.snd_nxt:
                self._note("the server's FIN came before it acknowledged our segment")
        elif fin_seq != self.fin_seq:
            return  # a FIN elsewhere in sequence space: bogus
        if len(self.fins) >= self.MAX_FINS:
            self._note(f"more than {self.MAX_FINS} FINs: stopped")
            self._finish(ts)
            return
        self.fins.append(ts)
        self._rearm(ts)

    def _on_data(self, ts: float, seg: Segment) -> list[Segment]:
        n = len(seg.payload)
        if n == 0:
            return []
        start, end = seg.seq & MASK, (seg.seq + n) & MASK
        if self.fin_seq is not None and seq_diff(end, self.fin_seq) > 0:
            return []  # data beyond the FIN: bogus
        if seq_diff(start, self.rcv_nxt) > RCV_WINDOW or seq_diff(end, self.rcv_nxt) < -RCV_WINDOW:
            return []  # outside the window
        if seq_diff(start, self.rcv_nxt) > 0:  # a hole before it: duplicate ACK
            if len(self.ooo) < self.MAX_OOO:
                self.ooo.append((start, end))
            return [self._ack()]
        if seq_diff(end, self.rcv_nxt) <= 0:  # already acknowledged
            return [] if seg.flags & FIN else [self._ack()]
        self._advance(end)
        if self.data_bytes > self.MAX_DATA_BYTES:
            self._note(f"more than {self.MAX_DATA_BYTES} bytes of data: stopped acknowledging")
            self._finish(ts)
            return []
        if self.fin_seq is None:
            self._rearm(ts)  # the response still coming: its FIN comes after it
        return [self._ack()]

    def _advance(self, end: int) -> None:
        """Move rcv_nxt to ``end``, then over any remembered range it reaches."""
        while True:
            self.data_bytes += seq_diff(end, self.rcv_nxt)
            self.rcv_nxt = end
            self.ooo = [(s, e) for s, e in self.ooo if self._ooo_useful(e)]
            nxt = [e for s, e in self.ooo if seq_diff(s, self.rcv_nxt) <= 0]
            if not nxt:
                return
            end = max(nxt, key=lambda e: seq_diff(e, self.rcv_nxt))

    def _ooo_useful(self, end: int) -> bool:
        """A remembered range still ahead of rcv_nxt and not past the FIN."""
        if self.fin_seq is not None and seq_diff(end, self.fin_seq) > 0:
            return False  # never let rcv_nxt cross the FIN
        return seq_diff(end, self.rcv_nxt) > 0

    # -- timers -------------------------------------------------------------------
    def _retransmit(self, now: float) -> list[Segment]:
        r = self.retx
        if r is None or now < r.at:
            return []
        r.left -= 1
        r.interval *= 2
        r.at = now + r.interval
        if r.left <= 0:
            self.retx = None
        if self.state == "SYN_SENT":
            self.syn_clock.append(now)
            return [self._syn()]
        return [self._stimulus_seg()]

    def _rearm(self, ts: float) -> None:
        self.last_timed = ts
        self._update_deadline()

    def _final_deadline(self) -> float:
        assert self.t_start is not None and self.last_timed is not None
        return min(self.last_timed + self.cfg.timeout_s, self.t_start + self.cfg.window_s)

    def _update_deadline(self) -> None:
        final = self._final_deadline()
        self.deadline = min(final, self.retx.at) if self.retx is not None else final

    def _emit(self, now: float, out: list[Segment]) -> list[Segment]:
        if not out:
            return out
        if self.sent + len(out) > self.MAX_SENT:
            self._note(f"more than {self.MAX_SENT} segments to send: stopped")
            self._finish(now)
            return []
        self.sent += len(out)
        return out

    def _finish(self, t_end: float) -> None:
        super()._finish(t_end)
        self.retx = None

    @property
    def timed_count(self) -> int:
        return len(self.fins)

    def stop_early(self, now: float, note: str) -> None:
        if not self.done:
            self._note(note)
            self._finish(now)

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    # -- result -------------------------------------------------------------------
    def _connect_us(self) -> int | None:
        """The RTT the server measured on the handshake, which sets its RTO: from
        our (last) SYN to our ACK of its SYN-ACK (network RTT plus our reaction
        time), both capture times. Without our ACK's capture: SYN to SYN-ACK."""
        if self.synack_at is None:
            return None
        end = self.ack_sent_at if self.ack_sent_at is not None else self.synack_at
        for times in (self.syn_sent_at, self.syn_clock):  # capture first, clock fallback
            sent = [t for t in times if t <= self.synack_at]
            if sent:
                return round((end - max(sent)) * 1e6)
        return None

    def result(self) -> Observation:
        t0 = self.syn_sent_at[0] if self.syn_sent_at else (self.t_start or 0.0)
        t_end = self.t_end if self.t_end is not None else t0
        fins = self.fins
        gaps = tuple(round((b - a) * 1e6) for a, b in zip(fins, fins[1:], strict=False))
        rst_us = None
        if self.rst_at is not None and fins:
            rst_us = round((self.rst_at - fins[-1]) * 1e6)
        fp = StateFingerprint(
            method=self.method,
            time_s=max(0, round(t_end - t0)),
            gaps_us=gaps,
            connect_us=self._connect_us(),
            rst_us=rst_us,
            listened_us=round((t_end - fins[0]) * 1e6) if fins and self.t_end else None,
        )
        notes = list(self.notes)
        if len(self.syn_clock) > 1:
            notes.append(f"SYN sent {len(self.syn_clock)} times")
        if self.synack_at is not None and not self.syn_sent_at:
            notes.append("our SYN was not captured: connect time from the engine clock")
        if self.aborted:
            notes.append("interrupted")
        return Observation(
            target=self.cfg.target,
            port=self.cfg.port,
            method=self.method,
            try_index=self.cfg.try_index,
            status=Status.ABORTED if self.aborted else self.status,
            fingerprint=fp,
            src_port=self.cfg.src_port,
            started_at=t0,
            arrivals_us=tuple(round((t - t0) * 1e6) for t in fins),
            packets_in=self.packets_in,
            ttl_in=self.ttl_in,
            note="; ".join(notes),
        )


_COMMON = {
    "INIT": frozenset({"SYN_SENT", "DONE"}),
    "SYN_SENT": frozenset({"ESTABLISHED", "DONE"}),
}


class LastAckProbe(ClosingProbe):
    """``l``: we close first, the server closes on EOF and sits in LAST_ACK."""

    method = Method.LAST_ACK
    TRANSITIONS = {
        **_COMMON,
        "ESTABLISHED": frozenset({"CLOSE_WAIT", "DONE"}),  # we send our FIN at once
        "CLOSE_WAIT": frozenset({"LAST_ACK", "DONE"}),  # waiting for the server to close
        "LAST_ACK": frozenset({"DONE"}),  # timing its FINs
    }
    PEER_FIN_STATE = "LAST_ACK"
    STIMULUS_STATE = "CLOSE_WAIT"

    def _stimulus(self) -> tuple[int, bytes] | None:
        return FIN | ACK, b""


class FinWaitProbe(ClosingProbe):
    """``f``: we send a request, the server answers, closes first: FIN_WAIT1."""

    method = Method.FIN_WAIT1
    TRANSITIONS = {
        **_COMMON,
        "ESTABLISHED": frozenset({"FIN_WAIT1", "DONE"}),  # request sent, reading the answer
        "FIN_WAIT1": frozenset({"DONE"}),  # timing its FINs
    }
    PEER_FIN_STATE = "FIN_WAIT1"

    def _stimulus(self) -> tuple[int, bytes] | None:
        return (PSH | ACK, self.cfg.payload) if self.cfg.payload else None
