"""Raw IPv4 and IPv6 send paths and source address/port bookkeeping."""

from __future__ import annotations

import errno
import socket

from ..errors import NetError, PrivilegeError


class RawSender:
    """``SOCK_RAW``/``IPPROTO_RAW``: we write the whole IP packet (in IPv6 too:
    an ``AF_INET6`` raw socket of protocol ``IPPROTO_RAW`` includes the header).

    Packets go through the kernel's routing and netfilter OUTPUT hook (so the
    tool's own nft table sees them; it only drops RSTs, which we never send).
    The IPv6 socket is opened on the first IPv6 packet.
    """

    def __init__(self, interface: str | None = None):
        """``interface``: packets leave only through it (``-e``, SO_BINDTODEVICE)."""
        self.interface = interface
        self._socks: dict[int, socket.socket] = {}
        self._open(socket.AF_INET)  # fails now, not at the first probe, without root
        self.sent = 0
        self.errors = 0

    def _open(self, family: int) -> socket.socket:
        try:
            sock = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW)
        except PermissionError:
            raise PrivilegeError("sending raw packets needs root (CAP_NET_RAW)") from None
        except OSError as exc:  # IPv6 disabled on this machine
            raise NetError(f"cannot open a raw socket: {exc.strerror}") from exc
        if self.interface is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE,
                                self.interface.encode())  # fmt: skip
            except OSError as exc:
                sock.close()
                raise NetError(f"-e {self.interface}: {exc.strerror}") from exc
        self._socks[family] = sock
        return sock

    def send(self, packet: bytes, dst: str) -> bool:
        """Send one IP packet to ``dst`` (an IPv6 link-local one with its zone)."""
        v6 = packet[0] >> 4 == 6
        family = socket.AF_INET6 if v6 else socket.AF_INET
        sock = self._socks.get(family) or self._open(family)
        try:
            sock.sendto(packet, (dst, 0))  # a zone in dst gives the scope id
        except OSError as exc:
            self.errors += 1
            if exc.errno in (errno.ENOBUFS, errno.EAGAIN, errno.EHOSTUNREACH, errno.ENETUNREACH):
                return False
            raise NetError(f"cannot send to {dst}: {exc.strerror}") from exc
        self.sent += 1
        return True

    def close(self) -> None:
        for sock in self._socks.values():
            sock.close()
        self._socks.clear()


class PortReservation:
    """A source port of our own: a bound, unconnected TCP socket holds it.

    Nothing else on the machine can use the port while we probe from it, and
    the kernel, which knows no connection there, answers the target with RST,
    which our nft table drops. ``src_ip`` may be IPv6 (a link-local one with
    its zone).
    """

    def __init__(self, src_ip: str):
        family = socket.AF_INET6 if ":" in src_ip else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.sock.bind((src_ip, 0))
        except OSError as exc:
            self.sock.close()
            raise NetError(f"cannot reserve a source port on {src_ip}: {exc.strerror}") from exc
        self.port = self.sock.getsockname()[1]

    def release(self) -> None:
        self.sock.close()
