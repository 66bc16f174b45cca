"""``cron-os demo``: build the lab, scan every target, report, tear the lab down.

The scan runs as a child ``cron-os scan --netns <lab scanner>`` process, exactly
as a user would run it; this process owns the lab and removes it on every exit
path (the lab is a context manager; SIGTERM/SIGHUP become exceptions).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict

from ..errors import PrivilegeError, UsageError


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="build the built-in lab, scan it, print the report, remove the lab",
    )
    p.add_argument(
        "-P",
        "--profile",
        action="append",
        metavar="NAME",
        help="lab profile to include (repeatable; default: the Linux profiles, SYNPROXY, and "
        "lwIP, gVisor and User-Mode Linux when they can be built here)",
    )
    p.add_argument(
        "-m",
        "--method",
        default=None,
        help="states to measure (default: every state the probes support)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=20.0,
        metavar="S",
        help="idle timeout per state (default 20: above every lab gap)",
    )
    p.add_argument("--tries", type=int, default=1, metavar="N")
    p.add_argument("--full", action="store_true",
                   help="listen to every state to the end (no early stop)")  # fmt: skip
    p.set_defaults(func=run)


def _methods_available() -> str:
    from ..probes import PROBES

    return "".join(m.value for m in PROBES)


def _check(args) -> tuple[list[str], str]:
    """Every option, before a lab is built."""
    from ..lab import DEFAULT_PROFILES
    from ..lab.profiles import get
    from ..scan.targets import parse_methods

    profiles = args.profile or list(DEFAULT_PROFILES)
    for name in profiles:
        get(name)  # LabError naming the valid ones
    methods = "".join(parse_methods(args.method)) if args.method else _methods_available()
    if not args.timeout > 0:
        raise UsageError(f"--timeout must be > 0 seconds (got {args.timeout:g})")
    if not 1 <= args.tries <= 100:
        raise UsageError(f"--tries must be between 1 and 100 (got {args.tries})")
    return profiles, methods


def _buildable_extras() -> list[str]:
    """The compiled stacks (lwIP, gVisor, UML) that build here; one line for
    each that cannot, and the demo goes on without it."""
    from ..errors import CronosError
    from ..lab.profiles import DEMO_EXTRAS, make_ready

    out = []
    for name in DEMO_EXTRAS:
        print(f"Preparing {name} (built once, then cached) ...", flush=True)
        try:
            make_ready(name)
        except CronosError as exc:
            print(f"cron-os: skipping profile {name}: {exc}", file=sys.stderr)
            continue
        out.append(name)
    return out


def run(args) -> int:
    profiles, methods = _check(args)
    if os.geteuid() != 0:
        raise PrivilegeError("cron-os demo needs root (namespaces, raw sockets, nftables)")
    from ..lab import Lab, cleanup_stale
    from ..net import firewall

    for name in cleanup_stale():
        print(f"cron-os: removed lab {name} left by a killed run", file=sys.stderr)
    for name in firewall.cleanup_stale():
        print(f"cron-os: removed firewall table {name} left by a killed run", file=sys.stderr)
    if not args.profile:
        profiles += _buildable_extras()
    print(f"Building the lab: {', '.join(profiles)} ...", flush=True)
    with Lab.create(profiles) as lab, tempfile.TemporaryDirectory(prefix="cronos-demo-") as tmp:
        print(f"Lab {lab.id}: scanner namespace {lab.scanner_ns}")
        for t in lab.targets:
            print(f"  {t.profile:<16} {t.ip:<12} ports {','.join(map(str, t.ports))}  {t.notes}")
        ips = [t.ip for t in lab.targets]
        out = os.path.join(tmp, "scan.jsonl")
        cmd = [
            sys.executable,
            "-m",
            "cronos",
            "scan",
            "--netns",
            lab.scanner_ns,
            *ips,
            "-p",
            "80",
            "-m",
            methods,
            "--timeout",
            str(args.timeout),
            "--tries",
            str(args.tries),
            "-oJ",
            out,
        ]
        if args.full:
            cmd.append("--full")
        print("$ cron-os " + " ".join(cmd[3:]), flush=True)
        rc = subprocess.call(cmd)
        print()
        _summary(lab.targets, out)
        if not args.full:
            print("(series stop once their verdict is final; `cron-os demo --full` listens "
                  "to the end)")  # fmt: skip
    print(f"Lab {lab.id} removed.")
    return rc


def _summary(targets, jsonl: str) -> None:
    """Measured gaps next to each profile's expected schedule."""
    rows = defaultdict(list)
    if os.path.exists(jsonl):
        with open(jsonl, encoding="utf-8") as fh:
            for line in fh:
                rec = json.loads(line)
                if "state" in rec:  # skip the verdict records
                    rows[(rec["target"], rec["state"])].append(rec)
    print("Measured against each profile's schedule (ms):")
    print(f"  {'PROFILE':<16} {'STATE':<10} {'STATUS':<9} {'MEASURED':<44} EXPECTED")
    for t in targets:
        for state, expected in t.expected_ms.items():
            for rec in rows.get((t.ip, state), []):
                got = " ".join(f"{g / 1000:.0f}" for g in rec["gaps_us"][:8]) or "-"
                exp = " ".join(str(e) for e in expected[:8]) or "-"
                print(f"  {t.profile:<16} {state:<10} {rec['status']:<9} {got:<44} {exp}")
