"""`geocurate worker` and `geocurate beat` subprocesses on this machine, for the worker tests and the bench scripts:
started with their own environment (store, broker, queue prefix), waited for until ready, stopped gently or killed
outright, whole or only a pool process; and a wait for a run they work on. Test tooling, so it lives with the tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from geocurate.settings import Settings
from workers.pipeline import run_progress

ROOT = Path(__file__).resolve().parents[1]
READY_MARK = " ready."
MODELS_MARK = "scoring models loaded"


class LocalWorkers:
    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, queues: str = "ingest,score,review,export", concurrency: int = 1,
              **extra_env: str) -> subprocess.Popen:
        return self._spawn(name, ["worker", "--queues", queues, "--concurrency", str(concurrency),
                                  "--hostname", f"{name}@%h", "--loglevel", "INFO"], extra_env)

    def start_beat(self, name: str = "beat", **extra_env: str) -> subprocess.Popen:
        """The deployment's scheduler, so reconcile runs on its interval the way it does in production."""
        return self._spawn(name, ["beat", "--loglevel", "INFO"], extra_env)

    def _spawn(self, name: str, args: list[str], extra_env: dict[str, str]) -> subprocess.Popen:
        """Each process leads its own process group, so it can be killed together with its pool children."""
        log = open(self.log_dir / f"{name}.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "geocurate.cli", *args], env={**self.env, **extra_env}, cwd=ROOT, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        self.procs[name] = proc
        return proc

    def wait_for(self, names: list[str] | tuple[str, ...], mark: str, timeout: float, count: int = 1) -> None:
        """Until every named worker's log shows `mark` (`count` times); RuntimeError if one exits or time runs out."""
        deadline = time.monotonic() + timeout
        for name in names:
            while self.log(name).count(mark) < count:
                if self.procs[name].poll() is not None:
                    raise RuntimeError(f"worker {name} exited with {self.procs[name].returncode}:\n"
                                       f"{self.log(name)[-3000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"worker {name}: no {mark!r} after {timeout:.0f}s:\n{self.log(name)[-3000:]}")
                time.sleep(0.2)

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def owner(self, pid: int) -> str:
        """The name of the worker whose process group holds `pid` (a pool process named in a batch's claim)."""
        group = os.getpgid(pid)
        return next(name for name, proc in self.procs.items() if proc.pid == group)

    def kill(self, name: str) -> None:
        """SIGKILL the worker and its pool children at once, as a lost machine or `docker kill` would."""
        proc = self.procs[name]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def terminate(self, name: str, timeout: float = 60, whole_group: bool = True) -> int:
        """SIGTERM to the worker's whole process group (what systemd sends), or only to its main process (what
        `docker stop` sends to a container's first process)."""
        proc = self.procs[name]
        if whole_group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=timeout)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def wait_for_run(run_id: int, timeout: float, settings: Settings, poll: float = 0.5) -> dict[str, Any]:
    """Block until the run is no longer running (or raise TimeoutError)."""
    deadline = time.monotonic() + timeout
    while True:
        state = run_progress(run_id, settings)
        if state["status"] != "running":
            return state
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} still at step {state['step']} after {timeout:.0f}s: {state['summary']}")
        time.sleep(poll)
