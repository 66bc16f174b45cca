"""Build a database signature from repeated measurements (pure).

Per state, the tries that reached the state (status ok) and saw the most
common number of retransmissions are combined: each arrival (from the first
packet of the series) at its earliest across tries, the least RTT
(``Connect=``), the median final RST delay, and, as ``Spread``, the spread of
each arrival across tries (its standard deviation, floored at 1 ms and at 1 %
of the arrival time: timer quantisation), as the matcher reads it.

The earliest, not the median: a timer only ever fires late (Linux's timer
wheel rounds a 4 s timeout up by 0 to 256 ms; a busy machine delays it more),
and the matcher models an arrival as the schedule plus a delay that is never
negative. A median at the top of the rounding range would make an on-time
packet of the same stack look early, which no path explains.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from datetime import date

from ..errors import UsageError
from ..model import Method, Observation, StateFingerprint, Status
from .db import OsClass, Signature

SPREAD_FLOOR_US = 1000
#: Retransmission timers are quantised: Linux's timer wheel rounds a timeout up
#: by 0 to 1/8 of a level's grain (HZ=250: 0-32 ms at 1-2 s, 0-256 ms at 4-16 s:
#: a standard deviation of 9 to 74 ms, 0.5 to 1.8 %). A few tries under-sample
#: that, so each arrival's spread is at least this fraction of its time.
SPREAD_FLOOR_FRACTION = 0.01


def _combine(
    obs: list[Observation], floor_fraction: float = SPREAD_FLOOR_FRACTION
) -> tuple[StateFingerprint, tuple[int, ...], int | None]:
    counts = Counter(o.fingerprint.nb_pkt for o in obs)
    nb = max(counts, key=lambda n: (counts[n], n))
    same = [o.fingerprint for o in obs if o.fingerprint.nb_pkt == nb]
    first = [min(sum(fp.gaps_us[: i + 1]) for fp in same) for i in range(nb)]
    gaps = tuple(b - a for a, b in zip([0, *first], first, strict=False))
    spread = []
    for i in range(nb):  # spread of the arrival time of retransmission i+1
        arrivals = [sum(fp.gaps_us[: i + 1]) for fp in same]
        sd = statistics.stdev(arrivals) if len(arrivals) > 1 else 0.0
        floor = max(SPREAD_FLOOR_US, floor_fraction * statistics.median(arrivals))
        spread.append(round(max(floor, sd)))
    conns = [fp.connect_us for fp in same if fp.connect_us is not None]
    rsts = [fp.rst_us for fp in same if fp.rst_us is not None]
    rst = round(statistics.median(rsts)) if len(rsts) * 2 > len(same) else None
    rst_spread = None
    if rst is not None:
        sd = statistics.stdev(rsts) if len(rsts) > 1 else 0.0
        rst_spread = round(max(SPREAD_FLOOR_US, floor_fraction * rst, sd))
    fp = StateFingerprint(
        method=same[0].method,
        time_s=max(f.time_s for f in same),
        gaps_us=gaps,
        connect_us=min(conns) if conns else None,
        rst_us=rst,
    )
    return fp, tuple(spread), rst_spread


def build_signature(
    observations: Sequence[Observation],
    name: str,
    classes: Sequence[OsClass],
    cpes: Sequence[str] = (),
    source: str = "",
    spread_floor: float = SPREAD_FLOOR_FRACTION,
) -> Signature:
    """A Signature from the ok observations of one target/port (all states)."""
    by_method: dict[Method, list[Observation]] = {}
    for o in observations:
        if o.status is Status.OK:
            by_method.setdefault(o.method, []).append(o)
    if not by_method:
        statuses = ", ".join(
            sorted({f"{o.method.state_name}: {o.status.value}" for o in observations})
        )
        raise UsageError(f"nothing to learn: no state was measured ({statuses or 'no result'})")
    states: dict[Method, StateFingerprint] = {}
    spread: dict[Method, tuple[int, ...]] = {}
    rst_spread: dict[Method, int] = {}
    for m in Method:
        if m in by_method:
            fp, sp, rs = _combine(by_method[m], spread_floor)
            states[m] = fp
            if sp:
                spread[m] = sp
            if rs is not None:
                rst_spread[m] = rs
    syn = by_method.get(Method.SYN_RCVD, [])
    features = next((o.features for o in syn if o.features is not None), None)
    tries = max(len(v) for v in by_method.values())
    src = source or (
        f"lab measured by cron-os learn on {date.today().isoformat()}, "
        f"{tries} tr{'y' if tries == 1 else 'ies'} per state"
    )
    return Signature(
        name=name,
        classes=tuple(classes),
        cpes=tuple(cpes),
        sources=(src,),
        features=features,
        states=states,
        spread_us=spread,
        rst_spread_us=rst_spread,
    )


def parse_class(text: str) -> OsClass:
    """``--class``: the loader's own rule (``vendor | family | generation |
    device type``, vendor and family required, or ``unknown``)."""
    from ..errors import DatabaseError
    from .db import parse_class as db_parse_class

    try:
        return db_parse_class(text, "--class")
    except DatabaseError as exc:
        raise UsageError(f"bad --class {text!r}: {str(exc).split(': ', 1)[1]}") from None
