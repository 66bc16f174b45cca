"""``cron-os scan``: measure targets, print the report, stream JSON Lines."""

from __future__ import annotations

import os
import sys
from collections import defaultdict

from .. import __version__
from ..errors import PrivilegeError, UsageError
from ..model import Method, Observation
from ..output import JsonLinesWriter
from ..report import host_block
from ..targets import parse_methods, parse_ports, resolve_all


def register(sub) -> None:
    p = sub.add_parser(
        "scan",
        help="measure retransmission timings of targets",
        description="Put TCP connections to TARGET:PORT into the chosen states, never "
        "answer, and time the target's retransmissions.",
    )
    p.add_argument("targets", nargs="*", metavar="TARGET", help="IPv4 address or host name")
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
    p.add_argument(
        "--max-rate",
        type=float,
        default=300.0,
        metavar="PPS",
        help="packets sent per second at most (default 300)",
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
        "--netns",
        metavar="NAME",
        help="run from inside network namespace NAME (e.g. a lab's scanner)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no human report on stdout")
    p.set_defaults(func=run)


def _check(args) -> tuple[list[str], list[int], list[Method], bytes]:
    if not args.targets:
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
    payload = b"GET / HTTP/1.0\r\n\r\n"
    if args.payload is not None:
        text = args.payload.replace("\\r", "\r").replace("\\n", "\n")
        payload = text.encode("latin-1", errors="strict") if text.isascii() else text.encode()
        if not payload or len(payload) > 1400:
            raise UsageError("--payload must be 1 to 1400 bytes")
    if os.geteuid() != 0:
        raise PrivilegeError("cron-os scan needs root (raw sockets, packet capture, nftables)")
    if args.netns:
        from ..net import netns

        netns.enter(args.netns)
    targets = resolve_all(args.targets)
    return targets, ports, methods, payload


def run(args) -> int:
    targets, ports, methods, payload = _check(args)
    from ..net import firewall
    from ..net.engine import Engine, EngineConfig, Job

    for name in firewall.cleanup_stale():
        print(f"cron-os: removed firewall table {name} left by a killed run", file=sys.stderr)

    jobs = [
        Job(t, p, m, k)
        for t in targets
        for p in ports
        for m in methods
        for k in range(1, args.tries + 1)
    ]
    remaining = defaultdict(int)
    for j in jobs:
        remaining[j.target] += 1
    per_host: dict[str, list[Observation]] = defaultdict(list)
    writer = JsonLinesWriter(args.json_out) if args.json_out else None
    out = sys.stdout

    if not args.quiet:
        print(
            f"Starting Cron-OS {__version__}: {len(targets)} target(s), ports "
            f"{','.join(map(str, ports))}, states {''.join(m.value for m in methods)}, "
            f"{args.tries} tr{'y' if args.tries == 1 else 'ies'}, timeout {args.timeout:g} s",
            file=out,
            flush=True,
        )

    def on_result(obs: Observation) -> None:
        if writer:
            writer.write(obs.to_dict())
        per_host[obs.target].append(obs)
        remaining[obs.target] -= 1
        if remaining[obs.target] == 0 and not args.quiet:
            print("\n" + host_block(obs.target, per_host[obs.target]), file=out, flush=True)

    cfg = EngineConfig(
        timeout_s=args.timeout,
        window_s=max(args.window, 1.0),
        max_in_flight=args.max_hosts,
        max_rate_pps=args.max_rate,
        payload=payload,
        sack=args.sack,
    )
    engine = Engine(cfg, on_result)
    try:
        stats = engine.run(jobs, targets_hint=targets)
    finally:
        if writer:
            writer.close()
    if not args.quiet:
        took = stats.finished - stats.started
        print(
            f"\nCron-OS done: {len(targets)} target(s), {stats.probes} probe(s) in "
            f"{took:.1f} s; packets in {stats.packets_in}, out {stats.packets_out}, "
            f"capture drops {stats.kernel_drops}, our RSTs suppressed {stats.rst_dropped}",
            file=out,
            flush=True,
        )
    return 0
