"""Packet capture with kernel timestamps (AF_PACKET, SO_TIMESTAMPNS).

One socket per interface that routes to the targets leave through (see
``cronos.net.route``), bound to it: it sees both directions there, incoming
replies and our own outgoing segments, each with the kernel's capture time.
A socket on every interface would see a packet once per device it crosses (a
bridge and its port, a macvlan or VLAN device and its parent, a bond and its
slave). ``CaptureSet`` reads the sockets of a scan and drops the exact copies
that can still arrive (``cronos.net.dedupe``).

The socket is created with protocol 0 (it receives nothing), the BPF filter
is attached, then it is bound to its interface and protocol: no unfiltered
packet gets in; whatever did is drained before any probe starts. On ``lo``
every packet is seen twice (outgoing, then incoming): the outgoing copy is
skipped. PACKET_AUXDATA tells whether a checksum is still to be computed by
the device (veth offload): only complete checksums are checked.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from ..errors import NetError, PrivilegeError
from . import bpf
from .dedupe import CopyFilter

ETH_P_ALL = 0x0003  # ETH_P_IP sockets are not given outgoing packets; the filter keeps ours
SO_TIMESTAMPNS = 35
SO_RCVBUFFORCE = 33
SOL_PACKET = 263
PACKET_AUXDATA = 8
PACKET_STATISTICS = 6
PACKET_OUTGOING = 4
TP_STATUS_CSUMNOTREADY = 1 << 3
_CMSG_SPACE = 256


@dataclass(frozen=True)
class Captured:
    ts: float  # kernel capture time, seconds since the epoch
    data: bytes  # the IP packet (IPv4 or IPv6)
    outgoing: bool
    ifname: str
    csum_not_ready: bool


class Capture:
    """A filtered AF_PACKET capture socket on ``ifname`` (None: every
    interface); ``recv()`` never blocks."""

    def __init__(self, prog, ifname: str | None = None, rcvbuf: int = 32 << 20):
        self.ifname = ifname
        self.drops = 0
        self.packets = 0
        try:
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
        except PermissionError:
            raise PrivilegeError("capturing packets needs root (CAP_NET_RAW)") from None
        try:
            bpf.attach(self.sock, prog)
            self.sock.bind((ifname or "", ETH_P_ALL))  # Python converts to network order
            self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self.sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
            except OSError:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.setblocking(False)
            self._drain_unfiltered()
        except OSError as exc:
            self.sock.close()
            where = f" on {ifname}" if ifname else ""
            raise NetError(f"cannot open capture socket{where}: {exc.strerror or exc}") from exc

    def _drain_unfiltered(self) -> None:
        while True:
            try:
                self.sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv(self) -> Captured | None:
        """One packet, or None if none is waiting."""
        while True:
            try:
                data, anc, _flags, addr = self.sock.recvmsg(65535, _CMSG_SPACE)
            except BlockingIOError:
                return None
            except InterruptedError:
                continue
            ifname, _proto, pkttype = addr[0], addr[1], addr[2]
            if ifname == "lo" and pkttype == PACKET_OUTGOING:
                continue  # seen again as incoming
            ts = None
            csum_not_ready = False
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", payload[:16])
                    ts = sec + nsec * 1e-9
                elif level == SOL_PACKET and kind == PACKET_AUXDATA:
                    (status,) = struct.unpack_from("I", payload)
                    csum_not_ready = bool(status & TP_STATUS_CSUMNOTREADY)
            if ts is None:  # cannot happen with SO_TIMESTAMPNS; never invent a time
                continue
            self.packets += 1
            return Captured(ts, data, pkttype == PACKET_OUTGOING, ifname, csum_not_ready)

    def kernel_drops(self) -> int:
        """Packets the kernel dropped for this socket so far (buffer full)."""
        try:
            raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
        except OSError:
            return self.drops
        _pkts, drops = struct.unpack("II", raw)
        self.drops += drops  # the counters reset on every read
        return self.drops

    def close(self) -> None:
        self.sock.close()


class CaptureSet:
    """The capture sockets of one scan, one per interface, opened on demand
    (``ensure``) with one compiled filter; ``recv()`` returns each packet once."""

    def __init__(self, expr: str):
        self.expr = expr
        self._prog = bpf.compile_filter(expr)
        self._by_if: dict[str | None, Capture] = {}
        self._order: list[Capture] = []
        self._next = 0
        self.copies = CopyFilter()

    def ensure(self, ifname: str | None) -> Capture | None:
        """Capture on ``ifname`` from now on; the new socket (to watch), or None."""
        if ifname in self._by_if:
            return None
        cap = Capture(self._prog, ifname)
        self._by_if[ifname] = cap
        self._order.append(cap)
        return cap

    @property
    def interfaces(self) -> list[str | None]:
        return list(self._by_if)

    def recv(self) -> Captured | None:
        """One packet from any socket (in turn), exact copies skipped; None if none waits."""
        n = len(self._order)
        for i in range(n):  # round robin: a flood on one interface starves no other
            k = (self._next + i) % n
            while (pkt := self._order[k].recv()) is not None:
                if not self.copies.is_copy(pkt.ts, pkt.data):
                    self._next = k + 1
                    return pkt
        return None

    def kernel_drops(self) -> int:
        return sum(c.kernel_drops() for c in self._order)

    def close(self) -> None:
        for c in self._order:
            c.close()
        self._order.clear()
        self._by_if.clear()
