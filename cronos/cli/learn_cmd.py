"""``cron-os learn``: measure a known host N times and print its database block."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import DatabaseError, PrivilegeError, UsageError
from ..model import Method, Observation
from ..scan.targets import parse_methods, parse_ports, resolve


def register(sub) -> None:
    p = sub.add_parser(
        "learn",
        help="measure a known host and print a database block for it",
        description="Measure TARGET:PORT in each state --tries times and print the "
        "signature in the database's syntax; --db-out FILE appends it to FILE.",
    )
    p.add_argument("target", metavar="TARGET", help="IPv4 or IPv6 address, or name")
    from .scan_cmd import family_flags

    family_flags(p, four=False)
    p.add_argument("-p", "--port", default="80", help="one port (default 80)")
    p.add_argument("-m", "--method", default="slf", help="states to learn (default slf)")
    p.add_argument("--label", required=True, metavar="NAME", help="the signature's name")
    p.add_argument(
        "--class",
        dest="os_class",
        required=True,
        metavar="CLASS",
        help="'vendor | family | generation | device type', e.g. 'Linux | Linux | 6.X | general'",
    )
    p.add_argument("--cpe", action="append", default=[], metavar="CPE")
    p.add_argument("--source", default="", help="provenance text (default: lab, date, tries)")
    p.add_argument("--tries", type=int, default=3, metavar="N", help="tries per state (default 3)")
    p.add_argument(
        "--spread-floor",
        type=float,
        default=0.01,
        metavar="F",
        help="least spread (standard deviation) of an arrival, as a fraction of its time "
        "(default 0.01: timer quantisation; more for stacks whose timers drift with load, "
        "e.g. user-space stacks)",
    )
    p.add_argument("--timeout", type=float, default=60.0, metavar="S")
    p.add_argument("--window", type=float, default=180.0, metavar="S")
    p.add_argument("--db-out", metavar="FILE", help="append the block to FILE (checked first)")
    p.add_argument("--netns", metavar="NAME", help="run from inside network namespace NAME")
    p.add_argument("-e", "--interface", metavar="IFACE", help="send and capture on IFACE only")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..analysis.db import parse_db_text

    ports, methods, os_class = _check(args)
    if args.netns:
        from ..net import netns

        netns.enter(args.netns)
    from .scan_cmd import check_interface

    check_interface(args.interface)
    target = resolve(args.target, args.family)
    from ..analysis.learn import build_signature
    from ..net import firewall
    from ..net.engine import Engine, EngineConfig
    from ..scan.core import CoreConfig, Job

    firewall.cleanup_stale()
    results: list[Observation] = []
    jobs = [Job(target, ports[0], m, k) for m in methods for k in range(1, args.tries + 1)]
    cfg = EngineConfig(CoreConfig(timeout_s=args.timeout, window_s=args.window),
                       interface=args.interface)  # fmt: skip
    print(
        f"Learning {target}:{ports[0]} ({''.join(m.value for m in methods)}, "
        f"{args.tries} tries per state) ...",
        file=sys.stderr,
    )
    Engine(cfg, results.append).run(jobs, targets_hint=[target])
    sig = build_signature(
        results, args.label.strip(), [os_class], args.cpe, args.source, args.spread_floor
    )
    block = sig.block()
    parse_db_text(block, "<learned>")  # what we print must load
    if args.db_out:
        _append(Path(args.db_out), block)
        print(f"appended to {args.db_out}", file=sys.stderr)
    sys.stdout.write(block)
    return 0


def _check(args):
    """Every argument, before a packet is sent: what the loader would refuse
    after minutes of measuring is refused now."""
    from ..analysis.learn import parse_class

    ports = parse_ports(args.port)
    if len(ports) != 1:
        raise UsageError("learn measures one port: give -p PORT")
    methods = [Method(m) for m in parse_methods(args.method)]
    os_class = parse_class(args.os_class)
    if not args.label.strip() or "\n" in args.label or "#" in args.label:
        raise UsageError("--label must be a non-empty single line without '#'")
    for cpe in args.cpe:
        if not cpe.startswith(("cpe:/", "cpe:2.3:")) or "#" in cpe or "\n" in cpe:
            raise UsageError(f"--cpe {cpe!r}: must start with cpe:/ or cpe:2.3:")
    if "\n" in args.source or "#" in args.source:
        raise UsageError("--source must be a single line without '#'")
    if not 1 <= args.tries <= 50:
        raise UsageError("--tries must be between 1 and 50")
    if not args.timeout > 0 or not args.window > 0:
        raise UsageError("--timeout and --window must be > 0")
    if not 0 <= args.spread_floor < 1:
        raise UsageError("--spread-floor must be in [0, 1)")
    if args.db_out:
        _check_db_out(Path(args.db_out), args.label.strip(), os_class)
    if os.geteuid() != 0:
        raise PrivilegeError("cron-os learn needs root (raw sockets, packet capture, nftables)")
    return ports, methods, os_class


def _check_db_out(path: Path, label: str, os_class) -> None:
    """The file loads with a block of this name and class appended (a
    placeholder timing that no real block can have stands for the measured one)."""
    if path.is_dir() or not path.resolve().parent.is_dir():
        raise UsageError(f"--db-out {path}: not a file in an existing directory")
    placeholder = (
        f"Fingerprint {label}\n{os_class.line()}\nSource cron-os learn (checking --db-out)\n"
        "CronOS_Syn(nbPkt=1%Time=1%p=1)\n"
    )
    try:
        _append(path, placeholder, write=False)
    except DatabaseError as exc:
        raise UsageError(str(exc).replace(f"not appended to {path}: ", "--db-out: ")) from None


def _append(path: Path, block: str, write: bool = True) -> None:
    """Append ``block`` to ``path`` if the result loads (beside the built-in
    database, unless ``path`` is part of it)."""
    from ..analysis.db import load_db

    try:
        existing = path.read_text(encoding="utf-8") if path.exists() else ""
    except (OSError, UnicodeDecodeError) as exc:
        raise DatabaseError(f"not appended to {path}: cannot read it ({exc})") from None
    sep = "" if not existing or existing.endswith("\n\n") else "\n"
    text = existing + sep + block
    trial = path.with_name(path.name + ".cronos-check")
    try:
        trial.write_text(text, encoding="utf-8")
        load_db([trial], builtin=path.resolve() not in _builtin_resolved())
    except OSError as exc:
        raise DatabaseError(f"not appended to {path}: {exc.strerror or exc}") from None
    except DatabaseError as exc:  # name the user's file, not the trial copy
        msg = str(exc).replace(str(trial), str(path))
        raise DatabaseError(f"not appended to {path}: {msg}") from None
    finally:
        trial.unlink(missing_ok=True)
    if write:
        path.write_text(text, encoding="utf-8")


def _builtin_resolved() -> set[Path]:
    from ..analysis.db import builtin_paths

    return {p.resolve() for p in builtin_paths()}
