"""``cron-os worker SCHEDULER [--netns NS] [--name NAME]``: a scanner worker of a cluster."""

from __future__ import annotations

import os
import re

from ..errors import PrivilegeError, UsageError


def register(sub) -> None:
    p = sub.add_parser(
        "worker",
        help="serve a Dask cluster as a scanner (scan --cluster, classify --cluster)",
        description="Join the Dask scheduler at SCHEDULER as a worker with one scanner "
        "slot (resource cronos-scanner=1): it runs the shards of `cron-os scan --cluster` "
        "(as root, from NS when given) and chunks of `cron-os classify --cluster`. Runs "
        "until SIGINT or SIGTERM.",
    )
    p.add_argument("scheduler", metavar="SCHEDULER", help="the scheduler, tcp://HOST:PORT")
    p.add_argument("--netns", metavar="NS",
                   help="scan from network namespace NS (this worker's own source address; "
                   "the worker itself talks to the scheduler from where it runs)")  # fmt: skip
    p.add_argument("--name", metavar="NAME", help="the worker's name in the cluster")
    p.set_defaults(func=run)


_ADDRESS = re.compile(r"^(tcp://|tls://)?[\w.\-:\[\]]+:\d{1,5}$")


def run(args) -> int:
    if not _ADDRESS.match(args.scheduler):
        raise UsageError(f"{args.scheduler!r}: expected the scheduler as tcp://HOST:PORT")
    if os.geteuid() != 0:
        raise PrivilegeError("cron-os worker needs root (its scans use raw sockets and nftables)")
    if args.netns is not None:
        from ..net.netns import _NAME

        if not _NAME.match(args.netns):
            raise UsageError(f"bad network namespace name {args.netns!r}")
        if not os.path.exists(f"/run/netns/{args.netns}"):
            raise UsageError(f"no such network namespace: {args.netns}")
    from ..cluster import run_worker

    return run_worker(args.scheduler, args.netns, args.name)
