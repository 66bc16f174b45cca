"""Target sets: lazy expansion, and the exact count the progress line shows."""

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
