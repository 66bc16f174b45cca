"""The matcher: a pure function from observations to scored candidates.

Model (documented field by field in ``docs/database.md``, "How matching works"):

* Times are compared as arrival times after the first packet seen (cumulative
  gaps), so per-packet jitter does not accumulate. Arrival = expected + shift
  + residual: the shift (the first packet's own lateness) has a Gaussian prior
  and is integrated out in closed form; each residual has a tolerance
  ``sqrt(spread^2 + JITTER^2 + (REL x t)^2)``. Arrivals more than OUTLIER_Z
  sigma off are outliers (timer ticks), further than Z_MAX x OUTLIER_US are
  unexplained (another OS).
* Lost packets: observed packets may skip expected ones (a gap equal to the
  sum of consecutive expected gaps costs ``LOST`` per skipped packet, not a
  mismatch); the first packet itself may be lost (the series is re-anchored on
  the second expected packet). Expected packets after the last one seen but
  inside the listening window count as lost too.
* The window: expected packets later than the observation's ``Time`` could not
  be seen; observed packets later than the signature's ``Time`` are unknown.
* RST: a final RST is compared like a packet; a missing RST costs little
  (firewalls drop them), an unexpected one costs like an unexplained packet.
* Closing states: a signature whose first gap follows the Linux rule
  ``Connect + max(2 x Connect, 200 ms)`` is rescaled to the observation's RTT.
* Header (SYN-ACK) features weigh less than timing: TTL may be decremented by
  up to ``MAX_HOPS`` hops, window/MSS may be rewritten, an option stripped.

Costs are negative log-likelihoods (nats); the score of a candidate is minus
its total cost over every observation (states and tries). The *fit* (the same
without likelihood normalisation) decides "no match".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from .db import Database, Signature
from .model import Method, Observation, StateFingerprint, Status, SynAckFeatures

# Weights (nats). Timing dominates: one unexplained packet costs more than any
# single header difference.
Z_MAX = 4.0
UNEXPLAINED = 9.0
LOST = 2.5
FIRST_LOST = 2.5
# In the fit (the surprise that decides "no match") a loss costs less: with
# p = 0.05 over a handful of packets one loss is common (log(P(0)/P(1)) ~ 1.4).
LOST_FIT = 1.4
RST_MISSING = 1.5
LISTEN_SLACK_US = 50_000  # an expected packet this close to the end may still be in flight
# per observation, when every try of a state misses the signature's last packets
TAIL_AGAIN = 3.0
MIN_CONFIDENCE = 0.05  # below this the verdict is "no match"
JITTER_US = 15_000
REL = 0.005
DEFAULT_SPREAD_US = 30_000
DEFAULT_SPREAD_REL = 0.01
REF_TOL_US = 10_000  # likelihood normalisation: log(tol / REF_TOL_US)
# Outliers: an arrival more than OUTLIER_Z sigma from its expected time (after
# the shift) but within Z_MAX x OUTLIER_US is an outlier, not another OS: about
# 10% of the Hershel arrivals are 0.1-0.3 s off (timer ticks).
OUTLIER = 2.3  # -log(0.1)
OUTLIER_US = 250_000
OUTLIER_Z = 3.0
MAX_HOPS = 30
# Header: -log P(difference | same stack behind an ordinary path). What a
# middlebox commonly does is cheap (rewrite the window, clamp the MSS down,
# strip an option); what it cannot do (raise the TTL, raise the MSS, invent
# options) costs like an unexplained packet.
W_TTL = 6.0  # TTL above the initial TTL, or more than MAX_HOPS below it
W_DF = 4.0
W_WIN = 3.0  # window rewritten (p ~ 0.05)
W_MSS_DOWN, W_MSS_OTHER = 2.3, 6.0  # clamped down (p ~ 0.1) / raised or added
W_OPT_STRIP, W_OPT = 3.5, 6.0  # options removed (p ~ 0.03) / otherwise different
W_WS = 1.0
W_NO_HDR = 1.5  # signature without header line, observation with one
# A signature without the observed state predicts nothing: each observed packet
# costs as if uniform over ~1 s at REF_TOL_US resolution (log 100), plus a base.
MISSING_STATE = 1.0
MISSING_PER_PKT = 4.6
# Verdict
NOVELTY = 2.2  # mean fit cost per observation above which the answer is "no match"
TIE = 0.05  # candidates within TIE nats of the best are reported together
LINUX_RTO_MIN_US = 200_000


@dataclass(frozen=True)
class StateHow:
    """How one observation matched one signature."""

    method: Method
    try_index: int
    positions: tuple[int, ...]  # expected packet index explaining each observed one (-1: none)
    offsets_us: tuple[int, ...]  # observed minus expected arrival minus shift, per packet
    lost: int  # expected packets assumed lost (inside, first, and tail)
    first_lost: bool
    shift_us: int  # common shift of the series fitted (the first packet's lateness)
    unexplained: int
    rst: str  # "match", "missing", "unexpected", "wrong", "-"
    scale: float  # closing-state RTT rescale applied to the signature
    header: str  # header differences ("" if none or not compared)
    cost: float
    success: bool


@dataclass(frozen=True)
class Candidate:
    signature: Signature
    score: float  # minus the total cost; higher is better
    confidence: float  # 0..1
    success: int  # observations this candidate explains within tolerance
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


@dataclass(frozen=True)
class MatchResult:
    candidates: tuple[Candidate, ...]  # best first
    verdict: str | None  # names of the best (tied) signatures, None = "no match"
    verdict_class: str | None  # family shared by the likely candidates, if any
    confidence: float
    ties: int  # how many candidates share the top score
    tests: int
    fit: float  # mean fit cost per observation of the best candidate
    observation_block: str  # the observation as a pasteable database block

    @property
    def no_match(self) -> bool:
        return self.verdict is None


# --- inputs ----------------------------------------------------------------


@dataclass(frozen=True)
class _Obs:
    fp: StateFingerprint
    features: SynAckFeatures | None
    try_index: int


def _normalise(items) -> list[_Obs]:
    out = []
    for i, it in enumerate(items, 1):
        if isinstance(it, Observation):
            if it.status not in (Status.OK, Status.ABORTED):  # aborted: Time = time listened
                continue
            out.append(_Obs(it.fingerprint, it.features, it.try_index))
        elif isinstance(it, StateFingerprint):
            out.append(_Obs(it, None, i))
        elif isinstance(it, tuple) and len(it) == 2 and isinstance(it[0], StateFingerprint):
            out.append(_Obs(it[0], it[1], i))
        else:
            raise TypeError(f"cannot match {type(it).__name__}")
    return out


# --- per-method prepared arrays ----------------------------------------------


class _Prep:
    """Flattened schedules of the signatures having one state, for searchsorted."""

    def __init__(self, sigs: list[Signature], idx: list[int], method: Method, scales=None):
        self.idx = np.asarray(idx, dtype=np.int64)
        rows_t, rows_s = [], []
        n = len(idx)
        self.m = np.zeros(n, dtype=np.int64)
        self.rst_t = np.full(n, np.nan)
        self.rst_s = np.zeros(n)
        self.time_us = np.zeros(n)
        self.off_s = np.zeros(n)
        for r, i in enumerate(idx):
            fp = sigs[i].states[method]
            k = 1.0 if scales is None else scales[r]
            cum = np.concatenate([[0.0], np.cumsum(fp.gaps_us, dtype=float)]) * k
            sp = sigs[i].spread_us.get(method)
            if sp is None or len(sp) != fp.nb_pkt:
                spr = DEFAULT_SPREAD_US + DEFAULT_SPREAD_REL * cum[1:]
            else:
                spr = np.asarray(sp, dtype=float)
            rows_t.append(cum)
            rows_s.append(np.concatenate([[0.0], spr]))
            self.m[r] = fp.nb_pkt
            self.off_s[r] = sigs[i].offset_spread_us.get(method, 0) * k
            self.time_us[r] = fp.time_s * 1e6
            if fp.rst_us is not None:
                self.rst_t[r] = cum[-1] + fp.rst_us * k
                rs = sigs[i].rst_spread_us.get(method)
                self.rst_s[r] = (
                    rs if rs is not None else DEFAULT_SPREAD_US + DEFAULT_SPREAD_REL * fp.rst_us
                )
        self.start = np.zeros(n + 1, dtype=np.int64)
        self.start[1:] = np.cumsum(self.m + 1)
        self.t = np.concatenate(rows_t) if rows_t else np.zeros(0)
        self.s = np.concatenate(rows_s) if rows_s else np.zeros(0)
        self.big = float(max(self.t.max(initial=0.0), 1e6) * 4 + 1e12)
        self.inv = {int(i): r for r, i in enumerate(idx)}
        self.row = np.repeat(np.arange(n), self.m + 1)
        self.flat = np.arange(len(self.t))
        self.key = self.row * self.big + self.t
        self.both = self._anchors()

    def _anchors(self) -> SimpleNamespace:
        """Per virtual row (k0 = 0 rows, then k0 = 1 rows): alignment constants."""
        m2 = np.concatenate([self.m, self.m])
        k0 = np.repeat([0, 1], len(self.m))
        start = np.concatenate([self.start[:-1], self.start[:-1]])
        end = np.concatenate([self.start[1:], self.start[1:]]) - 1  # last flat index
        anchor_pos = start + np.minimum(k0, m2)
        row_lo = anchor_pos + 1  # first flat index for the next packets
        row_hi = end
        rst_t = np.concatenate([self.rst_t, self.rst_t])
        return SimpleNamespace(
            k0=k0,
            row_start=start,
            anchor_pos=anchor_pos,
            anchor=self.t[anchor_pos] if len(self.t) else np.zeros(0),
            row_lo=row_lo,
            has=row_hi >= row_lo,
            hi=np.minimum(np.maximum(row_lo, row_hi), max(len(self.t) - 1, 0)),
            rowbase=np.concatenate([np.arange(len(self.m))] * 2) * self.big,
            base=np.where(m2 >= k0, FIRST_LOST * k0, np.inf),  # the anchor must exist
            base_fit=LOST_FIT * k0.astype(float),
            time_us=np.concatenate([self.time_us, self.time_us]),
            has_rst=~np.isnan(rst_t),
            rst_t=np.nan_to_num(rst_t, nan=np.inf),
            rst_s=np.concatenate([self.rst_s, self.rst_s]),
            off_s=np.concatenate([self.off_s, self.off_s]),
            flat2=np.concatenate([self.flat, self.flat]),
            row2=np.concatenate([self.row, self.row + len(self.m)]),
            t2=np.concatenate([self.t, self.t]),
        )


def _prep_syn(db: Database) -> _Prep:
    cached = db.__dict__.get("_cronos_prep_syn")
    if cached is None:
        cached = _Prep(list(db.signatures), db.with_method(Method.SYN_RCVD), Method.SYN_RCVD)
        object.__setattr__(db, "_cronos_prep_syn", cached)
    return cached


def _closing_scales(db: Database, idx: list[int], method: Method, connect_us) -> np.ndarray:
    """RTT rescale of Linux-rule signatures to the observation's Connect."""
    out = np.ones(len(idx))
    if connect_us is None:
        return out
    for r, i in enumerate(idx):
        fp = db.signatures[i].states[method]
        if fp.connect_us is None or not fp.gaps_us:
            continue
        rule = fp.connect_us + max(2 * fp.connect_us, LINUX_RTO_MIN_US)
        if abs(fp.gaps_us[0] - rule) <= 0.15 * rule:
            out[r] = (connect_us + max(2 * connect_us, LINUX_RTO_MIN_US)) / rule
    return out


# --- timing ------------------------------------------------------------------


def _tol(t, spread, jitter):
    return np.sqrt(spread**2 + jitter**2 + (REL * t) ** 2)


def _timing(prep: _Prep, fp: StateFingerprint, jitter: float) -> list[np.ndarray]:
    """Vectorised timing cost of one observed state against every row of prep.

    Both alignments (first packet seen, or first packet lost) are computed at
    once on 2 x rows virtual rows; the cheaper one is kept per signature.
    Arrival times are ``expected + shift + residual``: the shift (the first
    packet's own lateness, prior N(0, offset spread^2 + jitter^2)) is common
    to the series and integrated out in closed form (Gaussian).
    Returns [cost, fit, positions, offsets, lost, unexplained, rst code,
    first lost, shift] (per row; positions and offsets: rows x packets).
    """
    n_rows = len(prep.idx)
    obs = np.cumsum(np.asarray(fp.gaps_us, dtype=float))
    n = len(obs)
    a = prep.both  # anchors for k0 = 0 then k0 = 1; arrays below are packets x rows
    var_o = a.off_s**2 + jitter**2
    target = obs[:, None] + a.anchor  # absolute times in the signature's frame
    ins = np.searchsorted(prep.key, a.rowbase + target)
    c1 = np.minimum(np.maximum(ins, a.row_lo), a.hi)
    c0 = np.minimum(np.maximum(ins - 1, a.row_lo), a.hi)
    # nearest expected packet in time (the spreads of neighbours are similar)
    c = np.where(np.abs(prep.t[c1] - target) < np.abs(target - prep.t[c0]), c1, c0)
    tc = prep.t[c]
    rel = REL * (tc - a.anchor)
    sp = prep.s[c]
    tol2 = sp * sp + jitter * jitter + rel * rel  # squared tolerance of each arrival
    r = target - tc
    r2 = r * r
    okz = a.has & (r2 <= Z_MAX**2 * (tol2 + var_o + OUTLIER_US**2))
    beyond = target > a.time_us  # the signature's window ended before
    ok = np.empty_like(okz)
    last = a.anchor_pos.copy()  # flat index of the last matched expected packet
    for j in range(n):  # packets must match expected ones in increasing order
        ok[j] = okz[j] & (c[j] > last)
        last = np.where(ok[j], c[j], last)
    rst_code, rst_pen, rst_w, rst_r, rst_logtol = _rst(prep, fp, obs, a.anchor, jitter)
    # shift: Gaussian closed form; then packets > OUTLIER_Z sigma off are outliers
    # (timer ticks: ~10% of Hershel arrivals are 0.1-0.3 s off) and the shift is
    # re-estimated without them
    inv_var = 1.0 / tol2
    inl = ok
    for _ in range(2):
        w = np.where(inl, inv_var, 0.0)
        wr = w * r
        sum_a = _colsum(w) + rst_w
        sum_b = _colsum(wr) + rst_w * rst_r
        sum_c = _colsum(wr * r) + rst_w * rst_r * rst_r
        prec = sum_a + 1.0 / var_o
        shift = sum_b / prec
        e = r - shift
        inl = ok & (e * e <= OUTLIER_Z**2 * tol2)
    n_out = _colsum(ok & ~inl)
    quad = 0.5 * (sum_c - sum_b * shift)
    logtol = 0.5 * _colsum(np.where(inl, np.log(tol2 / REF_TOL_US**2), 0.0))
    unexpl = _colsum(~ok & ~beyond)
    penalty = UNEXPLAINED * unexpl + rst_pen + OUTLIER * n_out
    # packets skipped inside, plus tail packets expected before the window ends
    inner = np.maximum((last - a.anchor_pos) - _colsum(ok), 0)
    tail = _count_tail(prep, last, a.anchor, _listened(fp))
    lost = inner + tail
    # the fit is a surprise per observation: each inlier's z^2/2 averages 1/2
    # for the right signature, so a long series (Linux's 8 FINs, libslirp's
    # dozen) would look surprising for being long. Beyond 3 packets, that
    # expectation is subtracted (up to 3 it is left: the novelty threshold was
    # set on Hershel's 2-5 packet series; bench/accuracy.py measures both).
    dof = 0.5 * np.maximum(_colsum(inl) - 3.0, 0.0)
    fit = np.maximum(quad - dof, 0.0) + penalty + LOST_FIT * lost + a.base_fit
    cost = quad + penalty + LOST * lost + a.base
    cost += 0.5 * np.log(prec * var_o) + logtol + rst_logtol
    cost += n_out * np.log(OUTLIER_US / REF_TOL_US)
    # keep the better alignment per signature
    pick = (cost[n_rows:] < cost[:n_rows]).astype(np.int64)
    sel = np.arange(n_rows) + pick * n_rows
    # positions and offsets: only the few candidates shown need them
    pos = _Lazy(lambda v: np.where(ok[:, v], c[:, v] - a.row_start[v], -1), sel)
    off = _Lazy(lambda v: np.where(ok[:, v], r[:, v] - shift[v], 0.0), sel)
    out = [x[sel] for x in (cost, fit, lost + a.k0, unexpl, rst_code, a.k0, shift, tail)]
    return out[:2] + [pos, off] + out[2:]


class _Lazy:
    """Row ``i`` of a rows x packets result, computed when asked for."""

    __slots__ = ("_f", "_sel")

    def __init__(self, f, sel):
        self._f = f
        self._sel = sel

    def __getitem__(self, i):
        return self._f(self._sel[i])


def _colsum(x: np.ndarray) -> np.ndarray:
    """Sum over the (few) packets: faster than ``sum(axis=0)`` for short axes."""
    if len(x) == 0:
        return np.zeros(x.shape[1])
    acc = x[0].astype(float)
    for row in x[1:]:
        acc = acc + row
    return acc


def _listened(fp: StateFingerprint) -> float:
    """How long after the first packet of the series we surely listened (µs).

    Exact when the scanner recorded it (``listened_us``); from a fingerprint
    line only ``Time`` (whole seconds from the stimulus) is known, so a second
    is taken off for its rounding and the first packet's own delay."""
    if fp.listened_us is not None:
        return fp.listened_us - LISTEN_SLACK_US
    return fp.time_s * 1e6 - 1e6


def _count_tail(prep: _Prep, last, anchor, window) -> np.ndarray:
    """Expected packets after the last matched one that should have arrived."""
    b = prep.both
    horizon = np.minimum(anchor + window, b.time_us)
    # a row's expected times increase: those up to the horizon end at ``end``
    # (flat index), and the due ones are those after ``last``
    end = np.searchsorted(prep.key, b.rowbase + horizon, side="right")
    return np.maximum(end - last - 1, 0)


RST_STATES = ("-", "match", "wrong", "unexpected", "missing")


def _rst(prep, fp, obs, anchor, jitter):
    """The final RST (2 x rows): code (index in RST_STATES), penalty, and when it
    matches its weight 1/tol^2, residual and log-tolerance for the shift model."""
    n = len(anchor)
    b = prep.both
    code = np.zeros(n, dtype=np.int64)
    zero = np.zeros(n)
    if fp.rst_us is None:
        due = b.has_rst & (b.rst_t - anchor <= _listened(fp))
        code[due] = 4
        return code, np.where(due, RST_MISSING, 0.0), zero, zero, zero
    t = (obs[-1] if len(obs) else 0.0) + fp.rst_us + anchor
    exp_t = np.where(b.has_rst, b.rst_t, t)
    tol = _tol(exp_t - anchor, b.rst_s, jitter)
    r = t - exp_t
    good = b.has_rst & (np.abs(r) <= Z_MAX * np.sqrt(tol**2 + b.off_s**2 + jitter**2))
    unknown = ~good & (t > b.time_us)  # after the signature's window
    pen = np.where(good | unknown, 0.0, UNEXPLAINED)
    code[:] = np.where(good, 1, np.where(b.has_rst, 2, 3))
    w = np.where(good, 1.0 / tol**2, 0.0)
    return code, pen, w, np.where(good, r, 0.0), np.where(good, np.log(tol / REF_TOL_US), 0.0)


# --- header ------------------------------------------------------------------


def _strip_ok(obs_opts: str, sig_opts: str) -> bool:
    """obs options = signature options with some kinds removed (NOPs ignored)."""
    a, b = obs_opts.replace("N", ""), sig_opts.replace("N", "")
    it = iter(b)
    return len(a) < len(b) and all(ch in it for ch in a)


class _HeaderArrays:
    """Header features of every signature as arrays; option costs memoised."""

    def __init__(self, sigs: list[Signature]):
        f = [s.features for s in sigs]
        self.has = np.array([x is not None for x in f])
        self.win = np.array([x.window if x else -1 for x in f])
        self.ttl = np.array([x.ttl if x else -1 for x in f])
        self.df = np.array([x.df if x else False for x in f])
        self.mss = np.array([x.mss if x and x.mss is not None else -1 for x in f])
        self.ws = np.array([x.wscale if x and x.wscale is not None else -1 for x in f])
        opts = sorted({x.options for x in f if x})
        self.opt_names = opts
        pos = {o: k for k, o in enumerate(opts)}
        self.opt = np.array([pos[x.options] if x else 0 for x in f])
        self.memo: dict[str, np.ndarray] = {}
        self.cost_memo: dict[tuple, np.ndarray] = {}  # header fields -> cost per signature

    def opt_cost(self, o: str) -> np.ndarray:
        if o not in self.memo:
            self.memo[o] = np.array(
                [
                    0.0 if o == s else W_OPT_STRIP if _strip_ok(o, s) else W_OPT
                    for s in self.opt_names
                ]
            )
        return self.memo[o][self.opt]


def _header(db: Database, f: SynAckFeatures) -> np.ndarray:
    """Header cost of one observed SYN-ACK against every signature (read-only;
    memoised: a fleet's hosts of one stack share their header fields)."""
    h = db.__dict__.get("_cronos_hdr")
    if h is None:
        h = _HeaderArrays(list(db.signatures))
        object.__setattr__(db, "_cronos_hdr", h)
    key = (f.window, f.ttl, f.df, f.mss, f.wscale, f.options)
    hit = h.cost_memo.get(key)
    if hit is None:
        if len(h.cost_memo) >= 4096:
            h.cost_memo.clear()
        hit = h.cost_memo[key] = _header_cost(h, f)
        hit.flags.writeable = False
    return hit


def _header_cost(h: _HeaderArrays, f: SynAckFeatures) -> np.ndarray:
    c = np.where((f.ttl <= h.ttl) & (h.ttl - f.ttl <= MAX_HOPS), 0.0, W_TTL)
    c += np.where(h.df != f.df, W_DF, 0.0)
    c += np.where(h.win != f.window, W_WIN, 0.0)
    mss = -1 if f.mss is None else f.mss
    c += np.where(h.mss == mss, 0.0, np.where((mss >= 0) & (mss < h.mss), W_MSS_DOWN, W_MSS_OTHER))
    if f.wscale is not None:
        c += np.where((h.ws >= 0) & (h.ws != f.wscale), W_WS, 0.0)
    c += h.opt_cost(f.options)
    return np.where(h.has, c, W_NO_HDR)


def _header_notes(s: Signature, f: SynAckFeatures | None) -> str:
    """Which header fields differ (for ``how``)."""
    if f is None or s.features is None:
        return "" if f is None else "no header in signature"
    g, why = s.features, []
    if not (f.ttl <= g.ttl and g.ttl - f.ttl <= MAX_HOPS):
        why.append(f"TTL {f.ttl}>{g.ttl}" if f.ttl > g.ttl else f"TTL {f.ttl}<<{g.ttl}")
    if f.df != g.df:
        why.append("DF")
    if f.window != g.window:
        why.append(f"W {f.window:X}!={g.window:X}")
    if f.mss != g.mss:
        why.append(f"MSS {f.mss}!={g.mss}")
    if f.options != g.options:
        why.append(("stripped " if _strip_ok(f.options, g.options) else "O ") + g.options)
    if f.wscale is not None and g.wscale is not None and f.wscale != g.wscale:
        why.append("WS")
    return ", ".join(why)


# --- the matcher -------------------------------------------------------------


def match(
    observations: Sequence, db: Database, *, top: int = 5, novelty: float = NOVELTY
) -> MatchResult:
    """Rank the database's signatures against one target's observations.

    ``observations``: ``Observation`` objects (only ``ok`` and ``aborted`` ones
    count, an aborted one with the time actually listened as its window),
    ``StateFingerprint`` objects, or ``(StateFingerprint, SynAckFeatures|None)``.
    A signature without an observed state gets ``MISSING_STATE`` for it and
    that observation does not count in its fit. ``novelty``: mean fit cost per
    observation above which the verdict is "no match" (None).
    """
    obs = _normalise(observations)
    sigs = db.signatures
    n_sig = len(sigs)
    total = np.zeros(n_sig)
    fit = np.zeros(n_sig)
    success = np.zeros(n_sig, dtype=np.int64)
    covered = np.zeros(n_sig, dtype=np.int64)
    per_obs = []  # (obs, prep, result arrays): the `how` of the top candidates
    # per method: observations, and how many of them miss a signature's tail
    tail_n: dict[Method, int] = {}
    tail_all: dict[Method, np.ndarray] = {}
    for o in obs:
        m = o.fp.method
        if m is Method.SYN_RCVD:
            prep = _prep_syn(db)
            jitter = float(JITTER_US)
        else:
            idx = db.with_method(m)
            prep = _Prep(sigs, idx, m, _closing_scales(db, idx, m, o.fp.connect_us))
            jitter = JITTER_US + 0.5 * (o.fp.connect_us or 0)
        row_cost = np.full(n_sig, MISSING_STATE + MISSING_PER_PKT * o.fp.nb_pkt)
        res = None
        if len(prep.idx):
            res = _timing(prep, o.fp, jitter)
            c, f = res[0], res[1]
            if o.features is not None:
                hc = _header(db, o.features)[prep.idx]
                c = c + hc
                f = f + hc
            row_cost[prep.idx] = c
            fit[prep.idx] += f
            success[prep.idx] += (res[5] == 0) & (f <= novelty)
            covered[prep.idx] += 1
            t = np.zeros(n_sig, dtype=bool)
            t[prep.idx] = res[-1] > 0
            tail_n[m] = tail_n.get(m, 0) + 1
            tail_all[m] = tail_all.get(m, np.ones(n_sig, dtype=bool)) & t
        total += row_cost
        per_obs.append((o, prep, res))
    # Loss is random: the same expected packet(s) missing at the end of every
    # try of a state means the stack stops earlier, not that the path lost them.
    for m, n in tail_n.items():
        if n >= 2:
            pen = np.where(tail_all[m], TAIL_AGAIN * n, 0.0)
            total += pen
            fit += pen
    block = _observation_block(obs)
    if not obs or n_sig == 0 or not covered.any():
        return MatchResult((), None, None, 0.0, 0, len(obs), float("inf"), block)
    total = np.where(covered > 0, total, np.inf)  # nothing in common: cannot rank
    # Signatures that explain the observation (fit below the novelty threshold)
    # rank before those that do not: a tight signature that misses a packet or
    # its RST must not outrank a broader one that explains every packet.
    mean_fits = fit / np.maximum(covered, 1)
    fits = (mean_fits <= novelty) & ((success * 2) >= covered)
    order = np.lexsort((total, ~fits))
    order = order[np.isfinite(total[order])]
    best = total[order[0]]
    n_fit = int(fits[order].sum())
    # the posterior keeps every signature: a likelier one that fails the fit
    # still lowers the confidence of the verdict
    post = np.exp(-(total[order] - total[order].min()))
    post /= post.sum()
    ties = int(np.count_nonzero(total[order][: max(n_fit, 1)] <= best + TIE))
    top_i = order[0]
    mean_fit = float(fit[top_i] / covered[top_i])
    quality = float(np.clip((novelty - mean_fit) / max(novelty - 1.0, 0.5), 0.0, 1.0))
    group_p = float(post[:ties].sum())
    cands = []
    for rank, i in enumerate(order[: max(top, ties)]):
        how = tuple(_how(sigs, i, o, prep, res, novelty) for o, prep, res in per_obs)
        conf = (group_p / ties if rank < ties else float(post[rank])) * quality
        cands.append(Candidate(sigs[i], -float(total[i]), conf, int(success[i]), len(obs), how))
    # a verdict nobody would bet on (a likelier signature fails the fit) is none
    novel = (
        mean_fit > novelty
        or success[top_i] * 2 < covered[top_i]
        or group_p * quality < MIN_CONFIDENCE
    )
    verdict = None if novel else " or ".join(sigs[i].name for i in order[:ties])
    fam = None if novel else _family(sigs, order, post)
    conf = 0.0 if novel else group_p * quality
    return MatchResult(tuple(cands), verdict, fam, conf, ties, len(obs), mean_fit, block)


_FAMILIES: dict[int, tuple[tuple, list[str]]] = {}


def _families(sigs) -> list[str]:
    """Family of every signature (memoised per signature tuple)."""
    hit = _FAMILIES.get(id(sigs))
    if hit is None or hit[0] is not sigs:
        if len(_FAMILIES) > 8:
            _FAMILIES.clear()
        hit = _FAMILIES[id(sigs)] = (sigs, [s.family for s in sigs])
    return hit[1]


def _family(sigs, order, post) -> str | None:
    """The family holding >= 90% of the posterior, if any (class-level verdict)."""
    mass: dict[str, float] = {}
    for rank, i in enumerate(order[:50]):
        if post[rank] < 1e-4:  # sorted: the rest cannot change the answer
            break
        fam = _families(sigs)[i] or "?"
        mass[fam] = mass.get(fam, 0.0) + float(post[rank])
    if not mass:  # fitting signatures rank first: the best one can hold < 1e-4 of the mass
        return None
    fam, p = max(mass.items(), key=lambda kv: kv[1])
    return fam if fam != "?" and p >= 0.9 else None


def _how(sigs, i, o: _Obs, prep: _Prep, res, novelty: float) -> StateHow:
    m = o.fp.method
    r = prep.inv.get(int(i)) if res is not None else None
    if r is None:  # the signature has no such state
        return StateHow(m, o.try_index, (), (), 0, False, 0, 0, "-", 1.0, "", MISSING_STATE, False)
    cost, fitc, pos, off, lost, unexpl, rst_state, k0, shift, _tail = (a[r] for a in res)
    scale = 1.0
    if m is not Method.SYN_RCVD:
        gaps = sigs[i].states[m].gaps_us
        if gaps:
            scale = float(prep.t[prep.start[r + 1] - 1] / sum(gaps))
    return StateHow(
        method=m,
        try_index=o.try_index,
        positions=tuple(pos.tolist()),
        offsets_us=tuple(np.rint(off).astype(np.int64).tolist()),
        lost=int(lost),
        first_lost=bool(k0),
        shift_us=int(round(shift)),
        unexplained=int(unexpl),
        rst=RST_STATES[int(rst_state)],
        scale=round(scale, 4),
        header=_header_notes(sigs[i], o.features),
        cost=float(cost),
        success=bool(unexpl == 0 and fitc <= novelty),
    )


def _observation_block(obs: list[_Obs]) -> str:
    """The observation as a database block (p0f's dump_sig), one try per state."""
    lines = ["Fingerprint UNKNOWN (edit me)", "Class unknown", "Source cron-os classify"]
    feats = next((o.features for o in obs if o.features is not None), None)
    if feats is not None:
        lines.append(feats.line())
    rst = []
    for m in Method:
        fp = next((o.fp for o in obs if o.fp.method is m), None)
        if fp is not None:
            lines.append(fp.line())
            if fp.rst_us is not None:
                rst.append(f"{m.rst_key}={fp.rst_us}")
    if rst:
        lines.append(f"CronOS_Rst({'%'.join(rst)})")
    return "\n".join(lines) + "\n"
