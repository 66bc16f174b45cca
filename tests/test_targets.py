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
