"""The BFL backend over real HTTP against the BFL emulator on loopback: what is sent, how polling behaves,
what comes back, and every failure class with its hint (never with the key)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from PIL import Image

from limner.backends.base import EditRequest, GenerateRequest, InputImage, Progress
from limner.backends.bfl import BFL_DELIVERY_HOSTS, BFLBackend
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
from limner.net import FetchPolicy, create_http_client
from limner.runtime import Runtime
from limner.sandbox import read_stamp
from limner.sandbox.bfl import BFLEmulator
from limner.sandbox.bfl_wire import BFL_FAULTS
from limner.sandbox.faults import Fault
from limner.sandbox.server import Sandbox, serve_sandbox
from tests import images
from tests.conftest import make_settings

KEY = "bfl_test_key_abcdef0123456789"
LOOPBACK = FetchPolicy(max_bytes=50 * 1024 * 1024, allow_loopback=True)


@dataclass
class Upstream:
    emulator: BFLEmulator
    url: str
    http: httpx2.AsyncClient

    def backend(self, **kw: Any) -> BFLBackend:
        options: dict[str, Any] = {
            "base_url": self.url,
            "http_client": self.http,
            "fetch_policy": LOOPBACK,
            "poll_interval": 0.01,
            "max_poll_interval": 0.05,
            "deadline": 10.0,
            "is_sandbox": True,
        }
        options.update(kw)
        return BFLBackend(**options)

    def sent(self, method: str = "POST") -> list[Any]:
        return [r for r in self.emulator.requests if r.method == method and "/v1/" in r.path]

    def polls(self) -> list[Any]:
        return [r for r in self.emulator.requests if r.path.endswith("/v1/get_result")]


Start = Callable[..., Awaitable[Upstream]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    async with AsyncExitStack() as stack:
        http = await asyncio.to_thread(create_http_client, timeout=5)
        stack.push_async_callback(http.aclose)

        async def factory(**knobs: Any) -> Upstream:
            knobs.setdefault("accepted_keys", {KEY})
            emulator = BFLEmulator(**knobs)
            running = await stack.enter_async_context(serve_sandbox(Sandbox(bfl=emulator)))
            return Upstream(emulator, running.urls["bfl"], http)

        yield factory


@pytest.fixture
async def upstream(start: Start) -> Upstream:
    return await start()


def gen(**kw: Any) -> GenerateRequest:
    values: dict[str, Any] = {"model": "flux-pro-1.1", "prompt": "a lighthouse at dusk"}
    values.update(kw)
    return GenerateRequest(**values)


def edit(model: str, *inputs: bytes, **kw: Any) -> EditRequest:
    pictures = tuple(InputImage(data=data, media_type="image/png") for data in inputs)
    return EditRequest(model=model, prompt=kw.pop("prompt", "combine them"), images=pictures, **kw)


def size_of(data: bytes | None) -> tuple[int, int]:
    assert data is not None
    with Image.open(io.BytesIO(data)) as img:
        return img.size


# --- what is sent and what comes back ----------------------------------------------------------------


async def test_generate_sends_exactly_the_request_and_returns_the_image(upstream: Upstream) -> None:
    prompt = 'a "quoted" sign saying 100% <ok>, and a fox'
    request = gen(
        prompt=prompt,
        size="512x256",
        seed=7,
        output_format="png",
        options={"safety_tolerance": 0, "prompt_upsampling": False},
    )
    (output,) = await upstream.backend().generate(request, api_key=KEY)
    (submit,) = upstream.sent()
    assert submit.path.endswith("/v1/flux-pro-1.1")
    assert submit.json == {
        "prompt": prompt,
        "width": 512,
        "height": 256,
        "seed": 7,
        "output_format": "png",
        "safety_tolerance": 0,
        "prompt_upsampling": False,
    }
    assert submit.headers["x-key"] == KEY and submit.headers["content-type"] == "application/json"
    assert all(poll.headers["x-key"] == KEY for poll in upstream.polls())
    assert output.media_type == "image/png" and size_of(output.data) == (512, 256)
    stamp = read_stamp(output.data or b"")
    assert stamp is not None and stamp["prompt"] == prompt
    assert output.seed == 7 and output.revised_prompt is None
    details = output.provider_details
    assert details["endpoint"] == "flux-pro-1.1" and details["cost"] == 4.0 and details["id"]
    assert details["output_mp"] == 0.13 and details["input_mp"] == 0.0


async def test_defaults_are_left_to_the_service(upstream: Upstream) -> None:
    (output,) = await upstream.backend().generate(gen(), api_key=KEY)
    assert upstream.sent()[0].json == {"prompt": "a lighthouse at dusk"}
    assert output.media_type == "image/jpeg" and size_of(output.data) == (1024, 768)
    assert isinstance(output.seed, int)


@pytest.mark.parametrize(("fmt", "media_type"), [("jpeg", "image/jpeg"), ("png", "image/png"), ("webp", "image/webp")])
async def test_ready_gives_bytes_of_the_requested_format(upstream: Upstream, fmt: str, media_type: str) -> None:
    (output,) = await upstream.backend().generate(gen(size="256x256", output_format=fmt), api_key=KEY)
    assert output.media_type == media_type and output.data


async def test_ultra_sends_aspect_ratio_and_raw(upstream: Upstream) -> None:
    backend = upstream.backend()
    (output,) = await backend.generate(gen(model="flux-pro-1.1-ultra", size="21:9"), api_key=KEY)
    await backend.generate(gen(model="flux-pro-1.1-ultra", options={"aspect_ratio": "1:1", "raw": True}), api_key=KEY)
    first, second = upstream.sent()
    assert first.json == {"prompt": "a lighthouse at dusk", "aspect_ratio": "21:9"}
    assert second.json == {"prompt": "a lighthouse at dusk", "aspect_ratio": "1:1", "raw": True}
    width, height = size_of(output.data)
    assert abs(width / height - 21 / 9) < 0.05


async def test_upsampled_prompt_comes_back_as_revised_prompt(upstream: Upstream) -> None:
    request = gen(options={"prompt_upsampling": True})
    (output,) = await upstream.backend().generate(request, api_key=KEY)
    assert output.revised_prompt and output.revised_prompt.startswith(request.prompt)
    assert output.revised_prompt != request.prompt


@pytest.mark.parametrize(
    ("request_", "needle"),
    [
        (gen(model="flux-pro-1.1-ultra", size="1024x768"), "size"),
        (gen(model="flux-pro-1.1-ultra", size="16:9", options={"aspect_ratio": "1:1"}), "disagree"),
        (gen(model="flux-kontext-pro", options={"aspect_ratio": "30:9"}), "21:9"),
        (gen(size="1000x768"), "multiples of 32"),
        (gen(size="1024x224"), "at least 256"),
        (gen(model="flux-2-pro", size="4096x4096"), "pixels"),
        (gen(model="flux-2-pro", options={"safety_tolerance": 6}), "between 0 and 5"),
        (gen(options={"safety_tolerance": 7}), "between 0 and 6"),
        (gen(options={"safety_tolerance": "low"}), "must be a int"),
        (gen(options={"prompt_upsampling": "yes"}), "must be a bool"),
        (gen(options={"raw": True}), "raw"),
        (gen(model="flux-dev", steps=60), "steps must be between 1 and 50"),
        (gen(model="flux-2-flex", guidance=11), "guidance must be between 1.5 and 10"),
        (gen(steps=20), "steps"),
        (gen(n=2), "at most 1"),
        (gen(output_format="jpeg", output_compression=80), "output_compression"),
        (gen(model="flux-pro-finetuned"), "finetune_id"),
        (gen(model="flux-9"), "Unknown model"),
    ],
)
async def test_profile_and_options_are_checked_before_any_request(
    upstream: Upstream, request_: GenerateRequest, needle: str
) -> None:
    with pytest.raises(UnsupportedOperationError, match=needle):
        await upstream.backend().generate(request_, api_key=KEY)
    assert upstream.emulator.requests == []


# --- polling -----------------------------------------------------------------------------------------


async def test_polling_follows_polling_url_to_another_host_alias(start: Start) -> None:
    upstream = await start(polling_host_alias="localhost", pending_polls=2)
    (output,) = await upstream.backend().generate(gen(), api_key=KEY)
    assert output.data
    polls = upstream.polls()
    assert len(polls) == 3
    assert all(poll.headers["host"].startswith("localhost:") for poll in polls)
    assert upstream.sent()[0].headers["host"].startswith("127.0.0.1:")


async def test_missing_polling_url_falls_back_to_the_base_url(start: Start) -> None:
    upstream = await start(omit_polling_url=True)
    (output,) = await upstream.backend().generate(gen(), api_key=KEY)
    assert output.data and upstream.polls()


async def test_polling_url_on_a_foreign_host_is_refused_without_sending_the_key(start: Start) -> None:
    upstream = await start(polling_host_alias="collector.example")
    with pytest.raises(ProviderResponseError) as caught:
        await upstream.backend().generate(gen(), api_key=KEY)
    assert "collector.example" in caught.value.message and "FLUX_API_BASE_URL" in str(caught.value.hint)
    assert upstream.polls() == []


async def test_progress_reports_pending_fractions(start: Start) -> None:
    upstream = await start(pending_polls=3, progress_values=[0.25, 0.5, None])
    seen: list[Progress] = []

    async def progress(update: Progress) -> None:
        seen.append(update)

    await upstream.backend().generate(gen(), api_key=KEY, progress=progress)
    assert [update.fraction for update in seen] == [0.25, 0.5, None]
    assert all(update.message and "pending" in update.message for update in seen)


async def test_polls_back_off_up_to_the_maximum_interval(start: Start) -> None:
    upstream = await start(pending_polls=8)
    stamps: list[float] = []

    async def progress(update: Progress) -> None:
        stamps.append(asyncio.get_running_loop().time())

    backend = upstream.backend(poll_interval=0.02, max_poll_interval=0.16)
    await backend.generate(gen(), api_key=KEY, progress=progress)
    gaps = [later - earlier for earlier, later in itertools.pairwise(stamps)]
    assert len(gaps) == 7
    assert gaps[0] < 0.12  # the second wait: 0.04 s
    assert all(0.15 <= gap < 0.4 for gap in gaps[3:])  # capped at 0.16 s
    assert gaps[0] < gaps[1] < gaps[2]


async def test_a_task_that_never_finishes_times_out_within_the_deadline(start: Start) -> None:
    upstream = await start(pending_polls=10**9)
    started = asyncio.get_running_loop().time()
    with pytest.raises(ProviderUnavailableError, match=r"timed out after 0\.5 s") as caught:
        await upstream.backend(deadline=0.5).generate(gen(), api_key=KEY)
    assert asyncio.get_running_loop().time() - started < 1.5
    assert "task" in caught.value.message and len(upstream.polls()) > 3


async def test_cancelling_the_call_stops_polling_at_once(start: Start) -> None:
    upstream = await start(pending_polls=10**9)
    call = asyncio.create_task(upstream.backend().generate(gen(), api_key=KEY))
    while len(upstream.polls()) < 3:
        await asyncio.sleep(0.01)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    count = len(upstream.polls())
    await asyncio.sleep(0.2)
    assert len(upstream.polls()) == count


async def test_transient_poll_failures_are_retried(upstream: Upstream) -> None:
    upstream.emulator.faults.add(BFL_FAULTS["unavailable"](), times=2, path_contains="get_result")
    (output,) = await upstream.backend().generate(gen(), api_key=KEY)
    assert output.data
    assert [poll.status for poll in upstream.polls()][:2] == [503, 503]


async def test_persistent_poll_failures_give_up(upstream: Upstream) -> None:
    upstream.emulator.faults.add(BFL_FAULTS["server_error"](), times=None, path_contains="get_result")
    with pytest.raises(ProviderUnavailableError, match="HTTP 500"):
        await upstream.backend().generate(gen(), api_key=KEY)
    assert len(upstream.polls()) == 3


# --- edits ---------------------------------------------------------------------------------------------


async def test_kontext_edit_with_one_reference(upstream: Upstream) -> None:
    source = images.png(320, 160, (0, 90, 200))
    (output,) = await upstream.backend().edit(
        edit("flux-kontext-pro", source, options={"aspect_ratio": "2:1"}), api_key=KEY
    )
    stamp = read_stamp(output.data or b"")
    assert stamp is not None and stamp["kind"] == "edit"
    assert stamp["inputs"] == [hashlib.sha256(source).hexdigest()]
    (submit,) = upstream.sent()
    assert submit.json["aspect_ratio"] == "2:1" and submit.json["prompt"] == "combine them"
    assert [f.field for f in submit.files] == ["input_image"]


async def test_kontext_edit_with_several_references_in_order(upstream: Upstream) -> None:
    inputs = [images.png(64, 64, (255, 0, 0)), images.png(64, 64, (0, 255, 0)), images.png(64, 64, (0, 0, 255))]
    (output,) = await upstream.backend().edit(edit("flux-kontext-max", *inputs), api_key=KEY)
    stamp = read_stamp(output.data or b"")
    assert stamp is not None and stamp["inputs"] == [hashlib.sha256(data).hexdigest() for data in inputs]
    assert [f.field for f in upstream.sent()[0].files] == ["input_image", "input_image_2", "input_image_3"]


async def test_flux2_edit_takes_up_to_its_limit(upstream: Upstream) -> None:
    inputs = [images.png(96, 64, (i * 40, 0, 0)) for i in range(4)]
    backend = upstream.backend()
    (output,) = await backend.edit(
        edit("flux-2-klein-4b", *inputs, size="192x128", output_format="png", seed=3), api_key=KEY
    )
    assert size_of(output.data) == (192, 128) and output.seed == 3
    stamp = read_stamp(output.data or b"")
    assert stamp is not None and len(stamp["inputs"]) == 4
    with pytest.raises(UnsupportedOperationError, match="at most 4"):
        await backend.edit(edit("flux-2-klein-4b", *inputs, inputs[0]), api_key=KEY)
    with pytest.raises(UnsupportedOperationError, match="cannot edit"):
        await backend.edit(edit("flux-pro-1.1", inputs[0]), api_key=KEY)
    assert len(upstream.sent()) == 1


# --- fine-tunes ----------------------------------------------------------------------------------------


async def test_finetuned_generation_sends_the_finetune(upstream: Upstream) -> None:
    request = gen(
        model="flux-pro-finetuned",
        size="256x256",
        steps=30,
        guidance=2.5,
        options={"finetune_id": "sandbox-character", "finetune_strength": 1.0},
    )
    (output,) = await upstream.backend().generate(request, api_key=KEY)
    assert output.data and output.provider_details["cost"] == 6.0
    assert upstream.sent()[0].json == {
        "prompt": "a lighthouse at dusk",
        "width": 256,
        "height": 256,
        "steps": 30,
        "guidance": 2.5,
        "finetune_id": "sandbox-character",
        "finetune_strength": 1.0,
    }


async def test_unknown_finetune_is_a_request_error_naming_the_field(upstream: Upstream) -> None:
    request = gen(model="flux-pro-1.1-ultra-finetuned", options={"finetune_id": "gone"})
    with pytest.raises(ProviderRequestError, match="finetune_id: Value error, unknown finetune_id"):
        await upstream.backend().generate(request, api_key=KEY)


async def test_list_finetunes_merges_the_details(upstream: Upstream) -> None:
    finetunes = await upstream.backend().list_finetunes(KEY)
    assert [item["id"] for item in finetunes] == ["sandbox-character", "sandbox-style"]
    assert finetunes[0]["trigger_word"] == "TOK" and finetunes[1]["mode"] == "style"


async def test_a_failed_detail_is_reported_on_its_item_only(upstream: Upstream) -> None:
    upstream.emulator.faults.add(BFL_FAULTS["server_error"](), path_contains="finetune_details")
    finetunes = await upstream.backend().list_finetunes(KEY)
    failed = [item for item in finetunes if "error" in item]
    assert len(failed) == 1 and "HTTP 500" in failed[0]["error"]
    assert len([item for item in finetunes if "trigger_word" in item]) == 1


async def test_list_finetunes_maps_failures(upstream: Upstream) -> None:
    with pytest.raises(ProviderAuthError, match="FLUX_API_KEY"):
        await upstream.backend().list_finetunes("bfl_wrong_key_0123456789")


# --- failures ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "error", "needles"),
    [
        ("[[sandbox:moderation]]", ContentPolicyError, ("Request Moderated", "Rephrase", "safety_tolerance")),
        ("[[sandbox:content_moderated]]", ContentPolicyError, ("generated image", "Rephrase", "safety_tolerance")),
        ("[[sandbox:error]]", ProviderUnavailableError, ("failed to generate", "Try again")),
        ("[[sandbox:not_found]]", ProviderResponseError, ("Task not found", "FLUX_API_BASE_URL")),
        ("[[sandbox:credits]]", ProviderQuotaError, ("out of credits", "Add credits", "FLUX_API_KEY")),
        ("[[sandbox:busy]]", ProviderRateLimitError, ("active tasks", "Wait for running")),
        ("[[sandbox:status=503]]", ProviderUnavailableError, ("HTTP 503", "Try again")),
        ("[[sandbox:status=400]]", ProviderRequestError, ("HTTP 400",)),
    ],
)
async def test_each_outcome_maps_to_its_class(
    upstream: Upstream, prompt: str, error: type[ProviderError], needles: tuple[str, ...]
) -> None:
    with pytest.raises(error) as caught:
        await upstream.backend().generate(gen(prompt=f"a cat {prompt}"), api_key=KEY)
    exc = caught.value
    assert type(exc) is error and exc.provider == "bfl"
    for needle in needles:
        assert needle in str(exc)
    assert KEY not in str(exc)


@pytest.mark.parametrize(
    ("fault", "error", "needles"),
    [
        (BFL_FAULTS["forbidden"](), ProviderAuthError, ("Invalid Authentication", "FLUX_API_KEY")),
        (BFL_FAULTS["unauthorized"](), ProviderAuthError, ("HTTP 401", "FLUX_API_KEY")),
        (BFL_FAULTS["not_found"](), ProviderRequestError, ("/v1/flux-pro-1.1", "FLUX_API_BASE_URL")),
        (BFL_FAULTS["bad_gateway"](), ProviderUnavailableError, ("HTTP 502",)),
        (
            Fault.raw_error(422, {"detail": [{"loc": ["body", "width"], "msg": "Input should be a multiple of 32"}]}),
            ProviderRequestError,
            ("width: Input should be a multiple of 32",),
        ),
        (Fault.raw_error(400, {"message": f"bad key {KEY}"}), ProviderRequestError, ("bad key [redacted]",)),
        (Fault.malformed_json(), ProviderResponseError, ("not JSON",)),
        (Fault.empty_data(), ProviderResponseError, ("without a task id",)),
    ],
)
async def test_each_submit_failure_maps_to_its_class(
    upstream: Upstream, fault: Fault, error: type[ProviderError], needles: tuple[str, ...]
) -> None:
    upstream.emulator.faults.add(fault)
    with pytest.raises(error) as caught:
        await upstream.backend().generate(gen(), api_key=KEY)
    assert type(caught.value) is error
    for needle in needles:
        assert needle in str(caught.value)
    assert KEY not in str(caught.value)


async def test_rate_limit_carries_retry_after(upstream: Upstream) -> None:
    upstream.emulator.faults.add(BFL_FAULTS["busy"](retry_after=3))
    with pytest.raises(ProviderRateLimitError) as caught:  # retries off: the caller gets BFL's Retry-After
        await upstream.backend(max_retries=0).generate(gen(), api_key=KEY)
    assert caught.value.retry_after == 3 and caught.value.status_code == 429


@pytest.mark.parametrize(
    ("body", "error", "needle"),
    [
        ({"id": "x", "status": "Weird"}, ProviderResponseError, "unknown task status 'Weird'"),
        ({"id": "x", "status": "Failed"}, ProviderUnavailableError, "failed to generate"),
        ({"id": "x", "status": "Ready", "result": {"seed": 1}}, ProviderResponseError, "without result.sample"),
    ],
)
async def test_odd_poll_answers_are_surfaced_not_polled_forever(
    upstream: Upstream, body: dict[str, Any], error: type[ProviderError], needle: str
) -> None:
    upstream.emulator.faults.add(Fault.raw_error(200, body), path_contains="get_result")
    with pytest.raises(error, match=needle):
        await upstream.backend().generate(gen(), api_key=KEY)
    assert len(upstream.polls()) == 1


async def test_wrong_key_is_an_auth_error_without_the_key(upstream: Upstream) -> None:
    wrong = "bfl_wrong_key_0123456789abcdef"
    with pytest.raises(ProviderAuthError) as caught:
        await upstream.backend().generate(gen(), api_key=wrong)
    assert wrong not in str(caught.value) and "FLUX_API_KEY" in str(caught.value)
    assert caught.value.status_code == 403


async def test_401_is_an_auth_error_too(start: Start) -> None:
    upstream = await start(auth_status=401)
    with pytest.raises(ProviderAuthError, match="HTTP 401"):
        await upstream.backend().generate(gen(), api_key=None)


async def test_retired_endpoint_names_the_base_url_setting(start: Start) -> None:
    upstream = await start(retired_endpoints={"flux-pro"})
    with pytest.raises(ProviderRequestError, match="FLUX_API_BASE_URL") as caught:
        await upstream.backend().generate(gen(model="flux-pro"), api_key=KEY)
    assert caught.value.status_code == 404


async def test_task_not_found_as_http_404_on_a_poll(start: Start) -> None:
    upstream = await start(not_found_status=404)
    with pytest.raises(ProviderResponseError, match="Task not found"):
        await upstream.backend().generate(gen(prompt="p [[sandbox:not_found]]"), api_key=KEY)


async def test_submit_timeout_is_unavailable(upstream: Upstream) -> None:
    async with await asyncio.to_thread(create_http_client, timeout=0.3) as http:
        backend = upstream.backend(http_client=http)
        with pytest.raises(ProviderUnavailableError, match="did not answer in time"):
            await backend.generate(gen(prompt="p [[sandbox:hang]]"), api_key=KEY)


async def test_connection_refused_is_unavailable() -> None:
    async with await asyncio.to_thread(create_http_client, timeout=2) as http:
        backend = BFLBackend(base_url="http://127.0.0.1:9/bfl", http_client=http, fetch_policy=LOOPBACK)
        with pytest.raises(ProviderUnavailableError, match="Could not connect") as caught:
            await backend.generate(gen(), api_key=KEY)
    assert KEY not in str(caught.value)


async def test_expired_sample_is_unavailable(start: Start) -> None:
    upstream = await start(url_ttl=0)
    with pytest.raises(ProviderUnavailableError, match="expired") as caught:
        await upstream.backend().generate(gen(), api_key=KEY)
    assert caught.value.status_code == 403 and "10 minutes" in str(caught.value.hint)


async def test_the_sample_goes_through_the_safe_fetcher(start: Start) -> None:
    upstream = await start(polling_host_alias="localhost")  # links on localhost, the base URL on 127.0.0.1
    strict = upstream.backend(fetch_policy=FetchPolicy(max_bytes=50 * 1024 * 1024))
    with pytest.raises(ProviderResponseError, match="loopback"):
        await strict.generate(gen(), api_key=KEY)
    listed = FetchPolicy(max_bytes=50 * 1024 * 1024, allow_loopback=True, allowed_hosts=BFL_DELIVERY_HOSTS)
    with pytest.raises(ProviderResponseError, match="the host 'localhost'"):
        await upstream.backend(fetch_policy=listed).generate(gen(), api_key=KEY)
    assert not [r for r in upstream.emulator.requests if "/delivery/" in r.path]


async def test_the_base_url_must_be_http() -> None:
    async with await asyncio.to_thread(create_http_client) as http:
        with pytest.raises(ConfigurationError, match="FLUX_API_BASE_URL"):
            BFLBackend(base_url="api.bfl.ai", http_client=http, fetch_policy=LOOPBACK)


def test_profiles_cover_the_endpoints() -> None:
    profiles = BFLBackend.profiles
    assert {"flux-pro-1.1", "flux-pro-1.1-ultra", "flux-kontext-max", "flux-2-pro", "flux-pro-finetuned"} <= set(
        profiles
    )
    assert all(profile.max_n == 1 and profile.family == "flux" for profile in profiles.values())
    assert profiles["flux-2-pro"].max_input_images == 8 and profiles["flux-kontext-pro"].max_input_images == 4
    assert not profiles["flux-pro-1.1"].supports_edit and "finetune_id" in profiles["flux-pro-finetuned"].option_keys


# --- behind a gateway: where result links may point ---------------------------------------------------

DELIVERY_ONLY = FetchPolicy(max_bytes=50 * 1024 * 1024, allow_loopback=True, allowed_hosts=BFL_DELIVERY_HOSTS)


async def test_result_links_on_the_gateways_own_host_are_fetched(start: Start) -> None:
    """FLUX_API_BASE_URL on a gateway ('localhost' here) that hands out links on its own host."""
    upstream = await start()
    gateway = upstream.url.replace("127.0.0.1", "localhost")
    backend = upstream.backend(base_url=gateway, fetch_policy=DELIVERY_ONLY, is_sandbox=False)
    (output,) = await backend.generate(gen(), api_key=KEY)
    assert output.data
    (delivery,) = [r for r in upstream.emulator.requests if "/delivery/" in r.path]
    assert delivery.headers["host"].startswith("localhost:")


async def test_a_link_on_another_host_is_refused_naming_the_host_and_the_setting(start: Start) -> None:
    upstream = await start(polling_host_alias="localhost")  # polls and links on localhost, base on 127.0.0.1
    backend = upstream.backend(fetch_policy=DELIVERY_ONLY, is_sandbox=False)
    with pytest.raises(ProviderResponseError) as caught:
        await backend.generate(gen(), api_key=KEY)
    assert "'localhost'" in caught.value.message
    hint = str(caught.value.hint)
    assert "LIMNER_FLUX_RESULT_HOSTS" in hint and "localhost" in hint and "Try again" not in hint
    assert not [r for r in upstream.emulator.requests if "/delivery/" in r.path]


async def test_hosts_in_the_setting_are_fetched(start: Start) -> None:
    upstream = await start(polling_host_alias="localhost")
    backend = upstream.backend(fetch_policy=DELIVERY_ONLY, is_sandbox=False, result_hosts=("localhost",))
    (output,) = await backend.generate(gen(), api_key=KEY)
    assert output.data and [r for r in upstream.emulator.requests if "/delivery/" in r.path]


async def test_the_setting_reaches_the_flux_family_that_limner_builds(start: Start, tmp_path: Path) -> None:
    """FLUX_API_BASE_URL and LIMNER_FLUX_RESULT_HOSTS as an operator sets them, through the runtime."""
    upstream = await start(polling_host_alias="localhost")
    settings = make_settings(
        tmp_path,
        sandbox="off",
        flux_api_key=KEY,
        flux_api_base_url=upstream.url,
        fetch_allow_loopback=True,
        flux_result_hosts="localhost",
    )
    async with Runtime.open(settings) as runtime:
        backend = runtime.families["flux"].backend
        assert isinstance(backend, BFLBackend) and not backend.is_sandbox
        assert backend.fetch_policy.allowed_hosts == BFL_DELIVERY_HOSTS | {"127.0.0.1", "localhost"}
        (output,) = await backend.generate(gen(), api_key=KEY)
    assert output.data and [r for r in upstream.emulator.requests if "/delivery/" in r.path]


# --- retries of the paid submit (one policy for every upstream: backends/retries.py) -------------------


def _submits(upstream: Upstream) -> list[Any]:
    return [r for r in upstream.emulator.requests if r.method == "POST" and r.path.startswith("/bfl/v1/flux")]


async def test_a_submit_refused_for_too_many_active_tasks_is_retried(upstream: Upstream) -> None:
    upstream.emulator.faults.add(BFL_FAULTS["busy"](), times=2, path_contains="/v1/flux")
    (output,) = await upstream.backend(max_retries=2).generate(gen(), api_key=KEY)
    assert output.data
    assert [r.status for r in _submits(upstream)] == [429, 429, 200]  # refused: no task, no credits spent


@pytest.mark.parametrize("fault", ["server_error", "bad_gateway"])
async def test_a_submit_that_may_have_created_a_task_is_not_repeated(upstream: Upstream, fault: str) -> None:
    upstream.emulator.faults.add(BFL_FAULTS[fault](), times=3, path_contains="/v1/flux")
    with pytest.raises(ProviderError):
        await upstream.backend(max_retries=2).generate(gen(), api_key=KEY)
    assert len(_submits(upstream)) == 1  # a second submit could pay for a second image
