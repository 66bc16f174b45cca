"""Human-readable rendering of observations, in the spirit of nmap's report."""

from __future__ import annotations

from collections.abc import Sequence

from ..model import Method, Observation, fingerprint_lines, port_header


def _gaps_ms(gaps_us: Sequence[int], limit: int = 12) -> str:
    shown = " ".join(f"{g / 1000:.1f}" for g in gaps_us[:limit])
    if len(gaps_us) > limit:
        shown += f" ... (+{len(gaps_us) - limit})"
    return shown or "-"


def host_block(target: str, observations: Sequence[Observation], guesses: str | None = None) -> str:
    """Report for one target: a table of measurements then the fingerprint lines."""
    obs = sorted(observations, key=lambda o: (o.port, "slf".index(o.method.value), o.try_index))
    lines = [f"Cron-OS scan report for {target}"]
    lines.append(
        f"{'PORT':<9} {'STATE':<10} {'TRY':>3}  {'STATUS':<9} {'nbPkt':>5}  "
        f"{'RTT ms':>7}  GAPS (ms)"
    )
    for o in obs:
        fp = o.fingerprint
        rtt = f"{fp.connect_us / 1000:.1f}" if fp.connect_us is not None else "-"
        rst = f"  RST +{fp.rst_us / 1000:.1f}" if fp.rst_us is not None else ""
        lines.append(
            f"{f'{o.port}/tcp':<9} {o.method.state_name:<10} {o.try_index:>3}  "
            f"{o.status.value:<9} {fp.nb_pkt:>5}  {rtt:>7}  {_gaps_ms(fp.gaps_us)}{rst}"
        )
    for port in sorted({o.port for o in obs}):
        lines.append(f"Fingerprint lines for port {port}:")
        per_port = [o for o in obs if o.port == port]
        hdr = port_header([o.features for o in per_port])
        shown = [o.fingerprint for o in per_port
                 if o.status.value in ("ok", "aborted") or o.method is Method.SYN_RCVD]  # fmt: skip
        lines += [f"  {line}" for line in fingerprint_lines(shown, hdr)]
    if guesses:
        lines.append(guesses)
    return "\n".join(lines)
