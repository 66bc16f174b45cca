#!/usr/bin/env python3
"""Coverage-guided fuzzing of what peer input reaches: the parser and the probes.

    .venv/bin/python bench/fuzz.py -runs=1000000            # atheris (libFuzzer flags)
    .venv/bin/python bench/fuzz.py -runs=1000000 -seed=1 -print_final_stats=1
    CRONOS_FUZZ=parse6 .venv/bin/python bench/fuzz.py -runs=1000000   # IPv6 parser only

Two targets share one input (the first byte picks one):

``parse``  ``parse_ip(data, verify_checksum=True)`` on raw bytes, or on a
           well-formed IPv4 or IPv6 (with extension headers, or quoted in
           an ICMPv6 error) TCP header built from fuzzed fields followed by
           fuzzed options and payload (so the fuzzer gets past the header at
           once). It must return ``None`` or a sane ``Segment``, never raise.
``probe``  one of ``SynProbe``, ``LastAckProbe``, ``FinWaitProbe`` in the scan
           core on the simulated network (``cronos.scan.sim``), as the
           engine runs it, fed a fuzzed sequence of events on one
           non-decreasing clock: incoming segments (structured fields, with
           seq/ack chosen near the probe's own numbers, or raw bytes that the
           core routes, checks and parses), captures of the segments the
           probe sent (late, or missed), clock steps that serve its timers,
           and ``abort``.

A crash is any exception (``ProbeStateError`` included: peer input must
never raise it), a probe list above its bound, a segment the probe returns
that ``build_ip`` cannot serialise, or a ``result()`` whose fingerprint line
does not parse back (``cronos.model.parse_state_line``) to the same values.

The harness logic does not need atheris (``tests/test_fuzz_smoke.py`` runs it
on seeded random bytes); atheris only supplies the coverage-guided inputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import struct
import sys

#: ``CRONOS_FUZZ=parse6``: every input to the IPv6 parser (issue 16's million)
ONLY = os.environ.get("CRONOS_FUZZ", "")

try:
    import atheris
except ImportError:  # the smoke test runs the same targets without it
    atheris = None

# Run as the fuzzer: instrument Cron-OS (not scapy) for coverage, on import.
_instrument = (
    atheris.instrument_imports(include=["cronos"])
    if atheris is not None and __name__ == "__main__"
    else contextlib.nullcontext()
)
with _instrument:
    from cronos.model import Method, Observation, Status, parse_state_line
    from cronos.packet import (
        ACK,
        FIN,
        PSH,
        RST,
        SYN,
        Segment,
        parse_icmp6,
        parse_ip,
        peek_flow,
        repeat_key,
        tcp_checksum_ok,
    )
    from cronos.probes import PROBES, ProbeConfig
    from cronos.probes.closing import ClosingProbe
    from cronos.probes.syn import SynProbe
    from cronos.scan.core import CoreConfig, ScanCore
    from cronos.scan.sim import SimNet

US, THEM = "10.0.0.1", "10.0.0.2"
SPORT, DPORT, ISN = 40000, 80, 0x12345678
MAX_EVENTS = 48
MAX_OUT_PER_CALL = 4  # segments a probe may return for one event
METHODS = tuple(PROBES)


class Data:
    """The subset of ``atheris.FuzzedDataProvider`` the harness uses, on plain
    bytes (exhausted input reads as zeros), so it runs without atheris."""

    def __init__(self, data: bytes):
        self.buf, self.pos = data, 0

    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def bytes(self, n: int) -> bytes:
        out = self.buf[self.pos : self.pos + n]
        self.pos += len(out)
        return out

    def uint(self, nbytes: int) -> int:
        return int.from_bytes(self.bytes(nbytes).ljust(nbytes, b"\0"), "big")

    def range(self, lo: int, hi: int) -> int:
        return lo + self.uint(4) % (hi - lo + 1)

    def bool(self) -> bool:
        return bool(self.uint(1) & 1)

    def pick(self, seq):
        return seq[self.uint(1) % len(seq)]


# -- target (a): the parser -----------------------------------------------------------


def _fuzzed_tcp(d: Data) -> bytes:
    """A TCP header of fuzzed fields (checksum 0), fuzzed options and payload."""
    opts = d.bytes(d.range(0, 44))
    payload = d.bytes(d.range(0, 64))
    dataofs = d.pick((5 + (len(opts) + 3) // 4, 5, 15, d.range(0, 15)))
    opts = opts.ljust((dataofs - 5) * 4, b"\0")[: max(0, dataofs - 5) * 4]
    tcp = struct.pack("!HHIIBBHHH", d.uint(2), d.uint(2), d.uint(4), d.uint(4),
                      (dataofs & 0xF) << 4, d.uint(1), d.uint(2), 0, d.uint(2))  # fmt: skip
    return tcp + opts + payload


def structured_packet(d: Data) -> bytes:
    """A plausible IPv4/TCP packet from fuzzed fields; options/payload fuzzed."""
    seg = _fuzzed_tcp(d)
    total = d.pick((20 + len(seg), d.uint(2), 20 + len(seg) - d.range(0, 8)))
    flags_frag = d.pick((0x4000, 0, d.uint(2)))
    ihl = d.pick((5, 5, d.range(0, 15)))
    ip = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total & 0xFFFF, d.uint(2), flags_frag,
                     d.uint(1), d.pick((6, 6, d.uint(1))), 0, d.bytes(4).ljust(4, b"\0"),
                     d.bytes(4).ljust(4, b"\0"))  # fmt: skip
    raw = ip + d.bytes(max(0, ihl * 4 - 20)) + seg
    if d.bool():  # a correct TCP checksum, so verify_checksum passes
        pseudo = raw[12:20] + b"\0\x06" + len(seg).to_bytes(2, "big")
        csum = _csum(pseudo + seg)
        off = ihl * 4 + 16
        raw = raw[:off] + struct.pack("!H", csum) + raw[off + 2 :]
    return raw


def _csum(buf: bytes) -> int:
    if len(buf) % 2:
        buf += b"\0"
    acc = sum(struct.unpack(f"!{len(buf) // 2}H", buf))
    while acc >> 16:
        acc = (acc & 0xFFFF) + (acc >> 16)
    return ~acc & 0xFFFF


def check_segment(seg: Segment | None) -> None:
    if seg is None:
        return
    assert isinstance(seg, Segment), type(seg)
    assert 0 <= seg.sport <= 0xFFFF and 0 <= seg.dport <= 0xFFFF, seg
    assert 0 <= seg.seq <= 0xFFFFFFFF and 0 <= seg.ack <= 0xFFFFFFFF, seg
    assert 0 <= seg.flags <= 0x1FF and 0 <= seg.window <= 0xFFFF, seg
    assert 0 <= seg.ttl <= 255 and isinstance(seg.payload, bytes), seg
    seg.option_letters, seg.flag_str(), seg.seg_len  # noqa: B018 -- must not raise


def structured_packet6(d: Data) -> bytes:
    """A plausible IPv6/TCP packet from fuzzed fields: up to three extension
    headers (hop-by-hop, routing, destination options, fragment) of fuzzed
    lengths before TCP, or an ICMPv6 error quoting such a packet."""
    body, nh = _fuzzed_tcp(d), d.pick((6, 6, 6, d.uint(1)))
    for _ in range(d.range(0, 3)):
        kind = d.pick((0, 43, 60, 44, d.uint(1)))
        if kind == 44:  # fragment: offset and M flag fuzzed (0: atomic)
            ext = struct.pack("!BBHI", nh, 0, d.pick((0, 0, d.uint(2))), d.uint(4))
        else:
            n = d.range(0, 3)
            ext = bytes((nh, d.pick((n, n, d.uint(1))))) + d.bytes(6 + 8 * n).ljust(
                6 + 8 * n, b"\0"
            )
        body, nh = ext + body, kind
    src, dst = d.bytes(16).ljust(16, b"\0"), d.bytes(16).ljust(16, b"\0")
    plen = d.pick((len(body), d.uint(2), len(body) - d.range(0, 8)))
    raw = (
        struct.pack("!IHBB", (6 << 28) | d.uint(3), plen & 0xFFFF, nh, d.uint(1)) + src + dst + body
    )
    if d.bool() and nh == 6:  # a correct TCP checksum, so verify_checksum passes
        pseudo = src + dst + len(body).to_bytes(4, "big") + b"\0\0\0\x06"
        raw = raw[:56] + struct.pack("!H", _csum(pseudo + body)) + raw[58:]
    if d.bool():  # an ICMPv6 error quoting it (too big, unreachable, ...)
        icmp = struct.pack("!BBHI", d.pick((1, 2, 3, 4, d.uint(1))), d.uint(1), 0, d.uint(4))
        quoted = raw[: d.range(0, len(raw))]
        raw = (struct.pack("!IHBB", 6 << 28, 8 + len(quoted), 58, 64) + d.bytes(32).ljust(32, b"\0")
               + icmp + quoted)  # fmt: skip
    return raw


def fuzz_parse(d: Data) -> None:
    kind = d.uint(1) % 3
    if kind == 0:
        raw = structured_packet(d)
    elif kind == 1:
        raw = structured_packet6(d)
    else:
        raw = d.bytes(d.remaining())
    check_parse(raw)


def fuzz_parse6(d: Data) -> None:
    """The IPv6 parser alone (``CRONOS_FUZZ=parse6``): a structured IPv6
    packet, or raw bytes behind an IPv6 version nibble."""
    if d.bool():
        raw = structured_packet6(d)
    else:
        raw = bytes([0x60 | d.uint(1) & 0x0F]) + d.bytes(d.remaining())
    check_parse(raw)


def check_parse(raw: bytes) -> None:
    seg = parse_ip(raw, verify_checksum=True)
    check_segment(seg)
    flow = peek_flow(raw)
    if seg is not None:  # the fast path reads what the full parse read
        assert flow == (seg.src, seg.sport, seg.dst, seg.dport), (flow, seg)
        assert seg.checksum_ok == tcp_checksum_ok(raw), seg
    if raw[:1] and raw[0] >> 4 in (4, 6) and len(raw) >= 20:
        repeat_key(raw)
    err = parse_icmp6(raw)
    if err is not None:
        assert err.kind and 0 <= err.flow[1] <= 0xFFFF and 0 <= err.flow[3] <= 0xFFFF, err


# -- target (b): the probes ------------------------------------------------------------


def _near(d: Data, base: int) -> int:
    """A sequence number near ``base`` (where the interesting edges are) or anywhere."""
    kind = d.uint(1) % 4
    if kind == 0:
        return d.uint(4)
    if kind in (1, 2):
        return base & 0xFFFFFFFF
    delta = d.pick((0, 1, -1, 65535, 65536, -65536, 1 << 31, d.range(-3000, 3000)))
    return (base + delta) & 0xFFFFFFFF


class Driver:
    """One probe in the scan core on the simulated network (``cronos.scan.sim``),
    as the engine runs it, fed fuzzed events."""

    def __init__(self, d: Data):
        self.d = d
        method = d.pick(METHODS)
        payload = d.pick((b"GET / HTTP/1.0\r\n\r\n", b"", b"x" * d.range(1, 3000)))
        cfg = ProbeConfig(target=THEM, port=DPORT, src_ip=US, src_port=SPORT,
                          isn=d.pick((ISN, 0, 0xFFFFFFFF, d.uint(4))),
                          timeout_s=d.pick((3.0, 0.5, 60.0)), window_s=d.pick((180.0, 5.0, 1.0)),
                          payload=payload, sack=d.bool())  # fmt: skip
        self.now = 1_700_000_000.0 + d.range(0, 1000)
        # our capture misses one of our own segments now and then
        self.net = SimNet(ScanCore(CoreConfig(timeout_s=cfg.timeout_s, window_s=cfg.window_s)),
                          capture_lag_s=d.pick((15e-6, 0.0, 0.01)),
                          capture_miss=lambda t, seg: d.uint(1) % 4 == 0)  # fmt: skip
        self.net.launch(cfg, method, self.now)
        self.probe = self.net.core.probe((US, SPORT, THEM, DPORT))
        self.irs = d.uint(4)  # the fuzzed peer's ISN
        self.check()

    def check(self, out: list[Segment] = ()) -> None:
        assert isinstance(out, list | tuple) and len(out) <= MAX_OUT_PER_CALL, out
        assert len(self.net.sent) <= ClosingProbe.MAX_SENT + 1
        check_bounds(self.probe)

    def tick(self) -> None:
        self.now += self.d.pick(
            (0.0, 1e-6, 1e-3, 0.2, 1.0, 3.0, 60.0, self.d.range(0, 10**6) / 1e4)
        )

    def incoming(self) -> tuple[Segment | bytes, bool] | None:
        """What reaches our capture, and whether it crosses as bytes."""
        d, p = self.d, self.probe
        if d.uint(1) % 8 == 0:  # raw bytes, as captured
            raw = structured_packet(d)
            if d.bool():
                return raw, True  # the core routes (or drops) them on their 4-tuple
            seg = parse_ip(raw, verify_checksum=True)
            if seg is None:
                return None
            # our flow, so that it gets past the core's routing and is_reply
            # (as a Segment: build_ip does not write every option scapy reads)
            return dataclasses.replace(seg, src=THEM, dst=US, sport=DPORT, dport=SPORT), False
        rcv = getattr(p, "rcv_nxt", 0) or self.irs
        snd = getattr(p, "snd_nxt", (p.cfg.isn + 1) & 0xFFFFFFFF)
        flags = d.pick((SYN | ACK, ACK, FIN | ACK, FIN | PSH | ACK, RST, RST | ACK, PSH | ACK,
                        d.uint(1)))  # fmt: skip
        seq = self.irs if flags & SYN and d.bool() else _near(d, rcv)
        n = d.pick((0, 0, 1, 1460, d.range(0, 2000)))
        opts = d.pick(((), (("MSS", 1460),), (("MSS", 1460), ("NOP", None), ("WScale", 7))))
        return Segment(src=THEM, dst=US, sport=DPORT if d.uint(1) else d.uint(2),
                       dport=SPORT if d.uint(1) else d.uint(2), seq=seq, ack=_near(d, snd),
                       flags=flags, window=d.uint(2), payload=b"A" * n, options=opts,
                       ttl=d.uint(1)), True  # fmt: skip

    def step(self) -> None:
        d = self.d
        op = d.uint(1) % 5
        if op in (0, 1, 2):
            got = self.incoming()
            if got is not None:
                self.check(self.net.deliver(self.now, got[0], wire=got[1]))
        elif op == 3:
            self.tick()
            self.net.run_until(self.now)  # captures and timers due, in time order
        else:
            self.now += d.range(0, 1000) / 1e3
            self.net.run_until(self.now)
        self.check()

    def run(self) -> Observation:
        for _ in range(MAX_EVENTS):
            if self.d.remaining() <= 0 or self.probe.done:
                break
            self.step()
        if not self.probe.done:
            if self.d.bool():
                self.net.abort_all(self.now)
            else:
                self.net.run_until(self.now + 400.0)  # past every window: it ends alone
        self.net.run_until(self.now)
        assert self.probe.done and len(self.net.core) == 0
        (obs,) = self.net.observations
        return obs


def check_bounds(p) -> None:
    if isinstance(p, SynProbe):
        assert len(p.synacks) <= p.MAX_SYNACKS
    elif isinstance(p, ClosingProbe):
        assert len(p.fins) <= p.MAX_FINS
        assert len(p.ooo) <= p.MAX_OOO
        assert len(p.syn_sent_at) <= p.MAX_SYN_CAPTURES
        assert len(p.syn_clock) <= p.SYN_RETRIES + 1
        assert p.sent <= p.MAX_SENT
        assert p.synack_reacks <= p.MAX_SYNACK_REACKS
        assert p.data_bytes <= p.MAX_DATA_BYTES + 65536 + 2000, p.data_bytes
        assert len(p.notes) <= 8, p.notes


def check_observation(obs: Observation, p) -> None:
    assert isinstance(obs, Observation), type(obs)
    assert isinstance(obs.status, Status) and isinstance(obs.method, Method)
    fp = obs.fingerprint
    back = parse_state_line(fp.line())
    assert (back.method, back.time_s, back.gaps_us) == (fp.method, fp.time_s, fp.gaps_us), fp
    if fp.method is not Method.SYN_RCVD:
        assert back.connect_us == fp.connect_us, fp
    assert fp.rst_us is None or fp.rst_us >= 0, fp
    assert len(obs.arrivals_us) == len(fp.gaps_us) + (1 if obs.arrivals_us else 0)
    json.dumps(obs.to_dict())
    assert Observation.from_dict(obs.to_dict()).fingerprint == fp


def fuzz_probe(d: Data) -> None:
    drv = Driver(d)
    check_observation(drv.run(), drv.probe)


def one_input(data: bytes) -> None:
    d = Data(data)
    if ONLY == "parse6":
        fuzz_parse6(d)
    elif d.uint(1) % 4 == 0:
        fuzz_parse(d)
    else:
        fuzz_probe(d)


def main() -> None:
    if atheris is None:
        sys.exit("bench/fuzz.py needs atheris (pip install atheris)")
    argv = list(sys.argv)
    if not any(a.startswith("-max_len=") for a in argv):
        argv.append("-max_len=2048")  # a probe run reads < 2 KB; longer inputs only cost time
    atheris.instrument_func(one_input)
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
