"""``cron-os db``: browse the reference database, lint a signature file."""

from __future__ import annotations

import sys
from collections import Counter

from ..errors import UsageError
from ..model import Method


def register(sub) -> None:
    p = sub.add_parser(
        "db",
        help="list, show or check signature blocks",
        description="Browse the built-in database (plus --db files), or lint a signature file.",
    )
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    ls = verbs.add_parser("list", help="one line per block, then counts by provenance and state")
    ls.add_argument(
        "--class", dest="cls", metavar="TEXT", help="only blocks whose Class contains TEXT"
    )
    ls.add_argument("--db", action="append", default=[], metavar="FILE")
    ls.set_defaults(func=run_list)
    show = verbs.add_parser("show", help="the blocks whose name contains NAME")
    show.add_argument("name", metavar="NAME")
    show.add_argument("--db", action="append", default=[], metavar="FILE")
    show.set_defaults(func=run_show)
    check = verbs.add_parser(
        "check", help="lint FILE: syntax, duplicates, blocks another one already explains"
    )
    check.add_argument("file", metavar="FILE")
    check.set_defaults(func=run_check)


def _blocks(db) -> list[tuple]:
    """(name, signatures) per block: a Law block's variants are one block."""
    out: dict[str, list] = {}
    for s in db.signatures:
        out.setdefault(s.law_block or s.name, []).append(s)
    return list(out.items())


def provenance(sig) -> str:
    src = sig.sources[0].lower() if sig.sources else ""
    if src.startswith("hershel"):
        return "hershel+" if "420os" in src else "hershel"
    for kind in ("talk", "source", "lab"):
        if src.startswith(kind):
            return kind
    return "user"


def _states(sigs) -> str:
    have = {m for s in sigs for m in s.states}
    return "".join(m.value for m in Method if m in have)


def run_list(args) -> int:
    from ..analysis.db import load_db

    db = load_db(args.db)
    want = (args.cls or "").lower()
    shown, by_prov, by_state = 0, Counter(), Counter()
    for name, sigs in _blocks(db):
        s = sigs[0]
        if want and not any(want in c.line().lower() for c in s.classes):
            continue
        shown += 1
        prov = provenance(s)
        by_prov[prov] += 1
        for m in _states(sigs):
            by_state[m] += 1
        law = f", {len(sigs)} settings" if s.law_block else ""
        print(f"{_states(sigs):<3} {prov:<8} {name}{law}  [{s.where}]")
    if not shown:
        raise UsageError(f"no block's Class contains {args.cls!r}")
    provs = ", ".join(f"{n} {k}" for k, n in by_prov.most_common())
    states = ", ".join(f"{by_state[m.value]} {m.state_name}" for m in Method)
    print(f"\n{shown} blocks ({provs}); with {states}", file=sys.stderr)
    return 0


def run_show(args) -> int:
    from ..analysis.db import load_db

    db = load_db(args.db)
    want = args.name.lower()
    found = [(n, sigs) for n, sigs in _blocks(db) if want in n.lower()]
    if not found:
        raise UsageError(f"no block named like {args.name!r} (try: cron-os db list)")
    for _name, sigs in found:
        s = sigs[0]
        if s.law_block:
            print(f"# {s.where} ({provenance(s)}): the law {s.law!r}, {len(sigs)} settings")
            print(s.law_block_text())
        else:
            print(f"# {s.where} ({provenance(s)})")
            print(s.block())
    return 0


def run_check(args) -> int:
    """Strict load (file:line errors, exit 2), then each block of FILE as an
    observation of itself against the rest: another block that names it
    with confidence >= 0.9 already explains it (exit 1)."""
    from pathlib import Path

    from ..analysis.db import Database, builtin_paths, load_db
    from ..analysis.match import match
    from ..model import Observation, Status

    # a built-in file is checked against the others, not against itself
    mine_path = Path(args.file).resolve()
    others_builtin = [p for p in builtin_paths() if p.resolve() != mine_path]
    db = load_db([*others_builtin, args.file], builtin=False)
    mine = [s for s in db.signatures if s.file == args.file and not s.law_block]
    others = Database(tuple(s for s in db.signatures if s.file != args.file))
    covered = 0
    for s in mine:
        obs = []
        for m, fp in s.states.items():
            arrivals = [1_000]
            for g in fp.gaps_us:
                arrivals.append(arrivals[-1] + g)
            feats = s.features if m is Method.SYN_RCVD else None
            obs.append(Observation("block", 0, m, 1, Status.OK, fp, features=feats,
                                   arrivals_us=tuple(arrivals)))  # fmt: skip
        res = match(obs, others)
        if res.verdict is not None and res.confidence >= 0.9:
            covered += 1
            best = res.candidates[0]
            print(f"{s.where}: {s.name!r} is already explained by {best.name!r} "
                  f"[{best.where}] ({res.confidence:.2f})")  # fmt: skip
    blocks = len({s.law_block or s.name for s in db.signatures if s.file == args.file})
    print(f"{args.file}: {blocks} block(s) loaded, {covered} already explained by another",
          file=sys.stderr)  # fmt: skip
    return 1 if covered else 0
