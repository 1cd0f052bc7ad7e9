"""The DALL·E family: the OpenAI backend with DALL·E profiles, against the emulator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx2
import pytest

from limner.backends.base import GenerateRequest
from limner.backends.openai_images import OpenAIEndpoint, OpenAIImagesBackend
from limner.errors import ProviderRequestError, UnsupportedOperationError
from limner.net import create_http_client
from limner.sandbox.openai_images import OpenAIImagesEmulator
from limner.sandbox.server import Sandbox, serve_sandbox
from limner.tools.dalle import _NAMES
from tests import images

KEY = "sk-dalle-test-key"


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    client = await asyncio.to_thread(create_http_client, timeout=10)
    async with client:
        yield client


def backend(http: httpx2.AsyncClient, base: str, api_version: str | None = None) -> OpenAIImagesBackend:
    endpoint = OpenAIEndpoint.resolve(base, api_version, _NAMES)
    return OpenAIImagesBackend(endpoint=endpoint, http_client=http, max_retries=0, setting_names=_NAMES)


async def test_retired_dalle_points_to_the_openai_image_tools(http: httpx2.AsyncClient) -> None:
    async with serve_sandbox(Sandbox(openai=OpenAIImagesEmulator())) as running:  # DALL·E retired, as upstream
        with pytest.raises(ProviderRequestError) as caught:
            await backend(http, running.urls["openai"]).generate(
                GenerateRequest(model="dall-e-3", prompt="a fox"), api_key=KEY
            )
    text = str(caught.value)
    assert "retired DALL·E" in text and "image_gen_oai" in text and "DALLE_REVERSE_PROXY" in text


async def test_reverse_proxy_serving_dalle_3(http: httpx2.AsyncClient) -> None:
    emulator = OpenAIImagesEmulator(retired_models=set())
    async with serve_sandbox(Sandbox(openai=emulator)) as running:
        request = GenerateRequest(model="dall-e-3", prompt="a fox", size="1792x1024", quality="hd", style="natural")
        (output,) = await backend(http, running.urls["openai"]).generate(request, api_key=KEY)
    assert output.data and images.size_of(output.data) == (1792, 1024)
    assert output.revised_prompt
    sent = emulator.requests[-1].json
    assert sent == {
        "model": "dall-e-3",
        "prompt": "a fox",
        "n": 1,
        "size": "1792x1024",
        "quality": "hd",
        "style": "natural",
        "response_format": "b64_json",
    }


async def test_dalle_3_on_azure(http: httpx2.AsyncClient) -> None:
    emulator = OpenAIImagesEmulator(azure_deployments={"dalle3": "dall-e-3"})
    async with serve_sandbox(Sandbox(openai=emulator)) as running:
        base = running.urls["azure_openai"] + "/openai/deployments/dalle3"
        (output,) = await backend(http, base, "2024-10-21").generate(
            GenerateRequest(model="dall-e-3", prompt="a fox"), api_key=KEY
        )
    assert output.data
    assert emulator.requests[-1].query["api-version"] == "2024-10-21"


def test_dalle_profiles_refuse_what_the_model_cannot_do(http: httpx2.AsyncClient) -> None:
    b = backend(http, "http://127.0.0.1:9/v1")
    with pytest.raises(UnsupportedOperationError, match="at most 1"):
        b.profile("dall-e-3").check_generate(GenerateRequest(model="dall-e-3", prompt="x", n=2))
    with pytest.raises(UnsupportedOperationError, match="1792x1024"):
        b.profile("dall-e-3").check_generate(GenerateRequest(model="dall-e-3", prompt="x", size="1536x1024"))
    with pytest.raises(UnsupportedOperationError, match="style"):
        b.profile("dall-e-2").check_generate(GenerateRequest(model="dall-e-2", prompt="x", style="vivid"))
