"""Derivation from source against measurement (issue 15, item 3): every lab
stack whose timers can be read in its source has its schedule derived here
from those constants, and the block `cron-os learn` measured in the lab
(`cronos/data/lab.db`) must agree with it: the same number of packets within
the block's listening window, each arrival inside the derived interval
widened by three of the block's spreads. This is what makes the blocks that
are derived only (`source.db`) trustworthy: the same reading of the same
kind of constants, checked where the stack can run.
"""

from __future__ import annotations

import pytest

from cronos.analysis.db import load_db
from cronos.analysis.laws import LAWS, linux_orphan_count
from cronos.model import Method

S, L, F = Method.SYN_RCVD, Method.LAST_ACK, Method.FIN_WAIT1
MS = 1_000


def _doubling(first_lo, first_hi, n, cap=None, factor=2.0):
    """Arrival intervals (µs from the first packet) of n retransmissions: the
    first RTO in [first_lo, first_hi], each next one doubled (capped)."""
    out, lo, hi, step_lo, step_hi = [], 0.0, 0.0, first_lo, first_hi
    for _ in range(n):
        lo, hi = lo + step_lo, hi + step_hi
        out.append((lo, hi))
        step_lo, step_hi = step_lo * factor, step_hi * factor
        if cap is not None:
            step_lo, step_hi = min(step_lo, cap), min(step_hi, cap)
    return out


def _ticks(first_lo_ticks, gaps_ticks, tick_us):
    """Arrival intervals of a timer counted in ticks: the first expiry lands
    up to one tick early (the tick's phase), the later ones are exact."""
    out, lo, hi = [], 0.0, 0.0
    for k, g in enumerate(gaps_ticks):
        if k == 0:
            lo, hi = first_lo_ticks * tick_us, g * tick_us
        else:
            lo, hi = lo + g * tick_us, hi + g * tick_us
        out.append((lo, hi))
    return out


def _within(intervals, time_s):
    return [iv for iv in intervals if iv[0] <= time_s * 1e6]


def _law(name, method, lab_fp, **params):
    """The Linux law's arrivals at the block's own Connect; the count by the
    law's budget rule at the RTO the block measured (its first gap: with a
    20 ms RTO, the jiffy rounding and the timer's lateness decide the last)."""
    v = LAWS["linux"].variant(params)
    fp, spread = v.states[method], v.spread_us[method]
    scale, gaps = 1.0, list(fp.gaps_us)
    if method is not S:  # RTO = RTT + max(2 RTT, rto_min), at the block's RTT
        c, c0, r = lab_fp.connect_us, fp.connect_us, params["rto_min"]
        scale = (c + max(2 * c, r)) / (c0 + max(2 * c0, r))
        n = linux_orphan_count(lab_fp.gaps_us[0], params["tcp_orphan_retries"])
        gaps = [gaps[0] * 2**k for k in range(n)]
        spread = [spread[min(k, len(spread) - 1)] * 2 ** max(0, k - len(spread) + 1)
                  for k in range(n)]  # fmt: skip
    out, t = [], 0.0
    for g, s in zip(gaps, spread, strict=True):
        t += g * scale
        out.append((t - s, t + s))
    return out


def _derived(block, method, fp):
    """Derived arrival intervals for one lab block's state."""
    c = fp.connect_us or 1000
    if "[lab gvisor]" in block:
        # gvisor.dev/gvisor pkg/tcpip/transport/tcp (Debian 0.0~20221219):
        # connect.go:35 InitialRTO = 1 s, connect.go:187 newBackoffTimer doubling,
        # snd.go:35 MaxRTO = 120 s; snd.go:32 MinRTO = 200 ms, snd.go:387 RTO = 3 RTT
        # after one sample, snd.go:489 doubled per expiry, snd.go:47 MaxRetries 15
        if method is S:
            return _doubling(1.0e6, 1.0e6 * 1.01, 6, cap=120e6)
        rto = max(200 * MS, 3 * c)
        return _doubling(rto, rto * 1.01, 15, cap=120e6)
    if "[lab lwip]" in block:
        # lwip 2.1.3 (Debian source): priv/tcp_priv.h:128 TCP_SLOW_INTERVAL 500 ms;
        # tcp.c:1901 rto = sv = 6 ticks; tcp.c:163 tcp_backoff shift table;
        # tcp_priv.h:132 SYN_RCVD dropped after 20 s; tcp_in.c:1350 the handshake's
        # 0-tick sample gives rto 5 ticks (a second sample, FIN_WAIT1: 4 ticks)
        tick = 500 * MS
        if method is S:
            return _ticks(5, [6, 12], tick)
        first = 5 if method is L else 4
        return _ticks(first - 1, [first * 2**k for k in range(12)], tick)
    if "[lab slirp]" in block:
        # libslirp src/tcp_timer.h: TCPTV_SRTTDFLT 3 s, TCPTV_MIN 1 s,
        # TCPTV_REXMTMAX 12 s, TCPTV_KEEP_INIT 75 s, 500 ms slow ticks; the SYN-ACK's
        # first RTO (no RTT) is (SRTTDFLT << 2) >> 1 = 6 s, then doubled and capped;
        # FINs after an RTT sample: TCPTV_MIN 1 s plus the tick that counts it
        tick = 500 * MS
        if method is S:
            return _doubling(6e6 - tick, 6e6, 20, cap=12e6)
        return _doubling(1e6, 1.5e6 + tick, 20, cap=12e6)
    if "[lab pytcp]" in block:
        # pytcp 2.7.6 pytcp/protocols/tcp/session.py:64 PACKET_RETRANSMIT_TIMEOUT
        # = 1000 ms, :65 PACKET_RETRANSMIT_MAX_COUNT = 3, doubled per retry; its
        # timer thread overshoots (up to 20 % measured under load)
        return _doubling(1e6, 1.2e6, 3)
    if "[lab uml]" in block:  # Linux 6.1 under UML, tcp_synack_retries=3, orphan 1
        return _law(block, method, fp, tcp_synack_retries=3, tcp_orphan_retries=1,
                    rto_min=200 * MS)  # fmt: skip
    linux = {
        "[lab linux-default]": (5, 0, 200),
        "[lab linux-synack2]": (2, 0, 200),
        "[lab linux-synack3]": (3, 1, 200),
        "[lab linux-orphan2]": (1, 2, 200),
        "[lab linux-rto20]": (2, 2, 20),
    }
    for tag, (syn, orphan, rto_ms) in linux.items():
        if tag in block:
            return _law(block, method, fp, tcp_synack_retries=syn, tcp_orphan_retries=orphan,
                        rto_min=rto_ms * MS)  # fmt: skip
    return None


DB = load_db()
LAB = [s for s in DB.signatures if "[lab " in s.name and "synproxy" not in s.name]
CASES = [(s.name, m) for s in LAB for m in s.states]


def test_every_lab_stack_has_a_derivation():
    assert len(LAB) == 10  # synproxy is a middlebox in front of a Linux: no stack of its own
    assert all(_derived(s.name, m, fp) is not None for s in LAB for m, fp in s.states.items())


@pytest.mark.parametrize("name, method", CASES, ids=[f"{n[n.index('[lab'):]}-{m.value}"
                                                     for n, m in CASES])  # fmt: skip
def test_the_lab_measurement_agrees_with_the_source(name, method):
    sig = next(s for s in LAB if s.name == name)
    fp = sig.states[method]
    derived = _derived(name, method, fp)
    if not name.startswith("Linux") and "uml" not in name:
        derived = _within(derived, fp.time_s)
    assert len(derived) == fp.nb_pkt, (name, method, len(derived), fp.nb_pkt)
    spread = sig.spread_us.get(method) or [30_000] * fp.nb_pkt
    t = 0.0
    for k, (g, (lo, hi)) in enumerate(zip(fp.gaps_us, derived, strict=True)):
        t += g
        tol = 3 * spread[k]
        assert lo - tol <= t <= hi + tol, (name, method.value, k, t, (lo, hi), tol)
