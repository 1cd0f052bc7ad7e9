"""The A1111 backend over real HTTP against the web UI emulator on loopback: LibreChat's request, overrides,
progress, interrupts, img2img and masks, and every failure class with its hint."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest
from PIL import Image

from limner.backends.a1111 import A1111Backend, SDDefaults
from limner.backends.base import EditRequest, GenerateRequest, InputImage, Progress
from limner.errors import (
    ConfigurationError,
    LimnerError,
    ProviderAuthError,
    ProviderRequestError,
    ProviderResponseError,
    ProviderUnavailableError,
    UnsupportedImageError,
    UnsupportedOperationError,
)
from limner.net import create_http_client
from limner.sandbox import Fault, read_stamp
from limner.sandbox.a1111 import A1111Emulator
from limner.sandbox.server import Sandbox, serve_sandbox
from tests import images
from tests.processes import free_port

USER, PASSWORD = "alice", "pa55-w0rd-secret"
LIBRECHAT_BODY = {"cfg_scale": 4.5, "steps": 22, "width": 1024, "height": 1024}


@dataclass
class Upstream:
    emulator: A1111Emulator
    url: str
    http: httpx2.AsyncClient

    def backend(self, url: str | None = None, **kw: Any) -> A1111Backend:
        kw.setdefault("defaults", SDDefaults())
        return A1111Backend(base_url=url or self.url, http_client=self.http, **kw)

    @property
    def sent(self) -> Any:
        generations = [r for r in self.emulator.requests if r.path.endswith(("/txt2img", "/img2img"))]
        return generations[-1].json


Start = Callable[..., Awaitable[Upstream]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Start an emulator with the given knobs; everything is stopped after the test."""
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(await asyncio.to_thread(create_http_client, timeout=30))

        async def starter(**knobs: Any) -> Upstream:
            emulator = A1111Emulator(**knobs)
            running = await stack.enter_async_context(serve_sandbox(Sandbox(a1111=emulator)))
            return Upstream(emulator, running.urls["a1111"], http)

        yield starter


@pytest.fixture
async def upstream(start: Start) -> Upstream:
    return await start()


def gen(**kw: Any) -> GenerateRequest:
    values: dict[str, Any] = {"model": "stable-diffusion", "prompt": "a lighthouse at dusk, oil painting"}
    values.update(kw)
    return GenerateRequest(**values)


def edit(image: bytes, mask: bytes | None = None, **kw: Any) -> EditRequest:
    mask_input = InputImage(data=mask, media_type="image/png", name="mask.png") if mask is not None else None
    values: dict[str, Any] = {"images": (InputImage(data=image, media_type="image/png"),), "mask": mask_input}
    return EditRequest(model="stable-diffusion", prompt="make it night", **values, **kw)


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


# -- generation ----------------------------------------------------------------------------------


async def test_defaults_are_librechats_request(upstream: Upstream) -> None:
    prompt, negative = "portrait, 85mm, soft light, film grain, bokeh, detailed, (smile:1.2)", "lowres, blurry"
    (output,) = await upstream.backend().generate(gen(prompt=prompt, negative_prompt=negative), api_key=None)
    assert upstream.sent == {"prompt": prompt, "negative_prompt": negative, **LIBRECHAT_BODY}
    assert output.media_type == "image/png" and output.data is not None
    assert images.size_of(output.data) == (1024, 1024)
    info = output.provider_details["info"]
    assert output.seed == info["seed"] and isinstance(output.seed, int)
    assert info["cfg_scale"] == 4.5 and info["steps"] == 22 and info["sampler_name"] == "Euler"
    assert info["infotext"].startswith(f"{prompt}\nNegative prompt: {negative}\nSteps: 22")
    assert read_stamp(output.data)["prompt"] == prompt  # type: ignore[index]


async def test_request_overrides_the_defaults(upstream: Upstream) -> None:
    request = gen(
        size="512x768", steps=10, guidance=7.5, seed=1234, options={"sampler": "Euler a", "scheduler": "Karras"}
    )
    (output,) = await upstream.backend().generate(request, api_key=None)
    assert upstream.sent == {
        "prompt": "a lighthouse at dusk, oil painting",
        "negative_prompt": "",
        "cfg_scale": 7.5,
        "steps": 10,
        "width": 512,
        "height": 768,
        "seed": 1234,
        "sampler_name": "Euler a",
        "scheduler": "Karras",
    }
    assert output.seed == 1234 and images.size_of(output.data or b"") == (512, 768)
    assert output.provider_details["info"]["schedule_type"] == "Karras"


async def test_operator_defaults_apply(upstream: Upstream) -> None:
    defaults = SDDefaults(steps=8, cfg_scale=3.0, width=768, height=512, sampler="DPM++ 2M", scheduler="Karras")
    await upstream.backend(defaults=defaults).generate(gen(), api_key=None)
    sent = upstream.sent
    assert (sent["steps"], sent["cfg_scale"], sent["width"], sent["height"]) == (8, 3.0, 768, 512)
    assert (sent["sampler_name"], sent["scheduler"]) == ("DPM++ 2M", "Karras")


async def test_several_images_with_consecutive_seeds(upstream: Upstream) -> None:
    outputs = await upstream.backend().generate(gen(n=3, size="512x512", seed=10), api_key=None)
    assert upstream.sent["batch_size"] == 3
    assert [o.seed for o in outputs] == [10, 11, 12]
    assert len({o.data for o in outputs}) == 3
    assert [o.provider_details["info"]["infotext"].split("Seed: ")[1][:2] for o in outputs] == ["10", "11", "12"]


async def test_grid_and_script_images_are_not_outputs(start: Start) -> None:
    upstream = await start(extra_images=2)
    outputs = await upstream.backend().generate(gen(n=2, size="512x512", seed=1), api_key=None)
    assert [o.seed for o in outputs] == [1, 2]
    assert [read_stamp(o.data or b"")["variant"] for o in outputs] == [0, 1]  # type: ignore[index]


async def test_checkpoint_override(upstream: Upstream) -> None:
    backend = upstream.backend(defaults=SDDefaults(checkpoint="sd_xl_base_1.0"))
    (output,) = await backend.generate(gen(size="512x512"), api_key=None)
    assert upstream.sent["override_settings"] == {"sd_model_checkpoint": "sd_xl_base_1.0"}
    assert output.provider_details["info"]["sd_model_name"] == "sd_xl_base_1.0"
    await backend.generate(gen(size="512x512"), api_key=None)
    model_lists = [r for r in upstream.emulator.requests if r.path.endswith("/sd-models")]
    assert len(model_lists) == 1  # checked once


async def test_unknown_checkpoint_is_a_configuration_error(upstream: Upstream) -> None:
    backend = upstream.backend(defaults=SDDefaults(checkpoint="dreamshaper_8"))
    with pytest.raises(ConfigurationError) as caught:
        await backend.generate(gen(), api_key=None)
    assert "LIMNER_SD_CHECKPOINT" in str(caught.value) and "sd_xl_base_1.0.safetensors [" in str(caught.value)
    assert not any(r.path.endswith("/txt2img") for r in upstream.emulator.requests)


async def test_list_models(upstream: Upstream) -> None:
    titles = await upstream.backend().list_models()
    assert [t.split(" [")[0] for t in titles] == ["v1-5-pruned-emaonly.safetensors", "sd_xl_base_1.0.safetensors"]


async def test_jpeg_samples_are_sniffed(upstream: Upstream) -> None:
    async with httpx2.AsyncClient() as client:
        await client.post(upstream.url + "/sdapi/v1/options", json={"samples_format": "jpg"})
    (output,) = await upstream.backend().generate(gen(size="512x512"), api_key=None)
    assert output.media_type == "image/jpeg"


@pytest.mark.parametrize("flavour", ["forge", "sdnext"])
async def test_other_flavours(start: Start, flavour: str) -> None:
    upstream = await start(flavour=flavour)
    (output,) = await upstream.backend().generate(gen(size="512x512", seed=3), api_key=None)
    assert output.seed == 3 and output.media_type == "image/png"


# -- progress and cancellation --------------------------------------------------------------------


async def test_progress_reports_rising_fractions_and_a_partial_image(start: Start) -> None:
    upstream = await start(seconds_per_step=0.02)
    seen: list[Progress] = []

    async def listener(update: Progress) -> None:
        seen.append(update)

    backend = upstream.backend(progress_interval=0.03)
    (output,) = await backend.generate(gen(size="512x512", steps=30), api_key=None, progress=listener)
    assert output.data
    fractions = [p.fraction or 0.0 for p in seen]
    assert len(fractions) >= 3 and fractions == sorted(fractions)
    assert fractions[0] > 0 and fractions[0] < fractions[-1] <= 1
    assert all(p.message and p.message.startswith("step ") and p.message.endswith("/30") for p in seen)
    partials = [p for p in seen if p.partial_image]
    assert partials and all(p.partial_media_type == "image/png" for p in partials)
    assert images.size_of(partials[0].partial_image or b"") == (512, 512)
    assert read_stamp(partials[0].partial_image or b"")["coarseness"] > 1  # type: ignore[index]
    assert not any(r.path.endswith("/interrupt") for r in upstream.emulator.requests)


async def test_no_polling_without_a_listener(upstream: Upstream) -> None:
    await upstream.backend(progress_interval=0.001).generate(gen(size="512x512"), api_key=None)
    assert not any(r.path.endswith("/progress") for r in upstream.emulator.requests)


async def test_a_failing_listener_does_not_fail_the_generation(start: Start) -> None:
    upstream = await start(seconds_per_step=0.01)
    calls: list[Progress] = []

    async def listener(update: Progress) -> None:
        calls.append(update)
        raise RuntimeError("listener bug")

    backend = upstream.backend(progress_interval=0.02)
    outputs = await backend.generate(gen(size="512x512", steps=30), api_key=None, progress=listener)
    assert len(outputs) == 1 and len(calls) == 1


async def test_cancelling_interrupts_the_upstream_job(start: Start) -> None:
    upstream = await start(seconds_per_step=0.02)
    task = asyncio.create_task(upstream.backend().generate(gen(size="512x512", steps=150), api_key=None))
    await wait_until(lambda: upstream.emulator.state.sampling_step >= 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert upstream.emulator.requests[-1].path.endswith("/sdapi/v1/interrupt")
    await wait_until(lambda: bool(upstream.emulator.jobs))
    (job,) = upstream.emulator.jobs
    assert job.interrupted and job.steps_done < 150


async def test_a_timeout_interrupts_and_is_unavailable(start: Start) -> None:
    upstream = await start(seconds_per_step=0.02)
    with pytest.raises(ProviderUnavailableError, match=r"did not answer within 0\.3 s") as caught:
        await upstream.backend(timeout=0.3).generate(gen(size="512x512", steps=150), api_key=None)
    assert caught.value.provider == "a1111"
    await wait_until(lambda: bool(upstream.emulator.jobs))
    assert upstream.emulator.jobs[0].interrupted


async def test_generations_of_one_backend_take_turns(start: Start) -> None:
    upstream = await start(seconds_per_step=0.005)
    backend = upstream.backend()
    await asyncio.gather(
        *(backend.generate(gen(prompt=f"p{i}", size="64x64", steps=10), api_key=None) for i in range(3))
    )
    assert upstream.emulator.queued == 0 and len(upstream.emulator.jobs) == 3


# -- img2img --------------------------------------------------------------------------------------


async def test_edit_sends_the_input_and_renders_from_it(upstream: Upstream) -> None:
    source = images.png(640, 480, (10, 200, 30))
    (output,) = await upstream.backend().edit(edit(source, negative_prompt="daylight"), api_key=None)
    sent = upstream.sent
    assert sent["denoising_strength"] == 0.75 and (sent["width"], sent["height"]) == (640, 480)
    assert sent["negative_prompt"] == "daylight" and "mask" not in sent
    stamp = read_stamp(output.data or b"")
    assert stamp is not None and stamp["kind"] == "edit" and stamp["inputs"] == [hashlib.sha256(source).hexdigest()]
    assert [f.field for f in upstream.emulator.requests[-1].files] == ["init_images[0]"]


async def test_edit_overrides_and_large_inputs_fit_the_default_area(upstream: Upstream) -> None:
    source = images.png(4000, 3000)
    await upstream.backend().edit(edit(source, strength=0.4, steps=4), api_key=None)
    sent = upstream.sent
    assert sent["denoising_strength"] == 0.4 and sent["steps"] == 4
    assert (sent["width"], sent["height"]) == (1176, 880)  # ~1024² pixels, 4:3, multiples of 8
    await upstream.backend().edit(edit(source, size="512x512", steps=1), api_key=None)
    assert (upstream.sent["width"], upstream.sent["height"]) == (512, 512)


async def test_mask_transparent_area_becomes_the_white_repaint_area(upstream: Upstream) -> None:
    captured: list[bytes] = []

    async def capture(request: httpx2.Request) -> None:
        if request.url.path.endswith("/img2img"):
            captured.append(request.content)

    upstream.http.event_hooks["request"].append(capture)
    source, mask = images.png(64, 64, (255, 0, 0)), images.mask_png(64, 64)
    options = {"inpainting_fill": 1, "mask_blur": 0, "inpaint_full_res": False}
    request = edit(source, mask, size="64x64", steps=2, options=options)
    (output,) = await upstream.backend().edit(request, api_key=None)
    body = json.loads(captured[-1])
    assert (body["inpainting_fill"], body["mask_blur"], body["inpaint_full_res"]) == (1, 0, False)
    sent_mask = Image.open(io.BytesIO(base64.b64decode(body["mask"])))
    assert sent_mask.mode == "L"  # no alpha: the web UI would read alpha with the opposite meaning
    with Image.open(io.BytesIO(mask)) as original:
        transparent = [original.getpixel((x, y))[3] == 0 for y in range(64) for x in range(64)]  # type: ignore[index]
    white = [sent_mask.getpixel((x, y)) == 255 for y in range(64) for x in range(64)]
    assert white == transparent and any(white) and not all(white)
    result = Image.open(io.BytesIO(output.data or b"")).convert("RGB")
    assert result.getpixel((32, 40)) == (0, 255, 255)  # repainted (the emulator inverts) inside the hole
    assert result.getpixel((2, 60)) == (255, 0, 0)  # kept outside it
    assert read_stamp(output.data or b"")["mask"] is True  # type: ignore[index]


async def test_a_mask_without_transparency_is_refused_before_sending(upstream: Upstream) -> None:
    with pytest.raises(UnsupportedImageError, match="transparent"):
        await upstream.backend().edit(edit(images.png(), images.png()), api_key=None)
    assert upstream.emulator.requests == []


# -- the profile ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "needle"),
    [
        (gen(size="100x100"), "multiples of 8"),
        (gen(size="16x512"), "at least 64"),
        (gen(size="8192x8192"), "4096"),
        (gen(quality="high"), "quality"),
        (gen(output_format="webp"), "output_format"),
        (gen(n=9), "at most 8"),
        (gen(options={"cfg_rescale": 1}), "cfg_rescale"),
        (gen(options={"mask_blur": 4}), "with a mask"),
        (gen(options={"sampler": ""}), "must be a name"),
        (
            EditRequest(
                model="stable-diffusion",
                prompt="p",
                images=(InputImage(data=images.png(), media_type="image/png"),) * 2,
            ),
            "at most 1 input image",
        ),
        (edit(images.png(), images.mask_png(64, 48), options={"inpainting_fill": 7}), "from 0 to 3"),
    ],
)
async def test_unsupported_requests_fail_before_any_request(
    upstream: Upstream, request_: GenerateRequest | EditRequest, needle: str
) -> None:
    backend = upstream.backend()
    call = backend.edit if isinstance(request_, EditRequest) else backend.generate
    with pytest.raises(UnsupportedOperationError, match=needle):
        await call(request_, api_key=None)  # type: ignore[arg-type]
    assert upstream.emulator.requests == []


# -- failures -----------------------------------------------------------------------------------------


async def test_connection_refused_names_the_url_and_api_flag() -> None:
    async with await asyncio.to_thread(create_http_client, timeout=2) as http:
        backend = A1111Backend(base_url="http://127.0.0.1:9", http_client=http, defaults=SDDefaults())
        with pytest.raises(ProviderUnavailableError) as caught:
            await backend.generate(gen(), api_key=None)
    assert "SD_WEBUI_URL" in str(caught.value) and "--api" in str(caught.value) and "--listen" in str(caught.value)


def test_a_bad_url_fails_fast() -> None:
    with pytest.raises(ConfigurationError, match="SD_WEBUI_URL"):
        A1111Backend(base_url="localhost:7860", http_client=None, defaults=SDDefaults())  # type: ignore[arg-type]


async def test_credentials_from_settings_url_or_call(start: Start) -> None:
    upstream = await start(auth=(USER, PASSWORD))
    await upstream.backend(auth=(USER, PASSWORD)).generate(gen(size="64x64"), api_key=None)
    with_userinfo = upstream.url.replace("http://", f"http://{USER}:{PASSWORD}@")
    backend = upstream.backend(with_userinfo)
    assert PASSWORD not in backend.endpoint and PASSWORD not in backend.base_url
    await backend.generate(gen(size="64x64"), api_key=None)
    await upstream.backend().generate(gen(size="64x64"), api_key=f"{USER}:{PASSWORD}")
    assert len(upstream.emulator.jobs) == 3


@pytest.mark.parametrize("auth", [None, (USER, "wrong-password")])
async def test_rejected_credentials_are_an_auth_error(start: Start, auth: tuple[str, str] | None) -> None:
    upstream = await start(auth=(USER, PASSWORD))
    with pytest.raises(ProviderAuthError) as caught:
        await upstream.backend(auth=auth).generate(gen(), api_key=None)
    text = str(caught.value)
    assert "LIMNER_SD_AUTH" in text and "--api-auth" in text and caught.value.status_code == 401
    assert "wrong-password" not in text and PASSWORD not in text


async def test_api_not_enabled(start: Start) -> None:
    upstream = await start(api_enabled=False)
    with pytest.raises(ProviderRequestError, match="API is not enabled") as caught:
        await upstream.backend().generate(gen(), api_key=None)
    assert "--api" in str(caught.value) and "SD_WEBUI_URL" in str(caught.value)


async def test_a_url_that_is_not_the_web_ui(upstream: Upstream) -> None:
    backend = upstream.backend(upstream.url.replace("/a1111", "/elsewhere"))
    with pytest.raises(ProviderRequestError, match="API is not enabled") as caught:
        await backend.generate(gen(), api_key=None)
    assert "SD_WEBUI_URL" in str(caught.value) and caught.value.status_code == 404


async def test_sdnext_unknown_sampler_names_the_setting(start: Start) -> None:
    upstream = await start(flavour="sdnext")
    with pytest.raises(ProviderRequestError, match="Sampler not found") as caught:
        await upstream.backend(defaults=SDDefaults(sampler="Nope")).generate(gen(), api_key=None)
    assert "LIMNER_SD_SAMPLER" in str(caught.value) and caught.value.status_code == 404


FaultFor = Callable[[A1111Emulator], Fault]


@pytest.mark.parametrize(
    ("fault", "error", "needle"),
    [
        (lambda e: e.out_of_memory_fault(), ProviderUnavailableError, "out of GPU memory"),
        (lambda e: e.exception_fault("NansException: A tensor with all NaNs"), ProviderUnavailableError, "NaNs"),
        (lambda e: e.error_fault(400, "Sampler not found"), ProviderRequestError, "LIMNER_SD_SAMPLER"),
        (
            lambda e: Fault.raw_error(422, {"detail": [{"loc": ["body", "steps"], "msg": "bad", "type": "x"}]}),
            ProviderRequestError,
            "steps: bad",
        ),
        (lambda e: Fault.empty_data(), ProviderResponseError, "no images"),
        (lambda e: Fault.empty_data(omit_data_key=True), ProviderResponseError, "no list of images"),
        (lambda e: Fault.malformed_json(), ProviderResponseError, "not valid JSON"),
    ],
)
async def test_each_failure_maps_to_its_class(
    upstream: Upstream, fault: FaultFor, error: type[LimnerError], needle: str
) -> None:
    upstream.emulator.faults.add(fault(upstream.emulator), path_contains="txt2img")
    with pytest.raises(error) as caught:
        await upstream.backend().generate(gen(size="64x64"), api_key=None)
    assert type(caught.value) is error and needle in str(caught.value)
    assert getattr(caught.value, "provider", None) == "a1111"


async def test_prompt_triggers_end_to_end(upstream: Upstream) -> None:
    backend = upstream.backend(timeout=0.5)
    with pytest.raises(ProviderUnavailableError, match="GPU memory"):
        await backend.generate(gen(prompt="p [[sandbox:error=500]]"), api_key=None)
    with pytest.raises(ProviderResponseError):
        await backend.generate(gen(prompt="p [[sandbox:empty]]", size="64x64"), api_key=None)
    with pytest.raises(ProviderUnavailableError, match="did not answer"):
        await backend.generate(gen(prompt="p [[sandbox:hang]]"), api_key=None)


async def test_passwords_never_appear_in_errors(start: Start) -> None:
    upstream = await start(auth=(USER, PASSWORD))
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    echo = f"auth {USER}:{PASSWORD} header Basic {token} pw={PASSWORD}"
    upstream.emulator.faults.add(upstream.emulator.exception_fault(echo), path_contains="txt2img", times=2)
    with pytest.raises(ProviderUnavailableError) as caught:
        await upstream.backend(auth=(USER, PASSWORD)).generate(gen(), api_key=None)
    assert PASSWORD not in str(caught.value) and token not in str(caught.value)
    with pytest.raises(ProviderUnavailableError) as per_call:
        await upstream.backend().generate(gen(), api_key=f"{USER}:{PASSWORD}")
    assert PASSWORD not in str(per_call.value) and token not in str(per_call.value)


# --- retries (one policy for every upstream: backends/retries.py) -----------------------------------


async def test_a_busy_web_ui_is_retried_and_a_failed_generation_is_not(upstream: Upstream) -> None:
    emulator = upstream.emulator
    emulator.faults.add(emulator.error_fault(503, "busy"), path_contains="txt2img", times=2)
    (output,) = await upstream.backend(max_retries=2).generate(gen(size="64x64"), api_key=None)
    assert output.data  # 503: the web UI did not start it, so asking again is safe
    assert len([r for r in emulator.requests if r.path.endswith("/txt2img")]) == 3

    before = len(emulator.requests)
    emulator.faults.add(emulator.error_fault(500, "CUDA out of memory"), path_contains="txt2img", times=3)
    with pytest.raises(ProviderUnavailableError):
        await upstream.backend(max_retries=2).generate(gen(size="64x64"), api_key=None)
    assert len([r for r in emulator.requests[before:] if r.path.endswith("/txt2img")]) == 1  # may have run


async def test_a_web_ui_that_is_not_listening_is_tried_again(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="limner.backends.retries")
    async with await asyncio.to_thread(create_http_client, timeout=5) as http:
        closed = f"http://127.0.0.1:{free_port()}"
        backend = A1111Backend(base_url=closed, http_client=http, defaults=SDDefaults(), max_retries=2)
        with pytest.raises(ProviderUnavailableError, match="Could not connect"):
            await backend.generate(gen(size="64x64"), api_key=None)
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 2 and all("not_sent" in line for line in retries)
