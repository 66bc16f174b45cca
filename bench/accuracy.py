#!/usr/bin/env python3
"""Accuracy of the Cron-OS matcher on the Hershel+ data, under realistic noise.

    .venv/bin/python bench/accuracy.py              # every section (~10 min)
    .venv/bin/python bench/accuracy.py --quick      # 1 held-out sample per stack
    .venv/bin/python bench/accuracy.py --only target,speed

For each of the 420 Hershel+ stacks, ``--test`` of its 50 samples are held
out. Each held-out sample is sent through a simulated path (``bench/noise.py``:
one-sided queueing delay of several families, loss of any packet, header
changes), written as Hershel+'s live fingerprinter writes an observation,
read back by ``cron-os classify``'s reader, and classified alone (one
observation per target, Hershel+'s setting) or two per target (``--tries``).

Two databases: the full built-in one (its Hershel+ blocks were built from all
50 samples, the held-out ones included), and one rebuilt from the other
samples only (``scripts/hershel2db.py``'s code) plus the non-Hershel+ files.
A signature identical in every feature to the right one (same header and
packet count, arrivals within 3 sigma of both spreads and 10 ms) counts as
right. Leave-stacks-out: 10 % of the stacks removed from the rebuilt database;
their observations should give "no match" or a confidence under 0.5.

Sections (``--only``): ``sweep`` (delay mean 0/10/50/150/300 ms, loss
0/3/10 %, header changes 0/10/25 %), ``target`` (the heaviest level Hershel+
handles: 150 ms, 8 % loss, 10 % header changes, every delay family, both
databases, one and two tries, leave-stacks-out, the Annex 1 table),
``calibrate`` (EM on a batch: accuracy with and without, estimated loss and
mean delay against the true ones), ``speed`` (``cron-os classify FILE -oJ
OUT`` on 12,600 observations, one core; the slowest single input).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from noise import FAMILIES, Noise, hershel_line, observe  # noqa: E402

from cronos.analysis.classify import read_hershel  # noqa: E402
from cronos.analysis.db import Database, load_db  # noqa: E402
from cronos.analysis.match import DEFAULT_MODEL, match  # noqa: E402
from cronos.model import Method  # noqa: E402

_spec = importlib.util.spec_from_file_location("hershel2db", ROOT / "scripts" / "hershel2db.py")
h2d = importlib.util.module_from_spec(_spec)
sys.modules["hershel2db"] = h2d
_spec.loader.exec_module(h2d)

HP = "420OS_db.txt"
CONFIDENT = 0.5
TARGET = Noise("exp", 150, 0.08, 0.10)


# --- databases and the truth -----------------------------------------------------------


def builtin_without_hershelplus() -> list:
    return [s for s in load_db().signatures if "[Hershel+ id" not in s.name]


def train_db(stacks, train_idx, exclude=frozenset()) -> Database:
    sigs = []
    for _f, _tag, sid, label, samples in stacks:
        if sid in exclude:
            continue
        chosen = [samples[i] for i in train_idx[sid]]
        src = f"hershel {HP} id={sid} ({len(chosen)} samples)"
        sigs.append(h2d.stack_signature(chosen, f"{label} [Hershel+ id {sid}]", src,
                                        h2d.class_for(label)))  # fmt: skip
    return Database(tuple(h2d.merge_identical(sigs) + builtin_without_hershelplus()))


def truth_index(db: Database) -> dict[int, int]:
    """Hershel+ stack id -> index of its signature in db."""
    out = {}
    for k, s in enumerate(db.signatures):
        for part in s.name.split(" or "):
            if "[Hershel+ id " in part:
                out[int(part.rsplit("id ", 1)[1].rstrip("]"))] = k
    return out


def _arrivals(sig):
    m = Method.SYN_RCVD
    fp = sig.states.get(m)
    if fp is None:
        return np.zeros(0), np.zeros(0)
    t = np.cumsum(fp.gaps_us + ((fp.rst_us,) if fp.rst_us is not None else ()))
    s = np.array(sig.spread_us.get(m, (30_000,) * fp.nb_pkt)
                 + tuple(sig.rst_spread_us.values()), dtype=float)  # fmt: skip
    keep = t <= 120e6
    return t[keep], s[: len(t)][keep]


def _close(x, y) -> bool:
    if x.features is None or y.features is None:
        return False
    fx, fy = x.features, y.features
    if (fx.window, fx.ttl, fx.df, fx.mss, fx.options) != (fy.window, fy.ttl, fy.df, fy.mss,
                                                          fy.options):  # fmt: skip
        return False
    tx, sx = _arrivals(x)
    ty, sy = _arrivals(y)
    if len(tx) != len(ty):
        return False
    m = Method.SYN_RCVD
    off = x.offset_spread_us.get(m, 0) ** 2 + y.offset_spread_us.get(m, 0) ** 2
    tol = 3 * np.sqrt(sx**2 + sy**2 + off + 2 * 10_000**2)
    return bool(np.all(np.abs(tx - ty) <= tol))


def equivalents(db: Database, truth: dict[int, int]) -> dict[int, set[int]]:
    """stack id -> signature indices identical to its own in every feature."""
    by_hdr: dict[tuple, list[int]] = {}
    for k, s in enumerate(db.signatures):
        if s.features is not None and Method.SYN_RCVD in s.states:
            f = s.features
            by_hdr.setdefault((f.window, f.ttl, f.df, f.mss, f.options), []).append(k)
    out = {}
    for sid, k in truth.items():
        f = db.signatures[k].features
        peers = by_hdr.get((f.window, f.ttl, f.df, f.mss, f.options), [k])
        out[sid] = {k} | {j for j in peers if _close(db.signatures[k], db.signatures[j])}
    return out


# --- one condition ---------------------------------------------------------------------


def make_lines(held, noise: Noise, tries: int, rng) -> list[tuple[int, str]]:
    """[(true stack id, observation lines of one target)]."""
    out, ident = [], 0
    for sid, samples in held:
        for k in range(0, len(samples) - tries + 1, tries):
            ident += 1
            lines, header = [], None
            for s in samples[k : k + tries]:
                # the tries of one target cross one path: one header rewrite
                seen = observe(s, noise, rng, header)
                if seen is not None:
                    header = seen[2]
                    lines.append(hershel_line(ident, seen))
            if lines:
                out.append((sid, "\n".join(lines)))
    return out


def _families(sig) -> set[str]:
    return {c.family.lower() for c in sig.classes if c.family}


def _os_classes(sig) -> set[tuple[str, str]]:
    """(vendor, family) of each class a signature names (not "unknown")."""
    return {(c.vendor.lower(), c.family.lower()) for c in sig.classes
            if c.vendor and c.vendor != "unknown" and c.family}  # fmt: skip


def _family_block(sig) -> bool:
    """A block that stands for a whole family (derived from source, or a
    law): naming it for an unlisted member of that family is right."""
    return bool(sig.law_block) or any(x.split()[0] == "source" for x in sig.sources)


def evaluate(db, cases, eq, *, known=True, model=None, fams=None, oses=None) -> dict:
    """``fams``: {stack id: its families}, for stacks left out of ``db``: a
    family block (``_family_block``) of one of them named is counted apart.
    ``oses``: {stack id: its (vendor, family) classes}: a confident wrong
    answer that names one of them is also counted (``same_os``)."""
    model = model or DEFAULT_MODEL
    r = dict(n=0, obs=0, top1=0, top3=0, right=0, answered=0, wrong=0, confident_wrong=0,
             equivalent=0, family=0, low=0, t=0.0, slowest=0.0, conf=[], same_os=0)  # fmt: skip
    for sid, text in cases:
        obs = read_hershel(text, "bench")
        t0 = time.perf_counter()
        res = match(obs, db, top=3, model=model)
        dt = time.perf_counter() - t0
        r["t"] += dt
        r["slowest"] = max(r["slowest"], dt)
        r["n"] += 1
        r["obs"] += len(obs)
        good = eq.get(sid, set())
        ranked = [id(c.signature) for c in res.candidates]
        ids = {id(db.signatures[k]) for k in good}
        named = ranked[: max(res.ties, 1)]
        in_group = bool(ids & set(named))
        if known:
            r["top1"] += bool(ranked) and ranked[0] in ids
            r["top3"] += bool(ids & set(ranked[:3]))
        if res.verdict is None:
            continue
        top = res.candidates[0].signature
        family = (not known and not in_group and bool(fams) and _family_block(top)
                  and bool(_families(top) & fams.get(sid, set())))  # fmt: skip
        # (named right, its confidence) of each answered target
        r["conf"].append((in_group or family, res.confidence))
        r["answered"] += 1
        if res.confidence < CONFIDENT:
            r["low"] += 1
        if known and in_group:
            r["right"] += 1
        elif not known and in_group:
            r["equivalent"] += 1
        elif family:
            r["family"] += 1
        else:
            r["wrong"] += 1
            r["confident_wrong"] += res.confidence >= CONFIDENT
            if res.confidence >= CONFIDENT and oses is not None:
                r["same_os"] += bool(_os_classes(top) & oses.get(sid, set()))
    return r


def _changes(m) -> str:
    return ", ".join(f"{f} {v:.1%}" for f, v in m.change.items() if f != "wscale")


#: runs ``cron-os`` and writes its own peak RSS (VmHWM, of the process after
#: exec) to stderr: ``wait4``'s ru_maxrss keeps the high-water mark of the
#: forking bench process across exec, which is not the classifier's
_HWM = ("import atexit, runpy, sys\n"
        "def hwm():\n"
        "    st = open('/proc/self/status').read()\n"
        "    sys.stderr.write('VmHWM ' + st.split('VmHWM:')[1].split()[0] + '\\n')\n"
        "atexit.register(hwm)\n"
        "sys.argv = ['cron-os', *sys.argv[1:]]\n"
        "runpy.run_module('cronos', run_name='__main__')\n")  # fmt: skip


def run_classify(args: list[str], env=None):
    """``cron-os ARGS`` on core 0: (exit status, wall s, CPU s, peak RSS KiB, stderr)."""
    cmd = ["taskset", "-c", "0", sys.executable, "-c", _HWM, *args]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    err = p.stderr.read().decode()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    hwm = [int(x.split()[1]) for x in err.splitlines() if x.startswith("VmHWM ")]
    return status, wall, ru.ru_utime + ru.ru_stime, (hwm[-1] if hwm else -1), err


def pct(a, b) -> str:
    return f"{100.0 * a / b:5.1f} %" if b else "   n/a"


# --- sections --------------------------------------------------------------------------


class Bench:
    def __init__(self, args):
        self.args = args
        self.rng = np.random.default_rng(args.seed)
        self.stacks = [s for s in h2d.all_stacks(args.data) if s[0] == HP]
        self.train_idx, self.held = {}, []
        for _f, _tag, sid, _label, samples in self.stacks:
            perm = self.rng.permutation(len(samples))
            self.train_idx[sid] = sorted(perm[args.test :].tolist())
            self.held.append((sid, [samples[i] for i in perm[: args.test]]))
        self.full = load_db()
        self.full_truth = truth_index(self.full)
        self.full_eq = equivalents(self.full, self.full_truth)
        self.train = train_db(self.stacks, self.train_idx)
        self.train_truth = truth_index(self.train)
        self.train_eq = equivalents(self.train, self.train_truth)

    def cases(self, noise, tries=1, seed_offset=0):
        rng = np.random.default_rng(self.args.seed * 1000 + seed_offset)
        return make_lines(self.held, noise, tries, rng)

    def line(self, label, r):
        n = r["n"]
        print(f"  {label:<44} top-1 {pct(r['top1'], n)}  top-3 {pct(r['top3'], n)}  "
              f"no match {pct(n - r['answered'], n)}  confident wrong "
              f"{pct(r['confident_wrong'], n)}  ({n} targets, "
              f"{r['obs'] / max(r['t'], 1e-9):,.0f} obs/s)",
              flush=True)  # fmt: skip

    def sweep(self):
        print("Sweep (full database, one observation per target, exponential delay):")
        levels = [Noise("none", 0, 0, 0)]
        levels += [Noise("exp", m, 0.03, 0.10) for m in (10, 50, 150, 300)]
        levels += [Noise("exp", 50, p, 0.10) for p in (0.0, 0.10)]
        levels += [Noise("exp", 50, 0.03, h) for h in (0.0, 0.25)]
        for k, noise in enumerate(levels):
            r = evaluate(self.full, self.cases(noise, seed_offset=k), self.full_eq)
            self.line(noise.label, r)

    def target(self):
        print(f"\nTarget level ({TARGET.label}):")
        for k, fam in enumerate(f for f in FAMILIES if f != "none"):
            noise = Noise(fam, TARGET.mean_ms, TARGET.loss, TARGET.header)
            r = evaluate(self.full, self.cases(noise, seed_offset=100 + k), self.full_eq)
            self.line(f"full DB, {fam}", r)
        cases = self.cases(TARGET, seed_offset=200)
        r = evaluate(self.train, cases, self.train_eq)
        self.line("DB without the held-out samples, exp", r)
        two = self.cases(TARGET, tries=2, seed_offset=201)
        r2 = evaluate(self.full, two, self.full_eq)
        self.line("full DB, exp, two tries per target", r2)
        first = [(sid, text.split("\n")[0]) for sid, text in two]
        self.line("  the same targets, first try only", evaluate(self.full, first, self.full_eq))
        clean = evaluate(self.full, self.cases(Noise("none", 0, 0, 0), seed_offset=202),
                         self.full_eq)  # fmt: skip
        self.line("clean (no noise), full DB", clean)
        self.leave_out(r)

    def leave_out(self, known):
        ids = [s[2] for s in self.stacks]
        rng = np.random.default_rng(self.args.seed + 7)
        tot = None
        for fold in range(self.args.folds):
            out = set(rng.choice(ids, size=len(ids) // 10, replace=False).tolist())
            db = train_db(self.stacks, self.train_idx, exclude=out)
            eq, fams, oses = {}, {}, {}
            for sid in out:  # the removed stack's equivalents still in the database
                sig = self.train.signatures[self.train_truth[sid]]
                eq[sid] = {k for k, s in enumerate(db.signatures) if _close(sig, s)}
                fams[sid] = _families(sig)
                oses[sid] = _os_classes(sig)
            held = [(sid, s) for sid, s in self.held if sid in out]
            rng2 = np.random.default_rng(self.args.seed * 1000 + 300 + fold)
            cases = make_lines(held, TARGET, 1, rng2)
            r = evaluate(db, cases, eq, known=False, fams=fams, oses=oses)
            tot = r if tot is None else {k: tot[k] + r[k] for k in tot}
        nu = tot["n"]
        # a stack's equivalent, or its family's source-derived block, named: right
        ne = nu - tot["equivalent"] - tot["family"]
        honest = ne - (tot["wrong"] - tot["confident_wrong"]) - tot["confident_wrong"]
        print(f"  leave-stacks-out ({self.args.folds} x 10 %): no match "
              f"{pct(nu - tot['answered'], nu)}, equivalent stack named "
              f"{pct(tot['equivalent'], nu)}, its family's source block named "
              f"{pct(tot['family'], nu)}, confident wrong {pct(tot['confident_wrong'], ne)}"
              f" (equivalents and family blocks excluded)")  # fmt: skip
        print(f"  leave-stacks-out: of the confident wrong, the left-out stack's own OS named "
              f"(vendor and family of a Class line, e.g. Solaris 9/10 as Sun_OS_5.10): "
              f"{tot['same_os']} of {tot['confident_wrong']}")  # fmt: skip
        ok = (nu - tot["answered"]) + (tot["wrong"] - tot["confident_wrong"])
        print(f"  leave-stacks-out: no match or confidence < {CONFIDENT}: {pct(ok, ne)} "
              f"(equivalents and family blocks excluded; {honest} honest of {ne})")  # fmt: skip
        print(
            "  confidence threshold: known stacks named right at or above it (DB without the"
            " held-out samples) / absent stacks named wrong at or above it"
        )
        wrong_lo = [c for ok, c in tot["conf"] if not ok]
        right_kn = [c for ok, c in known["conf"] if ok]
        print("   " + "  ".join(f"{t:.2f}: {pct(sum(c >= t for c in right_kn), known['n'])} / "
                                f"{pct(sum(c >= t for c in wrong_lo), ne)}"
                                for t in (0.5, 0.8, 0.9, 0.95)))  # fmt: skip
        n = known["n"]
        print("\n  Annex 1 (SSTIC 2003), target level, DB without the held-out samples")
        print("                      | tool answers                    | no answer")
        print(f"  OS in the database  | correct {pct(known['right'], n)}  false pos. "
              f"{pct(known['wrong'], n)} | false neg. {pct(n - known['answered'], n)}")  # fmt: skip
        print(f"  OS not in database  | error   {pct(tot['wrong'], ne)}"
              f"                     | correct {pct(nu - tot['answered'], ne)}")  # fmt: skip

    def calibrate(self):
        from cronos.analysis.calibrate import calibrate

        print("\nSelf-calibration (EM on the batch), full DB, one observation per target:")
        for k, noise in enumerate([TARGET, Noise("exp", 50, 0.03, 0.10),
                                   Noise("pareto", 300, 0.10, 0.25)]):  # fmt: skip
            cases = self.cases(noise, seed_offset=400 + k)
            groups = [read_hershel(text, "bench") for _sid, text in cases]
            t0 = time.perf_counter()
            cal = calibrate(groups, self.full)
            took = time.perf_counter() - t0
            before = evaluate(self.full, cases, self.full_eq)
            after = evaluate(self.full, cases, self.full_eq, model=cal.model)
            m = cal.model
            print(f"  {noise.label} ({len(cases)} targets; EM {cal.iterations} iterations, "
                  f"{took:.1f} s on {cal.targets} targets)")  # fmt: skip
            print(f"    loss: true {noise.loss:.1%}, estimated {m.loss:.1%};  mean queueing "
                  f"delay: true {noise.mean_ms:g} ms, estimated {m.mean_delay_us() / 1000:.0f} ms;"
                  f"  header changes estimated {_changes(m)}")  # fmt: skip
            self.line("default model", before)
            self.line("calibrated model", after)

    def speed(self):
        print("\nSpeed: cron-os classify FILE -oJ OUT, 12,600 observations (420 x 30), one core")
        rng = np.random.default_rng(self.args.seed + 11)
        lines, ident = [], 0
        for _f, _tag, _sid, _label, samples in self.stacks:
            for s in samples[:30]:
                seen = observe(s, TARGET, rng)
                if seen is not None:
                    ident += 1
                    lines.append(hershel_line(ident, seen))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "obs.txt"
            path.write_text("\n".join(lines) + "\n")
            out = Path(tmp) / "v.jsonl"
            env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
            status, wall, cpu, hwm, err = run_classify(["classify", str(path), "-oJ", str(out)],
                                                       env)  # fmt: skip
            if status != 0:
                print("  classify failed:", err.strip()[-300:])
                return
            n_out = sum(1 for _ in out.open())
        print(f"  {len(lines):,} observations in {wall:.1f} s wall, {cpu:.1f} s CPU: "
              f"{len(lines) / wall:,.0f} obs/s; {n_out:,} verdict records; peak RSS "
              f"{hwm / 1024:.0f} MiB")  # fmt: skip
        # the slowest single input, in process (one match per target)
        groups = [read_hershel(line, "bench") for line in lines[:3000]]
        match(groups[0], self.full)  # the database's tables are compiled once, at the first
        gc.freeze()  # as the CLI does (``cli.checks.keep_resident``): no full collection
        # walks the database's objects inside a match
        times = []
        for g in groups:
            t0 = time.perf_counter()
            match(g, self.full)
            times.append(time.perf_counter() - t0)
        times.sort()
        print(f"  one input: median {times[len(times) // 2] * 1e3:.2f} ms, 99th percentile "
              f"{times[int(len(times) * 0.99)] * 1e3:.2f} ms, slowest {times[-1] * 1e3:.1f} ms "
              f"({len(times):,} inputs)")  # fmt: skip
        self._lines = lines

    def million(self):
        n = 1_000_000
        print(f"\nMemory: cron-os classify FILE -oJ OUT on {n:,} observations (streamed)")
        if not getattr(self, "_lines", None):
            self.speed()
        base = [x.split(",", 1)[1] for x in self._lines]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "obs.txt"
            with path.open("w") as fh:
                for i in range(n):
                    fh.write(f"{i + 1},{base[i % len(base)]}\n")
            out = Path(tmp) / "v.jsonl"
            status, wall, _cpu, hwm, err = run_classify(["classify", str(path), "-oJ", str(out)])
            if status != 0:
                print("  classify failed:", err.strip()[-300:])
                return
            n_out = sum(1 for _ in out.open())
        print(f"  {n:,} observations in {wall:.0f} s ({n / wall:,.0f} obs/s), {n_out:,} verdict "
              f"records, peak RSS {hwm / 1024:.0f} MiB")  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "hershel")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--test", type=int, default=3, help="held-out samples per stack")
    ap.add_argument("--folds", type=int, default=3, help="leave-stacks-out repetitions")
    ap.add_argument("--quick", action="store_true", help="1 held-out sample per stack, 1 fold")
    ap.add_argument("--only", default="sweep,target,calibrate,speed")
    args = ap.parse_args(argv)
    if args.quick:
        args.test, args.folds = 1, 1
    b = Bench(args)
    print(f"Hershel+: {len(b.stacks)} stacks, {args.test} held-out samples each; full DB "
          f"{len(b.full)} signatures, rebuilt DB {len(b.train)}; seed {args.seed}\n")  # fmt: skip
    for section in args.only.split(","):
        getattr(b, section.strip())()
    return 0


if __name__ == "__main__":
    sys.exit(main())
