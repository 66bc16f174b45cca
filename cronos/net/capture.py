"""Packet capture with kernel timestamps (AF_PACKET, SO_TIMESTAMPNS).

One socket sees both directions on every interface of the namespace: incoming
replies and our own outgoing segments, each with the kernel's capture time.
The BPF filter is attached right after the socket is created, and whatever
arrived before it (unfiltered) is drained and discarded before any probe
starts. On ``lo`` every packet is seen twice (outgoing, then incoming): the
outgoing copy is skipped. PACKET_AUXDATA tells whether a checksum is still to
be computed by the device (veth offload): only complete checksums are checked.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from ..errors import NetError, PrivilegeError
from . import bpf

ETH_P_ALL = 0x0003  # ETH_P_IP sockets are not given outgoing packets; the filter keeps IPv4
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
    data: bytes  # the IPv4 packet
    outgoing: bool
    ifname: str
    csum_not_ready: bool


class Capture:
    """A filtered AF_PACKET capture socket; ``recv()`` never blocks."""

    def __init__(self, expr: str, rcvbuf: int = 32 << 20):
        prog = bpf.compile_filter(expr)
        self.expr = expr
        self.drops = 0
        self.packets = 0
        try:
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        except PermissionError:
            raise PrivilegeError("capturing packets needs root (CAP_NET_RAW)") from None
        try:
            bpf.attach(self.sock, prog)
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
            raise NetError(f"cannot open capture socket: {exc}") from exc

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
