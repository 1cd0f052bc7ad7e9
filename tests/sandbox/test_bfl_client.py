"""BFL's official Python client (PyPI ``blackforest``) against the BFL emulator, at the URL ``limner sandbox``
prints, covering each public method of the client that maps to a route the emulator serves.

The client keeps only the scheme and host of its base URL (``urljoin(base, "v1/<model>")`` after stripping
the trailing slash, and a root-absolute ``/v1/get_result`` when it has no ``polling_url``), so these tests
are what holds the emulator to answering at the root as well as under ``/bfl``. Not covered, because the
emulator serves no such route: ``track_usage_via_api`` (``/v1/licenses/models/<slug>/usage``, licensing of
self-hosted weights) and the Canny and Depth tools (answered 404, as a retired route is). The client is
synchronous (``requests``), so each call runs in a worker thread while the emulator serves on the loop.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import io
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx2
import pytest
from PIL import Image
from pydantic.warnings import PydanticDeprecatedSince20

from limner.net import create_http_client
from limner.sandbox import read_stamp
from limner.sandbox.bfl import BFLEmulator
from limner.sandbox.server import Sandbox, serve_sandbox
from tests import images

with warnings.catch_warnings():
    # blackforest 0.1.3 passes ``example=`` to pydantic's Field at import time (deprecated since pydantic
    # 2.0); that is the library's own affair, not behaviour under test, so only its import is excused.
    warnings.simplefilter("ignore", PydanticDeprecatedSince20)
    from blackforest import BFLClient, BFLError
    from blackforest.types.general.client_config import ClientConfig
    from blackforest.types.inputs.generic import ImageInput

KEY = "bfl_client_key_0001"
# The client's smallest polling interval (its config refuses less than 0.1 s between polls).
POLLING = ClientConfig(polling_interval=0.1, max_retries=20)
SYNC = ClientConfig(sync=True, polling_interval=0.1, max_retries=20)
T = TypeVar("T")


@dataclass
class Flux:
    emulator: BFLEmulator
    printed: str
    root: str
    client: BFLClient
    http: httpx2.AsyncClient

    async def call(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one blocking client call off the event loop that serves the emulator."""
        return await asyncio.to_thread(functools.partial(method, *args, **kwargs))

    async def download(self, url: str) -> bytes:
        response = await self.http.get(url)
        assert response.status_code == 200, response.text
        return response.content

    def posts(self) -> list[Any]:
        return [r for r in self.emulator.requests if r.method == "POST"]


Start = Callable[..., Awaitable[Flux]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    async with AsyncExitStack() as stack:
        http = await asyncio.to_thread(create_http_client, timeout=10)
        stack.push_async_callback(http.aclose)

        async def factory(*, key: str = KEY, **knobs: Any) -> Flux:
            knobs.setdefault("accepted_keys", {KEY})
            emulator = BFLEmulator(**knobs)
            running = await stack.enter_async_context(serve_sandbox(Sandbox(bfl=emulator)))
            client = BFLClient(api_key=key, base_url=running.urls["bfl"], timeout=10)
            stack.callback(client.session.close)
            return Flux(emulator, running.urls["bfl"], running.base_url, client, http)

        yield factory


@pytest.fixture
async def flux(start: Start) -> Flux:
    return await start()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def size_of(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        return img.size


# --- generate, asynchronous and synchronous ------------------------------------------------------------


async def test_generate_reaches_the_emulator_from_the_printed_base_url(flux: Flux) -> None:
    assert flux.printed.endswith("/bfl")  # a path the client drops: the emulator answers at the root too
    inputs = {"prompt": "a lighthouse at dusk", "width": 512, "height": 256, "seed": 7, "output_format": "png"}
    submitted = await flux.call(flux.client.generate, "flux-pro-1.1", inputs)
    assert submitted.polling_url == f"{flux.root}/v1/get_result?id={submitted.id}"
    (post,) = flux.posts()
    assert post.path == "/v1/flux-pro-1.1" and post.status == 200 and post.headers["x-key"] == KEY
    assert post.json == {**inputs, "safety_tolerance": 2, "prompt_upsampling": False}
    result = await flux.call(flux.client.get_polling_result, submitted.id, POLLING)
    assert result["seed"] == 7 and result["prompt"] == inputs["prompt"]
    picture = await flux.download(result["sample"])
    assert size_of(picture) == (512, 256)
    stamp = read_stamp(picture)
    assert stamp is not None and stamp["prompt"] == inputs["prompt"]


def _square(side: int = 256) -> str:
    return b64(images.png(side, side, (30, 120, 200)))


def _mask(side: int = 256) -> str:
    return b64(images.png(side, side, (255, 255, 255)))


# Every model of the client's registry that the emulator serves, with the inputs each one needs.
MODELS: dict[str, tuple[dict[str, Any], tuple[int, int] | None]] = {
    "flux-dev": ({"prompt": "a red fox", "width": 512, "height": 512}, (512, 512)),
    "flux-pro": ({"prompt": "a red fox", "width": 512, "height": 384}, (512, 384)),
    "flux-pro-1.1": ({"prompt": "a red fox"}, (1024, 768)),
    "flux-pro-1.1-ultra": ({"prompt": "a red fox", "aspect_ratio": "1:1", "raw": True}, (2048, 2048)),
    "flux-kontext-pro": ({"prompt": "make it night", "input_image": _square()}, None),
    "flux-pro-1.0-fill": ({"prompt": "a moon", "image": _square(), "mask": _mask()}, (256, 256)),
    "flux-pro-1.0-expand": ({"prompt": "more sky", "image": _square(), "top": 64}, (256, 320)),
}


@pytest.mark.parametrize("model", sorted(MODELS))
async def test_every_served_model_of_the_client_runs_in_sync_mode(flux: Flux, model: str) -> None:
    inputs, size = MODELS[model]
    answer = await flux.call(flux.client.generate, model, {**inputs, "output_format": "png"}, SYNC)
    assert answer.id and answer.result["sample"].startswith(f"{flux.root}/delivery/results/")
    (post,) = flux.posts()
    assert post.path == f"/v1/{model}" and post.status == 200
    picture = await flux.download(answer.result["sample"])
    stamp = read_stamp(picture)
    assert stamp is not None and stamp["prompt"] == inputs["prompt"]
    if size is not None:
        assert size_of(picture) == size
    assert flux.emulator.credits_of(KEY) < flux.emulator.credits  # charged as the real service charges


@pytest.mark.parametrize("model", ["flux-pro-1.0-canny", "flux-pro-1.0-depth"])
async def test_the_tools_the_emulator_does_not_serve_answer_404(flux: Flux, model: str) -> None:
    control = b64(images.png(256, 256))
    with pytest.raises(BFLError, match="404"):
        await flux.call(flux.client.generate, model, {"prompt": "a fox", "control_image": control})


# --- polling --------------------------------------------------------------------------------------------


async def test_get_task_status_follows_the_task_from_pending_to_ready(start: Start) -> None:
    flux = await start(pending_polls=2)
    submitted = await flux.call(flux.client.generate, "flux-dev", {"prompt": "a heron", "width": 256, "height": 256})
    statuses = [(await flux.call(flux.client.get_task_status, submitted.id)).status for _ in range(2)]
    ready = await flux.call(flux.client.get_task_status, submitted.id)
    assert statuses == ["Pending", "Pending"] and ready.status == "Ready" and ready.task_id == submitted.id
    assert ready.result is not None
    assert size_of(await flux.download(ready.result["sample"])) == (256, 256)


async def test_without_its_polling_url_the_client_polls_the_root_path(flux: Flux) -> None:
    submitted = await flux.call(flux.client.generate, "flux-pro-1.1", {"prompt": "a heron"})
    flux.client.clear_polling_urls()  # now the client builds /v1/get_result?id= from the base URL's host
    status = await flux.call(flux.client.get_task_status, submitted.id)
    assert status.status in {"Pending", "Ready"}
    polls = [r for r in flux.emulator.requests if r.method == "GET"]
    assert [(poll.path, poll.status) for poll in polls] == [("/v1/get_result", 200)]


async def test_the_client_follows_a_polling_url_on_another_host(start: Start) -> None:
    flux = await start(polling_host_alias="localhost")
    answer = await flux.call(flux.client.generate, "flux-pro-1.1", {"prompt": "a heron"}, SYNC)
    polls = [r for r in flux.emulator.requests if r.method == "GET"]
    assert polls and all(poll.headers["host"].startswith("localhost:") for poll in polls)
    assert answer.result["sample"].startswith("http://localhost:")


async def test_a_moderated_task_reports_its_status(flux: Flux) -> None:
    submitted = await flux.call(flux.client.generate, "flux-pro-1.1", {"prompt": "[[sandbox:moderation]] a fox"})
    first = await flux.call(flux.client.get_task_status, submitted.id)
    settled = await flux.call(flux.client.get_task_status, submitted.id)
    assert first.status == "Pending"  # the emulator's one Pending poll (pending_polls=1)
    assert settled.status == "Request Moderated" and settled.result is None


# --- process_image --------------------------------------------------------------------------------------


async def test_process_image_sends_base64_data_to_the_named_endpoint(flux: Flux) -> None:
    data = ImageInput(image_data=_square())
    processing = await flux.call(
        flux.client.process_image, data, "/v1/flux-pro-1.0-expand", prompt="more sea", bottom=64, output_format="png"
    )
    assert processing.status == "submitted" and processing.result is not None
    assert processing.result["polling_url"] == f"{flux.root}/v1/get_result?id={processing.task_id}"
    result = await flux.call(flux.client.get_polling_result, processing.task_id, POLLING)
    assert size_of(await flux.download(result["sample"])) == (256, 320)


async def test_process_image_reads_an_image_file(flux: Flux, tmp_path: Path) -> None:
    data = images.png(256, 256, (200, 200, 30))
    picture = tmp_path / "input.png"
    picture.write_bytes(data)
    processing = await flux.call(
        flux.client.process_image, str(picture), "/v1/flux-pro-1.0-fill", prompt="a sun", output_format="png"
    )
    (post,) = flux.posts()
    assert post.path == "/v1/flux-pro-1.0-fill"
    assert [(file.field, file.sha256) for file in post.files] == [("image", hashlib.sha256(data).hexdigest())]
    result = await flux.call(flux.client.get_polling_result, processing.task_id, POLLING)
    stamp = read_stamp(await flux.download(result["sample"]))
    assert stamp is not None and stamp["prompt"] == "a sun"


# --- failures as the client reports them ----------------------------------------------------------------


async def test_a_wrong_key_is_refused_with_403(start: Start) -> None:
    flux = await start(key="not-the-key")
    with pytest.raises(BFLError, match="403"):
        await flux.call(flux.client.generate, "flux-pro-1.1", {"prompt": "a fox"})


async def test_an_account_without_credits_is_refused_with_402(flux: Flux) -> None:
    flux.emulator.set_credits(KEY, 0)
    with pytest.raises(BFLError, match="402"):
        await flux.call(flux.client.generate, "flux-pro-1.1", {"prompt": "a fox"})
    assert flux.emulator.tasks == []
