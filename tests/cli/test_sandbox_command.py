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

from tests import images


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_sandbox_prints_base_urls_that_the_sdk_can_use(tmp_path: Path) -> None:
    port = _free_port()
    log = tmp_path / "sandbox.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "limner", "sandbox", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "COLUMNS": "200"},
        )
        try:
            deadline = time.monotonic() + 20
            while "Press Ctrl+C" not in log.read_text() and time.monotonic() < deadline:
                assert proc.poll() is None, log.read_text()
                time.sleep(0.05)
            urls = dict(re.findall(r"^\s+(\w+)\s+(http://\S+)$", log.read_text(), re.M))
            assert urls["openai"] == f"http://127.0.0.1:{port}/openai/v1"
            with httpx2.Client() as http:
                client = openai.OpenAI(base_url=urls["openai"], api_key="sk-anything", http_client=http)
                result = client.images.generate(model="gpt-image-1.5", prompt="offline", size="1024x1536")
            assert result.data and result.data[0].b64_json
            assert images.size_of(base64.b64decode(result.data[0].b64_json)) == (1024, 1536)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=10)
    assert "stopped" in log.read_text()
