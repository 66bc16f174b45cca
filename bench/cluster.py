#!/usr/bin/env python3
"""A Dask cluster of Cron-OS scanners on one machine, against one process.

    sudo .venv/bin/python bench/cluster.py [--hosts 20000] [--classify 1000000]
        [--only scan,classify]

``scan``: a scale lab of ``--hosts`` addresses (4 target namespaces,
linux-synack2) with two scanner namespaces (``ScaleLab.add_scanner``), a
Dask scheduler on loopback and two ``cron-os worker``s, one per scanner
namespace. The same targets are scanned by one process
(``cron-os scan --netns NS``) and by the cluster (``scan --cluster``), both
``-m s --timeout 3``; the record sets are compared (target, port, state,
try, status, count) and the walls printed. Then the cluster scan again with
worker b killed (SIGKILL) once a quarter of the records has arrived: the
records must still be every host once.

``classify``: ``--classify`` synthetic observations (Hershel+ samples through
bench/noise.py's target-level path, as bench/accuracy.py's ``million``
section) classified by ``cron-os classify FILE -oJ OUT --no-calibrate``
alone, then by ``classify --cluster`` with one worker, then two: observations
per second of each. Target (issue "Internet scale"): two workers >= 1.8x
one worker's throughput.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

CMD = [sys.executable, "-m", "cronos"]

from cronos.lab.dask import LocalCluster  # noqa: E402


def shape(path: Path) -> tuple[list[tuple], int]:
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    keep = [r for r in recs if r.get("type") != "verdict" and r.get("status") != "aborted"]
    meas = [(r["target"], r["port"], r["method"], r["try"], r["status"], r["nb_pkt"])
            for r in keep]  # fmt: skip
    return meas, sum(1 for r in recs if r.get("type") == "verdict")


def timed(cmd: list[str], timeout: float) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return time.monotonic() - t0, r


def bench_scan(args, tmp: Path) -> list[str]:
    from cronos.lab.scale import ScaleLab

    verdicts = []
    n = args.hosts
    print(f"\nScan: {n:,} lab addresses, -m s --timeout 3 --max-rate {args.max_rate:g} "
          "(per process / per worker)")  # fmt: skip
    with ScaleLab.create(n, ["linux-synack2"] * 4) as lab:
        second = lab.add_scanner(2)
        hosts = tmp / "hosts.txt"
        lab.write_targets(hosts)
        common = ["-iL", str(hosts), "-p", "80", "-m", "s", "--timeout", "3",
                  "--max-rate", str(args.max_rate), "--max-hosts", str(args.max_hosts),
                  "--yes", "-q"]  # fmt: skip
        one = tmp / "one.jsonl"
        wall1, r = timed([*CMD, "scan", "--netns", lab.scanner_ns, *common, "-oJ", str(one)], 900)
        print(
            f"  one process:        {wall1:6.1f} s  exit {r.returncode}  {r.stderr.strip()[-200:]}"
        )
        c = LocalCluster(tmp)
        try:
            c.worker("a", lab.scanner_ns)
            c.worker("b", second)
            many = tmp / "cluster.jsonl"
            wall2, r = timed([*CMD, "scan", "--cluster", c.address, *common, "-oJ", str(many),
                              "--shards", str(args.shards)], 900)  # fmt: skip
            print(f"  cluster, 2 workers: {wall2:6.1f} s  exit {r.returncode}  "
                  f"{r.stderr.strip()[-200:]}")  # fmt: skip
            m1, v1 = shape(one)
            m2, v2 = shape(many)
            same = sorted(m1) == sorted(m2)
            print(f"  records: one process {len(m1):,} ({v1:,} verdicts), cluster {len(m2):,} "
                  f"({v2:,} verdicts); the same set: {same}")  # fmt: skip
            ok = same and len(m2) == n
            verdicts.append(f"{'PASS' if ok else 'FAIL'}  cluster scan of {n:,} addresses = "
                            f"one-process scan ({len(m2):,} records)")  # fmt: skip
            # a worker killed with SIGKILL in the middle
            killed = tmp / "killed.jsonl"
            p = subprocess.Popen(
                [*CMD, "scan", "--cluster", c.address, *common, "-oJ", str(killed),
                 "--shards", str(args.shards)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            t0 = time.monotonic()
            while p.poll() is None:
                if killed.exists() and len(killed.read_text().splitlines()) >= n // 4:
                    break
                time.sleep(0.2)
            c.procs["b"].send_signal(signal.SIGKILL)
            c.procs["b"].wait()
            at = time.monotonic() - t0
            _, err = p.communicate(timeout=900)
            wall3 = time.monotonic() - t0
            m3, _v3 = shape(killed)
            keys = [k[:4] for k in m3]
            ok = len(keys) == len(set(keys)) == n
            print(f"  worker b SIGKILLed at {at:.1f} s: {len(m3):,} records, "
                  f"{len(keys) - len(set(keys))} duplicated, {n - len(set(keys))} missing, "
                  f"{wall3:.1f} s, exit {p.returncode} {err.strip()[-200:]}")  # fmt: skip
            verdicts.append(f"{'PASS' if ok else 'FAIL'}  a worker killed mid-scan: nothing lost, "
                            "nothing duplicated")  # fmt: skip
        finally:
            c.close()
            subprocess.run([*CMD, "cleanup"], capture_output=True)
    return verdicts


def synthetic(n: int, path: Path) -> None:
    import accuracy as acc
    import numpy as np
    from noise import hershel_line, observe

    stacks = [s for s in acc.h2d.all_stacks(acc.ROOT.parent / "shared" / "data" / "hershel")
              if s[0] == acc.HP]  # fmt: skip
    rng = np.random.default_rng(11)
    base = []
    for _f, _tag, _sid, _label, samples in stacks:
        for s in samples[:30]:
            seen = observe(s, acc.TARGET, rng)
            if seen is not None:
                base.append(hershel_line(0, seen).split(",", 1)[1])
    with path.open("w") as fh:
        for i in range(n):
            fh.write(f"{i + 1},{base[i % len(base)]}\n")


def bench_classify(args, tmp: Path) -> list[str]:
    n = args.classify
    data = tmp / "obs.txt"
    synthetic(n, data)
    print(f"\nClassify: {n:,} synthetic observations (Hershel+ target level), --no-calibrate")
    rates = {}
    c = LocalCluster(tmp)
    try:
        for label, workers in (("one process", 0), ("cluster, 1 worker", 1),
                               ("cluster, 2 workers", 2)):  # fmt: skip
            while len(c.procs) - 1 < workers:
                c.worker(f"w{len(c.procs)}")
            out = tmp / f"v{workers}.jsonl"
            extra = ["--cluster", c.address] if workers else []
            wall, r = timed([*CMD, "classify", str(data), "-oJ", str(out), "--no-calibrate",
                             *extra], 7200)  # fmt: skip
            lines = sum(1 for _ in out.open()) if out.exists() else 0
            rates[workers] = n / wall
            print(f"  {label:20s} {wall:8.1f} s  {n / wall:8,.0f} obs/s  {lines:,} verdicts  "
                  f"exit {r.returncode} {r.stderr.strip()[-200:]}")  # fmt: skip
    finally:
        c.close()
    ratio = rates[2] / rates[1]
    return [
        f"{'PASS' if ratio >= 1.8 else 'FAIL'}  classify --cluster: 2 workers {ratio:.2f}x "
        f"one worker's throughput (target 1.8x) on {n:,} observations"
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=20_000)
    ap.add_argument("--max-rate", type=float, default=5000)
    ap.add_argument("--max-hosts", type=int, default=10_000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--classify", type=int, default=1_000_000)
    ap.add_argument("--only", default="scan,classify")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("needs root")
    verdicts = []
    with tempfile.TemporaryDirectory(prefix="cronos-bench-cluster-") as d:
        tmp = Path(d)
        for section in args.only.split(","):
            with contextlib.suppress(KeyboardInterrupt):
                verdicts += {"scan": bench_scan, "classify": bench_classify}[section](args, tmp)
    print()
    for v in verdicts:
        print(v)
    return 0


if __name__ == "__main__":
    sys.exit(main())
