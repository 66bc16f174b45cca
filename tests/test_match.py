"""The matcher: table-driven, no network."""

from __future__ import annotations

import pytest

from cronos.analysis.db import Database, load_db, parse_db_text
from cronos.analysis.match import match
from cronos.model import Method, StateFingerprint, SynAckFeatures, parse_state_line

NT_SYN = "CronOS_Syn(nbPkt=2%Time=30%p=2806316%p=6010910)"
NT_LASTACK = "CronOS_LastAck(nbPkt=3%Time=30%Connect=134571%p=2918695%p=5909092%p=12014080)"
FREEBSD_SYN = "CronOS_Syn(nbPkt=3%Time=60%p=2992758%p=5997554%p=12004378)"
LASTACK_LF = "CronOS_LastAck(nbPkt=3%Time=60%p=1454762%p=4796315%p=9609807)"
FINWAIT_LF = "CronOS_FinWait(nbPkt=3%Time=60%p=971331%p=6002374%p=12020256)"

SMALL = """\
Fingerprint Linux-like
Class Linux | Linux | 6.X | general purpose
Source test
CronOS_Hdr(W=FAF0%TTL=64%DF=Y%ID=%MSS=1460%O=MSTNW%WS=7)
CronOS_Syn(nbPkt=5%Time=60%p=1000000%p=2000000%p=4000000%p=8000000%p=16000000)
CronOS_LastAck(nbPkt=6%Time=60%Connect=1000%p=201000%p=402000%p=804000%p=1608000%p=3216000%p=6432000)

Fingerprint Windows-like
Class Microsoft | Windows | 10 | general purpose
Source test
CronOS_Hdr(W=FFFF%TTL=128%DF=Y%ID=%MSS=1460%O=MNWNNS%WS=8)
CronOS_Syn(nbPkt=2%Time=60%p=3000000%p=6000000)
CronOS_Rst(Syn=12000000)

Fingerprint BSD-like
Class FreeBSD | FreeBSD | 14.X | general purpose
Source test
CronOS_Hdr(W=FFFF%TTL=64%DF=Y%ID=%MSS=1460%O=MNWNNST%WS=6)
CronOS_Syn(nbPkt=3%Time=60%p=3000000%p=6000000%p=12000000)
"""


@pytest.fixture(scope="module")
def db():
    return load_db()


@pytest.fixture(scope="module")
def small():
    return Database(tuple(parse_db_text(SMALL, "small.db")))


def fps(*lines):
    return [parse_state_line(x) for x in lines]


def test_talk_windows_nt_ranks_first(db):
    r = match(fps(NT_SYN, NT_LASTACK), db)
    assert r.verdict is not None
    assert r.candidates[0].name.startswith("Windows NT")
    assert r.candidates[0].tally == "2success/2tests"
    assert r.candidates[0].where.endswith("talk.db:13")
    assert r.verdict_class == "Windows"


def test_talk_freebsd_gaps_put_the_four_guesses_on_top(db):
    # the talk's guesses, and Hershel's FreeBSD 5.x-8.0 (50 samples each,
    # within 4 ms of the talk's line): all of them fit, none stands out
    r = match(fps(FREEBSD_SYN, FREEBSD_SYN), db)  # two tries, as in the talk
    top = " or ".join(c.name for c in r.candidates[:5])
    guesses = ["FreeBSD 4.5", "FreeBSD 4.7-RELEASE - 4.8-RELEASE", "Windows 98 Second Edition"]
    guesses.append("Windows NT 4 Workstation SP2/SP3/SP4/SP5")
    for guess in guesses:
        assert guess in top
    assert all(c.tally == "2success/2tests" for c in r.candidates[:5])
    assert all("FreeBSD" in c.name or "Windows" in c.name for c in r.candidates[:5])
    assert r.confidence < 0.5  # ambiguity shows in the confidence


def test_talk_lf_run_gives_the_windows_family(db):
    r = match(fps(LASTACK_LF, FINWAIT_LF), db)
    assert {c.name for c in r.candidates[:2]} >= {
        "Win2k Pro/Srv/AdvSrv Base/SP1/SP2/SP3 or Windows 95 B or Windows Me or "
        "Windows NT 4 Workstation Base/SP1 or WinXP Home/Pro Base/SP1a",
    }
    assert r.ties == 2 and r.verdict_class == "Windows"


SYN = Method.SYN_RCVD


@pytest.mark.parametrize(
    "gaps, rst, expect, lost",
    [
        ((1000000, 2000000, 4000000, 8000000, 16000000), None, "Linux-like", 0),
        ((1000000, 6000000, 8000000, 16000000), None, "Linux-like", 1),  # 3rd lost
        ((3000000, 12000000, 16000000), None, "Linux-like", 2),  # 1st SYN-ACK and 3rd lost
        ((1010000, 1990000, 4020000), None, "Linux-like", 0),  # window cut at 10 s
        ((3000000, 6000000), 12000000, "Windows-like", 0),
        ((3000000, 6000000), None, "Windows-like", 0),  # RST filtered
        ((3000000, 6000000, 12000000), None, "BSD-like", 0),
        ((9000000,), None, "Windows-like", 1),  # 2nd SYN-ACK lost
    ],
)
def test_timing_table(small, gaps, rst, expect, lost):
    time_s = 10 if gaps == (1010000, 1990000, 4020000) else 60
    r = match([StateFingerprint(SYN, time_s, gaps, None, rst)], small)
    best = r.candidates[0]
    assert best.name == expect, (best.name, best.how)
    assert best.how[0].lost == lost
    assert best.how[0].unexplained == 0


def test_lost_packet_is_not_another_os(small):
    r = match([StateFingerprint(SYN, 60, (1000000, 6000000, 8000000, 16000000))], small)
    assert r.verdict == "Linux-like"
    assert r.candidates[0].how[0].positions == (1, 3, 4, 5)


def test_closing_state_rescaled_to_rtt(small):
    rtt = 150_000  # Linux: first FIN retransmission after RTT + max(200 ms, 2 RTT)
    rto = rtt + max(200_000, 2 * rtt)
    fp = StateFingerprint(Method.LAST_ACK, 60, tuple(rto << k for k in range(6)), rtt)
    r = match([fp], small)
    assert r.verdict == "Linux-like"
    assert r.candidates[0].how[0].scale == pytest.approx(rto / 201000, rel=1e-3)


@pytest.mark.parametrize(
    "feats, expect_note",
    [
        (SynAckFeatures(0xFAF0, 52, True, None, 1460, "MSTNW", 7), ""),  # 12 hops
        (SynAckFeatures(0x7210, 52, True, None, 1360, "MSTNW", 7), "W"),  # rewritten
        (SynAckFeatures(0xFAF0, 60, True, None, 1460, "MSNW", 7), "stripped"),
    ],
)
def test_header_changes_weigh_less_than_timing(small, feats, expect_note):
    fp = StateFingerprint(SYN, 60, (1000000, 2000000, 4000000, 8000000, 16000000))
    r = match([(fp, feats)], small)
    assert r.candidates[0].name == "Linux-like"
    assert expect_note in r.candidates[0].how[0].header


def test_ttl_above_initial_is_penalised(small):
    fp = StateFingerprint(SYN, 60, (3000000, 6000000))
    low = match([(fp, SynAckFeatures(0xFFFF, 120, True, None, 1460, "MNWNNS", 8))], small)
    high = match([(fp, SynAckFeatures(0xFFFF, 200, True, None, 1460, "MNWNNS", 8))], small)
    assert high.candidates[0].score < low.candidates[0].score
    assert "TTL" in high.candidates[0].how[0].header


def test_novel_schedule_is_no_match(db, small):
    fp = StateFingerprint(SYN, 60, (1700000, 3100000, 5300000))
    for d in (db, small):
        r = match([fp], d)
        assert r.verdict is None and r.no_match and r.confidence == 0.0
        assert "CronOS_Syn(nbPkt=3%Time=60%p=1700000%p=3100000%p=5300000)" in r.observation_block
        assert r.candidates  # the closest ones are still listed


def test_observation_block_is_pasteable(small):
    fp = StateFingerprint(SYN, 60, (1700000, 3100000), None, 5000000)
    feats = SynAckFeatures(0x1234, 50, False, None, 1400, "M", None)
    block = match([(fp, feats)], small).observation_block
    (sig,) = parse_db_text(block.replace("UNKNOWN (edit me)", "New"), "paste.db")
    assert sig.states[SYN].rst_us == 5000000 and sig.features == feats


def test_identical_signatures_tie(small):
    twin = SMALL.split("\n\n")[2].replace("BSD-like", "BSD twin").replace("MNWNNST", "MNWNNS")
    d = Database(tuple(parse_db_text(SMALL + "\n" + twin, "t.db")))
    r = match(fps(FREEBSD_SYN), d)
    assert r.ties == 2 and "BSD-like" in r.verdict and "BSD twin" in r.verdict
    assert r.candidates[0].confidence == pytest.approx(r.candidates[1].confidence)


def test_tries_combine_and_tally(small):
    good = StateFingerprint(SYN, 60, (3000000, 6000000, 12000000))
    odd = StateFingerprint(SYN, 60, (1500000, 2500000))
    r = match([good, good, odd], small)
    assert r.candidates[0].name == "BSD-like"
    assert r.candidates[0].tally == "2success/3tests"


TTL_DB = """
Fingerprint Documented TTL 128 (3 s, 6 s)
Class Microsoft | Windows | XP | general purpose
Source test hand-written
Ttl 128
CronOS_Syn(nbPkt=2%Time=60%p=3000000%p=6000000)

Fingerprint Documented TTL 64 (3 s, 6 s, 12 s)
Class Linux | Linux | 2.6.X | general purpose
Source test hand-written
Ttl 64
CronOS_Syn(nbPkt=3%Time=60%p=3000000%p=6000000%p=12000000)
"""


def test_a_documented_initial_ttl_tells_equal_timings_apart():
    """Two blocks without a header line, one timing series cut short by the
    window alike: the documented initial TTL (``Ttl``) decides, the other
    header fields counting as unknown for both."""
    db = Database(tuple(parse_db_text(TTL_DB, "ttl.db")))
    fp = StateFingerprint(Method.SYN_RCVD, 10, (3_000_000, 6_000_000))
    for ttl, want in ((116, "TTL 128"), (54, "TTL 64"), (64, "TTL 64")):
        feats = SynAckFeatures(0x2000, ttl, True, 0, 1460, "MNWST", 8)
        res = match([(fp, feats)], db)
        assert want in res.candidates[0].name, (ttl, res.candidates[0].name)
        assert res.candidates[0].how[0].header == "only the initial TTL in signature"
    with pytest.raises(Exception, match="initial TTL is 32, 64, 128 or 255"):
        parse_db_text(TTL_DB.replace("Ttl 64", "Ttl 60"), "ttl.db")
    both = TTL_DB.replace("Ttl 64", "Ttl 64\nCronOS_Hdr(W=FAF0%TTL=64%DF=Y%ID=%MSS=1460%O=M%WS=)")
    with pytest.raises(Exception, match="both CronOS_Hdr and Ttl"):
        parse_db_text(both, "ttl.db")


FALLBACK_DB = """
Fingerprint Not Linux (LAST_ACK 6, 12, 24, 48 s)
Class Other | Other |  | general purpose
Source test hand-written
CronOS_LastAck(nbPkt=4%Time=200%Connect=10000%p=6000000%p=12000000%p=24000000%p=48000000)

Fingerprint Linux-like (LAST_ACK 210 ms doubling)
Class Linux | Linux |  | general purpose
Source test hand-written
CronOS_LastAck(nbPkt=4%Time=60%Connect=10000%p=210000%p=420000%p=840000%p=1680000)
"""


def test_the_3s_fallback_after_a_retried_handshake_is_linux_only():
    """Linux without an RTT sample (a retransmitted handshake) starts its FINs
    at TCP_TIMEOUT_FALLBACK (3 s) doubling; another stack's block says itself
    what it does. A series 2.5, 5, 10, 20 s (lwIP's FINs) is that fallback
    stretched: a Linux block may explain it so, a non-Linux block may not."""
    db = Database(tuple(parse_db_text(FALLBACK_DB, "fb.db")))
    fp = StateFingerprint(Method.LAST_ACK, 60, (2_500_000, 5_000_000, 10_000_000, 20_000_000),
                          1_000)  # fmt: skip
    res = match([fp], db)
    how = {c.signature.family: c.how[0] for c in res.candidates}
    assert not how["Other"].success, how["Other"]
    assert how["Linux"].success, how["Linux"]
