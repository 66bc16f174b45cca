"""Hostile target: no TCP stack at all, a raw-packet responder that misbehaves.

    scanner ns  cr<id>s<k> 10.77.k.1/24 ── veth ── cr<id>t<k> 10.77.k.2/24  cronos-<id>-t<k>
                                                   python -m cronos.lab.hostile (AF_PACKET)

No kernel socket answers in the target namespace: an nftables rule there
drops every TCP segment its kernel sends (the RSTs for ports nobody listens
on), and ``python -m cronos.lab.hostile`` reads the link with an AF_PACKET
socket and writes whole Ethernet frames on it, which the output hook never
sees. What it does depends on the destination port (``BEHAVIOURS``):

====  ==================  ===================================================
port  name                behaviour
====  ==================  ===================================================
80    synack-flood        SYN-ACK, then ``synack_flood`` more in ``flood_s``
81    fin-storm           handshake, then ``fin_storm`` FINs over ``storm_s``,
                          one in 8 at a wrong sequence number
82    wrong-numbers       SYN-ACKs acking a wrong ISN, then the right one;
                          data at random and overlapping sequence numbers,
                          wrong ACK numbers, FINs and SYN-ACKs out of place
83    zero-window-data    window 0 everywhere; in-sequence 1460-byte data
                          segments, ``data_bytes`` over ``storm_s``; what
                          the peer does not acknowledge is sent again as
                          a TCP sender would (its first duplicate ACK;
                          go-back-N 0.25 s after the last ACK that moved)
84    rst-storm           SYN-ACK, then ``rst_storm`` blind RSTs (random
                          sequence numbers, with and without ACK)
====  ==================  ===================================================

Every misbehaviour is bounded (``Budget``): it ends ``storm_s`` (or
``flood_s``) after it started and after ``max_packets`` segments per
connection; at most ``max_conns`` connections are remembered (the oldest is
forgotten). Peer RSTs are ignored: a hostile host does not stop when asked.

``Responder`` is the pure part (segments in, segments out, the clock an
input) so it can be tested against the probes without a network; ``serve``
is the I/O loop.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import select
import socket
import struct
import sys
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from ..packet import ACK, FIN, PSH, RST, SYN, Segment, build_ip
from ..probes.closing import seq_diff

BEHAVIOURS = {
    80: "synack-flood",
    81: "fin-storm",
    82: "wrong-numbers",
    83: "zero-window-data",
    84: "rst-storm",
}
PORTS = tuple(BEHAVIOURS)
_STORM_ON_ACK = ("fin-storm", "zero-window-data")  # these wait for the handshake's ACK
MASK = 0xFFFFFFFF
MSS = 1460
#: the data storm's recovery: segments sent again ahead of the peer's ACK
#: (the probes take 64 KiB ahead of what they acknowledged), the
#: retransmission timeout when no ACK moves on (not doubled: the probes
#: listen a few seconds only), how often in a row it may fire
RECOVER_WINDOW = 32
RECOVER_RTO_S = 0.25
RECOVER_TRIES = 16


@dataclass(frozen=True)
class Budget:
    """How far each misbehaviour goes (per connection)."""

    flood_s: float = 1.0  # port 80: the SYN-ACK flood lasts this long
    synack_flood: int = 2000
    storm_s: float = 2.0  # ports 81-84: each storm lasts this long
    fin_storm: int = 3000
    wrong_storm: int = 1500
    data_bytes: int = 4 << 20  # port 83 (the probes stop acknowledging at 1 MiB)
    rst_storm: int = 2000
    max_packets: int = 5000  # segments sent per connection, whatever the port
    max_conns: int = 256
    max_burst: int = 256  # segments per connection per on_timer call


class _Conn:
    """One peer connection (peer address, peer port, our port)."""

    def __init__(self, local_ip: str, key, syn: Segment, iss: int, rng: random.Random):
        self.local_ip = local_ip
        self.peer, self.peer_port, self.port = key
        self.peer_isn = syn.seq & MASK
        self.rcv_nxt = (syn.seq + 1) & MASK  # what we acknowledge
        self.iss = iss
        self.snd_nxt = (iss + 1) & MASK  # next data byte of ours
        self.rng = rng
        self.behaviour = BEHAVIOURS[self.port]
        self.storm_at: float | None = None  # when the storm started
        self.storm_n = 0  # segments of the storm sent
        self.sent = 0
        self.over = False  # the storm ran: silent from now on
        self.dup_ack: tuple[int, int] = (-1, 0)  # (ack value, times seen) of a data storm
        # the data storm's recovery (go-back-N): the peer's highest ACK, when
        # it last moved, the next segment to send again (None: not
        # recovering), the retransmission timeout and how often it fired
        self.peer_ack: int | None = None
        self.progress_at = 0.0
        self.recover_nxt: int | None = None
        self.rto_n = 0

    def seg(self, flags: int, seq: int, ack: int, payload: bytes = b"", window: int = 65535,
            options=()) -> Segment:  # fmt: skip
        return Segment(src=self.local_ip, dst=self.peer, sport=self.port,
                       dport=self.peer_port, seq=seq & MASK, ack=ack & MASK, flags=flags,
                       window=window, payload=payload, options=tuple(options), ttl=64,
                       ip_id=self.rng.randrange(65536))  # fmt: skip


class Responder:
    """The hostile host's TCP, as a pure state machine.

    ``on_segment(now, seg)`` for each segment addressed to us, ``on_timer(now)``
    when ``next_at`` has passed; both return the segments to send.
    """

    def __init__(self, ip: str, budget: Budget = Budget(), seed: int = 0):
        self.ip = ip
        self.budget = budget
        self.rng = random.Random(seed)
        self.conns: OrderedDict[tuple[str, int, int], _Conn] = OrderedDict()

    @property
    def next_at(self) -> float | None:
        times = [self._due_at(c) for c in self.conns.values() if c.storm_at is not None]
        times += [self._recovery_due(c) for c in self.conns.values()]
        times = [t for t in times if t is not None]
        return min(times) if times else None

    # -- incoming --------------------------------------------------------------------
    def on_segment(self, now: float, seg: Segment) -> list[Segment]:
        if seg.dst != self.ip or seg.dport not in BEHAVIOURS:
            return []
        key = (seg.src, seg.sport, seg.dport)
        conn = self.conns.get(key)
        if seg.flags & (SYN | ACK) == SYN:
            if conn is None or conn.peer_isn != seg.seq & MASK:
                conn = self._new(key, seg)
            return self._limit(conn, self._on_syn(now, conn))
        if conn is None or seg.flags & RST:
            return []  # peer RSTs are ignored on purpose
        end = (seg.seq + len(seg.payload) + (1 if seg.flags & FIN else 0)) & MASK
        if ((end - conn.rcv_nxt) & MASK) < 1 << 31:
            conn.rcv_nxt = end  # acknowledge whatever the peer sent
        acks_synack = seg.flags & ACK and seg.ack & MASK == (conn.iss + 1) & MASK
        waiting = conn.storm_at is None and not conn.over
        if waiting and conn.behaviour in _STORM_ON_ACK and acks_synack:
            conn.storm_at = now  # handshake complete: the storm starts
            return []
        if conn.behaviour == "zero-window-data" and seg.flags & ACK and not acks_synack:
            return self._limit(conn, self._on_data_ack(now, conn, seg.ack & MASK))
        return []

    def _on_data_ack(self, now: float, c: _Conn, ack: int) -> list[Segment]:
        """The peer's ACK during or after the data storm: a duplicate names
        a hole (``_fill_hole``); one that moves on, while recovering, lets
        the next segments go (``_go_back``)."""
        if c.peer_ack is None or seq_diff(ack, c.peer_ack) > 0:
            c.peer_ack, c.progress_at, c.rto_n = ack, now, 0
            c.dup_ack = (ack, 1)  # its first time
            return self._go_back(c) if c.recover_nxt is not None else []
        return self._fill_hole(c, ack)

    def _go_back(self, c: _Conn) -> list[Segment]:
        """Send again from the peer's ACK, at most RECOVER_WINDOW segments
        ahead of it and never past what the storm sent."""
        if seq_diff(c.snd_nxt, c.peer_ack) <= 0:
            c.recover_nxt = None  # everything acknowledged
            return []
        if c.recover_nxt is None or seq_diff(c.recover_nxt, c.peer_ack) < 0:
            c.recover_nxt = c.peer_ack
        out = []
        while (seq_diff(c.recover_nxt, c.peer_ack) < RECOVER_WINDOW * MSS
               and seq_diff(c.snd_nxt, c.recover_nxt) > 0):  # fmt: skip
            out.append(c.seg(PSH | ACK, c.recover_nxt, c.rcv_nxt, b"D" * MSS, window=0))
            c.recover_nxt = (c.recover_nxt + MSS) & MASK
        return out

    def _recovery_due(self, c: _Conn) -> float | None:
        """When the data storm's retransmission timer fires: data the peer
        has not acknowledged, no ACK for RECOVER_RTO_S, at most
        RECOVER_TRIES times in a row."""
        if c.behaviour != "zero-window-data" or c.peer_ack is None:
            return None
        if c.sent >= self.budget.max_packets or c.rto_n >= RECOVER_TRIES:
            return None
        if seq_diff(c.snd_nxt, c.peer_ack) <= 0:
            return None
        return c.progress_at + RECOVER_RTO_S

    def _fill_hole(self, c: _Conn, ack: int) -> list[Segment]:
        """The data storm sends each segment once; a frame lost on the way
        (a veth backlog full under host load) leaves a hole that the peer's
        duplicate ACKs name: the segment there is sent again, as a TCP
        sender would, at the first duplicate and every 64th after (the ACK
        of each segment in sequence comes once), so the storm still reaches
        the probe's data cap in sequence."""
        if seq_diff(c.snd_nxt, ack) <= 0:
            return []  # nothing of ours missing
        last, n = c.dup_ack
        n = n + 1 if last == ack else 1
        c.dup_ack = (ack, n)
        if n % 64 != 2:
            return []
        return [c.seg(PSH | ACK, ack, c.rcv_nxt, b"D" * MSS, window=0)]

    def _new(self, key, syn: Segment) -> _Conn:
        while len(self.conns) >= self.budget.max_conns:
            self.conns.popitem(last=False)  # forget the oldest
        rng = random.Random(self.rng.random())
        conn = _Conn(self.ip, key, syn, self.rng.randrange(1 << 32), rng)
        self.conns[key] = conn
        return conn

    def _on_syn(self, now: float, c: _Conn) -> list[Segment]:
        if c.over:
            return []
        opts = (("MSS", MSS),)
        if c.behaviour == "wrong-numbers":
            out = [c.seg(SYN | ACK, c.iss, c.rcv_nxt + c.rng.randrange(1, 1 << 31), options=opts)
                   for _ in range(3)]  # fmt: skip
            c.storm_at = now  # the wrong numbers start at once
            return [*out, c.seg(SYN | ACK, c.iss, c.rcv_nxt, options=opts)]
        window = 0 if c.behaviour == "zero-window-data" else 65535
        if c.behaviour in ("synack-flood", "rst-storm"):
            c.storm_at = now
        return [c.seg(SYN | ACK, c.iss, c.rcv_nxt, window=window, options=opts)]

    # -- storms ------------------------------------------------------------------------
    def _plan(self, c: _Conn) -> tuple[int, float]:
        """(segments in the storm, its duration)."""
        b = self.budget
        return {
            "synack-flood": (b.synack_flood, b.flood_s),
            "fin-storm": (b.fin_storm, b.storm_s),
            "wrong-numbers": (b.wrong_storm, b.storm_s),
            "zero-window-data": (-(-b.data_bytes // MSS), b.storm_s),
            "rst-storm": (b.rst_storm, b.storm_s),
        }[c.behaviour]

    def _due_at(self, c: _Conn) -> float | None:
        total, dur = self._plan(c)
        if c.storm_n >= total or c.sent >= self.budget.max_packets:
            return None
        return c.storm_at + dur * c.storm_n / total

    def on_timer(self, now: float) -> list[Segment]:
        out: list[Segment] = []
        for c in list(self.conns.values()):
            due_rto = self._recovery_due(c)
            if due_rto is not None and now >= due_rto:  # go back to the peer's ACK
                c.rto_n += 1
                c.progress_at = now
                c.recover_nxt = c.peer_ack
                out += self._limit(c, self._go_back(c))
            if c.storm_at is None:
                continue
            total, dur = self._plan(c)
            due = total if now >= c.storm_at + dur else int(total * (now - c.storm_at) / dur) + 1
            n = min(min(due, total) - c.storm_n, self.budget.max_burst)
            burst = [self._storm_seg(c, c.storm_n + i) for i in range(max(0, n))]
            c.storm_n += len(burst)
            out += self._limit(c, burst)
            if self._due_at(c) is None:
                c.storm_at, c.over = None, True  # the connection stays silent
        return out

    def _storm_seg(self, c: _Conn, i: int) -> Segment:
        r = c.rng
        if c.behaviour == "synack-flood":  # retransmissions: the same SYN-ACK each time
            return c.seg(SYN | ACK, c.iss, c.peer_isn + 1, options=(("MSS", MSS),))
        if c.behaviour == "fin-storm":
            seq = c.snd_nxt if i % 8 else r.randrange(1 << 32)
            return c.seg(FIN | ACK, seq, c.rcv_nxt)
        if c.behaviour == "zero-window-data":
            seg = c.seg(PSH | ACK, c.snd_nxt, c.rcv_nxt, b"D" * MSS, window=0)
            c.snd_nxt = (c.snd_nxt + MSS) & MASK
            return seg
        if c.behaviour == "rst-storm":
            flags = RST | ACK if i % 2 else RST
            return c.seg(flags, r.randrange(1 << 32), r.randrange(1 << 32) if i % 2 else 0)
        return self._wrong(c, i)

    def _wrong(self, c: _Conn, i: int) -> Segment:
        """Port 82: every number wrong, somewhere."""
        r, base = c.rng, (c.iss + 1) & MASK
        kind = i % 6
        if kind == 0:  # data at a random sequence number
            return c.seg(PSH | ACK, r.randrange(1 << 32), c.rcv_nxt, b"R" * r.randrange(1, MSS))
        if kind == 1:  # overlapping data near the start, holes included
            start = base + r.randrange(0, 8000)
            return c.seg(PSH | ACK, start, c.rcv_nxt, b"O" * r.randrange(1, MSS))
        if kind == 2:  # data acknowledging what the peer never sent
            return c.seg(ACK, base + r.randrange(0, 4000), c.rcv_nxt + r.randrange(1, 1 << 31),
                         b"W" * 100)  # fmt: skip
        if kind == 3:  # a FIN out of place
            return c.seg(FIN | ACK, base + r.randrange(0, 1 << 20), c.rcv_nxt)
        if kind == 4:  # a SYN-ACK with another ISN
            return c.seg(SYN | ACK, r.randrange(1 << 32), c.rcv_nxt, options=(("MSS", MSS),))
        return c.seg(ACK, base + r.randrange(0, 8000), c.rcv_nxt, window=r.randrange(65536))

    def _limit(self, c: _Conn, out: list[Segment]) -> list[Segment]:
        room = max(0, self.budget.max_packets - c.sent)
        out = out[:room]
        c.sent += len(out)
        return out


# -- I/O ---------------------------------------------------------------------------------

ETH_P_IP = 0x0800
ETH_P_ALL = 0x0003


def parse_frame(frame: bytes) -> Segment | None:
    """An Ethernet/IPv4/TCP or Ethernet/IPv6/TCP frame (no extension header)
    to a Segment (struct only: it must keep up)."""
    if len(frame) >= 74 and frame[12:14] == b"\x86\xdd" and frame[14] >> 4 == 6:
        ip = frame[14:]
        if ip[6] != 6:
            return None
        end = 40 + int.from_bytes(ip[4:6], "big")
        sport, dport, seq, ack, off, flags, window = struct.unpack("!HHIIBBH", ip[40:56])
        data_at = 40 + (off >> 4) * 4
        return Segment(src=socket.inet_ntop(socket.AF_INET6, ip[8:24]),
                       dst=socket.inet_ntop(socket.AF_INET6, ip[24:40]), sport=sport,
                       dport=dport, seq=seq, ack=ack, flags=flags, window=window,
                       payload=ip[data_at : max(data_at, min(end, len(ip)))], ttl=ip[7],
                       df=False)  # fmt: skip
    if len(frame) < 54 or frame[12:14] != b"\x08\x00" or frame[14] >> 4 != 4:
        return None
    ip = frame[14:]
    ihl = (ip[0] & 0xF) * 4
    total = int.from_bytes(ip[2:4], "big")
    if ip[9] != 6 or ihl < 20 or len(ip) < ihl + 20:
        return None
    sport, dport, seq, ack, off, flags, window = struct.unpack("!HHIIBBH", ip[ihl : ihl + 16])
    data_at = ihl + (off >> 4) * 4
    payload = ip[data_at : max(data_at, min(total, len(ip)))]
    return Segment(src=socket.inet_ntoa(ip[12:16]), dst=socket.inet_ntoa(ip[16:20]),
                   sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, window=window,
                   payload=payload, ttl=ip[8])  # fmt: skip


def serve(
    iface: str, ip: str, budget: Budget, ready: Path | None = None, ip6: str | None = None
) -> None:
    """Answer on ``iface`` forever (until killed), for ``ip`` and, if given,
    ``ip6`` (one responder each; the namespace's kernel answers neighbour
    solicitations, which are not TCP)."""
    proto = ETH_P_ALL if ip6 else ETH_P_IP
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(proto))
    sock.bind((iface, proto))  # blocking sends: a full buffer waits, it does not drop
    our_mac = sock.getsockname()[4]
    peer_mac: dict[str, bytes] = {}
    seed = int(time.time())
    responders = {ip: Responder(ip, budget, seed=seed)}
    if ip6:
        responders[ip6] = Responder(ip6, budget, seed=seed + 1)
    if ready is not None:
        ready.write_text("ready\n")

    def send(segs: list[Segment]) -> None:
        for s in segs:
            mac = peer_mac.get(s.dst)
            if mac is not None:
                kind = b"\x86\xdd" if s.v6 else b"\x08\x00"
                with contextlib.suppress(OSError):  # ENOBUFS under our flood: a lost frame
                    sock.send(mac + our_mac + kind + build_ip(s))

    while True:
        due = [r.next_at for r in responders.values() if r.next_at is not None]
        nxt = min(due) if due else None
        wait = 0.5 if nxt is None else max(0.0, min(0.5, nxt - time.time()))
        readable, _, _ = select.select([sock], [], [], wait)
        if readable:
            for _ in range(1000):
                try:
                    frame = sock.recv(65535, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                seg = parse_frame(frame)
                resp = None if seg is None else responders.get(seg.dst)
                if resp is not None:
                    peer_mac[seg.src] = frame[6:12]
                    send(resp.on_segment(time.time(), seg))
        for resp in responders.values():
            send(resp.on_timer(time.time()))


# -- lab profile ----------------------------------------------------------------------------


def setup(ctx, index: int):
    """``hostile`` profile: a target namespace where only the responder answers."""
    from ..errors import LabError
    from .core import LabTarget, target_subnet
    from .linux import add_ula

    net = target_subnet(index)
    ns = ctx.new_netns(f"t{index}")
    scan_if, tgt_if = ctx.veth(ctx.scanner_ns, f"s{index}", ns, f"t{index}")
    ctx.run("ip", "-n", ctx.scanner_ns, "addr", "add", f"{net}.1/24", "dev", scan_if)
    ctx.run("ip", "-n", ns, "addr", "add", f"{net}.2/24", "dev", tgt_if)
    net6 = add_ula(ctx, ctx.scanner_ns, scan_if, ns, tgt_if, index)
    # the target kernel stays silent: its TCP (RSTs) is dropped; AF_PACKET frames bypass this
    ctx.ns_exec(ns, "nft", "add table inet cronos_hostile; "
                "add chain inet cronos_hostile out { type filter hook output priority 0; }; "
                "add rule inet cronos_hostile out meta l4proto tcp drop")  # fmt: skip
    ready = Path(tempfile.gettempdir()) / f"cronos-{ctx.id}-hostile{index}.ready"
    ctx.track_file(ready)
    ready.unlink(missing_ok=True)
    env = dict(os.environ)
    pkg_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [pkg_root, env.get("PYTHONPATH")]))
    proc = ctx.spawn(ns, [sys.executable, "-m", "cronos.lab.hostile", "--iface", tgt_if,
                          "--ip", f"{net}.2", "--ip6", f"{net6}::2", "--ready", str(ready)],
                     env=env)  # fmt: skip
    deadline = time.monotonic() + 10
    while not ready.exists():
        if proc.poll() is not None:
            raise LabError(f"hostile responder exited with status {proc.returncode}")
        if time.monotonic() > deadline:
            raise LabError("hostile responder not ready after 10 s")
        time.sleep(0.05)
    p = ctx.profile
    notes = "raw-packet responder, no TCP stack: " + ", ".join(
        f"{port} {name}" for port, name in BEHAVIOURS.items()
    )
    return LabTarget(p.name if p else "hostile", f"{net}.2", PORTS, ns, "hostile", {}, notes,
                     ip6=f"{net6}::2")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m cronos.lab.hostile")
    ap.add_argument("--iface", required=True)
    ap.add_argument("--ip", required=True)
    ap.add_argument("--ip6", help="an IPv6 address to answer for too")
    ap.add_argument("--ready", type=Path)
    ap.add_argument("--storm-s", type=float, default=Budget.storm_s)
    args = ap.parse_args(argv)
    serve(args.iface, args.ip, Budget(storm_s=args.storm_s), args.ready, args.ip6)


if __name__ == "__main__":
    main()
