"""One verdict path: a target's observations become its verdict here, and only here.

``decide`` runs the matcher on the observations (every state and try
together), and, when asked, the architecture analysis (the states matched
one by one, compared with each other and with nmap's view of the host).
``scan``, ``classify``, ``plot`` and every renderer (text, JSON, nmap XML,
HTML, plots) take a ``Verdict``; none of them matches again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..model import Observation, Status
from .db import Database
from .match import MatchResult, PathModel, match

_ANSWERED = (Status.OK, Status.ABORTED)  # a timed state (aborted: what was listened)


@dataclass(frozen=True)
class Verdict:
    """A target's (or one port's) verdict."""

    target: str
    observations: tuple[Observation, ...]
    #: the matcher's ranked answer (with no timed state, filtered or closed
    #: ports only: "no match" and no candidate)
    result: MatchResult
    #: ``architecture.ArchitectureVerdict`` when asked for (``decide``)
    architecture: object | None = None

    @property
    def answered(self) -> bool:
        """Some state was reached and timed: there was something to match."""
        return any(o.status in _ANSWERED for o in self.observations)


def decide(
    target: str,
    observations: Sequence[Observation],
    db: Database,
    *,
    top: int = 5,
    model: PathModel | None = None,
    architecture: bool = False,
    nmap=None,
) -> Verdict:
    """The verdict of one target (or of one port of it: pass its observations).

    ``architecture``: also compare the states matched one by one (and
    ``nmap``, nmap's ``NmapHost`` for the target, when known)."""
    obs = tuple(observations)
    result = match(obs, db, top=top, model=model)
    arch = None
    if architecture:
        from .architecture import infer, match_by_state

        methods = {o.method for o in obs}
        if len(methods) == 1:  # one state: the same match
            per_state = {next(iter(methods)): result}
        else:
            per_state = match_by_state(obs, db, top=top)
        arch = infer(obs, per_state, nmap, joint=result)
    return Verdict(target, obs, result, arch)


def by_target(observations: Iterable[Observation]) -> dict[str, list[Observation]]:
    """Observations grouped per target, in first-seen order."""
    groups: dict[str, list[Observation]] = {}
    for o in observations:
        groups.setdefault(o.target, []).append(o)
    return groups
