"""The OpenAI Images emulator, driven by the real ``openai`` SDK over loopback."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import openai
import pytest
from openai.types import ImagesResponse
from PIL import Image

from limner.sandbox import (
    Fault,
    OpenAIImagesEmulator,
    RunningSandbox,
    Sandbox,
    read_stamp,
    render_edit,
    render_generation,
    serve_sandbox,
)

KEY = "sk-sandbox-test-key-0001"
AZURE_VERSION = "2025-04-01-preview"
OCTET_MESSAGE = (
    "Invalid file 'image': unsupported mimetype ('application/octet-stream'). "
    "Supported file formats are 'image/jpeg', 'image/png', and 'image/webp'."
)


# -- helpers -------------------------------------------------------------------------------------


def solid_png(colour: tuple[int, ...], size: tuple[int, int] = (256, 256), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def half_transparent_mask(size: tuple[int, int] = (256, 256)) -> bytes:
    """Left half alpha 0 (edit here), right half opaque (keep)."""
    mask = Image.new("RGBA", size, (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, size[0] // 2, size[1]))
    buffer = io.BytesIO()
    mask.save(buffer, "PNG")
    return buffer.getvalue()


def decode(b64: str | None) -> Image.Image:
    assert b64 is not None
    assert "\n" not in b64
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def pixel(image: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    value = image.convert("RGB").getpixel(xy)
    assert isinstance(value, tuple)
    return value


def close_to(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 12) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def emulator() -> OpenAIImagesEmulator:
    return OpenAIImagesEmulator(
        accepted_keys={KEY},
        azure_deployments={"my-image-dep": "gpt-image-1.5", "dalle3": "dall-e-3", "mini": "gpt-image-1-mini"},
    )


@pytest.fixture
async def running(emulator: OpenAIImagesEmulator) -> AsyncIterator[RunningSandbox]:
    async with serve_sandbox(Sandbox(openai=emulator)) as running:
        yield running


@pytest.fixture
async def http(running: RunningSandbox) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient() as client:
        yield client


@pytest.fixture
def client(running: RunningSandbox, http: httpx2.AsyncClient) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=KEY, base_url=running.urls["openai"], http_client=http, max_retries=0)


@pytest.fixture
def azure(running: RunningSandbox, http: httpx2.AsyncClient) -> openai.AsyncAzureOpenAI:
    return openai.AsyncAzureOpenAI(
        api_key=KEY,
        azure_endpoint=running.urls["azure_openai"],
        api_version=AZURE_VERSION,
        http_client=http,
        max_retries=0,
    )


# -- generations ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "size", "fmt", "quality", "expected_tokens"),
    [
        ("gpt-image-1.5", "1024x1536", "png", "medium", 1584),
        ("gpt-image-1-mini", "1536x1024", "jpeg", "low", 400),
        ("chatgpt-image-latest", "1024x1024", "webp", "high", 4160),
        ("gpt-image-2", "1024x1024", "png", "high", 7024),
        ("gpt-image-2.5-flare", "1024x1024", "jpeg", "xhigh", 10536),
    ],
)
async def test_generation_per_model_family(
    client: openai.AsyncOpenAI, model: str, size: str, fmt: Any, quality: Any, expected_tokens: int
) -> None:
    raw = await client.images.with_raw_response.generate(
        model=model, prompt="a red kite over green hills", size=size, output_format=fmt, quality=quality
    )
    assert raw.headers["x-request-id"].startswith("req_")
    assert int(raw.headers["openai-processing-ms"]) >= 1
    result = raw.parse()
    assert result.data is not None
    image = decode(result.data[0].b64_json)
    assert f"{image.width}x{image.height}" == size
    assert image.format == {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt]
    assert (result.size, result.output_format, result.quality, result.background) == (size, fmt, quality, "opaque")
    assert result.data[0].url is None
    usage = result.usage
    assert usage is not None
    assert usage.input_tokens_details.text_tokens == 6
    assert usage.input_tokens_details.image_tokens == 0
    assert usage.output_tokens == expected_tokens
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


async def test_auto_settings_are_resolved(client: openai.AsyncOpenAI) -> None:
    result = await client.images.generate(model="gpt-image-1.5", prompt="auto things")
    assert (result.size, result.quality, result.background, result.output_format) == (
        "1024x1024",
        "high",
        "opaque",
        "png",
    )
    mini = await client.images.generate(model="gpt-image-1-mini", prompt="auto things", quality="auto")
    assert mini.quality == "medium"


async def test_n_images_are_distinct(client: openai.AsyncOpenAI) -> None:
    result = await client.images.generate(model="gpt-image-1.5", prompt="three cats", n=3, size="1024x1024")
    assert result.data is not None
    assert len(result.data) == 3
    payloads = [item.b64_json for item in result.data]
    assert len(set(payloads)) == 3
    stamps = [read_stamp(base64.b64decode(p or "")) for p in payloads]
    assert [stamp and stamp["variant"] for stamp in stamps] == [0, 1, 2]
    assert result.usage is not None
    assert result.usage.output_tokens == 3 * 4160


async def test_transparent_background_keeps_alpha(client: openai.AsyncOpenAI) -> None:
    result = await client.images.generate(
        model="gpt-image-1.5", prompt="a sticker", background="transparent", output_format="png"
    )
    assert result.background == "transparent"
    assert result.data is not None
    image = decode(result.data[0].b64_json)
    assert image.mode == "RGBA"
    extrema = image.getchannel("A").getextrema()
    assert isinstance(extrema, tuple)
    assert extrema[0] == 0


async def test_gpt_image_2_arbitrary_sizes(client: openai.AsyncOpenAI) -> None:
    result = await client.images.generate(model="gpt-image-2", prompt="wide", size="2048x1152")
    assert result.size == "2048x1152"
    assert result.data is not None
    assert decode(result.data[0].b64_json).size == (2048, 1152)
    for bad in ("1000x1000", "3072x768", "4096x2048", "512x512"):
        with pytest.raises(openai.BadRequestError) as caught:
            await client.images.generate(model="gpt-image-2", prompt="wide", size=bad)
        assert (caught.value.code, caught.value.param) == ("invalid_value", "size")


@pytest.mark.parametrize(
    ("kwargs", "code", "param"),
    [
        ({"model": "gpt-image-1.5", "response_format": "b64_json"}, "unknown_parameter", "response_format"),
        ({"model": "gpt-image-1.5", "style": "vivid"}, "unknown_parameter", "style"),
        ({"model": "gpt-image-1.5", "size": "512x512"}, "invalid_value", "size"),
        ({"model": "gpt-image-1.5", "quality": "hd"}, "invalid_value", "quality"),
        ({"model": "gpt-image-1.5", "n": 11}, "integer_above_max_value", "n"),
        ({"model": "gpt-image-1.5", "n": 0}, "integer_below_min_value", "n"),
        (
            {"model": "gpt-image-1.5", "background": "transparent", "output_format": "jpeg"},
            "invalid_value",
            "background",
        ),
        ({"model": "gpt-image-1.5", "output_compression": 50}, "invalid_value", "output_compression"),
        ({"model": "gpt-image-1.5", "partial_images": 4}, "integer_above_max_value", "partial_images"),
        ({"model": "gpt-image-1.5", "prompt": "x" * 32001}, "string_above_max_length", "prompt"),
        ({"model": "gpt-image-1.5", "extra_body": {"colour": "red"}}, "unknown_parameter", "colour"),
        (
            {"model": "gpt-image-2", "background": "transparent", "output_format": "jpeg"},
            "invalid_value",
            "background",
        ),
    ],
)
async def test_generation_validation(client: openai.AsyncOpenAI, kwargs: dict[str, Any], code: str, param: str) -> None:
    kwargs.setdefault("prompt", "a lighthouse")
    with pytest.raises(openai.BadRequestError) as caught:
        await client.images.generate(**kwargs)
    error = caught.value
    assert (error.status_code, error.code, error.param, error.type) == (400, code, param, "invalid_request_error")
    assert isinstance(error.body, dict)
    assert set(error.body) == {"message", "type", "param", "code"}


async def test_unknown_and_retired_models_are_404(client: openai.AsyncOpenAI) -> None:
    for model, wording in (("dall-e-3", "deprecated"), ("gpt-image-1", "deprecated"), ("gpt-99", "do not have access")):
        with pytest.raises(openai.NotFoundError) as caught:
            await client.images.generate(model=model, prompt="x")
        assert (caught.value.code, caught.value.param) == ("model_not_found", "model")
        assert isinstance(caught.value.body, dict)
        assert wording in caught.value.body["message"]


async def test_output_compression_with_jpeg(client: openai.AsyncOpenAI) -> None:
    low = await client.images.generate(model="gpt-image-1.5", prompt="c", output_format="jpeg", output_compression=10)
    high = await client.images.generate(model="gpt-image-1.5", prompt="c", output_format="jpeg", output_compression=95)
    assert low.data
    assert high.data
    assert len(base64.b64decode(low.data[0].b64_json or "")) < len(base64.b64decode(high.data[0].b64_json or ""))


async def test_determinism(client: openai.AsyncOpenAI) -> None:
    first = await client.images.generate(model="gpt-image-1.5", prompt="same prompt", size="1024x1024")
    second = await client.images.generate(model="gpt-image-1.5", prompt="same prompt", size="1024x1024")
    other = await client.images.generate(model="gpt-image-1.5", prompt="other prompt", size="1024x1024")
    assert first.data
    assert second.data
    assert other.data
    assert first.data[0].b64_json == second.data[0].b64_json
    assert first.data[0].b64_json != other.data[0].b64_json


# -- DALL·E --------------------------------------------------------------------------------------


async def test_dall_e_3_url_and_revised_prompt(http: httpx2.AsyncClient) -> None:
    emulator = OpenAIImagesEmulator(retired_models=set())
    async with serve_sandbox(Sandbox(openai=emulator)) as running:
        client = openai.AsyncOpenAI(api_key="any", base_url=running.urls["openai"], http_client=http, max_retries=0)
        result = await client.images.generate(
            model="dall-e-3", prompt="a red kite", size="1792x1024", quality="hd", style="natural"
        )
        assert result.data is not None
        assert len(result.data) == 1
        item = result.data[0]
        assert item.b64_json is None
        assert item.url is not None
        assert item.url.startswith(running.base_url + "/openai/files/")
        assert item.revised_prompt is not None
        assert "a red kite" in item.revised_prompt
        assert result.usage is None
        assert result.size is None
        fetched = await http.get(item.url)
        assert fetched.status_code == 200
        assert fetched.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(fetched.content)).size == (1792, 1024)

        as_b64 = await client.images.generate(model="dall-e-3", prompt="a red kite", response_format="b64_json")
        assert as_b64.data
        assert decode(as_b64.data[0].b64_json).size == (1024, 1024)

        for kwargs, code in (({"n": 2}, "invalid_value"), ({"size": "1024x1536"}, "invalid_size")):
            with pytest.raises(openai.BadRequestError) as caught:
                await client.images.generate(model="dall-e-3", prompt="x", **kwargs)
            assert caught.value.code == code


async def test_dall_e_urls_expire(http: httpx2.AsyncClient) -> None:
    emulator = OpenAIImagesEmulator(retired_models=set(), url_ttl=0.0)
    async with serve_sandbox(Sandbox(openai=emulator)) as running:
        client = openai.AsyncOpenAI(api_key="any", base_url=running.urls["openai"], http_client=http, max_retries=0)
        result = await client.images.generate(model="dall-e-2", prompt="gone soon", size="256x256")
        assert result.data
        assert result.data[0].url
        expired = await http.get(result.data[0].url)
        assert expired.status_code == 403
        assert b"AuthenticationFailed" in expired.content


async def test_dall_e_2_edit_needs_alpha(http: httpx2.AsyncClient) -> None:
    emulator = OpenAIImagesEmulator(retired_models=set())
    async with serve_sandbox(Sandbox(openai=emulator)) as running:
        client = openai.AsyncOpenAI(api_key="any", base_url=running.urls["openai"], http_client=http, max_retries=0)
        rgba = solid_png((10, 200, 10, 255), mode="RGBA")
        result = await client.images.edit(
            model="dall-e-2",
            image=("a.png", rgba, "image/png"),
            prompt="add a boat",
            size="512x512",
            response_format="b64_json",
        )
        assert result.data
        assert decode(result.data[0].b64_json).size == (512, 512)
        with pytest.raises(openai.BadRequestError) as caught:
            await client.images.edit(model="dall-e-2", image=("a.png", solid_png((1, 2, 3)), "image/png"), prompt="x")
        assert isinstance(caught.value.body, dict)
        assert caught.value.body["message"] == "Invalid input image - format must be in ['RGBA', 'LA', 'L'], got RGB."


# -- edits ---------------------------------------------------------------------------------------


async def test_edit_with_one_image(client: openai.AsyncOpenAI, emulator: OpenAIImagesEmulator) -> None:
    red = solid_png((255, 0, 0))
    result = await client.images.edit(model="gpt-image-1.5", image=("red.png", red, "image/png"), prompt="make it snow")
    assert result.data is not None
    image = decode(result.data[0].b64_json)
    assert image.size == (1024, 1024)
    assert close_to(pixel(image, (512, 512)), (0, 255, 255))  # no mask: the whole base is inverted
    stamp = read_stamp(base64.b64decode(result.data[0].b64_json or ""))
    assert stamp == {
        "prompt": "make it snow",
        "kind": "edit",
        "inputs": [hashlib.sha256(red).hexdigest()],
        "mask": False,
        "variant": 0,
    }
    assert result.usage is not None
    assert result.usage.input_tokens_details.image_tokens > 0
    files = emulator.requests[-1].files
    assert [(f.field, f.filename, f.content_type, f.size) for f in files] == [
        ("image", "red.png", "image/png", len(red))
    ]


async def test_edit_with_several_images_keeps_their_colours(
    client: openai.AsyncOpenAI, emulator: OpenAIImagesEmulator
) -> None:
    colours = [(255, 0, 0), (0, 200, 0), (0, 0, 255), (250, 250, 0)]
    inputs = [solid_png(colour) for colour in colours]
    result = await client.images.edit(
        model="gpt-image-1.5",
        image=[(f"in{i}.png", data, "image/png") for i, data in enumerate(inputs)],
        prompt="combine them",
        size="1024x1024",
    )
    assert result.data is not None
    output = base64.b64decode(result.data[0].b64_json or "")
    stamp = read_stamp(output)
    assert stamp is not None
    assert stamp["inputs"] == [hashlib.sha256(data).hexdigest() for data in inputs]
    assert [f.field for f in emulator.requests[-1].files] == ["image[]"] * 4
    image = Image.open(io.BytesIO(output))
    gap, tiles = 1024 // 128, len(colours) - 1
    side = min(1024 // 4, (1024 - gap * (tiles + 1)) // tiles)
    top = 1024 - side - gap
    for index, colour in enumerate(colours[1:]):
        centre = (gap + index * (side + gap) + side // 2, top + side // 2)
        assert close_to(pixel(image, centre), colour), (index, pixel(image, centre))


async def test_edit_with_mask_inverts_only_the_transparent_part(client: openai.AsyncOpenAI) -> None:
    result = await client.images.edit(
        model="gpt-image-1.5",
        image=("red.png", solid_png((255, 0, 0)), "image/png"),
        mask=("mask.png", half_transparent_mask(), "image/png"),
        prompt="only the left",
    )
    assert result.data is not None
    output = base64.b64decode(result.data[0].b64_json or "")
    image = Image.open(io.BytesIO(output))
    assert close_to(pixel(image, (200, 600)), (0, 255, 255))
    assert close_to(pixel(image, (800, 600)), (255, 0, 0))
    stamp = read_stamp(output)
    assert stamp is not None
    assert stamp["mask"] is True


async def test_edit_mask_must_match_first_image(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.images.edit(
            model="gpt-image-1.5",
            image=("red.png", solid_png((255, 0, 0)), "image/png"),
            mask=("mask.png", half_transparent_mask((128, 128)), "image/png"),
            prompt="x",
        )
    assert (caught.value.param, caught.value.code) == ("mask", "invalid_value")


async def test_edit_rejects_octet_stream(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.images.edit(model="gpt-image-1.5", image=solid_png((1, 2, 3)), prompt="raw bytes")
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["message"] == OCTET_MESSAGE
    assert (caught.value.type, caught.value.param) == ("invalid_request_error", "image")


async def test_edit_limits(client: openai.AsyncOpenAI) -> None:
    image = ("a.png", solid_png((9, 9, 9), (64, 64)), "image/png")
    with pytest.raises(openai.BadRequestError) as too_many:
        await client.images.edit(model="gpt-image-1.5", image=[image] * 17, prompt="x")
    assert too_many.value.code == "array_above_max_length"
    with pytest.raises(openai.BadRequestError) as not_an_image:
        await client.images.edit(model="gpt-image-1.5", image=("a.png", b"not a png", "image/png"), prompt="x")
    assert not_an_image.value.code == "invalid_image_file"
    with pytest.raises(openai.BadRequestError) as fidelity:
        await client.images.edit(model="gpt-image-1-mini", image=image, prompt="x", input_fidelity="high")
    assert (fidelity.value.code, fidelity.value.param) == ("invalid_value", "input_fidelity")


async def test_multipart_forms_from_other_clients(running: RunningSandbox, http: httpx2.AsyncClient) -> None:
    """Repeated ``image`` parts, text numbers and booleans, and "" meaning "not given"."""
    big = Image.effect_noise((1024, 1024), 64).convert("RGB")
    buffer = io.BytesIO()
    big.save(buffer, "PNG")
    assert len(buffer.getvalue()) > 1024 * 1024  # over Starlette's default part cap
    files = [
        ("image", ("a.png", buffer.getvalue(), "image/png")),
        ("image", ("b.png", solid_png((0, 0, 255)), "image/png")),
    ]
    data = {"prompt": "two parts", "model": "gpt-image-1.5", "n": "2", "stream": "false", "size": "", "user": ""}
    response = await http.post(
        running.urls["openai"] + "/images/edits",
        headers={"Authorization": f"Bearer {KEY}"},
        data=data,
        files=files,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["data"]) == 2
    assert body["size"] == "1024x1024"
    stamp = read_stamp(base64.b64decode(body["data"][0]["b64_json"]))
    assert stamp is not None
    assert len(stamp["inputs"]) == 2


async def test_json_edit_variant(client: openai.AsyncOpenAI) -> None:
    png = solid_png((0, 0, 255))
    data_url = "data:image/png;base64," + base64.b64encode(png).decode()
    body = {"model": "gpt-image-1.5", "prompt": "make it snow", "images": [{"image_url": data_url}]}
    result = await client.post("/images/edits", body=body, cast_to=ImagesResponse)
    assert result.data is not None
    stamp = read_stamp(base64.b64decode(result.data[0].b64_json or ""))
    assert stamp is not None
    assert stamp["inputs"] == [hashlib.sha256(png).hexdigest()]
    for ref, param in (
        ({"file_id": "file-abc"}, "images[0].file_id"),
        ({"image_url": "https://example.com/a.png"}, "images[0].image_url"),
    ):
        with pytest.raises(openai.BadRequestError) as caught:
            await client.post("/images/edits", body={**body, "images": [ref]}, cast_to=ImagesResponse)
        assert (caught.value.param, caught.value.code) == (param, "invalid_value")


# -- Azure ---------------------------------------------------------------------------------------


async def test_azure_deployment_route(azure: openai.AsyncAzureOpenAI, emulator: OpenAIImagesEmulator) -> None:
    raw = await azure.images.with_raw_response.generate(model="my-image-dep", prompt="azure kite", size="1024x1024")
    assert raw.headers["apim-request-id"]
    assert raw.headers["x-request-id"]
    result = raw.parse()
    assert result.data
    assert decode(result.data[0].b64_json).size == (1024, 1024)
    recorded = emulator.requests[-1]
    assert recorded.path == "/azure/openai/deployments/my-image-dep/images/generations"
    assert recorded.query == {"api-version": AZURE_VERSION}
    assert recorded.headers["api-key"] == KEY
    assert "authorization" not in recorded.headers

    edited = await azure.images.edit(
        model="my-image-dep", image=("a.png", solid_png((255, 0, 0)), "image/png"), prompt="edit on azure"
    )
    assert edited.data
    assert edited.data[0].b64_json
    assert emulator.requests[-1].path.endswith("/deployments/my-image-dep/images/edits")


async def test_azure_dall_e_3_has_filter_results(azure: openai.AsyncAzureOpenAI, http: httpx2.AsyncClient) -> None:
    result = await azure.images.generate(model="dalle3", prompt="azure dall-e")
    assert result.data
    assert result.data[0].url
    assert result.data[0].revised_prompt
    extra = result.data[0].model_extra or {}
    assert extra["content_filter_results"]["violence"] == {"filtered": False, "severity": "safe"}
    assert (await http.get(result.data[0].url)).status_code == 200


async def test_azure_errors(running: RunningSandbox, http: httpx2.AsyncClient, azure: openai.AsyncAzureOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing_deployment:
        await azure.images.generate(model="no-such-dep", prompt="x")
    assert missing_deployment.value.code == "DeploymentNotFound"
    assert isinstance(missing_deployment.value.body, dict)
    assert set(missing_deployment.value.body) == {"code", "message"}

    old = openai.AsyncAzureOpenAI(
        api_key=KEY,
        azure_endpoint=running.urls["azure_openai"],
        api_version="2023-01-01",
        http_client=http,
        max_retries=0,
    )
    with pytest.raises(openai.NotFoundError) as bad_version:
        await old.images.generate(model="my-image-dep", prompt="x")
    assert isinstance(bad_version.value.body, dict)
    assert bad_version.value.body == {"code": "404", "message": "Resource not found"}

    ga = openai.AsyncAzureOpenAI(
        api_key=KEY,
        azure_endpoint=running.urls["azure_openai"],
        api_version="2024-10-21",
        http_client=http,
        max_retries=0,
    )
    with pytest.raises(openai.NotFoundError):
        await ga.images.edit(model="my-image-dep", image=("a.png", solid_png((1, 1, 1)), "image/png"), prompt="x")

    wrong_key = openai.AsyncAzureOpenAI(
        api_key="wrong",
        azure_endpoint=running.urls["azure_openai"],
        api_version=AZURE_VERSION,
        http_client=http,
        max_retries=0,
    )
    with pytest.raises(openai.AuthenticationError) as denied:
        await wrong_key.images.generate(model="my-image-dep", prompt="x")
    assert denied.value.code == "401"
    assert isinstance(denied.value.body, dict)
    assert denied.value.body["message"].startswith("Access denied due to invalid")

    with pytest.raises(openai.BadRequestError) as webp:
        await azure.images.generate(model="my-image-dep", prompt="x", output_format="webp")
    assert webp.value.param == "output_format"


async def test_azure_v1_route(
    running: RunningSandbox, http: httpx2.AsyncClient, emulator: OpenAIImagesEmulator
) -> None:
    v1 = openai.AsyncOpenAI(
        api_key=KEY, base_url=running.urls["azure_openai"] + "/openai/v1/", http_client=http, max_retries=0
    )
    result = await v1.images.generate(model="mini", prompt="v1 route")
    assert result.quality == "medium"
    assert emulator.requests[-1].path == "/azure/openai/v1/images/generations"
    with pytest.raises(openai.NotFoundError) as caught:
        await v1.images.generate(model="gpt-image-1.5", prompt="not a deployment here")
    assert caught.value.code == "DeploymentNotFound"
    response = await http.post(
        running.urls["azure_openai"] + "/openai/v1/images/generations",
        headers={"api-key": KEY},
        json={"model": "my-image-dep", "prompt": "api-key header on v1"},
    )
    assert response.status_code == 200
    assert response.headers["apim-request-id"]


# -- auth ----------------------------------------------------------------------------------------


async def test_openai_auth(running: RunningSandbox, http: httpx2.AsyncClient) -> None:
    response = await http.post(running.urls["openai"] + "/images/generations", json={"prompt": "x"})
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] is None
    assert "Bearer" in error["message"]
    assert set(error) == {"message", "type", "param", "code"}
    assert response.headers["x-request-id"]

    bad = openai.AsyncOpenAI(api_key="sk-wrong-key-9876", base_url=running.urls["openai"], http_client=http)
    with pytest.raises(openai.AuthenticationError) as caught:
        await bad.images.generate(model="gpt-image-1.5", prompt="x")
    assert caught.value.code == "invalid_api_key"
    assert isinstance(caught.value.body, dict)
    message = caught.value.body["message"]
    assert message.startswith("Incorrect API key provided: ")
    assert "9876" in message
    assert "wrong" not in message


async def test_sandbox_index(running: RunningSandbox, http: httpx2.AsyncClient) -> None:
    index = (await http.get(running.base_url + "/")).json()
    assert index["urls"] == running.urls
    assert running.urls["openai"] == f"{running.base_url}/openai/v1"
    assert running.urls["azure_openai"] == f"{running.base_url}/azure"
    assert index["emulators"]["openai"]["mounts"] == [f"{running.base_url}/openai", f"{running.base_url}/azure"]


async def test_unknown_route_uses_the_envelope(running: RunningSandbox, http: httpx2.AsyncClient) -> None:
    response = await http.post(running.urls["openai"] + "/images/paint", headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "Invalid URL (POST /v1/images/paint)"
    azure_variations = await http.post(
        running.urls["azure_openai"] + f"/openai/images/variations?api-version={AZURE_VERSION}",
        headers={"api-key": KEY},
    )
    assert azure_variations.json() == {"error": {"code": "404", "message": "Resource not found"}}


# -- faults --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "exception", "status", "code"),
    [
        (Fault.moderation_blocked(), openai.BadRequestError, 400, "moderation_blocked"),
        (Fault.content_policy_violation(), openai.BadRequestError, 400, "content_policy_violation"),
        (Fault.invalid_api_key(), openai.AuthenticationError, 401, "invalid_api_key"),
        (Fault.permission_denied(), openai.PermissionDeniedError, 403, None),
        (Fault.model_not_found(), openai.NotFoundError, 404, "model_not_found"),
        (Fault.azure_deployment_not_found(), openai.NotFoundError, 404, "DeploymentNotFound"),
        (Fault.azure_resource_not_found(), openai.NotFoundError, 404, "404"),
        (Fault.invalid_value("quality"), openai.BadRequestError, 400, "invalid_value"),
        (Fault.rate_limit(retry_after=3), openai.RateLimitError, 429, "rate_limit_exceeded"),
        (Fault.insufficient_quota(), openai.RateLimitError, 429, "insufficient_quota"),
        (Fault.server_error(), openai.InternalServerError, 500, None),
        (Fault.overloaded(retry_after=2), openai.InternalServerError, 503, "server_is_overloaded"),
        (Fault.error(409, "conflict", code="conflict"), openai.ConflictError, 409, "conflict"),
    ],
)
async def test_fault_presets(
    client: openai.AsyncOpenAI,
    emulator: OpenAIImagesEmulator,
    fault: Fault,
    exception: type[openai.APIStatusError],
    status: int,
    code: str | None,
) -> None:
    emulator.faults.add(fault)
    with pytest.raises(exception) as caught:
        await client.images.generate(model="gpt-image-1.5", prompt="faulty")
    error = caught.value
    assert (error.status_code, error.code) == (status, code)
    assert error.request_id
    assert error.request_id.startswith("req_")
    if status == 429 and code == "rate_limit_exceeded":
        assert error.response.headers["retry-after"] == "3"
    if code == "insufficient_quota":
        assert error.response.headers["x-should-retry"] == "false"
    if code == "moderation_blocked":
        assert error.type == "image_generation_user_error"
        assert isinstance(error.body, dict)
        assert error.request_id in error.body["message"]
    # one use only: the next request succeeds
    assert (await client.images.generate(model="gpt-image-1.5", prompt="fine")).data


async def test_sdk_retries_follow_retry_after(client: openai.AsyncOpenAI, emulator: OpenAIImagesEmulator) -> None:
    emulator.faults.add(Fault.rate_limit(retry_after=0.05), times=2)
    retrying = client.with_options(max_retries=2)
    result = await retrying.images.generate(model="gpt-image-1.5", prompt="eventually")
    assert result.data
    counts = [entry.headers["x-stainless-retry-count"] for entry in emulator.requests[-3:]]
    assert counts == ["0", "1", "2"]
    assert [entry.status for entry in emulator.requests[-3:]] == [429, 429, 200]

    emulator.faults.add(Fault.insufficient_quota())
    before = len(emulator.requests)
    with pytest.raises(openai.RateLimitError):
        await retrying.images.generate(model="gpt-image-1.5", prompt="no retries for billing")
    assert len(emulator.requests) == before + 1


async def test_fault_filters_and_clearing(client: openai.AsyncOpenAI, emulator: OpenAIImagesEmulator) -> None:
    emulator.faults.add(Fault.server_error(), times=None, path_contains="/edits")
    assert (await client.images.generate(model="gpt-image-1.5", prompt="generations unaffected")).data
    image = ("a.png", solid_png((1, 2, 3)), "image/png")
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            await client.images.edit(model="gpt-image-1.5", image=image, prompt="x")
    emulator.faults.clear()
    assert (await client.images.edit(model="gpt-image-1.5", image=image, prompt="x")).data


async def test_delay_and_hang(
    running: RunningSandbox, client: openai.AsyncOpenAI, emulator: OpenAIImagesEmulator
) -> None:
    emulator.faults.add(Fault.delay(0.3))
    started = time.monotonic()
    assert (await client.images.generate(model="gpt-image-1.5", prompt="slow")).data
    assert time.monotonic() - started >= 0.3

    emulator.faults.add(Fault.hang())
    impatient = client.with_options(timeout=0.3)
    with pytest.raises(openai.APITimeoutError):
        await impatient.images.generate(model="gpt-image-1.5", prompt="never")
    deadline = time.monotonic() + 2.0
    while emulator.requests[-1].status is None and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert emulator.requests[-1].status == 499  # the server noticed the client leave


async def test_configured_delay_applies_to_every_request(http: httpx2.AsyncClient) -> None:
    async with serve_sandbox(Sandbox(openai=OpenAIImagesEmulator(delay=0.2))) as running:
        client = openai.AsyncOpenAI(api_key="k", base_url=running.urls["openai"], http_client=http, max_retries=0)
        started = time.monotonic()
        assert (await client.images.generate(model="gpt-image-1.5", prompt="slow service")).data
        assert time.monotonic() - started >= 0.2


async def test_hang_is_released_when_the_sandbox_stops(http: httpx2.AsyncClient) -> None:
    emulator = OpenAIImagesEmulator()
    async with serve_sandbox(Sandbox(openai=emulator)) as running:
        emulator.faults.add(Fault.hang())
        client = openai.AsyncOpenAI(api_key="k", base_url=running.urls["openai"], http_client=http, max_retries=0)
        pending = asyncio.create_task(client.images.generate(model="gpt-image-1.5", prompt="forever"))
        while not emulator.requests:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 2.0
    with pytest.raises(openai.APIError):
        await pending


async def test_malformed_and_empty_answers(client: openai.AsyncOpenAI, emulator: OpenAIImagesEmulator) -> None:
    emulator.faults.add(Fault.malformed_json())
    with pytest.raises(json.JSONDecodeError):
        await client.images.generate(model="gpt-image-1.5", prompt="broken")

    emulator.faults.add(Fault.empty_data())
    empty = await client.images.generate(model="gpt-image-1.5", prompt="nothing")
    assert empty.data == []
    assert empty.created > 0

    emulator.faults.add(Fault.empty_data(omit_data_key=True))
    assert (await client.images.generate(model="gpt-image-1.5", prompt="nothing")).data is None


async def test_url_instead_of_b64(
    client: openai.AsyncOpenAI, emulator: OpenAIImagesEmulator, http: httpx2.AsyncClient
) -> None:
    emulator.faults.add(Fault.url_instead_of_b64())
    result = await client.images.generate(model="gpt-image-1.5", prompt="linked", output_format="webp")
    assert result.data
    assert result.data[0].b64_json is None
    assert result.data[0].url
    fetched = await http.get(result.data[0].url)
    assert fetched.headers["content-type"] == "image/webp"
    assert Image.open(io.BytesIO(fetched.content)).size == (1024, 1024)


async def test_faults_over_http(running: RunningSandbox, client: openai.AsyncOpenAI, http: httpx2.AsyncClient) -> None:
    control = running.urls["azure_openai"] + "/_sandbox"
    queued = await http.post(control + "/faults", json={"preset": "rate_limit", "args": {"retry_after": 7}, "times": 2})
    assert queued.status_code == 201
    assert queued.json()["faults"][0]["remaining"] == 2
    with pytest.raises(openai.RateLimitError) as caught:
        await client.images.generate(model="gpt-image-1.5", prompt="x")
    assert caught.value.response.headers["retry-after"] == "7"
    assert (await http.delete(control + "/faults")).json() == {"faults": []}
    assert (await client.images.generate(model="gpt-image-1.5", prompt="x")).data

    custom = {"kind": "error", "status": 418, "body": {"error": {"message": "teapot"}}, "headers": {"x-a": "b"}}
    assert (await http.post(control + "/faults", json=custom)).status_code == 201
    with pytest.raises(openai.APIStatusError) as teapot:
        await client.images.generate(model="gpt-image-1.5", prompt="x")
    assert teapot.value.status_code == 418
    assert teapot.value.response.headers["x-a"] == "b"
    assert (await http.post(control + "/faults", json={"preset": "nope"})).status_code == 400

    log = (await http.get(control + "/requests")).json()["requests"]
    assert log[-1]["json"] == {"model": "gpt-image-1.5", "prompt": "x"}
    assert log[-1]["status"] == 418


# -- streaming -----------------------------------------------------------------------------------


async def test_streaming_generation(client: openai.AsyncOpenAI) -> None:
    stream = await client.images.generate(
        model="gpt-image-1.5", prompt="streamed kite", stream=True, partial_images=2, size="1024x1536"
    )
    events = [event async for event in stream]
    assert [event.type for event in events] == [
        "image_generation.partial_image",
        "image_generation.partial_image",
        "image_generation.completed",
    ]
    partials = [event for event in events if event.type == "image_generation.partial_image"]
    assert [event.partial_image_index for event in partials] == [0, 1]
    assert partials[0].size == "1024x1536"
    assert partials[0].quality == "auto"
    completed = events[-1]
    assert completed.type == "image_generation.completed"
    assert (completed.size, completed.quality, completed.background) == ("1024x1536", "high", "opaque")
    assert completed.usage.output_tokens == 6240 + 200
    assert decode(completed.b64_json).size == (1024, 1536)
    assert all(decode(event.b64_json).size == (1024, 1536) for event in partials)


async def test_streaming_edit_with_n(client: openai.AsyncOpenAI) -> None:
    stream = await client.images.edit(
        model="gpt-image-1.5",
        image=("a.png", solid_png((255, 0, 0)), "image/png"),
        prompt="streamed edit",
        stream=True,
        n=2,
    )
    events = [event async for event in stream]
    assert [event.type for event in events] == ["image_edit.completed", "image_edit.completed"]
    assert events[0].b64_json != events[1].b64_json


async def test_stream_error_event_raises(client: openai.AsyncOpenAI, emulator: OpenAIImagesEmulator) -> None:
    emulator.faults.add(Fault.stream_error("the generator fell over"))
    assert (await client.images.generate(model="gpt-image-1.5", prompt="not streaming")).data  # fault waits
    stream = await client.images.generate(model="gpt-image-1.5", prompt="doomed", stream=True, partial_images=2)
    seen: list[str] = []

    async def consume() -> None:
        async for event in stream:
            seen.append(event.type)

    with pytest.raises(openai.APIError) as caught:
        await consume()
    assert seen == ["image_generation.partial_image"]
    assert "the generator fell over" in caught.value.message


async def test_dall_e_cannot_stream(http: httpx2.AsyncClient) -> None:
    emulator = OpenAIImagesEmulator(retired_models=set())
    async with serve_sandbox(Sandbox(openai=emulator)) as running:
        client = openai.AsyncOpenAI(api_key="k", base_url=running.urls["openai"], http_client=http, max_retries=0)
        with pytest.raises(openai.BadRequestError) as caught:
            await client.images.generate(model="dall-e-3", prompt="x", stream=True)
        assert (caught.value.code, caught.value.param) == ("unknown_parameter", "stream")
        with pytest.raises(openai.BadRequestError) as no_edits:
            await client.images.edit(model="dall-e-3", image=("a.png", solid_png((1, 1, 1)), "image/png"), prompt="x")
        assert (no_edits.value.code, no_edits.value.param) == ("invalid_value", "model")


# -- prompt triggers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("marker", "exception", "code"),
    [
        ("[[sandbox:moderation]]", openai.BadRequestError, "moderation_blocked"),
        ("[[sandbox:error=500]]", openai.InternalServerError, None),
        ("[[sandbox:error=503]]", openai.InternalServerError, "server_is_overloaded"),
        ("[[sandbox:rate_limit]]", openai.RateLimitError, "rate_limit_exceeded"),
        ("[[sandbox:quota]]", openai.RateLimitError, "insufficient_quota"),
        ("[[sandbox:bogus]]", openai.BadRequestError, "invalid_value"),
    ],
)
async def test_prompt_triggers(
    client: openai.AsyncOpenAI, marker: str, exception: type[openai.APIStatusError], code: str | None
) -> None:
    with pytest.raises(exception) as caught:
        await client.images.generate(model="gpt-image-1.5", prompt=f"a cat {marker}")
    assert caught.value.code == code


async def test_prompt_triggers_that_answer(client: openai.AsyncOpenAI) -> None:
    started = time.monotonic()
    assert (await client.images.generate(model="gpt-image-1.5", prompt="wait [[sandbox:delay=0.25]]")).data
    assert time.monotonic() - started >= 0.25
    assert (await client.images.generate(model="gpt-image-1.5", prompt="[[sandbox:empty]]")).data == []
    linked = await client.images.generate(model="gpt-image-1.5", prompt="[[sandbox:url]]")
    assert linked.data
    assert linked.data[0].url


# -- renderer ------------------------------------------------------------------------------------


def test_renderer_sizes_formats_and_stamps() -> None:
    png = render_generation("hello world", 320, 200, "png", variant=2)
    image = Image.open(io.BytesIO(png))
    assert image.size == (320, 200)
    assert image.mode == "RGB"
    assert read_stamp(png) == {"prompt": "hello world", "kind": "generation", "inputs": [], "mask": False, "variant": 2}
    assert render_generation("hello world", 320, 200, "png", variant=2) == png
    assert render_generation("hello world", 320, 200, "png", variant=3) != png
    webp = render_generation("hello", 64, 64, "webp", transparent=True)
    assert Image.open(io.BytesIO(webp)).mode == "RGBA"
    jpeg = render_generation("hello", 64, 48, "jpeg", quality=50)
    assert Image.open(io.BytesIO(jpeg)).format == "JPEG"
    assert read_stamp(jpeg) is None
    with pytest.raises(ValueError, match="transparent"):
        render_generation("x", 64, 64, "jpeg", transparent=True)


def test_render_edit_stamp_lists_input_hashes() -> None:
    inputs = [solid_png((255, 0, 0)), solid_png((0, 255, 0)), solid_png((0, 0, 255))]
    mask = half_transparent_mask()
    output = render_edit(inputs, "edit me", 512, 512, "png", mask=mask, variant=1)
    assert read_stamp(output) == {
        "prompt": "edit me",
        "kind": "edit",
        "inputs": [hashlib.sha256(data).hexdigest() for data in inputs],
        "mask": True,
        "variant": 1,
    }
    assert render_edit(inputs, "edit me", 512, 512, "png", mask=mask, variant=1) == output


def test_render_generation_is_fast() -> None:
    render_generation("warm up", 1024, 1024, "png")
    timings = []
    for index in range(5):
        started = time.perf_counter()
        render_generation(f"a lighthouse on a cliff at dusk, number {index}", 1024, 1024, "png")
        timings.append(time.perf_counter() - started)
    assert min(timings) < 0.2  # typically ~20 ms; generous for noisy machines
