"""Early verdicts: pure decisions, and with the built-in database."""

from cronos.analysis.db import load_db
from cronos.analysis.early import MIN_GAPS, EarlyStopper, Future, decide_from
from cronos.model import Method, Observation, StateFingerprint, Status, SynAckFeatures

LINUX_HDR = SynAckFeatures(0xFE88, 64, True, 0, 1460, "MSTNW", 10)


def test_no_signature_no_stop():
    assert not decide_from(None, 10_000_000, 5).stop
    assert not decide_from((), 10_000_000, 5).stop


def test_agreeing_futures_stop_only_with_enough_evidence():
    a = Future("a", (4_000_000,), (200_000,))
    b = Future("b", (4_010_000,), (200_000,))
    assert decide_from((a, b), 2_000_000, MIN_GAPS).stop
    assert not decide_from((a, b), 2_000_000, MIN_GAPS - 1).stop
    done = Future("c", (), ())
    assert decide_from((done,), 1_000, 0).stop  # every fitting series complete: final


def test_differing_futures_recheck_after_the_first_pending_event_then_stop():
    longer = Future("default", (15_000_000,), (750_000,))
    shorter = Future("synack3", (), ())
    d = decide_from((longer, shorter), 8_000_000, 3)
    assert not d.stop and d.recheck_us > 15_000_000 + 3 * 750_000
    d2 = decide_from((longer, shorter), d.recheck_us, 3)
    assert d2.stop  # the longer series' packet is overdue: only "synack3" is left
    assert decide_from((longer, shorter), d.recheck_us - 2_000, 3).recheck_us == d.recheck_us


def _obs(gaps, method=Method.SYN_RCVD, connect=None, feats=LINUX_HDR):
    fp = StateFingerprint(method, 60, tuple(gaps), connect)
    arr, t = [1000], 1000
    for g in gaps:
        t += g
        arr.append(t)
    return Observation("10.0.0.2", 80, method, 1, Status.OK, fp, feats, arrivals_us=tuple(arr))


def test_linux_default_prefix_waits_for_the_signatures_that_differ():
    stop = EarlyStopper(load_db())
    # 1, 2, 4 s: synack3 (complete) and the default (8 s more) both fit
    d = stop.decide(_obs([1_018_000, 2_016_000, 4_192_000]), 7_300_000)
    assert not d.stop and d.recheck_us is not None and d.recheck_us > 15_000_000
    # the 4th SYN-ACK came: the measured stacks left all expect a 5th at 31 s;
    # stopping is a bet that it comes, and a Linux with tcp_synack_retries=4
    # (the Linux law's block) says it will not: listen until one is overdue
    d4 = stop.decide(_obs([1_018_000, 2_016_000, 4_192_000, 8_192_000]), 15_500_000)
    assert not d4.stop and 31_000_000 < d4.recheck_us < 40_000_000, d4
    # the 5th came: every fitting stack's series is complete
    d5 = stop.decide(_obs([1_018_000, 2_016_000, 4_192_000, 8_192_000, 16_128_000]), 31_700_000)
    assert d5.stop, d5
    again = stop.decide(_obs([1_018_500, 2_016_300, 4_192_100, 8_192_400, 16_128_400]),
                        31_700_000)  # fmt: skip
    assert again.stop and stop.matches == 3  # the second host hit the memo


def test_unknown_series_never_stops_early():
    stop = EarlyStopper(load_db())
    weird = _obs([700_000, 300_000, 1_900_000, 450_000], feats=None)
    assert not stop.decide(weird, 5_000_000).stop


def test_early_and_plot_read_one_alignment_when_the_first_packet_was_lost():
    from dataclasses import replace

    from cronos.analysis.db import Database, parse_db_text
    from cronos.analysis.early import futures
    from cronos.analysis.match import match
    from cronos.render.plot import expected_for

    db = Database(
        tuple(
            parse_db_text(
                "Fingerprint Doubling\nClass unknown\nSource test (50 samples)\n"
                "CronOS_Syn(nbPkt=4%Time=60%p=1000000%p=2000000%p=4000000%p=8000000)\n",
                "d.db",
            )
        )
    )
    # the first SYN-ACK lost: we see the expected packets 1, 2, 3 (at 1, 3, 7 s
    # of the schedule), 2 and 4 s apart; the next one is 8 s after the last seen
    partial = _obs([2_000_000, 4_000_000], feats=None)
    # 50 ms RTT: the first arrival, 1.05 s after our SYN, is the first retransmission
    partial = replace(partial, arrivals_us=(1_050_000, 3_050_000, 7_050_000))
    (fut,) = futures(partial, db)
    assert abs(fut.events_us[0] - 14_000_000) < 50_000, fut
    cand = match([partial], db).candidates[0]
    exp = expected_for(cand, partial)
    assert exp.lost[0] and abs(exp.times_s[4] - fut.events_us[0] / 1e6) < 1e-6


def test_one_missing_packet_does_not_name_a_shorter_stack():
    """A signature that expects two more packets is not dropped when only the
    first of them is overdue: it may have been lost (test_wan_lab once named
    linux-synack2 stacks tcp_synack_retries=1 after one lost SYN-ACK)."""
    longer = Future("default", (3_000_000, 7_000_000), (150_000, 350_000))
    shorter = Future("synack1", (), ())
    d = decide_from((longer, shorter), 3_600_000, 1)  # the 3 s packet is overdue
    assert not d.stop and d.recheck_us == 7_000_000 + 3 * 350_000 + 1000
    assert decide_from((longer, shorter), d.recheck_us, 1).stop  # two in a row: contradicted
    last = Future("synack2", (3_000_000,), (150_000,))  # its only packet to come
    assert decide_from((last, shorter), 3_600_000, 1).stop
