"""``cron-os scan``: measure targets, print the report, stream JSON Lines."""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections import defaultdict

from .. import __version__
from ..errors import PrivilegeError, UsageError
from ..model import Method, Observation
from ..output import JsonLinesWriter
from ..reporter import HostReporter, ReportOptions
from ..targets import TargetSet, parse_methods, parse_ports, read_list_file

MAX_HOSTS_WITHOUT_YES = 4096


def register(sub) -> None:
    p = sub.add_parser(
        "scan",
        help="measure retransmission timings of targets",
        description="Put TCP connections to TARGET:PORT into the chosen states, never "
        "answer, and time the target's retransmissions.",
    )
    p.add_argument("targets", nargs="*", metavar="TARGET", help="IPv4 address, name or CIDR")
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
        "--resume",
        metavar="FILE",
        help="skip measurements already complete in JSON Lines FILE and append to it",
    )
    p.add_argument("--exclude-file", metavar="FILE", help="addresses/CIDRs never to probe")
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


def _payload(text: str | None) -> bytes:
    if text is None:
        return b"GET / HTTP/1.0\r\n\r\n"
    payload = text.replace("\\r", "\r").replace("\\n", "\n").encode("utf-8")
    if not payload or len(payload) > 1400:
        raise UsageError("--payload must be 1 to 1400 bytes")
    return payload


def _check(args) -> tuple[TargetSet, list[int], list[Method], bytes]:
    specs = list(args.targets)
    if args.input_list:
        specs += read_list_file(args.input_list, "-iL")
    if not specs:
        raise UsageError("no target given (cron-os scan TARGET... -p PORTS)")
    ports = parse_ports(args.ports)
    methods = [Method(m) for m in parse_methods(args.method)]
    if not args.timeout > 0:
        raise UsageError(f"--timeout must be > 0 seconds (got {args.timeout:g})")
    if not args.window > 0:
        raise UsageError(f"--window must be > 0 seconds (got {args.window:g})")
    if not 1 <= args.tries <= 100:
        raise UsageError(f"--tries must be between 1 and 100 (got {args.tries})")
    if not args.max_rate > 0:
        raise UsageError("--max-rate must be > 0")
    if args.max_hosts < 1:
        raise UsageError("--max-hosts must be >= 1")
    if args.resume and args.json_out and args.json_out != args.resume:
        raise UsageError("--resume FILE already appends to FILE: drop -oJ or give the same file")
    if args.xml_out and not os.path.isdir(os.path.dirname(os.path.abspath(args.xml_out))):
        raise UsageError(f"-oX {args.xml_out}: directory does not exist")
    from ..html_report import check_outputs

    check_outputs(args.html_out, args.plot_out)
    if args.pcap_out and not os.path.isdir(os.path.dirname(os.path.abspath(args.pcap_out))):
        raise UsageError(f"-w {args.pcap_out}: directory does not exist")
    payload = _payload(args.payload)
    exclude = read_list_file(args.exclude_file, "--exclude-file") if args.exclude_file else []
    if os.geteuid() != 0:
        raise PrivilegeError("cron-os scan needs root (raw sockets, packet capture, nftables)")
    if args.netns:
        from ..net import netns

        netns.enter(args.netns)
    check_interface(args.interface)
    if not 1 <= args.top <= 100:
        raise UsageError("--top must be between 1 and 100")
    from ..db import load_db

    args.database = load_db(args.db)  # bad --db: file:line error before any packet
    targets = TargetSet(specs, exclude, allow_special=args.allow_special)
    n = targets.upper_bound()
    if n > MAX_HOSTS_WITHOUT_YES and not args.yes:
        raise UsageError(f"{n} hosts to scan: more than {MAX_HOSTS_WITHOUT_YES} needs --yes")
    return targets, ports, methods, payload


def check_interface(name: str | None) -> None:
    """``-e IFACE`` names an interface that exists (here: after ``--netns``)."""
    if name is None:
        return
    import socket

    try:
        socket.if_nametoindex(name)
    except OSError:
        raise UsageError(f"-e {name}: no such interface") from None


def _done_keys(path: str) -> set[tuple]:
    """Measurements already complete in a JSON Lines file (for --resume)."""
    done: set[tuple] = set()
    if not os.path.exists(path):
        return done
    with open(path, encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh, 1):
            try:
                r = json.loads(line)
                if r.get("type") == "verdict":
                    continue  # the scan's own verdict lines: no measurement to skip
                if r.get("status") != "aborted":
                    done.add((r["target"], int(r["port"]), r["method"], int(r["try"])))
            except (ValueError, KeyError, TypeError, AttributeError):
                # a line cut by a kill: everything before it is intact
                print(f"cron-os: {path}:{n}: incomplete record ignored", file=sys.stderr)
    return done


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class _Progress:
    """One status line on a terminal (stderr), nothing when not a TTY.

    ``[#####-----] hosts 120/1022 done, 256 listening, pkts in 480 out 1300,
    drops 0``: the bar counts measurements (a host has one per port, state and
    try), "listening" the measurements in flight, drops the capture socket's."""

    def __init__(self, total: int, hosts: int | None, enabled: bool):
        self.total = total  # measurements
        self.hosts = hosts
        self.done = 0
        self.hosts_done = 0
        self.enabled = enabled and sys.stderr.isatty()
        self.shown = False

    def tick(self, stats, in_flight: int) -> None:
        if not self.enabled:
            return
        width = 24
        frac = min(1.0, self.done / self.total) if self.total else 1.0
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        sys.stderr.write(
            f"\r\033[K[{bar}] hosts {self.hosts_done}/{self.hosts or '?'} done, "
            f"{in_flight} listening, pkts in {stats.packets_in} out {stats.packets_out}, "
            f"drops {stats.kernel_drops}"
        )
        sys.stderr.flush()
        self.shown = True

    def clear(self) -> None:
        if self.enabled and self.shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
            self.shown = False


def run(args) -> int:
    targets, ports, methods, payload = _check(args)
    from ..net import firewall
    from ..net.engine import Engine, EngineConfig
    from ..scan.core import CoreConfig, Job

    _raise_fd_limit()
    for name in firewall.cleanup_stale():
        print(f"cron-os: removed firewall table {name} left by a killed run", file=sys.stderr)

    out_path = args.resume or args.json_out
    done = _done_keys(args.resume) if args.resume else set()
    per_target = len(ports) * len(methods) * args.tries
    remaining: dict[str, int] = defaultdict(lambda: per_target)
    skipped = 0

    def jobs():
        nonlocal skipped
        for t in targets:
            for p in ports:
                for m in methods:
                    for k in range(1, args.tries + 1):
                        if (t, p, m.value, k) in done:
                            remaining[t] -= 1
                            skipped += 1
                            continue
                        yield Job(t, p, m, k)

    per_host: dict[str, list[Observation]] = defaultdict(list)
    writer = JsonLinesWriter(out_path) if out_path else None
    out = sys.stdout
    n_hosts = targets.count()  # None: too many to walk twice
    total = (n_hosts or targets.upper_bound()) * per_target - len(done)
    progress = _Progress(total, n_hosts, not args.no_progress)

    if not args.quiet:
        print(
            f"Starting Cron-OS {__version__}: {n_hosts or targets.upper_bound()} target(s), ports "
            f"{','.join(map(str, ports))}, states {''.join(m.value for m in methods)}, "
            f"{args.tries} tr{'y' if args.tries == 1 else 'ies'}, timeout {args.timeout:g} s",
            file=out,
            flush=True,
        )

    verdict_times: list[float] = []

    def on_result(obs: Observation) -> None:
        if obs.verdict_s is not None:
            verdict_times.append(obs.verdict_s)
        if writer:
            writer.write(obs.to_dict())
        progress.done += 1
        per_host[obs.target].append(obs)
        remaining[obs.target] -= 1
        if remaining[obs.target] <= 0:
            observations = per_host.pop(obs.target)
            remaining.pop(obs.target, None)
            _host_done(obs.target, observations)

    def _host_done(target: str, observations: list[Observation]) -> None:
        progress.hosts_done += 1
        if not args.quiet:  # the host's report is printed where the line was
            progress.clear()
        reporter.host_done(target, observations)

    cfg = EngineConfig(
        core=CoreConfig(timeout_s=args.timeout, window_s=max(args.window, 1.0), payload=payload,
                        sack=args.sack),
        max_in_flight=args.max_hosts,
        max_rate_pps=args.max_rate,
        interface=args.interface,
    )  # fmt: skip
    nmap_future = None
    if args.nmap:
        from concurrent.futures import ThreadPoolExecutor

        from ..nmap import run_nmap

        pool = ThreadPoolExecutor(max_workers=1)  # one nmap subprocess for the batch
        extra = ("-e", args.interface) if args.interface else ()
        nmap_future = pool.submit(run_nmap, list(targets), ports, extra_args=extra)
        pool.shutdown(wait=False)
    opts = ReportOptions(
        args.top,
        bool(args.nmap),
        bool(args.xml_out),
        not args.quiet,
        bool(args.html_out or args.plot_out),
        tuple(str(f) for f in args.db),
    )
    reporter = HostReporter(opts, args.database, writer, out, nmap_future,
                            targets.upper_bound())  # fmt: skip

    def tick(stats, in_flight: int) -> None:
        reporter.pump()
        progress.tick(stats, in_flight)

    hint = list(targets) if targets.upper_bound() <= 64 else None
    sink = close_pcap = None
    if args.pcap_out:
        from ..pcapio import open_pcap_sink

        sink, close_pcap = open_pcap_sink(args.pcap_out)
    stopper = None
    if args.early_stop:
        from ..early import EarlyStopper

        stopper = EarlyStopper(args.database)
    engine = Engine(cfg, on_result, packet_sink=sink, on_tick=tick, early_stop=stopper)
    try:
        stats = engine.run(jobs(), targets_hint=hint)
    finally:
        progress.clear()
        if close_pcap is not None:
            close_pcap()
        for target, observations in list(per_host.items()):  # interrupted: partial hosts too
            if observations:
                _host_done(target, observations)
        reporter.finish()
        if writer:
            writer.close()
        if args.html_out or args.plot_out:
            from ..html_report import write_evidence

            write_evidence(reporter.evidence, html_path=args.html_out, plot_path=args.plot_out,
                           top=args.top)  # fmt: skip
        if args.xml_out:
            from ..nmapxml import write_nmap_xml

            write_nmap_xml(args.xml_out, reporter.xml_hosts, args=" ".join(sys.argv),
                           start=engine.stats.started or time.time(), end=time.time())  # fmt: skip
    if not args.quiet:
        took = stats.finished - stats.started
        extra = f", {skipped} already done (--resume)" if skipped else ""
        if verdict_times:
            med = sorted(verdict_times)[len(verdict_times) // 2]
            extra += f"; {len(verdict_times)} stopped early (median time to verdict {med:.1f} s)"
        if stats.copies:  # a packet seen on two devices (a bridge and its port...)
            extra += f"; {stats.copies} captured copies of packets dropped"
        skipped_addrs = ", ".join(f"{v} {k}" for k, v in targets.skipped.items())
        if skipped_addrs:
            extra += f"; addresses skipped: {skipped_addrs}"
        print(
            f"\nCron-OS done: {stats.probes} measurement(s) in {took:.1f} s{extra}; "
            f"packets in {stats.packets_in}, out {stats.packets_out}, "
            f"capture drops {stats.kernel_drops}, our RSTs suppressed {stats.rst_dropped}",
            file=out,
            flush=True,
        )
    if reporter.nmap_error:
        return 1
    if stats.kernel_drops:
        print(
            f"cron-os: warning: the kernel dropped {stats.kernel_drops} captured packets; "
            "missing retransmissions may be capture losses",
            file=sys.stderr,
        )
        return 1
    return 0
