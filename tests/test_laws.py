"""Stack families as laws: the Linux law against the lab's measurements, the
Law line's loader, and a host with settings no block lists named by family
with the values its timings read."""

from __future__ import annotations

import re

import pytest

from cronos.analysis.db import load_db, parse_db_text
from cronos.analysis.laws import LAWS, expand, lateness_us, linux_orphan_count
from cronos.analysis.match import match
from cronos.errors import DatabaseError
from cronos.lab.profiles import PROFILES
from cronos.model import Method, Observation, StateFingerprint, Status, SynAckFeatures

LINUX = LAWS["linux"]
HDR = SynAckFeatures(65160, 64, True, 0, 1460, "MSTNW", 10)  # the lab blocks' header


@pytest.mark.parametrize(
    "profile, rto_us, orphan",
    [("linux-default", 205_000, 0), ("linux-synack3", 205_000, 1),
     ("linux-orphan2", 207_000, 2), ("linux-rto20", 25_000, 2)],
)  # fmt: skip
def test_the_orphan_budget_gives_the_lab_counts(profile, rto_us, orphan):
    """The law's count of FIN retransmissions is the one the lab measures."""
    expected = PROFILES[profile].expected_ms["LAST_ACK"]
    assert linux_orphan_count(rto_us, orphan) == len(expected)


def test_variants_follow_the_lab_schedules_within_their_spread():
    v = LINUX.variant({"tcp_synack_retries": 5, "tcp_orphan_retries": 0, "rto_min": 200_000})
    syn, spread = v.states[Method.SYN_RCVD], v.spread_us[Method.SYN_RCVD]
    measured = PROFILES["linux-default"].expected_ms["SYN_RCVD"]
    arrival = expected = 0
    for k, (g_ms, g_us) in enumerate(zip(measured, syn.gaps_us, strict=True)):
        arrival += g_ms * 1000
        expected += g_us
        assert abs(arrival - expected) < 3 * spread[k], (k, arrival, expected)
    fin = v.states[Method.LAST_ACK]
    assert fin.connect_us == 1000 and fin.nb_pkt == 8 and syn.rst_us is None


def test_timer_lateness_grows_with_the_wheel_level():
    means = [lateness_us(t)[0] for t in (1e6, 4e6, 16e6, 64e6)]
    assert means == sorted(means) and means[0] < 40_000 and means[-1] > 1e6


def test_settings_with_one_schedule_are_one_variant():
    _, variants = expand("linux tcp_synack_retries=2 tcp_orphan_retries=0,8 rto_min=200ms", "t:1")
    assert len(variants) == 1 and dict(variants[0].params)["tcp_orphan_retries"] == "0 or 8"


BLOCK = """\
Fingerprint Linux, any [family]
Class Linux | Linux | 6.X | general purpose
Source source test
{law}
"""


@pytest.mark.parametrize(
    "law, message",
    [
        ("Law bsd x=1", "Law needs a known law name"),
        ("Law linux tcp_synack_retries=1 tcp_orphan_retries=0", "missing rto_min"),
        (
            "Law linux tcp_synack_retries=1 tcp_orphan_retries=0 rto_min=200ms hz=250",
            "unknown parameter 'hz'",
        ),  # fmt: skip
        (
            "Law linux tcp_synack_retries=5..1 tcp_orphan_retries=0 rto_min=200ms",
            "expected a..b or a comma list",
        ),  # fmt: skip
        ("Law linux tcp_synack_retries=1,1 tcp_orphan_retries=0 rto_min=200ms", "repeated"),
        (
            "Law linux tcp_synack_retries=0..100 tcp_orphan_retries=0..30 rto_min=1,2,3ms",
            "combinations",
        ),  # fmt: skip
        (
            "Law linux tcp_synack_retries=1 tcp_orphan_retries=0 rto_min=200ms\n"
            "CronOS_Syn(nbPkt=1%Time=3%p=1000000)",
            "its law writes the state lines",
        ),  # fmt: skip
    ],
)
def test_bad_law_lines(law, message):
    with pytest.raises(DatabaseError, match=message) as exc:
        parse_db_text(BLOCK.format(law=law), "user.db")
    assert str(exc.value).startswith("user.db:") and "\n" not in str(exc.value)


def test_a_law_block_name_is_unique_across_files(tmp_path):
    f = tmp_path / "dup.db"
    f.write_text(BLOCK.format(law="Law linux tcp_synack_retries=1 tcp_orphan_retries=1 "
                                  "rto_min=20ms").replace("Linux, any [family]",
                                                          "Linux 3.1-6.x, any TCP settings "
                                                          "[family]"))  # fmt: skip
    with pytest.raises(DatabaseError, match="duplicate name"):
        load_db([f])


def _obs(method, gaps, connect=None, try_index=1):
    arrivals = [300]
    for g in gaps:
        arrivals.append(arrivals[-1] + g)
    fp = StateFingerprint(method, round(sum(gaps) / 1e6) + 30, tuple(gaps), connect)
    feats = HDR if method is Method.SYN_RCVD else None
    return Observation("192.0.2.7", 80, method, try_index, Status.OK, fp, features=feats,
                       arrivals_us=tuple(arrivals))  # fmt: skip


def _linux(synack: int, orphan: int, rto_min_ms: int, rtt_us: int = 1000, slow: float = 1.01):
    """Observations of a Linux with these settings (its law, 1 % late)."""
    c = rtt_us
    syn = [round(1e6 * 2**k * slow) for k in range(synack)]
    rto = c + max(2 * c, rto_min_ms * 1000)
    fin = [round(rto * 2**k * slow) for k in range(linux_orphan_count(rto, orphan))]
    return [_obs(Method.SYN_RCVD, syn), _obs(Method.LAST_ACK, fin, c),
            _obs(Method.FIN_WAIT1, fin, c)]  # fmt: skip


@pytest.fixture(scope="module")
def db():
    return load_db()


def test_unlisted_settings_are_named_by_family_with_the_values_read(db):
    res = match(_linux(4, 5, 50), db)
    assert res.verdict is not None and res.verdict.startswith("Linux 3.1-6.x, any TCP settings")
    assert "tcp_synack_retries=4," in res.verdict
    # 7 FIN retransmissions: 5, or 4 had the RTT been a little longer
    assert re.search(r"tcp_orphan_retries=(4 or )?5,", res.verdict), res.verdict
    assert re.search(r"rto_min~(4[5-9]|5[0-5])ms", res.verdict), res.verdict
    assert "not measured" not in res.verdict
    assert res.confidence >= 0.5 and res.verdict_class == "Linux"


def test_what_a_state_cannot_read_is_said(db):
    res = match(_linux(4, 5, 50)[1:], db)  # closing states only
    assert re.search(r"tcp_orphan_retries=(4 or )?5,", res.verdict), res.verdict
    assert res.verdict.endswith("; not measured: tcp_synack_retries")


def test_listed_settings_keep_their_measured_block(db):
    """The lab's own Linux blocks beat the family on their own stacks."""
    for profile in ("linux-synack2", "linux-orphan2"):
        exp = PROFILES[profile].expected_ms
        obs = [_obs(Method.SYN_RCVD, [g * 1000 for g in exp["SYN_RCVD"]]),
               _obs(Method.LAST_ACK, [g * 1000 for g in exp["LAST_ACK"]], 900)]  # fmt: skip
        res = match(obs, db)
        assert res.verdict is not None and f"[lab {profile}]" in res.verdict, res.verdict


def test_another_stack_is_not_named_linux(db):
    """A BSD-like schedule (3 s, 6 s, 12 s SYN-ACKs; 1.5 s FIN RTO) is no Linux setting."""
    obs = [_obs(Method.SYN_RCVD, [3_000_000, 6_000_000, 12_000_000]),
           _obs(Method.LAST_ACK, [1_500_000, 3_000_000, 6_000_000], 1000)]  # fmt: skip
    res = match(obs, db)
    assert res.verdict is None or "[family]" not in res.verdict


def test_a_database_without_any_header_line_still_matches_a_header():
    """A user's file of timings only (no CronOS_Hdr anywhere) against an
    observation that has its SYN-ACK header (it once raised IndexError)."""
    from cronos.analysis.db import Database

    sigs = parse_db_text(
        "Fingerprint X\nClass a | b | c | d\nSource user test\n"
        "CronOS_Syn(nbPkt=2%Time=60%p=3000000%p=6000000)\n"
    )
    res = match([_obs(Method.SYN_RCVD, [3_000_000, 6_000_000])], Database(tuple(sigs)))
    assert res.verdict == "X"


# linux-default (tcp_orphan_retries=0, i.e. 8) behind the 60 +- 40 ms, 3 %
# path with the CPU busy (CI, 2026-12-03): a 400 ms RTT, an RTO of 1.3 s, and
# the probe's 20 s of silence ended each series about when the fifth FIN was
# due. Four FINs are what tcp_orphan_retries=6 sends and all that 7 or 8
# would have sent by then.
CUT_SHORT = [
    (Method.FIN_WAIT1, 414013, (1303377, 2396195, 4878813, 9749755)),
    (Method.LAST_ACK, 398927, (1316492, 2697131, 5390482, 10713847)),
    (Method.FIN_WAIT1, 408483, (1505075, 2788795, 5346078, 10772155)),
]


@pytest.mark.parametrize("after_last_s, values", [(20, {"0", "6", "7", "8"}), (60, {"6"})])
def test_a_count_cut_short_by_the_end_of_listening_reads_every_setting_it_allows(
    db, after_last_s, values
):
    """A retransmission due about when listening ended says nothing about
    the settings that would have sent it: the verdict lists them all; the
    same series heard long enough reads the one setting that stops there."""
    from helpers import law_reads

    obs = []
    for k, (method, connect, gaps) in enumerate(CUT_SHORT):
        fp = StateFingerprint(method, round(sum(gaps) / 1e6) + after_last_s, gaps, connect,
                              listened_us=sum(gaps) + after_last_s * 1_000_000)  # fmt: skip
        obs.append(Observation("192.0.2.7", 80, method, k + 1, Status.OK, fp))
    res = match(obs, db)
    assert res.verdict is not None and res.verdict.startswith("Linux 3.1-6.x, any TCP"), res
    assert set(law_reads(res.verdict, "tcp_orphan_retries")) == values, res.verdict
