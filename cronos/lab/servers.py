"""Tiny TCP servers run inside a lab target namespace, on the real kernel stack.

    python -m cronos.lab.servers --ports 80,1234

Port 80 behaves like an HTTP/1.0 server: it reads one request (up to the
blank line), answers with a small response and closes first, which puts the
server side in FIN_WAIT1. If the peer sends FIN before any request, it closes
too (LAST_ACK). Port 1235 never closes (it reads and ignores EOF): the
closing probes report ``no-close``. Port 1236 resets every connection once
established (SO_LINGER 0): the closing probes report ``reset``. Every other
port reads until EOF, then closes (LAST_ACK).

The process prints nothing; it runs until killed. One thread per listener
and per connection keeps it obvious.
"""

from __future__ import annotations

import argparse
import signal
import socket
import struct
import sys
import threading

HTTP_PORT = 80
NO_CLOSE_PORT = 1235
RESET_PORT = 1236
SPECIAL_PORTS = (NO_CLOSE_PORT, RESET_PORT)
_BODY = b"cron-os lab target\n"
RESPONSE = (
    b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    + b"Content-Length: %d\r\n\r\n" % len(_BODY)
    + _BODY
)
_MAX_REQUEST = 16384
_IO_TIMEOUT_S = 600.0  # a forgotten half-open client must not pin a thread forever


def _read_request(conn: socket.socket) -> bytes:
    """Bytes up to the end of the HTTP header, or b"" on EOF / oversize."""
    buf = b""
    while b"\r\n\r\n" not in buf and len(buf) < _MAX_REQUEST:
        chunk = conn.recv(4096)
        if not chunk:
            return b""
        buf += chunk
    return buf


def _serve_http(conn: socket.socket) -> None:
    if _read_request(conn):
        conn.sendall(RESPONSE)


def _serve_sink(conn: socket.socket) -> None:
    while conn.recv(65536):
        pass


def _hold(conn: socket.socket) -> None:
    while conn.recv(65536):
        pass
    threading.Event().wait(_IO_TIMEOUT_S)  # EOF seen; never close before the timeout


def _reset(conn: socket.socket) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _handle(conn: socket.socket, port: int) -> None:
    try:
        conn.settimeout(_IO_TIMEOUT_S)
        if port == NO_CLOSE_PORT:
            _hold(conn)
        elif port == RESET_PORT:
            _reset(conn)
        elif port == HTTP_PORT:
            _serve_http(conn)
        else:
            _serve_sink(conn)
    except OSError:
        pass
    finally:
        conn.close()  # orphaned socket: the kernel retransmits our FIN alone


def _listen(port: int) -> socket.socket:
    """One dual-stack listener (IPv4 and IPv6), or IPv4 alone where the
    namespace has no IPv6."""
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::", port))
    except OSError:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
    s.listen(128)
    return s


def _accept_loop(lsock: socket.socket, port: int) -> None:
    while True:
        try:
            conn, _ = lsock.accept()
        except OSError:
            continue
        threading.Thread(target=_handle, args=(conn, port), daemon=True).start()


def parse_ports(text: str) -> list[int]:
    ports = [int(p) for p in text.split(",") if p.strip()]
    if not ports or any(not 0 < p < 65536 for p in ports):
        raise ValueError(f"bad port list {text!r}")
    return ports


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cronos.lab.servers")
    ap.add_argument("--ports", default="80,1234", help="comma-separated TCP ports")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    listeners = [_listen(p) for p in parse_ports(args.ports)]
    for lsock in listeners:
        port = lsock.getsockname()[1]
        threading.Thread(target=_accept_loop, args=(lsock, port), daemon=True).start()
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
