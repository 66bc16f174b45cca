"""Noise generators for the accuracy bench: a Hershel+ sample seen across a path.

A held-out sample (one published line: header fields, the SYN-ACK times after
the first one, the RST last when there is one) is sent again through a path:

* the SYN takes ``fwd`` (2-150 ms of propagation plus its own queueing), the
  stack emits its series from then on, each packet takes ``back`` (2-150 ms)
  plus a queueing delay q >= 0 drawn from ``Noise.delay`` with mean
  ``mean_ms``; packets leave the path in order (FIFO, as a queue does);
* each packet, the first SYN-ACK and the RST included, is lost with
  probability ``loss``; only what arrives within ``listen_s`` of the SYN is
  written;
* with probability ``header`` the target's header is changed (by a scrubber,
  a middlebox or its administrator): one field (70 %), two (25 %) or three
  (5 %), chosen among the window (rewritten to a common value or any 16-bit
  one), the initial TTL (replaced), DF (flipped), the MSS (clamped to a common
  value below the original, or any value) and the options (cut to an
  order-preserving subset); with ``per_field=True`` each field is changed
  independently with probability ``header`` instead (harsher: at 10 %, 8 % of
  targets get two fields or more changed). The TTL always loses 0-25 hops.

The observation is written as Hershel+'s live fingerprinter writes it (420-stack
format): ``id, window, ttl, df, options, options_int, mss, rst, rst_ack,
rst_window, rst_nonzero, t_1, t_2, ...`` with every time in seconds from the SYN
(t_1: the first SYN-ACK that arrived).

Delay families (``Noise.delay``), each with mean ``mean_ms`` per packet:
``exp`` exponential; ``pareto`` Lomax (Pareto II) with alpha 2.5;
``uniform`` U(0, 2 mean); ``lognormal`` sigma 1; ``paths``: every path draws
its own scale (lognormal around the mean, sigma 1) then exponential delays;
``hershelplus``: Hershel+'s own simulator, a common T ~ Exp(0.5 s) for the
whole series (it only moves the RTT column) plus per-packet Exp(mean);
``none``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WINDOWS = (5840, 8192, 14600, 16384, 29200, 32768, 64240, 65535, 4128, 1024)
MSS_CLAMPS = (1452, 1440, 1436, 1420, 1412, 1400, 1380, 1360, 1350, 1300, 1260, 1200, 536)
TTLS = (32, 64, 128, 255)
FAMILIES = ("exp", "pareto", "uniform", "lognormal", "paths", "hershelplus", "none")


@dataclass(frozen=True)
class Noise:
    delay: str = "exp"
    mean_ms: float = 50.0
    loss: float = 0.03
    header: float = 0.10
    listen_s: float = 120.0
    per_field: bool = False

    @property
    def label(self) -> str:
        if self.delay == "none" or self.mean_ms == 0:
            d = "no delay"
        else:
            d = f"{self.delay} {self.mean_ms:g} ms"
        h = f"header {self.header:.0%}{'/field' if self.per_field else ''}"
        return f"{d}, loss {self.loss:.0%}, {h}"


def queueing(noise: Noise, n: int, rng: np.random.Generator) -> np.ndarray:
    """n one-sided queueing delays (seconds) of one path."""
    mu = noise.mean_ms / 1000.0
    if noise.delay == "none" or mu <= 0:
        return np.zeros(n)
    if noise.delay in ("exp", "hershelplus"):
        return rng.exponential(mu, n)
    if noise.delay == "pareto":
        a = 2.5
        return (a - 1) * mu * ((1 - rng.random(n)) ** (-1 / a) - 1)
    if noise.delay == "uniform":
        return rng.uniform(0, 2 * mu, n)
    if noise.delay == "lognormal":
        s = 1.0
        return rng.lognormal(np.log(mu) - s * s / 2, s, n)
    if noise.delay == "paths":
        s = 1.0
        theta = rng.lognormal(np.log(mu) - s * s / 2, s)
        return rng.exponential(theta, n)
    raise ValueError(f"unknown delay family {noise.delay!r}")


def _subset(opts: str, rng) -> str:
    kinds = [c for c in opts if c not in "NE"]
    if not kinds:
        return opts
    drop = set(rng.choice(kinds, size=int(rng.integers(1, len(kinds) + 1)), replace=False))
    out = "".join(c for c in opts if c not in drop)
    out = out.strip("N")
    return out if out != opts else ""


HEADER_FIELDS = ("window", "ttl", "df", "mss", "options")


def change_header(sample, noise: Noise, rng) -> tuple:
    """(window, ttl, df, options, mss) as seen after the path."""
    win, ttl, df, opts, mss = sample.window, sample.ttl, sample.df, sample.options, sample.mss
    if noise.per_field:
        fields = {f for f in HEADER_FIELDS if rng.random() < noise.header}
    elif rng.random() < noise.header:
        k = int(rng.choice([1, 2, 3], p=[0.70, 0.25, 0.05]))
        fields = set(rng.choice(HEADER_FIELDS, size=k, replace=False).tolist())
    else:
        fields = set()
    if "window" in fields:
        win = int(rng.choice(WINDOWS)) if rng.random() < 0.5 else int(rng.integers(0, 65536))
    if "ttl" in fields:
        ttl = int(rng.choice([t for t in TTLS if t != ttl]))
    if "df" in fields:
        df = not df
    if "mss" in fields and mss is not None:
        lower = [m for m in MSS_CLAMPS if m < mss]
        mss = (
            int(rng.choice(lower)) if lower and rng.random() < 0.8 else int(rng.integers(1, 65536))
        )
    if "options" in fields:
        opts = _subset(opts, rng)
        if "M" not in opts:
            mss = None
    ttl = max(1, ttl - int(rng.integers(0, 26)))
    return win, ttl, df, opts, mss


def observe(sample, noise: Noise, rng: np.random.Generator, header=None):
    """Arrival times from the SYN (s), the RST's (or None), and the header;
    None if nothing arrived. ``header``: the header as another try of the
    same target saw it (one path: its rewrites and hop count are the same)."""
    times = np.array((0.0,) + tuple(sample.times_s))
    rst_t = None
    if sample.rst and len(sample.times_s):
        rst_t, times = times[-1], times[:-1]
    emit = np.append(times, rst_t) if rst_t is not None else times
    fwd = rng.uniform(0.002, 0.150) + queueing(noise, 1, rng)[0]
    if noise.delay == "hershelplus":
        fwd += rng.exponential(0.5)
    arr = fwd + emit + rng.uniform(0.002, 0.150) + queueing(noise, len(emit), rng)
    arr = np.maximum.accumulate(arr)  # FIFO
    keep = (rng.random(len(arr)) >= noise.loss) & (arr <= noise.listen_s)
    rst_arr = None
    if rst_t is not None:
        if keep[-1]:
            rst_arr = float(arr[-1])
        keep, arr = keep[:-1], arr[:-1]
    synacks = arr[keep]
    if not len(synacks):
        return None
    return synacks, rst_arr, header if header is not None else change_header(sample, noise, rng)


def hershel_line(ident: int, seen) -> str:
    """One observation line in Hershel+'s (420-stack) format."""
    synacks, rst, (win, ttl, df, opts, mss) = seen
    times = list(synacks) + ([rst] if rst is not None else [])
    fields = [ident, win, ttl, int(df), opts or "X", 0, mss or 0, int(rst is not None), 0, 0, 0]
    return ",".join(map(str, fields)) + "," + ",".join(f"{t:.6f}" for t in times)
