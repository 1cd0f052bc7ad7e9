"""The OpenAI backend through the real SDK against the emulator on loopback: every failure class of the
core issue, each reached through an emulator fault knob, plus the Azure URL styles."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx2
import PIL.Image
import pytest

from limner.backends.base import EditRequest, GenerateRequest, InputImage, Progress
from limner.backends.openai_images import EndpointKind, OpenAIEndpoint, OpenAIImagesBackend, SettingNames
from limner.errors import (
    ConfigurationError,
    ContentPolicyError,
    ProviderAuthError,
    ProviderError,
    ProviderQuotaError,
    ProviderRateLimitError,
    ProviderRequestError,
    ProviderResponseError,
    ProviderUnavailableError,
    UnsupportedOperationError,
)
from limner.net import create_http_client
from limner.sandbox.faults import Fault, FaultKind
from limner.sandbox.openai_images import OpenAIImagesEmulator
from limner.sandbox.server import Sandbox, serve_sandbox
from tests import images
from tests.processes import free_port

KEY = "sk-test-key-1234"


@dataclass
class Upstream:
    emulator: OpenAIImagesEmulator
    urls: dict[str, str]
    http: httpx2.AsyncClient

    def backend(self, base_url: str | None = None, api_version: str | None = None, **kw: object) -> OpenAIImagesBackend:
        endpoint = OpenAIEndpoint.resolve(base_url or self.urls["openai"], api_version, SettingNames())
        kw.setdefault("max_retries", 0)
        return OpenAIImagesBackend(endpoint=endpoint, http_client=self.http, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    emulator = OpenAIImagesEmulator(accepted_keys={KEY}, azure_deployments={"my-images": "gpt-image-1.5"})
    http = await asyncio.to_thread(create_http_client, timeout=5)
    async with serve_sandbox(Sandbox(openai=emulator)) as running:
        yield Upstream(emulator, running.urls, http)
    await http.aclose()


def gen(**kw: object) -> GenerateRequest:
    values: dict[str, object] = {"model": "gpt-image-1.5", "prompt": "a lighthouse at dusk"}
    values.update(kw)
    return GenerateRequest(**values)  # type: ignore[arg-type]


async def test_generation_returns_every_image_with_usage(upstream: Upstream) -> None:
    outputs = await upstream.backend().generate(gen(n=2, size="1024x1536", quality="low"), api_key=KEY)
    assert len(outputs) == 2
    assert [images.size_of(o.data or b"") for o in outputs] == [(1024, 1536)] * 2
    assert outputs[0].media_type == "image/png"
    assert outputs[0].provider_details["usage"]["output_tokens"] > 0
    assert outputs[0].data != outputs[1].data
    sent = upstream.emulator.requests[-1]
    assert sent.path.endswith("/v1/images/generations")
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.json == {
        "model": "gpt-image-1.5",
        "prompt": "a lighthouse at dusk",
        "n": 2,
        "size": "1024x1536",
        "quality": "low",
    }


async def test_gpt_image_2_transparent_background_through_the_backend(upstream: Upstream) -> None:
    """Refused by the profile and the emulator before; OpenAI's SDK documents it for gpt-image-2."""
    request = gen(model="gpt-image-2", background="transparent", output_format="png", size="1024x1024")
    (output,) = await upstream.backend().generate(request, api_key=KEY)
    image = PIL.Image.open(io.BytesIO(output.data or b""))
    assert image.mode == "RGBA" and image.getchannel("A").getextrema()[0] < 255
    assert upstream.emulator.requests[-1].json["background"] == "transparent"


async def test_edit_sends_every_image_and_the_mask_as_typed_parts(upstream: Upstream) -> None:
    first, second = images.png(64, 64, (255, 0, 0)), images.encoded("JPEG", 64, 64)
    request = EditRequest(
        model="gpt-image-1.5",
        prompt="combine",
        images=(
            InputImage(data=first, media_type="image/png", name="a.png"),
            InputImage(data=second, media_type="image/jpeg", name="b.jpg"),
        ),
        mask=InputImage(data=images.mask_png(64, 64), media_type="image/png", name="mask.png"),
    )
    (output,) = await upstream.backend().edit(request, api_key=KEY)
    assert output.data
    sent = upstream.emulator.requests[-1]
    parts = [(f.field, f.content_type) for f in sent.files]
    assert parts == [("image[]", "image/png"), ("image[]", "image/jpeg"), ("mask", "image/png")]


async def test_single_image_edit_uses_the_plain_image_field(upstream: Upstream) -> None:
    request = EditRequest(
        model="gpt-image-1.5", prompt="p", images=(InputImage(data=images.png(), media_type="image/png"),)
    )
    await upstream.backend().edit(request, api_key=KEY)
    assert [f.field for f in upstream.emulator.requests[-1].files] == ["image"]


async def test_profile_is_checked_before_any_request(upstream: Upstream) -> None:
    before = len(upstream.emulator.requests)
    with pytest.raises(UnsupportedOperationError, match="size"):
        await upstream.backend().generate(gen(size="2000x2000"), api_key=KEY)
    assert len(upstream.emulator.requests) == before


@pytest.mark.parametrize(
    ("fault", "error", "needle"),
    [
        (Fault.invalid_api_key(), ProviderAuthError, "IMAGE_GEN_OAI_API_KEY"),
        (Fault.permission_denied(), ProviderAuthError, "access"),
        (Fault.moderation_blocked(), ContentPolicyError, "Rephrase"),
        (Fault.invalid_value("size", "Invalid size."), ProviderRequestError, "size"),
        (Fault.model_not_found(), ProviderRequestError, "IMAGE_GEN_OAI_MODEL"),
        (Fault.rate_limit(retry_after=7), ProviderRateLimitError, "Wait"),
        (Fault.insufficient_quota(), ProviderQuotaError, "billing"),
        (Fault.server_error(), ProviderUnavailableError, "Try again"),
        (Fault.overloaded(), ProviderUnavailableError, "Try again"),
        (Fault.empty_data(), ProviderResponseError, "without any image data"),
        (Fault.empty_data(omit_data_key=True), ProviderResponseError, "without any image data"),
        (Fault.malformed_json(), ProviderResponseError, "not valid JSON"),
    ],
)
async def test_each_failure_maps_to_its_class(
    upstream: Upstream, fault: Fault, error: type[ProviderError], needle: str
) -> None:
    upstream.emulator.faults.add(fault)
    with pytest.raises(error) as caught:
        await upstream.backend().generate(gen(), api_key=KEY)
    exc = caught.value
    assert type(exc) is error
    assert exc.provider == "openai"
    assert needle in str(exc)
    assert KEY not in str(exc)


async def test_rate_limit_carries_retry_after_and_request_id(upstream: Upstream) -> None:
    upstream.emulator.faults.add(Fault.rate_limit(retry_after=7))
    with pytest.raises(ProviderRateLimitError) as caught:
        await upstream.backend().generate(gen(), api_key=KEY)
    assert caught.value.retry_after == 7
    assert caught.value.status_code == 429
    assert caught.value.request_id


async def test_wrong_key_is_an_auth_error_without_the_key(upstream: Upstream) -> None:
    with pytest.raises(ProviderAuthError) as caught:
        await upstream.backend().generate(gen(), api_key="sk-wrong-key-abcdef123456")
    assert "sk-wrong-key-abcdef123456" not in str(caught.value)


async def test_retries_honour_retry_after(upstream: Upstream) -> None:
    upstream.emulator.faults.add(Fault.rate_limit(retry_after=0.05), times=2)
    backend = upstream.backend(max_retries=2)
    (output,) = await backend.generate(gen(), api_key=KEY)
    assert output.data
    assert [r.status for r in upstream.emulator.requests] == [429, 429, 200]  # refused twice: not done, retried


@pytest.mark.parametrize(
    "fault",
    [Fault.server_error(), Fault.insufficient_quota()],
    ids=["500: may have been done", "429 insufficient_quota: waiting does not cure it"],
)
async def test_a_paid_call_whose_outcome_is_unknown_or_final_is_not_repeated(upstream: Upstream, fault: Fault) -> None:
    upstream.emulator.faults.add(fault, times=3)
    with pytest.raises(ProviderError):
        await upstream.backend(max_retries=2).generate(gen(), api_key=KEY)
    assert len(upstream.emulator.requests) == 1  # the SDK's own retries sent this three times


async def test_a_timed_out_paid_call_is_not_repeated(upstream: Upstream) -> None:
    upstream.emulator.faults.add(Fault.hang(), times=3)
    with pytest.raises(ProviderUnavailableError):
        await upstream.backend(max_retries=2, timeout=0.3).generate(gen(), api_key=KEY)
    assert len(upstream.emulator.requests) == 1  # it may be generating (and billing) still


async def test_a_call_that_never_reached_the_service_is_retried(
    upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="limner.backends.retries")
    closed = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ProviderUnavailableError, match="Could not connect"):
        await upstream.backend(base_url=closed, max_retries=2).generate(gen(), api_key=KEY)
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 2 and all("not_sent" in line for line in retries)


async def test_timeout_is_unavailable(upstream: Upstream) -> None:
    upstream.emulator.faults.add(Fault.hang())
    backend = upstream.backend(timeout=0.3)
    with pytest.raises(ProviderUnavailableError, match="did not answer within 0.3 s"):
        await backend.generate(gen(), api_key=KEY)


async def test_connection_refused_is_unavailable() -> None:
    async with await asyncio.to_thread(create_http_client, timeout=2) as http:
        endpoint = OpenAIEndpoint.resolve("http://127.0.0.1:9/v1", None, SettingNames())
        backend = OpenAIImagesBackend(endpoint=endpoint, http_client=http, max_retries=0)
        with pytest.raises(ProviderUnavailableError, match="Could not connect"):
            await backend.generate(gen(), api_key=KEY)


async def test_url_output_is_returned_for_fetching(upstream: Upstream) -> None:
    upstream.emulator.faults.add(Fault.url_instead_of_b64())
    (output,) = await upstream.backend().generate(gen(), api_key=KEY)
    assert output.data is None and output.url and output.url.startswith("http://127.0.0.1:")


# --- Azure -------------------------------------------------------------------------------------


async def test_azure_deployment_url_style(upstream: Upstream) -> None:
    base = upstream.urls["azure_openai"] + "/openai/deployments/my-images"
    backend = upstream.backend(base, "2025-04-01-preview")
    assert backend.target.kind is EndpointKind.AZURE_DEPLOYMENT and backend.backend_name == "azure"
    (output,) = await backend.generate(gen(model="my-images"), api_key=KEY)
    assert output.data
    sent = upstream.emulator.requests[-1]
    assert sent.path.endswith("/openai/deployments/my-images/images/generations")
    assert sent.query["api-version"] == "2025-04-01-preview"
    assert sent.headers["api-key"] == KEY and "authorization" not in sent.headers


async def test_azure_resource_endpoint_uses_the_model_as_deployment(upstream: Upstream) -> None:
    backend = upstream.backend(upstream.urls["azure_openai"], "2025-04-01-preview")
    assert backend.target.kind is EndpointKind.AZURE_RESOURCE
    request = EditRequest(
        model="my-images", prompt="p", images=(InputImage(data=images.png(), media_type="image/png"),)
    )
    await backend.edit(request, api_key=KEY)
    assert upstream.emulator.requests[-1].path.endswith("/openai/deployments/my-images/images/edits")


async def test_azure_v1_style(upstream: Upstream) -> None:
    backend = upstream.backend(upstream.urls["azure_openai"] + "/openai/v1", "preview")
    assert backend.target.kind is EndpointKind.AZURE_V1
    await backend.generate(gen(model="my-images"), api_key=KEY)
    assert upstream.emulator.requests[-1].headers["api-key"] == KEY


async def test_azure_wrong_deployment_names_both_settings(upstream: Upstream) -> None:
    base = upstream.urls["azure_openai"] + "/openai/deployments/no-such-deployment"
    with pytest.raises(ProviderRequestError) as caught:
        await upstream.backend(base, "2025-04-01-preview").generate(gen(model="x"), api_key=KEY)
    text = str(caught.value)
    assert "IMAGE_GEN_OAI_BASEURL" in text and "IMAGE_GEN_OAI_AZURE_API_VERSION" in text
    assert caught.value.status_code == 404 and caught.value.provider == "azure"


async def test_azure_wrong_api_version_names_both_settings(upstream: Upstream) -> None:
    base = upstream.urls["azure_openai"] + "/openai/deployments/my-images"
    with pytest.raises(ProviderRequestError) as caught:
        await upstream.backend(base, "1999-01-01").generate(gen(model="my-images"), api_key=KEY)
    assert "'1999-01-01'" in str(caught.value)
    assert "IMAGE_GEN_OAI_AZURE_API_VERSION" in str(caught.value)


def test_azure_deployment_url_without_api_version_fails_fast() -> None:
    with pytest.raises(ConfigurationError, match="IMAGE_GEN_OAI_AZURE_API_VERSION"):
        OpenAIEndpoint.resolve("https://res.openai.azure.com/openai/deployments/dep", None, SettingNames())
    with pytest.raises(ConfigurationError, match="IMAGE_GEN_OAI_BASEURL"):
        OpenAIEndpoint.resolve("ftp://example.com", None, SettingNames())


# --- streaming partial images --------------------------------------------------------------------


async def test_partial_images_reach_the_progress_channel(upstream: Upstream) -> None:
    seen: list[Progress] = []

    async def progress(update: Progress) -> None:
        seen.append(update)

    backend = upstream.backend(partial_images=2)
    outputs = await backend.generate(gen(n=2, size="1024x1024"), api_key=KEY, progress=progress)
    assert len(outputs) == 2
    assert all(o.data and images.size_of(o.data) == (1024, 1024) for o in outputs)
    assert outputs[0].provider_details["usage"]["output_tokens"] > 0
    fractions = [p.fraction or 0 for p in seen]
    assert len(fractions) == 4  # two partial images for each of the two images
    assert fractions == sorted(fractions) and fractions[0] > 0 and fractions[-1] < 1
    assert all(p.partial_image and p.partial_media_type == "image/png" for p in seen)
    assert upstream.emulator.requests[-1].json["stream"] is True


async def test_streamed_edit(upstream: Upstream) -> None:
    seen: list[Progress] = []

    async def progress(update: Progress) -> None:
        seen.append(update)

    request = EditRequest(
        model="gpt-image-1.5", prompt="p", images=(InputImage(data=images.png(), media_type="image/png"),)
    )
    (output,) = await upstream.backend(partial_images=1).edit(request, api_key=KEY, progress=progress)
    assert output.data and len(seen) == 1


async def test_error_inside_a_stream_is_unavailable(upstream: Upstream) -> None:
    upstream.emulator.faults.add(Fault.stream_error("the renderer fell over"))

    async def progress(update: Progress) -> None:
        pass

    with pytest.raises(ProviderUnavailableError, match="the renderer fell over"):
        await upstream.backend(partial_images=2).generate(gen(), api_key=KEY, progress=progress)


async def test_no_streaming_without_a_progress_listener(upstream: Upstream) -> None:
    await upstream.backend(partial_images=2).generate(gen(), api_key=KEY)
    assert "stream" not in upstream.emulator.requests[-1].json


# --- PROXY -----------------------------------------------------------------------------------------


async def test_requests_go_through_the_configured_proxy(upstream: Upstream) -> None:
    seen: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        request_line, *header_lines = head.split("\r\n")
        method, target, _ = request_line.split(" ")
        seen.append(target)
        headers = dict(line.split(": ", 1) for line in header_lines if ": " in line)
        body = await reader.readexactly(int(headers.get("Content-Length", headers.get("content-length", "0"))))
        forward = {k: v for k, v in headers.items() if k.lower() not in ("host", "proxy-connection", "connection")}
        async with httpx2.AsyncClient() as client:
            answer = await client.request(method, target, headers=forward, content=body)
        writer.write(f"HTTP/1.1 {answer.status_code} OK\r\n".encode())
        for key, value in answer.headers.items():
            if key.lower() not in ("transfer-encoding", "connection", "content-length", "content-encoding"):
                writer.write(f"{key}: {value}\r\n".encode())
        writer.write(f"Content-Length: {len(answer.content)}\r\nConnection: close\r\n\r\n".encode())
        writer.write(answer.content)
        await writer.drain()
        writer.close()

    proxy = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = proxy.sockets[0].getsockname()[1]
    async with proxy:
        http = await asyncio.to_thread(create_http_client, timeout=10, proxy=f"http://127.0.0.1:{port}")
        async with http:
            endpoint = OpenAIEndpoint.resolve(upstream.urls["openai"], None, SettingNames())
            backend = OpenAIImagesBackend(endpoint=endpoint, http_client=http, max_retries=0)
            (output,) = await backend.generate(gen(), api_key=KEY)
    assert output.data
    assert seen == [upstream.urls["openai"] + "/images/generations"]


async def test_moderation_inside_a_stream_is_a_content_policy_error(upstream: Upstream) -> None:
    upstream.emulator.faults.add(
        Fault(
            kind=FaultKind.STREAM_ERROR,
            body={
                "message": "blocked",
                "type": "image_generation_user_error",
                "code": "moderation_blocked",
                "param": None,
            },
        )
    )

    async def progress(update: Progress) -> None:
        pass

    with pytest.raises(ContentPolicyError):
        await upstream.backend(partial_images=2).generate(gen(), api_key=KEY, progress=progress)


async def test_azure_content_filter_code_is_a_content_policy_error(upstream: Upstream) -> None:
    body = {"error": {"code": "content_filter", "message": "The response was filtered.", "param": "prompt"}}
    upstream.emulator.faults.add(Fault.raw_error(400, body))
    base = upstream.urls["azure_openai"] + "/openai/deployments/my-images"
    with pytest.raises(ContentPolicyError):
        await upstream.backend(base, "2025-04-01-preview").generate(gen(model="my-images"), api_key=KEY)


async def test_the_calls_key_never_appears_in_an_error(upstream: Upstream) -> None:
    body = {"error": {"message": f"Your key {KEY} is bad", "type": "x", "param": None, "code": None}}
    upstream.emulator.faults.add(Fault.raw_error(400, body))
    with pytest.raises(ProviderRequestError) as caught:
        await upstream.backend().generate(gen(), api_key=KEY)
    assert KEY not in str(caught.value) and "[redacted]" in str(caught.value)


def test_endpoint_records_drop_credentials() -> None:
    from limner.backends.base import public_url

    assert public_url("https://user:pw@gw.example:8443/v1?key=abc#x") == "https://gw.example:8443/v1"
