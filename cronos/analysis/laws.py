"""Stack families as laws: one database block covers every setting of a stack.

A block with a ``Law NAME PARAM=VALUES ...`` line holds no state lines of its
own: the law computes them, for every combination of the listed parameter
values, from the stack's source rules. The loader turns the block into one
*variant* signature per combination (``Signature.law`` names the block,
``Signature.params`` the values, ``Signature.weight`` is 1/number of variants,
so that a family weighs one signature in the prior however many settings it
lists). The matcher then names a host by family with the values read off its
timings, and says which parameters its states could not read.

Values: ``a..b`` (integers), or a comma list; durations take a unit (``ms``
or ``s``) on the list or on each value: ``rto_min=10,20,50,200ms``.

``linux`` (Linux 3.1-6.x; constants from include/net/tcp.h, rules from
net/ipv4/tcp_timer.c, net/ipv4/inet_connection_sock.c, kernel/time/timer.c):

* SYN_RCVD: TCP_TIMEOUT_INIT = 1 s, doubled per retransmission, capped at
  TCP_RTO_MAX = 120 s, ``tcp_synack_retries`` retransmissions, no RST.
* LAST_ACK / FIN_WAIT1 (our FIN never acknowledged, the socket orphaned):
  after one RTT sample the RTO is RTT + max(2 RTT, rto_min) (tcp_set_rto:
  srtt + rttvar, rttvar = max(mdev = 2 RTT, rto_min); rto_min is the route's
  ``rto_min``, 200 ms by default), doubled per retransmission, capped at
  120 s. The count is a time budget (retransmits_timed_out with
  tcp_model_timeout): with n = ``tcp_orphan_retries`` (0 means 8), a
  retransmission is sent while the time since the first retransmission is
  below (2^(n+1) - 1) x TCP_RTO_MIN (n <= 9; linear in TCP_RTO_MAX beyond).
  Checked against the lab: orphan 1 -> 2 retransmissions at 0.2 s RTO, 2 ->
  3, 0 -> 8; rto_min 20 ms with orphan 2 -> 5.
* Timer lateness: a timeout of T lands on the timer wheel's next boundary at
  the level that holds T (levels of 8^k jiffies, 64 slots each), so each gap
  is late by up to one granule of that level: at HZ=250, 32 ms for 1-2 s,
  256 ms for 4-16 s, 2 s for 32-128 s. HZ is not known in advance (100,
  250, 300 and 1000 are common): the expected lateness and its spread are
  averaged over them.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import DatabaseError
from ..model import Method, StateFingerprint

TCP_RTO_MIN_US = 200_000
TCP_RTO_MAX_US = 120_000_000
TCP_TIMEOUT_INIT_US = 1_000_000
HZ_CHOICES = (100, 250, 300, 1000)
#: the Connect (µs) the closing schedules are written for; the matcher
#: rescales them to the observed one with the same rule
LAW_CONNECT_US = 1_000


def _granule_us(timeout_us: float, hz: int) -> float:
    """The timer wheel's granularity for a timeout (kernel/time/timer.c:
    level k holds delays below 63 x 8^k jiffies, in steps of 8^k jiffies)."""
    jiffy = 1e6 / hz
    j = timeout_us / jiffy
    level = 0
    while j >= 63 * 8**level and level < 8:
        level += 1
    return jiffy * 8**level


def lateness_us(timeout_us: float) -> tuple[float, float]:
    """Mean and standard deviation of a timer's lateness, HZ unknown: the
    lateness is uniform in one granule, HZ uniform over HZ_CHOICES."""
    g = [_granule_us(timeout_us, hz) for hz in HZ_CHOICES]
    mean = sum(x / 2 for x in g) / len(g)
    second = sum(x * x / 3 for x in g) / len(g)
    return mean, math.sqrt(max(second - mean * mean, 0.0))


@dataclass(frozen=True)
class Variant:
    """One setting of a law: its states, per-gap spreads, and parameters."""

    params: tuple[tuple[str, str], ...]
    states: dict[Method, StateFingerprint]
    spread_us: dict[Method, tuple[int, ...]]


@dataclass(frozen=True)
class Law:
    name: str
    params: tuple[str, ...]  # every parameter, in display order
    #: which parameters each state reads (the others it cannot tell)
    reads: dict[Method, tuple[str, ...]]
    variant: Callable[[dict[str, int]], Variant]
    #: parameter -> function(state fingerprints) -> the value read off the
    #: timings, where a grid value would be coarser than the measurement
    read_off: dict[str, Callable] | None = None
    #: closing states: the time (µs) after the first retransmission within
    #: which the stack retransmits, whatever the RTT, from a variant's
    #: parameter values (the matcher's optional/limit windows)
    budget_us: Callable[[dict[str, str]], float | None] | None = None


# --- Linux ------------------------------------------------------------------------------


def _doubling(first_us: float, n: int) -> list[float]:
    return [min(first_us * 2**k, TCP_RTO_MAX_US) for k in range(n)]


def _late(gaps: Sequence[float]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Gaps with their mean lateness, and the spread of each arrival (the
    database's ``Spread``: the lateness of every gap before it, plus 1 %)."""
    out, spr, var = [], [], 0.0
    for t in gaps:
        m, s = lateness_us(t)
        out.append(round(t + m))
        var += s * s + (0.01 * t) ** 2
        spr.append(round(math.sqrt(var) + 2_000))
    return tuple(out), tuple(spr)


def linux_orphan_budget_us(orphan_retries: int) -> float:
    """tcp_model_timeout(boundary = tcp_orphan_retries or 8, TCP_RTO_MIN)."""
    n = orphan_retries or 8
    thresh = int(math.log2(TCP_RTO_MAX_US // TCP_RTO_MIN_US))  # 9
    if n <= thresh:
        return ((2 << n) - 1) * TCP_RTO_MIN_US
    return ((2 << thresh) - 1) * TCP_RTO_MIN_US + (n - thresh) * TCP_RTO_MAX_US


def _linux_budget(params: dict[str, str]) -> float | None:
    """The orphan budget of a variant (values merged as ``5 or 6``: the
    smallest, so that every retransmission it sends is due)."""
    vals = [int(v) for v in params.get("tcp_orphan_retries", "").split(" or ") if v.isdigit()]
    return min(linux_orphan_budget_us(v) for v in vals) if vals else None


def linux_orphan_count(rto_us: float, orphan_retries: int) -> int:
    """FIN retransmissions of an orphaned Linux socket (tcp_write_timeout,
    retransmits_timed_out, tcp_model_timeout with rto_base TCP_RTO_MIN)."""
    budget = linux_orphan_budget_us(orphan_retries)
    sent, t, first = 0, 0.0, None
    for rto in _doubling(rto_us, 64):
        t += rto  # the timer fires
        if first is not None and t - first >= budget:
            break
        first = t if first is None else first
        sent += 1
    return sent


def _linux_variant(p: dict[str, int]) -> Variant:
    states, spreads = {}, {}
    n_syn = p["tcp_synack_retries"]
    gaps, spr = _late(_doubling(TCP_TIMEOUT_INIT_US, n_syn))
    states[Method.SYN_RCVD] = StateFingerprint(Method.SYN_RCVD, _window_s(gaps), gaps)
    spreads[Method.SYN_RCVD] = spr
    c = LAW_CONNECT_US
    rto = c + max(2 * c, p["rto_min"])
    count = linux_orphan_count(rto, p["tcp_orphan_retries"])
    gaps, spr = _late(_doubling(rto, count))
    for m in (Method.LAST_ACK, Method.FIN_WAIT1):
        states[m] = StateFingerprint(m, _window_s(gaps), gaps, c)
        spreads[m] = spr
    params = tuple(
        (k, _fmt(k, p[k])) for k in ("tcp_synack_retries", "tcp_orphan_retries", "rto_min")
    )
    return Variant(params, states, spreads)


def _window_s(gaps: Sequence[int]) -> int:
    """A listening window long enough to say no packet came after the last."""
    total = sum(gaps)
    last = gaps[-1] if gaps else TCP_TIMEOUT_INIT_US
    return max(3, math.ceil((total + 2 * last) / 1e6))


def _fmt(key: str, v: int) -> str:
    if key == "rto_min":
        return f"{v // 1000}ms" if v % 1_000_000 else f"{v // 1_000_000}s"
    return str(v)


def _rto_min_read_off(fingerprints: Sequence[StateFingerprint]) -> str | None:
    """rto_min from the first FIN gap: RTO = RTT + max(2 RTT, rto_min), less
    the timer's mean lateness. LAST_ACK first (in FIN_WAIT1 the FIN may wait
    behind the response's own retransmission); the smallest of the tries (an
    RTO is only ever inflated: a late RTT sample, a retransmitted handshake).
    Our Connect is not the server's RTT sample: on a jittery path they differ
    by up to the RTT itself, so rto_min is read only where it dominates
    (more than 4 RTTs), else it is said to be hidden."""
    for method in (Method.LAST_ACK, Method.FIN_WAIT1):
        firsts = sorted(
            (fp.gaps_us[0], fp.connect_us)
            for fp in fingerprints
            if fp.method is method and fp.gaps_us and fp.connect_us is not None
        )
        if not firsts:
            continue
        g, c = firsts[0]
        rto = g - lateness_us(g)[0]
        if rto - c > 4 * c:
            return f"~{(rto - c) / 1000:.0f}ms"
        return f"<={(rto - c) / 1000:.0f}ms (the RTT hides it)"
    return None


LAWS: dict[str, Law] = {
    "linux": Law(
        "linux",
        ("tcp_synack_retries", "tcp_orphan_retries", "rto_min"),
        {
            Method.SYN_RCVD: ("tcp_synack_retries",),
            Method.LAST_ACK: ("tcp_orphan_retries", "rto_min"),
            Method.FIN_WAIT1: ("tcp_orphan_retries", "rto_min"),
        },
        _linux_variant,
        {"rto_min": _rto_min_read_off},
        _linux_budget,
    ),
}


# --- the Law line -------------------------------------------------------------------------

_UNITS = {"ms": 1_000, "s": 1_000_000, "us": 1}
MAX_VARIANTS = 2_000


def expand(text: str, where: str) -> tuple[Law, list[Variant]]:
    """A ``Law`` line's variants: one per distinct schedule; settings that give
    the same schedules are one variant whose values read ``0 or 8``."""
    law, combos = parse_law_line(text, where)
    merged: dict[tuple, list[Variant]] = {}
    for p in combos:
        v = law.variant(p)
        key = tuple(sorted((m.value, fp) for m, fp in v.states.items()))
        merged.setdefault(key, []).append(v)
    out = []
    for group in merged.values():
        params = []
        for i, (k, _) in enumerate(group[0].params):
            vals = list(dict.fromkeys(v.params[i][1] for v in group))
            params.append((k, " or ".join(vals)))
        out.append(Variant(tuple(params), group[0].states, group[0].spread_us))
    return law, out


def parse_law_line(text: str, where: str) -> tuple[Law, list[dict[str, int]]]:
    """``NAME PARAM=VALUES ...`` -> the law and every combination of values."""
    parts = text.split()
    if not parts or parts[0] not in LAWS:
        raise DatabaseError(f"{where}: Law needs a known law name ({', '.join(LAWS)})")
    law = LAWS[parts[0]]
    values: dict[str, list[int]] = {}
    for tok in parts[1:]:
        key, sep, spec = tok.partition("=")
        if not sep or key not in law.params:
            raise DatabaseError(
                f"{where}: Law {law.name}: unknown parameter {key!r} "
                f"(expected {', '.join(law.params)})"
            )
        if key in values:
            raise DatabaseError(f"{where}: Law {law.name}: {key} given twice")
        values[key] = _parse_values(spec, key, where)
    missing = [k for k in law.params if k not in values]
    if missing:
        raise DatabaseError(f"{where}: Law {law.name}: missing {', '.join(missing)}")
    combos = [dict(zip(law.params, c, strict=True))
              for c in itertools.product(*(values[k] for k in law.params))]  # fmt: skip
    if len(combos) > MAX_VARIANTS:
        raise DatabaseError(
            f"{where}: Law {law.name}: {len(combos)} combinations (at most {MAX_VARIANTS})"
        )
    return law, combos


def _parse_values(spec: str, key: str, where: str) -> list[int]:
    unit_m = re.fullmatch(r"(.*?)(ms|us|s)?", spec)
    body, unit = unit_m.group(1), unit_m.group(2)
    out: list[int] = []
    try:
        if re.fullmatch(r"\d+\.\.\d+", body):
            a, b = (int(x) for x in body.split(".."))
            if b < a or b - a > 1000:
                raise ValueError
            nums = list(range(a, b + 1))
            out = [n * _UNITS.get(unit or "us", 1) if unit else n for n in nums]
        else:
            for v in body.split(","):
                m = re.fullmatch(r"(\d+)(ms|us|s)?", v)
                if not m:
                    raise ValueError
                u = m.group(2) or unit
                out.append(int(m.group(1)) * _UNITS[u] if u else int(m.group(1)))
    except (ValueError, KeyError):
        raise DatabaseError(
            f"{where}: Law value {key}={spec[:40]!r}: expected a..b or a comma list"
        ) from None
    if not out or len(set(out)) != len(out):
        raise DatabaseError(f"{where}: Law value {key}={spec[:40]!r}: empty or repeated")
    return out
