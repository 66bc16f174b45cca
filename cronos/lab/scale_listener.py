"""A bare TCP listener with a large backlog, for the scale lab.

    python -m cronos.lab.scale_listener --port 80 --backlog 262144

``cronos.lab.servers`` listens with a backlog of 128: with thousands of
half-open connections the SYN queue overflows and the target drops SYNs (or
answers with SYN cookies, which are never retransmitted). This listener
asks for ``--backlog`` (the kernel caps it at ``net.core.somaxconn``),
accepts whatever completes and closes it at once. It prints nothing and runs
until killed.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cronos.lab.scale_listener")
    ap.add_argument("--port", type=int, default=80)
    ap.add_argument("--backlog", type=int, default=262144)
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    lsock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)  # both families
    lsock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("::", args.port))
    lsock.listen(args.backlog)
    while True:
        try:
            conn, _ = lsock.accept()
        except OSError:
            continue
        conn.close()


if __name__ == "__main__":
    sys.exit(main())
