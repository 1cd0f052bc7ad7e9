"""The A1111 web UI emulator (and its Forge and SD.Next flavours) over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest
from PIL import Image

from limner.net import create_http_client
from limner.sandbox import Fault, read_stamp
from limner.sandbox.a1111 import A1111Emulator
from limner.sandbox.server import Sandbox, serve_sandbox

SDAPI = "/sdapi/v1"


@dataclass
class WebUI:
    emulator: A1111Emulator
    url: str
    http: httpx2.AsyncClient

    async def post(self, path: str, body: Any = None, **kw: Any) -> httpx2.Response:
        return await self.http.post(self.url + path, json=body, **kw)

    async def get(self, path: str, **kw: Any) -> httpx2.Response:
        return await self.http.get(self.url + path, **kw)

    async def txt2img(self, **body: Any) -> dict[str, Any]:
        response = await self.post(f"{SDAPI}/txt2img", body)
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        data["info"] = json.loads(data["info"])
        return data


Start = Callable[..., Awaitable[WebUI]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Start an emulator with the given knobs; everything is stopped after the test."""
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(await asyncio.to_thread(create_http_client, timeout=30))

        async def starter(**knobs: Any) -> WebUI:
            emulator = A1111Emulator(**knobs)
            running = await stack.enter_async_context(serve_sandbox(Sandbox(a1111=emulator)))
            return WebUI(emulator, running.urls["a1111"], http)

        yield starter


def png(size: tuple[int, int] = (64, 64), colour: tuple[int, ...] = (255, 0, 0), mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, colour).save(out, "PNG")
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def decode(encoded: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(encoded)))


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


# -- txt2img -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flavour", "steps", "side", "cfg", "sampler"),
    [("a1111", 50, 512, 7.0, "Euler"), ("forge", 50, 512, 7.0, "Euler"), ("sdnext", 20, 1024, 6.0, "Default")],
)
async def test_txt2img_defaults_and_shape(
    start: Start, flavour: str, steps: int, side: int, cfg: float, sampler: str
) -> None:
    ui = await start(flavour=flavour, seconds_per_step=0.0005)
    data = await ui.txt2img(prompt="a lighthouse at dusk")
    assert set(data) == {"images", "parameters", "info"}
    (image,) = data["images"]
    assert not image.startswith("data:")
    assert decode(image).size == (side, side)
    info, parameters = data["info"], data["parameters"]
    assert (info["steps"], info["width"], info["cfg_scale"], info["sampler_name"]) == (steps, side, cfg, sampler)
    assert parameters["prompt"] == "a lighthouse at dusk" and parameters["seed"] == -1
    assert parameters["send_images"] is True and parameters["override_settings"] is None
    assert 0 <= info["seed"] < 4294967294 and info["all_seeds"] == [info["seed"]]
    assert info["infotexts"][0].startswith("a lighthouse at dusk\nSteps: ")
    assert ("scheduler" in parameters) is (flavour != "sdnext")
    assert ("distilled_cfg_scale" in parameters) is (flavour == "forge")
    if flavour == "sdnext":
        assert "version" not in info and "sd_model_name" not in info
    else:
        assert "v1.10.1" in info["version"] and info["sd_model_name"] == "v1-5-pruned-emaonly"
        assert "Schedule type: Automatic" in info["infotexts"][0]
    assert read_stamp(base64.b64decode(image)) == {
        "prompt": "a lighthouse at dusk",
        "kind": "generation",
        "inputs": [],
        "mask": False,
        "variant": 0,
    }


async def test_seeds_batches_and_infotexts(start: Start) -> None:
    ui = await start()
    data = await ui.txt2img(prompt="p", negative_prompt="blurry", seed=42, batch_size=2, n_iter=2, steps=3)
    info = data["info"]
    assert len(data["images"]) == 4 and info["all_seeds"] == [42, 43, 44, 45]
    assert info["batch_size"] == 2 and info["index_of_first_image"] == 0
    assert [read_stamp(base64.b64decode(i))["variant"] for i in data["images"]] == [0, 1, 2, 3]  # type: ignore[index]
    assert info["infotexts"][3].startswith("p\nNegative prompt: blurry\nSteps: 3, Sampler: Euler")
    assert "Seed: 45," in info["infotexts"][3]
    chunk = Image.open(io.BytesIO(base64.b64decode(data["images"][1]))).info["parameters"]
    assert chunk == info["infotexts"][1]


async def test_numeric_strings_are_accepted_and_unknown_keys_ignored(start: Start) -> None:
    ui = await start()
    data = await ui.txt2img(prompt="p", steps="4", width="64", height=64.0, no_such_field=1)
    assert data["info"]["steps"] == 4 and decode(data["images"][0]).size == (64, 64)
    assert "no_such_field" not in data["parameters"]


async def test_grid_first_when_saving_and_script_images_last(start: Start) -> None:
    ui = await start(extra_images=1)
    data = await ui.txt2img(prompt="p", steps=1, width=64, height=64, batch_size=2, save_images=True)
    assert len(data["images"]) == 4  # grid, two images, one script image
    assert data["info"]["index_of_first_image"] == 1 and len(data["info"]["all_seeds"]) == 2
    no_images = await ui.txt2img(prompt="p", steps=1, width=64, height=64, send_images=False)
    assert no_images["images"] == []


async def test_samplers_resolve_like_a1111(start: Start) -> None:
    ui = await start()
    split = await ui.txt2img(prompt="p", steps=1, width=64, height=64, sampler_name="DPM++ 2M Karras")
    assert split["info"]["sampler_name"] == "DPM++ 2M"
    assert "Schedule type: Karras" in split["info"]["infotexts"][0]
    alias = await ui.txt2img(prompt="p", steps=1, width=64, height=64, sampler_name="k_euler_a")
    assert alias["info"]["sampler_name"] == "Euler a"
    unknown = await ui.txt2img(prompt="p", steps=1, width=64, height=64, sampler_name="Nope")
    assert unknown["info"]["sampler_name"] == "DPM++ 2M"  # v1.9+ falls back silently


async def test_sdnext_refuses_unknown_samplers(start: Start) -> None:
    ui = await start(flavour="sdnext")
    response = await ui.post(f"{SDAPI}/txt2img", {"prompt": "p", "sampler_name": "Nope"})
    assert response.status_code == 404
    assert response.json() == {
        "error": "HTTPException",
        "code": 404,
        "detail": "Sampler not found",
        "body": "",
        "errors": "404: Sampler not found",
    }
    ok = await ui.txt2img(prompt="p", steps=1, width=64, height=64, sampler_name="euler a")
    assert ok["info"]["sampler_name"] == "Euler a"


# -- validation and errors ----------------------------------------------------------------------


async def test_validation_errors_keep_fastapis_shape(start: Start) -> None:
    a1111 = await start()
    response = await a1111.post(f"{SDAPI}/txt2img", {"steps": "many", "width": [1]})
    assert response.status_code == 422
    assert response.json() == {
        "detail": [
            {"loc": ["body", "steps"], "msg": "value is not a valid integer", "type": "type_error.integer"},
            {"loc": ["body", "width"], "msg": "value is not a valid integer", "type": "type_error.integer"},
        ]
    }
    broken = await a1111.http.post(a1111.url + f"{SDAPI}/txt2img", content=b"{not json")
    assert broken.status_code == 422 and broken.json()["detail"][0]["type"] == "value_error.jsondecode"
    forge = await start(flavour="forge")
    response = await forge.post(f"{SDAPI}/txt2img", {"steps": "many"})
    assert response.json()["detail"] == [
        {
            "type": "int_parsing",
            "loc": ["body", "steps"],
            "msg": "Input should be a valid integer, unable to parse string as an integer",
            "input": "many",
        }
    ]


async def test_unknown_scripts_are_422_in_the_shared_shape(start: Start) -> None:
    ui = await start()
    response = await ui.post(f"{SDAPI}/txt2img", {"alwayson_scripts": {"controlnet": {"args": []}}})
    assert response.status_code == 422
    assert response.json()["errors"] == "422: always on script controlnet not found"


async def test_unknown_routes_are_plain_404(start: Start) -> None:
    ui = await start()
    response = await ui.get("/sdapi/v1/no-such-route")
    assert response.status_code == 404 and response.json() == {"detail": "Not Found"}
    assert response.headers["x-process-time"]


# -- img2img -----------------------------------------------------------------------------------


async def test_img2img_renders_from_the_input(start: Start) -> None:
    ui = await start()
    source = png((96, 64))
    body = {"prompt": "make it blue", "init_images": [f"data:image/png;base64,{b64(source)}"], "steps": 4}
    response = await ui.post(f"{SDAPI}/img2img", {**body, "width": 96, "height": 64})
    assert response.status_code == 200, response.text
    data = response.json()
    image = base64.b64decode(data["images"][0])
    stamp = read_stamp(image)
    assert stamp is not None and stamp["kind"] == "edit" and stamp["mask"] is False
    assert stamp["inputs"] == [hashlib.sha256(source).hexdigest()]
    assert data["parameters"]["init_images"] is None  # only echoed with include_init_images
    info = json.loads(data["info"])
    assert info["denoising_strength"] == 0.75 and "Denoising strength: 0.75" in info["infotexts"][0]
    record = ui.emulator.requests[-1]
    assert record.json["init_images"][0].startswith("<base64: ")
    assert [(f.field, f.content_type, f.sha256) for f in record.files] == [
        ("init_images[0]", "image/png", hashlib.sha256(source).hexdigest())
    ]


@pytest.mark.parametrize("alpha_mask", [False, True])
async def test_img2img_mask_white_or_opaque_repaints(start: Start, alpha_mask: bool) -> None:
    """White repaints in a grey mask; in an RGBA mask with transparency, the opaque pixels do."""
    ui = await start()
    if alpha_mask:
        mask_image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
        mask_image.paste((0, 0, 0, 255), (0, 0, 32, 64))
    else:
        mask_image = Image.new("L", (64, 64), 0)
        mask_image.paste(255, (0, 0, 32, 64))
    out = io.BytesIO()
    mask_image.save(out, "PNG")
    body = {"prompt": "p", "init_images": [b64(png())], "mask": b64(out.getvalue()), "width": 64, "height": 64}
    data = (await ui.post(f"{SDAPI}/img2img", {**body, "steps": 2})).json()
    result = decode(data["images"][0]).convert("RGB")
    assert result.getpixel((5, 60)) == (0, 255, 255)  # the left half was repainted (inverted red)
    assert result.getpixel((58, 60)) == (255, 0, 0)
    assert "Mask blur: 4" in json.loads(data["info"])["infotexts"][0]


@pytest.mark.parametrize(
    ("flavour", "status", "body"),
    [
        (
            "a1111",
            404,
            {
                "error": "HTTPException",
                "detail": "Init image not found",
                "body": "",
                "errors": "404: Init image not found",
            },
        ),
        ("sdnext", 400, {"error": "Init image is none"}),
    ],
)
async def test_img2img_without_init_images(start: Start, flavour: str, status: int, body: dict[str, Any]) -> None:
    ui = await start(flavour=flavour)
    response = await ui.post(f"{SDAPI}/img2img", {"prompt": "p"})
    assert response.status_code == status and response.json() == body


async def test_img2img_refuses_bad_images_and_urls(start: Start) -> None:
    ui = await start()
    bad = await ui.post(f"{SDAPI}/img2img", {"init_images": ["bm90IGFuIGltYWdl"]})
    assert bad.status_code == 500 and bad.json()["detail"] == "Invalid encoded image"
    local = await ui.post(f"{SDAPI}/img2img", {"init_images": ["http://127.0.0.1/x.png"]})
    assert local.json()["detail"] == "Request to local resource not allowed"
    huge = await ui.post(f"{SDAPI}/txt2img", {"width": 100_000})
    assert huge.status_code == 500 and huge.json()["error"] == "OutOfMemoryError"
    many = await ui.post(f"{SDAPI}/img2img", {"init_images": [b64(png()), b64(png())]})
    assert many.status_code == 500 and many.json()["errors"].startswith("bad number of images passed: 2")


# -- auth and API switch -----------------------------------------------------------------------


async def test_basic_auth_like_api_auth(start: Start) -> None:
    ui = await start(auth=("alice", "s3cret-pass"))
    missing = await ui.get(f"{SDAPI}/sd-models")
    assert missing.status_code == 401 and "www-authenticate" not in missing.headers
    assert missing.json() == {
        "error": "HTTPException",
        "detail": "Not authenticated",
        "body": "",
        "errors": "401: Not authenticated",
    }
    wrong = await ui.get(f"{SDAPI}/sd-models", auth=("alice", "nope"))
    assert wrong.json()["detail"] == "Incorrect username or password"
    assert (await ui.get(f"{SDAPI}/sd-models", auth=("alice", "s3cret-pass"))).status_code == 200
    assert (await ui.get(f"{SDAPI}/loras")).status_code == 200  # an extension route, outside --api-auth


async def test_sdnext_auth_covers_every_route(start: Start) -> None:
    ui = await start(flavour="sdnext", auth=("alice", "pw"))
    response = await ui.get(f"{SDAPI}/loras")
    assert response.status_code == 401
    assert response.json() == {
        "error": "HTTPException",
        "code": 401,
        "detail": "Unauthorized",
        "body": "",
        "errors": "401: Unauthorized",
    }


async def test_api_disabled(start: Start) -> None:
    ui = await start(api_enabled=False)
    for path in ("/txt2img", "/progress", "/options"):
        response = await (ui.post(SDAPI + path, {}) if path == "/txt2img" else ui.get(SDAPI + path))
        assert response.status_code == 404 and response.json() == {"detail": "Not Found"}
    assert (await ui.get(f"{SDAPI}/loras")).status_code == 200
    with pytest.raises(ValueError, match="always on"):
        A1111Emulator(flavour="sdnext", api_enabled=False)


# -- the running job ---------------------------------------------------------------------------


async def test_progress_during_a_slow_generation(start: Start) -> None:
    ui = await start(seconds_per_step=0.025)  # 1 s in all: many polls even on a loaded machine
    idle = (await ui.get(f"{SDAPI}/progress")).json()
    assert idle["progress"] == 0 and idle["current_image"] is None and idle["state"]["job_count"] == 0
    task = asyncio.create_task(ui.txt2img(prompt="slow", steps=40, width=64, height=64))
    seen: list[dict[str, Any]] = []
    while not task.done():
        seen.append((await ui.get(f"{SDAPI}/progress")).json())
        await asyncio.sleep(0.01)
    await task
    running = [p for p in seen if p["state"]["job_count"]]
    assert len(running) >= 3
    fractions = [p["progress"] for p in running]
    assert fractions == sorted(fractions) and 0.01 <= fractions[0] < fractions[-1] <= 1
    assert running[-1]["state"]["job"] == "scripts_txt2img" and running[-1]["state"]["sampling_steps"] == 40
    assert all(p["eta_relative"] >= 0 for p in running if p["progress"] < 1)  # negative past 100%, as in A1111
    previews = [p["current_image"] for p in running if p["current_image"]]
    assert previews and all(p["state"]["sampling_step"] >= 10 for p in running if p["current_image"])
    assert decode(previews[0]).format == "PNG"
    assert (await ui.get(f"{SDAPI}/progress")).json()["state"]["job_count"] == 0


async def test_progress_can_skip_the_image_and_sdnext_adds_an_id(start: Start) -> None:
    ui = await start(flavour="sdnext", seconds_per_step=0.01)
    task = asyncio.create_task(ui.txt2img(prompt="p", steps=30, width=64, height=64, force_task_id="task(abc)"))
    await wait_until(lambda: ui.emulator.state.sampling_step >= 12)
    body = (await ui.get(f"{SDAPI}/progress", params={"skip_current_image": "true"})).json()
    await task
    assert body["current_image"] is None and body["id"] == "task(abc)"
    assert body["progress"] == round(body["progress"], 2)


async def test_generations_are_serialised(start: Start) -> None:
    ui = await start(seconds_per_step=0.01)
    first = asyncio.create_task(ui.txt2img(prompt="first", steps=30, width=64, height=64))
    await wait_until(lambda: ui.emulator.state.job_count > 0)
    second = asyncio.create_task(ui.txt2img(prompt="second", steps=5, width=64, height=64))
    await wait_until(lambda: ui.emulator.queued == 1)
    state = (await ui.get(f"{SDAPI}/progress")).json()["state"]
    assert state["sampling_steps"] == 30  # only the running job is visible
    done, _ = await asyncio.wait({first, second}, return_when=asyncio.FIRST_COMPLETED)
    assert done == {first}
    await second
    assert [job.prompt for job in ui.emulator.jobs] == ["first", "second"]


@pytest.mark.parametrize(("flavour", "status", "content"), [("a1111", 200, b"{}"), ("sdnext", 204, b"")])
async def test_interrupt_returns_what_was_made(start: Start, flavour: str, status: int, content: bytes) -> None:
    ui = await start(flavour=flavour, seconds_per_step=0.01)
    task = asyncio.create_task(ui.txt2img(prompt="p", steps=100, n_iter=2, width=64, height=64))
    await wait_until(lambda: ui.emulator.state.sampling_step >= 5)
    response = await ui.post(f"{SDAPI}/interrupt")
    assert response.status_code == status and response.content == content
    data = await task
    assert len(data["images"]) == 1 and len(data["info"]["all_seeds"]) == 2  # the second batch never ran
    stamp = read_stamp(base64.b64decode(data["images"][0]))
    assert stamp is not None and stamp["coarseness"] > 1  # partially denoised
    (job,) = ui.emulator.jobs
    assert job.interrupted and job.steps_done < 100 and job.images == 1


async def test_skip_ends_only_the_current_batch(start: Start) -> None:
    ui = await start(seconds_per_step=0.01)
    task = asyncio.create_task(ui.txt2img(prompt="p", steps=50, n_iter=2, width=64, height=64))
    await wait_until(lambda: ui.emulator.state.sampling_step >= 3)
    skip = await ui.post(f"{SDAPI}/skip")
    assert skip.status_code == 200 and skip.json() is None
    data = await task
    assert len(data["images"]) == 2
    (job,) = ui.emulator.jobs
    assert not job.interrupted and job.steps_done < 100


async def test_an_interrupt_while_idle_does_not_stop_the_next_job(start: Start) -> None:
    ui = await start()
    await ui.post(f"{SDAPI}/interrupt")
    data = await ui.txt2img(prompt="p", steps=3, width=64, height=64)
    assert len(data["images"]) == 1 and not ui.emulator.jobs[-1].interrupted


# -- options and listings ----------------------------------------------------------------------


async def test_checkpoints_switch_through_options_and_override_settings(start: Start) -> None:
    ui = await start()
    options = (await ui.get(f"{SDAPI}/options")).json()
    models = (await ui.get(f"{SDAPI}/sd-models")).json()
    assert options["sd_model_checkpoint"] == models[0]["title"]
    assert set(models[0]) == {"title", "model_name", "hash", "sha256", "filename", "config"}
    xl = models[1]
    once = await ui.txt2img(
        prompt="p", steps=1, width=64, height=64, override_settings={"sd_model_checkpoint": xl["title"]}
    )
    assert once["info"]["sd_model_name"] == "sd_xl_base_1.0"
    after = await ui.txt2img(prompt="p", steps=1, width=64, height=64)
    assert after["info"]["sd_model_name"] == "v1-5-pruned-emaonly"  # restored afterwards
    ignored = await ui.txt2img(prompt="p", steps=1, width=64, height=64, override_settings={"sd_model_checkpoint": "x"})
    assert ignored["info"]["sd_model_name"] == "v1-5-pruned-emaonly"  # unknown names are dropped silently
    switched = await ui.post(f"{SDAPI}/options", {"sd_model_checkpoint": "sd_xl_base_1.0"})
    assert switched.status_code == 200 and switched.json() is None
    assert (await ui.get(f"{SDAPI}/options")).json()["sd_model_checkpoint"] == xl["title"]
    assert (await ui.txt2img(prompt="p", steps=1, width=64, height=64))["info"]["sd_model_hash"] == xl["hash"]
    unknown = await ui.post(f"{SDAPI}/options", {"sd_model_checkpoint": "nope"})
    assert unknown.status_code == 500
    assert unknown.json() == {"error": "RuntimeError", "detail": "", "body": "", "errors": "model 'nope' not found"}


async def test_samples_format_setting_changes_the_encoding(start: Start) -> None:
    ui = await start()
    await ui.post(f"{SDAPI}/options", {"samples_format": "jpg"})
    data = await ui.txt2img(prompt="p", steps=1, width=64, height=64)
    assert base64.b64decode(data["images"][0]).startswith(b"\xff\xd8\xff")


async def test_sdnext_options_and_listings(start: Start) -> None:
    ui = await start(flavour="sdnext")
    updated = await ui.post(f"{SDAPI}/options", {"samples_format": "png"})
    assert updated.json() == {"updated": [{"samples_format": True}]}
    assert "sd_lora" not in (await ui.get(f"{SDAPI}/options")).json()
    assert set((await ui.get(f"{SDAPI}/samplers")).json()[0]) == {"name", "options"}
    assert set((await ui.get(f"{SDAPI}/schedulers")).json()[0]) == {"name", "cls", "options"}
    assert (await ui.get(f"{SDAPI}/sd-models")).json()[0]["type"] == "safetensors"
    assert (await ui.get(f"{SDAPI}/status")).json()["status"] == "idle"
    assert (await ui.post(f"{SDAPI}/skip")).status_code == 204


async def test_a1111_and_forge_listings(start: Start) -> None:
    a1111 = await start()
    samplers = (await a1111.get(f"{SDAPI}/samplers")).json()
    assert samplers[0] == {"name": "DPM++ 2M", "aliases": ["k_dpmpp_2m"], "options": {"scheduler": "karras"}}
    schedulers = (await a1111.get(f"{SDAPI}/schedulers")).json()
    assert schedulers[2] == {
        "name": "karras",
        "label": "Karras",
        "aliases": None,
        "default_rho": 7.0,
        "need_inner_model": False,
    }
    assert (await a1111.get(f"{SDAPI}/sd-vae")).status_code == 200
    assert (await a1111.get(f"{SDAPI}/sd-modules")).status_code == 404
    assert (await a1111.get(f"{SDAPI}/upscalers")).json()[0]["name"] == "None"
    forge = await start(flavour="forge", models=["flux1-dev.safetensors"], samplers=["Euler", "Euler a"])
    assert (await forge.get(f"{SDAPI}/sd-vae")).status_code == 404
    assert (await forge.get(f"{SDAPI}/sd-modules")).status_code == 200
    assert [s["name"] for s in (await forge.get(f"{SDAPI}/samplers")).json()] == ["Euler", "Euler a"]
    assert (await forge.get(f"{SDAPI}/sd-models")).json()[0]["model_name"] == "flux1-dev"


async def test_png_info_reads_the_parameters_chunk(start: Start) -> None:
    ui = await start()
    data = await ui.txt2img(prompt="a cat, sitting", negative_prompt="dogs", seed=7, steps=2, width=64, height=64)
    info = (await ui.post(f"{SDAPI}/png-info", {"image": data["images"][0]})).json()
    assert info["info"] == data["info"]["infotexts"][0]
    assert info["parameters"]["Prompt"] == "a cat, sitting" and info["parameters"]["Negative prompt"] == "dogs"
    assert info["parameters"]["Seed"] == "7" and info["parameters"]["Sampler"] == "Euler"


# -- faults, triggers and the request log --------------------------------------------------------


async def test_queued_faults_from_python_and_http(start: Start) -> None:
    ui = await start()
    ui.emulator.faults.add(ui.emulator.out_of_memory_fault(), path_contains="txt2img")
    oom = await ui.post(f"{SDAPI}/txt2img", {"prompt": "p"})
    assert oom.status_code == 500 and oom.json()["error"] == "OutOfMemoryError"
    assert oom.json()["errors"].startswith("CUDA out of memory")
    added = await ui.post("/_sandbox/faults", {"preset": "error", "args": {"status": 400, "detail": "Bad thing"}})
    assert added.status_code == 201 and len(added.json()["faults"]) == 1
    bad = await ui.post(f"{SDAPI}/txt2img", {"prompt": "p"})
    assert bad.status_code == 400 and bad.json()["errors"] == "400: Bad thing"
    refused = await ui.post("/_sandbox/faults", {"kind": "stream_error"})
    assert refused.status_code == 400


async def test_malformed_and_empty_answers(start: Start) -> None:
    ui = await start()
    ui.emulator.faults.add(Fault.malformed_json())
    malformed = await ui.post(f"{SDAPI}/txt2img", {"prompt": "p", "steps": 1, "width": 64, "height": 64})
    assert malformed.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        malformed.json()
    ui.emulator.faults.add(Fault.empty_data(omit_data_key=True))
    empty = await ui.post(f"{SDAPI}/txt2img", {"prompt": "p", "steps": 1, "width": 64, "height": 64})
    assert "images" not in empty.json()
    triggered = await ui.txt2img(prompt="p [[sandbox:empty]]", steps=1, width=64, height=64)
    assert triggered["images"] == []


@pytest.mark.parametrize(
    ("marker", "status", "check"),
    [
        ("[[sandbox:error=500]]", 500, lambda body: body["error"] == "OutOfMemoryError"),
        ("[[sandbox:error=401]]", 401, lambda body: body["detail"] == "Incorrect username or password"),
        ("[[sandbox:error=404]]", 404, lambda body: body == {"detail": "Not Found"}),
        ("[[sandbox:error=422]]", 422, lambda body: body["detail"][0]["loc"] == ["body", "prompt"]),
        ("[[sandbox:error=503]]", 503, lambda body: body["errors"].startswith("503: ")),
        ("[[sandbox:typo]]", 422, lambda body: "unknown sandbox trigger" in body["detail"][0]["msg"]),
    ],
)
async def test_error_triggers(start: Start, marker: str, status: int, check: Callable[[Any], bool]) -> None:
    ui = await start()
    response = await ui.post(f"{SDAPI}/txt2img", {"prompt": f"a cat {marker}"})
    assert response.status_code == status and check(response.json())


async def test_delay_and_hang_triggers(start: Start) -> None:
    ui = await start()
    loop = asyncio.get_running_loop()
    began = loop.time()
    await ui.txt2img(prompt="p [[sandbox:delay=0.3]]", steps=1, width=64, height=64)
    assert loop.time() - began >= 0.3
    with pytest.raises(httpx2.ReadTimeout):
        await ui.post(f"{SDAPI}/txt2img", {"prompt": "p [[sandbox:hang]]"}, timeout=0.3)
    await wait_until(lambda: not ui.emulator._queue.locked())  # the hang ends when the client leaves
    assert (await ui.txt2img(prompt="after", steps=1, width=64, height=64))["images"]


async def test_request_log_over_http(start: Start) -> None:
    ui = await start()
    await ui.txt2img(prompt="logged", steps=1, width=64, height=64)
    log = (await ui.get("/_sandbox/requests")).json()["requests"]
    assert log[-1]["path"].endswith("/sdapi/v1/txt2img") and log[-1]["json"]["prompt"] == "logged"
    assert log[-1]["status"] == 200
    jobs = (await ui.get("/_sandbox/jobs")).json()["jobs"]
    assert jobs[-1]["prompt"] == "logged" and jobs[-1]["images"] == 1
    await ui.http.delete(ui.url + "/_sandbox/requests")
    assert ui.emulator.requests == []  # control routes are not logged


async def test_closing_the_sandbox_ends_a_running_job_promptly() -> None:
    emulator = A1111Emulator(seconds_per_step=0.05)
    loop = asyncio.get_running_loop()
    async with await asyncio.to_thread(create_http_client, timeout=30) as http:
        async with serve_sandbox(Sandbox(a1111=emulator)) as running:
            url = running.urls["a1111"] + f"{SDAPI}/txt2img"
            task = asyncio.create_task(http.post(url, json={"prompt": "p", "steps": 150, "width": 64, "height": 64}))
            await wait_until(lambda: emulator.state.sampling_step >= 1)
            began = loop.time()
        assert loop.time() - began < 2
        response = await task
    assert response.status_code == 500 and response.json()["errors"] == "the sandbox is shutting down"
    assert emulator.state.job_count == 0
