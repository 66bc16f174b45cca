"""``cron-os scan``: measure targets, print the report, stream JSON Lines."""

from __future__ import annotations

import os
import resource
import sys

from .. import __version__
from ..errors import PrivilegeError, UsageError
from ..model import Method
from ..scan.config import MAX_HOSTS_WITHOUT_YES, ScanConfig, ScanOutputs, parse_payload
from ..scan.session import Progress, ScanSummary, done_keys, run_scan, target_set
from ..scan.targets import Order, parse_methods, parse_ports, parse_shard, read_list_file
from .checks import keep_resident


def register(sub) -> None:
    p = sub.add_parser(
        "scan",
        help="measure retransmission timings of targets",
        description="Put TCP connections to TARGET:PORT into the chosen states, never "
        "answer, and time the target's retransmissions.",
    )
    p.add_argument(
        "targets",
        nargs="*",
        metavar="TARGET",
        help="IPv4 or IPv6 address (fe80::1%%eth0 for link-local), name, CIDR, or FIRST-LAST",
    )
    family_flags(p)
    p.add_argument("-iL", dest="input_list", metavar="FILE", help="read targets from FILE")
    p.add_argument("-p", "--ports", default="80", help="ports, e.g. 80,1234 (default 80)")
    p.add_argument(
        "-m",
        "--method",
        default="s",
        help="states to measure: s=SYN_RCVD, l=LAST_ACK, f=FIN_WAIT1 (e.g. slf; default s)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="stop listening S seconds after the last packet (default 60)",
    )
    p.add_argument(
        "--window",
        type=float,
        default=180.0,
        metavar="S",
        help="never listen to one state longer than S seconds (default 180)",
    )
    p.add_argument(
        "--tries",
        type=int,
        default=1,
        metavar="N",
        help="measure each state N times, concurrently (default 1)",
    )
    p.add_argument(
        "--payload",
        default=None,
        metavar="TEXT",
        help=r"FIN_WAIT1 request (default 'GET / HTTP/1.0\r\n\r\n'; \r \n escapes)",
    )
    p.add_argument("--sack", action="store_true", help="offer SACK in the closing-state probes")
    stop = p.add_mutually_exclusive_group()
    stop.add_argument(
        "--early-stop",
        dest="early_stop",
        action="store_true",
        default=True,
        help="stop listening to a state once more packets cannot change its verdict (default)",
    )
    stop.add_argument(
        "--full",
        dest="early_stop",
        action="store_false",
        help="listen until the timeout or the window ends, whatever the verdict",
    )
    p.add_argument(
        "--max-rate",
        type=float,
        default=300.0,
        metavar="PPS",
        help="measurements started per second at most (default 300; each sends 1 (s) to "
        "about 4 (f) packets)",
    )
    p.add_argument(
        "--max-hosts",
        type=int,
        default=1024,
        metavar="N",
        help="probes listening at once at most (default 1024)",
    )
    p.add_argument(
        "-oJ",
        dest="json_out",
        metavar="FILE",
        help="append one JSON record per target/port/state/try ('-' = stdout)",
    )
    p.add_argument(
        "-oP",
        dest="parquet_out",
        metavar="FILE",
        help="write this run's measurement and verdict records as one Parquet file (columnar; "
        "see README)",
    )
    p.add_argument(
        "--resume",
        metavar="FILE",
        help="skip measurements already complete in JSON Lines FILE and append to it",
    )
    p.add_argument("--exclude-file", metavar="FILE", help="addresses/CIDRs never to probe")
    p.add_argument(
        "--seed",
        metavar="S",
        help="probe the targets in a pseudo-random order drawn from S (as ZMap; "
        "no network sees a burst); every shard of a scan takes the same S",
    )
    p.add_argument(
        "--shard",
        metavar="I/N",
        help="scan only shard I of N (0 <= I < N; needs --seed): the N shards of one "
        "seed cover every target exactly once",
    )
    p.add_argument(
        "--allow-special",
        action="store_true",
        help="allow multicast, broadcast, reserved and network addresses",
    )
    p.add_argument(
        "--yes",
        action="store_true",
        help=f"allow scans of more than {MAX_HOSTS_WITHOUT_YES} hosts",
    )
    p.add_argument(
        "--cluster",
        metavar="ADDRESS",
        help="run the scan on the Dask cluster whose scheduler is ADDRESS (tcp://HOST:PORT): "
        "shards on the scanner workers (cron-os worker), records streamed back here",
    )
    p.add_argument(
        "--shards",
        type=int,
        metavar="N",
        help="with --cluster: split the targets into N shards (default 4 per scanner worker)",
    )
    p.add_argument(
        "--netns", metavar="NAME", help="run from inside network namespace NAME (a lab scanner)"
    )
    p.add_argument(
        "-e",
        "--interface",
        metavar="IFACE",
        help="send and capture on IFACE only (default: the interface of each target's route)",
    )
    p.add_argument(
        "--db",
        action="append",
        default=[],
        metavar="FILE",
        help="signature file to add to the built-in database (repeatable)",
    )
    p.add_argument("--top", type=int, default=5, metavar="N", help="guesses shown (default 5)")
    p.add_argument(
        "--nmap",
        action="store_true",
        help="also run nmap -O on the same targets and ports; report both views side by side",
    )
    p.add_argument(
        "-oX", dest="xml_out", metavar="FILE", help="write nmap-compatible XML (nmap's DTD)"
    )
    p.add_argument(
        "-w", dest="pcap_out", metavar="FILE", help="save every packet of the scan (pcap)"
    )
    p.add_argument("--plot", dest="plot_out", metavar="FILE", help="timeline plot (.png/.svg/.pdf)")
    p.add_argument("-oH", dest="html_out", metavar="FILE", help="self-contained HTML report")
    p.add_argument("-q", "--quiet", action="store_true", help="no human report on stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress line on a terminal")
    p.set_defaults(func=run)


def family_flags(p, four: bool = True) -> None:
    """``-4`` / ``-6`` (as nmap). argparse takes any ``-N`` argument for an
    option once a parser has such an option: ``--timeout -1`` would then be
    "expected one argument" instead of the option's own check; values that
    look like negative numbers stay values."""
    fam = p.add_mutually_exclusive_group()
    if four:
        fam.add_argument(
            "-4", dest="family", action="store_const", const=4, help="IPv4 only: names resolve to A"
        )
    fam.add_argument(
        "-6",
        dest="family",
        action="store_const",
        const=6,
        help="IPv6 only: names resolve to AAAA (as nmap -6)",
    )
    if hasattr(p, "_has_negative_number_optionals"):
        p._has_negative_number_optionals.clear()


def _seed(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise UsageError(f"--seed {text!r}: expected an integer") from None


def _order(args) -> Order | None:
    seed = None if args.seed is None else _seed(args.seed)
    if args.shard is None:
        return None if seed is None else Order(seed)
    i, n = parse_shard(args.shard)
    if seed is None:
        raise UsageError("--shard needs --seed S, the same S on every shard of the scan")
    return Order(seed, i, n)


def scan_config(args) -> ScanConfig:
    """The typed configuration of ``cron-os scan ARGS`` (UsageError if bad)."""
    specs = list(args.targets)
    if args.input_list:
        specs += read_list_file(args.input_list, "-iL")
    outputs = ScanOutputs(
        json_out=args.json_out, parquet_out=args.parquet_out, resume=args.resume,
        xml_out=args.xml_out, pcap_out=args.pcap_out, plot_out=args.plot_out,
        html_out=args.html_out, top=args.top,
        quiet=args.quiet, progress=not args.no_progress, command_line=" ".join(sys.argv),
    )  # fmt: skip
    exclude = read_list_file(args.exclude_file, "--exclude-file") if args.exclude_file else []
    return ScanConfig(
        targets=tuple(specs),
        ports=tuple(parse_ports(args.ports)) if specs else (),
        methods=tuple(Method(m) for m in parse_methods(args.method)) if specs else (),
        tries=args.tries, timeout_s=args.timeout, window_s=args.window,
        payload=parse_payload(args.payload), sack=args.sack, early_stop=args.early_stop,
        max_rate_pps=args.max_rate, max_in_flight=args.max_hosts, interface=args.interface,
        exclude=tuple(exclude), allow_special=args.allow_special, allow_large=args.yes,
        family=args.family, order=_order(args),
        db_files=tuple(str(f) for f in args.db), nmap=bool(args.nmap), outputs=outputs,
    )  # fmt: skip


def check_interface(name: str | None) -> None:
    """``-e IFACE`` names an interface that exists (here: after ``--netns``)."""
    if name is None:
        return
    import socket

    try:
        socket.if_nametoindex(name)
    except OSError:
        raise UsageError(f"-e {name}: no such interface") from None


#: file descriptors kept for what is not a measurement's socket (capture,
#: netlink, records, workers' pipes, libraries)
FD_RESERVE = 512


def _fit_fd_limit(cfg: ScanConfig) -> ScanConfig:
    """Each measurement listening holds a socket: ``--max-hosts`` is lowered to
    what the open-file limit allows (one line on stderr), instead of failing
    half-way with EMFILE."""
    import dataclasses

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    room = max(soft - FD_RESERVE, 1)
    if soft == resource.RLIM_INFINITY or cfg.max_in_flight <= room:
        return cfg
    print(f"cron-os: --max-hosts {cfg.max_in_flight} lowered to {room}: the open-file limit is "
          f"{soft} (one socket per measurement listening; raise it with ulimit -n)",
          file=sys.stderr)  # fmt: skip
    return dataclasses.replace(cfg, max_in_flight=room)


def _raise_fd_limit(want: int = 0) -> None:
    """The soft open-file limit up to the hard one, and both up to ``want``
    (``--max-hosts`` plus a reserve) where the process may (root, within
    fs.nr_open): a 50,000-host scan need not run in waves because a shell
    kept the hard limit at 20,000."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and want > hard:
        try:
            with open("/proc/sys/fs/nr_open") as f:
                ceiling = int(f.read())
        except (OSError, ValueError):
            ceiling = hard
        new = min(want, ceiling)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, new))
            return
        except (OSError, ValueError):
            pass  # not allowed (no CAP_SYS_RESOURCE): what the hard limit gives
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class _Progress(Progress):
    """A tqdm status line on a terminal (stderr), nothing when not a TTY.

    ``42%|######    | 432/1022 [00:05<00:07, 80.1 meas/s] hosts 420/1022
    done, 256 listening, pkts in 480 out 1300, drops 0``: the bar counts
    measurements (a host has one per port, state and try), "listening" the
    measurements in flight, drops the capture socket's. Cleared before a
    host's report is printed, drawn again at the next tick."""

    def __init__(self, total: int, hosts: int | None, enabled: bool):
        super().__init__()
        self.hosts = hosts
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=max(total, 0), unit="meas", file=sys.stderr, leave=False,
                            dynamic_ncols=True, mininterval=0.25, smoothing=0.1)  # fmt: skip

    def tick(self, stats, in_flight: int) -> None:
        if self.bar is None:
            return
        self.bar.n = self.done
        self.bar.set_postfix_str(
            f"hosts {self.hosts_done}/{self.hosts or '?'} done, {in_flight} listening, "
            f"pkts in {stats.packets_in} out {stats.packets_out}, drops {stats.kernel_drops}",
            refresh=False,
        )
        self.bar.refresh()

    def clear(self) -> None:
        if self.bar is not None:
            self.bar.clear()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run(args) -> int:
    cfg = scan_config(args)
    if args.shards is not None and not 1 <= args.shards <= 65536:
        raise UsageError(f"--shards must be between 1 and 65536 (got {args.shards})")
    if args.cluster:
        if args.netns:
            raise UsageError("--netns is not for --cluster: each worker has its own (cron-os "
                             "worker --netns)")  # fmt: skip
        from ..cluster import cluster_scan

        return cluster_scan(cfg, args.cluster, args.shards, sys.stdout)
    if args.shards is not None:
        raise UsageError("--shards needs --cluster (one process scans one shard: --shard I/N)")
    if os.geteuid() != 0:
        raise PrivilegeError("cron-os scan needs root (raw sockets, packet capture, nftables)")
    if args.netns:
        from ..net import netns

        netns.enter(args.netns)
    check_interface(cfg.interface)
    from ..analysis.db import load_db

    db = load_db(list(cfg.db_files))  # bad --db: file:line error before any packet
    keep_resident(db)
    targets = target_set(cfg)
    from ..net import firewall

    _raise_fd_limit(cfg.max_in_flight + FD_RESERVE)
    cfg = _fit_fd_limit(cfg)
    for name in firewall.cleanup_stale():
        print(f"cron-os: removed firewall table {name} left by a killed run", file=sys.stderr)
    o = cfg.outputs
    out = sys.stdout
    n_hosts = targets.count()  # None: too many to walk twice
    done = done_keys(o.resume) if o.resume else set()
    total = (n_hosts or targets.upper_bound()) * cfg.per_target - len(done)
    if not o.quiet:
        tries = f"{cfg.tries} tr{'y' if cfg.tries == 1 else 'ies'}"
        print(
            f"Starting Cron-OS {__version__}: {n_hosts or targets.upper_bound()} target(s), ports "
            f"{','.join(map(str, cfg.ports))}, states {''.join(m.value for m in cfg.methods)}, "
            f"{tries}, timeout {cfg.timeout_s:g} s{_order_text(cfg.order)}",
            file=out,
            flush=True,
        )
    progress = _Progress(total, n_hosts, o.progress)
    try:
        summary = run_scan(cfg, db, targets, out=out, progress=progress, done=done)
    finally:
        progress.close()
    stats = summary.stats
    if not o.quiet:
        print(_summary_line(summary), file=out, flush=True)
    if summary.nmap_error:
        return 1
    if stats.kernel_drops:
        print(
            f"cron-os: warning: the kernel dropped {stats.kernel_drops} captured packets; "
            "missing retransmissions may be capture losses",
            file=sys.stderr,
        )
        return 1
    return 0


def _order_text(order: Order | None) -> str:
    if order is None:
        return ""
    if order.shards == 1:
        return f", random order (seed {order.seed})"
    return f", shard {order.shard}/{order.shards} (seed {order.seed})"


def _summary_line(summary: ScanSummary) -> str:
    stats = summary.stats
    took = stats.finished - stats.started
    extra = f", {summary.skipped} already done (--resume)" if summary.skipped else ""
    times = summary.verdict_times
    if times:
        med = sorted(times)[len(times) // 2]
        extra += f"; {len(times)} stopped early (median time to verdict {med:.1f} s)"
    if stats.copies:  # a packet seen on two devices (a bridge and its port...)
        extra += f"; {stats.copies} captured copies of packets dropped"
    skipped_addrs = ", ".join(f"{v} {k}" for k, v in summary.addresses_skipped.items())
    if skipped_addrs:
        extra += f"; addresses skipped: {skipped_addrs}"
    return (
        f"\nCron-OS done: {stats.probes} measurement(s) in {took:.1f} s{extra}; "
        f"packets in {stats.packets_in}, out {stats.packets_out}, "
        f"capture drops {stats.kernel_drops}, our RSTs suppressed {stats.rst_dropped}"
    )
