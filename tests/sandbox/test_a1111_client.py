"""``webuiapi`` (PyPI; the widely used AUTOMATIC1111 client) against the A1111 emulator, at the base URL
``limner sandbox`` prints plus ``/sdapi/v1``, covering each public method of ``WebUIApi`` that maps to a
route the emulator serves.

Not covered, because the emulator serves no such route: ``get_artists`` and ``get_artist_categories``
(A1111 removed those routes; the emulator answers 404 as A1111 does), the extension helpers
(``controlnet_*``, ``prompt_gen``, ``list_prompt_gen_models`` and the interface classes, which call
extension routes) and ``use_async=True`` (it needs aiohttp, which limner does not install). The client
is synchronous (``requests``), so each call runs in a worker thread while the emulator serves on the loop.
"""

from __future__ import annotations

import asyncio
import functools
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
import webuiapi
from PIL import Image, PngImagePlugin

from limner.sandbox import read_stamp
from limner.sandbox.a1111 import A1111Emulator
from limner.sandbox.a1111_catalog import Flavour
from limner.sandbox.server import Sandbox, serve_sandbox

T = TypeVar("T")


@dataclass
class WebUI:
    emulator: A1111Emulator
    printed: str
    api: webuiapi.WebUIApi

    async def call(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one blocking client call off the event loop that serves the emulator."""
        return await asyncio.to_thread(functools.partial(method, *args, **kwargs))

    def paths(self) -> list[tuple[str, str, int | None]]:
        return [(r.method, r.path.removeprefix("/a1111"), r.status) for r in self.emulator.requests]


Start = Callable[..., Awaitable[WebUI]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    async with AsyncExitStack() as stack:

        async def factory(*, login: tuple[str, str] | None = None, **knobs: Any) -> WebUI:
            emulator = A1111Emulator(**knobs)
            running = await stack.enter_async_context(serve_sandbox(Sandbox(a1111=emulator)))
            printed = running.urls["a1111"]
            user, password = login or (None, None)
            client = functools.partial(webuiapi.WebUIApi, baseurl=f"{printed}/sdapi/v1", username=user)
            api = await asyncio.to_thread(client, password=password)  # the constructor asks for /scripts
            stack.callback(api.session.close)
            return WebUI(emulator, printed, api)

        yield factory


@pytest.fixture
async def webui(start: Start) -> WebUI:
    return await start()


def picture(width: int = 64, height: int = 48, color: tuple[int, int, int] = (20, 160, 40)) -> Image.Image:
    return Image.new("RGB", (width, height), color)


def stamp_of(image: Image.Image) -> dict[str, Any] | None:
    """The renderer's stamp of a picture the client decoded (its text chunks re-encoded as they came)."""
    chunks = PngImagePlugin.PngInfo()
    for key, value in image.info.items():
        if isinstance(key, str) and isinstance(value, str):
            chunks.add_text(key, value)
    out = io.BytesIO()
    image.save(out, "PNG", pnginfo=chunks)
    return read_stamp(out.getvalue())


# --- generation ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", ["a1111", "forge", "sdnext"])
async def test_txt2img_returns_the_images_and_their_info(start: Start, flavour: Flavour) -> None:
    webui = await start(flavour=flavour)
    result = await webui.call(
        webui.api.txt2img, prompt="a lighthouse at dusk", width=128, height=96, seed=11, batch_size=2, steps=4
    )
    assert [image.size for image in result.images] == [(128, 96), (128, 96)]
    assert result.info["seed"] == 11 and result.info["all_seeds"] == [11, 12]
    assert result.parameters["prompt"] == "a lighthouse at dusk"
    stamp = stamp_of(result.image)
    assert stamp is not None and stamp["prompt"] == "a lighthouse at dusk"
    assert ("POST", "/sdapi/v1/txt2img", 200) in webui.paths()


async def test_img2img_with_a_mask_edits_the_given_image(webui: WebUI) -> None:
    source, mask = picture(96, 96), Image.new("L", (96, 96), 0)
    mask.paste(255, (24, 24, 72, 72))
    result = await webui.call(
        webui.api.img2img, images=[source], mask_image=mask, prompt="a red door", width=96, height=96, steps=4
    )
    assert result.image.size == (96, 96)
    stamp = stamp_of(result.image)
    assert stamp is not None and stamp["kind"] == "edit" and stamp["mask"] is True
    (post,) = [r for r in webui.emulator.requests if r.path.endswith("/img2img")]
    assert [file.field for file in post.files] == ["init_images[0]", "mask"]


async def test_png_info_reads_back_the_generation_parameters(webui: WebUI) -> None:
    generated = await webui.call(webui.api.txt2img, prompt="a heron", width=64, height=64, seed=3, steps=4)
    info = await webui.call(webui.api.png_info, generated.image)
    assert info.info.startswith("a heron\n") and "Seed: 3" in info.info
    assert info.parameters["Prompt"] == "a heron" and info.parameters["Seed"] == "3"


# --- postprocessing and interrogation -------------------------------------------------------------------


async def test_extra_single_image_upscales_by_the_requested_factor(webui: WebUI) -> None:
    generated = await webui.call(webui.api.txt2img, prompt="a heron", width=64, height=48, steps=4)
    result = await webui.call(webui.api.extra_single_image, generated.image, upscaler_1="Lanczos", upscaling_resize=2)
    assert result.image.size == (128, 96)
    assert result.info == "<p>Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos</p>"
    assert result.image.info["postprocessing"] == "Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos"
    assert result.image.info["parameters"] == generated.info["infotexts"][0]  # the input's chunks are kept
    stamp = stamp_of(result.image)
    assert stamp is not None and stamp["prompt"] == "a heron"


async def test_extra_single_image_to_a_size_crops_onto_the_canvas(webui: WebUI) -> None:
    result = await webui.call(
        webui.api.extra_single_image,
        picture(64, 48),
        resize_mode=1,
        upscaling_resize_w=100,
        upscaling_resize_h=60,
        upscaler_1="R-ESRGAN 4x+",
    )
    assert result.image.size == (100, 60)
    assert result.info == (
        "<p>Postprocess upscale to: 100x60, Postprocess crop to: 100x60, Postprocess upscaler: R-ESRGAN 4x+</p>"
    )
    # A1111 sizes the upscale 96x72 (100x75 rounded down to multiples of 8) and pastes it centred: black bars.
    assert result.image.getpixel((0, 30)) == (0, 0, 0) and result.image.getpixel((50, 30)) != (0, 0, 0)


async def test_extra_single_image_without_an_upscaler_leaves_the_image_as_it_is(webui: WebUI) -> None:
    result = await webui.call(webui.api.extra_single_image, picture(64, 48), upscaling_resize=4)
    assert result.image.size == (64, 48) and result.info == "<p></p>"


async def test_extra_single_image_names_an_unknown_upscaler(webui: WebUI) -> None:
    with pytest.raises(RuntimeError) as caught:
        await webui.call(webui.api.extra_single_image, picture(), upscaler_1="SwinIR 4x")
    status, text = caught.value.args
    assert status == 500 and '"error":"AssertionError"' in text and "could not find upscaler named SwinIR 4x" in text


async def test_extra_batch_images_upscales_each_image(webui: WebUI) -> None:
    images = [picture(64, 48), picture(32, 32, (200, 30, 30))]
    result = await webui.call(
        webui.api.extra_batch_images, images, name_list=["a.png", "b.png"], upscaler_1="Nearest", upscaling_resize=3
    )
    assert [image.size for image in result.images] == [(192, 144), (96, 96)]
    assert result.info == "<p>Postprocess upscale by: 3.0, Postprocess upscaler: Nearest</p>"
    (post,) = [r for r in webui.emulator.requests if r.path.endswith("/extra-batch-images")]
    assert [file.field for file in post.files] == ["imageList[0]", "imageList[1]"]


async def test_interrogate_captions_a_generated_image_with_its_prompt(webui: WebUI) -> None:
    generated = await webui.call(webui.api.txt2img, prompt="a red fox in fresh snow", width=64, height=64, steps=4)
    clip = await webui.call(webui.api.interrogate, generated.image)
    tags = await webui.call(webui.api.interrogate, generated.image, model="deepdanbooru")
    assert clip.info == "a red fox in fresh snow"
    assert tags.info == "red, fox, fresh, snow"


async def test_interrogate_describes_an_image_without_a_prompt(webui: WebUI) -> None:
    clip = await webui.call(webui.api.interrogate, picture(64, 64, (20, 160, 40)))
    wide = await webui.call(webui.api.interrogate, picture(120, 40, (30, 80, 220)), model="deepdanbooru")
    assert clip.info == "a green square picture"
    assert wide.info == "no_humans, simple_background, blue_theme"


async def test_interrogate_with_an_unknown_model_is_404(webui: WebUI) -> None:
    with pytest.raises(RuntimeError) as caught:
        await webui.call(webui.api.interrogate, picture(), model="blip")
    assert caught.value.args[0] == 404 and "Model not found" in caught.value.args[1]


# --- settings, listings and controls --------------------------------------------------------------------


async def test_options_and_the_model_helpers(webui: WebUI) -> None:
    names = await webui.call(webui.api.util_get_model_names)
    assert names == sorted(model["title"] for model in await webui.call(webui.api.get_sd_models))
    await webui.call(webui.api.util_set_model, "sd_xl_base")  # the client picks the closest title
    current = await webui.call(webui.api.util_get_current_model)
    assert current.startswith("sd_xl_base_1.0.safetensors [")
    assert (await webui.call(webui.api.get_options))["sd_model_checkpoint"] == current
    assert await webui.call(webui.api.set_options, {"samples_format": "png"}) is None


async def test_set_options_with_an_unknown_checkpoint_is_a_500(webui: WebUI) -> None:
    answer = await webui.call(webui.api.set_options, {"sd_model_checkpoint": "missing.safetensors"})
    assert answer["error"] == "RuntimeError" and "missing.safetensors" in answer["errors"]


async def test_samplers_and_schedulers(webui: WebUI) -> None:
    samplers = await webui.call(webui.api.util_get_sampler_names)
    schedulers = await webui.call(webui.api.util_get_scheduler_names)
    assert "Euler a" in samplers and "DPM++ 2M" in samplers
    assert {"automatic", "karras", "exponential"} <= set(schedulers)
    assert (await webui.call(webui.api.get_samplers))[0]["name"] == "DPM++ 2M"
    assert (await webui.call(webui.api.get_schedulers))[0]["label"] == "Automatic"


async def test_every_listing_answers_in_a1111_shapes(webui: WebUI) -> None:
    api = webui.api
    upscalers = await webui.call(api.get_upscalers)
    assert {"None", "Lanczos", "Nearest", "R-ESRGAN 4x+"} <= {u["name"] for u in upscalers}
    assert set(upscalers[0]) == {"name", "model_name", "model_path", "model_url", "scale"}
    assert (await webui.call(api.get_latent_upscale_modes))[0] == {"name": "Latent"}
    assert [set(vae) for vae in await webui.call(api.get_sd_vae)] == [{"model_name", "filename"}]
    assert [set(lora) for lora in await webui.call(api.get_loras)] == [{"name", "alias", "path", "metadata"}]
    assert [set(item) for item in await webui.call(api.get_hypernetworks)] == [{"name", "path"}]
    assert [r["name"] for r in await webui.call(api.get_face_restorers)] == ["CodeFormer", "GFPGAN"]
    realesrgan = await webui.call(api.get_realesrgan_models)
    assert all(set(item) == {"name", "path", "scale"} for item in realesrgan)
    assert {"R-ESRGAN 4x+", "R-ESRGAN 2x+"} <= {item["name"] for item in realesrgan}
    assert [set(style) for style in await webui.call(api.get_prompt_styles)] == [{"name", "prompt", "negative_prompt"}]
    embeddings = await webui.call(api.get_embeddings)
    assert set(embeddings) == {"loaded", "skipped"}
    assert all(
        set(e) == {"step", "sd_checkpoint", "sd_checkpoint_name", "shape", "vectors"}
        for e in embeddings["loaded"].values()
    )
    memory = await webui.call(api.get_memory)
    assert set(memory) == {"ram", "cuda"} and set(memory["ram"]) == {"free", "used", "total"}
    assert await webui.call(api.get_scripts) == {"txt2img": [], "img2img": []}
    flags = await webui.call(api.get_cmd_flags)
    assert flags["api"] is True and flags["api_auth"] is None


async def test_the_constructor_checks_extensions_through_scripts(webui: WebUI) -> None:
    assert ("GET", "/sdapi/v1/scripts", 200) in webui.paths()
    assert not (webui.api.has_controlnet or webui.api.has_adetailer or webui.api.has_animatediff)
    await webui.call(webui.api.check_extensions)
    assert webui.paths().count(("GET", "/sdapi/v1/scripts", 200)) == 2


async def test_progress_interrupt_skip_and_refresh_when_idle(webui: WebUI) -> None:
    progress = await webui.call(webui.api.get_progress)
    assert progress["progress"] == 0 and progress["state"]["job_count"] == 0
    await webui.call(webui.api.util_wait_for_ready)  # returns at once: nothing runs
    assert await webui.call(webui.api.interrupt) == {}
    assert await webui.call(webui.api.skip) is None
    assert await webui.call(webui.api.refresh_checkpoints) is None
    assert webui.emulator.state.interrupted and webui.emulator.state.skipped


async def test_custom_get_and_post_under_the_base_url(webui: WebUI) -> None:
    models = await webui.call(webui.api.custom_get, "sd-models", baseurl=True)
    assert models == await webui.call(webui.api.get_sd_models)
    body = {"image": webuiapi.b64_img(picture(64, 64, (220, 30, 30))), "model": "clip"}
    result = await webui.call(webui.api.custom_post, "interrogate", body, baseurl=True)
    assert result.info == "a red square picture"
    with pytest.raises(RuntimeError) as caught:
        await webui.call(webui.api.custom_post, "interrogate", {"image": "not base64"}, baseurl=True)
    assert caught.value.args[0] == 500 and "Invalid encoded image" in caught.value.args[1]


async def test_basic_auth_through_the_client(start: Start) -> None:
    webui = await start(auth=("alice", "s3cret"), login=("alice", "s3cret"))
    assert (await webui.call(webui.api.get_cmd_flags))["api_auth"] == "alice:s3cret"
    anonymous = await asyncio.to_thread(webuiapi.WebUIApi, baseurl=webui.api.baseurl)
    try:
        answer = await webui.call(anonymous.get_options)
    finally:
        anonymous.session.close()
    assert answer["detail"] == "Not authenticated"
