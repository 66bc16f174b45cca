"""classify streams: verdicts as targets complete, bounded memory, errors mid-input."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys

from cronos.analysis.classify import TargetEnd, iter_groups, iter_observations
from cronos.cli import main
from cronos.model import Method, Observation, StateFingerprint, Status

FP = StateFingerprint(Method.SYN_RCVD, 60, (2992758, 5997554, 12004378))


def _obs(target: str, k: int = 1) -> Observation:
    return Observation(target, 80, Method.SYN_RCVD, k, Status.OK, FP)


def test_groups_in_first_seen_order_as_they_complete():
    a1, b1, a2 = _obs("a"), _obs("b"), _obs("a", 2)
    # a target's end is known from a scan's verdict record; order stays first-seen
    out = list(iter_groups([a1, b1, TargetEnd("b"), a2, TargetEnd("a")]))
    assert out == [("a", [a1, a2]), ("b", [b1])]
    # with one target open at most, a target further apart is matched in parts
    assert list(iter_groups([a1, b1, a2], open_targets=1)) == [("a", [a1]), ("b", [b1]),
                                                               ("a", [a2])]  # fmt: skip


def test_groups_are_yielded_before_the_input_ends():
    def source():
        yield _obs("a")
        yield TargetEnd("a")
        raise AssertionError("read beyond what the first verdict needs")

    it = iter_groups(source())
    assert next(it)[0] == "a"


def test_reader_is_lazy():
    def lines():
        yield "CronOS_Syn(nbPkt=0%Time=60)"
        yield ""  # the end of the first target's block
        raise AssertionError("read beyond the first target")

    assert next(iter_observations(lines(), "f")).method is Method.SYN_RCVD


def test_a_pipe_gets_each_verdict_when_its_target_ends(tmp_path):
    rec = _obs("198.51.100.7").to_dict()
    proc = subprocess.Popen([sys.executable, "-m", "cronos", "classify", "-", "-oJ", "-"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd=os.getcwd())  # fmt: skip
    try:
        proc.stdin.write(json.dumps(rec) + "\n")
        proc.stdin.write(json.dumps({"type": "verdict", "target": "198.51.100.7"}) + "\n")
        proc.stdin.flush()  # the input stays open: the verdict must come anyway
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "no verdict before the end of the input"
        first = json.loads(proc.stdout.readline())
        assert first["target"] == "198.51.100.7" and first["candidates"]
    finally:
        proc.stdin.close()
        proc.wait(60)
    assert proc.returncode == 0


def test_bad_line_after_good_ones_keeps_what_was_classified(tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("Target a\nCronOS_Syn(nbPkt=2%Time=60%p=2987546%p=6000196)\n\n"
                   "Target b\nCronOS_Syn(nbPkt=9%Time=60)\n")  # fmt: skip
    out = tmp_path / "v.jsonl"
    assert main(["classify", str(src), "-oJ", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and f"{src}:5: " in captured.err
    assert [json.loads(x)["target"] for x in out.read_text().splitlines()] == ["a"]
    assert "Target a" in captured.out


def test_binary_line_mid_file_is_one_line_error(tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_bytes(b"CronOS_Syn(nbPkt=0%Time=60)\n\0\0\n")
    assert main(["classify", str(src)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{src}:2: binary file" in err
