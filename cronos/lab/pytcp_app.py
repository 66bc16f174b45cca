"""PyTCP lab target process: a pure-Python TCP/IP stack on a TAP device.

Run inside the scanner namespace by :mod:`cronos.lab.pytcp_host`::

    python -m cronos.lab.pytcp_app --tap cr<id>p0 --ip 10.77.50.2/24 --ports 80,1234

PyTCP (PyPI ``pytcp``, GPLv3) attaches to an existing persistent TAP with
``TUNSETIFF`` and answers ARP and TCP for ``--ip`` itself: the host kernel never
sees those segments as its own, so the retransmission timers measured are
PyTCP's (1 s base, doubled, 3 retries) and not Linux's.

Services, the same contract as :mod:`cronos.lab.servers`:

* port 80: read the request up to the blank line, answer a tiny HTTP/1.0
  response and close first (the server-side FIN for FIN_WAIT1 probes);
* any other port: read until EOF, then close (the FIN for LAST_ACK probes).

This module imports ``pytcp`` lazily, only in :func:`main`; it is a separate
process because PyTCP keeps its stack in module-level singletons.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

RESPONSE = (
    b"HTTP/1.0 200 OK\r\nServer: cronos-lab-pytcp\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 12\r\nConnection: close\r\n\r\ncronos-lab\r\n"
)
READY_LINE = "CRONOS-PYTCP-READY"


def _serve_http(conn) -> None:
    """Read one request (or EOF), answer it and close first."""
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 65536:
        chunk = conn.recv()
        if not chunk:
            break
        data += chunk
    if data:
        conn.send(RESPONSE)
    conn.close()


def _serve_sink(conn) -> None:
    """Read until the peer's FIN, then close (LAST_ACK on our side)."""
    while conn.recv():
        pass
    conn.close()


def _handle(conn, port: int) -> None:
    try:
        (_serve_http if port == 80 else _serve_sink)(conn)
    except Exception as exc:  # one broken connection must not kill the target
        print(f"pytcp-app: port {port}: {exc!r}", file=sys.stderr, flush=True)


def _listen(port: int, v6: bool = False) -> None:
    from pytcp.lib import socket as psocket

    family = psocket.AF_INET6 if v6 else psocket.AF_INET4
    server = psocket.socket(family=family, type=psocket.SOCK_STREAM)
    server.bind(("::" if v6 else "0.0.0.0", port))
    server.listen()
    while True:
        conn, _peer = server.accept()
        threading.Thread(target=_handle, args=(conn, port), daemon=True).start()


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m cronos.lab.pytcp_app")
    ap.add_argument("--tap", required=True, help="existing persistent TAP interface")
    ap.add_argument("--ip", required=True, help="PyTCP address with prefix, e.g. 10.77.50.2/24")
    ap.add_argument("--mac", default="02:00:00:77:77:77")
    ap.add_argument("--ip6", help="its IPv6 address with prefix too, e.g. fd77:0:0:1::2/64")
    ap.add_argument("--ports", default="80,1234")
    ap.add_argument("--verbose", action="store_true", help="keep PyTCP's own logging")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        from pytcp import TcpIpStack, config
    except ImportError as exc:
        print(f"pytcp-app: pytcp is not installed: {exc}", file=sys.stderr)
        return 3
    if not args.verbose:
        config.LOG_CHANEL = set()
    stack = TcpIpStack(interface=args.tap, mac_address=args.mac, ip4_address=args.ip,
                       ip6_address=args.ip6)  # fmt: skip
    # IPv6 only with --ip6: its static address, and the link-local one
    # without which PyTCP turns IPv6 off ("Unable to assign any IPv6 link
    # local address"); no global autoconfiguration (router solicitations)
    config.IP6_SUPPORT = bool(args.ip6)
    config.IP6_LLA_AUTOCONFIG = bool(args.ip6)
    config.IP6_GUA_AUTOCONFIG = False
    stack.start()
    for port in (int(p) for p in args.ports.split(",") if p):
        threading.Thread(target=_listen, args=(port,), daemon=True).start()
        if args.ip6:
            threading.Thread(target=_listen, args=(port, True), daemon=True).start()
    print(READY_LINE, flush=True)

    # PyTCP's threads are not daemons; exit hard on SIGTERM/SIGINT.
    def _bye(_signum, _frame):
        os._exit(0)

    signal.signal(signal.SIGTERM, _bye)
    signal.signal(signal.SIGINT, _bye)
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
