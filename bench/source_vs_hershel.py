#!/usr/bin/env python3
"""The blocks derived from source, checked against what Hershel measured.

    .venv/bin/python bench/source_vs_hershel.py [--show]

Each Hershel and Hershel+ stack whose Class family is one that ``source.db``
derives (FreeBSD, OpenBSD, NetBSD, Mac OS X, Windows, Solaris, Linux ...) is
classified, its own measured SYN_RCVD schedule and header taken as one
observation, against ``source.db`` alone (no Hershel, lab or talk block).
The derived blocks cover releases and default settings, the measured stacks
are whatever Hershel met on the Internet (tuned hosts, appliances, other
releases): the count that matters is how often a measured stack is named
with a derived block of ANOTHER family at confidence >= 0.5 (the derivation
would mislead), against the same family or "no match".
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cronos.analysis.db import Database, load_db  # noqa: E402
from cronos.analysis.match import match  # noqa: E402
from cronos.model import Method  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--show", action="store_true", help="one line per stack")
    args = ap.parse_args(argv)
    full = load_db()
    source = Database(tuple(s for s in full.signatures if s.file.endswith("source.db")))
    fams = {c.family.lower() for s in source.signatures for c in s.classes if c.family}
    tally: Counter = Counter()
    per_family: dict[str, Counter] = {}
    for s in full.signatures:
        if not s.sources or s.sources[0].split()[0] != "hershel":
            continue
        mine = {c.family.lower() for c in s.classes if c.family}
        if not mine & fams or Method.SYN_RCVD not in s.states:
            continue
        res = match([(s.states[Method.SYN_RCVD], s.features)], source, top=1)
        if res.verdict is None:
            kind = "no match"
        else:
            named = {c.family.lower() for c in res.candidates[0].signature.classes if c.family}
            same = bool(named & mine)
            conf = res.confidence >= 0.5
            kind = ("same family" if same else "other family") + (" >= 0.5" if conf else " < 0.5")
        tally[kind] += 1
        for f in mine & fams:
            per_family.setdefault(f, Counter())[kind] += 1
        if args.show:
            print(f"{kind:22s} {s.name[:60]:60s} -> {res.verdict or '-'} "
                  f"({res.confidence:.2f})")  # fmt: skip
    n = sum(tally.values())
    print(f"{n} Hershel/Hershel+ stacks of a family source.db derives, against source.db alone:")
    for k in ("same family >= 0.5", "same family < 0.5", "no match", "other family < 0.5",
              "other family >= 0.5"):  # fmt: skip
        print(f"  {k:22s} {tally[k]:4d}  ({100 * tally[k] / max(n, 1):.1f} %)")
    print("per family (same>=0.5 / same<0.5 / no match / other<0.5 / other>=0.5):")
    for f, c in sorted(per_family.items()):
        print(
            f"  {f:12s} {c['same family >= 0.5']:3d} {c['same family < 0.5']:3d} "
            f"{c['no match']:3d} {c['other family < 0.5']:3d} {c['other family >= 0.5']:3d}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
