"""Raw IPv4 send path and source address/port bookkeeping."""

from __future__ import annotations

import errno
import socket

from ..errors import NetError, PrivilegeError


class RawSender:
    """``SOCK_RAW``/``IPPROTO_RAW``: we write the whole IP packet.

    Packets go through the kernel's routing and netfilter OUTPUT hook (so the
    tool's own nft table sees them; it only drops RSTs, which we never send).
    """

    def __init__(self, interface: str | None = None):
        """``interface``: packets leave only through it (``-e``, SO_BINDTODEVICE)."""
        try:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        except PermissionError:
            raise PrivilegeError("sending raw packets needs root (CAP_NET_RAW)") from None
        if interface is not None:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE,
                                     interface.encode())  # fmt: skip
            except OSError as exc:
                self.sock.close()
                raise NetError(f"-e {interface}: {exc.strerror}") from exc
        self.sent = 0
        self.errors = 0

    def send(self, packet: bytes, dst: str) -> bool:
        try:
            self.sock.sendto(packet, (dst, 0))
        except OSError as exc:
            self.errors += 1
            if exc.errno in (errno.ENOBUFS, errno.EAGAIN, errno.EHOSTUNREACH, errno.ENETUNREACH):
                return False
            raise NetError(f"cannot send to {dst}: {exc.strerror}") from exc
        self.sent += 1
        return True

    def close(self) -> None:
        self.sock.close()


class PortReservation:
    """A source port of our own: a bound, unconnected TCP socket holds it.

    Nothing else on the machine can use the port while we probe from it, and
    the kernel, which knows no connection there, answers the target with RST,
    which our nft table drops.
    """

    def __init__(self, src_ip: str):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self.sock.bind((src_ip, 0))
        except OSError as exc:
            self.sock.close()
            raise NetError(f"cannot reserve a source port on {src_ip}: {exc.strerror}") from exc
        self.port = self.sock.getsockname()[1]

    def release(self) -> None:
        self.sock.close()
