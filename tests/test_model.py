import pytest

from cronos.errors import FingerprintSyntaxError, UsageError
from cronos.model import (
    Method,
    Observation,
    StateFingerprint,
    Status,
    SynAckFeatures,
    fingerprint_lines,
    parse_hdr_line,
    parse_rst_line,
    parse_state_line,
)
from cronos.scan.targets import parse_methods, parse_ports, resolve


@pytest.mark.parametrize(
    "line",
    [
        "CronOS_Syn(nbPkt=2%Time=30%p=2806316%p=6010910)",
        "CronOS_LastAck(nbPkt=3%Time=30%Connect=134571%p=2918695%p=5909092%p=12014080)",
        "CronOS_FinWait(nbPkt=0%Time=30%Connect=136213)",
    ],
)
def test_talk_lines_round_trip(line):
    assert parse_state_line(line).line() == line


@pytest.mark.parametrize(
    "line,msg",
    [
        ("CronOS_Syn(nbPkt=3%Time=30%p=1%p=2)", "nbPkt=3 but 2"),
        ("CronOS_Syn(Time=30)", "required"),
        ("CronOS_Foo(nbPkt=0%Time=1)", "unknown fingerprint line"),
        ("CronOS_Syn(nbPkt=1%Time=30%p=x)", "not an integer"),
        ("CronOS_Syn(nbPkt=0%Time=30%q=1)", "unknown field"),
        ("CronOS_Syn nbPkt=0", "expected NAME"),
    ],
)
def test_bad_lines(line, msg):
    with pytest.raises(FingerprintSyntaxError, match=msg):
        parse_state_line(line)


def test_hdr_and_rst_lines():
    f = SynAckFeatures(window=0xFAF0, ttl=64, df=True, ip_id=0, mss=1460, options="MSTNW", wscale=7)
    assert parse_hdr_line(f.line()) == f
    fps = [
        StateFingerprint(Method.SYN_RCVD, 60, (1, 2), rst_us=5),
        StateFingerprint(Method.LAST_ACK, 60, (3,), connect_us=100),
    ]
    assert fingerprint_lines(fps)[-1] == "CronOS_Rst(Syn=5)"
    assert parse_rst_line("CronOS_Rst(Syn=5%FinWait=7)") == {
        Method.SYN_RCVD: (5,),
        Method.FIN_WAIT1: (7,),
    }


def test_rsts_of_several_tries_are_kept_and_read_back():
    """With --tries 2 each try's RST is its own (the text report printed
    Syn=9000000%Syn=9100000 and the reader kept the last; -oX kept the first)."""
    from cronos.analysis.classify import read_fingerprint_lines

    f = SynAckFeatures(window=0x2000, ttl=128, df=True, ip_id=None, mss=1460, options="MNWST",
                       wscale=8)  # fmt: skip
    fps = [
        StateFingerprint(Method.SYN_RCVD, 30, (3_000_000, 6_000_000), rst_us=9_000_000),
        StateFingerprint(Method.SYN_RCVD, 30, (3_000_000, 6_100_000), rst_us=9_100_000),
        StateFingerprint(Method.LAST_ACK, 30, (300_000,), connect_us=100),
        StateFingerprint(Method.LAST_ACK, 30, (310_000,), connect_us=100, rst_us=5_000_000),
    ]
    lines = fingerprint_lines(fps, f)
    assert lines[0] == f.line()
    assert lines[-1] == "CronOS_Rst(Syn=9000000%Syn=9100000%LastAck=-%LastAck=5000000)"
    back = read_fingerprint_lines("\n".join(lines) + "\n", "t")
    assert [o.fingerprint for o in back] == fps
    assert [o.try_index for o in back] == [1, 2, 1, 2]
    # an older report's single value is every try's, as it was read before
    old = "\n".join([fps[0].line(), fps[1].line(), "CronOS_Rst(Syn=9000000)"]) + "\n"
    assert [o.fingerprint.rst_us for o in read_fingerprint_lines(old, "t")] == [9_000_000] * 2


def test_observation_json_round_trip():
    o = Observation(
        "10.0.0.2",
        80,
        Method.LAST_ACK,
        2,
        Status.OK,
        StateFingerprint(Method.LAST_ACK, 30, (200_000, 400_000), connect_us=100),
        src_port=40000,
        arrivals_us=(1, 2, 3),
    )
    d = o.to_dict()
    assert d["fingerprint"] == "CronOS_LastAck(nbPkt=2%Time=30%Connect=100%p=200000%p=400000)"
    assert Observation.from_dict(d) == o
    assert "input_id" not in d and "verdict_s" not in d and "source" not in d


def test_observation_provenance_is_set_when_made_and_read_back():
    """Where a record came from and how it ended are fields set when it is
    made (no dict changed afterwards), written and read back faithfully."""
    import dataclasses

    o = Observation("10.0.0.2", 80, Method.SYN_RCVD, 1, Status.OK,
                    StateFingerprint(Method.SYN_RCVD, 30, (1_000_000,)), ttl_in=57)  # fmt: skip
    o2 = dataclasses.replace(o, input_id="scan.jsonl:7", verdict_s=2.5, source="passive")
    d = o2.to_dict()
    assert (d["input_id"], d["verdict_s"], d["source"], d["ttl_in"]) == ("scan.jsonl:7", 2.5,
                                                                       "passive", 57)  # fmt: skip
    back = Observation.from_dict(d)
    assert (back.input_id, back.verdict_s, back.source, back.ttl_in) == ("scan.jsonl:7", 2.5,
                                                                         "passive", 57)  # fmt: skip
    assert back == o  # provenance does not change what was measured
    assert not any(isinstance(getattr(o2, f.name), dict) for f in dataclasses.fields(o2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        o2.input_id = "x"


@pytest.mark.parametrize(
    "spec,err",
    [
        ("0", "out of range"),
        ("70000", "out of range"),
        ("", "empty"),
        ("http", "bad port"),
        ("90-80", "range"),
    ],
)
def test_bad_ports(spec, err):
    with pytest.raises(UsageError, match=err):
        parse_ports(spec)


def test_ports_and_methods():
    assert parse_ports("80, 1234,8000-8002") == [80, 1234, 8000, 8001, 8002]
    assert parse_methods("fls") == ["s", "l", "f"]
    with pytest.raises(UsageError):
        parse_methods("x")


def test_targets():
    assert resolve("127.0.0.1") == "127.0.0.1"
    assert resolve("localhost") == "127.0.0.1"
    assert resolve("::1") == "::1" and resolve("FD00:0::1") == "fd00::1"
    for bad, msg in [
        ("no-such-host.invalid", "cannot resolve"),
        ("10.0.0.0/24", "a range is not one host"),
    ]:
        with pytest.raises(UsageError, match=msg):
            resolve(bad)
