"""The A1111 emulator's postprocessing, interrogation and listing routes over real HTTP: the wire details
a client library hides (422 shapes per flavour, error bodies, encodings, the request log, faults, auth).
``tests/sandbox/test_a1111_client.py`` drives the same routes through webuiapi."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest
from PIL import Image

from limner.net import create_http_client
from limner.sandbox.a1111 import A1111Emulator
from limner.sandbox.server import Sandbox, serve_sandbox

SDAPI = "/sdapi/v1"


@dataclass
class WebUI:
    emulator: A1111Emulator
    url: str
    http: httpx2.AsyncClient

    async def post(self, path: str, body: Any = None, **kw: Any) -> httpx2.Response:
        return await self.http.post(f"{self.url}{SDAPI}/{path}", json=body, **kw)

    async def get(self, path: str, **kw: Any) -> httpx2.Response:
        return await self.http.get(f"{self.url}{SDAPI}/{path}", **kw)


Start = Callable[..., Awaitable[WebUI]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(await asyncio.to_thread(create_http_client, timeout=30))

        async def starter(**knobs: Any) -> WebUI:
            emulator = A1111Emulator(**knobs)
            running = await stack.enter_async_context(serve_sandbox(Sandbox(a1111=emulator)))
            return WebUI(emulator, running.urls["a1111"], http)

        yield starter


def png(size: tuple[int, int] = (64, 48), colour: tuple[int, int, int] = (255, 0, 0)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def opened(encoded: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(encoded)))


# -- extras --------------------------------------------------------------------------------------


async def test_extras_answer_html_info_first_then_the_image(start: Start) -> None:
    ui = await start()
    response = await ui.post("extra-single-image", {"image": b64(png()), "upscaler_1": "Lanczos"})
    assert response.status_code == 200 and list(response.json()) == ["html_info", "image"]
    assert opened(response.json()["image"]).size == (128, 96)  # upscaling_resize defaults to 2
    batch = await ui.post("extra-batch-images", {"imageList": [], "upscaler_1": "Lanczos"})
    assert batch.json() == {"html_info": "<p></p>", "images": []}


async def test_upscaled_sizes_are_rounded_down_to_multiples_of_8(start: Start) -> None:
    ui = await start()
    body = {"image": b64(png((50, 30))), "upscaler_1": "Lanczos", "upscaling_resize": 1.5}
    image = opened((await ui.post("extra-single-image", body)).json()["image"])
    assert image.size == (72, 40)  # 75x45 in A1111's Upscaler.upscale arithmetic


async def test_to_a_size_without_crop_keeps_the_covering_upscale(start: Start) -> None:
    ui = await start()
    body = {
        "image": b64(png((64, 48))),
        "upscaler_1": "Lanczos",
        "resize_mode": 1,
        "upscaling_resize_w": 100,
        "upscaling_resize_h": 60,
        "upscaling_crop": False,
    }
    data = (await ui.post("extra-single-image", body)).json()
    assert opened(data["image"]).size == (96, 72)
    assert data["html_info"] == "<p>Postprocess upscale to: 100x60, Postprocess upscaler: Lanczos</p>"


async def test_a_second_upscaler_is_blended_in(start: Start) -> None:
    ui = await start()
    body = {
        "image": b64(png()),
        "upscaler_1": "Lanczos",
        "upscaler_2": "Nearest",
        "extras_upscaler_2_visibility": 0.5,
    }
    data = (await ui.post("extra-single-image", body)).json()
    assert data["html_info"] == (
        "<p>Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos, Postprocess upscaler 2: Nearest</p>"
    )
    missing = await ui.post("extra-single-image", {**body, "upscaler_2": "SwinIR 4x"})
    assert missing.status_code == 500 and missing.json()["errors"] == "could not find upscaler named SwinIR 4x"


async def test_extras_follow_samples_format(start: Start) -> None:
    ui = await start()
    assert (await ui.post("../v1/options", {"samples_format": "jpeg"})).status_code == 200
    data = (await ui.post("extra-single-image", {"image": b64(png()), "upscaler_1": "Lanczos"})).json()
    assert opened(data["image"]).format == "JPEG"


async def test_extras_validation_is_pydantic_v1_on_a1111(start: Start) -> None:
    ui = await start()
    body = {"image": ["x"], "resize_mode": 2, "upscaling_resize": 9, "gfpgan_visibility": -1, "upscaling_crop": "x"}
    response = await ui.post("extra-single-image", body)
    assert response.status_code == 422
    assert response.json()["detail"] == [
        {
            "loc": ["body", "resize_mode"],
            "msg": "unexpected value; permitted: 0, 1",
            "type": "value_error.const",
            "ctx": {"given": 2, "permitted": [0, 1]},
        },
        {
            "loc": ["body", "gfpgan_visibility"],
            "msg": "ensure this value is greater than or equal to 0",
            "type": "value_error.number.not_ge",
            "ctx": {"limit_value": 0},
        },
        {
            "loc": ["body", "upscaling_resize"],
            "msg": "ensure this value is less than or equal to 8",
            "type": "value_error.number.not_le",
            "ctx": {"limit_value": 8},
        },
        {"loc": ["body", "upscaling_crop"], "msg": "value could not be parsed to a boolean", "type": "type_error.bool"},
        {"loc": ["body", "image"], "msg": "str type expected", "type": "type_error.str"},
    ]


async def test_extras_validation_is_pydantic_v2_on_forge(start: Start) -> None:
    ui = await start(flavour="forge")
    response = await ui.post("extra-batch-images", {"resize_mode": "1", "imageList": [{"name": "a.png"}, 3]})
    assert response.status_code == 422
    assert response.json()["detail"] == [
        {
            "type": "literal_error",
            "loc": ["body", "resize_mode"],
            "msg": "Input should be 0 or 1",
            "input": "1",
            "ctx": {"expected": "0 or 1"},
        },
        {
            "type": "missing",
            "loc": ["body", "imageList", 0, "data"],
            "msg": "Field required",
            "input": {"name": "a.png"},
        },
        {
            "type": "model_attributes_type",
            "loc": ["body", "imageList", 1],
            "msg": "Input should be a valid dictionary or object to extract fields from",
            "input": 3,
        },
    ]
    missing = await ui.post("extra-batch-images", {})
    assert missing.json()["detail"] == [
        {"type": "missing", "loc": ["body", "imageList"], "msg": "Field required", "input": {}}
    ]


async def test_an_undecodable_image_is_the_web_uis_500(start: Start) -> None:
    ui = await start()
    for path, body in [("extra-single-image", {}), ("interrogate", {"image": "bm90IGFuIGltYWdl"})]:
        response = await ui.post(path, body)
        assert response.status_code == 500
        assert response.json() == {
            "error": "HTTPException",
            "detail": "Invalid encoded image",
            "body": "",
            "errors": "500: Invalid encoded image",
        }


async def test_the_request_log_keeps_images_short_and_their_hashes(start: Start) -> None:
    ui = await start()
    first, second = png(), png((32, 32), (0, 0, 255))
    body = {"imageList": [{"data": b64(first), "name": "a"}, {"data": b64(second), "name": "b"}]}
    assert (await ui.post("extra-batch-images", body)).status_code == 200
    (record,) = [r for r in ui.emulator.requests if r.path.endswith("/extra-batch-images")]
    assert record.json["imageList"][0] == {"data": f"<base64: {len(b64(first))} chars>", "name": "a"}
    assert [file.sha256 for file in record.files] == [hashlib.sha256(d).hexdigest() for d in (first, second)]


# -- interrogate ---------------------------------------------------------------------------------


async def test_interrogate_answers_a_caption(start: Start) -> None:
    ui = await start(flavour="sdnext")
    response = await ui.post("interrogate", {"image": f"data:image/png;base64,{b64(png((90, 30), (0, 0, 255)))}"})
    assert response.status_code == 200 and response.json() == {"caption": "a blue wide picture"}
    unknown = await ui.post("interrogate", {"image": b64(png()), "model": "blip"})
    assert unknown.status_code == 404
    assert unknown.json() == {
        "error": "HTTPException",
        "code": 404,
        "detail": "Model not found",
        "body": "",
        "errors": "404: Model not found",
    }


async def test_interrogate_drops_sandbox_triggers_from_the_caption(start: Start) -> None:
    ui = await start()
    generated = await ui.post("txt2img", {"prompt": "a fox [[sandbox:delay=0]] in snow", "steps": 2})
    (image,) = generated.json()["images"]
    caption = (await ui.post("interrogate", {"image": image, "model": "deepdanbooru"})).json()["caption"]
    assert caption == "fox, snow"


# -- the pipeline every route shares ---------------------------------------------------------------


async def test_new_routes_are_behind_auth_and_take_queued_faults(start: Start) -> None:
    ui = await start(auth=("alice", "s3cret"))
    for path in ("interrogate", "extra-single-image"):
        refused = await ui.post(path, {"image": b64(png())})
        assert refused.status_code == 401 and refused.json()["detail"] == "Not authenticated"
    assert (await ui.get("memory")).status_code == 401
    ui.emulator.faults.add(ui.emulator.error_fault(503, "busy"), path_contains="interrogate")
    busy = await ui.post("interrogate", {"image": b64(png())}, auth=("alice", "s3cret"))
    assert busy.status_code == 503 and busy.json()["detail"] == "busy"
    listed = await ui.get("embeddings", auth=("alice", "s3cret"))
    assert listed.status_code == 200 and set(listed.json()["loaded"]["sandboxEmbedding"]) == {
        "step",
        "sd_checkpoint",
        "sd_checkpoint_name",
        "shape",
        "vectors",
    }


async def test_sdnext_cmd_flags_name_auth_and_sampler_index_takes_a_name(start: Start) -> None:
    ui = await start(flavour="sdnext", auth=("bob", "pw"))
    flags = (await ui.get("cmd-flags", auth=("bob", "pw"))).json()
    assert flags["auth"] == "bob:pw" and "api" not in flags and "api_auth" not in flags
    for index in ("Euler a", 3):
        body = {"prompt": "p", "steps": 1, "width": 64, "height": 64, "sampler_index": index}
        response = await ui.post("txt2img", body, auth=("bob", "pw"))
        assert response.status_code == 200 and response.json()["parameters"]["sampler_index"] == index
    wrong = await ui.post("txt2img", {"prompt": "p", "sampler_index": [1]}, auth=("bob", "pw"))
    assert wrong.status_code == 422
