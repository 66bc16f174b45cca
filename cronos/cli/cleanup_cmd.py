"""``cron-os cleanup``: remove what killed runs left behind."""

from __future__ import annotations

import os
import sys

from ..errors import PrivilegeError


def register(sub) -> None:
    p = sub.add_parser(
        "cleanup",
        help="remove firewall tables, labs and worker directories left by killed runs",
        description="Remove Cron-OS nft tables whose owner process is gone and labs whose "
        "owner is gone. With --all, also remove every lab, persistent ones included.",
    )
    p.add_argument("--all", action="store_true", help="also remove persistent labs (lab up)")
    p.set_defaults(func=run)


def run(args) -> int:
    if os.geteuid() != 0:
        raise PrivilegeError("cron-os cleanup needs root")
    from ..net import firewall

    removed = [f"nft table {t}" for t in firewall.cleanup_stale()]
    try:
        from ..lab import cleanup_stale as lab_cleanup
    except ImportError:
        lab_cleanup = None
    if lab_cleanup is not None:
        removed += [f"lab {x}" for x in lab_cleanup(all_labs=args.all)]
    from ..cluster import cleanup_stale as worker_cleanup

    removed += [f"worker directory {x}" for x in worker_cleanup()]
    for r in removed:
        print(f"removed {r}")
    if not removed:
        print("nothing to clean up", file=sys.stderr)
    return 0
