"""A real Label Studio server for the tests: started once per test session from `.venv-ls` on 127.0.0.1 with a free
port, a temporary data dir, a fixed admin user and token, and local-files serving rooted at a temporary image dir.

A fresh data dir costs Label Studio ~30 s of migrations (minutes on a busy machine); the first session leaves a
copy of its migrated data dir in the temp directory, and later sessions start from a copy of it (~4 s). Each test
starts with no projects and no webhooks (the `label_studio` fixture deletes them), so what a copy carries over is
only the admin user and the schema.

Load with `pytest_plugins = ["tests.labelstudio_server"]`. Under CI=true a server that does not start fails the
tests (tests.conftest.unavailable); locally they skip with the reason and the end of the server's log.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
LS_BIN = ROOT / ".venv-ls" / "bin" / "label-studio"
ADMIN_EMAIL = "admin@geocurate.test"
ADMIN_PASSWORD = "geocurate-test-password"
ADMIN_TOKEN = "geocurate0test0token0000000000000000000"  # legacy tokens are at most 40 characters
START_TIMEOUT_S = float(os.environ.get("GEOCURATE_TEST_LS_START_TIMEOUT", "240"))


@dataclass
class LabelStudioServer:
    url: str
    token: str
    data_dir: Path
    image_root: Path
    process: subprocess.Popen | None = None

    def log_tail(self, lines: int = 15) -> str:
        log = self.data_dir / "label-studio.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else "(no log)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_environment(data_dir: Path, image_root: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("GEOCURATE_", "LABEL_STUDIO_"))}
    env.update({
        "LABEL_STUDIO_USERNAME": ADMIN_EMAIL,
        "LABEL_STUDIO_PASSWORD": ADMIN_PASSWORD,
        "LABEL_STUDIO_USER_TOKEN": ADMIN_TOKEN,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "DJANGO_DB": "sqlite",
        "SSRF_PROTECTION_ENABLED": "false",  # webhooks go to 127.0.0.1
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(image_root),
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
    })
    return env


def migrated_template() -> Path:
    """Where a migrated data dir of this Label Studio install is kept between sessions."""
    key = hashlib.sha256(f"{LS_BIN.resolve()}:{LS_BIN.stat().st_mtime_ns}:{ADMIN_TOKEN}".encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"geocurate-label-studio-{key}"


def save_template(server: LabelStudioServer) -> None:
    template = migrated_template()
    if template.exists() or server.process is None or server.process.returncode not in (0, -signal.SIGTERM):
        return
    staging = template.with_name(template.name + f".{os.getpid()}")
    shutil.copytree(server.data_dir, staging, ignore=shutil.ignore_patterns("label-studio.log", "media", "export"))
    try:
        staging.rename(template)
    except OSError:  # another session saved one first
        shutil.rmtree(staging, ignore_errors=True)


def start_server(base_dir: Path) -> LabelStudioServer:
    """Start Label Studio and wait for /health; raises RuntimeError with the log's tail when it does not come up."""
    if not LS_BIN.exists():
        raise RuntimeError(f"{LS_BIN} is missing: run `make install-ls`")
    data_dir, image_root = base_dir / "ls-data", base_dir / "ls-images"
    if migrated_template().is_dir():
        shutil.copytree(migrated_template(), data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    image_root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = LabelStudioServer(url=f"http://127.0.0.1:{port}", token=ADMIN_TOKEN, data_dir=data_dir,
                               image_root=image_root)
    log = open(data_dir / "label-studio.log", "wb")
    server.process = subprocess.Popen(
        [str(LS_BIN), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
         "--data-dir", str(data_dir)],
        env=server_environment(data_dir, image_root), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    log.close()
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"Label Studio exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2).json().get("status") == "UP":
                return server
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    stop_server(server)
    raise RuntimeError(f"Label Studio did not answer /health within {START_TIMEOUT_S:.0f}s:\n{server.log_tail()}")


def stop_server(server: LabelStudioServer) -> None:
    process = server.process
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)  # its own session: the server and the workers it started
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def reset(server: LabelStudioServer) -> None:
    """Delete every project and webhook: geocurate finds its projects by title, so a leftover project of another
    store would be taken for its own."""
    from label_studio_sdk import LabelStudio

    client = LabelStudio(base_url=server.url, api_key=server.token, max_retries=0)
    for project in client.projects.list(page_size=100).items or []:
        client.projects.delete(id=project.id)
    for hook in client.webhooks.list():
        client.webhooks.delete(id=hook.id)


@pytest.fixture(scope="session")
def label_studio_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    from tests.conftest import unavailable

    try:
        server = start_server(tmp_path_factory.mktemp("label-studio"))
    except RuntimeError as exc:
        unavailable("Label Studio", str(exc))
    try:
        yield server
    finally:
        stop_server(server)
        save_template(server)


@pytest.fixture
def label_studio(label_studio_server: LabelStudioServer, monkeypatch: pytest.MonkeyPatch) -> LabelStudioServer:
    """The session's server, emptied of projects (each test starts from no review project) and configured in the
    settings: URL, token, local-files image root, fast retries."""
    from geocurate.settings import reload_settings

    reset(label_studio_server)
    monkeypatch.setenv("GEOCURATE_LABEL_STUDIO_URL", label_studio_server.url)
    monkeypatch.setenv("GEOCURATE_LABEL_STUDIO_API_KEY", label_studio_server.token)
    monkeypatch.setenv("GEOCURATE_LABEL_STUDIO_IMAGE_ROOT", str(label_studio_server.image_root))
    monkeypatch.setenv("GEOCURATE_TASK_MAX_RETRIES", "2")
    monkeypatch.setenv("GEOCURATE_RETRY_BACKOFF_MAX", "1")
    reload_settings()
    return label_studio_server
