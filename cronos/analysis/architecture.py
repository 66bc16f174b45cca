"""What stands between us and the target: a verdict from every view at once.

Pure: observations, the matcher's results and nmap's parsed view in, an
``ArchitectureVerdict`` out. The SSTIC 2003 talk's point: nmap sees the box
that answers the SYN (there, a Nokia SYN relay), Cron-OS's closing states see
the host behind it; together they reveal the architecture. Cron-OS's own
states already disagree under a SYN proxy, so this works without nmap too.

Kinds, most specific first (every signal found is kept as evidence):

    syn-proxy           SYN_RCVD answered by another box than the closing states
                        (states that alone name other families count only when
                        no one signature explains every state together)
    filtering-firewall  a state (or nmap) got no answer where another did
    non-ideal-network   loss or jitter the matcher had to assume
    not-in-bases        no match, in Cron-OS's database and/or nmap's
    consistent          every view names the same family
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..model import Method, Observation, Status
from ..net.nmap import VAGUE_FAMILIES, NmapHost
from .db import Database
from .match import match

KINDS = ("syn-proxy", "filtering-firewall", "non-ideal-network", "not-in-bases", "consistent")
SUMMARIES = {
    "syn-proxy": "SYN proxy / relay in front of the server",
    "filtering-firewall": "filtering firewall: some probes get no answer",
    "non-ideal-network": "non-ideal network: loss or jitter beyond what the matcher explains",
    "not-in-bases": "OS not in the reference bases",
    "consistent": "consistent: one host answers every state",
}
CLOSING = (Method.LAST_ACK, Method.FIN_WAIT1)
NO_ANSWER = (Status.FILTERED, Status.CLOSED, Status.RESET)
# Jitter: handshake RTTs across tries further apart than this ratio and delta.
RTT_RATIO, RTT_DELTA_US = 3.0, 50_000


@dataclass(frozen=True)
class ArchitectureVerdict:
    kind: str  # one of KINDS
    summary: str
    evidence: tuple[str, ...]


def match_by_state(observations: Sequence[Observation], db: Database, top: int = 5) -> dict:
    """One ``match`` per measured state: what each state alone says."""
    by: dict[Method, list[Observation]] = {}
    for o in observations:
        by.setdefault(o.method, []).append(o)
    return {m: match(obs, db, top=top) for m, obs in by.items()}


def infer(
    observations: Sequence[Observation], match_by_state, nmap: NmapHost | None, joint=None
) -> ArchitectureVerdict:
    """The architecture verdict. ``match_by_state``: {Method: MatchResult}, or
    one MatchResult over every state (then per-state disagreement is unseen).
    ``joint``: the match of every state together (the target's verdict), if
    known: when one signature explains every state, states that alone name
    different families only lack the evidence to tell them apart."""
    per_state = _per_state(match_by_state)
    one = _one_stack(joint, per_state)
    alone = _state_disagreement(per_state)
    signals: dict[str, list[str]] = {k: [] for k in KINDS}
    notes: list[str] = []
    signals["syn-proxy"] += _syn_proxy(observations, per_state, nmap)
    if one is None:
        signals["syn-proxy"] += alone
    elif alone:
        notes.append(f"{'; '.join(alone)} alone, but one signature explains every state: {one}")
    signals["filtering-firewall"] += _filtering(observations, nmap)
    # the losses the verdict assumes: none when one signature explains every
    # state (``_one_stack``), else each state's best alignment's
    signals["non-ideal-network"] += _network(observations, per_state if one is None else {})
    signals["not-in-bases"] += _not_in_bases(observations, per_state, nmap)
    kind = next((k for k in KINDS[:-1] if signals[k]), "consistent")
    evidence = [line for k in KINDS for line in signals[k]] + notes
    evidence += _views(per_state, nmap)
    return ArchitectureVerdict(kind, SUMMARIES[kind], tuple(evidence))


def _one_stack(joint, per_state) -> str | None:
    """The joint verdict's best signature, when it alone explains every
    measured state (its confidence at least one half, every observation a
    success, no packet assumed lost): then the states are one host's."""
    if joint is None or joint.no_match or not joint.candidates or joint.confidence < 0.5:
        return None
    best = joint.candidates[0]
    states = {m for m in per_state if m is not None}
    if not best.how or best.success < best.tests or any(h.lost for h in best.how):
        return None
    if states - {h.method for h in best.how}:
        return None
    return best.name


def _state_disagreement(per_state) -> list[str]:
    syn_f = families(per_state.get(Method.SYN_RCVD))
    out = []
    for m in CLOSING:
        f = families(per_state.get(m))
        if _disjoint(syn_f, f):
            says = "/".join(sorted(f))
            out.append(f"SYN_RCVD says {'/'.join(sorted(syn_f))}, {m.state_name} says {says}")
    return out


# --- inputs --------------------------------------------------------------------


def _per_state(m) -> dict:
    """{Method or None: result}; None keys a result over every state together."""
    if m is None:
        return {}
    if isinstance(m, Mapping):
        return {Method(k): v for k, v in m.items() if v is not None}
    return {None: m}


def families(result) -> frozenset[str]:
    """Families a MatchResult(-ish) names: its class-level verdict, else every
    family of the candidates holding 90 % of the posterior between them (at
    least the tied best): stacks of two families may time a state alike
    (gVisor's closing states and Linux's), and a state that cannot tell them
    apart does not say the other states are another stack."""
    if result is None or result.no_match or not result.candidates:
        return frozenset()
    if result.verdict_class:
        return frozenset({result.verdict_class})
    out, mass = set(), 0.0
    for k, c in enumerate(result.candidates):
        if k >= max(1, result.ties) and mass >= 0.9:
            break
        if c.signature.family:
            out.add(c.signature.family)
        mass += c.confidence
    return frozenset(out)


def _name(result) -> str:
    if result is None or result.no_match:
        return "no match"
    return f"{result.verdict} ({round(result.confidence * 100)}%)"


def _disjoint(a: frozenset[str], b: frozenset[str]) -> bool:
    """Two non-empty family sets with nothing in common (case-insensitive)."""
    la, lb = {x.lower() for x in a}, {x.lower() for x in b}
    return bool(la) and bool(lb) and not la & lb


def _ok(observations, method) -> list[Observation]:
    return [o for o in observations if o.method is method and o.status is Status.OK]


def _timed_ttl(o: Observation) -> int | None:
    """TTL of the timed packets (FINs) of a closing observation, if recorded."""
    return o.ttl_in


# --- signals -------------------------------------------------------------------


def _syn_proxy(observations, per_state, nmap) -> list[str]:
    """The relay's signs beside the states' own disagreement (``infer``)."""
    out: list[str] = []
    syn = _ok(observations, Method.SYN_RCVD)
    closing = [o for m in CLOSING for o in _ok(observations, m)]
    quiet_syn = syn and all(o.fingerprint.nb_pkt == 0 for o in syn)
    if quiet_syn and any(o.fingerprint.nb_pkt > 0 for o in closing):
        out.append(
            f"SYN_RCVD: one SYN-ACK and no retransmission in {syn[0].fingerprint.time_s} s "
            f"({_tries(len(syn))}), while the closing states retransmit normally"
        )
    feats = next((o.features for o in syn if o.features is not None), None)
    if feats is not None and feats.window == 0 and syn:
        out.append("SYN-ACK advertises window 0 (Linux SYNPROXY / SYN-cookie relay)")
    ttls = sorted({t for o in closing if (t := _timed_ttl(o)) is not None})
    if feats is not None and ttls and any(t != feats.ttl for t in ttls):
        out.append(
            f"SYN-ACK TTL {feats.ttl} but closing-state packets arrive with TTL "
            f"{'/'.join(map(str, ttls))}: another box answers the SYN"
        )
    if nmap is not None:
        nm = nmap.top_families()
        for m in CLOSING:
            f = families(per_state.get(m))
            if _disjoint(nm, f):
                out.append(
                    f"nmap (SYN-based) guesses {_nmap_best(nmap)}, {m.state_name} says "
                    f"{'/'.join(sorted(f))}"
                )
    return out


def _filtering(observations, nmap) -> list[str]:
    out: list[str] = []
    ports = sorted({o.port for o in observations})
    answered_any = any(o.status is Status.OK for o in observations)
    for port in ports:
        st = {o.method: o.status for o in observations if o.port == port}
        ok = [m.state_name for m, s in st.items() if s is Status.OK]
        bad = [f"{m.state_name} {s.value}" for m, s in st.items() if s in NO_ANSWER]
        if ok and bad:
            out.append(f"port {port}: {', '.join(bad)} while {', '.join(ok)} answered")
        if nmap is not None:
            ns = nmap.port_state(port)
            if ns and "filtered" in ns and Status.OK in st.values():
                out.append(f"port {port}: nmap sees it {ns}, Cron-OS got answers")
            if ns == "open" and st and all(s is Status.FILTERED for s in st.values()):
                out.append(f"port {port}: nmap sees it open, Cron-OS got no answer")
    if observations and not answered_any and any(o.status is Status.FILTERED for o in observations):
        out.append("no state answered on any port")
    return out


def _network(observations, per_state) -> list[str]:
    out: list[str] = []
    for m in Method:
        obs = _ok(observations, m)
        rtts = [o.fingerprint.connect_us for o in obs if o.fingerprint.connect_us]
        if (
            len(rtts) > 1
            and max(rtts) > RTT_RATIO * min(rtts)
            and (max(rtts) - min(rtts) > RTT_DELTA_US)
        ):
            out.append(
                f"{m.state_name}: handshake RTT varies across tries "
                f"({min(rtts) / 1000:.1f}-{max(rtts) / 1000:.1f} ms)"
            )
        counts = sorted({o.fingerprint.nb_pkt for o in obs})
        if len(counts) > 1:
            out.append(f"{m.state_name}: tries saw {'/'.join(map(str, counts))} retransmissions")
        resent = [o.note for o in obs if "SYN sent" in o.note]
        if resent:
            out.append(f"{m.state_name}: our SYN was lost ({resent[0]})")
    for m, result in per_state.items():
        if result is None or result.no_match or not result.candidates:
            continue
        lost = sum(h.lost for h in result.candidates[0].how)
        if lost:
            where = m.state_name if m is not None else "all states"
            out.append(
                f"{where}: the best match ({result.candidates[0].name}) assumes "
                f"{lost} lost packet(s)"
            )
    return out


def _not_in_bases(observations, per_state, nmap) -> list[str]:
    out: list[str] = []
    measured = {o.method for o in observations if o.status is Status.OK}
    for m, result in per_state.items():
        if (m is None or m in measured) and result is not None and result.no_match:
            out.append(f"{m.state_name if m else 'Cron-OS'}: no match in the database")
    cron_fams = frozenset().union(*(families(r) for r in per_state.values()))
    if nmap is not None:
        nm = nmap.top_families()
        if not nmap.osmatches:
            out.append("nmap: no OS match at all")
        elif not nmap.exact and not cron_fams:
            out.append(f"nmap: no exact match (best guess {_nmap_best(nmap)})")
        syn_only = set(per_state) <= {Method.SYN_RCVD, None}
        if syn_only and _disjoint(nm, cron_fams):
            out.append(
                f"nmap guesses {_nmap_best(nmap)}, Cron-OS {'/'.join(sorted(cron_fams))}: "
                "one base lacks this OS"
            )
    return out


def _nmap_best(nmap: NmapHost) -> str:
    b = nmap.best
    return f"{b.name} ({b.accuracy}%)" if b else "nothing"


def _views(per_state, nmap) -> list[str]:
    """What each view says, whatever the verdict."""
    out = []
    for m in (None, *Method):
        if m in per_state:
            out.append(f"Cron-OS {m.state_name if m else 'all states'}: {_name(per_state[m])}")
    if nmap is not None:
        fams = "/".join(sorted(nmap.top_families(), key=lambda f: f.lower() in VAGUE_FAMILIES))
        exact = "" if nmap.exact else ", no exact match"
        out.append(f"nmap: {_nmap_best(nmap)}{f' [{fams}]' if fams else ''}{exact}")
    return out


def _tries(n: int) -> str:
    return f"{n} try" if n == 1 else f"{n} tries"
