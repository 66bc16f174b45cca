"""Pure tests of the closing-state probes (LAST_ACK ``l``, FIN_WAIT1 ``f``).

A fake Linux server is written as timestamped Segments; the harness runs the
probe in the scan core on the simulated network of ``cronos.scan.sim``,
which serves its timers in order and loops every segment it sends back as a
captured outgoing segment (20 us later), as the engine does. No network.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cronos.errors import ProbeStateError
from cronos.model import Method, Status
from cronos.packet import ACK, FIN, PSH, RST, SYN, Segment
from cronos.probes import PROBES
from cronos.probes.base import ProbeConfig
from cronos.probes.closing import ClosingProbe, FinWaitProbe, LastAckProbe, seq_diff
from cronos.scan.core import CoreConfig, ScanCore
from cronos.scan.sim import SimNet

T0 = 1_700_000_000.0
US = 1e-6
CAPTURE_LAG = 20 * US  # our segment's capture time after the probe emitted it
ISN = 1000  # ours
SISN = 7_000_000  # the server's
REQ = b"GET / HTTP/1.0\r\n\r\n"
CFG = ProbeConfig(
    target="192.0.2.2",
    port=80,
    src_ip="192.0.2.1",
    src_port=40000,
    isn=ISN,
    timeout_s=30.0,
    window_s=180.0,
)


def srv(flags: int, seq: int, ack: int = ISN + 1, payload: bytes = b"", **kw) -> Segment:
    """A segment from the server to our flow."""
    base = dict(src=CFG.target, dst=CFG.src_ip, sport=CFG.port, dport=CFG.src_port, window=64240)
    base.update(kw)
    return Segment(seq=seq & 0xFFFFFFFF, ack=ack & 0xFFFFFFFF, flags=flags, payload=payload, **base)


def synack(ack: int = ISN + 1) -> Segment:
    return srv(SYN | ACK, SISN, ack, options=(("MSS", 1460),))


@dataclass
class Harness:
    """One probe in the scan core on the simulated network (``cronos.scan.sim``):
    the test plays the server, segment by segment."""

    net: SimNet
    probe: ClosingProbe

    @classmethod
    def make(cls, probe_cls=LastAckProbe, **cfg) -> Harness:
        # the probe's own bounds are under test here, not the core's budget
        core = ScanCore(CoreConfig(timeout_s=CFG.timeout_s, flow_budget=1 << 30))
        net = SimNet(core, capture_lag_s=CAPTURE_LAG, wire=False)
        pc = ProbeConfig(**{**CFG.__dict__, **cfg})
        net.launch(pc, probe_cls.method, T0)
        return cls(net, core.probe((pc.src_ip, pc.src_port, pc.target, pc.port)))

    @property
    def sent(self) -> list[tuple[float, Segment]]:
        return self.net.sent

    def timers_until(self, t: float) -> None:
        self.net.run_until(t)

    def rx(self, t: float, seg: Segment) -> list[Segment]:
        out = self.net.deliver(t, seg)
        self.net.run_until(t + CAPTURE_LAG)  # what it sent is captured
        return out

    def play(self, events: list[tuple[float, Segment]]) -> None:
        for dt, seg in events:
            self.rx(T0 + dt, seg)

    def finish(self) -> None:
        self.net.run_until(T0 + 10_000)

    def sent_after(self, dt: float) -> list[Segment]:
        return [s for t, s in self.sent if t > T0 + dt]

    def assert_fin_never_acked(self) -> None:
        fin_seq = self.probe.fin_seq
        for _, s in self.sent:
            assert s.flags & (SYN | RST) == 0 or s.flags == SYN
            if fin_seq is not None and s.flags & ACK:
                assert seq_diff(s.ack, fin_seq) <= 0, f"we acknowledged the FIN: {s}"


def established(h: Harness, dt: float = 0.134571) -> None:
    # Connect = our SYN's capture (T0 + lag) to our ACK's capture (dt + lag)
    h.rx(T0 + dt, synack())


# ---------------------------------------------------------------- LAST_ACK


def test_registry():
    assert PROBES[Method.LAST_ACK] is LastAckProbe
    assert PROBES[Method.FIN_WAIT1] is FinWaitProbe


def test_last_ack_happy_path_reads_like_the_talk():
    h = Harness.make(LastAckProbe, window_s=30.0)
    syn = h.sent[0][1]
    assert syn.flags == SYN and syn.seq == ISN and syn.window == 65535
    assert syn.options == (("MSS", 1460),)
    established(h)  # our ACK is captured 134571 us after our SYN
    assert [(s.flags, s.seq, s.ack) for s in h.sent_after(0.1)] == [
        (ACK, ISN + 1, SISN + 1),
        (FIN | ACK, ISN + 1, SISN + 1),
    ]
    assert h.probe.state == "CLOSE_WAIT"
    fin = srv(FIN | ACK, SISN + 1, ISN + 2)
    arrivals = [0.300000, 3.218695, 9.127787, 21.141867]
    h.play([(0.270000, srv(ACK, SISN + 1, ISN + 2))] + [(a, fin) for a in arrivals])
    assert h.probe.state == "LAST_ACK"
    h.finish()
    obs = h.probe.result()
    assert obs.status is Status.OK
    assert obs.fingerprint.line() == (
        "CronOS_LastAck(nbPkt=3%Time=30%Connect=134571%p=2918695%p=5909092%p=12014080)"
    )
    assert obs.started_at == T0 + CAPTURE_LAG
    assert obs.arrivals_us == tuple(round((a - CAPTURE_LAG) * 1e6) for a in arrivals)
    assert obs.packets_in == 6 and obs.note == ""
    assert h.sent_after(0.2) == []  # nothing answers the FINs
    h.assert_fin_never_acked()


def test_last_ack_rst_after_fins_gives_rst_us():
    h = Harness.make(LastAckProbe)
    established(h)
    fin = srv(FIN | ACK, SISN + 1, ISN + 2)
    h.play([(0.3, fin), (0.5, fin), (0.9, fin), (1.4, srv(RST | ACK, SISN + 2, ISN + 2))])
    obs = h.probe.result()
    assert h.probe.done and obs.status is Status.OK
    assert obs.fingerprint.gaps_us == (200000, 400000)
    assert obs.fingerprint.rst_us == 500000
    assert obs.fingerprint.time_s == 1


def test_last_ack_lost_retransmission_is_recorded_as_is():
    h = Harness.make(LastAckProbe)
    established(h)
    fin = srv(FIN | ACK, SISN + 1, ISN + 2)
    h.play([(0.2, fin), (0.4, fin), (1.6, fin)])  # the one at 0.8 was lost
    h.finish()
    assert h.probe.result().fingerprint.gaps_us == (200000, 1200000)


def test_last_ack_acks_banner_data_but_not_the_fin():
    h = Harness.make(LastAckProbe)
    established(h)
    banner = b"SSH-2.0-OpenSSH_9.6\r\n"
    out = h.rx(T0 + 0.14, srv(PSH | ACK, SISN + 1, ISN + 1, banner))
    assert [(s.flags, s.seq, s.ack) for s in out] == [(ACK, ISN + 2, SISN + 1 + len(banner))]
    fin = srv(FIN | ACK, SISN + 1 + len(banner), ISN + 2)
    assert h.rx(T0 + 0.3, fin) == [] and h.rx(T0 + 0.5, fin) == []
    h.finish()
    assert h.probe.result().fingerprint.gaps_us == (200000,)
    h.assert_fin_never_acked()


@pytest.mark.parametrize(
    "ack_at, expected_fin_times",
    [
        (None, [1, 3, 7]),  # never acked: three retransmissions, doubling
        (1.5, [1]),  # acked after the first retransmission
        (0.2, []),  # acked at once
    ],
)
def test_last_ack_retransmits_our_fin_until_acked(ack_at, expected_fin_times):
    h = Harness.make(LastAckProbe)
    established(h, 0.0)
    if ack_at is not None:
        h.rx(T0 + ack_at, srv(ACK, SISN + 1, ISN + 2))
    h.finish()
    fins = [round(t - T0, 3) for t, s in h.sent if s.flags & FIN and t > T0]
    assert fins == expected_fin_times
    assert all(s.seq == ISN + 1 for t, s in h.sent if s.flags & FIN)
    assert h.probe.result().status is Status.NO_CLOSE


def test_last_ack_server_closing_first_is_noted():
    h = Harness.make(LastAckProbe)
    established(h)
    h.rx(T0 + 0.2, srv(FIN | ACK, SISN + 1, ISN + 1))  # does not ack our FIN
    h.finish()
    obs = h.probe.result()
    assert obs.status is Status.OK
    assert "before it acknowledged our segment" in obs.note


# ---------------------------------------------------------------- FIN_WAIT1


def test_fin_wait_data_then_fin():
    h = Harness.make(FinWaitProbe)
    established(h)
    req = h.sent_after(0.1)[1]
    assert (req.flags, req.seq, req.payload) == (PSH | ACK, ISN + 1, REQ)
    una = ISN + 1 + len(REQ)
    d1, d2 = b"H" * 1448, b"b" * 300
    fin = srv(FIN | ACK, SISN + 1 + 1748, una)
    h.play(
        [
            (0.27, srv(ACK, SISN + 1, una)),
            (0.28, srv(ACK, SISN + 1, una, d1)),
            (0.281, srv(PSH | ACK, SISN + 1449, una, d2)),
            (0.282, fin),
            (0.5, fin),
            (0.9, fin),
        ]
    )
    acks = [s.ack for s in h.sent_after(0.2)]
    assert acks == [SISN + 1449, SISN + 1749]
    assert h.probe.state == "FIN_WAIT1"
    h.finish()
    obs = h.probe.result()
    assert obs.status is Status.OK and obs.method is Method.FIN_WAIT1
    assert obs.fingerprint.gaps_us == (218000, 400000)
    assert obs.fingerprint.line().startswith("CronOS_FinWait(nbPkt=2%Time=31%Connect=134571%")
    h.assert_fin_never_acked()


@pytest.mark.parametrize("retx_with_data", [False, True])
def test_fin_wait_fin_piggybacked_on_data(retx_with_data):
    h = Harness.make(FinWaitProbe)
    established(h)
    una = ISN + 1 + len(REQ)
    body = b"HTTP/1.0 200 OK\r\n\r\nhello"
    first = srv(FIN | PSH | ACK, SISN + 1, una, body)  # tcp flags 25
    again = first if retx_with_data else srv(FIN | ACK, SISN + 1 + len(body), una)
    out = h.rx(T0 + 0.3, first)
    assert [(s.flags, s.ack) for s in out] == [(ACK, SISN + 1 + len(body))]
    assert h.rx(T0 + 0.5, again) == [] and h.rx(T0 + 0.9, again) == []
    h.finish()
    assert h.probe.fin_seq == SISN + 1 + len(body)
    assert h.probe.result().fingerprint.gaps_us == (200000, 400000)
    h.assert_fin_never_acked()


def test_fin_wait_out_of_order_data():
    h = Harness.make(FinWaitProbe)
    established(h)
    una = ISN + 1 + len(REQ)
    a, b = b"a" * 1000, b"b" * 500
    out_b = h.rx(T0 + 0.30, srv(PSH | ACK, SISN + 1001, una, b))
    assert [s.ack for s in out_b] == [SISN + 1]  # duplicate ACK
    out_a = h.rx(T0 + 0.31, srv(ACK, SISN + 1, una, a))
    assert [s.ack for s in out_a] == [SISN + 1501]  # fills the hole
    fin = srv(FIN | ACK, SISN + 1501, una)
    h.play([(0.32, fin), (0.52, fin)])
    h.finish()
    assert h.probe.result().fingerprint.gaps_us == (200000,)
    assert h.probe.data_bytes == 1500
    h.assert_fin_never_acked()


def test_fin_wait_out_of_order_fin_is_timed_from_its_first_arrival():
    h = Harness.make(FinWaitProbe)
    established(h)
    una = ISN + 1 + len(REQ)
    out = h.rx(T0 + 0.30, srv(FIN | PSH | ACK, SISN + 101, una, b"y" * 50))
    assert [s.ack for s in out] == [SISN + 1]
    out = h.rx(T0 + 0.31, srv(ACK, SISN + 1, una, b"x" * 100))
    assert [s.ack for s in out] == [SISN + 151]
    h.rx(T0 + 0.70, srv(FIN | ACK, SISN + 151, una))
    h.finish()
    assert h.probe.result().fingerprint.gaps_us == (400000,)
    h.assert_fin_never_acked()


def test_fin_wait_retransmits_request_until_acked():
    h = Harness.make(FinWaitProbe)
    established(h, 0.0)
    h.rx(T0 + 2.0, srv(ACK, SISN + 1, ISN + 1 + len(REQ)))
    h.finish()
    reqs = [round(t - T0, 3) for t, s in h.sent if s.payload == REQ]
    assert reqs == [0.0, 1.0]


def test_fin_wait_empty_payload_sends_only_the_ack():
    h = Harness.make(FinWaitProbe, payload=b"")
    established(h)
    assert [s.flags for s in h.sent_after(0.1)] == [ACK]
    h.rx(T0 + 0.2, srv(FIN | ACK, SISN + 1, ISN + 1))
    h.finish()
    assert h.probe.result().status is Status.OK


# ---------------------------------------------------------------- outcomes


@pytest.mark.parametrize("probe_cls", [LastAckProbe, FinWaitProbe])
@pytest.mark.parametrize(
    "events, status, connect",
    [
        ([], Status.FILTERED, None),
        ([(0.1, srv(RST | ACK, 0, ISN + 1))], Status.CLOSED, None),
        ([(0.1, synack()), (0.5, srv(RST | ACK, SISN + 1, ISN + 1))], Status.RESET, 100000),
        ([(0.1, synack())], Status.NO_CLOSE, 100000),
        ([(0.1, srv(RST, 0, 0)), (0.2, synack())], Status.NO_CLOSE, 200000),  # blind RST
        ([(0.1, synack(ack=ISN + 7)), (0.2, synack())], Status.NO_CLOSE, 200000),
    ],
)
def test_outcomes(probe_cls, events, status, connect):
    h = Harness.make(probe_cls)
    h.play(events)
    h.finish()
    obs = h.probe.result()
    assert obs.status is status
    assert obs.fingerprint.connect_us == connect
    assert obs.fingerprint.gaps_us == ()
    assert h.probe.state == "DONE" and h.probe.deadline is None


def test_no_synack_filtered_after_two_syn_retransmissions():
    h = Harness.make(LastAckProbe, timeout_s=20.0)
    h.finish()
    syns = [(round(t - T0, 3), s.seq) for t, s in h.sent]
    assert syns == [(0.0, ISN), (1.0, ISN), (3.0, ISN)]
    obs = h.probe.result()
    assert obs.status is Status.FILTERED and obs.fingerprint.time_s == 20
    assert "SYN sent 3 times" in obs.note


def test_no_fin_times_out_no_close():
    h = Harness.make(LastAckProbe, timeout_s=20.0)
    established(h)
    h.rx(T0 + 0.2, srv(ACK, SISN + 1, ISN + 2))
    assert h.probe.deadline == pytest.approx(T0 + 0.134591 + 20.0)
    assert h.probe.on_timer(T0 + 10.0) == [] and not h.probe.done
    h.probe.on_timer(T0 + 25.0)
    obs = h.probe.result()
    assert obs.status is Status.NO_CLOSE and obs.fingerprint.time_s == 20


def test_window_caps_listening():
    h = Harness.make(LastAckProbe, timeout_s=30.0, window_s=5.0)
    established(h)
    fin = srv(FIN | ACK, SISN + 1, ISN + 2)
    h.play([(0.3, fin), (0.6, fin), (4.0, fin), (6.0, fin)])  # the last is after the window
    assert h.probe.result().fingerprint.gaps_us == (300000, 3400000)
    assert h.probe.result().fingerprint.time_s == 5


def test_connect_uses_the_last_syn_before_the_synack():
    h = Harness.make(LastAckProbe)
    h.rx(T0 + 3.05, synack())  # the SYNs went out at 0, 1 and 3 s
    assert h.probe.result().fingerprint.connect_us == 50000  # SYN at 3 s + lag -> ACK + lag


def test_connect_falls_back_to_engine_clock_without_capture():
    p = LastAckProbe(CFG)
    p.start(T0)
    p.on_packet(T0 + 0.1, synack(), False)
    obs = p.result()
    assert obs.fingerprint.connect_us == 100000
    assert "not captured" in obs.note


def test_abort_keeps_what_was_measured():
    h = Harness.make(LastAckProbe)
    established(h)
    fin = srv(FIN | ACK, SISN + 1, ISN + 2)
    h.play([(0.3, fin), (0.5, fin)])
    h.probe.abort(T0 + 2.0)
    obs = h.probe.result()
    assert h.probe.done and obs.status is Status.ABORTED
    assert obs.fingerprint.gaps_us == (200000,) and obs.note == "interrupted"
    h.probe.abort(T0 + 3.0)  # a second abort changes nothing
    assert h.probe.result() == obs


def test_sack_offered_only_when_asked():
    h = Harness.make(LastAckProbe, sack=True)
    assert h.sent[0][1].options == (("MSS", 1460), ("SAckOK", b""))


def test_illegal_internal_transition_raises():
    p = LastAckProbe(CFG)
    with pytest.raises(ProbeStateError, match="INIT -> LAST_ACK"):
        p._goto("LAST_ACK")
    p.start(T0)
    with pytest.raises(ProbeStateError, match="SYN_SENT -> FIN_WAIT1"):
        p._goto("FIN_WAIT1")


@pytest.mark.parametrize("probe_cls", [LastAckProbe, FinWaitProbe])
def test_transition_tables_are_closed(probe_cls):
    states = set(probe_cls.TRANSITIONS) | {"DONE"}
    for src, dsts in probe_cls.TRANSITIONS.items():
        assert dsts <= states, src
        assert "DONE" in dsts, src
    assert probe_cls.method.state_name == probe_cls.PEER_FIN_STATE


# ---------------------------------------------------------------- hostile peers


def test_foreign_segments_and_bad_acks_are_ignored():
    h = Harness.make(LastAckProbe)
    established(h)
    other_port = srv(FIN | ACK, SISN + 1, ISN + 2, sport=81)
    other_host = srv(FIN | ACK, SISN + 1, ISN + 2, src="198.51.100.9")
    bad_ack = srv(FIN | ACK, SISN + 1, ISN + 50)
    no_ack = srv(FIN, SISN + 1, 0)
    far_fin = srv(FIN | ACK, SISN + 900_000, ISN + 2)
    far_rst = srv(RST | ACK, SISN + 900_000, ISN + 2)
    for i, seg in enumerate([other_port, other_host, bad_ack, no_ack, far_fin, far_rst]):
        assert h.rx(T0 + 0.2 + i / 100, seg) == []
    assert h.probe.fin_seq is None and not h.probe.done
    assert h.probe.packets_in == 5  # the SYN-ACK and the four from the server's port


def test_fin_storm_stays_bounded():
    h = Harness.make(LastAckProbe)
    established(h)
    fin = srv(FIN | ACK, SISN + 1, ISN + 2)
    for i in range(10_000):
        h.rx(T0 + 0.2 + i * 1e-5, fin)
    obs = h.probe.result()
    assert h.probe.done and obs.status is Status.OK
    assert len(obs.fingerprint.gaps_us) == ClosingProbe.MAX_FINS - 1
    assert "FINs: stopped" in obs.note
    assert len(h.sent) <= 4


def test_endless_data_stays_bounded():
    h = Harness.make(FinWaitProbe)
    established(h)
    una = ISN + 1 + len(REQ)
    seq = SISN + 1
    for i in range(2_000):
        h.rx(T0 + 0.2 + i * 1e-4, srv(ACK, seq, una, b"z" * 1448))
        seq += 1448
    p = h.probe
    assert p.done and p.data_bytes <= ClosingProbe.MAX_DATA_BYTES + 1448
    assert len(h.sent) <= ClosingProbe.MAX_SENT
    obs = p.result()
    assert obs.status is Status.NO_CLOSE and "stopped acknowledging" in obs.note
    assert max(s.ack for _, s in h.sent) - (SISN + 1) <= ClosingProbe.MAX_DATA_BYTES


def test_tiny_segments_bound_what_we_send():
    h = Harness.make(FinWaitProbe)
    established(h)
    una = ISN + 1 + len(REQ)
    for i in range(6_000):
        h.rx(T0 + 0.2 + i * 1e-5, srv(ACK, SISN + 1 + i, una, b"."))
    assert h.probe.done and len(h.sent) <= ClosingProbe.MAX_SENT
    assert "segments to send" in h.probe.result().note


def test_out_of_order_ranges_cannot_push_ack_past_the_fin():
    h = Harness.make(FinWaitProbe)
    established(h)
    una = ISN + 1 + len(REQ)
    h.rx(T0 + 0.30, srv(ACK, SISN + 101, una, b"q" * 100))  # remembered: 101..201
    h.rx(T0 + 0.31, srv(FIN | ACK, SISN + 51, una, b"f" * 50))  # FIN at 101
    h.rx(T0 + 0.32, srv(ACK, SISN + 1, una, b"p" * 50))  # fills 1..51
    assert h.probe.rcv_nxt == SISN + 101
    h.assert_fin_never_acked()


_flags = st.integers(0, 0xFF)
_seq = st.one_of(
    st.integers(0, 0xFFFFFFFF),
    st.integers(SISN - 5, SISN + 3000),
    st.sampled_from([SISN, SISN + 1]),
)
_ack = st.one_of(
    st.integers(0, 0xFFFFFFFF),
    st.integers(ISN - 2, ISN + 40),
    st.sampled_from([ISN + 1, ISN + 2, ISN + 1 + len(REQ)]),
)
_seg = st.builds(
    lambda f, s, a, p, port: srv(f, s, a, p, sport=port),
    _flags,
    _seq,
    _ack,
    st.binary(max_size=64),
    st.sampled_from([80, 80, 80, 81]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    probe_cls=st.sampled_from([LastAckProbe, FinWaitProbe]),
    handshake=st.booleans(),
    segs=st.lists(st.tuples(st.floats(0, 5), _seg), max_size=40),
)
def test_garbage_never_raises(probe_cls, handshake, segs):
    h = Harness.make(probe_cls)
    if handshake:
        established(h)
    for dt, seg in sorted(segs, key=lambda x: x[0]):
        out = h.rx(T0 + 0.2 + dt, seg)
        assert isinstance(out, list)
    h.finish()
    obs = h.probe.result()
    assert obs.status in set(Status)
    assert len(h.probe.fins) <= ClosingProbe.MAX_FINS
    assert len(h.sent) <= ClosingProbe.MAX_SENT
    h.assert_fin_never_acked()
