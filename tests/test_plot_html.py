"""Timeline plots and the self-contained HTML report."""

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from cronos.analysis.classify import classify
from cronos.analysis.db import Database, parse_db_text
from cronos.analysis.match import match
from cronos.model import Method, Observation, StateFingerprint, Status
from cronos.render.html_report import GLOBAL, HostSection, render_html, write_evidence, write_html
from cronos.render.plot import expected_for, plot_timeline, render_timeline

DB_TEXT = """
Fingerprint Test Linux
Class Linux | Linux | 5.X | general purpose
Source test
CronOS_Syn(nbPkt=4%Time=60%p=1000000%p=2000000%p=4000000%p=8000000)
CronOS_LastAck(nbPkt=3%Time=60%p=200000%p=400000%p=800000)

Fingerprint Test Windows
Class Microsoft | Windows | 10 | general purpose
Source test
CronOS_Syn(nbPkt=2%Time=60%p=3000000%p=6000000)
CronOS_Rst(Syn=12000000)
"""


@pytest.fixture(scope="module")
def db():
    return Database(tuple(parse_db_text(DB_TEXT, "test.db")), ("test.db",))


def _obs(target, method, gaps, try_index=1, status=Status.OK, rst=None, note="", time_s=30):
    fp = StateFingerprint(method, time_s, tuple(gaps), 1200 if method is not Method.SYN_RCVD
                          else None, rst)  # fmt: skip
    arr, t = [50_000], 50_000
    for g in gaps:
        t += g
        arr.append(t)
    return Observation(target, 80, method, try_index, status, fp, arrivals_us=tuple(arr),
                       started_at=1795779084.5, note=note)  # fmt: skip


@pytest.fixture
def observations():
    return [
        # the 2nd SYN-ACK retransmission (at 3 s) was lost: 1 s, then 6 s later
        _obs("10.0.0.2", Method.SYN_RCVD, [1_000_000, 6_000_000]),
        _obs("10.0.0.2", Method.LAST_ACK, [200_000, 400_000, 800_000]),
        _obs("10.0.0.3", Method.SYN_RCVD, [3_000_000, 6_000_000], rst=12_000_000),
        _obs("10.0.0.4", Method.SYN_RCVD, [], status=Status.FILTERED),
    ]


def _results(observations, db):
    groups = {}
    for o in observations:
        groups.setdefault(o.target, []).append(o)
    return {t: match(obs, db) for t, obs in groups.items()}


def test_expected_schedule_marks_the_lost_packet(observations, db):
    res = _results(observations, db)
    best = res["10.0.0.2"].candidates[0]
    assert best.name == "Test Linux"
    e = expected_for(best, observations[0], 0)
    assert e.times_s[:4] == pytest.approx((0.0, 1.0, 3.0, 7.0), abs=0.05)
    assert e.matched[:4] == (True, True, False, True)
    assert e.lost[2] and not e.lost[1]  # the one at 3 s is crossed


def test_plot_png_and_svg(observations, db, tmp_path):
    res = _results(observations, db)
    png = plot_timeline(observations, res, tmp_path / "t.png")
    data = Path(png).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    svg = (tmp_path / "t.svg").as_posix()
    plot_timeline(observations, res, svg, top=2)
    text = Path(svg).read_text()
    assert "<svg" in text and "Test Linux" in text and "10.0.0.2:80 SYN_RCVD #1" in text
    # time is an input: the same observations draw the same picture
    assert render_timeline(observations, res) == render_timeline(observations, res)


def test_plot_without_results_and_bad_extension(observations, tmp_path):
    plot_timeline(observations, None, tmp_path / "o.png")
    from cronos.errors import UsageError

    with pytest.raises(UsageError, match="plot format"):
        plot_timeline(observations, None, tmp_path / "o.gif")
    with pytest.raises(UsageError, match="nothing to plot"):
        plot_timeline([], None, tmp_path / "o.png")


@dataclass(frozen=True)
class _Arch:  # what cronos.analysis.architecture.ArchitectureVerdict looks like
    kind: str
    summary: str
    evidence: tuple


def _report(observations, db, tmp_path):
    res = _results(observations, db)
    hosts = []
    for t in ("10.0.0.2", "10.0.0.3", "10.0.0.4"):
        obs = tuple(o for o in observations if o.target == t)
        arch = _Arch("syn-proxy", "SYN proxy in front", ("SYN_RCVD says <b>X</b>",)) if (
            t == "10.0.0.3") else None  # fmt: skip
        hosts.append(HostSection(t, obs, res[t] if t != "10.0.0.4" else None, arch))
    path = tmp_path / "r.html"
    write_html(path, hosts, {GLOBAL: render_timeline(observations, res)})
    return path


def test_html_is_self_contained_and_escaped(observations, db, tmp_path):
    observations.append(_obs("10.0.0.2", Method.LAST_ACK, [1], try_index=2, note="<script>x"))
    text = _report(observations, db, tmp_path).read_text()
    assert "<script" not in text.lower()
    assert not re.search(r"(src|href)=\"(https?:)?//", text)
    assert not re.search(r"url\(|@import", text)
    assert "data:image/png;base64," in text
    assert "&lt;script&gt;x" in text and "SYN_RCVD says &lt;b&gt;X&lt;/b&gt;" in text
    assert "Remote OS guesses" in text and "Test Linux" in text
    assert "syn-proxy" in text
    pre = re.findall(r"<pre>(.*?)</pre>", text, re.S)
    assert any("CronOS_Syn(nbPkt=2%Time=30%p=1000000%p=6000000)" in p for p in pre)
    assert any("CronOS_Rst(Syn=12000000)" in p for p in pre)
    assert "Not matched against a database" in text  # the host without a result


def test_html_inline_svg_and_no_match_block(observations, tmp_path):
    odd = [_obs("10.9.9.9", Method.SYN_RCVD, [123_000, 77_000, 5_000])]
    db = Database(tuple(parse_db_text(DB_TEXT, "t.db")))
    r = match(odd, db)
    svg = render_timeline(odd, {"10.9.9.9": r}, fmt="svg")
    text = render_html([HostSection("10.9.9.9", tuple(odd), r)], {"10.9.9.9": svg})
    assert '<div class="plot"><svg' in text and "<?xml" not in text
    if r.verdict is None:
        assert "Fingerprint UNKNOWN" in text


def test_write_evidence_plot_and_html(observations, db, tmp_path, monkeypatch):
    """The renderers take the verdicts: nothing is matched again."""
    import cronos.analysis.architecture
    import cronos.analysis.match
    import cronos.analysis.verdict

    verdicts = classify(observations, db, architecture=True)

    def no_matching(*_a, **_k):
        raise AssertionError("a renderer matched again")

    for mod in (cronos.analysis.match, cronos.analysis.verdict, cronos.analysis.architecture):
        monkeypatch.setattr(mod, "match", no_matching)
    monkeypatch.setattr(cronos.analysis.match, "score", no_matching)
    write_evidence(verdicts, html_path=str(tmp_path / "e.html"), plot_path=str(tmp_path / "e.svg"))
    assert (tmp_path / "e.svg").read_text().count("<svg") == 1
    html = (tmp_path / "e.html").read_text()
    assert "Verdict" in html and "Architecture" in html


@pytest.mark.skipif(not shutil.which("chromium"), reason="chromium not installed (apt chromium)")
def test_html_renders_in_headless_chromium(observations, db, tmp_path):
    html = _report(observations, db, tmp_path)
    shot = tmp_path / "shot.png"
    r = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tempfile.mkdtemp()}", f"--screenshot={shot}",
         "--window-size=1200,1600", f"file://{html}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shot.exists(), r.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000  # not a blank page
    from PIL import Image  # matplotlib depends on Pillow

    img = Image.open(shot).convert("L")
    assert img.size == (1200, 1600)
    colours = len(img.getcolors(maxcolors=256 * 256) or [])
    assert colours > 20  # text, tables, the plot: not a uniform page
