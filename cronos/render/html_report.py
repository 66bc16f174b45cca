"""A self-contained HTML report: one file, inline CSS, plots embedded.

No script, no external URL (fonts, styles, images): the report opens the same
offline, in a mail client or in an evidence archive. Plots are embedded as
base64 PNG (``data:`` URIs) or inline SVG. Everything measured is escaped.
The report carries no generation date: the same scan gives the same file.

    hosts = [HostSection(addr, obs, match_result, architecture_verdict)]
    write_html("report.html", hosts, {"": timeline_png_bytes})

``write_evidence`` is the one call the CLI needs: match, plot, write.
"""

from __future__ import annotations

import base64
import html
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..errors import UsageError
from ..model import Method, Observation, Status, port_header
from ..model import fingerprint_lines as model_fingerprint_lines

GLOBAL = ""  # key of the plot shown above every host section


@dataclass(frozen=True)
class HostSection:
    """One target: its observations, the matcher's result, the architecture verdict."""

    address: str
    observations: tuple[Observation, ...]
    result: object | None = None  # match.MatchResult
    architecture: object | None = None  # architecture.ArchitectureVerdict


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;
  color:#1d1d1f;background:#fafafa}
header{background:#22313f;color:#fff;padding:18px 32px}
header h1{margin:0;font-size:22px}header p{margin:4px 0 0;color:#c9d3dd}
main{padding:16px 32px;max-width:1250px}
section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:14px 20px;margin:16px 0}
h2{font-size:18px;margin:4px 0 10px}h3{font-size:15px;margin:16px 0 6px}
table{border-collapse:collapse;font-size:13px;margin:4px 0}
th,td{border-bottom:1px solid #e4e4e4;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f0f2f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f5f5f0;border:1px solid #e0e0d8;padding:8px 12px;overflow-x:auto;
  font:12px/1.4 ui-monospace,Menlo,Consolas,monospace}
.verdict{font-size:16px;font-weight:600}.nomatch{color:#b35c00}
.ok{color:#1b7f3b}.bad{color:#b00020}.muted{color:#777}
.kind{display:inline-block;padding:1px 8px;border-radius:10px;background:#e8eef6;
  font-weight:600}.kind.syn-proxy,.kind.filtering-firewall{background:#fde8d0}
.kind.not-in-bases{background:#f6e0e0}.kind.consistent{background:#dff3e4}
img.plot,div.plot svg{max-width:100%;height:auto;border:1px solid #eee}
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


# --- pieces ---------------------------------------------------------------------


def _gaps_ms(gaps: Sequence[int], limit: int = 16) -> str:
    shown = " ".join(f"{g / 1000:.1f}" for g in gaps[:limit])
    return (shown + (f" … (+{len(gaps) - limit})" if len(gaps) > limit else "")) or "-"


def _verdict_text(result) -> tuple[str, str]:
    if result is None:
        return "not matched", "muted"
    if result.verdict is None:
        return "no match", "nomatch"
    return f"{result.verdict} ({result.confidence:.0%})", ""


def _hosts_table(hosts: Sequence[HostSection]) -> str:
    rows = []
    for h in hosts:
        ports = sorted({o.port for o in h.observations})
        states = []
        for m in Method:
            st = [o.status.value for o in h.observations if o.method is m]
            if st:
                states.append(f"{m.state_name}: {', '.join(sorted(set(st)))}")
        text, cls = _verdict_text(h.result)
        arch = getattr(h.architecture, "kind", "") or ""
        rows.append(
            f'<tr><td><a href="#{_anchor(h.address)}">{_e(h.address)}</a></td>'
            f"<td>{_e(','.join(map(str, ports)))}</td><td>{_e('; '.join(states))}</td>"
            f'<td class="{cls}">{_e(text)}</td><td>{_e(arch)}</td></tr>'
        )
    return (
        "<table><tr><th>Host</th><th>Ports</th><th>States (status)</th><th>Verdict</th>"
        "<th>Architecture</th></tr>" + "".join(rows) + "</table>"
    )


def _anchor(address: str) -> str:
    return "host-" + "".join(c if c.isalnum() else "-" for c in address)


def _guesses(result, top: int) -> tuple[str, str]:
    """(verdict paragraphs, candidates table and the pasteable block)."""
    if result is None:
        return '<p class="muted">Not matched against a database.</p>', ""
    text, cls = _verdict_text(result)
    head = [f'<p class="verdict {cls}">Verdict: {_e(text)}</p>']
    if result.verdict_class:
        head.append(f"<p>Class: {_e(result.verdict_class)}</p>")
    if result.ties > 1:
        head.append(f"<p>{result.ties} signatures fit equally well.</p>")
    out = []
    if result.candidates:
        title = "Remote OS guesses" if result.verdict else "Closest signatures"
        out.append(
            f"<h3>{title}</h3><table><tr><th>#</th><th>Signature</th><th>Tally</th>"
            "<th>Confidence</th><th>How it matched</th><th>Database line</th></tr>"
        )
        for i, c in enumerate(result.shown[:top], 1):
            out.append(
                f'<tr><td class="num">{i}</td><td>{_e(c.name)}</td><td>{_e(c.tally)}</td>'
                f'<td class="num">{c.confidence:.2f}</td><td>{_how(c)}</td>'
                f"<td><code>{_e(c.where)}</code></td></tr>"
            )
        out.append("</table>")
    if result.verdict is None:
        out.append("<h3>Signature of this target (add it to a <code>--db</code> file)</h3>")
        out.append(f"<pre>{_e(result.observation_block)}</pre>")
    return "".join(head), "".join(out)


def _how(c) -> str:
    parts = []
    for h in c.how:
        if h.method not in c.signature.states:
            parts.append(f"✗ {h.method.state_name} #{h.try_index}: state not in signature")
            continue
        bits = []
        if h.lost:
            bits.append(f"{h.lost} lost" + (" (first)" if h.first_lost else ""))
        if h.unexplained:
            bits.append(f"{h.unexplained} unexplained")
        if h.rst not in ("-", "match"):
            bits.append(f"RST {h.rst}")
        if h.scale != 1.0:
            bits.append(f"RTT scale {h.scale:g}")
        if h.header:
            bits.append(f"header: {h.header}")
        mark = "✓" if h.success else "✗"
        parts.append(f"{mark} {h.method.state_name} #{h.try_index}: {', '.join(bits) or 'exact'}")
    return "<br>".join(_e(p) for p in parts)


def _architecture(arch) -> str:
    if arch is None:
        return ""
    ev = "".join(f"<li>{_e(x)}</li>" for x in getattr(arch, "evidence", ()))
    return (
        f'<h3>Architecture</h3><p><span class="kind {_e(arch.kind)}">{_e(arch.kind)}</span> '
        f"{_e(arch.summary)}</p>" + (f"<ul>{ev}</ul>" if ev else "")
    )


def _observations(obs: Sequence[Observation]) -> str:
    order = sorted(obs, key=lambda o: (o.port, "slf".index(o.method.value), o.try_index))
    rows = []
    for o in order:
        fp = o.fingerprint
        rtt = f"{fp.connect_us / 1000:.2f}" if fp.connect_us is not None else "-"
        rst = f"{fp.rst_us / 1000:.1f}" if fp.rst_us is not None else "-"
        cls = "ok" if o.status is Status.OK else "bad"
        rows.append(
            f"<tr><td>{o.port}/tcp</td><td>{o.method.state_name}</td>"
            f'<td class="num">{o.try_index}</td><td class="{cls}">{_e(o.status.value)}</td>'
            f'<td class="num">{fp.nb_pkt}</td><td class="num">{rtt}</td>'
            f"<td>{_e(_gaps_ms(fp.gaps_us))}</td><td class=num>{rst}</td>"
            f"<td>{_e(o.note)}</td></tr>"
        )
    return (
        "<h3>Measurements</h3><table><tr><th>Port</th><th>State</th><th>Try</th>"
        "<th>Status</th><th>nbPkt</th><th>RTT ms</th><th>Gaps (ms)</th><th>RST ms</th>"
        "<th>Note</th></tr>" + "".join(rows) + "</table>"
    )


def fingerprint_lines(obs: Sequence[Observation]) -> str:
    """The ``CronOS_*`` lines of a host, per port (as the text report prints them)."""
    lines = []
    for port in sorted({o.port for o in obs}):
        per = sorted(
            (o for o in obs if o.port == port),
            key=lambda o: ("slf".index(o.method.value), o.try_index),
        )
        lines.append(f"# port {port}")
        hdr = port_header([o.features for o in per])
        shown = [o.fingerprint for o in per if o.status in (Status.OK, Status.ABORTED)]
        lines += model_fingerprint_lines(shown, hdr)
    return "\n".join(lines)


def _plot(data) -> str:
    """An embedded figure: PNG bytes, SVG text/bytes, or a path to either."""
    if data is None:
        return ""
    if isinstance(data, os.PathLike) or (
        isinstance(data, str) and not data.lstrip().startswith("<")
    ):
        p = Path(data)
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise UsageError(f"{p}: cannot read plot: {exc.strerror or exc}") from None
    if isinstance(data, str):
        data = data.encode()
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        b64 = base64.b64encode(data).decode("ascii")
        return f'<img class="plot" alt="timeline" src="data:image/png;base64,{b64}">'
    text = data.decode("utf-8", errors="replace")
    start = text.find("<svg")
    if start < 0:
        raise UsageError("plot is neither PNG nor SVG")
    return f'<div class="plot">{text[start:]}</div>'


# --- the document ---------------------------------------------------------------


def render_html(
    hosts: Sequence[HostSection],
    plots: Mapping[str, object] | None = None,
    *,
    title: str = "Cron-OS report",
    top: int = 5,
) -> str:
    """The report as one HTML string. ``plots``: {address or "" (global): figure}."""
    plots = plots or {}
    all_obs = [o for h in hosts for o in h.observations]
    started = [o.started_at for o in all_obs if o.started_at]
    when = ""
    if started:
        import datetime as _dt

        t = _dt.datetime.fromtimestamp(min(started), _dt.UTC)
        when = f", first probe {t:%Y-%m-%d %H:%M:%S} UTC"
    body = [
        f"<header><h1>{_e(title)}</h1><p>Cron-OS {_e(__version__)}: {len(hosts)} host(s), "
        f"{len(all_obs)} measurement(s){_e(when)}</p></header><main>",
        f"<section><h2>Hosts</h2>{_hosts_table(hosts)}</section>",
    ]
    if plots.get(GLOBAL) is not None:
        body.append(f"<section><h2>Timeline</h2>{_plot(plots[GLOBAL])}</section>")
    for h in hosts:
        parts = [f'<section id="{_anchor(h.address)}"><h2>{_e(h.address)}</h2>']
        verdict, guesses = _guesses(h.result, top)
        parts.append(verdict)
        parts.append(_architecture(h.architecture))
        if plots.get(h.address) is not None:
            parts.append(f"<h3>Timeline</h3>{_plot(plots[h.address])}")
        parts.append(guesses)
        parts.append(_observations(h.observations))
        parts.append(
            f"<h3>Fingerprint lines</h3><pre>{_e(fingerprint_lines(h.observations))}</pre>"
        )
        parts.append("</section>")
        body.append("".join(parts))
    body.append("</main>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )


def write_html(
    path: str | os.PathLike,
    hosts: Sequence[HostSection],
    plots: Mapping[str, object] | None = None,
    **kw,
) -> str:
    """Write the report atomically (temporary file, then rename); returns the path."""
    text = render_html(hosts, plots, **kw)
    path = str(path)
    parent = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".cronos-", suffix=".html", dir=parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


# --- one call for the CLI ---------------------------------------------------------


def write_evidence(
    verdicts: Sequence,
    *,
    html_path: str | None = None,
    plot_path: str | None = None,
    top: int = 5,
) -> None:
    """Plot and write the HTML of targets already decided (``cronos.analysis.verdict``:
    their observations, results and architecture verdicts; nothing is matched
    here)."""
    if not verdicts or not (html_path or plot_path):
        return
    observations = [o for v in verdicts for o in v.observations]
    results = {v.target: v.result for v in verdicts}
    from .plot import plot_timeline, render_timeline

    if plot_path:
        plot_timeline(observations, results, plot_path)
    if html_path:
        hosts, plots = [], {}
        for v in verdicts:  # one timeline per host, in its section
            hosts.append(HostSection(v.target, tuple(v.observations), v.result, v.architecture))
            plots[v.target] = render_timeline(list(v.observations), {v.target: v.result},
                                              fmt="png", title=f"{v.target}")  # fmt: skip
        write_html(html_path, hosts, plots, top=top)


def check_outputs(html_path: str | None = None, plot_path: str | None = None) -> None:
    """Fail before a scan, not after it: plot extension and output directories."""
    from .plot import FORMATS

    if plot_path and os.path.splitext(plot_path)[1].lower() not in FORMATS:
        raise UsageError(f"--plot {plot_path}: format must be one of {', '.join(FORMATS)}")
    for opt, p in (("-oH", html_path), ("--plot", plot_path)):
        if p and not os.path.isdir(os.path.dirname(os.path.abspath(p))):
            raise UsageError(
                f"{opt} {p}: directory {os.path.dirname(os.path.abspath(p))} does not exist"
            )
