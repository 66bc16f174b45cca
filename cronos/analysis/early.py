"""Early verdicts: stop listening once more packets cannot change the answer.

A pure function of a partial observation (what a probe has timed so far), the
time listened, and the database. Every signature that still explains the
partial series (the matcher's ``success`` for it, with a posterior of at
least ``MIN_POSTERIOR``) predicts a future: the
packets (and final RST) it expects after the last one seen. A prediction whose
first event is overdue (``now`` past it by more than its tolerance) has been
contradicted and drops out. When every remaining signature predicts the same
future (same number of events, at the same times within tolerance), waiting
can only confirm what they share: the verdict cannot change, so the probe
stops. When nothing explains the series ("no match"), there is no early stop:
the probe listens to the end, as with ``--full``.

The expensive part (one ``match``) does not depend on the time listened, only
on the series so far, so it is memoised on a quantised key: a fleet of hosts
with the same stack costs one match per distinct prefix, not one per host.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace

from ..model import Method, Observation, Status
from .db import Database
from .match import match

TOP = 8  # candidates considered
MIN_GAPS = 3  # evidence before stopping while some signature still expects packets
QUANTUM_US = 2_000  # prefix key resolution
Z = 3.0  # an event is overdue Z tolerances after its expected time
MIN_TOL_US = 20_000
MIN_POSTERIOR = 0.001  # a candidate less likely than this cannot change the verdict
LAW_MIN_POSTERIOR = 0.0001  # the same for one setting of a family
REL_TOL = 0.05


@dataclass(frozen=True)
class Future:
    """What one still-fitting signature expects after the last packet seen."""

    name: str
    events_us: tuple[int, ...]  # from the first packet of the series
    tol_us: tuple[int, ...]
    #: a setting of a family (a Law block): it cannot make the probe stop, only
    #: keep it listening while the others bet on a packet it does not expect
    #: (``decide_from``); a family lists settings nobody uses, which must not
    #: keep every host of the family listening to the end
    weak: bool = False


@dataclass(frozen=True)
class Decision:
    stop: bool
    recheck_us: int | None  # from the first packet: when the answer may change
    reason: str


def _tol(t_us: float) -> int:
    return int(max(MIN_TOL_US, REL_TOL * t_us))


def futures(partial: Observation, db: Database) -> tuple[Future, ...] | None:
    """Futures of the signatures that still explain ``partial`` (None: no match)."""
    fp = partial.fingerprint
    # as if listening stopped at the last packet: no expected packet is due yet
    last_us = sum(fp.gaps_us)
    probe_fp = replace(fp, time_s=max(1, int(last_us // 1_000_000) + 1), listened_us=last_us)
    res = match([replace(partial, fingerprint=probe_fp, status=Status.OK)], db, top=TOP)
    if res.no_match:
        return None
    out = []
    for c in res.candidates:
        how = c.how[0] if c.how else None
        if how is None or not how.success or how.unexplained:
            continue
        # a family (a Law block) spreads its mass over its settings: one
        # setting counts from LAW_MIN_POSTERIOR on, as a weak future
        floor = LAW_MIN_POSTERIOR if c.signature.law_block else MIN_POSTERIOR
        if c.confidence < floor:
            continue
        sig_fp = c.signature.states.get(fp.method)
        if sig_fp is None:
            continue
        times, rst = how.expected_us(sig_fp)
        seen = [p for p in how.positions if p >= 0]
        last = max(seen) if seen else (1 if how.first_lost else 0)
        events = times[last + 1 :]
        if rst is not None and fp.rst_us is None:
            events.append(rst)
        weak = bool(c.signature.law_block)
        out.append(Future(c.name, tuple(round(e) for e in events), tuple(_tol(e) for e in events),
                          weak))  # fmt: skip
    return tuple(out)


def _same(a: Future, b: Future) -> bool:
    if len(a.events_us) != len(b.events_us):
        return False
    return all(
        abs(x - y) <= max(tx, ty) * Z
        for x, y, tx, ty in zip(a.events_us, b.events_us, a.tol_us, b.tol_us, strict=True)
    )


def _deadline(f: Future, k: int) -> float:
    return f.events_us[k] + Z * f.tol_us[k]


def _next_deadline(f: Future, listened_us: int) -> float | None:
    """When ``f`` is contradicted: its next event overdue, and, when it
    expects another after that one, that one too (one missing packet may be
    the path's loss; two in a row hardly: a series cut short by one lost
    packet must not name a stack that sends fewer). None: nothing expected."""
    if not f.events_us:
        return None
    if len(f.events_us) >= 2 and listened_us > _deadline(f, 0):
        return _deadline(f, 1)
    return _deadline(f, 0)


def decide_from(fut: tuple[Future, ...] | None, listened_us: int, n_gaps: int) -> Decision:
    """The time-dependent part: drop contradicted predictions, compare the rest.

    The database is not the world: a stack it lacks may share a few first
    packets with one it has. So while a signature still expects packets, the
    probe stops only after ``MIN_GAPS`` retransmissions; when every fitting
    signature's series is already complete, the verdict is final at once."""
    if fut is None or not fut:
        return Decision(False, None, "no signature explains the series yet")
    every = [f for f in fut if not f.events_us or listened_us <= _next_deadline(f, listened_us)]
    alive = [f for f in every if not f.weak]
    if not alive:
        return Decision(False, None, "every prediction is overdue")
    first = alive[0]
    complete = all(not f.events_us for f in alive)
    agree = all(_same(first, f) for f in alive[1:]) and (complete or n_gaps >= MIN_GAPS)
    # stopping while they expect a packet is a bet that it comes: a setting of
    # a family that expects otherwise (it would read the setting) keeps the
    # probe listening until one side is overdue
    if agree and not (first.events_us and any(not _same(first, f) for f in every if f.weak)):
        return Decision(True, None, f"{len(alive)} fitting signature(s) agree on what follows")
    pending = [d for f in every if (d := _next_deadline(f, listened_us)) is not None]
    # 1 ms past the first pending deadline: by then that prediction is overdue
    return Decision(False, int(min(pending)) + 1000 if pending else None, "predictions differ")


class EarlyStopper:
    """Memoised ``futures`` + ``decide_from`` for the engine (one per scan)."""

    def __init__(self, db: Database, cache_size: int = 4096):
        self.db = db
        self.cache: OrderedDict[tuple, tuple[Future, ...] | None] = OrderedDict()
        self.cache_size = cache_size
        self.matches = 0

    def decide(self, partial: Observation, listened_us: int) -> Decision:
        if partial.status is not Status.OK or not partial.arrivals_us:
            return Decision(False, None, "nothing timed yet")
        fp = partial.fingerprint
        if partial.method is not Method.SYN_RCVD and fp.connect_us is None:
            return Decision(False, None, "no RTT")
        key = (
            partial.method,
            partial.features,
            tuple(round(g / QUANTUM_US) for g in fp.gaps_us),
            None if fp.connect_us is None else round(fp.connect_us / QUANTUM_US),
            fp.rst_us is not None,
        )
        fut = self.cache.get(key, ...)
        if fut is ...:
            fut = futures(partial, self.db)
            self.matches += 1
            self.cache[key] = fut
            if len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)
        else:
            self.cache.move_to_end(key)
        return decide_from(fut, listened_us, fp.nb_pkt)


def step(
    stopper: EarlyStopper, probe, now: float, partial: Observation | None = None
) -> tuple[float | None, float | None]:
    """Ask ``stopper`` about a running probe at ``now`` (a capture time, or a
    recheck's own time, so that a replay takes the very same decisions).

    Stops the probe when its verdict is final. Returns ``(verdict_s, recheck)``:
    seconds from our SYN to the verdict if it stopped, and the time at which to
    ask again (always later than ``now``), if any. ``partial``: the probe's
    ``result()``, when the caller has it from an earlier call with nothing
    received since."""
    if partial is None:
        partial = probe.result()
    if not partial.arrivals_us:
        return None, None
    listened_us = int((now - partial.started_at) * 1e6) - partial.arrivals_us[0]
    d = stopper.decide(partial, listened_us)
    if d.stop:
        verdict_s = now - partial.started_at
        probe.stop_early(now, f"early stop at {verdict_s:.1f} s: {d.reason}")
        return verdict_s, None
    if d.recheck_us is not None:
        when = partial.started_at + (partial.arrivals_us[0] + d.recheck_us) / 1e6
        if when > now:  # only forward: a recheck must see more time pass
            return None, when
    return None, None
