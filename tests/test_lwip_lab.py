"""slf against the lwIP lab target (Debian liblwip 2.1.3, cronos/lab/lwip.py).

lwIP keeps time in ticks of its slow timer (TCP_SLOW_INTERVAL = 500 ms): a
retransmission timeout of n ticks fires after n-1 to n tick intervals the
first time (the timer's phase) and exactly n after that; a tick is never
shorter than 500 ms (minus sys_now()'s millisecond truncation) and longer
only by the tcpip thread's lateness. The timeouts, from lwIP's constants
(see the module docstring): rto = 6 ticks in SYN_RCVD (no RTT sample),
5 in LAST_ACK (one 0-tick sample), 4 in FIN_WAIT1 (two), then
rto << tcp_backoff[nrtx] = x2, x4, x8; SYN_RCVD pcbs are dropped without a
RST after TCP_SYN_RCVD_TIMEOUT = 20 s, i.e. after two retransmissions.
So the checks are counts, tick multiples, doubling ratios and bounds in
ticks, never fixed microseconds.

With ``--timeout 13`` the scan takes ~31 s: SYN_RCVD listens 13 s after its
second retransmission (a third, if lwIP sent one, would come 12 s later);
the closing states stop before their 20 s (LAST_ACK) / 16 s (FIN_WAIT1)
gap, after three gaps.
"""

import pytest

from cronos.errors import DependencyError

from helpers import assert_named_first, scan

pytestmark = pytest.mark.netns

TICK_MS = 500
#: a late tick (the tcpip thread re-arms the timer after it ran, and a busy
#: machine wakes it late) may stretch a gap by this factor at most
LOAD_FACTOR = 1.25
#: sys_now() is in whole milliseconds: a gap may look this much short
TRUNC_MS = 5
TIMEOUT_S = 13
#: state -> timeouts in ticks that a scan with TIMEOUT_S sees (first = initial rto)
TICKS = {"SYN_RCVD": (6, 12), "LAST_ACK": (5, 10, 20), "FIN_WAIT1": (4, 8, 16)}


@pytest.fixture
def lwip_lab(make_lab):
    from cronos.lab import lwip

    try:
        lwip.check_dependencies()
    except DependencyError as exc:
        pytest.skip(f"lwip profile not buildable: {exc}")
    return make_lab(["lwip"])


def assert_ticks(state, gaps_ms):
    ticks = TICKS[state]
    assert len(gaps_ms) == len(ticks), (state, gaps_ms)
    # first gap: the initial rto, minus up to one tick for the timer's phase
    first = ticks[0]
    assert (first - 1) * TICK_MS - TRUNC_MS <= gaps_ms[0] <= LOAD_FACTOR * first * TICK_MS, (
        state,
        gaps_ms,
    )
    # later gaps: whole ticks, never shorter, a little longer under load
    per_tick = [g / n for g, n in zip(gaps_ms[1:], ticks[1:], strict=True)]
    for g, n in zip(gaps_ms[1:], ticks[1:], strict=True):
        assert n * TICK_MS - TRUNC_MS <= g <= LOAD_FACTOR * n * TICK_MS, (state, gaps_ms)
    # backoff doubles: successive gaps (after the phase-shifted first) x2
    for a, b in zip(gaps_ms[1:], gaps_ms[2:], strict=False):
        assert 1.8 <= b / a <= 2.2, (state, gaps_ms)
    # the first gap is shorter than the second by at least the backoff's
    # extra rto (1x more), whatever the phase
    assert gaps_ms[1] / gaps_ms[0] >= 1.6, (state, gaps_ms)
    # one tick length per series
    if len(per_tick) > 1:
        assert max(per_tick) / min(per_tick) < 1.1, (state, per_tick)


def test_lwip_schedules_follow_its_slow_timer(lwip_lab, tmp_path):
    lab = lwip_lab
    target = lab.targets[0]
    assert target.kind == "lwip" and target.ip.endswith(".2")
    assert target.ip6 == "fd77:0:0:1::2"  # the lab's setup fetched a page from it over IPv6
    _, recs = scan(lab, [target.ip], tmp_path / "o.jsonl", "--tries", "2", methods="slf",
                   timeout=TIMEOUT_S, timeout_s=120)  # fmt: skip
    assert len(recs) == 6, recs
    by_state = {}
    for r in recs:
        by_state.setdefault(r["state"], []).append(r)
    assert sorted(by_state) == ["FIN_WAIT1", "LAST_ACK", "SYN_RCVD"]
    for state, rs in by_state.items():
        assert sorted(r["try"] for r in rs) == [1, 2], rs
        for r in rs:
            assert r["status"] == "ok", r
            # no RST in any state: SYN_RCVD pcbs are dropped silently at 20 s,
            # closing ones retransmit for minutes (TCP_MAXRTX = 12)
            assert r["rst_us"] is None, r
            assert r["nb_pkt"] == len(TICKS[state]), r
            assert_ticks(state, [g / 1000 for g in r["gaps_us"]])
            if state != "SYN_RCVD":
                assert r["connect_us"] < 50_000, r
    # the initial rto, in ticks, shrinks with each 0-tick RTT sample: 6, 5, 4
    first = {s: min(r["gaps_us"][0] for r in rs) / 1000 for s, rs in by_state.items()}
    assert first["FIN_WAIT1"] < first["LAST_ACK"] < first["SYN_RCVD"], first
    # SYN-ACK header: TTL 255, window 65535, MSS 1460, no DF
    feats = by_state["SYN_RCVD"][0]["features"]
    assert feats["ttl"] == 255 and feats["window"] == 0xFFFF, feats
    assert feats["mss"] == 1460 and feats["df"] is False, feats
    assert_named_first(recs, ("[lab lwip]",))
