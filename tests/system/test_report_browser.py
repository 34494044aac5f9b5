"""The HTML report in a real browser: headless Chromium opens it from disk with the network
off, and must draw every figure without a console message and without running anything a
hostile study name or parameter tries to inject."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select, update

from hpsearch.db.engine import make_engine
from hpsearch.db.models import Study, Trial
from tests.recorded_study import build_recorded_study

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="HEADLESS CHROMIUM IS MISSING: "
                       "the report was NOT checked in a browser (apt-get install chromium)"),
]

IMG = "<img src=x onerror=\"document.title='pwned'\">"
SCRIPT = "<script>document.title='pwned'</script>"
SVG = "<svg onload=\"document.title='pwned'\">"
# Software WebGL (parallel coordinates) logs GPU performance notes; they are not page errors.
BENIGN = ("GL Driver Message",)


def render(page: Path, profile: Path, fragment: str = "") -> tuple[str, list[str]]:
    """The DOM after the page has run (opened at `#fragment` if given), and every console
    message it produced."""
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", f"--user-data-dir={profile}",
        "--enable-unsafe-swiftshader",  # WebGL without a GPU, for the parcoords trace
        "--host-resolver-rules=MAP * ~NOTFOUND",  # network off: no name resolves
        "--proxy-server=127.0.0.1:9",  # and nothing would connect anyway
        "--enable-logging=stderr", "--v=0",  # console messages go to stderr
        "--virtual-time-budget=20000",  # let the plots draw before the DOM is dumped
        "--window-size=1280,1000", "--dump-dom",
        page.as_uri() + (f"#{fragment}" if fragment else ""),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    console = [line for line in result.stderr.splitlines()
               if ":CONSOLE" in line and not any(b in line for b in BENIGN)]
    return result.stdout, console


def figure_blocks(dom: str) -> dict[str, str]:
    """Each figure div's id → its rendered markup (up to the next figure)."""
    parts = re.split(r'(<div id="[^"]+" class="figure[^"]*")', dom)
    out = {}
    for opener, body in zip(parts[1::2], parts[2::2], strict=True):
        key = re.search(r'id="([^"]+)"', opener).group(1)  # type: ignore[union-attr]
        out[key] = opener + body
    return out


NO_WEBGL = re.compile(r"<p[^>]*>WebGL is not supported")  # the box Plotly draws instead


def assert_all_drawn(html_source: str, dom: str) -> None:
    expected = re.findall(r'data-target="([^"]+)"', html_source)
    assert expected, "the page has no figures"
    blocks = figure_blocks(dom)
    assert set(expected) <= set(blocks)
    for key in expected:
        block = blocks[key]
        assert "js-plotly-plot" in block, f"{key}: Plotly did not take the div"
        assert 'class="main-svg"' in block, f"{key}: no SVG"
        assert not NO_WEBGL.search(block), f"{key}: Plotly's 'WebGL is not supported' box"
        if key.endswith("parameters"):
            # parallel coordinates: WebGL canvases and one drawn axis per dimension
            assert "<canvas" in block and block.count('class="axis-title') >= 2, \
                f"{key}: empty parallel coordinates"
        else:
            # a drawn trace has drawn markers, bars (class point) or lines (an empty figure
            # keeps its axes only)
            assert re.search(r'class="(?:point|js-line)[" ]', block), f"{key}: empty plot"
    for key in EXPECTED_FIGURES & set(blocks):
        assert key in expected


@pytest.fixture(scope="module")
def hostile_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Two studies with script-injecting names, one with a hostile parameter name and value."""
    url = f"sqlite:///{tmp_path_factory.mktemp('browser') / 'results.db'}"
    build_recorded_study(url, IMG)
    build_recorded_study(url, SCRIPT, seed=3)
    engine = make_engine(url)
    with engine.begin() as conn:
        study_id = conn.scalar(select(Study.id).where(Study.name == IMG))
        trial = conn.execute(select(Trial.id, Trial.params).where(
            Trial.study_id == study_id, Trial.state == "complete")).first()
        assert trial is not None
        conn.execute(update(Trial).where(Trial.id == trial.id).values(
            params={**trial.params, "optimizer": SCRIPT, SVG: 1.0}))
    engine.dispose()
    return url


# every kind of figure a study section can have (the browser must draw each one)
EXPECTED_FIGURES = {"s1-accuracy", "s1-loss", "s1-best-by-trial", "s1-best-by-time",
                    "s1-parameters", "s1-slices", "s1-importances", "s1-pruned-parameters",
                    "s1-pruned-importances", "s1-pareto"}


def hpsearch(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "hpsearch", *args], check=True, timeout=120,
                   capture_output=True)


def test_report_renders_offline_and_executes_nothing(hostile_db: str, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    # --curves 3: the other trials become a percentile band, as in huge studies
    hpsearch("report", IMG, SCRIPT, "--curves", "3", "-o", str(page), "--db", hostile_db)
    source = page.read_text()
    dom, console = render(page, tmp_path / "profile")
    assert console == []
    assert_all_drawn(source, dom)
    assert re.search(r"<title>(.*?)</title>", dom, re.S).group(1) != "pwned"  # type: ignore
    markup = re.sub(r"<script\b.*?</script>", "", dom, flags=re.S)  # our own scripts
    assert "<img" not in markup and "<svg onload" not in markup and "<script" not in markup
    assert "&lt;img src=x" in markup and "&lt;script&gt;document" in markup  # shown as text


def test_split_pages_render_offline(hostile_db: str, tmp_path: Path) -> None:
    folder = tmp_path / "split"
    hpsearch("report", IMG, "--split", "-o", str(folder), "--db", hostile_db)
    for name in ("s1-parameters.html", "s1-accuracy.html"):
        dom, console = render(folder / name, tmp_path / f"profile-{name}")
        assert console == []
        assert_all_drawn((folder / name).read_text(), dom)
    dom, console = render(folder / "index.html", tmp_path / "profile-index")
    assert console == [] and "<title>pwned</title>" not in dom
    # the tightest policy per page: eval only where a WebGL figure needs it
    assert "'unsafe-eval'" in (folder / "s1-parameters.html").read_text()
    for name in ("s1-accuracy.html", "index.html"):
        assert "'unsafe-eval'" not in (folder / name).read_text()


@pytest.fixture(scope="module")
def multi_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A recorded study made multi-objective (accuracy up, parameters down)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('multi') / 'results.db'}"
    plan = tuple(("pruned", 2) if i % 4 == 1 else ("complete", 4) for i in range(12))
    build_recorded_study(url, "multi", plan=plan)
    engine = make_engine(url)
    with engine.begin() as conn:
        spec = conn.scalar(select(Study.spec).where(Study.name == "multi"))
        conn.execute(update(Study).where(Study.name == "multi").values(
            spec={**spec, "objectives": ["val_acc:max", "params:min"]}))
    engine.dispose()
    return url


def test_every_kind_of_figure_draws_and_the_leaderboard_sorts(multi_db: str,
                                                              tmp_path: Path) -> None:
    """The Pareto front, slices and the views with pruned trials draw; the leaderboard holds
    every trial and sorts by a column (as a click on its header does) when the address asks."""
    page = tmp_path / "report.html"
    hpsearch("report", "multi", "-o", str(page), "--db", multi_db)
    source = page.read_text()
    assert set(re.findall(r'data-target="([^"]+)"', source)) >= EXPECTED_FIGURES
    dom, console = render(page, tmp_path / "profile", "sort=s1-trials:3:asc")
    assert console == []
    assert_all_drawn(source, dom)
    table = re.search(r'<table id="s1-trials".*?</table>', dom, re.S)
    assert table, "no sortable leaderboard"
    header = re.findall(r"<th[^>]*>(.*?)</th>", table.group(0))
    body = table.group(0).split("<tbody>")[1]
    # the objectives come first: the second one, the model's size, is the fourth column
    assert header[3] == "parameters" and len(re.findall(r"<tr>", body)) == 12  # every trial
    counts = [float(v) for v in re.findall(r'<tr><td[^>]*>\d+</td>(?:<td[^>]*>.*?</td>){2}'
                                         r'<td data-v="([0-9.]+)">', body)]
    assert len(counts) == 12 and counts == sorted(counts), counts
    assert 'aria-sort="ascending"' in table.group(0)
    for name in ("s1-pareto", "s1-slices"):  # and --split pages
        folder = tmp_path / "split"
        hpsearch("report", "multi", "--split", "-o", str(folder), "--db", multi_db)
        dom, console = render(folder / f"{name}.html", tmp_path / f"profile-{name}")
        assert console == []
        assert_all_drawn((folder / f"{name}.html").read_text(), dom)
