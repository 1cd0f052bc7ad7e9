"""``limner sandbox``: the emulators on their own, usable by any client offline."""

from __future__ import annotations

import base64
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import openai
import pytest

from tests import images
from tests.processes import end_process


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(port: int, log: Path, *, ignore_sigint: bool = False) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "limner", "sandbox", "--port", str(port)]
    if ignore_sigint:  # as nohup, a background job or some CI runners start it: SIGINT ignored, inherited
        command = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *command]
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"})


def _wait_until_serving(proc: subprocess.Popen[bytes], log: Path) -> str:
    deadline = time.monotonic() + 60
    while "Press Ctrl+C" not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    return log.read_text()


def test_sandbox_prints_base_urls_that_the_sdk_can_use(tmp_path: Path) -> None:
    port = _free_port()
    log = tmp_path / "sandbox.log"
    proc = _start(port, log)
    try:
        urls = dict(re.findall(r"^\s+(\w+)\s+(http://\S+)$", _wait_until_serving(proc, log), re.M))
        assert urls["openai"] == f"http://127.0.0.1:{port}/openai/v1"
        with httpx2.Client() as http:
            client = openai.OpenAI(base_url=urls["openai"], api_key="sk-anything", http_client=http)
            result = client.images.generate(model="gpt-image-1.5", prompt="offline", size="1024x1536")
        assert result.data and result.data[0].b64_json
        assert images.size_of(base64.b64decode(result.data[0].b64_json)) == (1024, 1536)
    finally:
        returncode = end_process(proc)
    assert returncode == 0 and "stopped" in log.read_text()  # SIGTERM stops it cleanly


@pytest.mark.parametrize(("sig", "ignore_sigint"), [(signal.SIGINT, False), (signal.SIGTERM, True)])
def test_sandbox_stops_cleanly_on_ctrl_c_and_on_sigterm(tmp_path: Path, sig: int, ignore_sigint: bool) -> None:
    """Ctrl+C stops it; SIGTERM stops it too, also where SIGINT is ignored (the case that once hung)."""
    log = tmp_path / "sandbox.log"
    proc = _start(_free_port(), log, ignore_sigint=ignore_sigint)
    try:
        _wait_until_serving(proc, log)
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == 0
    finally:
        end_process(proc)
    assert log.read_text().rstrip().endswith("stopped")
