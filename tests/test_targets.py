"""Target sets: lazy expansion, and the exact count the progress line shows."""

import itertools

from cronos.scan.targets import TargetSet


def test_count_leaves_out_edges_exclusions_and_duplicates_and_keeps_skip_counts():
    ts = TargetSet(["10.77.0.0/22"])
    assert ts.upper_bound() == 1024
    assert ts.count() == 1022  # network and broadcast addresses left out
    assert ts.skipped == {}  # counting is not scanning
    assert len(list(ts)) == 1022
    assert ts.skipped == {"network/broadcast": 2}
    ex = TargetSet(["10.77.0.0/24", "10.77.0.5", "10.77.0.5"], exclude=["10.77.0.128/25"])
    assert ex.count() == len(list(TargetSet(["10.77.0.0/24", "10.77.0.5", "10.77.0.5"],
                                            exclude=["10.77.0.128/25"]))) == 127  # fmt: skip
    assert TargetSet(["10.0.0.0/8"]).count() is None  # too many to walk twice


def test_ipv6_prefixes_ranges_exclusions_and_mixed_families():
    import pytest

    from cronos.errors import UsageError

    ts = TargetSet(["fd00:77::/126"])
    assert list(ts) == ["fd00:77::1", "fd00:77::2", "fd00:77::3"]  # no subnet-router anycast
    assert ts.skipped == {"subnet-router anycast": 1}
    assert TargetSet(["fd00:77::/104"]).count() is None  # 2**24: counted, never listed twice
    with pytest.raises(UsageError, match="never enumerates"):
        TargetSet(["fd00:77::/103"])
    mixed = TargetSet(["10.0.0.0/30", "fd00::1-fd00::3", "10.0.0.5-6", "::1"],
                      exclude=["::2/128", "fd00::3", "10.0.0.6"])  # fmt: skip
    # ::2/128 must not exclude 10.0.0.2 (ipaddress's `in` ignores the family)
    assert list(mixed) == ["10.0.0.1", "10.0.0.2", "fd00::1", "fd00::2", "10.0.0.5", "::1"]
    assert mixed.skipped == {"network/broadcast": 2, "excluded": 2}
    with pytest.raises(UsageError, match="-4 was given"):
        TargetSet(["10.0.0.1", "fd00::1"], family=4)
    assert list(TargetSet(["fe80::1%lo", "fe80::1%lo"])) == ["fe80::1%lo"]
    assert list(TargetSet(["fe80::1%lo"], exclude=["fe80::/64"])) == []
    assert list(TargetSet(["FD00:0:0::0:1"])) == ["fd00::1"]  # one spelling: the canonical one


def test_shards_of_one_seed_cover_every_target_once_in_a_scrambled_order():
    import pytest

    from cronos.errors import UsageError
    from cronos.scan.targets import Order, parse_shard

    for n in (0, 1, 2, 3, 10, 97, 1000):
        for k in (1, 2, 3, 8):
            got = [i for s in range(k) for i in Order(7, s, k).indices(n)]
            assert sorted(got) == list(range(n)), (n, k)
    walk = list(Order(7).indices(1000))
    assert walk != sorted(walk) and walk == list(Order(7).indices(1000))  # seeded, repeatable
    assert walk != list(Order(8).indices(1000))
    # consecutive addresses are scattered: few neighbours follow each other
    assert sum(abs(a - b) == 1 for a, b in itertools.pairwise(walk)) < 20
    specs = ["10.77.0.0/24", "10.77.1.0/24", "10.77.0.5", "10.77.2.7-10.77.2.9", "fd00::/126",
             "fe80::1%lo", "fe80::1%lo"]  # fmt: skip
    exclude = ["10.77.1.128/25", "fd00::2"]
    plain_set = TargetSet(specs, exclude=exclude)
    plain = list(plain_set)
    shards = [TargetSet(specs, exclude=exclude, order=Order(2026, i, 3)) for i in range(3)]
    lists = [list(s) for s in shards]
    union = [a for x in lists for a in x]
    assert len(union) == len(set(union)) and sorted(union) == sorted(plain)
    assert all(len(x) > 100 for x in lists[:2])  # each shard has its share
    skipped = {}
    for s in shards:
        for why, n in s.skipped.items():
            skipped[why] = skipped.get(why, 0) + n
    # each prefix's own network/broadcast addresses, as in the plain walk (10.77.0.255
    # and 10.77.1.0 are inside the merged 10.77.0.0/23, and skipped all the same)
    assert skipped == plain_set.skipped
    assert skipped == {"network/broadcast": 4, "subnet-router anycast": 1, "excluded": 128}
    assert sum(s.upper_bound() for s in shards) == TargetSet(specs).upper_bound()
    # an edge of one prefix that another prefix holds as an ordinary address is scanned
    both = TargetSet(["10.77.0.0/24", "10.77.0.0/23"], order=Order(1))
    assert sorted(both, key=lambda a: tuple(map(int, a.split(".")))) == [
        f"10.77.{i // 256}.{i % 256}" for i in range(1, 511)
    ]
    assert parse_shard("3/4") == (3, 4)
    for bad in ("4/4", "-1/4", "1", "a/b", "0/0"):
        with pytest.raises(UsageError, match="--shard"):
            parse_shard(bad)
    with pytest.raises(UsageError, match="--seed"):
        Order(-1)
