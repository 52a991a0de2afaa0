"""docker-compose.yml and the Dockerfile must agree with the code: commands that exist, settings that exist, the
routing table's queues. Nothing here needs Docker; a drift shows up in `make test` instead of on a production host."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
import typer
import yaml

from geocurate.settings import ENV_PREFIX, Settings
from workers.routing import GPU_QUEUES, IO_QUEUES, QUEUES, TASK_ROUTES

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict = COMPOSE["services"]
# typer >= 0.2x carries its own copy of click, whose errors derive from typer.TyperException, not click's.
CLI_ERRORS = tuple(cls for cls in (getattr(typer, "TyperException", None), click.ClickException) if cls)
GEOCURATE_IMAGE = "geocurate:latest"
GEOCURATE_SERVICES = {name: spec for name, spec in SERVICES.items() if spec.get("image") == GEOCURATE_IMAGE}
WORKERS = {name: spec for name, spec in GEOCURATE_SERVICES.items() if spec["command"][0] == "worker"}
INTERPOLATION = re.compile(r"\$\{[^}]*\}")


def _environment(spec: dict) -> dict[str, str]:
    env = spec.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: INTERPOLATION.sub("from-dot-env", str(value)) for key, value in env.items()}


def _resolve(args: list[str]) -> tuple[list[str], object]:
    """Walk `geocurate ARGS` down the Typer app's command groups; parse the leaf's options the way the CLI would."""
    from geocurate.cli import app

    command = typer.main.get_command(app)
    path: list[str] = []
    rest = list(args)
    while hasattr(command, "list_commands"):  # a group (duck-typed: typer may use its own click)
        ctx = command.context_class(command, info_name=" ".join(["geocurate", *path]))
        sub = command.get_command(ctx, rest[0]) if rest else None
        if sub is None:
            raise LookupError(f"`geocurate {' '.join([*path, *rest[:1]])}` is not a command")
        path.append(rest.pop(0))
        command = sub
    command.make_context(" ".join(["geocurate", *path]), rest)  # raises on an unknown option or a missing argument
    return path, command


def _queues(command: list[str]) -> set[str]:
    for index, token in enumerate(command):
        if token in ("--queues", "-Q"):
            return set(command[index + 1].split(","))
        if token.startswith("--queues="):
            return set(token.split("=", 1)[1].split(","))
    return set()


def _has_gpu(spec: dict) -> bool:
    devices = spec.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    return any("gpu" in device.get("capabilities", []) for device in devices)


def test_the_stack_has_every_role():
    assert {"postgres", "redis", "label-studio", "worker-gpu", "worker-io", "beat", "webhook"} <= set(SERVICES)
    assert {"worker-gpu", "worker-io", "beat", "webhook"} <= set(GEOCURATE_SERVICES)
    assert [name for name, spec in GEOCURATE_SERVICES.items() if spec["command"] == ["beat"]] == ["beat"], (
        "exactly one beat: two would run every periodic task twice"
    )


@pytest.mark.parametrize("service", sorted(GEOCURATE_SERVICES))
def test_service_command_is_a_real_geocurate_command(service):
    command = GEOCURATE_SERVICES[service]["command"]
    assert isinstance(command, list), "exec form, so the image's `geocurate` entrypoint receives the arguments"
    try:
        _resolve(command)
    except (LookupError, *CLI_ERRORS) as exc:
        pytest.fail(f"service {service}: `geocurate {' '.join(command)}` does not run: {exc}")


def test_the_resolver_rejects_commands_that_do_not_exist():
    with pytest.raises(LookupError):
        _resolve(["no-such-command"])
    with pytest.raises(CLI_ERRORS):
        _resolve(["sample", "out", "--no-such-option"])
    path, _ = _resolve(["db", "upgrade"])
    assert path == ["db", "upgrade"]


@pytest.mark.parametrize("service", sorted(GEOCURATE_SERVICES))
def test_every_geocurate_variable_is_a_valid_setting(service, monkeypatch):
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    env = _environment(GEOCURATE_SERVICES[service])
    ours = {key: value for key, value in env.items() if key.startswith(ENV_PREFIX)}
    assert ours, f"{service} sets no GEOCURATE_ variable"
    unknown = sorted(set(ours) - known)
    assert not unknown, f"{service} sets variables that are not settings: {unknown}"
    for key, value in ours.items():
        monkeypatch.setenv(key, value)
    settings = Settings()  # raises a validation error on a value of the wrong type
    assert settings.broker_url and settings.database_url.startswith("postgresql+psycopg://"), (
        "the stack runs on PostgreSQL and a broker, never the embedded default"
    )


@pytest.mark.parametrize("filename", ["docker-compose.yml", "Dockerfile"])
def test_no_geocurate_variable_anywhere_in_the_files_is_unknown(filename):
    """Catches GEOCURATE_ names outside `environment:` too (the Dockerfile's ENV, interpolations, comments)."""
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    used = set(re.findall(r"\bGEOCURATE_[A-Z0-9_]+", (ROOT / filename).read_text()))
    assert used and used <= known, sorted(used - known)


def test_worker_queues_are_exactly_the_routing_tables():
    subscribed = {name: _queues(spec["command"]) for name, spec in WORKERS.items()}
    assert all(subscribed.values()), f"every worker names its queues: {subscribed}"
    gpu_workers = {name for name, spec in WORKERS.items() if _has_gpu(spec)}
    io_workers = set(WORKERS) - gpu_workers
    assert gpu_workers and io_workers
    for name in gpu_workers:
        assert set(GPU_QUEUES) <= subscribed[name], name
    for name in io_workers:
        assert set(IO_QUEUES) <= subscribed[name], name
        assert not set(GPU_QUEUES) & subscribed[name], f"{name} has no GPU but takes GPU work"
    assert set().union(*subscribed.values()) == set(QUEUES)
    assert {route["queue"] for route in TASK_ROUTES.values()} <= set(QUEUES)


DOCKER_DEFAULT_GRACE = 10  # seconds between `docker stop`'s SIGTERM and its SIGKILL
HAND_BACK_GRACE = 60  # a pool process gives its batch back when its current call returns; a CPU model call is slow


def _seconds(duration: str) -> float:
    """A compose duration: `90s`, `2m`, `1m30s`, `1h`."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", str(duration))
    assert parts and "".join(n + u for n, u in parts) == str(duration), f"not a compose duration: {duration!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def test_workers_have_time_to_give_their_batch_back_when_stopped():
    """`docker stop` TERMs the worker (the container's first process, in exec form: no shell swallows the signal),
    which passes it on to its pool processes; a KILL before they are done would leave the batch claimed."""
    assert _seconds("1m30s") == 90 and _seconds("2m") == 120
    for name, spec in WORKERS.items():
        assert "stop_grace_period" in spec, f"{name}: Docker's default {DOCKER_DEFAULT_GRACE}s is too short"
        assert _seconds(spec["stop_grace_period"]) >= HAND_BACK_GRACE, name
        assert "entrypoint" not in spec, f"{name}: the image's exec-form `geocurate` entrypoint gets the SIGTERM"


def test_label_studio_serves_the_images_where_the_workers_see_them():
    label_studio = SERVICES["label-studio"]
    ls_env = _environment(label_studio)
    assert ls_env["LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED"] == "true"
    image_root = ls_env["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"]
    for name, spec in GEOCURATE_SERVICES.items():
        assert _environment(spec)["GEOCURATE_LABEL_STUDIO_IMAGE_ROOT"] == image_root, name
    ls_mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in label_studio["volumes"]}
    worker_mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in SERVICES["worker-io"]["volumes"]}
    assert ls_mounts[image_root] == worker_mounts[image_root], "the same volume at the same path"
    makefile_version = re.search(r"LABEL_STUDIO_VERSION := (\S+)", (ROOT / "Makefile").read_text()).group(1)
    assert label_studio["image"].endswith(f":{makefile_version}"), "the tested Label Studio is the deployed one"


@pytest.mark.parametrize("service", sorted(GEOCURATE_SERVICES))
def test_images_exports_and_adapters_live_on_volumes(service):
    spec = GEOCURATE_SERVICES[service]
    env = _environment(spec)
    mounted = {volume.split(":")[1] for volume in spec["volumes"]}
    for key in ("GEOCURATE_LABEL_STUDIO_IMAGE_ROOT", "GEOCURATE_EXPORT_DIR", "GEOCURATE_ADAPTERS_DIR", "GEOCURATE_DATA_DIR"):
        assert env[key] in mounted, f"{service}: {key}={env[key]} would be lost with the container"
    assert {volume.split(":")[0] for volume in spec["volumes"]} <= set(COMPOSE["volumes"])


def test_dockerfile_installs_the_pinned_project_behind_the_geocurate_entrypoint():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.M)
    assert re.search(r'^ENTRYPOINT \["geocurate"\]', dockerfile, re.M)
    assert "pyproject.toml" in dockerfile and "tomllib" in dockerfile, "dependencies come from pyproject.toml"
    assert not re.search(r"torch(vision)?==", dockerfile), "torch pins live only in pyproject.toml"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'"torch==[\d.]+"', pyproject) and re.search(r'"torchvision==[\d.]+"', pyproject)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".venv-ls", ".git"} <= set(ignored), "virtualenvs and history stay out of the build context"


def test_label_studio_can_reach_the_webhook_service():
    from urllib.parse import urlsplit

    env = _environment(SERVICES["webhook"])
    url = urlsplit(env["GEOCURATE_WEBHOOK_URL"])
    assert url.hostname == "webhook" and url.port == int(env["GEOCURATE_WEBHOOK_PORT"])
    assert env["GEOCURATE_WEBHOOK_HOST"] == "0.0.0.0", "bound to the container's interface, not its loopback"
    assert _environment(SERVICES["label-studio"])["SSRF_PROTECTION_ENABLED"] == "false", (
        "Label Studio refuses webhooks to private addresses otherwise"
    )
