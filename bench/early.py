#!/usr/bin/env python3
"""Early verdicts against listening to the end, on the lab's real stacks.

    sudo .venv/bin/python bench/early.py [--profiles linux-default,...] [--tries 3] [--timeout 20]
    sudo .venv/bin/python bench/early.py --delay 60ms --jitter 40ms --loss 3%

Builds a lab, then scans it twice at the same time (distinct source ports):
once with the default early stop, once with ``--full``. For each profile it
prints the median time to verdict (early) against the median listening time
(full), their ratio, and whether the verdicts are the same. The issue's
target: on linux-default, median time to verdict <= 40 % of the full
listening time, with the same verdicts. With ``--delay/--jitter/--loss``
(and ``--jitter-dist``) the lab is impaired as ``lab up`` does it: the early
verdict must still equal the full one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cronos.lab import Lab  # noqa: E402


def _scan(ns: str, ips: list[str], out: Path, extra: list[str], args) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "cronos", "scan", "--netns", ns, *ips, "-p", "80",
           "-m", args.method, "--tries", str(args.tries), "--timeout", str(args.timeout),
           "-q", "-oJ", str(out), *extra]  # fmt: skip
    return subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)


def _load(path: Path) -> tuple[list[dict], dict[str, str]]:
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    obs = [r for r in recs if "state" in r]
    verdicts = {r["target"]: r["verdict"] for r in recs if r.get("type") == "verdict"}
    return obs, verdicts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", default="linux-default,linux-synack2,linux-orphan2,pytcp")
    ap.add_argument("--tries", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=20)
    ap.add_argument("--method", default="slf")
    ap.add_argument("--delay")
    ap.add_argument("--jitter")
    ap.add_argument("--jitter-dist")
    ap.add_argument("--loss")
    args = ap.parse_args()
    profiles = args.profiles.split(",")
    impair = None
    if args.delay or args.jitter or args.loss:
        from cronos.lab.impair import parse_impairment

        impair = parse_impairment(delay=args.delay, jitter=args.jitter, loss=args.loss, seed=1,
                                  dist=args.jitter_dist)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp, Lab.create(profiles, impair=impair) as lab:
        ips = [t.ip for t in lab.targets]
        early_p = _scan(lab.scanner_ns, ips, Path(tmp) / "early.jsonl", [], args)
        full_p = _scan(lab.scanner_ns, ips, Path(tmp) / "full.jsonl", ["--full"], args)
        for p in (early_p, full_p):
            _, err = p.communicate()
            if p.returncode not in (0, 1):
                print(err, file=sys.stderr)
                return 1
        early, early_v = _load(Path(tmp) / "early.jsonl")
        full, full_v = _load(Path(tmp) / "full.jsonl")
        by_ip = {t.ip: t.profile for t in lab.targets}
    path = f", path {impair}" if impair else ""
    print(f"states {args.method}, {args.tries} tries, --timeout {args.timeout:g} s{path}")
    print(f"{'profile':<16} {'verdict (s) p50':>15} {'full (s) p50':>13} {'ratio':>6}  "
          f"{'same verdict':<12} verdict")  # fmt: skip
    ok = True
    for ip, profile in by_ip.items():
        e = [r.get("verdict_s", r["time_s"]) for r in early if r["target"] == ip]
        f = [r["time_s"] for r in full if r["target"] == ip]
        same = early_v.get(ip) == full_v.get(ip)
        ratio = statistics.median(e) / statistics.median(f)
        print(f"{profile:<16} {statistics.median(e):>15.1f} {statistics.median(f):>13.1f} "
              f"{ratio:>6.0%}  {'yes' if same else 'NO':<12} {early_v.get(ip)}"
              + ("" if same else f" (full: {full_v.get(ip)})"))  # fmt: skip
        ok &= same
        if profile == "linux-default":
            passed = ratio <= 0.40 and same
            ok &= passed
            print(f"  target (linux-default): ratio <= 40% and same verdict: "
                  f"{'PASS' if passed else 'FAIL'}")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
