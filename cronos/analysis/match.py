"""The matcher: a pure function from observations to a scored, calibrated verdict.

Model (``docs/matching.md`` explains it with the figures):

* **Timing.** A stack emits its series at ``T_0 = 0 < T_1 < ...`` (the
  signature's schedule, relative to its first packet), each ``T_j`` moved by
  the stack's own timer noise (``Spread``; a common offset of everything after
  the first packet, ``...Offset``, is fitted within its spread). Packet ``i``
  arrives at ``tau + T_j + q_i``: ``tau`` (when the series started plus the
  base one-way delay) is unknown and integrated out; ``q_i >= 0`` is queueing
  delay, one-sided, exponential with a scale ``theta`` that is one per path
  (shared by every packet, state and try of a target) and itself unknown: it
  is integrated over a grid of scales from 1 ms to 1.4 s with prior weights
  (``PathModel.theta_weights``), which makes the marginal delay heavy-tailed.
* **Loss.** Any packet, the first one and the RST included, is lost with
  probability ``loss``; which observed packet is which expected one is found
  by aligning in time (the first packet seen may be the first or the second
  one sent). Expected packets after the listening window are not lost, only
  unseen; observed packets after the signature's own window are unknown to it.
* **Header.** Each field of the first SYN-ACK keeps its value with probability
  ``1 - change[field]``; a changed value is drawn from the database's own
  distribution of that field (an MSS clamped below, options stripped, a TTL
  lowered by up to ``MAX_HOPS`` routers are the likely changes).
* **Unknown stacks.** Beside the signatures, a generic stack (any first gap,
  any backoff, any header, or a variant of a known stack) competes with prior
  probability ``unknown_prior`` against all signatures together: "no match"
  is the verdict when its posterior reaches ``NO_MATCH``. So the answer is a
  posterior probability, not a distance against a threshold.
* **Evidence.** A signature built from N examples has its spreads widened by
  ``sqrt(1 + 1/N)`` (the uncertainty of a mean of N) and a prior weight
  ``N / (N + 1)``. Broad spreads do not help a signature explain a noisy
  series: the path's queueing explains noise for every signature alike, and
  a broad schedule has a lower density where the observation is.

Costs are negative log-likelihoods in nats (time densities per microsecond).
``calibrate`` (``cronos.analysis.calibrate``) estimates the path parameters and the
stacks' popularity from a batch of observations (EM) and returns a
``PathModel`` to match them with.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import math
import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from ..model import (
    Method,
    Observation,
    StateFingerprint,
    Status,
    SynAckFeatures,
    fingerprint_lines,
    port_header,
    schedule_us,
)
from . import _kernel
from .db import Database, Signature

# --- the path model ---------------------------------------------------------------------

#: Queueing delay scales integrated over (µs): one per path.
THETA_GRID_US = np.array([1e3, 3e3, 8e3, 20e3, 45e3, 90e3, 180e3, 350e3, 700e3, 1.4e6])
_THETA_PRIOR = (0.10, 0.12, 0.14, 0.14, 0.13, 0.12, 0.10, 0.08, 0.05, 0.02)
MAX_HOPS = 40
TIE = 0.05  # nats: candidates this close to the best are named together
#: nats: a Law block named first lists, with the values read, every setting
#: its timings do not rule out: those within a likelihood ratio of 8
#: (Royall's "fairly strong" evidence) of the best setting's
LAW_SET = math.log(8.0)
MIN_CONFIDENCE = 0.05
#: posterior of the unknown stack above which the verdict is "no match" (below
#: it, a confidence under 0.5 already says the name is a guess)
NO_MATCH = 0.85


@dataclass(frozen=True)
class PathModel:
    """What the network (and the users) do to observations; ``calibrate``
    estimates it from a batch, the defaults are a prior for a single target."""

    loss: float = 0.05  # any packet
    rst_loss: float = 0.15  # a final RST (firewalls drop them)
    theta_weights: tuple[float, ...] = _THETA_PRIOR  # prior over THETA_GRID_US
    rtt_median_us: float = 80_000.0  # lognormal prior of the first SYN-ACK's RTT
    rtt_sigma: float = 1.4
    change: MappingProxyType = field(
        default_factory=lambda: MappingProxyType(
            {"window": 0.03, "ttl": 0.03, "df": 0.03, "mss": 0.03, "options": 0.03, "wscale": 0.03}
        )
    )
    #: prior probability that a target's stack is in no signature. One half:
    #: a held-out tenth of Hershel+'s stacks was otherwise named with
    #: confidence >= 0.5 in 46 % of cases (bench/accuracy.py, leave-stacks-out;
    #: 17 % at one half) for a known stack's "no match" 3.0 -> 3.4 %
    unknown_prior: float = 0.5
    #: per-signature prior weights (popularity), index-aligned with the database;
    #: None: every signature by its evidence only
    popularity: tuple[float, ...] | None = None
    #: where the parameters come from ("default", or "estimated from N targets")
    origin: str = "default"

    def theta_logw(self) -> np.ndarray:
        return _theta_logw(self.theta_weights)

    def mean_delay_us(self) -> float:
        return _mean_delay(self.theta_weights)


@functools.lru_cache(maxsize=64)
def _theta_logw(weights: tuple[float, ...]) -> np.ndarray:
    w = np.asarray(weights, dtype=float)
    out = np.log(np.maximum(w, 1e-12) / w.sum())
    out.flags.writeable = False
    return out


@functools.lru_cache(maxsize=64)
def _mean_delay(weights: tuple[float, ...]) -> float:
    w = np.asarray(weights, dtype=float)
    return float((w * THETA_GRID_US).sum() / w.sum())


DEFAULT_MODEL = PathModel()

# generic ("unknown stack") model
_GEN_FIRST = math.log(math.log(1e6))  # an unexplained packet: any gap in 1 ms .. 1000 s
_GEN_RST = math.log(math.log(1000.0))
_GEN_COUNT_RHO = 0.8  # number of retransmissions: geometric
_GEN_P_RST = 0.3
UNEXPLAINED = 4.6  # -log(0.01): a packet the signature does not predict, beyond the generic cost
GATE_US = 2_500_000.0  # an arrival this far from its expected time is not that packet
SPREAD_Z = 3.0  # common-offset fit within this many of its spreads
LAM_REF_US = 20_000.0  # queueing scale of the alignment's robust cost
LINUX_RTO_MIN_US = 200_000


# --- the compiled database --------------------------------------------------------------


class _Table:
    """Schedules of the signatures having one state, flattened for searchsorted."""

    def __init__(self, sigs: Sequence[Signature], idx: list[int], method: Method, evidence):
        self.idx = np.asarray(idx, dtype=np.int64)
        m = len(idx)
        self.nexp = np.zeros(m, dtype=np.int64)
        self.rst_t = np.full(m, np.nan)
        self.rst_s = np.zeros(m)
        self.time_us = np.zeros(m)
        self.off_sd = np.zeros(m)
        # the shift's slips (``Signature.offset_slip_us``): a second, wide
        # component of the shift's prior; the kernel fits a row both ways
        # and keeps the likelier (``off``: spread, slips' spread, the prior
        # cost of no slip, of a slip and its density beside the spread's)
        self.slip_sd = np.zeros(m)
        self.core_cost = np.zeros(m)
        self.slip_cost = np.zeros(m)
        self.rule_connect = np.full(m, np.nan)  # Linux-rule closing schedules: their Connect
        #: Linux closing schedules: after a retransmitted handshake they start
        #: from TCP_TIMEOUT_FALLBACK (``fallback``); another stack's block
        #: says itself what it does without an RTT sample
        self.linux_rule = np.zeros(m, dtype=bool)
        # Linux gives up on an orphaned FIN a fixed time after its first
        # retransmission (tcp_orphan_retries): retransmissions later than what
        # the signature saw after its first one may be missing when a longer
        # RTT stretches the schedule
        self.budget = np.full(m, np.inf)
        # a Linux stack's orphan budget is a fixed time: the signature saw
        # `budget` of it, and not the next retransmission (its last gap
        # doubled): beyond that, nothing comes
        self.limit_extra = np.full(m, np.inf)
        self.rto_min = np.full(m, LINUX_RTO_MIN_US)
        self.scale_sigma = np.array([LAW_SCALE_SIGMA if sigs[i].law_block else SCALE_SIGMA
                                     for i in idx])  # fmt: skip
        rows_t, rows_s = [], []
        for r, i in enumerate(idx):
            s = sigs[i]
            fp = s.states[method]
            cum = np.concatenate([[0.0], np.cumsum(fp.gaps_us, dtype=float)])
            sp = s.spread_us.get(method)
            if sp is None or len(sp) != fp.nb_pkt:
                spr = 30_000.0 + 0.01 * cum[1:]
            else:
                spr = np.asarray(sp, dtype=float)
            n_ev = evidence[i]
            spr = np.maximum(spr * math.sqrt(1 + 1 / n_ev), 1_000.0 + 0.001 * cum[1:])
            rows_t.append(cum)
            rows_s.append(np.concatenate([[0.0], spr]))
            self.nexp[r] = len(cum)
            self.time_us[r] = fp.time_s * 1e6
            self.off_sd[r] = max(s.offset_spread_us.get(method, 0), 1.0)
            slip = s.offset_slip_us.get(method)
            if slip is not None:
                eps = min(max(slip[2] / 100.0, 0.01), 0.5)
                # zero-centred, reaching the farthest slip: one spread beyond it
                self.slip_sd[r] = max(abs(slip[0]), abs(slip[1])) + self.off_sd[r]
                self.core_cost[r] = -math.log1p(-eps)
                self.slip_cost[r] = -math.log(eps) + math.log(self.slip_sd[r] / self.off_sd[r])
            if fp.rst_us is not None:
                self.rst_t[r] = cum[-1] + fp.rst_us
                rs = s.rst_spread_us.get(method, 30_000 + 0.01 * fp.rst_us)
                self.rst_s[r] = max(rs * math.sqrt(1 + 1 / n_ev), 1_000.0)
            if method is not Method.SYN_RCVD and fp.connect_us is not None and fp.gaps_us:
                # the first FIN retransmission waits one RTO, Linux's being
                # RTT + max(2 RTT, rto_min) after one RTT sample: the
                # signature's rto_min is what its first gap says beyond that
                c = float(fp.connect_us)
                self.rule_connect[r] = c
                self.rto_min[r] = max(fp.gaps_us[0] - c, 2 * c)
                self.budget[r] = cum[-1] - cum[1] if len(cum) > 2 else 0.0
                if s.family == "Linux":
                    self.linux_rule[r] = True
                    self.limit_extra[r] = 1.1 * (self.budget[r] + 2 * fp.gaps_us[-1])
                law_budget = _law_budget(s)
                if law_budget is not None:  # a law knows its budget, not only its count
                    self.budget[r] = law_budget / 1.1
                    self.limit_extra[r] = 1.1 * law_budget
        self.start = np.zeros(m + 1, dtype=np.int64)
        self.start[1:] = np.cumsum(self.nexp)
        self.t = np.concatenate(rows_t) if rows_t else np.zeros(0)
        self.s = np.concatenate(rows_s) if rows_s else np.zeros(0)
        self.row = np.repeat(np.arange(m), self.nexp)
        self.big = float(max(self.t.max(initial=0.0), 1e6) * 8 + 1e12)
        self.key = self.row * self.big + self.t
        self.inv = {int(i): r for r, i in enumerate(idx)}
        # both anchors (first packet seen = expected 0, or 1) as 2 x m virtual rows
        k0 = np.repeat([0, 1], m)
        row2 = np.concatenate([np.arange(m)] * 2)
        self.k0 = k0
        self.row2 = row2
        self.valid2 = self.nexp[row2] > k0
        self.anchor_pos = self.start[row2] + np.minimum(k0, self.nexp[row2] - 1)
        self.lo = self.anchor_pos + 1
        self.hi = self.start[row2 + 1] - 1
        self.rowbase = row2 * self.big
        self._fallback = None
        self.ones = np.ones(m)
        self.ones.flags.writeable = False
        self.unit_limits = None
        # signatures sharing one schedule (a Law's variants differ in other
        # states): the kernel runs on one row each (``_timing``)
        self.uniq: tuple[_Table, np.ndarray] | None = None
        self._uniq_groups: tuple[np.ndarray, np.ndarray] | None = None
        self._rows_of: tuple[np.ndarray, np.ndarray] | None = None
        self._unique_rows: tuple[np.ndarray, np.ndarray] | None = None
        self.idx_i64 = np.ascontiguousarray(idx, dtype=np.int64)
        self._least: dict = {}
        self.off = np.ascontiguousarray(
            np.column_stack([self.off_sd, self.slip_sd, self.core_cost, self.slip_cost])
        )

    def rows_of(self, n_sig: int) -> tuple[np.ndarray, np.ndarray]:
        """Per signature: 1 if it has a row here, and its row (-1: none);
        read only."""
        if self._rows_of is None or len(self._rows_of[0]) != n_sig:
            covered = np.zeros(n_sig, dtype=np.int64)
            covered[self.idx] = 1
            row_of = np.full(n_sig, -1, dtype=np.int64)
            row_of[self.idx] = np.arange(len(self.idx))
            covered.flags.writeable = row_of.flags.writeable = False
            self._rows_of = (covered, row_of)
        return self._rows_of

    def unique_rows(self, n_sig: int) -> tuple[np.ndarray, np.ndarray]:
        """Row -> its kernel row (``uniq``'s, else itself), and per signature
        its kernel row (-1: none); read only."""
        if self._unique_rows is None or len(self._unique_rows[1]) != n_sig:
            inv = self.uniq[1] if self.uniq is not None else np.arange(len(self.idx))
            inv = np.ascontiguousarray(inv, dtype=np.int64)
            _covered, row_of = self.rows_of(n_sig)
            urow = np.where(row_of >= 0, inv[np.maximum(row_of, 0)], -1)
            inv.flags.writeable = urow.flags.writeable = False
            self._unique_rows = (inv, urow)
        return self._unique_rows

    def least_headers(self, hdr: np.ndarray, var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per kernel row, the least of its signatures' header costs ``hdr``
        and ``var`` (per signature; memoised by identity: ``header_costs``
        returns one array per header)."""
        key = (id(hdr), id(var))
        hit = self._least.get(key)
        if hit is not None and hit[0] is hdr and hit[1] is var:
            return hit[2]
        h, v = hdr[self.idx], np.broadcast_to(var, hdr.shape)[self.idx]
        if self.uniq is not None:
            order, starts = self.uniq_groups()
            h = np.minimum.reduceat(h[order], starts)
            v = np.minimum.reduceat(v[order], starts)
        out = (np.ascontiguousarray(h, dtype=float), np.ascontiguousarray(v, dtype=float))
        if len(self._least) >= 1024:  # 9 KiB each here
            self._least.clear()
        self._least[key] = (hdr, var, out)
        return out

    def uniq_groups(self) -> tuple[np.ndarray, np.ndarray]:
        """The rows ordered by their unique row, and where each unique row's
        run starts (for ``np.minimum.reduceat``; every unique row has one)."""
        if self._uniq_groups is None:
            inv = self.uniq[1]
            order = np.argsort(inv, kind="stable")
            starts = np.flatnonzero(np.diff(inv[order], prepend=-1))
            self._uniq_groups = (order, starts)
        return self._uniq_groups

    def fallback(self) -> _Table | None:
        """The same rows, each Linux closing schedule replaced by Linux's after
        a retransmitted handshake: 3 s, then doubling (up to 120 s), as many
        retransmissions, a spread of 1 % + 5 ms; None if no row is Linux's."""
        if not self.linux_rule.any():
            return None
        if self._fallback is None:
            fb = copy.copy(self)
            fb._least, fb._unique_rows = {}, None
            t, sp = self.t.copy(), self.s.copy()
            for r in np.flatnonzero(self.linux_rule):
                b, e = self.start[r], self.start[r + 1]
                rto = np.minimum(FALLBACK_RTO_US * 2.0 ** np.arange(e - b - 1), 120e6)
                cum = np.concatenate([[0.0], np.cumsum(rto)])
                t[b:e] = cum
                sp[b:e] = np.concatenate([[0.0], 5_000.0 + 0.01 * cum[1:]])
            fb.t, fb.s = t, sp
            fb.key = fb.row * fb.big + t
            fb.budget = np.full(len(self.idx), np.inf)  # its own count, whatever the budget
            fb.limit_extra = np.full(len(self.idx), np.inf)
            fb.rule_connect = np.full(len(self.idx), np.nan)
            fb.rst_t = np.full(len(self.idx), np.nan)
            fb._fallback = None
            fb.unit_limits = None
            fb.off = self.off.copy()
            fb.off[:, 1] = 0.0  # its own schedule: no slip learned for it
            self._fallback = fb
        return self._fallback


def _law_budget(sig: Signature) -> float | None:
    if not sig.law_block:
        return None
    from .laws import LAWS

    law = LAWS[sig.law]
    return law.budget_us(dict(sig.params)) if law.budget_us is not None else None


def _table(sigs: Sequence[Signature], idx: list[int], method: Method, evidence) -> _Table:
    """The table of ``idx``'s schedules in ``method``, with its unique rows."""
    tab = _Table(sigs, idx, method, evidence)
    first: dict[tuple, int] = {}
    inverse = []
    for i in idx:
        s = sigs[i]
        budget = _law_budget(s) if method is not Method.SYN_RCVD else None
        key = (s.states[method], s.spread_us.get(method), s.rst_spread_us.get(method),
               s.offset_spread_us.get(method), s.offset_slip_us.get(method),
               float(evidence[i]), s.family == "Linux",
               bool(s.law_block), budget)  # fmt: skip
        inverse.append(first.setdefault(key, len(first)))
    if len(first) < len(idx):
        reps = [0] * len(first)
        for pos in range(len(idx) - 1, -1, -1):
            reps[inverse[pos]] = idx[pos]
        tab.uniq = (_Table(sigs, reps, method, evidence), np.asarray(inverse, dtype=np.intp))
    return tab


def _evidence(sig: Signature) -> float:
    """How many examples a signature rests on (from its Source lines)."""
    best = 1.0
    for src in sig.sources:
        m = re.search(r"\((\d+) samples?\)", src) or re.search(r"(\d+) tries", src)
        if m:
            best = max(best, float(m.group(1)))
        elif src.startswith("source"):
            best = max(best, 3.0)  # constants from the code: exact, jitter unknown
    return best


_EVIDENCE_TEXT: dict[int, tuple[Signature, str]] = {}


def evidence_text(sig: Signature) -> str:
    """What a signature rests on, for the verdict (memoised per signature)."""
    hit = _EVIDENCE_TEXT.get(id(sig))
    if hit is not None and hit[0] is sig:
        return hit[1]
    if len(_EVIDENCE_TEXT) > 100_000:
        _EVIDENCE_TEXT.clear()
    text = _evidence_text(sig)
    _EVIDENCE_TEXT[id(sig)] = (sig, text)
    return text


def _evidence_text(sig: Signature) -> str:
    n = int(_evidence(sig))
    kinds = []
    for src in sig.sources:
        low = src.lower()
        kind = (
            "Hershel+" if "420os" in low else "Hershel" if "hershel" in low
            else "the 2003 talk" if low.startswith("talk")
            else "OS source" if low.startswith("source")
            else "lab" if low.startswith("lab") else "user"
        )  # fmt: skip
        if kind not in kinds:
            kinds.append(kind)
    what = "example" if n == 1 else "samples"
    return f"{n} {what} ({', '.join(kinds)})"


class _Header:
    """Header fields of every signature, and the database's distribution of each."""

    def __init__(self, sigs: Sequence[Signature], v6: bool = False):
        """``v6``: the table IPv6 observations are compared with (a block's
        IPv6 header where it has one, else its IPv4 one), every header as the
        stack's IPv4 equivalent."""
        f = [s.header_for(v6) for s in sigs]
        #: DF is known for a signature measured over IPv4 only
        self.df_known = np.array([x is not None and not x.v6 for x in f])
        f = [x.v4_equivalent() if x is not None else None for x in f]
        self.has = np.array([x is not None for x in f])
        self.win = np.array([x.window if x else -1 for x in f])
        #: a block without a header may still document its initial TTL (``Ttl``)
        self.ttl = np.array(
            [x.ttl if x else (s.init_ttl or -1) for x, s in zip(f, sigs, strict=True)]
        )
        self.ttl_only = ~self.has & (self.ttl > 0)
        self.df = np.array([x.df if x else False for x in f])
        self.mss = np.array([x.mss if x and x.mss is not None else -1 for x in f])
        self.ws = np.array([x.wscale if x and x.wscale is not None else -1 for x in f])
        self.opt_names = sorted({x.options for x in f if x is not None})
        where = {o: k for k, o in enumerate(self.opt_names)}
        self.opt_idx = np.array([where[x.options] if x else 0 for x in f], dtype=np.int64)
        known = [x for x in f if x is not None]
        self.q_win = _marginal([x.window for x in known], 65536)
        self.q_mss = _marginal([x.mss for x in known], 65536)
        self.q_opt = _marginal([x.options for x in known], 256)
        inits = [_initial_ttl(x.ttl) for x in known]
        self.q_init = _marginal(inits, 8)
        self.memo: dict[tuple, np.ndarray] = {}


def _marginal(values, n_possible: int):
    """q(v): the database's frequency of v, mixed with a uniform share for
    values it never shows."""
    counts: dict = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    total = max(len(values), 1)

    def q(v) -> float:
        return 0.7 * counts.get(v, 0) / total + 0.3 / n_possible

    return q


def _initial_ttl(ttl: int) -> int:
    for init in (32, 64, 128, 255):
        if ttl <= init:
            return init
    return 255


class _Compiled:
    def __init__(self, db: Database):
        sigs = db.signatures
        self.n = len(sigs)
        self.evidence = np.array([_evidence(s) for s in sigs])
        # a Law block's variants share one signature's prior
        weight = np.array([s.weight for s in sigs])
        self.log_prior = np.log(self.evidence / (self.evidence + 1.0)) + np.log(weight)
        from .laws import LAWS

        laws: dict[str, tuple] = {}  # block name -> (law, variant indices)
        for i, s in enumerate(sigs):
            if s.law_block:
                laws.setdefault(s.law_block, (LAWS[s.law], []))[1].append(i)
        self.laws = {b: (law, np.asarray(ix, dtype=np.intp)) for b, (law, ix) in laws.items()}
        self._law_groups: dict[tuple, tuple] = {}
        self._sigs = sigs
        self.tables: dict[Method, _Table] = {}
        for m in Method:
            idx = db.with_method(m)
            if idx:
                self.tables[m] = _table(sigs, idx, m, self.evidence)
        self.header = _Header(sigs)
        self._header6: _Header | None = None
        self.families = [s.family for s in sigs]
        fams = sorted({f for f in self.families if f})
        self.families_sorted = fams
        self.fam_index = np.array([fams.index(f) if f else -1 for f in self.families])
        self.n_fam = len(fams)
        self.fam_members = [np.flatnonzero(self.fam_index == f) for f in range(self.n_fam)]
        # a variant of a signature that stops earlier (another retries
        # setting) is part of the unknown stack, unless a Law block of its
        # family lists every retries setting: then it is a known signature
        lawful = {sigs[int(ix[0])].family for _law, ix in self.laws.values() if len(ix)}
        self.stops_early = np.array([not (s.family and s.family in lawful) for s in sigs])
        self.stops_early_f = self.stops_early.astype(float)
        self.zeros = np.zeros(self.n)  # header costs without a header
        self.stops_early_f.flags.writeable = self.zeros.flags.writeable = False
        self.prior_none = None  # (log prior, its log-sum-exp) without popularity
        self.prior_memo: dict = {}

    def header_for(self, v6: bool) -> _Header:
        """The header table of an observation's family (IPv6's built once, if
        ever needed, and the IPv4 one when no block has an IPv6 header)."""
        if not v6:
            return self.header
        if self._header6 is None:
            sigs = self._sigs
            own = any(s.features6 is not None for s in sigs)
            self._header6 = _Header(sigs, v6=True) if own else self.header
        return self._header6

    def law_groups(self, block: str, methods: frozenset) -> tuple:
        """A Law block's variants grouped by the values the observed states
        read: (the variants in group order, where each group starts, the read
        values of each group, the group of each variant in block order)."""
        hit = self._law_groups.get((block, methods))
        if hit is None:
            law, members = self.laws[block]
            read = {k for m in methods for k in law.reads.get(m, ())}
            where: dict[tuple, int] = {}
            gid = [where.setdefault(tuple((k, v) for k, v in self._sigs[i].params if k in read),
                                    len(where)) for i in members]  # fmt: skip
            g = np.asarray(gid, dtype=np.intp)
            order = np.argsort(g, kind="stable")
            starts = np.flatnonzero(np.diff(g[order], prepend=-1))
            # the members in group order, where each group starts, and the
            # read values of each group (a mapping, shared: read only)
            hit = self._law_groups[(block, methods)] = (
                members[order],
                starts,
                [dict(k) for k in where],
                g,
            )
        return hit

    def law_runs(self, block: str, methods: frozenset) -> tuple[np.ndarray, np.ndarray]:
        """``law_groups``' groups: the size of each, and each member's place."""
        key = ("runs", block, methods)
        hit = self._law_groups.get(key)
        if hit is None:
            members, starts, _names, _g = self.law_groups(block, methods)
            hit = (np.diff(np.append(starts, len(members))), np.arange(len(members)))
            self._law_groups[key] = hit
        return hit

    def stand_ins(self, timed):
        """For the signatures lacking some observed states, per family and per
        set of missing observations: (signatures, the family member standing
        in, log of the family's size, the observations concerned)."""
        out = []
        missing = np.zeros((self.n, len(timed)), dtype=bool)
        for k, (_o, tab, *_rest) in enumerate(timed):
            if tab is not None:
                missing[:, k] = True
                missing[tab.idx, k] = False
        if not missing.any():
            return out
        patterns: dict[tuple, list[int]] = {}
        for i in np.flatnonzero(missing.any(axis=1) & (self.fam_index >= 0)):
            patterns.setdefault((int(self.fam_index[i]), missing[i].tobytes()), []).append(i)
        for (fam, _key), sigs in patterns.items():
            which = np.flatnonzero(missing[sigs[0]])
            members = self.fam_members[fam]
            able = members[~missing[members][:, which].any(axis=1)]
            if not len(able):
                continue  # no member was seen in those states: generic, as it is
            cost = sum(timed[k][7][able] for k in which)
            member = int(able[int(np.argmin(cost))])
            out.append((np.asarray(sigs), member, math.log(len(able)) + STAND_IN, which))
        return out


_CACHE: dict[int, _Compiled] = {}


def _compiled(db: Database) -> _Compiled:
    c = _CACHE.get(id(db))
    if c is None:
        c = _CACHE[id(db)] = _Compiled(db)
        weakref.finalize(db, _CACHE.pop, id(db), None)
    return c


def prepare(db: Database) -> None:
    """Compile ``db``'s tables now (else at the first match). A long-running
    caller may then ``gc.freeze()``: the database's tens of thousands of
    objects live as long as the process, and a full garbage collection that
    walks them all pauses one match by about 20 ms (the CLI does both)."""
    _compiled(db)


# --- observations -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Obs:
    fp: StateFingerprint
    features: SynAckFeatures | None
    try_index: int
    a0_us: float | None  # first packet from the stimulus (SYN_RCVD), when known
    retried: bool = False  # closing states: our SYN was sent again (the handshake was lossy)

    @property
    def method(self) -> Method:
        return self.fp.method


def _normalise(items) -> list[_Obs]:
    out = []
    for i, it in enumerate(items, 1):
        if isinstance(it, Observation):
            if it.status not in (Status.OK, Status.ABORTED):  # aborted: Time = time listened
                continue
            a0 = None
            if it.method is Method.SYN_RCVD and it.arrivals_us:
                a0 = float(it.arrivals_us[0])
            # the probe notes a handshake it had to repeat (SYN sent N times)
            retried = it.method is not Method.SYN_RCVD and "SYN sent" in (it.note or "")
            out.append(_Obs(it.fingerprint, it.features, it.try_index, a0, retried))
        elif isinstance(it, StateFingerprint):
            out.append(_Obs(it, None, i, None))
        elif isinstance(it, tuple) and len(it) == 2 and isinstance(it[0], StateFingerprint):
            out.append(_Obs(it[0], it[1], i, None))
        else:
            raise TypeError(f"cannot match {type(it).__name__}")
    return out


def _listened(fp: StateFingerprint) -> float:
    """How long after the first packet of the series we surely listened (µs)."""
    if fp.listened_us is not None:
        return fp.listened_us - 50_000.0
    return fp.time_s * 1e6 - 1e6


def _rtt_cost(model: PathModel, rtt_us):
    """-log density (1/µs) of a first-SYN-ACK RTT (lognormal prior)."""
    x = np.maximum(np.asarray(rtt_us, dtype=float), 1.0)
    z = (np.log(x) - math.log(model.rtt_median_us)) / model.rtt_sigma
    return 0.5 * z * z + np.log(x * model.rtt_sigma * math.sqrt(2 * math.pi))


def _lognormal_mix(x: float, parts) -> float:
    """-log density per log-unit of x under a mixture of (weight, median, sigma)
    lognormals and (weight, lo, hi) log-uniforms (sigma None)."""
    lx = math.log(x)
    acc = 0.0
    for w, a, b in parts:
        if b is None:  # (w, (lo, hi), None)
            lo, hi = a
            if lo <= x <= hi:
                acc += w / math.log(hi / lo)
        else:
            z = (lx - math.log(a)) / b
            acc += w * math.exp(-0.5 * z * z) / (b * 2.5066282746310002)
    return -math.log(max(acc, 1e-300))


#: What retransmission schedules look like, for the unknown stack: a first
#: timeout of a few hundred ms to tens of seconds, then a backoff that
#: doubles (most stacks), stays (a constant or capped timer) or grows by
#: half, or anything else.
_GEN_FIRST_MIX = ((0.7, 2e6, 1.1), (0.3, (1e3, 1e9), None))
_GEN_RATIO_MIX = ((0.45, 2.0, 0.12), (0.15, 1.0, 0.08), (0.1, 1.5, 0.1), (0.3, (0.2, 8.0), None))


def generic_cost(o: _Obs, model: PathModel = DEFAULT_MODEL) -> float:
    """-log likelihood of an observation under the generic (unknown) stack."""
    gaps = [max(float(g), 1.0) for g in o.fp.gaps_us]
    n = len(gaps)
    cost = -math.log(1 - _GEN_COUNT_RHO) - n * math.log(_GEN_COUNT_RHO)
    prev = None
    for g in gaps:
        if prev is None:
            cost += math.log(g) + _lognormal_mix(g, _GEN_FIRST_MIX)
        else:
            cost += math.log(g) + _lognormal_mix(g / prev, _GEN_RATIO_MIX)
        prev = g
    if o.fp.rst_us is not None:
        cost += -math.log(_GEN_P_RST) + math.log(max(o.fp.rst_us, 1.0)) + _GEN_RST
    else:
        cost += -math.log(1 - _GEN_P_RST)
    if o.a0_us is not None:
        cost += float(_rtt_cost(model, o.a0_us))
    return cost


def _gen_packet_cost(gap_us) -> np.ndarray:
    return np.log(np.maximum(gap_us, 1.0)) + _GEN_FIRST


# --- timing against every signature of a state ------------------------------------------


@dataclass
class _TimingResult:
    """Per signature row of the table (best anchor chosen)."""

    base: np.ndarray  # nats: loss, unexplained, RST, offset, RTT
    ll: np.ndarray  # rows x grid: log-likelihood of the arrival times per theta
    # counts and codes, as floats (columns of the kernel's output)
    k0: np.ndarray
    lost: np.ndarray
    unexpl: np.ndarray
    rst: np.ndarray  # code, see RST_STATES
    shift: np.ndarray  # µs: observed = expected + shift (after the first packet)
    scale: np.ndarray
    pos: object  # rows -> positions (lazy)
    off: object  # rows -> offsets (lazy)
    standalone: np.ndarray  # nats: this observation alone (own theta mixture)
    n_in: np.ndarray  # packets in the timing model (the first one included)
    big_s: np.ndarray  # µs: sum of the queueing delays beyond the least delayed packet
    s_bar: np.ndarray  # µs: the stack's own spread (rms) over those packets
    tail: np.ndarray  # expected packets after the last one seen, likelier before the end
    tailc: np.ndarray  # nats: what not seeing the packets after the last one seen costs
    mix: np.ndarray  # log of the theta mixture of ``ll`` (standalone = base - mix)


RST_STATES = ("-", "match", "wrong", "unexpected", "missing")


_INFO = ("k0", "lost", "unexpl", "rst", "shift", "alone", "n_in", "s", "s_bar", "tail", "tailc")


def _params(o: _Obs, model: PathModel, horizon: float) -> np.ndarray:
    fp = o.fp
    head = [
        np.nan if fp.rst_us is None else float(sum(fp.gaps_us) + fp.rst_us),
        horizon,
        np.nan if o.a0_us is None else o.a0_us,
        -math.log(model.loss),
        -math.log(1 - model.loss),
        -math.log(model.rst_loss),
        -math.log(1 - model.rst_loss),
        (math.log(max(fp.rst_us, 1.0)) + _GEN_RST) if fp.rst_us is not None else 0.0,
        math.log(model.rtt_median_us),
        model.rtt_sigma,
        GATE_US,
        UNEXPLAINED,
        SPREAD_Z,
        1.0 / LAM_REF_US,
        model.mean_delay_us(),
    ]
    return np.asarray(head, dtype=float)


def _timing(tab: _Table, o: _Obs, model: PathModel, prune=None, spread: bool = True):
    """The observation against every row of ``tab`` (``cronos.analysis._kernel``).
    ``prune``: a function of the rows' base costs and kernel info giving
    the rows' costs beside the queueing (rows x K ways); rows that cannot come
    within PRUNE_MARGIN nats of the best are bounded, not computed (``_run``).
    Only for a target observed once (a row hopeless for one observation may
    not be for a sum of several), and in SYN_RCVD only (the closing states
    pick each row's best of many scales). ``spread=False``: the result per
    kernel row (one per distinct schedule: ``_Table.unique_rows`` maps rows
    and signatures to them), not spread out to every row."""
    if isinstance(prune, _Beside):  # the rows' least header costs per kernel row
        prune = _BesideRows(*tab.least_headers(prune.hdr, prune.var))
    if tab.uniq is not None:  # one kernel row per distinct schedule, then spread out
        utab, inv = tab.uniq
        uprune = None
        if prune is not None:
            order, starts = tab.uniq_groups()
            if isinstance(prune, _BesideRows):
                uprune = prune
            else:

                def uprune(base, info):
                    cost = np.asarray(prune(base[inv], info[inv]))
                    return np.minimum.reduceat(cost[order], starts, axis=0)

        res = _timing(utab, o, model, uprune)
        if not spread:
            return res
        # what the verdict reads of a few shown rows only is looked up when asked
        return _TimingResult(
            **{f: getattr(res, f)[inv] if f in _EAGER else _Lazy(getattr(res, f), inv)
               for f in _TimingResult.__dataclass_fields__}
        )  # fmt: skip
    fp = o.fp
    m = len(tab.idx)
    x = np.array([0.0, *itertools.accumulate(float(g) for g in fp.gaps_us)])
    horizon = max(_listened(fp), x[-1])
    gen = _gen_packet_cost(np.diff(x))
    params = _params(o, model, horizon)
    if fp.method is Method.SYN_RCVD:
        return _run(tab, None, x, gen, params, model, 0.0, prune)
    # closing states: schedules follow the observed RTT (Linux's rule, with the
    # signature's own rto_min)
    scale = np.ones(m)
    if fp.connect_us is not None:
        rc = tab.rule_connect
        has = ~np.isnan(rc)
        c = float(fp.connect_us)
        rto = tab.rto_min[has]
        scale[has] = (c + np.maximum(2 * c, rto)) / (rc[has] + np.maximum(2 * rc[has], rto))
    # the server's RTO rests on its own RTT samples, not on our Connect: the
    # rule's scale is a prior, the schedule's own scale is fitted around it
    # a coarse grid of factors, then per signature a finer look around its best
    best = _fit_factor(
        SCALE_GRID, m,
        lambda v: _run(tab, scale * np.exp(v), x, gen, params, model,
                       0.5 * (v / tab.scale_sigma) ** 2))  # fmt: skip
    # RFC 6298 5.7 (Linux tcp_init_transfer): when the handshake had to be
    # retransmitted there is no RTT sample and the RTO starts at 3 s, then
    # doubles: a schedule of its own (the same count), not a stretched one
    fb = tab.fallback()
    if fb is not None:
        cost = FALLBACK_COST_RETRIED if o.retried else FALLBACK_COST
        # the stack's own timer is not exactly 3 s, 6 s, ... (a late RTT
        # sample, the timer wheel): its factor is fitted per row as well
        first = tab.t[np.minimum(tab.start[:-1] + 1, tab.start[1:] - 1)]

        def run_fb(v):
            res = _run(fb, np.exp(v) * np.ones(m), x, gen, params, model,
                       cost + 0.5 * (v / SCALE_SIGMA) ** 2)  # fmt: skip
            res.standalone[~tab.linux_rule] = np.inf
            # for plots and early stop: the signature's schedule stretched alike
            res.scale = np.exp(v) * FALLBACK_RTO_US / np.maximum(first, 1.0)
            return res

        best = _better(best, _fit_factor(FALLBACK_GRID, m, run_fb))
    return best


def _fit_factor(grid, m: int, run) -> _TimingResult:
    """Per row, the best of ``run(v)`` over the log factors ``grid`` (scalars),
    then SCALE_REFINE halvings of the step around each row's best (arrays)."""
    best, lv = None, np.zeros(m)
    for v in grid:
        res = run(np.full(m, v))
        best, lv = (res, np.full(m, v)) if best is None else _better(best, res, lv, v)
    step = grid[1] - grid[0]
    for _ in range(SCALE_REFINE):
        step /= 2
        centre = lv.copy()
        for v in (centre - step, centre + step):
            best, lv = _better(best, run(v), lv, v)
    return best


#: Closing states: log factors tried around the RTT rule's scale (then
#: SCALE_REFINE halvings of the step around each signature's best), their prior.
SCALE_GRID = tuple(np.linspace(-0.45, 0.45, 7))
SCALE_REFINE = 3
SCALE_SIGMA = 0.2
#: a Law's closing schedules are the rule itself at the signature's Connect:
#: what is left to fit is the timer's lateness and the grid of its settings
LAW_SCALE_SIGMA = 0.1
FALLBACK_RTO_US = 3_000_000.0  # TCP_TIMEOUT_FALLBACK
#: log factors of the fallback schedule (then SCALE_REFINE halvings per row)
FALLBACK_GRID = tuple(np.linspace(-0.2, 0.2, 5))
FALLBACK_COST = 3.0  # -log P(the handshake was retransmitted), about 5 %
#: ... when our SYN was sent again: the SYN or the SYN-ACK was lost, about even
FALLBACK_COST_RETRIED = math.log(2.0)
#: A signature never seen in a state is assumed to behave there like one of
#: its family: a guess, which costs this (nats) beyond not knowing which one.
STAND_IN = 6.0


#: nats: a row this much worse than the best (timing and header) is only bounded
PRUNE_MARGIN = 30.0
PRUNE_KEEP = 64
_PRUNE_STATS = [0, 0]  # rows, rows bounded (a test checks that bounding happens)


def _limits(tab, scale):
    """Per row: after when a missing packet is not counted lost (``optional``)
    and after when nothing comes (``limit``), both of Linux's orphan budget
    (memoised for the unit scale: SYN_RCVD)."""
    unit = tab.unit_limits if scale is None else None
    if unit is not None:
        return unit
    sc = 1.0 if scale is None else scale
    t1 = tab.t[np.minimum(tab.start[:-1] + 1, tab.start[1:] - 1)] * sc
    # what the signature saw within its budget is due; beyond 10 % more, maybe not
    optional = np.where(np.isfinite(tab.budget), t1 + 1.1 * tab.budget + 1_000.0, np.inf)
    limit = t1 + tab.limit_extra + 1_000.0
    if scale is None:
        optional.flags.writeable = limit.flags.writeable = False
        tab.unit_limits = (optional, limit)
    return optional, limit


def _run(tab, scale, x, gen, params, model, prior_cost, prune=None) -> _TimingResult:
    """Every row of ``tab`` at the schedule scales ``scale``. With ``prune``
    (``prune(base, info)``: rows x K costs beside the queueing, e.g. with the
    header as the signature's and as a variant's), a row whose total cannot
    come within PRUNE_MARGIN nats of the best row's, in any of the K ways,
    gets a lower bound of its queueing likelihood instead of the likelihood
    (``_kernel.theta``): its reported cost is below its true cost and still
    PRUNE_MARGIN nats above the best, so no posterior, ranking above it or
    estimate of the EM moves by more than e^-PRUNE_MARGIN per row. The
    PRUNE_KEEP rows of least cost are always exact (the candidates shown)."""
    m, n = len(tab.idx), len(x) - 1
    optional, limit = _limits(tab, scale)
    if scale is None:
        scale = tab.ones
    base = np.empty(m)
    info = np.empty((m, len(_INFO)))
    pos = np.empty((m, n), dtype=np.int32)
    off = np.empty((m, n))
    _kernel.timing(tab.t, tab.s, tab.start, tab.rst_t, tab.rst_s, tab.time_us, tab.off, scale,
                   optional, limit, x, gen, params, base, info, pos, off)  # fmt: skip
    base += prior_cost
    n_in, big_s, s_bar = info[:, 6].copy(), info[:, 7].copy(), info[:, 8].copy()
    ll = np.empty((m, len(THETA_GRID_US)))
    mix = np.empty(m)
    if prune is None:
        _kernel.theta(n_in, big_s, s_bar, THETA_GRID_US, model.theta_logw(), ll, mix)
    else:
        cost = np.ascontiguousarray(prune(base, info))
        bounded = _kernel.theta(n_in, big_s, s_bar, THETA_GRID_US, model.theta_logw(), ll, mix,
                                cost, PRUNE_MARGIN)  # fmt: skip
        _PRUNE_STATS[0] += m
        _PRUNE_STATS[1] += bounded
        k = min(PRUNE_KEEP, m)
        # the PRUNE_KEEP rows of least cost are exact: a bounded row among
        # them (its bound below an exact row's cost) is computed
        redo = ()
        if bounded:
            with np.errstate(invalid="ignore"):  # a row without packets: inf - inf
                top = np.argpartition(cost.min(axis=1) - mix, k - 1)[:k]
            redo = top[ll[top, 0] == ll[top, -1]]  # a bound is one value for every scale
        if len(redo):
            sub_ll, sub_mix = np.empty((len(redo), len(THETA_GRID_US))), np.empty(len(redo))
            _kernel.theta(n_in[redo], big_s[redo], s_bar[redo], THETA_GRID_US,
                          model.theta_logw(), sub_ll, sub_mix)  # fmt: skip
            ll[redo], mix[redo] = sub_ll, sub_mix
    alone = base - mix
    return _TimingResult(
        base=base, ll=ll, k0=info[:, 0], lost=info[:, 1], unexpl=info[:, 2], rst=info[:, 3],
        shift=info[:, 4],
        scale=scale, pos=pos, off=off, standalone=alone, n_in=n_in, big_s=big_s, s_bar=s_bar,
        tail=info[:, 9], tailc=info[:, 10], mix=mix,
    )  # fmt: skip


def _better(a: _TimingResult, b: _TimingResult, la=None, lb=None):
    """Row by row, the result with the lower cost of this observation alone
    (and, given ``la``/``lb``, the labels of the rows taken)."""
    take = b.standalone < a.standalone
    out = {}
    for f in _TimingResult.__dataclass_fields__:
        va, vb = getattr(a, f), getattr(b, f)
        mask = take.reshape((-1,) + (1,) * (np.ndim(va) - 1))
        out[f] = np.where(mask, vb, va)
    if la is None:
        return _TimingResult(**out)
    return _TimingResult(**out), np.where(take, lb, la)


#: the fields of a unique-row result spread out to every row at once (the
#: posterior reads them all); the others are read for the shown rows only
_EAGER = frozenset({"base", "standalone", "tail", "tailc", "rst"})


class _Rows:
    """A kernel-row result read per row: each field ``res.f[inv]``, looked
    up row by row when asked for (``_Lazy``)."""

    __slots__ = ("_res", "_inv")

    def __init__(self, res: _TimingResult, inv: np.ndarray):
        self._res, self._inv = res, inv

    def __getattr__(self, name):
        return _Lazy(getattr(self._res, name), self._inv)


def result_rows(tab: _Table, res, sigs: np.ndarray):
    """The rows of ``res`` (a timing result of ``tab``, or ``_Rows`` of one)
    holding the signatures ``sigs``: (row indices, the result whose fields
    they index, and which of ``sigs`` have one)."""
    rows = np.array([tab.inv.get(i, -1) for i in sigs.tolist()], dtype=np.int64)
    n = np.flatnonzero(rows >= 0)
    rows = rows[n]
    if isinstance(res, _Rows):  # read the kernel rows themselves
        return res._inv[rows], res._res, n
    return rows, res, n


class _Lazy:
    """``arr[sel]``, row by row when asked for (or whole, as an array)."""

    __slots__ = ("_arr", "_sel")

    def __init__(self, arr, sel):
        self._arr = arr
        self._sel = sel

    def __getitem__(self, i):
        return self._arr[self._sel[i]]

    def __array__(self, dtype=None, copy=None):
        out = self._arr[self._sel]
        return out if dtype is None else out.astype(dtype)

    @property
    def shape(self):
        return (len(self._sel),) + self._arr.shape[1:]


class _Beside:
    """The signatures' header costs (``hdr``: as the signature's own header,
    ``var``: as a variant's), from which ``_timing`` bounds the rows that
    cannot come near the best (``_BesideRows``)."""

    __slots__ = ("hdr", "var")

    def __init__(self, hdr, var):
        self.hdr, self.var = hdr, var


class _BesideRows:
    """The kernel rows' costs beside the queueing, as a signature (its
    header) and as a variant of one (the variant's header, less what
    stopping earlier saves, ``_variant_gain``): ``_run``'s bound. ``hdr``,
    ``var``: per kernel row, the least of the signatures sharing it."""

    __slots__ = ("hdr", "var")

    def __init__(self, hdr_rows, var_rows):
        self.hdr, self.var = hdr_rows, var_rows

    def __call__(self, base, info):
        out = np.empty((len(base), 2))
        _kernel.beside(np.ascontiguousarray(base), np.ascontiguousarray(info), self.hdr,
                       self.var, out)  # fmt: skip
        return out


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    mx = np.max(a, axis=axis, keepdims=True)
    mx = np.where(np.isfinite(mx), mx, 0.0)
    return np.squeeze(mx, axis=axis) + np.log(np.sum(np.exp(a - mx), axis=axis))


# --- header -----------------------------------------------------------------------------


def _strip_ok(obs_opts: str, sig_opts: str) -> bool:
    """obs options = signature options with some kinds removed (NOPs/EOL ignored)."""
    a = obs_opts.replace("N", "").replace("E", "")
    b = sig_opts.replace("N", "").replace("E", "")
    it = iter(b)
    return len(a) < len(b) and all(ch in it for ch in a)


def mss_went_with_options(f: SynAckFeatures) -> bool:
    """No MSS option seen: a missing MSS is then the options' change (an MSS
    is an option), not a change of the MSS's own."""
    return f.mss is None and "M" not in f.options


def header_costs(db: Database, f: SynAckFeatures, model: PathModel = DEFAULT_MODEL) -> np.ndarray:
    """-log P(observed SYN-ACK header | signature), per signature; signatures
    without a header line get the generic cost. Each field's cost vector is
    memoised by its value: a fleet shares a few values per field."""
    h = _compiled(db).header_for(f.v6)
    ch = model.change
    key = ("total", f, tuple(ch.values()))
    hit = h.memo.get(key)
    if hit is not None:
        return hit
    given, f = f, f.v4_equivalent()  # IPv6: compared as the same stack over IPv4
    mss = _field(h, "mss", f.mss, ch["mss"])
    if mss_went_with_options(f):
        # the MSS is an option: where the signature has one, its absence is
        # the options' change (stripped or rewritten), not a second change
        mss = np.where(h.mss >= 0, 0.0, mss)
    parts = [
        _field(h, "window", f.window, ch["window"]),
        _field(h, "ttl", f.ttl, ch["ttl"]),
        _field(h, "df", f.df, ch["df"])
        if not given.v6
        else np.full(len(h.df), -math.log(1 - ch["df"])),
        mss,
        _field(h, "options", f.options, ch["options"]),
    ]
    if f.wscale is not None:
        parts.append(_field(h, "wscale", f.wscale, ch["wscale"]))
    out = np.where(h.has, sum(parts), generic_header_cost(h, given))
    if h.ttl_only.any():  # the TTL as documented, every other field generic
        generic_rest = generic_header_cost(h, given) - _generic_ttl_cost(h, f.ttl)
        out = np.where(h.ttl_only, generic_rest + parts[1], out)
    out.flags.writeable = False
    if len(h.memo) >= 20_000:
        h.memo.clear()
    h.memo[key] = out
    return out


def _field(h: _Header, name: str, value, c: float) -> np.ndarray:
    key = (name, value, c)
    hit = h.memo.get(key)
    if hit is None:
        if len(h.memo) >= 20_000:
            h.memo.clear()
        hit = h.memo[key] = _FIELD_COST[name](h, value, c)
        hit.flags.writeable = False
    return hit


def _keep_or(c: float, same, other) -> np.ndarray:
    return np.where(same, -math.log(1 - c), -np.log(c * np.maximum(other, 1e-12)))


def _cost_ttl(h: _Header, ttl: int, c: float) -> np.ndarray:
    hop_ok = (ttl <= h.ttl) & (h.ttl - ttl <= MAX_HOPS)
    return np.where(
        hop_ok,
        -math.log(1 - c) + math.log(MAX_HOPS + 1),
        -math.log(c * h.q_init(_initial_ttl(ttl)) / (MAX_HOPS + 1)),
    )


def _cost_mss(h: _Header, mss_value, c: float) -> np.ndarray:
    mss = -1 if mss_value is None else mss_value
    clamp = (mss >= 0) & (mss < h.mss)
    return np.where(h.mss == mss, -math.log(1 - c),
                    -np.log(c * np.where(clamp, 0.8 / 20, 0.2 * h.q_mss(mss_value))))  # fmt: skip


def _cost_options(h: _Header, opts: str, c: float) -> np.ndarray:
    # (a database without any header line has no option string: every row is
    # headerless there and takes the generic cost; index 0 must still exist)
    per_name = np.array([0 if s == opts else 1 if _strip_ok(opts, s) else 2 for s in h.opt_names]
                        or [2])  # fmt: skip
    kind = per_name[h.opt_idx]
    return np.where(kind == 0, -math.log(1 - c),
                    -np.log(c * np.where(kind == 1, 0.5, 0.5 * h.q_opt(opts))))  # fmt: skip


_FIELD_COST = {
    "window": lambda h, v, c: _keep_or(c, h.win == v, h.q_win(v)),
    "ttl": _cost_ttl,
    "df": lambda h, v, c: np.where(h.df_known, _keep_or(c, h.df == v, 1.0), -math.log(1 - c)),
    "mss": _cost_mss,
    "options": _cost_options,
    "wscale": lambda h, v, c: np.where(h.ws < 0, 0.0, _keep_or(c, h.ws == v, 1 / 15)),
}


def generic_header_cost(h: _Header, f: SynAckFeatures) -> float:
    """-log P(header) under the generic stack: each field from the database's
    distribution of it."""
    key = ("generic", f)
    hit = h.memo.get(key)
    if hit is None:
        if len(h.memo) >= 20_000:
            h.memo.clear()
        hit = h.memo[key] = _generic_header_cost(h, f)
    return hit


def _generic_ttl_cost(h: _Header, ttl: int) -> float:
    return -math.log(h.q_init(_initial_ttl(ttl))) + math.log(MAX_HOPS + 1)


def _generic_header_cost(h: _Header, f: SynAckFeatures) -> float:
    v6, f = f.v6, f.v4_equivalent()
    cost = -math.log(h.q_win(f.window))
    cost += _generic_ttl_cost(h, f.ttl)
    cost += 0.0 if v6 else math.log(2)  # DF: no such bit in IPv6
    cost += -math.log(h.q_mss(f.mss))
    cost += -math.log(h.q_opt(f.options))
    return cost


# --- results ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StateHow:
    """How one observation matched one signature."""

    method: Method
    try_index: int
    positions: tuple[int, ...]  # expected packet index explaining each observed one (-1: none)
    offsets_us: tuple[int, ...]  # observed minus expected arrival minus shift, per packet
    lost: int  # expected packets assumed lost (first, inside, and tail)
    first_lost: bool
    shift_us: int  # common shift: observed = expected + shift (+ queueing) after the first
    unexplained: int
    rst: str  # "match", "missing", "unexpected", "wrong", "-"
    scale: float  # closing-state RTT rescale applied to the signature
    header: str  # header differences ("" if none or not compared)
    cost: float  # nats, this observation alone
    success: bool  # explains this observation better than an unknown stack

    def expected_us(self, fp: StateFingerprint) -> tuple[list[float], float | None]:
        """The signature's schedule (``fp``, its state) as this alignment
        places it (see ``schedule_us``). ``early`` and ``plot`` both read the
        alignment through this."""
        return schedule_us(fp, self.scale, self.shift_us, self.first_lost)


@dataclass(frozen=True)
class Candidate:
    signature: Signature
    score: float  # log-likelihood (nats) of every observation; higher is better
    confidence: float  # posterior probability 0..1
    success: int  # observations this candidate explains better than an unknown stack
    tests: int
    how: tuple[StateHow, ...]

    @property
    def name(self) -> str:
        return self.signature.name

    @property
    def where(self) -> str:
        return self.signature.where

    @property
    def tally(self) -> str:
        return f"{self.success}success/{self.tests}tests"

    @property
    def evidence(self) -> str:
        return evidence_text(self.signature)


@dataclass(frozen=True)
class MatchResult:
    candidates: tuple[Candidate, ...]  # best first
    verdict: str | None  # names of the best (tied) signatures, None = "no match"
    verdict_class: str | None  # family holding 90 % of the posterior, if any
    confidence: float  # posterior probability of the verdict
    ties: int  # how many candidates share the top score
    tests: int
    fit: float  # nats per observation: best signature against an unknown stack (< 0: better)
    _block_of: tuple  # the observations (for ``observation_block``)
    p_unknown: float = 0.0  # posterior probability that the stack is in no signature

    @property
    def no_match(self) -> bool:
        return self.verdict is None

    @functools.cached_property
    def shown(self) -> tuple[Candidate, ...]:
        """The candidates to show: beyond the tied best, one setting of each
        Law block (the best), not every setting of a family."""
        out, seen = [], set()
        for k, c in enumerate(self.candidates):
            block = c.signature.law_block
            if block and block in seen and k >= self.ties:
                continue
            seen.add(block)
            out.append(c)
        return tuple(out)

    @functools.cached_property
    def observation_block(self) -> str:
        """The observation as a pasteable database block."""
        return _observation_block(list(self._block_of))


# --- the matcher ------------------------------------------------------------------------


@dataclass
class Scored:
    """Every signature's likelihood for one target's observations (``score``):
    what ``match`` ranks and ``cronos.analysis.calibrate`` re-estimates the model from."""

    obs: list[_Obs]
    per_obs: list  # (obs, table, timing result, generic cost)
    total: np.ndarray  # -log L(observations | signature), inf where nothing in common
    #: signatures x theta grid: log-likelihood of the arrival times; for one
    #: observation, the table's rows (``ll_of`` reads either)
    ll: np.ndarray
    hdr: np.ndarray  # header part of total
    post: np.ndarray  # posterior of each signature
    p_unknown: float
    unknown: float  # -log L(observations | unknown stack)
    success: np.ndarray
    gen_hdr: float
    feats: SynAckFeatures | None
    row_of: np.ndarray | None = None  # one observation: signature -> row of ``ll`` (-1: none)
    #: log of the posterior before normalisation (orders candidates whose
    #: posterior is too small for a float)
    lpost: np.ndarray | None = None

    def ll_of(self, i: int) -> np.ndarray:
        """Signature ``i``'s log-likelihood of the arrival times per theta."""
        if self.row_of is None:
            return self.ll[i]
        r = self.row_of[i]
        return self.ll[r] if r >= 0 else np.zeros(self.ll.shape[1])


def _lse1(a: np.ndarray) -> float:
    """log sum exp of a 1-D array."""
    mx = float(a.max()) if len(a) else -math.inf
    if not math.isfinite(mx):
        return mx
    return mx + math.log(float(np.exp(a - mx).sum()))


def _prior(comp: _Compiled, model: PathModel) -> tuple[np.ndarray, float]:
    """Log prior weight of every signature, and their log-sum-exp (memoised
    per popularity vector: the EM's model, or none)."""
    pop = model.popularity
    if pop is None or len(pop) != comp.n:
        if comp.prior_none is None:
            comp.prior_none = (comp.log_prior, _lse1(comp.log_prior))
        return comp.prior_none
    hit = comp.prior_memo.get(id(pop))
    if hit is None or hit[0] is not pop:
        prior = comp.log_prior + np.log(np.maximum(np.asarray(pop), 1e-12))
        comp.prior_memo.clear()  # one model at a time, in practice
        hit = comp.prior_memo[id(pop)] = (pop, prior, _lse1(prior))
    return hit[1], hit[2]


def _score_one(o: _Obs, db, comp: _Compiled, model: PathModel) -> Scored | None:
    """``score`` of a target observed once: the same numbers, fewer steps (no
    stand-ins: a signature lacking the one observed state has nothing to
    compare)."""
    tab = comp.tables.get(o.method)
    if tab is None:
        return None
    n_sig = comp.n
    feats = o.features
    if feats is not None:
        hdr = header_costs(db, feats, model)
        var = header_costs(db, feats, _variant_model())
        gen_hdr = generic_header_cost(comp.header_for(feats.v6), feats)
    else:
        hdr = var = comp.zeros
        gen_hdr = 0.0
    beside = _Beside(hdr, var) if o.method is Method.SYN_RCVD else None
    res = _timing(tab, o, model, beside, spread=False)  # per kernel row
    inv, urow = tab.unique_rows(n_sig)
    g = generic_cost(o, model)
    prior, lse_prior = _prior(comp, model)
    # the rest in the kernel (``score`` does the same for several observations):
    # per signature its total (timing and header), whether it explains the
    # observation better than the generic stack, the unknown stack's cost
    # (``_unknown_cost``: a variant stops earlier only outside a Law's
    # family) and the posterior
    total, post, lpost, success = (np.empty(n_sig) for _ in range(4))
    scalars = np.array([lse_prior, g, gen_hdr, _log_odds(model.unknown_prior),
                        *_LOG_UNKNOWN_MIX])  # fmt: skip
    c = np.ascontiguousarray
    unknown, p_unknown = _kernel.post1(c(res.standalone), c(res.tail), c(res.tailc), c(res.rst),
                                       inv, tab.idx_i64, comp.stops_early_f, hdr, var, prior,
                                       scalars, total, post, lpost, success)  # fmt: skip
    return Scored([o], [(o, tab, _Rows(res, inv), g)], total, res.ll, hdr, post, p_unknown,
                  unknown, success.astype(np.int64), gen_hdr, feats, urow, lpost)  # fmt: skip


def score(observations: Sequence, db: Database, model: PathModel | None = None) -> Scored | None:
    """Likelihood and posterior of every signature (None: nothing to match)."""
    model = model or DEFAULT_MODEL
    obs = _normalise(observations)
    comp = _compiled(db)
    n_sig = comp.n
    if not obs or n_sig == 0:
        return None
    if len(obs) == 1:
        return _score_one(obs[0], db, comp, model)
    covered = np.zeros(n_sig, dtype=np.int64)
    success = np.zeros(n_sig, dtype=np.int64)
    gen_total = 0.0
    per_obs = []
    feats = next((o.features for o in obs if o.features is not None), None)
    hdr = header_costs(db, feats, model) if feats is not None else np.zeros(n_sig)
    gen_hdr = generic_header_cost(comp.header_for(feats.v6), feats) if feats is not None else 0.0
    timed = []
    for o in obs:
        tab = comp.tables.get(o.method)
        res = _timing(tab, o, model) if tab is not None else None
        g = generic_cost(o, model)
        gen_total += g
        # per signature: this observation's cost, the packets it expected
        # after the last one seen (-1: not timed), its theta likelihoods
        own = np.full(n_sig, g)
        own_tail = np.full(n_sig, -1, dtype=np.int64)
        own_tailc = np.zeros(n_sig)
        own_ll = np.zeros((n_sig, len(THETA_GRID_US)))
        alone = np.full(n_sig, g)
        if res is not None:
            own[tab.idx] = res.base
            own_tail[tab.idx], own_tailc[tab.idx] = _tail(res.tail, res.tailc, res.rst)
            own_ll[tab.idx] = res.ll
            alone[tab.idx] = res.standalone
            covered[tab.idx] += 1
            a = res.standalone + (hdr[tab.idx] - gen_hdr if o.features is not None else 0.0)
            success[tab.idx] += a < g
        timed.append((o, tab, res, g, own, own_tail, own_ll, alone, own_tailc))
        per_obs.append((o, tab, res, g))
    base = np.sum([t[4] for t in timed], axis=0)
    ll = np.sum([t[6] for t in timed], axis=0)
    # a signature without an observed state behaves like one of its family's
    # signatures (a Hershel "CentOS" in LAST_ACK like one of the lab's Linux
    # stacks): the one that explains those observations best, the same for
    # all of them, at the cost of not knowing which (log of the family's size)
    for sigs, member, extra, which in comp.stand_ins(timed):
        for k in which:
            _o, _tab, _res, _g, own, own_tail, own_ll, _alone, own_tailc = timed[k]
            base[sigs] += own[member] - own[sigs]
            own_tail[sigs] = own_tail[member]
            own_tailc[sigs] = own_tailc[member]
            ll[sigs] += own_ll[member]
        base[sigs] += extra
    variant_base = base - np.where(comp.stops_early, _joint_variant_gain(timed), 0.0)
    if not covered.any():
        return None
    mix = np.empty(n_sig)
    _kernel.lse(np.ascontiguousarray(ll), model.theta_logw(), mix)
    timing = base - mix
    variant_timing = variant_base - mix
    total = np.where(covered > 0, timing + hdr, np.inf)
    prior, lse_prior = _prior(comp, model)
    unknown = _unknown_cost(db, feats, gen_total, gen_hdr, variant_timing, hdr, prior, covered,
                            lse_prior)  # fmt: skip
    post_sig = prior - total
    # the unknown stack's prior mass is relative to the signatures' total weight
    post_unk = _log_odds(model.unknown_prior) - unknown + lse_prior
    norm = _logsumexp(np.append(post_sig[np.isfinite(post_sig)], post_unk), axis=0)
    post = np.exp(post_sig - norm)
    return Scored(obs, per_obs, total, ll, hdr, post, float(math.exp(post_unk - norm)), unknown,
                  success, gen_hdr, feats, None, post_sig)  # fmt: skip


def match(
    observations: Sequence,
    db: Database,
    *,
    top: int = 5,
    model: PathModel | None = None,
) -> MatchResult:
    """Rank the database's signatures against one target's observations.

    ``observations``: ``Observation`` objects (only ``ok`` and ``aborted`` ones
    count, an aborted one with the time actually listened as its window),
    ``StateFingerprint`` objects, or ``(StateFingerprint, SynAckFeatures|None)``.
    All of them share one path (one queueing scale). A signature without an
    observed state is neutral about it (the generic stack's likelihood)."""
    sc = score(observations, db, model)
    if sc is None:
        obs = _normalise(observations)
        return MatchResult((), None, None, 0.0, 0, len(obs), float("inf"), tuple(obs),
                           1.0)  # fmt: skip
    return result(sc, db, top=top)


def result(sc: Scored, db: Database, *, top: int = 5) -> MatchResult:
    """The ranked, named verdict of a scored target.

    The variants of a ``Law`` block (one per setting) that the observed
    states cannot tell apart are one candidate: the family, named with the
    values its timings read and the parameters they could not."""
    comp = _compiled(db)
    post, total = sc.post, sc.total
    finite = np.isfinite(total)
    key = sc.lpost if sc.lpost is not None else post
    order = np.argsort(-key, kind="stable") if comp.n < 64 else _top_order(key, top)
    order = order[finite[order]]
    entries = _entries(sc, db, comp, order, key)
    best_p = entries[0][1]
    ties = sum(1 for e in entries if e[1] >= best_p * math.exp(-TIE))
    # a count cut short by the end of listening (the next retransmission due
    # about then) reads as every setting that would have sent it later
    blocks = {e[3] for e in entries[:ties] if e[3]}
    also = [e for e in entries[ties:] if e[3] in blocks and e[1] >= best_p * math.exp(-LAW_SET)]
    group = float(sum(e[1] for e in entries[:ties]) + sum(e[1] for e in also))
    names = _tied_names(entries[:ties] + also, comp, sc.obs)
    best = entries[0][0]
    n_obs = len(sc.obs)
    fit = float((total[best] - sc.unknown) / n_obs)
    cands = []
    # the first max(top, ties) entries, plus up to 20 more settings of a family
    # so that ``shown`` (one setting per Law block) still has ``top`` of them
    want, distinct, seen, n = max(top, ties), 0, set(), 0
    for k, e in enumerate(entries):
        if distinct >= want or k >= want + 20:
            break
        n = k + 1
        if not (e[3] and e[3] in seen and k >= ties):
            distinct += 1
        seen.add(e[3])
    for rank, e in enumerate(entries[: max(n, min(want, len(entries)))]):
        i, p = e[0], e[1]
        sig = db.signatures[i]
        how = tuple(_how(sig, i, o, tab, res, g, sc.hdr[i], sc.gen_hdr)
                    for o, tab, res, g in sc.per_obs)  # fmt: skip
        name = _named(e, comp, sc.obs)
        if name != sig.name:
            sig = dataclasses.replace(sig, name=name)
        conf = group / ties if rank < ties else float(p)
        cands.append(Candidate(sig, -float(total[i]), conf, int(sc.success[i]), n_obs, how))
    # named unless an unknown stack is clearly likelier: a signature that fits
    # but for a header field is named with the confidence it deserves
    novel = sc.p_unknown >= NO_MATCH or group < MIN_CONFIDENCE
    verdict = None if novel else " or ".join(names)
    fam = None if novel else _family(comp, post)
    return MatchResult(tuple(cands), verdict, fam, 0.0 if novel else group, ties, n_obs, fit,
                       tuple(sc.obs), sc.p_unknown)  # fmt: skip


def _entries(sc: Scored, db: Database, comp: _Compiled, order, key) -> list[tuple]:
    """(representative index, posterior, name, law block, read values) best
    first: a signature (block None), or the variants of a Law block that the
    observed states read alike."""
    sigs = db.signatures
    out = [(i, p, sigs[i].name, None, None, k)
           for i, p, k in zip(order.tolist(), sc.post[order].tolist(),
                              np.asarray(key[order], dtype=float).tolist(), strict=True)
           if not sigs[i].law_block]  # fmt: skip
    methods = frozenset(o.method for o in sc.obs)
    for block in comp.laws:
        sorted_members, starts, names, _g = comp.law_groups(block, methods)
        ok = np.isfinite(sc.total[sorted_members])
        if not ok.any():
            continue
        p = np.add.reduceat(np.where(ok, sc.post[sorted_members], 0.0), starts)
        k = np.where(ok, np.asarray(key[sorted_members], dtype=float), -np.inf)
        best = np.maximum.reduceat(k, starts)
        has = np.logical_or.reduceat(ok, starts)
        # each group's representative: its first member of the highest key
        n, pos = comp.law_runs(block, methods)
        at = np.where(ok & (k == np.repeat(best, n)), pos, len(k))
        rep = sorted_members[np.minimum(np.minimum.reduceat(at, starts), len(k) - 1)]
        with np.errstate(invalid="ignore"):
            lk = np.logaddexp.reduceat(k, starts) if sc.lpost is not None else p
        grps = np.flatnonzero(has)
        # named when shown (``_named``): a target has hundreds of groups
        out += [(r, pg, None, block, names[grp], lg)
                for grp, r, pg, lg in zip(grps.tolist(), rep[grps].tolist(), p[grps].tolist(),
                                          lk[grps].tolist(), strict=True)]  # fmt: skip
    out.sort(key=lambda e: -e[-1])
    return [e[:5] for e in out]


def _named(e: tuple, comp: _Compiled, obs) -> str:
    """An entry's name: a signature's, or its Law block's with the values read."""
    _i, _p, name, block, read = e
    return name if block is None else _law_name(block, comp.laws[block][0], read, obs)


def _tied_names(tied: list[tuple], comp: _Compiled, obs) -> list[str]:
    """The verdict's names: tied variants of one Law block are one name whose
    parameters list every tied value (``tcp_orphan_retries=4 or 5``)."""
    names: list[str] = []
    merged: dict[str, dict[str, list[str]]] = {}
    for _i, _p, name, block, read in tied:
        if block is None:
            names.append(name)
            continue
        if block not in merged:
            merged[block] = {}
            names.append(block)  # placeholder, in rank order
        for k, v in read.items():
            vals = merged[block].setdefault(k, [])
            vals += [x for x in v.split(" or ") if x not in vals]
    for block, read in merged.items():
        law = comp.laws[block][0]
        joined = {k: " or ".join(sorted(v, key=_natural)) for k, v in read.items()}
        names[names.index(block)] = _law_name(block, law, joined, obs)
    return names


def _natural(v: str):
    m = re.match(r"(\d+)", v)
    return (int(m.group(1)) if m else 0, v)


def _law_name(block: str, law, read: dict[str, str], obs) -> str:
    """``Linux ... [family]: tcp_synack_retries=3; not measured: ...``"""
    parts = []
    for k in law.params:
        if k not in read:
            continue
        v = read[k]
        off = law.read_off.get(k) if law.read_off else None
        # a retransmitted handshake leaves no RTT sample (RTO 3 s): not read there
        seen = off([o.fp for o in obs if not o.retried]) if off is not None else None
        parts.append(f"{k}{seen}" if seen else f"{k}={v}")
    unread = [k for k in law.params if k not in read]
    text = ", ".join(parts) if parts else "no parameter read"
    if unread:
        text += "; not measured: " + ", ".join(unread)
    return f"{block}: {text}"


def _top_order(key, top: int) -> np.ndarray:
    """The best signatures first (by posterior, which includes the prior, or
    its logarithm); enough of them for ties and the shown candidates."""
    k = min(len(key), max(top, 8) * 4)
    part = np.argpartition(-key, k - 1)[:k]
    return part[np.argsort(-key[part], kind="stable")]


#: The unknown stack, a mixture: a new timing with a new header; a known
#: stack's header with a new timing; a variant of a known stack: its timing,
#: perhaps stopping earlier (another retries setting), with a variant of its
#: header (each field its own with probability 1 - VARIANT, else drawn from
#: the database's values). Stacks of one family differ just so (a DF flag, a
#: window, an initial TTL, tcp_synack_retries): a header field that disagrees
#: with a signature may be the path's doing or another stack's nature.
UNKNOWN_MIX = (0.2, 0.2, 0.6)
_LOG_UNKNOWN_MIX = np.log(UNKNOWN_MIX)
VARIANT = 0.3
_VARIANT_MODEL = None


def _variant_gain(tail, tailc, tries: int = 1) -> np.ndarray:
    """Per row, what a variant of the signature that stops earlier (another
    retries setting; half of the variants do, which of them is anyone's
    guess: one of the ``tail`` + 1 places) saves in nats, over ``tries``
    observations of the state, on the expected packets missing after the
    last one seen, which cost ``tailc`` nats in each try."""
    tail = np.asarray(tail, dtype=float)
    lp = np.asarray(tailc, dtype=float) * tries
    return np.logaddexp(0.0, lp - (np.log1p(tail) + math.log(2.0))) - math.log(2.0)


def _tail(tail, tailc, rst) -> tuple[np.ndarray, np.ndarray]:
    """The packets a variant that stops earlier would not have sent, and
    what missing them cost: none when the RST came at the signature's time
    (``rst`` code 1): a stack with fewer retries resets after its own last
    one, earlier."""
    done = np.asarray(rst) == 1
    return np.where(done, 0, tail), np.where(done, 0.0, tailc)


def _joint_variant_gain(timed) -> np.ndarray:
    """Per signature, what a variant that stops earlier saves over every
    observation: its retries setting is the stack's, one per state, so in
    each state it stops no earlier than the try that saw the most packets
    allowed (the least tail), and it saves that tail in every try of the
    state. A signature without a timed state saves nothing there."""
    n_sig = len(timed[0][5])
    gain = np.zeros(n_sig)
    by_method: dict = {}
    for t in timed:
        by_method.setdefault(t[0].method, []).append((t[5], t[8]))
    for pairs in by_method.values():
        least = np.min([p[0] for p in pairs], axis=0)
        least_c = np.min([p[1] for p in pairs], axis=0)
        ok = least >= 0
        gain[ok] = _variant_gain(least[ok], least_c[ok], len(pairs))
    return gain


def _variant_model() -> PathModel:
    global _VARIANT_MODEL
    if _VARIANT_MODEL is None:
        _VARIANT_MODEL = PathModel(change=MappingProxyType(dict.fromkeys(DEFAULT_MODEL.change,
                                                                          VARIANT)))  # fmt: skip
    return _VARIANT_MODEL


def _log_odds(p: float) -> float:
    """The unknown stack's prior against the signatures' total: p / (1 - p)."""
    p = min(max(p, 1e-9), 1 - 1e-9)
    return math.log(p / (1 - p))


def _unknown_cost(db, feats, gen_timing, gen_hdr, timing, hdr, prior, covered, lse_prior,
                  var=None) -> float:  # fmt: skip
    """-log likelihood of the observations under the unknown stack (``var``:
    the header's cost for a variant, if known)."""
    logp = prior - lse_prior
    ok = covered > 0
    known_hdr = -_lse1(logp - hdr)
    if ok.any():
        if var is None:
            var = header_costs(db, feats, _variant_model()) if feats is not None else 0.0
        variant = -_lse1((logp - timing - var)[ok])
    else:
        variant = gen_timing + gen_hdr
    parts = (gen_timing + gen_hdr, gen_timing + known_hdr, variant)
    return -_lse1(_LOG_UNKNOWN_MIX - np.array(parts))


def _family(comp: _Compiled, post) -> str | None:
    """The family holding >= 90 % of the signatures' posterior (of the 200
    most probable, down to 1e-6), if any."""
    some = np.flatnonzero(post >= 1e-6)
    if not len(some):
        return None
    if len(some) > 200:
        some = some[np.argsort(-post[some], kind="stable")[:200]]
    p = post[some]
    # per family (the last bin: none), its mass; a tie at the top is at most
    # half the total, never a verdict
    mass = np.bincount(comp.fam_index[some] % (comp.n_fam + 1), weights=p,
                       minlength=comp.n_fam + 1)  # fmt: skip
    best = int(np.argmax(mass))
    if best == comp.n_fam or mass[best] < 0.9 * float(p.sum()):
        return None
    return comp.families_sorted[best]


def _how(sig, i, o: _Obs, tab, res, gen, hdr_i, gen_hdr) -> StateHow:
    m = o.method
    r = tab.inv.get(int(i)) if res is not None else None
    if r is None:  # the signature has no such state
        return StateHow(m, o.try_index, (), (), 0, False, 0, 0, "-", 1.0, "", gen, False)
    if isinstance(res, _Rows):  # read the kernel row itself
        res, r = res._res, int(res._inv[r])
    alone = float(res.standalone[r]) + (hdr_i - gen_hdr if o.features is not None else 0.0)
    return StateHow(
        method=m,
        try_index=o.try_index,
        positions=tuple(res.pos[r].tolist()),
        offsets_us=tuple(round(x) for x in res.off[r].tolist()),  # half to even, as rint
        lost=int(res.lost[r]),
        first_lost=bool(res.k0[r]),
        shift_us=int(round(float(res.shift[r]))),
        unexplained=int(res.unexpl[r]),
        rst=RST_STATES[int(res.rst[r])],
        scale=round(float(res.scale[r]), 4),
        header=memo_per_signature(_NOTES, sig, o.features, _header_notes, 50_000),
        cost=alone,
        success=bool(alone < gen),
    )


def memo_per_signature(store: dict, sig, key, compute, cap: int):
    """``compute(sig, key)``, memoised in ``store`` per (signature, key), the
    signature by identity (at most ``cap`` entries): a fleet shares a few
    headers, and the same candidates come back."""
    k = (id(sig), key)
    hit = store.get(k)
    if hit is None or hit[0] is not sig:
        if len(store) >= cap:
            store.clear()
        hit = store[k] = (sig, compute(sig, key))
    return hit[1]


_NOTES: dict = {}  # (signature, header) -> ``_header_notes``


def _header_notes(s: Signature, f: SynAckFeatures | None) -> str:
    """Which header fields differ (for ``how``)."""
    if f is not None and s.features is None and s.init_ttl is not None:
        if not (f.ttl <= s.init_ttl and s.init_ttl - f.ttl <= MAX_HOPS):
            return f"TTL {f.ttl} (documented initial TTL {s.init_ttl}); no other header field"
        return "only the initial TTL in signature"
    if f is None or s.features is None:
        return "" if f is None else "no header in signature"
    g, why = s.header_for(f.v6), []
    df_known = not (f.v6 or g.v6)
    f, g = f.v4_equivalent(), g.v4_equivalent()  # IPv6 fields as over IPv4
    if not (f.ttl <= g.ttl and g.ttl - f.ttl <= MAX_HOPS):
        why.append(f"TTL {f.ttl}>{g.ttl}" if f.ttl > g.ttl else f"TTL {f.ttl}<<{g.ttl}")
    if df_known and f.df != g.df:
        why.append("DF")
    if f.window != g.window:
        why.append(f"W {f.window:X}!={g.window:X}")
    if f.mss != g.mss and not mss_went_with_options(f):
        why.append(f"MSS {f.mss}!={g.mss}")
    if f.options != g.options:
        why.append(("stripped " if _strip_ok(f.options, g.options) else "O ") + g.options)
    if f.wscale is not None and g.wscale is not None and f.wscale != g.wscale:
        why.append("WS")
    return ", ".join(why)


def _observation_block(obs: list[_Obs]) -> str:
    """The observation as a database block (p0f's dump_sig), one try per state."""
    lines = ["Fingerprint UNKNOWN (edit me)", "Class unknown", "Source cron-os classify"]
    feats = port_header([o.features for o in obs])
    firsts = [next(o.fp for o in obs if o.fp.method is m) for m in Method
              if any(o.fp.method is m for o in obs)]  # fmt: skip
    return "\n".join(lines + fingerprint_lines(firsts, feats)) + "\n"
