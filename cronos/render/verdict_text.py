"""Render match results: human text (nmap-like) and JSON-ready dicts."""

from __future__ import annotations

from ..analysis.classify import TargetVerdict
from ..analysis.match import Candidate, MatchResult


def candidate_dict(c: Candidate) -> dict:
    return {
        "name": c.name,
        "line": c.where,
        "score": round(c.score, 3),
        "confidence": round(c.confidence, 3),
        "success": c.success,
        "tests": c.tests,
        "class": [cl.line()[6:] for cl in c.signature.classes],
        "evidence": c.evidence,
        "cpe": list(c.signature.cpes),
        "how": [
            {
                "state": h.method.state_name,
                "try": h.try_index,
                "positions": list(h.positions),
                "offsets_us": list(h.offsets_us),
                "shift_us": h.shift_us,
                "lost": h.lost,
                "first_lost": h.first_lost,
                "unexplained": h.unexplained,
                "rst": h.rst,
                "scale": h.scale,
                "header": h.header,
                "success": h.success,
            }
            for h in c.how
        ],
    }


def verdict_dict(v: TargetVerdict) -> dict:
    r = v.result
    d = {
        "type": "verdict",
        "target": v.target,
        "observations": len(v.observations),
        "inputs": [o.input_id for o in v.observations if o.input_id is not None],
        "verdict": r.verdict if r.verdict is not None else "no match",
        "class": r.verdict_class,
        "confidence": round(r.confidence, 3),
        "p_unknown": round(r.p_unknown, 3),
        "ties": r.ties,
        "fit": round(r.fit, 3) if r.fit != float("inf") else None,
        "candidates": [candidate_dict(c) for c in r.shown],
    }
    if r.verdict is None:
        d["signature"] = r.observation_block
    return d


def render(v: TargetVerdict, top: int = 5) -> str:
    r: MatchResult = v.result
    ids = [o.input_id for o in v.observations if o.input_id is not None]
    shown = ", ".join(ids[:4]) + (f", ... (+{len(ids) - 4})" if len(ids) > 4 else "")
    lines = [f"Target {v.target} ({len(v.observations)} observations{'; ' + shown if ids else ''})"]
    if r.verdict is None:
        lines.append(f"No match: a stack not in the database is the likeliest answer "
                     f"(probability {r.p_unknown:.2f}).")  # fmt: skip
    else:
        lines.append(f"Verdict: {r.verdict}  (confidence {r.confidence:.2f})")
        if r.ties > 1:
            lines.append(f"  {r.ties} signatures fit equally well")
        if r.verdict_class:
            lines.append(f"  Class: {r.verdict_class}")
        if r.candidates:
            lines.append(f"  Evidence: {r.candidates[0].evidence}")
        if r.p_unknown >= 0.05:
            lines.append(f"  A stack not in the database: probability {r.p_unknown:.2f}")
    guesses = [f"{c.name} ({c.tally}, {c.confidence:.2f}) [{c.where}]" for c in r.shown[:top]]
    if guesses:
        head = "Remote OS guesses" if r.verdict else "Closest signatures"
        lines.append(f"{head}: " + ", ".join(guesses))
    if r.verdict is None:
        lines.append("Signature of this target (add it to a --db file):")
        lines.append(r.observation_block.rstrip("\n"))
    return "\n".join(lines) + "\n"
