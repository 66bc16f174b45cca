#!/usr/bin/env python3
"""Scale of ``cron-os scan -m s``: 100 / 1,000 / 10,000 hosts, and nmap -O.

    .venv/bin/python bench/scale.py [--quick] [--sizes 100,1000,10000]
        [--timeout 5] [--max-rate 5000] [--nmap-hosts 100] [--mix-size 1000]

Needs root. Builds a scale lab (``cronos.lab.scale``: 4 target namespaces,
each host on ``linux-synack3``, SYN-ACK gaps 1020/2020/4100 ms), then for a
single host and for each size runs, from the lab's scanner namespace,

    cron-os scan --netns NS -iL hosts.txt -p 80 -m s --timeout T --max-rate R \
        --max-hosts N --yes -q -oJ out.jsonl

as a subprocess (CPU and peak RSS from ``wait4``), with ``tcpdump -i any``
capturing the SYN-ACKs in the same namespace. Per run it prints wall time,
CPU seconds and average cores, peak RSS, |timestamp error| (our arrival,
``started_at + arrivals_us``, minus tcpdump's timestamp of the same SYN-ACK,
matched by flow and rank) and |gap error|, p50/p99, capture drops (exit status
1), target-side drops (SYN cookies, listen drops, veth and backlog drops) and
accuracy (nbPkt == 3 and every gap within 50 ms of the profile).
Then ``nmap -O -Pn -n -p 80`` (plain ``nmap -O``: its default OS tries) on a random sample of the
1,000 hosts (``--nmap-hosts``; 0 skips it) for a hosts-per-minute ratio, and
a mixed-profile lab (``--mix-profiles``) for accuracy against each host's own
``tcp_synack_retries``. Ends with PASS/FAIL against the targets.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cronos.lab.scale import ScaleLab, delta  # noqa: E402
from cronos.net.pcapio import read_pcap  # noqa: E402

TOLERANCE_MS = 50
MAIN_PROFILE = "linux-synack3"
MIX_PROFILES = "linux-synack2,linux-synack3,linux-synack4,linux-synack5"
GIB = 1 << 30


@dataclass
class Run:
    """One ``cron-os scan`` run and what was measured about it."""

    label: str
    hosts: int
    wall_s: float = 0.0
    cpu_s: float = 0.0
    rss_bytes: int = 0
    status: int = 0
    capture_drops: int = 0
    tcpdump_drops: int = 0
    records: list[dict] = field(default_factory=list)
    verdicts: list[dict] = field(default_factory=list)  # one verdict record per host
    ts_err_us: list[float] = field(default_factory=list)
    gap_err_us: list[float] = field(default_factory=list)
    unmatched: int = 0
    accurate: int = 0
    nb_ok: int = 0  # nbPkt as the profile says, whatever the gaps
    within_5pct: int = 0  # nbPkt right and every gap within 5% of the profile
    gap_dev_ms: dict[int, list[float]] = field(default_factory=dict)  # per rank: gap - expected
    no_retrans: int = 0  # a SYN-ACK never retransmitted: a SYN cookie (or a lost series)
    target_counters: dict = field(default_factory=dict)
    stderr: str = ""
    load1: float = 0.0  # 1-minute load average when the run ended: other work on the machine

    @property
    def cores(self) -> float:
        return self.cpu_s / self.wall_s if self.wall_s else 0.0

    @property
    def accuracy(self) -> float:
        return self.accurate / self.hosts if self.hosts else 0.0

    def target_drops(self) -> dict[str, int]:
        keys = ("SyncookiesSent", "ListenOverflows", "ListenDrops", "TCPReqQFullDrop",
                "veth_rx_dropped", "veth_tx_dropped")  # fmt: skip
        out = {k: 0 for k in keys}
        for where, c in self.target_counters.items():
            if where == "softnet":
                continue
            for k in keys:
                out[k] += c.get(k, 0)
        out["softnet_dropped"] = self.target_counters.get("softnet", {}).get("dropped", 0)
        return out


# plain `nmap -O`, as the issue compares (nmap retries OS detection up to 5
# times when nothing matches exactly; `--max-os-tries 1` is 2.4x faster here)
NMAP_EXTRA: tuple[str, ...] = ()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def cron_os(package_root: str | None = None) -> list[str]:
    """The command; ``package_root``: run ``python -m cronos`` from that copy instead."""
    if package_root:
        return ["env", f"PYTHONPATH={package_root}", sys.executable, "-m", "cronos"]
    exe = ROOT / ".venv" / "bin" / "cron-os"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "cronos"]


def start_tcpdump(ns: str, path: Path) -> subprocess.Popen:
    """tcpdump on every interface of ``ns``, SYN-ACKs only; returns once it listens."""
    err = path.with_suffix(".err")
    cmd = ["ip", "netns", "exec", ns, "tcpdump", "-i", "any", "-n", "-s", "128",
           "-B", "131072", "--time-stamp-precision", "nano", "-w", str(path),
           "(ip and tcp[tcpflags] & (tcp-syn|tcp-ack) == (tcp-syn|tcp-ack)) or "
           "(ip6 and ip6[6] == 6 and ip6[53] & 0x12 == 0x12)"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err.open("w"))
    deadline = time.monotonic() + 10
    while "listening on" not in err.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"tcpdump did not start: {err.read_text().strip()}")
        time.sleep(0.05)
    return proc


def stop_tcpdump(proc: subprocess.Popen, path: Path) -> int:
    """Stop tcpdump; the packets it says the kernel dropped."""
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=20)
    m = re.search(r"(\d+) packets? dropped by kernel", path.with_suffix(".err").read_text())
    return int(m.group(1)) if m else 0


def synacks_by_flow(pcap: Path) -> dict[tuple[str, int], list[float]]:
    """tcpdump's SYN-ACK timestamps, keyed by (target address, our port)."""
    flows: dict[tuple[str, int], list[float]] = {}
    for ts, ip in read_pcap(pcap, strict=False):
        if ip[0] >> 4 == 6:  # no extension header: the filter passed next header TCP only
            ihl, proto = 40, ip[6]
            src = socket.inet_ntop(socket.AF_INET6, ip[8:24])
        else:
            ihl, proto = (ip[0] & 0x0F) * 4, ip[9]
            src = ".".join(map(str, ip[12:16]))
        if len(ip) < ihl + 14 or proto != 6 or ip[ihl + 13] & 0x12 != 0x12:
            continue
        (dport,) = struct.unpack_from("!H", ip, ihl + 2)
        flows.setdefault((src, dport), []).append(ts)
    return flows


def scan(lab: ScaleLab, hosts: list[str], label: str, args, work: Path) -> Run:
    """``_scan_once``, tried again once if something else killed the scan."""
    try:
        return _scan_once(lab, hosts, label, args, work)
    except ScanKilled as exc:
        print(f"  {exc}; running it again", flush=True)
        return _scan_once(lab, hosts, label, args, work)


class ScanKilled(RuntimeError):
    pass


def _scan_once(lab: ScaleLab, hosts: list[str], label: str, args, work: Path) -> Run:
    """One ``cron-os scan`` of ``hosts`` with tcpdump alongside; measured."""
    run = Run(label, len(hosts))
    tag = f"{label}-{len(hosts)}"
    hosts_file, out, pcap = work / f"{tag}.txt", work / f"{tag}.jsonl", work / f"{tag}.pcap"
    hosts_file.write_text("".join(h + "\n" for h in hosts))
    with contextlib.suppress(FileNotFoundError):
        out.unlink()
    cmd = [*cron_os(args.package_root), "scan", "--netns", lab.scanner_ns,
           "-iL", str(hosts_file), "-p", "80", "-m", "s", "--timeout", f"{args.timeout:g}",
           "--max-rate", f"{args.max_rate:g}", "--max-hosts", str(args.max_hosts or len(hosts)),
           "--yes", "-q", "-oJ", str(out), *args.scan_options]  # fmt: skip
    if not run_cmd_shown.get(label):
        print("  $ " + " ".join(cmd), flush=True)
        run_cmd_shown[label] = True
    before = lab.counters()
    dump = start_tcpdump(lab.scanner_ns, pcap)
    err = (work / f"{tag}.stderr").open("w+")
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=err, cwd=args.package_root or None
        )  # sys.path[0] is the cwd
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        run.wall_s = time.monotonic() - t0
    finally:
        run.tcpdump_drops = stop_tcpdump(dump, pcap)
    run.status = proc.returncode
    run.load1 = os.getloadavg()[0]
    run.cpu_s = usage.ru_utime + usage.ru_stime
    run.rss_bytes = usage.ru_maxrss * 1024
    err.seek(0)
    run.stderr = err.read()
    m = re.search(r"kernel dropped (\d+)", run.stderr)
    run.capture_drops = int(m.group(1)) if m else 0
    if run.status < 0:
        raise ScanKilled(f"cron-os scan killed by signal {-run.status}")
    if run.status not in (0, 1):
        raise RuntimeError(f"cron-os scan exited {run.status}: {run.stderr.strip()[-300:]}")
    run.target_counters = delta(before, lab.counters())
    lines = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    run.records = [r for r in lines if "arrivals_us" in r]  # not the verdict records
    run.verdicts = [r for r in lines if r.get("type") == "verdict"]
    compare(run, synacks_by_flow(pcap), lab)
    return run


run_cmd_shown: dict[str, bool] = {}


def compare(run: Run, dumped: dict[tuple[str, int], list[float]], lab: ScaleLab) -> None:
    """Timestamp and gap errors against tcpdump; accuracy against the profile."""
    for r in run.records:
        ours = [r["started_at"] + a * 1e-6 for a in r["arrivals_us"]]
        theirs = dumped.get((r["target"], r["src_port"]), [])
        if len(ours) != len(theirs):
            run.unmatched += 1
        for a, b in zip(ours, theirs, strict=False):
            run.ts_err_us.append(abs(a - b) * 1e6)
        their_gaps = [(b - a) * 1e6 for a, b in zip(theirs, theirs[1:], strict=False)]
        for g, t in zip(r["gaps_us"], their_gaps, strict=False):
            run.gap_err_us.append(abs(g - t))
        if r["status"] == "ok" and r["nb_pkt"] == 0:
            run.no_retrans += 1
        group = lab.group_of(r["target"])
        want = group.expected_synack_ms
        gaps_ms = [g / 1000 for g in r["gaps_us"]]
        for k, (g, w) in enumerate(zip(gaps_ms, want, strict=False)):
            run.gap_dev_ms.setdefault(k, []).append(g - w)
        if len(gaps_ms) != len(want):
            continue
        run.nb_ok += 1
        pairs = list(zip(gaps_ms, want, strict=True))
        run.accurate += all(abs(g - w) <= TOLERANCE_MS for g, w in pairs)
        run.within_5pct += all(abs(g - w) <= 0.05 * w for g, w in pairs)


def dual_named(run: Run) -> int:
    """Hosts of a run classified as what they are: a verdict of class Linux
    (with ``-m s`` and a short ``--timeout`` the listening ends before a
    fourth SYN-ACK would be due, so linux-synack3 and a default Linux, or a
    Linux of Hershel's, explain the series alike: the family is the answer)."""
    return sum(1 for v in run.verdicts if v.get("verdict") and v.get("class") == "Linux")


def dual_breakdown(run: Run) -> str:
    """The verdicts of each family of addresses, most frequent first."""
    out = []
    for fam, six in (("IPv4", False), ("IPv6", True)):
        names: dict[str, int] = {}
        for v in run.verdicts:
            if (":" in v["target"]) == six:
                key = (v.get("verdict") or "no match").split(" or ")[0][:60]
                names[key] = names.get(key, 0) + 1
        top = sorted(names.items(), key=lambda kv: -kv[1])[:4]
        out.append(f"  {fam}: " + "; ".join(f"{n} {name}" for name, n in top))
    return "\n".join(out)


def nmap_rate(lab: ScaleLab, hosts: list[str], n: int, work: Path) -> tuple[int, float]:
    """nmap -O on a random sample of ``n`` of ``hosts``: (hosts, wall seconds)."""
    sample = random.Random(1).sample(hosts, min(n, len(hosts)))
    path = work / "nmap-hosts.txt"
    path.write_text("".join(h + "\n" for h in sample))
    cmd = ["ip", "netns", "exec", lab.scanner_ns, "nmap", "-O", "-Pn", "-n", "-p", "80",
           *NMAP_EXTRA, "-iL", str(path), "-oX", str(work / "nmap.xml")]  # fmt: skip
    print("  $ " + " ".join(cmd), flush=True)
    t0 = time.monotonic()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return len(sample), time.monotonic() - t0


def row(r: Run) -> str:
    d = r.target_drops()
    tgt = (
        f"ck{d['SyncookiesSent']}/ld{d['ListenDrops']}/qf{d['TCPReqQFullDrop']}"
        f"/vd{d['veth_rx_dropped'] + d['veth_tx_dropped']}/sn{d['softnet_dropped']}"
    )
    return (f"{r.label:<7}{r.hosts:>7} {r.wall_s:>7.1f} {r.cpu_s:>7.1f} {r.cores:>5.2f} "
            f"{r.rss_bytes / 2**20:>7.0f} "
            f"{pct(r.ts_err_us, 50):>7.1f} {pct(r.ts_err_us, 99):>7.1f} "
            f"{pct(r.gap_err_us, 50):>7.1f} {pct(r.gap_err_us, 99):>7.1f} "
            f"{r.capture_drops:>5}/{r.tcpdump_drops:<3} {r.no_retrans:>5} {tgt:<22} "
            f"{100 * r.nb_ok / r.hosts:>6.1f}% {100 * r.accuracy:>6.1f}% "
            f"{100 * r.within_5pct / r.hosts:>6.1f}% {r.load1:>5.2f}")  # fmt: skip


HEADER = (f"{'run':<7}{'hosts':>7} {'wall s':>7} {'cpu s':>7} {'cores':>5} {'RSS MiB':>7} "
          f"{'ts p50':>7} {'ts p99':>7} {'gap p50':>7} {'gap p99':>7} {'drops':>9} "
          f"{'noRtx':>5} {'target drops':<22} {'nbPkt':>7} {'acc50':>7} {'acc5%':>7} "
          f"{'load':>5}")  # fmt: skip


def verdicts(single: Run, big: Run | None, ours_hpm: float | None, nmap_hpm: float | None):
    out = []
    if big is not None:
        out += [
            (f"{big.hosts} hosts: wall within 1.5x of a single host "
             f"({big.wall_s:.1f} s vs {single.wall_s:.1f} s = {big.wall_s / single.wall_s:.2f}x)",
             big.wall_s <= 1.5 * single.wall_s),
            (f"{big.hosts} hosts: CPU under 1 core on average ({big.cores:.2f})", big.cores < 1),
            (f"{big.hosts} hosts: peak RSS under 1 GiB ({big.rss_bytes / 2**20:.0f} MiB)",
             big.rss_bytes < GIB),
            (f"{big.hosts} hosts: zero capture drops ({big.capture_drops})",
             big.capture_drops == 0 and big.status == 0),
            (f"{big.hosts} hosts: timestamp error p99 under 2 ms "
             f"({pct(big.ts_err_us, 99):.1f} us)", pct(big.ts_err_us, 99) < 2000),
        ]  # fmt: skip
    if ours_hpm and nmap_hpm:
        out.append((f"at least 20x nmap -O hosts/minute ({ours_hpm:.0f} vs {nmap_hpm:.0f} = "
                    f"{ours_hpm / nmap_hpm:.1f}x)", ours_hpm >= 20 * nmap_hpm))  # fmt: skip
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--quick", action="store_true", help="sizes 100,1000")
    ap.add_argument("--namespaces", type=int, default=4, help="target namespaces (default 4)")
    ap.add_argument("--timeout", type=float, default=5.0, help="scan --timeout (default 5)")
    ap.add_argument("--max-rate", type=float, default=5000.0, help="scan --max-rate (default 5000)")
    ap.add_argument("--max-hosts", type=int, default=0, help="scan --max-hosts (default: hosts)")
    ap.add_argument(
        "--nmap-hosts",
        type=int,
        default=1000,
        help="nmap -O on a random sample of this many of the 1,000 hosts (0: skip)",
    )
    ap.add_argument("--mix-size", type=int, default=1000, help="hosts of the mixed lab (0: skip)")
    ap.add_argument("--mix-profiles", default=MIX_PROFILES)
    ap.add_argument(
        "--mix-timeout",
        type=float,
        default=17.0,
        help="scan --timeout for the mixed lab (must exceed its largest gap)",
    )
    ap.add_argument(
        "--netdev-max-backlog",
        type=int,
        default=65536,
        help="raise net.core.netdev_max_backlog during the run (0: leave it)",
    )
    ap.add_argument(
        "--package-root",
        metavar="DIR",
        help="scan with the cronos package in DIR (a patched copy) instead",
    )
    ap.add_argument(
        "--scan-option",
        dest="scan_options",
        action="append",
        default=[],
        metavar="OPT",
        help="extra cron-os scan option for every run, e.g. --scan-option=--full",
    )
    ap.add_argument(
        "--dual",
        type=int,
        default=1000,
        metavar="N",
        help="one mixed-family scan of N IPv4 and N IPv6 addresses of the lab (0: skip)",
    )
    ap.add_argument("--keep", metavar="DIR", help="keep the JSONL, pcaps and logs in DIR")
    args = ap.parse_args(argv)
    sizes = [100, 1000] if args.quick else [int(s) for s in args.sizes.split(",") if s]
    if os.geteuid() != 0:
        print("bench/scale.py: needs root (namespaces, raw sockets)", file=sys.stderr)
        return 2
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="cronos-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    runs: list[Run] = []
    nmap = None
    n_lab = max([*sizes, 1000 if args.nmap_hosts else 1, args.dual])
    print(
        f"scale lab: {n_lab} addresses on {args.namespaces} x {MAIN_PROFILE}; "
        f"--timeout {args.timeout:g} --max-rate {args.max_rate:g}; netdev_max_backlog "
        f"{args.netdev_max_backlog or 'unchanged'}",
        flush=True,
    )
    backlog = args.netdev_max_backlog or None
    with ScaleLab.create(n_lab, [MAIN_PROFILE] * args.namespaces,
                         netdev_max_backlog=backlog) as lab:  # fmt: skip
        hosts = list(lab.hosts)
        single = scan(lab, hosts[:1], "single", args, work)
        for n in sizes:
            runs.append(scan(lab, hosts[:n], "main", args, work))
            print(f"  {n} hosts: {runs[-1].wall_s:.1f} s", flush=True)
        dual = None
        if args.dual:
            dual = scan(lab, hosts[: args.dual] + list(lab.hosts6[: args.dual]), "dual", args,
                        work)  # fmt: skip
        if args.nmap_hosts:
            nmap = nmap_rate(lab, hosts[:1000], args.nmap_hosts, work)
    mix = None
    if args.mix_size:
        profiles = args.mix_profiles.split(",")
        print(
            f"mixed lab: {args.mix_size} addresses on {', '.join(profiles)}; "
            f"--timeout {args.mix_timeout:g}",
            flush=True,
        )
        with ScaleLab.create(args.mix_size, profiles, netdev_max_backlog=backlog) as mlab:
            # --full: the retransmission count is the point here, not the verdict
            full = [*args.scan_options, *([] if "--full" in args.scan_options else ["--full"])]
            margs = argparse.Namespace(
                **{**vars(args), "timeout": args.mix_timeout, "scan_options": full}
            )
            mix = scan(mlab, list(mlab.hosts), "mixed", margs, work)

    print("\n" + HEADER)
    for r in [single, *runs, *([dual] if dual else []), *([mix] if mix else [])]:
        print(row(r))
    print(
        "(times in s; ts/gap = |error| vs tcpdump in us; drops = ours/tcpdump's; "
        "noRtx = SYN-ACKs never retransmitted; target drops: ck SyncookiesSent, "
        "ld ListenDrops, qf TCPReqQFullDrop, vd veth drops, sn softnet backlog drops; "
        f"nbPkt = nbPkt as the profile; acc50 = that and every gap within {TOLERANCE_MS} ms "
        "of the profile; acc5% = within 5%; load = 1-min load average after the run, "
        "the scan itself included)"
    )
    for r in [single, *runs, *([mix] if mix else [])]:
        devs = "  ".join(f"gap{k + 1} {pct(v, 1):+.0f}/{pct(v, 50):+.0f}/{pct(v, 99):+.0f}"
                         for k, v in sorted(r.gap_dev_ms.items()))  # fmt: skip
        print(f"{r.label} {r.hosts}: measured - expected gap, ms, p1/p50/p99: {devs}")
    unmatched = sum(r.unmatched for r in [single, *runs])
    if unmatched:
        print(f"records whose SYN-ACK count differs from tcpdump's: {unmatched}")
    big = max(runs, key=lambda r: r.hosts) if runs else None
    by1000 = next((r for r in runs if r.hosts == 1000), None)
    ours_hpm = nmap_hpm = None
    if by1000:
        ours_hpm = by1000.hosts / by1000.wall_s * 60
        print(
            f"cron-os -m s: {by1000.hosts} hosts in {by1000.wall_s:.1f} s = "
            f"{ours_hpm:.0f} hosts/min"
        )
    if nmap:
        n, wall = nmap
        nmap_hpm = n / wall * 60
        how = "the same 1,000 hosts" if n >= 1000 else \
            f"a random sample of {n} of the 1,000 hosts, extrapolated"  # fmt: skip
        print(f"nmap -O: {n} hosts in {wall:.1f} s = {nmap_hpm:.0f} hosts/min ({how})")
        if big is not None and big.hosts > 1000:
            hpm = big.hosts / big.wall_s * 60
            print(
                f"cron-os -m s at {big.hosts} hosts: {hpm:.0f} hosts/min = "
                f"{hpm / nmap_hpm:.1f}x nmap -O (information: not the same targets)"
            )
    print()
    checks = verdicts(single, big, ours_hpm, nmap_hpm)
    if dual:
        six = sum(1 for r in dual.records if ":" in r["target"])
        named = dual_named(dual)
        checks.append((f"IPv4 + IPv6 in one scan ({len(dual.records) - six} + {six} hosts): zero "
                       f"capture drops ({dual.capture_drops}), every host classified "
                       f"({named}/{dual.hosts} named Linux)",
                       dual.capture_drops == 0 and dual.status == 0
                       and named == dual.hosts))  # fmt: skip
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    if dual:
        print("verdicts of the mixed-family scan:\n" + dual_breakdown(dual))
    if mix:
        print(
            f"mixed-profile accuracy (nbPkt == the host's tcp_synack_retries, gaps within "
            f"{TOLERANCE_MS} ms): {100 * mix.accuracy:.1f}% of {mix.hosts}"
        )
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"files kept in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
