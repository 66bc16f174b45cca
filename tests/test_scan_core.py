"""The scan core without root: flows, ISN validation, timers, budgets, early
stop and replay, driven by ``cronos.scan.sim`` against scripted peers."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from cronos.analysis.db import load_db
from cronos.analysis.early import EarlyStopper
from cronos.model import Method, Status
from cronos.packet import ACK, FIN, RST, SYN, Segment, build_ip
from cronos.probes import ProbeConfig
from cronos.scan import core as core_mod
from cronos.scan.core import CoreConfig, Job, ScanCore, isn_for
from cronos.scan.replay import replay_own
from cronos.scan.sim import SimNet, StackPeer

T0 = 1_795_779_084.5
US, SRV = "10.0.0.1", "10.0.0.2"
KEY = b"k" * 16


def _net(peers=None, *, timeout_s=5.0, early=None, **kw) -> SimNet:
    core = ScanCore(CoreConfig(timeout_s=timeout_s, key=KEY), early)
    return SimNet(core, peers if peers is not None else [_peer()], **kw)


def _peer(**kw) -> StackPeer:
    base = dict(synack_gaps_s=(1.0, 2.0), synack_rst_s=4.0, fin_gaps_s=(0.2, 0.4, 0.8),
                fin_rst_s=1.6)  # fmt: skip
    return StackPeer(SRV, 80, **{**base, **kw})


def _scan_all(net: SimNet, methods=tuple(Method), port=80) -> dict[Method, object]:
    for i, m in enumerate(methods):
        net.start(Job(SRV, port, m), T0 + i * 0.0004, US, 40000 + i)
    return {o.method: o for o in net.run()}


def test_three_states_concurrently_give_the_peer_schedule_exactly():
    obs = _scan_all(_net(timer_lag_s=0.0013))  # timers served late: nothing moves
    s, la, fw = obs[Method.SYN_RCVD], obs[Method.LAST_ACK], obs[Method.FIN_WAIT1]
    assert all(o.status is Status.OK for o in obs.values())
    assert s.fingerprint.gaps_us == (1_000_000, 2_000_000) and s.fingerprint.rst_us == 4_000_000
    for o in (la, fw):
        assert o.fingerprint.gaps_us == (200_000, 400_000, 800_000)
        assert o.fingerprint.rst_us == 1_600_000
        assert o.fingerprint.connect_us == 30_000  # two one-way trips of 15 ms
    assert s.arrivals_us[0] == 30_000 - 15  # our SYN is captured 15 us after it left


def test_our_isn_is_the_keyed_hash_of_the_flow():
    net = _net()
    net.start(Job(SRV, 80, Method.SYN_RCVD), T0, US, 40000)
    syn = net.sent[0][1]
    assert syn.flags == SYN and syn.seq == isn_for(KEY, US, 40000, SRV, 80)
    assert isn_for(KEY, US, 40001, SRV, 80) != syn.seq


def test_a_synack_not_acknowledging_our_isn_is_not_timed():
    net = _net([_peer(synack_gaps_s=(1.0,), synack_rst_s=None)])
    net.start(Job(SRV, 80, Method.SYN_RCVD), T0, US, 40000)
    isn = net.sent[0][1].seq
    forged = Segment(SRV, US, 80, 40000, 777, (isn + 2) & 0xFFFFFFFF, SYN | ACK,
                     options=(("MSS", 1460),))  # fmt: skip
    net.deliver(T0 + 0.5, forged)
    (obs,) = net.run()
    assert obs.fingerprint.gaps_us == (1_000_000,)
    assert net.core.stats.invalid == 1
    assert all(b != build_ip(forged) for _, b in net.captured)  # not in a -w file either


def test_a_corrupt_reply_is_counted_and_not_timed():
    net = _net([_peer(synack_gaps_s=(1.0,), synack_rst_s=None)])
    net.start(Job(SRV, 80, Method.SYN_RCVD), T0, US, 40000)
    net.run_until(T0 + 0.2)
    _, first = next((t, b) for t, b in net.captured if b[12:16] == bytes([10, 0, 0, 2]))
    bad = bytearray(first)
    bad[-1] ^= 0xFF  # an option byte: the TCP checksum no longer holds
    assert net.core.receive(T0 + 0.5, bytes(bad)) is None
    assert net.core.stats.bad_checksum == 1
    (obs,) = net.run()
    assert obs.fingerprint.gaps_us == (1_000_000,)


def test_a_repeated_reply_is_parsed_once(monkeypatch):
    calls = []
    real = core_mod.parse_ip
    monkeypatch.setattr(core_mod, "parse_ip", lambda *a, **k: calls.append(1) or real(*a, **k))
    net = _net([_peer(synack_gaps_s=(1.0, 2.0, 4.0, 8.0), synack_rst_s=None)], timeout_s=20)
    net.start(Job(SRV, 80, Method.SYN_RCVD), T0, US, 40000)
    (obs,) = net.run()
    assert obs.fingerprint.nb_pkt == 4 and obs.packets_in == 5
    assert len(calls) == 1  # four copies got the first one's Segment


def test_a_flooding_peer_is_stopped_at_the_flow_budget():
    core = ScanCore(CoreConfig(timeout_s=5, key=KEY, flow_budget=50))
    net = SimNet(core, [_peer(synack_gaps_s=(0.001,) * 200, synack_rst_s=None)])
    net.start(Job(SRV, 80, Method.SYN_RCVD), T0, US, 40000)
    (obs,) = net.run()
    assert "packet budget: more than 50 packets" in obs.note
    assert obs.packets_in <= 51 and len(core) == 0


def test_timers_fire_at_their_own_time_so_lateness_changes_nothing():
    on_time = _scan_all(_net())
    late = _scan_all(_net(timer_lag_s=0.250))
    for m in Method:
        assert late[m].fingerprint == on_time[m].fingerprint, m


def test_lost_packets_are_recorded_as_lost():
    def loss(t, seg, outgoing):  # the peer's second SYN-ACK (1 s after the first) is lost
        return not outgoing and seg.flags & SYN and T0 + 0.5 < t < T0 + 1.5

    obs = _scan_all(_net(loss=loss), methods=(Method.SYN_RCVD,))[Method.SYN_RCVD]
    assert obs.fingerprint.gaps_us == (3_000_000,)


def test_closed_port_and_silent_host():
    peers = [_peer(), StackPeer(SRV, 81, closed=True)]
    net = _net(peers)
    net.start(Job(SRV, 81, Method.LAST_ACK), T0, US, 40000)
    net.start(Job(SRV, 82, Method.SYN_RCVD), T0, US, 40001)  # nobody there
    obs = {o.port: o for o in net.run()}
    assert obs[81].status is Status.CLOSED and obs[82].status is Status.FILTERED


def test_abort_all_reports_what_was_measured():
    net = _net()
    net.start(Job(SRV, 80, Method.SYN_RCVD), T0, US, 40000)
    net.run_until(T0 + 1.5)
    net.core.abort_all(T0 + 1.5)
    (done,) = net.core.results()
    assert done.flow == (US, 40000, SRV, 80)
    assert done.observation.fingerprint.gaps_us == (1_000_000,)
    assert net.core.next_deadline is None and len(net.core) == 0


def test_a_running_flow_cannot_be_started_twice():
    net = _net()
    net.start(Job(SRV, 80, Method.SYN_RCVD), T0, US, 40000)
    with pytest.raises(ValueError, match="already running"):
        net.core.start(Job(SRV, 80, Method.LAST_ACK), T0, US, 40000)


def test_a_probe_whose_timer_does_not_advance_cannot_spin_the_core():
    net = _net([_peer(synack_rst_s=None)])
    net.start(Job(SRV, 80, Method.SYN_RCVD), T0, US, 40000)
    probe = net.core.probe((US, 40000, SRV, 80))
    probe.on_timer = lambda now: []  # a broken probe: its deadline never moves
    (obs,) = net.run()
    assert "timer did not advance" in obs.note


# --- early stop, and replay through the same core --------------------------------------

# the lab's Linux (tcp_synack_retries=5, no RST) as measured: 1, 2, 4, 8, 16 s
# each late by the timer wheel's granule (an exact doubling is many stacks')
LINUX_SYNACK = (1.031, 2.016, 4.192, 8.192, 16.128)


@pytest.fixture(scope="module")
def stopper():
    return EarlyStopper(load_db())


def _linux_peer(**kw):
    opts = (("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None), ("WScale", 10))
    return StackPeer(SRV, 80, synack_gaps_s=LINUX_SYNACK, window=65160, options=opts, **kw)


def test_early_stop_ends_a_known_series_before_its_timeout(stopper):
    net = _net([_linux_peer()], timeout_s=60, early=stopper, timer_lag_s=0.002)
    net.start(Job(SRV, 80, Method.SYN_RCVD), T0, US, 40000)
    (obs,) = net.run()
    assert obs.verdict_s is not None and "early stop" in obs.note
    assert net.core.stats.early_stops == 1
    full = _net([_linux_peer()], timeout_s=60)
    full.start(Job(SRV, 80, Method.SYN_RCVD), T0, US, 40000)
    (whole,) = full.run()
    assert whole.verdict_s is None and whole.fingerprint.time_s == 92  # 31.6 s + the timeout
    # the last SYN-ACK at 31.6 s completes every fitting signature's series: stop there
    assert obs.fingerprint.gaps_us == whole.fingerprint.gaps_us
    assert obs.verdict_s == pytest.approx(31.59, abs=0.01) and obs.fingerprint.time_s == 32


def test_early_stop_waits_while_fitting_signatures_disagree(stopper):
    """After 1, 2 s the synack-2 Linux (no more) and the default (4, 8, 16 s
    more) both fit: no stop until one is contradicted."""
    net = _net([_linux_peer()], timeout_s=60, early=stopper)
    net.start(Job(SRV, 80, Method.SYN_RCVD), T0, US, 40000)
    net.run_until(T0 + 6.0)
    assert len(net.core) == 1 and net.core.stats.early_stops == 0


@pytest.mark.parametrize("seed", range(4))
def test_replay_of_the_capture_gives_the_live_observations(stopper, seed):
    """Live and replay share the core: equal observations, early stops included,
    whatever the path lost or delayed."""
    rng = random.Random(seed)
    peers = [_linux_peer(fin_gaps_s=(0.2, 0.4, 0.8, 1.6), app_delay_s=0.002)]
    net = _net(peers, timeout_s=30, early=stopper, timer_lag_s=rng.uniform(0, 0.01),
               one_way_s=rng.uniform(0.001, 0.08),
               loss=lambda t, seg, out: rng.random() < 0.05)  # fmt: skip
    _scan_all(net)
    live = sorted(net.observations, key=lambda o: o.method.value)
    replayed = replay_own(sorted(net.captured), KEY, timeout_s=30, stopper=stopper)
    assert sorted(replayed, key=lambda o: o.method.value) == live


def test_replay_without_the_key_or_of_foreign_flows(stopper):
    net = _net()
    _scan_all(net)
    assert len(replay_own(net.captured)) == 3
    assert replay_own(net.captured, b"x" * 16) == []  # not that scan's key


def test_launch_keeps_the_callers_isn():
    net = _net()
    cfg = ProbeConfig(target=SRV, port=80, src_ip=US, src_port=40000, isn=1000, timeout_s=5)
    net.launch(cfg, Method.LAST_ACK, T0)
    (obs,) = net.run()
    assert net.sent[0][1].seq == 1000 and obs.status is Status.OK
    assert replace(cfg, isn=0) != cfg  # frozen config, unchanged


def test_the_peer_stops_what_we_acknowledge():
    """The fake peer is a TCP: a FIN we acknowledge is not sent again."""
    peer = _peer(fin_rst_s=None)
    syn = Segment(US, SRV, 40000, 80, 100, 0, SYN)
    assert len(peer.on_segment(T0, syn)) == 4  # SYN-ACK, two again, RST
    peer.on_segment(T0 + 0.03, Segment(US, SRV, 40000, 80, 101, 5001, ACK))
    plan = peer.on_segment(T0 + 0.031, Segment(US, SRV, 40000, 80, 101, 5001, FIN | ACK))
    fins = [(t, s) for t, s in plan if s.flags & FIN]
    assert len(fins) == 4
    assert peer.still_sends(*fins[1])
    peer.on_segment(T0 + 0.5, Segment(US, SRV, 40000, 80, 102, 5002, ACK))
    assert not peer.still_sends(*fins[1])
    peer.on_segment(T0 + 0.6, Segment(US, SRV, 40000, 80, 102, 0, RST))
    assert not peer.still_sends(T0 + 0.7, Segment(SRV, US, 80, 40000, 5001, 102, RST))
