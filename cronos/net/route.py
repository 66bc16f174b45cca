"""Which interface and source address the kernel uses towards a target.

One ``RTM_GETROUTE`` request over rtnetlink per target, as ``ip route get``
does: it honours policy routing, and no packet is sent. The answer gives the
output interface (``RTA_OIF``) and the preferred source (``RTA_PREFSRC``).
The capture socket is bound to that interface, so that a packet crossing a
bridge and its port, a macvlan and its lower device, or a VLAN device and its
parent is seen once, as it leaves or reaches the routing layer.

An IPv6 link-local target's zone (``fe80::1%eth0``) is its interface.
With ``-e IFACE`` the request carries ``RTA_OIF`` (``ip route get X oif
IFACE``): the kernel answers with that interface's route and source, or with
an error when the target cannot be reached through it.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import os
import socket
import struct
from dataclasses import dataclass

from ..errors import NetError, UsageError

NETLINK_ROUTE = 0
RTM_NEWROUTE = 24
RTM_GETROUTE = 26
NLMSG_ERROR = 2
NLM_F_REQUEST = 1
RTA_DST = 1
RTA_OIF = 4
RTA_PREFSRC = 7
_NLMSG = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_RTMSG = struct.Struct(
    "=BBBBBBBBI"
)  # family, dst_len, src_len, tos, table, proto, scope, type, flags
_RTA = struct.Struct("=HH")  # len, type


@dataclass(frozen=True)
class Route:
    """The kernel's answer for one destination."""

    ifname: str  # output interface
    src: str  # source address the kernel would use


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attr(kind: int, payload: bytes) -> bytes:
    head = _RTA.pack(_RTA.size + len(payload), kind)
    return (head + payload).ljust(_align(_RTA.size + len(payload)), b"\0")


def build_request(dst: str, seq: int, oif: int | None = None) -> bytes:
    """An ``RTM_GETROUTE`` message for ``dst`` (IPv4 or IPv6), optionally via ``oif``."""
    addr = ipaddress.ip_address(dst)
    family = socket.AF_INET if addr.version == 4 else socket.AF_INET6
    body = _RTMSG.pack(family, addr.max_prefixlen, 0, 0, 0, 0, 0, 0, 0)
    body += _attr(RTA_DST, addr.packed)
    if oif is not None:
        body += _attr(RTA_OIF, struct.pack("=I", oif))
    return _NLMSG.pack(_NLMSG.size + len(body), RTM_GETROUTE, NLM_F_REQUEST, seq, 0) + body


def parse_reply(data: bytes, seq: int) -> tuple[int, int | None, bytes | None]:
    """``(errno, oif, prefsrc)`` from the kernel's reply to request ``seq``
    (errno 0 on success). Messages of other requests are skipped."""
    off = 0
    while off + _NLMSG.size <= len(data):
        length, kind, _flags, mseq, _pid = _NLMSG.unpack_from(data, off)
        if length < _NLMSG.size or off + length > len(data):
            break
        body = data[off + _NLMSG.size : off + length]
        off += _align(length)
        if mseq != seq:
            continue
        if kind == NLMSG_ERROR:
            (err,) = struct.unpack_from("=i", body)
            return -err, None, None
        if kind != RTM_NEWROUTE or len(body) < _RTMSG.size:
            continue
        oif = prefsrc = None
        pos = _RTMSG.size
        while pos + _RTA.size <= len(body):
            alen, atype = _RTA.unpack_from(body, pos)
            if alen < _RTA.size:
                break
            payload = body[pos + _RTA.size : pos + alen]
            if atype == RTA_OIF and len(payload) >= 4:
                (oif,) = struct.unpack_from("=I", payload)
            elif atype == RTA_PREFSRC:
                prefsrc = payload
            pos += _align(alen)
        return 0, oif, prefsrc
    return errno.EPROTO, None, None


class RouteTable:
    """Route lookups through one rtnetlink socket, cached per destination."""

    def __init__(self, interface: str | None = None):
        self.interface = interface
        self.oif = None
        if interface is not None:
            try:
                self.oif = socket.if_nametoindex(interface)
            except OSError:
                raise UsageError(f"-e {interface}: no such interface") from None
        self._seq = itertools.count(1)
        self._cache: dict[str, Route] = {}
        try:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
            self.sock.settimeout(2.0)
        except OSError as exc:
            raise NetError(f"cannot open a netlink socket: {exc.strerror}") from exc

    def lookup(self, dst: str) -> Route:
        route = self._cache.get(dst)
        if route is None:
            route = self._cache[dst] = self._ask(dst)
        return route

    def _ask(self, dst: str) -> Route:
        seq = next(self._seq)
        dst, _, zone = dst.partition("%")  # fe80::1%eth0: through eth0
        oif = self.oif
        if zone:
            try:
                zif = int(zone) if zone.isdigit() else socket.if_nametoindex(zone)
            except OSError:
                raise UsageError(f"{dst}%{zone}: no interface {zone!r}") from None
            if oif is not None and zif != oif:
                raise UsageError(f"{dst}%{zone}: the zone is not -e {self.interface}")
            oif = zif
        try:
            self.sock.send(build_request(dst, seq, oif))
            while True:
                err, oif, src = parse_reply(self.sock.recv(65536), seq)
                if err != errno.EPROTO or oif is not None:
                    break
        except (OSError, TimeoutError) as exc:
            raise NetError(f"route lookup for {dst} failed: {exc}") from exc
        via = f" through {self.interface}" if self.interface else ""
        if err:
            raise UsageError(f"no route to {dst}{via}: {os.strerror(err)}")
        if oif is None or src is None:
            raise UsageError(f"no route to {dst}{via}: the kernel gave no interface or source")
        family = socket.AF_INET if len(src) == 4 else socket.AF_INET6
        try:
            ifname = socket.if_indextoname(oif)
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):  # the lookup needs a socket
                raise NetError(f"route to {dst}: out of file descriptors ({exc.strerror}); "
                               "lower --max-hosts or raise ulimit -n") from None  # fmt: skip
            raise NetError(f"route to {dst}: interface index {oif} vanished") from None
        return Route(ifname, socket.inet_ntop(family, src))

    def close(self) -> None:
        self.sock.close()
