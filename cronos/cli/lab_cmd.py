"""``cron-os lab up|down|status``: build, remove and list lab targets."""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import LabError, UsageError


def register(subparsers) -> None:
    p = subparsers.add_parser("lab", help="real target TCP stacks in network namespaces")
    sub = p.add_subparsers(dest="lab_command", metavar="ACTION", parser_class=type(p))
    p.set_defaults(func=lambda _args: p.print_help(sys.stderr) or 2)

    up = sub.add_parser("up", help="build a persistent lab and print its targets")
    up.add_argument(
        "--profile", "-P", action="append", dest="profiles", metavar="P",
        help="profile to build (repeatable; default: the Linux kernel ones)",
    )  # fmt: skip
    up.add_argument("--delay", help="added one-way delay, e.g. 50ms")
    up.add_argument(
        "--jitter",
        help="delay variation, e.g. 10ms (with --jitter-dist exp or "
        "pareto: the mean queueing delay added)",
    )
    up.add_argument(
        "--jitter-dist",
        choices=("uniform", "exp", "pareto"),
        default=None,
        help="uniform: delay +- jitter (default); exp, pareto: delay + a one-sided "
        "queueing delay of mean jitter (pareto: heavy-tailed)",
    )
    up.add_argument("--loss", help="packet loss, e.g. 5%%")
    up.set_defaults(func=cmd_up)

    down = sub.add_parser("down", help="remove a lab (or every lab)")
    down.add_argument("lab_id", nargs="?", metavar="ID")
    down.add_argument("--all", action="store_true", help="every lab and stray cronos-* namespace")
    down.set_defaults(func=cmd_down)

    status = sub.add_parser("status", help="list labs, their targets and servers")
    status.set_defaults(func=cmd_status)


def _schedule(ms: tuple[int, ...] | None) -> str:
    if ms is None:
        return "?"
    return "no retransmission" if not ms else ", ".join(f"{m / 1000:g}" for m in ms) + " s"


def _impair_spec(args: argparse.Namespace):
    """``--delay/--jitter/--loss`` as ``cronos.lab.impair.parse_impairment`` reads them."""
    given = {k: getattr(args, k) for k in ("delay", "jitter", "loss") if getattr(args, k)}
    if not given:
        if args.jitter_dist:
            raise UsageError("--jitter-dist goes with --jitter")
        return None
    if args.jitter_dist:
        given["dist"] = args.jitter_dist
    try:
        mod = importlib.import_module("cronos.lab.impair")
    except ImportError as exc:
        raise LabError("impairment not available (cronos.lab.impair missing)") from exc
    parse = getattr(mod, "parse_impairment", None)
    if parse is None:
        raise LabError("impairment not available (no cronos.lab.impair.parse_impairment)")
    try:
        return parse(**given)
    except ValueError as exc:
        raise UsageError(f"impairment: {exc}") from exc


def cmd_up(args: argparse.Namespace) -> int:
    from ..lab import Lab

    lab = Lab.create(args.profiles or [], persistent=True, impair=_impair_spec(args))
    print(f"lab {lab.id} up; scanner namespace {lab.scanner_ns}")
    rows = [("PROFILE", "ADDRESS", "IPv6", "PORTS", "EXPECTED SYN-ACK GAPS")]
    rows += [(t.profile, t.ip, t.ip6 or "-", ",".join(map(str, t.ports)),
              _schedule(t.expected_ms.get("SYN_RCVD"))) for t in lab.targets]  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[4])
    ips = " ".join(t.ip for t in lab.targets)
    print(f"scan it: cron-os scan --netns {lab.scanner_ns} {ips} -p 80")
    ip6s = " ".join(t.ip6 for t in lab.targets if t.ip6)
    if ip6s:
        print(f"over IPv6: cron-os scan --netns {lab.scanner_ns} {ip6s} -p 80")
    print(f"remove it: cron-os lab down {lab.id}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from ..lab import Lab, cleanup_stale
    from ..lab.lab import require_root

    require_root()
    if args.all == bool(args.lab_id):
        raise UsageError("lab down: give a lab ID or --all (not both)")
    if args.all:
        removed = cleanup_stale(all_labs=True)
        print(f"removed: {' '.join(removed)}" if removed else "no lab to remove")
        return 0
    Lab.load(args.lab_id).destroy()
    print(f"lab {args.lab_id} removed")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from ..lab import Lab

    labs = Lab.list()
    if not labs:
        print("no lab")
        return 0
    for lab in labs:
        kind = (
            "persistent"
            if lab.persistent
            else "owner "
            + ("alive" if lab.owner_alive() else "gone (stale: cron-os lab down --all)")
        )
        print(f"lab {lab.id}  scanner {lab.scanner_ns}  {kind}")
        alive = lab.servers_alive()
        for t in lab.targets:
            # a target without its own namespace (slirp, pytcp): all the lab's processes
            up = alive.get(t.netns) if t.netns else (all(alive.values()) if alive else None)
            state = "servers up" if up else "servers DOWN" if up is False else "-"
            print(f"  {t.profile:<15} {t.ip:<12} {t.ip6 or '-':<16} "
                  f"{','.join(map(str, t.ports)):<8} {state}")  # fmt: skip
    return 0
