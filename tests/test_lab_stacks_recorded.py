"""Scans of the lab's compiled stacks recorded with ``scan -m slf --tries 2
--timeout 30 --full`` (tests/data/lab/, lwIP 2.1.3, gVisor netstack
2022-12-19, User-Mode Linux 6.1): each is named first by its block, and with
its block left out it is "no match" or its family, never another stack with
confidence (issue 15's leave-one-stack-out target, offline)."""

from pathlib import Path

import pytest

from cronos.analysis.classify import read_jsonl
from cronos.analysis.db import Database, load_db
from cronos.analysis.match import match

DATA = Path(__file__).parent / "data" / "lab"


@pytest.fixture(scope="module")
def db():
    return load_db()


@pytest.mark.parametrize("stack, family", [("lwip", None), ("gvisor", None), ("uml", "Linux")])
def test_named_first_and_left_out(db, stack, family):
    obs = read_jsonl((DATA / f"{stack}.jsonl").read_text())
    assert {o.method.value for o in obs} == {"s", "l", "f"} and len(obs) == 6
    res = match(obs, db)
    assert res.verdict is not None and f"[lab {stack}]" in res.verdict, res.verdict
    assert res.confidence >= 0.9
    without = Database(tuple(s for s in db.signatures if f"[lab {stack}]" not in s.name))
    left = match(obs, without)
    if family is None:
        assert left.verdict is None or left.confidence < 0.5, left.verdict
    else:  # another block of its family may name it, no other family
        assert left.verdict is None or left.verdict_class == family, left.verdict
