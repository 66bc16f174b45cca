"""Timeline plots: what arrived, and what each candidate signature expected.

One row per measurement (host, port, state, try): the observed retransmission
series as dots on a time axis, seconds after the first timed packet (the
matcher's frame: it compares arrival times after the first packet). Under it,
one thin row per top candidate: the signature's schedule as ticks, aligned as
the matcher aligned it (``StateHow``: first packet lost or not, closing-state
RTT rescale, common shift), with every expected packet the matcher counted as
lost crossed in red, and expected packets after the listening window hollow
(they could not be seen). A final RST is a diamond.

The axis is linear for the first second, logarithmic after (``symlog``):
retransmission schedules double, so a linear axis would crush the first
packets. Matplotlib runs with the Agg backend (no display needed); the file
type follows the extension (.png, .svg, .pdf).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import UsageError
from ..model import Observation, Status, schedule_us

FORMATS = (".png", ".svg", ".pdf")
MAX_ROWS = 200  # measurements per figure; more would be unreadable
_ORDER = "slf"
_TICKS = (-3, -1, -0.5, 0, 0.2, 0.4, 0.6, 0.8, 1, 2, 3, 5, 10, 20, 30, 60, 120, 180, 300, 600)
_CAND_COLORS = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf")


@dataclass(frozen=True)
class Expected:
    """One candidate's schedule in the observation's frame (seconds)."""

    label: str
    times_s: tuple[float, ...]
    matched: tuple[bool, ...]
    lost: tuple[bool, ...]
    rst_s: float | None
    unexplained_s: tuple[float, ...] = ()  # observed packets this candidate does not explain


def _key(o: Observation):
    return (o.target, o.port, _ORDER.index(o.method.value), o.try_index)


def observed_times(o: Observation) -> tuple[list[float], float | None]:
    """Arrivals (s) after the first timed packet, and the final RST's time."""
    t = [0.0]
    for g in o.fingerprint.gaps_us:
        t.append(t[-1] + g / 1e6)
    fp = o.fingerprint
    rst = t[-1] + fp.rst_us / 1e6 if fp.rst_us is not None else None
    if not fp.gaps_us and o.status is not Status.OK:
        t = []
    return t, rst


def _how_for(cand, o: Observation, index: int | None):
    hows = getattr(cand, "how", ()) or ()
    if index is not None and index < len(hows) and hows[index].method is o.method:
        return hows[index]
    for h in hows:
        if h.method is o.method and h.try_index == o.try_index:
            return h
    return None


def expected_for(cand, o: Observation, index: int | None = None, rank: int = 1) -> Expected | None:
    """The candidate's schedule for ``o``'s state as the matcher aligned it."""
    sig = cand.signature
    fp = sig.states.get(o.method)
    label = f"{rank}. {_short(sig.name)} ({cand.confidence:.0%})"
    if fp is None:
        return Expected(label + " - no such state", (), (), (), None)
    h = _how_for(cand, o, index)
    times_us, rst_us = h.expected_us(fp) if h is not None else schedule_us(fp)
    k0 = 1 if h is not None and h.first_lost and len(times_us) > 1 else 0
    times = [t / 1e6 for t in times_us]
    matched_idx = {k0} | {p for p in (h.positions if h else ()) if p >= 0}
    last = max(matched_idx)
    lost_idx = set()
    if h is not None:  # the matcher's count: first, inner, then tail packets after the last
        lost_idx = set(range(k0)) | {i for i in range(k0, last) if i not in matched_idx}
        tail = max(0, h.lost - len(lost_idx))
        lost_idx |= set(range(last + 1, min(len(times), last + 1 + tail)))
    matched = tuple(i in matched_idx for i in range(len(times)))
    lost = tuple(i in lost_idx for i in range(len(times)))
    rst = rst_us / 1e6 if rst_us is not None else None
    observed, _ = observed_times(o)
    unexplained = tuple(
        observed[j + 1] for j, p in enumerate(h.positions if h else ()) if p < 0
    ) if h is not None and len(observed) == len(h.positions) + 1 else ()  # fmt: skip
    return Expected(label, tuple(times), matched, lost, rst, unexplained)


def _short(name: str, n: int = 42) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


def _candidates(results, target: str):
    """Candidates for one target from a MatchResult mapping, a list, or None."""
    if results is None:
        return ()
    r = results.get(target) if isinstance(results, Mapping) else results
    if r is None:
        return ()
    return tuple(getattr(r, "shown", None) or getattr(r, "candidates", r))


def _row_label(o: Observation) -> str:
    fp = o.fingerprint
    head = f"{o.target}:{o.port} {o.method.state_name} #{o.try_index}"
    bits = [f"{fp.nb_pkt} retx"] if o.status in (Status.OK, Status.ABORTED) else [o.status.value]
    if fp.connect_us is not None:
        c = fp.connect_us
        bits.append(f"RTT {c / 1000:.1f} ms" if c >= 1000 else f"RTT {c} µs")
    if o.note.startswith("passive"):
        bits.append("passive")
    return head + "\n" + ", ".join(bits)


def plot_timeline(
    observations: Sequence[Observation],
    results=None,
    path: str | os.PathLike = "timeline.png",
    *,
    top: int = 3,
    title: str | None = None,
) -> str:
    """Draw the timeline to ``path`` (.png, .svg or .pdf); returns the path.

    ``results``: ``{target: MatchResult}`` (as ``classify.classify`` or
    ``match`` per target give), one MatchResult or candidate list used for
    every row, or None (observations only). ``Candidate.how`` is looked up by
    the observation's position among the target's OK observations (the order
    ``match`` saw them), else by (state, try).
    """
    path = str(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise UsageError(f"{path}: plot format must be one of {', '.join(FORMATS)}")
    _save(observations, results, top, title, path, None)
    return path


def render_timeline(
    observations: Sequence[Observation], results=None, *, fmt: str = "png", top: int = 3,
    title: str | None = None,
) -> bytes:  # fmt: skip
    """The same figure as bytes (``fmt``: png, svg or pdf), e.g. to embed in HTML."""
    import io

    if f".{fmt}" not in FORMATS:
        raise UsageError(f"plot format must be one of {', '.join(FORMATS)}")
    buf = io.BytesIO()
    _save(observations, results, top, title, buf, fmt)
    return buf.getvalue()


def _save(observations, results, top, title, dest, fmt) -> None:
    rows = _rows(observations, results, top)
    if not rows:
        raise UsageError("nothing to plot: no observation")
    import matplotlib
    import matplotlib.pyplot as plt

    kind = fmt or os.path.splitext(str(dest))[1].lower().lstrip(".")
    # no date or version inside: the same observations give the same file
    meta = {"png": {"Software": None}, "svg": {"Date": None}, "pdf": {"CreationDate": None}}
    fig = _draw(rows, title or _title(observations))
    try:
        with matplotlib.rc_context({"svg.hashsalt": "cron-os"}):
            fig.savefig(dest, format=kind, dpi=110, bbox_inches="tight", metadata=meta[kind])
    except OSError as exc:
        raise UsageError(f"cannot write {dest}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)


def _title(observations) -> str:
    hosts = sorted({o.target for o in observations})
    shown = ", ".join(hosts[:4]) + (f" (+{len(hosts) - 4})" if len(hosts) > 4 else "")
    return f"Cron-OS retransmission timeline: {shown}"


def _rows(observations, results, top):
    """[(observation, [Expected...])] in host, port, state, try order."""
    ok_index: dict[int, int] = {}
    per_target: dict[str, int] = {}
    for o in observations:  # position among the target's OK observations (match's order)
        if o.status is Status.OK:
            ok_index[id(o)] = per_target.get(o.target, 0)
            per_target[o.target] = ok_index[id(o)] + 1
    rows = []
    for o in sorted(observations, key=_key)[:MAX_ROWS]:
        exps = []
        if o.status is Status.OK:
            for rank, c in enumerate(_candidates(results, o.target)[:top], 1):
                e = expected_for(c, o, ok_index.get(id(o)), rank)
                if e is not None:
                    exps.append(e)
        rows.append((o, exps))
    return rows


def _draw(rows, title: str):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    n_lines = sum(1 + len(e) for _, e in rows)
    fig, ax = plt.subplots(figsize=(12, 1.0 + 0.42 * n_lines + 0.25 * len(rows)))
    y = 0.0
    yticks, ylabels, tmax, tmin = [], [], 1.0, 0.0
    for o, exps in rows:
        times, rst = observed_times(o)
        band = "#f3f3f3" if len(yticks) % 2 else "white"
        ax.axhspan(y - 0.5, y + len(exps) * 0.7 + 0.3, color=band, zorder=0)
        ax.plot(times, [y] * len(times), "o", color="black", ms=7, zorder=3)
        if len(times) > 1:
            ax.plot(times, [y] * len(times), "-", color="black", lw=0.8, zorder=2)
        if rst is not None:
            ax.plot([rst], [y], "D", color="#d62728", ms=7, zorder=3)
        if o.status is not Status.OK and not times:
            ax.text(0.0, y, f"  {o.status.value}", va="center", fontsize=8, color="#777")
        if o.fingerprint.time_s:  # Time counts from our stimulus, the axis from the 1st packet
            first = o.arrivals_us[0] / 1e6 if o.arrivals_us else 0.0
            end = o.fingerprint.time_s - first
            ax.plot([end], [y], "|", color="#999", ms=14, zorder=1)
            tmax = max(tmax, end)
        yticks.append(y)
        ylabels.append(_row_label(o))
        tmax = max([tmax, *times, rst or 0.0])
        for k, e in enumerate(exps, 1):
            ye = y + 0.7 * k
            color = _CAND_COLORS[(k - 1) % len(_CAND_COLORS)]
            for t, m, lost in zip(e.times_s, e.matched, e.lost, strict=True):
                if lost:
                    ax.plot([t], [ye], "x", color="#d62728", ms=8, mew=2, zorder=3)
                elif m:
                    ax.plot([t], [ye], "|", color=color, ms=12, mew=2.2, zorder=3)
                else:
                    ax.plot([t], [ye], "|", color=color, ms=12, mew=1, alpha=0.35, zorder=3)
            if e.rst_s is not None:
                ax.plot([e.rst_s], [ye], "d", color=color, mfc="none", ms=7, zorder=3)
            if e.unexplained_s:
                ax.plot(e.unexplained_s, [ye] * len(e.unexplained_s), "o", color="#d62728",
                        mfc="none", ms=8, mew=1.5, zorder=3)  # fmt: skip
            if e.times_s:
                tmin = min(tmin, min(e.times_s))
            yticks.append(ye)
            ylabels.append(e.label)
        y += 0.7 * len(exps) + 1.2
    ax.set_xscale("symlog", linthresh=1.0, linscale=1.0)
    lo, hi = min(-0.05, max(tmin, -5.0) * 1.1), tmax * 1.3 + 0.3  # later ticks: clipped
    ax.set_xlim(lo, hi)
    ticks = [t for t in _TICKS if lo <= t <= hi]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks], fontsize=8)
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_yticks(yticks)
    ax.set_yticklabels(ylabels, fontsize=8)
    for lab, t in zip(ax.get_yticklabels(), ylabels, strict=True):
        if "\n" not in t:
            lab.set_fontsize(7)
            lab.set_color("#444")
    ax.set_ylim(y - 0.7, -0.8)
    ax.set_xlabel("seconds after the first timed packet (linear to 1 s, then logarithmic)")
    ax.grid(axis="x", which="both", color="#ddd", lw=0.5)
    ax.set_title(title, fontsize=11, pad=24)  # the legend sits between title and plot
    _legend(ax)
    fig.tight_layout()
    return fig


def _legend(ax) -> None:
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], marker="o", color="black", ls="", label="observed"),
        Line2D([], [], marker="D", color="#d62728", ls="", label="observed RST"),
        Line2D(
            [],
            [],
            marker="|",
            color=_CAND_COLORS[0],
            ls="",
            mew=2.2,
            ms=12,
            label="expected (matched)",
        ),  # fmt: skip
        Line2D(
            [],
            [],
            marker="|",
            color=_CAND_COLORS[0],
            ls="",
            alpha=0.35,
            ms=12,
            label="expected (not seen: window)",
        ),  # fmt: skip
        Line2D([], [], marker="x", color="#d62728", ls="", mew=2, label="expected, lost"),
        Line2D([], [], marker="o", color="#d62728", mfc="none", ls="", label="seen, unexplained"),
        Line2D([], [], marker="|", color="#999", ls="", ms=12, label="end of listening"),
    ]
    ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=7,
              fontsize=7, frameon=False)  # fmt: skip
