"""Each packet counted once: the copy filter, the capture set, route lookups.

A packet crossing two devices (a bridge and its port, a VLAN device and its
parent, a bond and its slave, a macvlan and its lower device) reaches a packet
socket once per device. This kernel has no VLAN or bonding driver, so those
cases are fed to the capture path as the kernel would deliver them: the same
bytes, on two interface names, microseconds apart. The bridge and macvlan
cases also run for real in tests/test_links_lab.py.
"""

import errno
import socket

import pytest

from cronos.model import Method, Status
from cronos.net.capture import Captured, CaptureSet
from cronos.net.dedupe import WINDOW_S, CopyFilter, dedupe
from cronos.net.route import build_request, parse_reply
from cronos.packet import ACK, FIN, SYN, Segment, build_ip
from cronos.scan.replay import analyse_pcap

T0 = 1795779084.5
US, SRV = "10.77.1.1", "10.77.1.2"


def _synack(seq=1000, ack=7):
    return build_ip(Segment(SRV, US, 80, 40000, seq, ack, SYN | ACK, 65160, ttl=64, ip_id=0))


def _fin(seq):
    return build_ip(Segment(SRV, US, 80, 40001, seq, 9, FIN | ACK, 502, ttl=64, ip_id=0))


# -- the copy filter ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "devices,dt",
    [
        (("eth0.10", "eth0"), 0.0),  # VLAN device and parent: one skb, one timestamp
        (("eth0.10", "eth0"), 15e-6),
        (("bond0", "eth1"), 3e-6),  # bond and its slave
        (("br0", "veth1", "eth0.10"), 23e-6),  # a bridge over a VLAN: three copies
    ],
)
def test_copies_on_stacked_devices_count_once(devices, dt):
    f = CopyFilter()
    kept = []
    for k in range(3):  # three SYN-ACKs, byte-identical (IP ID 0, no TCP timestamp)
        t = T0 + k * 1.0 + (k > 0) * 0.02
        for i, _dev in enumerate(devices):
            if not f.is_copy(t + i * dt, _synack()):
                kept.append(t + i * dt)
    assert kept == [T0, T0 + 1.02, T0 + 2.02]
    assert f.copies == 3 * (len(devices) - 1)


def test_a_copy_read_before_its_original_is_still_a_copy():
    """Two sockets read in turn: the later timestamp may come out first."""
    f = CopyFilter()
    assert not f.is_copy(T0 + 10e-6, _synack())
    assert f.is_copy(T0, _synack())


def test_retransmissions_and_near_packets_are_kept():
    f = CopyFilter()
    # byte-identical retransmissions 25 ms apart (the lab's shortest RTO)
    assert not f.is_copy(T0, _fin(5))
    assert not f.is_copy(T0 + 0.025, _fin(5))
    # the same bytes just outside the window: another packet
    assert not f.is_copy(T0 + 0.025 + WINDOW_S * 1.5, _fin(5))
    # different packets at the same instant (two flows) are both kept
    assert not f.is_copy(T0 + 1, _fin(6))
    assert not f.is_copy(T0 + 1, _fin(7))
    assert f.copies == 0


def test_memory_is_bounded():
    f = CopyFilter()
    for k in range(50_000):  # 50,000 distinct packets over 50 s
        f.is_copy(T0 + k * 0.001, _fin(k))
    assert len(f._seen) < 200 and len(f._order) < 200


def test_dedupe_of_a_capture():
    a, b = _fin(1), _fin(5)
    pk = [(T0, a), (T0 + 0.00002, a), (T0 + 0.0001, b), (T0 + 0.2, a)]
    assert list(dedupe(pk)) == [pk[0], pk[2], pk[3]]


# -- the capture set: several sockets, read in turn, copies dropped ----------------------


class _FakeSocket:
    """What ``Capture`` returns for one interface: queued packets, then None."""

    def __init__(self, ifname, packets):
        self.ifname = ifname
        self.queue = [Captured(ts, data, False, ifname, False) for ts, data in packets]

    def recv(self):
        return self.queue.pop(0) if self.queue else None

    def kernel_drops(self):
        return 0

    def close(self):
        pass


def _capture_set(*sockets):
    cs = CaptureSet.__new__(CaptureSet)  # no BPF compile, no socket: fed by hand
    cs.expr = "ip and tcp"
    cs._by_if = {s.ifname: s for s in sockets}
    cs._order = list(sockets)
    cs._next = 0
    cs.copies = CopyFilter()
    return cs


def test_capture_set_reads_every_socket_and_counts_each_packet_once():
    # a VLAN device and its parent, each with its own socket (two routes)
    synacks = [(T0 + k, _synack()) for k in (0, 1.02, 3.04)]
    vlan = _FakeSocket("eth0.10", synacks)
    parent = _FakeSocket("eth0", [(t + 8e-6, d) for t, d in synacks] + [(T0 + 0.5, _fin(1))])
    cs = _capture_set(vlan, parent)
    got = []
    while (pkt := cs.recv()) is not None:
        got.append((pkt.ts, pkt.ifname))
    # one of the two copies of each SYN-ACK (which one: whichever was read first)
    assert sorted(t for t, _ in got) == pytest.approx([T0, T0 + 0.5, T0 + 1.02, T0 + 3.04],
                                                      abs=1e-5)  # fmt: skip
    assert cs.copies.copies == 3
    assert {i for _, i in got} == {"eth0.10", "eth0"}


def test_capture_set_round_robin_starves_no_socket():
    flood = _FakeSocket("eth1", [(T0 + k * 1e-4, _fin(k)) for k in range(1000)])
    quiet = _FakeSocket("eth0", [(T0, _synack())])
    cs = _capture_set(flood, quiet)
    first_two = [cs.recv().ifname, cs.recv().ifname]
    assert "eth0" in first_two


# -- a capture made with tcpdump -i any on a host with stacked devices ------------------


def _pcap_sll2(path, frames):
    """LINUX_SLL2 (what ``tcpdump -i any`` writes): each frame with its ifindex."""
    import struct

    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 276)]
    for ts, ifindex, data in frames:
        sec, usec = int(ts), round((ts - int(ts)) * 1e6)
        hdr = struct.pack("!HHIHBB8s", 0x0800, 0, ifindex, 1, 0, 6, b"\x02" * 8)
        frame = hdr + data
        out.append(struct.pack("<IIII", sec, usec, len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(out))


def test_passive_capture_with_copies_gives_the_series_once(tmp_path):
    """A server-side SYN-ACK series seen on a VLAN device and its parent."""
    clean, doubled = [], []
    for k, t in enumerate((0.0, 1.014, 3.030)):
        data = build_ip(Segment(SRV, US, 80, 40000, 1000, 7, SYN | ACK, 65160, ttl=64, ip_id=k))
        clean.append((T0 + t, 3, data))
        doubled += [(T0 + t, 3, data), (T0 + t + 12e-6, 2, data)]
    _pcap_sll2(tmp_path / "clean.pcap", clean)
    _pcap_sll2(tmp_path / "doubled.pcap", doubled)
    kind_a, a = analyse_pcap(tmp_path / "clean.pcap")
    kind_b, b = analyse_pcap(tmp_path / "doubled.pcap")
    assert kind_a == kind_b == "passive"
    assert [o.fingerprint for o in a] == [o.fingerprint for o in b]
    (o,) = b
    assert o.method is Method.SYN_RCVD and o.status is Status.OK
    assert o.fingerprint.gaps_us == (1014000, 2016000)


# -- route lookups (rtnetlink messages, recorded from this kernel) -----------------------

# ``ip route get 10.77.2.2`` in a lab scanner namespace: dev index 4, src 10.77.2.1
REQUEST = bytes.fromhex("240000001a0001000700000000000000022000000000000000000000080001000a4d0202")
REPLY = bytes.fromhex(
    "6800000018000000070000005f42000002200000fe0000010002000008000f00fe000000080001000a4d0202"
    "0800040004000000080007000a4d0201080019000000000024000c0002000000000000000000000000000000"
    "00000000000000000000000000000000"
)
UNREACHABLE = bytes.fromhex(
    "3800000002000000080000005f4200009bffffff240000001a0001000800000000000000022000000000000000"
    "0000000800010008080808"
)


def test_route_request_is_what_ip_route_get_sends():
    assert build_request("10.77.2.2", 7) == REQUEST
    with_oif = build_request("10.77.2.2", 7, oif=4)
    assert with_oif[:4] != REQUEST[:4] and with_oif.endswith(bytes.fromhex("0800040004000000"))


def test_route_reply_gives_interface_and_source():
    err, oif, src = parse_reply(REPLY, 7)
    assert (err, oif, socket.inet_ntoa(src)) == (0, 4, "10.77.2.1")
    assert parse_reply(REPLY, 8) == (errno.EPROTO, None, None)  # another request's answer


def test_route_error_reply():
    assert parse_reply(UNREACHABLE, 8) == (errno.ENETUNREACH, None, None)


@pytest.mark.parametrize("cut", [0, 3, 16, 20, 40, 60])
def test_truncated_route_replies_never_raise(cut):
    err, oif, _ = parse_reply(REPLY[:cut], 7)
    assert err == 0 or oif is None
