"""Child processes in tests: every one is ended with SIGTERM, then SIGKILL, and waited for.

The conftest guard uses :func:`live_children` to fail a test that leaves a process behind (and ends it,
so that the next test does not meet a stray server on its port).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2

_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Make orphaned descendants (an ``npx`` server's ``node``) children of this process, so the guard sees them."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def live_children() -> dict[int, str]:
    """The running (not zombie) child processes of this process: pid to command name (Linux ``/proc``)."""
    me, found = os.getpid(), {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:  # ended while we looked
            continue
        comm, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        if int(rest[1]) == me and rest[0] != "Z":
            found[int(entry.name)] = comm
    return found


def end_process(proc: subprocess.Popen[bytes] | subprocess.Popen[str], grace: float = 15) -> int:
    """SIGTERM, SIGKILL when it has not ended within ``grace`` seconds, and always wait: its exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def end_pid(pid: int, grace: float = 5) -> None:
    """:func:`end_process` for a process known only by its pid (one the guard found left behind)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if pid not in live_children():
                _reap(pid)
                return
            time.sleep(0.05)
    _reap(pid)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def free_port() -> int:
    """A loopback port free right now (the process that binds it next is the one the test starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


PROVIDER_VARIABLES = ("LIMNER_", "IMAGE_GEN_OAI", "IMAGE_EDIT_OAI", "DALLE", "FLUX_", "SD_", "PROXY")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without provider or limner variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(PROVIDER_VARIABLES)}
    env.update(extra)
    return env


class LimnerServe:
    """``python -m limner serve`` on a free loopback port, its output in ``workdir/server.log``."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "server.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "limner", "serve", "--port", str(self.port)],
                env=env,
                cwd=workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60) -> dict[str, object]:
        """``GET /api/health``'s answer once the server answers; fails with its output if it exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("limner serve exited:\n" + self.output())
            try:
                return dict(httpx2.get(f"{self.url}/api/health", timeout=2).json())
            except httpx2.TransportError:
                time.sleep(0.1)
        raise AssertionError("limner serve did not start:\n" + self.output())

    def wait_probed(self, timeout: float = 60) -> None:
        """Wait until the first probe of every configured provider has a result (it runs after start)."""
        deadline = time.monotonic() + timeout
        while True:
            families = httpx2.get(f"{self.url}/api/health", timeout=5).json()["families"]
            if all((f.get("provider") or {}).get("state") != "unknown" for f in families):
                return
            assert time.monotonic() < deadline, f"the provider probe never finished: {families}"
            time.sleep(0.05)

    def wait_for_log(self, text: str, timeout: float = 60) -> None:
        """Wait until the output contains ``text`` (a crash point announcing itself)."""
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never appeared:\n" + self.output())
            time.sleep(0.02)

    def stop(self) -> int:
        """SIGTERM (SIGKILL if it hangs), waited for: uvicorn's graceful shutdown. The exit code."""
        return end_process(self.proc)

    def kill(self) -> None:
        """SIGKILL, waited for: a crash wherever the server is."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
