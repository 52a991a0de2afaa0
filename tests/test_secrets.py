"""No secret is ever printed, and an unreachable service is one line.

Distinct secrets are planted in every secret-bearing setting (store, broker and result-backend passwords, Label
Studio's basic-auth password, API key, webhook secret), several holding `@`, `:` or `%`, and every command that
needs a service runs as a real subprocess against closed ports: none may print a secret in any spelling (raw,
percent-encoded either case, decoded, or cut in pieces by a parser), write one to a file, or show a traceback,
and each that needed the service exits non-zero naming it by its masked URL.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from io import StringIO
from pathlib import Path
from urllib.parse import quote, quote_plus, unquote

import pytest

from tests.labelstudio_server import free_port

DB_PASSWORD = "dbPwAlpha@dbPwBeta:dbPw%Gamma"
BROKER_PASSWORD = "brokerPw@Delta"  # unencoded in the URL: redis/kombu split the userinfo at the last @
BACKEND_PASSWORD = "backendPw:Eps%ilon"  # percent-encoded in the URL
LS_PASSWORD = "lsPwZeta:Theta"  # unencoded `:` in the basic-auth part
API_KEY = "apiKeyIota%40Kappa"
WEBHOOK_SECRET = "hookLambda@Mu:Nu"
URL_PASSWORDS = [DB_PASSWORD, BROKER_PASSWORD, BACKEND_PASSWORD, LS_PASSWORD]
TIMEOUT_S = 90


def _sqlalchemy_quoted(text: str) -> str:
    return re.sub(r"[:@/]", lambda m: "%%%X" % ord(m.group(0)), text)


def spellings(secret: str, url_password: bool) -> set[str]:
    """Every way a secret may show up: as written, decoded, percent-encoded (upper- or lower-case hex, by urllib or
    by SQLAlchemy), and for URL passwords the long pieces a parser that stops at `@`, `:` or `/` leaves over."""
    forms = {secret, unquote(secret), quote(secret, safe=""), quote_plus(secret), _sqlalchemy_quoted(secret)}
    forms |= {re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), form) for form in forms}
    if url_password:
        forms |= {piece for piece in re.split(r"[@:/?#]", secret) if len(piece) >= 4}
    return forms


FORBIDDEN = sorted(set().union(*(spellings(s, True) for s in URL_PASSWORDS),
                               *(spellings(s, False) for s in (API_KEY, WEBHOOK_SECRET))))


def leaks(text: str) -> list[str]:
    return [form for form in FORBIDDEN if form in text]


@dataclass
class Services:
    """The planted environment and the masked URLs that error lines must name."""
    env: dict[str, str]
    store: str
    broker: str
    label_studio: str


def plant(tmp_path: Path, store_url: str | None = None, encode_db_password: bool = True) -> Services:
    db, broker, backend, ls = (free_port() for _ in range(4))
    password = quote(DB_PASSWORD, safe="") if encode_db_password else DB_PASSWORD
    urls = {
        "GEOCURATE_DATABASE_URL": store_url or f"postgresql+psycopg://geo:{password}@127.0.0.1:{db}/geo",
        "GEOCURATE_BROKER_URL": f"redis://:{BROKER_PASSWORD}@127.0.0.1:{broker}/0",
        "GEOCURATE_RESULT_BACKEND": f"redis://backend:{quote(BACKEND_PASSWORD, safe='')}@127.0.0.1:{backend}/1",
        "GEOCURATE_LABEL_STUDIO_URL": f"http://ls-user:{LS_PASSWORD}@127.0.0.1:{ls}",
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEOCURATE_") or k == "GEOCURATE_TEST_PG"}
    env.pop("GEOCURATE_DEBUG", None)
    env.update(urls)
    env.update({
        "GEOCURATE_LABEL_STUDIO_API_KEY": API_KEY,
        "GEOCURATE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "GEOCURATE_WEBHOOK_URL": f"http://127.0.0.1:{free_port()}/webhook",
        "GEOCURATE_DATA_DIR": str(tmp_path / "data"),
        "GEOCURATE_EXPORT_DIR": str(tmp_path / "exports"),
        "GEOCURATE_ADAPTERS_DIR": str(tmp_path / "adapters"),
        "GEOCURATE_DEMO_MODELS": "true",
        "GEOCURATE_TASK_MAX_RETRIES": "1",  # one retry: its log line must be scrubbed too
        "GEOCURATE_RETRY_BACKOFF_MAX": "0",
    })
    return Services(
        env=env,
        store=f"postgresql+psycopg://geo:***@127.0.0.1:{db}/geo",
        broker=f"redis://:***@127.0.0.1:{broker}/0",
        label_studio=f"http://ls-user:***@127.0.0.1:{ls}",
    )


def inputs(tmp_path: Path) -> None:
    """What the commands are pointed at: an image folder, a clue file, an export folder."""
    from PIL import Image

    (tmp_path / "images" / "a").mkdir(parents=True)
    Image.new("RGB", (64, 48), (90, 120, 30)).save(tmp_path / "images" / "a" / "street.png")
    (tmp_path / "clues.jsonl").write_text('{"text": "A yellow bollard in Krakow", "country": "PL"}\n')
    (tmp_path / "exports" / "ex1").mkdir(parents=True)


def run_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([sys.executable, "-m", "geocurate.cli", *args], capture_output=True, text=True,
                              env=env, cwd=cwd, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        err = (exc.stderr or b"").decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        assert not leaks(out + err), f"hung and printed secrets {leaks(out + err)}"
        pytest.fail(f"geocurate {' '.join(args)} hung for {TIMEOUT_S}s; stderr ends: {err[-500:]!r}", pytrace=False)


def files_with_secrets(root: Path) -> dict[str, list[str]]:
    found = {}
    for path in root.rglob("*"):
        if path.is_file():
            text = path.read_bytes().decode("utf-8", errors="replace")
            if leaks(text):
                found[str(path.relative_to(root))] = leaks(text)
    return found


def assert_one_clean_failure(result: subprocess.CompletedProcess, names: str, root: Path) -> None:
    output = result.stdout + result.stderr
    assert not leaks(output), f"printed {leaks(output)}:\n{output}"
    assert not files_with_secrets(root), files_with_secrets(root)
    assert "Traceback" not in output, output
    assert result.returncode != 0, output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), result.stderr
    assert names in lines[-1], f"expected {names!r} in {lines[-1]!r}"
    # nothing else but the retry warnings of the Label Studio client
    assert all(line.startswith("Label Studio ") for line in lines[:-1]), result.stderr


# --- every command against a world where nothing answers ------------------------------------------------------

STORE, BROKER = "store", "broker"
NOTHING_REACHABLE = [
    (["status"], STORE),
    (["db", "upgrade"], STORE),
    (["run", "images"], STORE),
    (["score"], STORE),
    (["rescore", "--from", "v1"], STORE),
    (["ingest", "images", "images"], STORE),
    (["ingest", "clues", "clues.jsonl"], STORE),
    (["clues", "pair"], STORE),
    (["review", "route"], STORE),
    (["review", "list"], STORE),
    (["review", "push"], STORE),
    (["review", "pull"], STORE),
    (["review", "stats"], STORE),
    (["review", "decide", "1", "locatable"], STORE),
    (["export", "ex2"], STORE),
    (["thresholds", "report"], STORE),
    (["thresholds", "fit-weights", "--out", "w.json"], STORE),
    (["train", "ex1", "--stage", "reasoning"], STORE),
    (["eval", "ex1"], STORE),
    (["quarantine", "list"], STORE),
    (["runs", "list"], STORE),
    (["versions", "list"], STORE),
    (["predict", "images/a/street.png", "--export", "ex1"], STORE),
    (["demo", "--images", "4", "--clues", "4"], STORE),
    (["worker"], BROKER),
    (["beat"], BROKER),
    (["reconcile"], BROKER),
]
# Commands that need no service (or serve rather than fail): nothing to check here beyond `config show`.
NEEDS_NO_SERVICE = {("score-image",), ("sample",), ("config", "show"), ("config", "docs"), ("clues", "assess"),
                    ("review", "webhook"), ("quarantine", "reasons")}


@lru_cache(maxsize=1)
def cli_commands() -> frozenset[tuple[str, ...]]:
    import typer.main

    from geocurate.cli import app

    def walk(command, prefix: tuple[str, ...]):
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                yield from walk(sub, prefix + (name,))
        else:
            yield prefix

    return frozenset(walk(typer.main.get_command(app), ()))


def command_of(args: list[str]) -> tuple[str, ...] | None:
    commands = cli_commands()
    return next((tuple(args[:n]) for n in (2, 1) if tuple(args[:n]) in commands), None)


def test_every_command_is_checked_against_unreachable_services():
    """A new command must be added to one of the two lists: the check cannot silently miss it."""
    checked = {command_of(args) for args, _ in NOTHING_REACHABLE}
    missing = cli_commands() - checked - NEEDS_NO_SERVICE
    assert not missing, f"add these to NOTHING_REACHABLE or NEEDS_NO_SERVICE: {sorted(missing)}"


@pytest.mark.parametrize("args, service", NOTHING_REACHABLE, ids=[" ".join(a) for a, _ in NOTHING_REACHABLE])
def test_unreachable_services_give_one_masked_line(tmp_path, args, service):
    if command_of(args) is None:
        pytest.skip(f"no `geocurate {' '.join(args[:2])}` command")
    services = plant(tmp_path)
    inputs(tmp_path)
    result = run_cli(args, services.env, tmp_path)
    expected = {STORE: f"cannot reach the store at {services.store}",
                BROKER: f"cannot reach the broker at {services.broker}"}[service]
    assert_one_clean_failure(result, expected, tmp_path)
    assert result.returncode == 2


def test_config_show_masks_every_secret(tmp_path):
    services = plant(tmp_path)
    result = run_cli(["config", "show"], services.env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert not leaks(result.stdout + result.stderr), leaks(result.stdout + result.stderr)
    shown = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert shown["GEOCURATE_DATABASE_URL"] == services.store
    assert shown["GEOCURATE_BROKER_URL"] == services.broker
    assert shown["GEOCURATE_RESULT_BACKEND"].startswith("redis://backend:***@127.0.0.1:")
    assert shown["GEOCURATE_LABEL_STUDIO_URL"] == services.label_studio
    assert set(shown["GEOCURATE_LABEL_STUDIO_API_KEY"]) == {"*"} and set(shown["GEOCURATE_WEBHOOK_SECRET"]) == {"*"}


# --- the store answers; broker and Label Studio do not -----------------------------------------------------------

@pytest.fixture
def reachable_store(tmp_path) -> str:
    """A migrated SQLite store with one queued review item, so push has something to send."""
    from db.engine import dispose_all, session_scope
    from db.migrate import upgrade
    from db.review import add_review_tasks

    url = f"sqlite:///{tmp_path / 'store.db'}"
    upgrade(url)
    with session_scope(url) as session:
        add_review_tasks(session, [{"item_kind": "clue", "item_id": 1, "priority": 0.5, "reason": "review"}])
    dispose_all()
    return url


LS = "label_studio"
STORE_ONLY_REACHABLE = [
    (["review", "push"], LS),
    (["review", "pull"], LS),
    (["run", "images"], BROKER),
    (["export", "ex2", "--train"], BROKER),
    (["worker"], BROKER),
    (["beat"], BROKER),
    (["reconcile"], BROKER),
]


@pytest.mark.parametrize("args, service", STORE_ONLY_REACHABLE, ids=[" ".join(a) for a, _ in STORE_ONLY_REACHABLE])
def test_unreachable_broker_and_label_studio_give_one_masked_line(tmp_path, reachable_store, args, service):
    if command_of(args) is None:
        pytest.skip(f"no `geocurate {' '.join(args[:2])}` command")
    services = plant(tmp_path, store_url=reachable_store)
    inputs(tmp_path)
    result = run_cli(args, services.env, tmp_path)
    expected = {LS: f"cannot reach Label Studio at {services.label_studio}",
                BROKER: f"cannot reach the broker at {services.broker}"}[service]
    assert_one_clean_failure(result, expected, tmp_path)


# --- a password SQLAlchemy cannot parse ----------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["status"], ["db", "upgrade"], ["review", "list"], ["export", "ex2"]],
                         ids=lambda a: " ".join(a))
def test_an_unencoded_database_password_is_one_line_without_any_piece_of_it(tmp_path, args):
    services = plant(tmp_path, encode_db_password=False)
    result = run_cli(args, services.env, tmp_path)
    assert_one_clean_failure(result, f"invalid database URL {services.store}: percent-encode", tmp_path)


def test_debug_shows_the_traceback_scrubbed(tmp_path):
    services = plant(tmp_path, encode_db_password=False)
    result = run_cli(["status"], services.env | {"GEOCURATE_DEBUG": "1"}, tmp_path)
    assert "Traceback" in result.stderr and result.returncode == 2
    assert not leaks(result.stdout + result.stderr), leaks(result.stderr)


def test_the_webhook_receivers_log_is_scrubbed_and_still_formatted(tmp_path):
    """`geocurate review webhook`: a pull that fails on the unreachable Label Studio is logged in one line naming it
    masked, and uvicorn's access log (whose formatter unpacks the record's arguments) still works when a request
    carries a secret."""
    import httpx

    services = plant(tmp_path)
    env = services.env | {"GEOCURATE_DATABASE_URL": f"sqlite:///{tmp_path / 'store.db'}"}
    del env["GEOCURATE_BROKER_URL"], env["GEOCURATE_RESULT_BACKEND"]  # embedded: the pull runs in the receiver
    port, log = free_port(), tmp_path / "webhook.log"
    with log.open("w") as sink:
        server = subprocess.Popen([sys.executable, "-m", "geocurate.cli", "review", "webhook", "--port", str(port)],
                                  env=env, cwd=tmp_path, stdout=sink, stderr=subprocess.STDOUT)
    try:
        base, auth = f"http://127.0.0.1:{port}", {"X-Geocurate-Secret": WEBHOOK_SECRET}
        assert wait_until(lambda: "Application startup complete" in log.read_text()), log.read_text()
        event = {"action": "ANNOTATION_CREATED", "task": {"id": 3}}
        assert httpx.post(f"{base}/webhook", json=event, headers=auth).status_code == 200
        assert httpx.post(f"{base}/webhook", params={"token": API_KEY}, json={"action": 1}, headers=auth).status_code == 400
        assert wait_until(lambda: "after a webhook failed" in log.read_text()), log.read_text()
    finally:
        server.terminate()
        server.wait(timeout=30)
    output = log.read_text()
    assert f"after a webhook failed (cannot reach Label Studio at {services.label_studio}" in output, output
    assert '"POST /webhook?token=*** HTTP/1.1" 400' in output, output
    assert "Traceback" not in output and "Logging error" not in output, output
    assert not leaks(output), leaks(output)


def wait_until(condition, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_celery_log_handlers_scrub_worker_and_task_records(tmp_path):
    """Celery's own logging setup (as `geocurate worker` runs it) fires the signals that add the filter."""
    services = plant(tmp_path)
    logfile = tmp_path / "worker.log"
    script = (
        "import logging, os\n"
        "from celery.utils.log import get_task_logger\n"
        "from workers.app import app\n"
        f"app.log.setup(loglevel='INFO', logfile={str(logfile)!r})\n"
        "url = os.environ['GEOCURATE_LABEL_STUDIO_URL']\n"
        "logging.getLogger('workers.tasks').error('pull from %s failed with key %s', url,"
        " os.environ['GEOCURATE_LABEL_STUDIO_API_KEY'])\n"
        "try:\n"
        "    raise RuntimeError('cannot connect to ' + os.environ['GEOCURATE_BROKER_URL'])\n"
        "except RuntimeError:\n"
        "    get_task_logger('workers.tasks').exception('task failed')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], env=services.env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    written = logfile.read_text()
    assert "pull from http://ls-user:***@127.0.0.1:" in written and "task failed" in written
    assert "RuntimeError: cannot connect to redis://:***@127.0.0.1:" in written
    assert not leaks(written + result.stdout + result.stderr), leaks(written)


# --- the masking itself ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("url, masked", [
    ("postgresql+psycopg://geo:p@ss:w%rd@db.example:5432/geo", "postgresql+psycopg://geo:***@db.example:5432/geo"),
    ("postgresql+psycopg://geo:p%40ss%3Aw%25rd@db/geo", "postgresql+psycopg://geo:***@db/geo"),
    ("redis://:only-a-password@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
    ("redis://:a@b@c@redis:6379/0", "redis://:***@redis:6379/0"),
    ("http://user:pa/ss?#x@host:8080/path", "http://user:***@host:8080/path"),
    ("amqp://u:pw@[::1]:5672//", "amqp://u:***@[::1]:5672//"),
    ("postgresql://u:pw@h1:5432,h2:5432/db", "postgresql://u:***@h1:5432,h2:5432/db"),
    ("postgresql://u:pw@host/db?contact=ops@example.com", "postgresql://u:***@host/db?contact=ops@example.com"),
    ("redis://:one@h1:1;redis://:two@h2:2", "redis://:***@h1:1;redis://:***@h2:2"),
    ("postgresql+psycopg://postgres@127.0.0.1:5432/db", "postgresql+psycopg://postgres@127.0.0.1:5432/db"),
    ("sqlite:////data/user@host:x/geocurate.db", "sqlite:////data/user@host:x/geocurate.db"),
    ("sqlite:///./geocurate.db", "sqlite:///./geocurate.db"),
    ("postgresql+psycopg:/geo:typo-in-scheme@db/geo", "postgresql+psycopg:/geo:***@db/geo"),
    ("local-dir:/models/clip", "local-dir:/models/clip"),
    ("memory://", "memory://"),
    ("http://label-studio:8080", "http://label-studio:8080"),
])
def test_mask_url_hides_exactly_the_password(url, masked):
    from db.engine import masked as engine_masked
    from geocurate.masking import mask_url

    assert mask_url(url) == masked
    assert engine_masked(url) == masked  # the store's messages use the same rule
    assert mask_url(masked) == masked


def test_scrub_finds_every_spelling_of_every_secret():
    from geocurate.masking import scrub
    from geocurate.settings import Settings

    settings = Settings(
        database_url=f"postgresql+psycopg://geo:{quote(DB_PASSWORD, safe='')}@db/geo",
        broker_url=f"redis://:{BROKER_PASSWORD}@redis/0",
        result_backend=f"redis://backend:{quote(BACKEND_PASSWORD, safe='')}@redis/1",
        label_studio_url=f"http://ls-user:{LS_PASSWORD}@ls:8080",
        label_studio_api_key=API_KEY, webhook_secret=WEBHOOK_SECRET,
    )
    text = " | ".join(FORBIDDEN) + " | invalid literal for int(): 'dbPw%Gamma@db'"
    clean = scrub(text, settings)
    assert not leaks(clean), leaks(clean)
    assert clean.count("***") >= len(FORBIDDEN)
    assert scrub("an ordinary line, nothing secret in it", settings) == "an ordinary line, nothing secret in it"
    assert scrub("see http://someone:else@other.example/x", settings) == "see http://someone:***@other.example/x"


def test_scrub_filter_cleans_message_arguments_and_tracebacks(monkeypatch):
    from geocurate.masking import ScrubFilter, scrub_logs
    from geocurate.settings import reload_settings

    monkeypatch.setenv("GEOCURATE_LABEL_STUDIO_API_KEY", API_KEY)
    monkeypatch.setenv("GEOCURATE_DATABASE_URL", f"postgresql+psycopg://geo:{quote(DB_PASSWORD, safe='')}@db/geo")
    reload_settings()
    stream = StringIO()
    logger = logging.getLogger("tests.secrets")
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    try:
        scrub_logs(logger)
        scrub_logs(logger)
        assert sum(isinstance(f, ScrubFilter) for f in handler.filters) == 1  # installing twice adds one filter
        logger.error("token %s for %s", API_KEY, os.environ["GEOCURATE_DATABASE_URL"])
        try:
            raise ValueError(f"bad password {DB_PASSWORD}")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    written = stream.getvalue()
    assert "token *** for postgresql+psycopg://geo:***@db/geo" in written and "ValueError: bad password" in written
    assert not leaks(written), leaks(written)


def test_an_unexpected_failure_is_one_scrubbed_line_with_a_hint(monkeypatch):
    from geocurate.failures import BUG_EXIT, explain
    from geocurate.settings import reload_settings

    monkeypatch.setenv("GEOCURATE_WEBHOOK_SECRET", WEBHOOK_SECRET)
    monkeypatch.delenv("GEOCURATE_DEBUG", raising=False)
    settings = reload_settings()
    line, status = explain(KeyError(f"no such header {WEBHOOK_SECRET}\nsecond line"), settings)
    assert status == BUG_EXIT and "\n" not in line
    assert line.startswith("unexpected KeyError") and "GEOCURATE_DEBUG" in line
    assert not leaks(line)
