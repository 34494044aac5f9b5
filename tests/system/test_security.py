"""Security properties, each checked by doing the attack: database passwords never shown or
logged, user strings escaped in HTML, SQL through bound parameters only, checkpoints loaded
without unpickling code, and checkpoint paths that stay inside their folder.

(Hostile names in a real browser: tests/system/test_report_browser.py.)
"""

from __future__ import annotations

import html
import os
import pickle
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from sqlalchemy import inspect, select, update

from hpsearch.cli import main
from hpsearch.db.engine import make_engine
from hpsearch.db.models import Study, Trial
from hpsearch.paths import checkpoint_path, study_slug
from hpsearch.report.html import write_report, write_split
from hpsearch.report.sections import build_report
from hpsearch.trainer.checkpoint import CheckpointError, load_checkpoint
from tests.recorded_study import build_recorded_study
from tests.study_files import write_tiny_study

ROOT = Path(__file__).resolve().parents[2]
INJECTION = "x'; DROP TABLE hps_trial; --"
SCRIPT = "<script>alert('hps')</script>"
IMG = '<img src=x onerror="alert(1)">'
ATTR = '" onmouseover="alert(2)'


def with_password(url: str, password: str) -> str:
    """The fixture's URL (user hps, no password) with a password: trust auth ignores it."""
    return url.replace("://hps@", f"://hps:{password}@", 1)


def cmdlines_with(needle: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in text:
            found.append(text)
    return found


# --- passwords -----------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("form", ["userinfo", "query"])
def test_database_password_never_appears_in_output_logs_or_reports(pg_url: str, tmp_path: Path,
                                                                   form: str) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    if form == "userinfo":
        url, shown = with_password(pg_url, password), "hps:***@"
    else:  # libpq and psycopg take credentials from the query string too
        url = f"{pg_url}?password={password}&sslpassword={password}-ssl&application_name=hp"
        shown = "?application_name=hp&password=***&sslpassword=***"
    study_file = write_tiny_study(tmp_path, "secret-study", n_trials=3, epochs=1)
    logs = tmp_path / "logs"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPSEARCH_")}
    env["HPSEARCH_DB"] = url  # as a user keeps it out of the shell history
    env["COLUMNS"] = "200"
    run = subprocess.Popen(
        [sys.executable, "-m", "hpsearch", "run", str(study_file), "--workers", "2",
         "--threads", "1", "--log-dir", str(logs)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # while it runs, no process (the launcher, its workers) shows the password in `ps`
    leaked: list[str] = []
    while run.poll() is None:
        leaked += cmdlines_with(password)
        time.sleep(0.2)
    out, err = run.communicate()
    assert run.returncode == 0, out + err
    assert leaked == []
    assert shown in out  # the URL is shown, masked

    outputs = [out, err]
    database = pg_url.rsplit("/", 1)[1]
    wrong_db = url.replace(f"/{database}", "/no_such_db")
    for args in (["studies"], ["trials", "secret-study"], ["best", "secret-study"],
                 ["show", "secret-study", "0"], ["db", "current"], ["db", "check"],
                 ["report", "secret-study", "-o", str(tmp_path / "report.html")],
                 ["report", "secret-study", "--split", "-o", str(tmp_path / "split")],
                 # a wrong database name on the same server: the error names the URL
                 ["studies", "--db", wrong_db],
                 ["--debug", "studies", "--db", wrong_db]):
        done = subprocess.run([sys.executable, "-m", "hpsearch", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        outputs += [done.stdout, done.stderr]
    assert "no_such_db" in outputs[-3] and shown in outputs[-3]
    assert "Traceback" in outputs[-1]  # --debug: the whole traceback, masked
    files = [*logs.rglob("*"), tmp_path / "report.html", *(tmp_path / "split").rglob("*")]
    texts = [p.read_text(errors="replace") for p in files if p.is_file()]
    assert len([p for p in files if p.name.endswith(".log")]) == 2
    # the report names the database, masked
    assert any("from postgresql+psycopg://hps" in t and html.escape(shown) in t for t in texts)
    for text in outputs + texts:
        assert password not in text


def test_password_is_masked_in_unreachable_database_errors(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    for url in (f"postgresql+psycopg://u:{password}@127.0.0.1:1/x",
                f"postgresql://u:{password}@127.0.0.1:1/x",
                f"mysql://u:{password}@127.0.0.1:1/x"):
        monkeypatch.setattr(sys, "argv", ["hpsearch", "studies", "--db", url])
        with pytest.raises(SystemExit) as exit_info:
            main()
        out, err = capsys.readouterr()
        assert exit_info.value.code == 2
        assert err.startswith("hpsearch: error:") and err.count("\n") == 1
        assert password not in out + err


# --- HTML escaping --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hostile_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A study named with a script, whose trials carry hostile parameters, reasons, workers."""
    url = f"sqlite:///{tmp_path_factory.mktemp('hostile') / 'results.db'}"
    build_recorded_study(url, SCRIPT)
    build_recorded_study(url, INJECTION, seed=2)
    engine = make_engine(url)
    with engine.begin() as conn:
        study_id = conn.scalar(select(Study.id).where(Study.name == SCRIPT))
        for row in conn.execute(select(Trial.id, Trial.params).where(Trial.study_id == study_id)):
            conn.execute(update(Trial).where(Trial.id == row.id).values(
                params={**row.params, "optimizer": IMG, ATTR: 1.0}, worker=IMG,
                reason=SCRIPT))
    engine.dispose()
    return url


def assert_escaped(page: str) -> None:
    for hostile in (SCRIPT, IMG, ATTR, "<img", "<script>alert", "onerror=\"alert"):
        assert hostile not in page, hostile
    # our own markup only: every <script ...> tag is one of the report's
    tags = re.findall(r"<script\b[^>]*>", page)
    assert all(t in ("<script>", '<script src="plotly.min.js">') or
               re.fullmatch(r'<script type="application/json" class="hps-figure" '
                            r'data-target="[a-z0-9-]+">', t) for t in tags), tags


def test_every_user_string_in_the_html_report_is_escaped(hostile_url: str,
                                                         tmp_path: Path) -> None:
    engine = make_engine(hostile_url)
    with engine.connect() as conn:
        doc = build_report(conn, [SCRIPT, INJECTION], curves=3)
    engine.dispose()
    page = write_report(doc, tmp_path / "report.html").read_text()
    assert_escaped(page)
    assert "&lt;script&gt;alert(&#x27;hps&#x27;)&lt;/script&gt;" in page  # shown as text
    assert "x&#x27;; DROP TABLE hps_trial; --" in page
    index = write_split(doc, tmp_path / "split")
    for file in index.parent.glob("*.html"):
        assert_escaped(file.read_text())


# --- SQL injection ---------------------------------------------------------------------------

def hps(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        *args: str) -> tuple[int, str, str]:
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.setattr(sys, "argv", ["hpsearch", *args])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    out, err = capsys.readouterr()
    return code, out, err


def test_hostile_study_names_are_bound_parameters(hostile_url: str,
                                                  capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    engine = make_engine(hostile_url)
    with engine.connect() as conn:
        trials_before = conn.scalar(select(Trial.id).order_by(Trial.id.desc()).limit(1))
    for args in (["trials", INJECTION, "--format", "json"], ["best", INJECTION],
                 ["show", INJECTION, "0"], ["compare", INJECTION, SCRIPT],
                 ["export", INJECTION, "--what", "epochs", "-o", str(tmp_path / "e.csv")],
                 ["trials", INJECTION, "--sort", "-lr"],
                 ["trials", "x' OR '1'='1"], ["show", "x' OR 1=1; --", "0"]):
        code, out, err = hps(capsys, monkeypatch, *args, "--db", hostile_url)
        if "OR" in args[1]:  # a name that matches nothing matches nothing
            assert code == 2 and "unknown study" in err, err
        else:
            assert code == 0, (args, err)
    code, out, _ = hps(capsys, monkeypatch, "trials", INJECTION, "--format", "json", "--db",
                       hostile_url)
    assert code == 0 and '"number": 0' in out
    assert "hps_trial" in inspect(engine).get_table_names()
    with engine.connect() as conn:
        assert conn.scalar(select(Trial.id).order_by(Trial.id.desc()).limit(1)) == trials_before
    engine.dispose()


def test_no_sql_is_built_from_strings() -> None:
    """Every statement is SQLAlchemy Core/ORM or text() with bound parameters: no f-string,
    %-format or concatenation inside text(), execute() or exec_driver_sql()."""
    built = re.compile(r"""(?<!\w)(?:text|execute|exec_driver_sql)\("""
                       r"""\s*(?:f["']|["'][^"']*["']\s*[%+]|[\w.]+\s*\+)""")
    offenders = []
    for path in sorted((ROOT / "hpsearch").rglob("*.py")):
        source = path.read_text()
        for match in built.finditer(source):
            line = source[source.rfind("\n", 0, match.start()) + 1:source.find("\n", match.end())]
            offenders.append(f"{path.relative_to(ROOT)}: {line.strip()}")
    assert offenders == []


# --- checkpoints -----------------------------------------------------------------------------

class Payload:
    """Unpickling this creates `marker` (a folder): proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("form", ["torch-save", "raw-pickle", "pickle-protocol-2"])
def test_a_malicious_checkpoint_is_refused_not_executed(tmp_path: Path, form: str) -> None:
    marker = tmp_path / "pwned"
    path = checkpoint_path(tmp_path / "checkpoints", "tiny", 0)  # where a retry looks for it
    path.parent.mkdir(parents=True)
    state = {"epoch": 1, "model": {"w": torch.zeros(2)}, "history": Payload(marker)}
    if form == "torch-save":
        torch.save(state, path)
    else:
        path.write_bytes(pickle.dumps(state, protocol=2 if form.endswith("2") else 4))
    # the payload works: plain unpickling runs it
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(Payload(probe)))
    assert probe.is_dir()

    with pytest.raises(CheckpointError, match="is unreadable") as refused:
        load_checkpoint(path)
    assert isinstance(refused.value.__cause__, pickle.UnpicklingError)
    assert not marker.exists()


def test_a_plain_checkpoint_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "ok.pt"
    torch.save({"epoch": 3, "model": {"w": torch.ones(2)}, "history": [{"epoch": 1}]}, path)
    state = load_checkpoint(path)
    assert state["epoch"] == 3 and torch.equal(state["model"]["w"], torch.ones(2))


HOSTILE_NAMES = [
    "../../x", "..", ".", "...", "a/b", "a/../../b", "/etc/passwd", "/", "~", "~root/x",
    "..\\..\\x", "C:\\Windows\\x", "x/..", " ", "", "-rf", ".hidden", "name.pt",
    "\u2024\u2024\u2215x",  # one-dot leaders and a division slash, which look like ../x
    "\uff0e\uff0e\uff0fx",  # full-width ../x
    "\u202eexe.pt",  # right-to-left override
    "na\u0308me", "名前/../../x", "\U0001f4a5" * 50, "a\nb\tc\rd", "x" * 1000,
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_checkpoint_paths_stay_inside_the_checkpoint_directory(tmp_path: Path,
                                                               name: str) -> None:
    root = tmp_path / "ckpt"
    for number in (0, 1, 123456):
        path = checkpoint_path(root, name, number)
        assert path.is_relative_to(root.resolve())
        # exactly root/<one folder>/trial-N.pt, a folder name that is not special
        assert path.parent.parent == root.resolve()
        assert path.name == f"trial-{number}.pt"
        folder = path.parent.name
        assert folder not in ("", ".", "..") and not folder.startswith(".")
        assert re.fullmatch(r"[A-Za-z0-9_.-]{1,160}", folder), folder
        # and the folder can really be created there
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    assert [p for p in tmp_path.rglob("*") if p.is_file()
            and not p.is_relative_to(root)] == []


def test_different_study_names_never_share_a_checkpoint_folder() -> None:
    names = ["my study", "my_study", "my/study", "my.study", "my-study", "über", "_ber",
             "x" * 130, "x" * 131, "a", "A"]
    slugs = [study_slug(n) for n in names]
    assert len(set(slugs)) == len(slugs), dict(zip(names, slugs, strict=True))
    # names that already are safe keep their folder (existing checkpoints stay found)
    for plain in ("tiny", "fashion-mnist-mixer", "quick.v2", "run_3"):
        assert study_slug(plain) == plain
