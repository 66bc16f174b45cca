"""Self-calibration: estimate the path model from a batch of targets (EM).

Faulds' idea (Shamsi, Cline, Loguinov, CCS 2017): the loss rate, the delay
distribution, the probability that each header field was changed and the
popularity of each stack are unknown, but a batch of observations holds them.
Expectation-maximisation alternates:

* E: classify every target under the current ``PathModel`` (``match.score``):
  its posterior over the signatures and the unknown stack, and for its best
  signatures the alignment (packets lost, packets matched), the header fields
  that differ, and the posterior over the queueing scales of the grid;
* M: the new model is what those imply, each with a small prior weight so that
  a field nobody changed keeps a non-zero probability: the loss rate (lost /
  expected packets), the queueing-scale weights (a non-parametric delay
  distribution: one scale per path, ten scales from 1 ms to 1.4 s), each
  header field's change rate, each stack family's popularity (shared by its
  signatures: see ``_family_popularity``), and the share of unknown stacks.

Iterations stop when no parameter moves by more than 2 % (at most
``iterations``). A random sample of at most ``sample`` targets is enough to
estimate a dozen numbers; every target is then classified with the result.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType

import numpy as np

from .db import Database
from .match import (
    DEFAULT_MODEL,
    MAX_HOPS,
    PathModel,
    memo_per_signature,
    mss_went_with_options,
    result_rows,
    score,
)

FIELDS = ("window", "ttl", "df", "mss", "options", "wscale")
TOP = 5  # signatures per target whose alignment and header feed the M step
MIN_TARGETS = 200  # below this, the batch says too little: keep the prior
#: tries of one state per target that the estimate reads: a path's dozen
#: numbers are told by many targets, not by the 50th try at one (the Hershel+
#: database file read as 420 targets of 50 tries: 126 s in all, now 34 s)
TRIES_READ = 3


@dataclass(frozen=True)
class Calibration:
    model: PathModel
    targets: int  # targets the estimate rests on
    iterations: int
    history: tuple[tuple[float, float, float], ...]  # (loss, mean delay µs, unknown) per step

    def summary(self) -> str:
        m = self.model
        ch = ", ".join(f"{k} {v:.1%}" for k, v in m.change.items())
        return (
            f"path model estimated from {self.targets} targets in {self.iterations} "
            f"EM iterations: loss {m.loss:.1%}, mean queueing delay "
            f"{m.mean_delay_us() / 1000:.0f} ms, header changes: {ch}; "
            f"unknown stacks {m.unknown_prior:.1%}"
        )


def _differs(field: str, f, g) -> bool | None:
    """Did the path change ``field`` (None: not comparable)?"""
    if g is None:
        return None
    if field == "df" and (f.v6 or g.v6):
        return None  # no DF bit in IPv6
    f, g = f.v4_equivalent(), g.v4_equivalent()  # IPv6 fields as over IPv4
    if field == "window":
        return f.window != g.window
    if field == "ttl":
        return not (f.ttl <= g.ttl and g.ttl - f.ttl <= MAX_HOPS)
    if field == "df":
        return f.df != g.df
    if field == "mss":
        if mss_went_with_options(f) and g.mss is not None:
            return None  # the options' change, not the MSS's
        return f.mss != g.mss
    if field == "options":
        return f.options != g.options
    if f.wscale is None or g.wscale is None:
        return None
    return f.wscale != g.wscale


def calibrate(
    targets: Sequence[Sequence],
    db: Database,
    *,
    model: PathModel = DEFAULT_MODEL,
    iterations: int = 10,
    sample: int = 2000,
    seed: int = 0,
) -> Calibration:
    """Estimate the path model from ``targets`` (each: one target's observations)."""
    chosen = list(targets)
    if len(chosen) > sample:
        chosen = random.Random(seed).sample(chosen, sample)
    if len(chosen) < MIN_TARGETS:
        return Calibration(model, len(chosen), 0, ())
    chosen = [_first_tries(obs) for obs in chosen]
    n_sig = len(db.signatures)
    group, n_group = _groups(db)
    mass = _prior_mass(db)
    history = []
    steps = 0
    for _ in range(iterations):
        steps += 1
        lost = kept = 0.0
        diff = dict.fromkeys(FIELDS, 0.0)
        seen = dict.fromkeys(FIELDS, 0.0)
        pop = np.zeros(n_sig)
        unknown = 0.0
        weight = 0.0
        # per (target, signature): its theta log-likelihoods, its weight, and
        # the signature's own timer spread there (the largest of its states)
        lls, lws, spread = [], [], []
        for obs in chosen:
            sc = score(obs, db, model)
            if sc is None:
                continue
            known = 1.0 - sc.p_unknown
            unknown += sc.p_unknown
            pop += sc.post
            top = np.argpartition(-sc.post, min(TOP, n_sig - 1))[:TOP]
            w = sc.post[top]
            if w.sum() <= 0:
                continue
            w = known * w / w.sum()
            weight += known
            lls += [sc.ll_of(i) for i in top]
            lws += w.tolist()
            s_bar = np.zeros(len(top))
            for _o, tab, res, _g in sc.per_obs:
                if res is None:
                    continue
                rows, cols, n = result_rows(tab, res, top)
                if not len(n):
                    continue
                lost += float(w[n] @ np.asarray(cols.lost[rows], dtype=float))
                kept += float(w[n] @ ((cols.pos[rows] >= 0).sum(axis=1) + 1.0))
                s_bar[n] = np.maximum(s_bar[n], cols.s_bar[rows])
            spread += s_bar.tolist()
            if sc.feats is not None:
                for i, wi in zip(top.tolist(), w.tolist(), strict=True):
                    for f, d in memo_per_signature(_DIFFS, db.signatures[i], sc.feats,
                                                   _header_diffs, 100_000):  # fmt: skip
                        seen[f] += wi
                        diff[f] += wi * d
        if weight <= 0:
            break
        theta = _theta_weights(*_exact_timers(np.array(lls), np.array(lws), np.array(spread)),
                               model)  # fmt: skip
        loss = float(np.clip((lost + 0.5) / (lost + kept + 10.0), 0.002, 0.5))
        change = {
            f: float(np.clip((diff[f] + 0.5) / (seen[f] + 10.0), 0.003, 0.5))
            if seen[f] > 0 else model.change[f]
            for f in FIELDS
        }  # fmt: skip
        popularity = _family_popularity(pop, group, n_group, mass)
        unk = float(np.clip((unknown + 1.0) / (len(chosen) + 10.0), 0.01, 0.5))
        new = replace(
            model,
            loss=loss,
            theta_weights=tuple(float(x) for x in theta),
            change=MappingProxyType(change),
            popularity=tuple(float(x) for x in popularity),
            unknown_prior=unk,
            origin=f"estimated from {len(chosen)} targets",
        )
        history.append((loss, new.mean_delay_us(), unk))
        moved = _moved(model, new)
        model = new
        if moved < 0.02:
            break
    return Calibration(model, len(chosen), steps, tuple(history))


_DIFFS: dict = {}  # (signature, header) -> ``_header_diffs``: every iteration asks again


def _header_diffs(sig, feats) -> tuple:
    """(field, 0/1) for each field that ``_differs`` can compare."""
    g = sig.header_for(feats.v6)
    return tuple((f, float(d)) for f in FIELDS if (d := _differs(f, feats, g)) is not None)


def _first_tries(obs: Sequence) -> list:
    """A target's observations, at most ``TRIES_READ`` of each state."""
    seen: dict = {}
    out = []
    for o in obs:
        m = o[0].method if isinstance(o, tuple) else o.method  # (fingerprint, header)
        seen[m] = seen.get(m, 0) + 1
        if seen[m] <= TRIES_READ:
            out.append(o)
    return out


def _groups(db: Database) -> tuple[np.ndarray, int]:
    """Each signature's popularity group: its family (Linux, Windows,
    embedded, ...); the signatures without one form one group."""
    fams = sorted({s.family for s in db.signatures if s.family})
    where = {f: k for k, f in enumerate(fams)}
    return np.array([where.get(s.family, len(fams)) for s in db.signatures]), len(fams) + 1


def _prior_mass(db: Database) -> np.ndarray:
    """Each signature's share of the prior (a Law's variants share their
    block's: a family of 500 settings weighs one block, not 500)."""
    from .match import _compiled

    w = np.exp(_compiled(db).log_prior)
    return w / w.sum()


def _family_popularity(pop: np.ndarray, group: np.ndarray, n_group: int,
                       mass: np.ndarray) -> np.ndarray:  # fmt: skip
    """Per signature, its family's share of the batch over the family's share
    of the prior (``mass``), one pseudo-target per family. A batch of a
    thousand targets against hundreds of signatures says how common Linux or
    Windows is, not which of near-identical signatures is
    the common one: estimated per signature, the weights followed the batch's
    own noise (a signature that won a near tie once won the next ones), which
    lowered top-1 in bench/accuracy.py by up to a point."""
    share = (np.bincount(group, weights=pop, minlength=n_group) + 1.0) / (pop.sum() + n_group)
    size = np.bincount(group, weights=mass, minlength=n_group)
    return share[group] / np.maximum(size[group], 1e-12)


#: µs: a stack whose timer spread is at most this keeps exact time: its
#: arrivals' scatter is the path's
EXACT_SPREAD_US = 5_000.0
MIN_EXACT = 50.0  # targets (by weight) of such stacks enough to estimate the delay alone


def _exact_timers(lls: np.ndarray, w: np.ndarray, spread: np.ndarray):
    """The (target, signature) pairs the queueing-scale weights are estimated
    from: those of stacks that keep exact time, if there are enough of them.
    The matcher's queueing likelihood takes a stack's scatter and the path's
    together (a scale theta + s_bar, s_bar the rms of the stack's spreads over
    the packets): where one late packet has a spread of hundreds of ms, most
    of a path's delay was put down to the stack and the estimated delay was a
    third to a half low (bench/accuracy.py, calibrate). The path is the same
    whatever stack answers, so the exact ones measure it for all."""
    exact = spread <= EXACT_SPREAD_US
    if w[exact].sum() >= MIN_EXACT:
        return lls[exact], w[exact]
    return lls, w


def _theta_weights(lls: np.ndarray, w: np.ndarray, model: PathModel, steps: int = 200):
    """Mixture weights of the queueing scales, given each target's likelihood
    of every scale (its signatures fixed): EM on the weights alone, to
    convergence, with two pseudo-targets of the prior."""
    prior = np.asarray(model.theta_weights, dtype=float)
    prior = prior / prior.sum()
    cur = prior.copy()
    lik = np.exp(lls - lls.max(axis=1, keepdims=True))
    for _ in range(steps):
        r = lik * cur[None, :]
        r /= r.sum(axis=1, keepdims=True)
        new = ((w[:, None] * r).sum(axis=0) + 2.0 * prior) / (w.sum() + 2.0)
        if np.abs(new - cur).max() < 1e-6:
            return new
        cur = new
    return cur


#: a probability this small (absolute) moves nothing a verdict can see: the
#: share of unknown stacks decays slowly (EM on a mixture weight: 0.18, 0.09,
#: 0.064, 0.050, 0.042 ... on a batch of known stacks) and, compared
#: relatively, kept every run to its last iteration
PROB_STEP = 0.01


def _moved(a: PathModel, b: PathModel) -> float:
    """Largest change between two models, in units of the 2 % step: the loss
    rate and the mean delay relatively, the share of unknown stacks and the
    header change rates absolutely (``PROB_STEP`` counts as 2 %)."""
    rel = [(a.loss, b.loss), (a.mean_delay_us(), b.mean_delay_us())]
    out = [abs(y - x) / max(abs(x), 1e-9) for x, y in rel]
    prob = [(a.unknown_prior, b.unknown_prior)] + [(a.change[f], b.change[f]) for f in FIELDS]
    out += [0.02 * abs(y - x) / PROB_STEP for x, y in prob]
    return max(out)


def describe_default() -> str:
    m = DEFAULT_MODEL
    return (f"default path model: loss {m.loss:.0%}, mean queueing delay "
            f"{m.mean_delay_us() / 1000:.0f} ms")  # fmt: skip
