"""Count each packet once: drop the exact copies a capture can see.

A packet crossing a Linux bridge and its port, a macvlan or VLAN device and
its lower device, or a bond and its slave is handed to a packet socket once
per device (``tcpdump -i any`` shows it twice). A copy would be timed as a
retransmission a few microseconds after the original: ``p=3%p=1006367%p=19``
instead of ``p=1006367``. The live capture binds to the interface the route
leaves through, which removes most copies; this filter removes the rest, live
and in pcap files alike.

A copy is byte-for-byte the same packet, seen less than ``WINDOW_S`` after it
(measured on a bridge and on a macvlan: 0 to 23 us). A real retransmission is
not that close: retransmission timeouts start at 200 ms or more in common
stacks (Linux's ``rto_min`` default; the lab's shortest, a route ``rto_min``
of 20 ms, gives 25 ms), and a retransmission carrying TCP timestamps is not
even byte-equal to the one before.
A duplicate made by the network itself (a looping switch) is dropped too:
it is not a retransmission either.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

#: Two identical packets closer than this are one packet seen twice.
WINDOW_S = 0.002
#: How far the timestamps of two capture sockets may run out of order.
_HORIZON_S = 0.1


class CopyFilter:
    """Streaming: ``is_copy(ts, data)`` for each packet in capture order.

    Memory is bounded by the packets of the last ``_HORIZON_S`` seconds.
    Timestamps may arrive slightly out of order (two sockets read in turn).
    """

    def __init__(self, window_s: float = WINDOW_S):
        self.window_s = window_s
        self.copies = 0  # packets dropped so far
        self._seen: dict[bytes, float] = {}
        self._order: deque[tuple[float, bytes]] = deque()
        self._clock = float("-inf")

    def is_copy(self, ts: float, data: bytes) -> bool:
        if ts > self._clock:
            self._clock = ts
            self._expire()
        prev = self._seen.get(data)
        if prev is not None and abs(ts - prev) < self.window_s:
            self.copies += 1
            return True
        self._seen[data] = ts
        self._order.append((ts, data))
        return False

    def _expire(self) -> None:
        limit = self._clock - max(_HORIZON_S, self.window_s)
        order, seen = self._order, self._seen
        while order and order[0][0] < limit:
            ts, data = order.popleft()
            if seen.get(data) == ts:  # not refreshed by a later packet
                del seen[data]


def dedupe(
    packets: Iterable[tuple[float, bytes]], window_s: float = WINDOW_S
) -> Iterator[tuple[float, bytes]]:
    """The packets of a capture, each exact copy removed (see ``CopyFilter``)."""
    f = CopyFilter(window_s)
    for ts, data in packets:
        if not f.is_copy(ts, data):
            yield ts, data
