"""The BFL emulator over real HTTP on loopback, driven by a plain client: every route, status and knob."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest
from PIL import Image
from starlette.types import ASGIApp

from limner.net import create_http_client
from limner.sandbox import read_stamp
from limner.sandbox.bfl import BFLEmulator
from limner.sandbox.bfl_catalog import ENDPOINTS
from limner.sandbox.bfl_tasks import TaskStatus
from limner.sandbox.bfl_wire import BFL_FAULTS
from limner.sandbox.faults import Fault
from limner.sandbox.openai_images import OpenAIImagesEmulator
from limner.sandbox.server import Sandbox, serve_sandbox
from tests import images

KEY = "bfl_sandbox_key_0001"
OTHER_KEY = "bfl_sandbox_key_0002"


@dataclass
class Api:
    emulator: BFLEmulator
    base: str
    http: httpx2.AsyncClient

    async def submit(self, endpoint: str, body: Any, key: str | None = KEY) -> httpx2.Response:
        headers = {"x-key": key} if key else {}
        return await self.http.post(f"{self.base}/v1/{endpoint}", json=body, headers=headers)

    async def task(self, endpoint: str, body: Any) -> dict[str, Any]:
        response = await self.submit(endpoint, body)
        assert response.status_code == 200, response.text
        return response.json()

    async def poll(self, url: str, key: str | None = KEY) -> httpx2.Response:
        return await self.http.get(url, headers={"x-key": key} if key else {})

    async def finish(self, submitted: dict[str, Any], limit: int = 50) -> tuple[dict[str, Any], int]:
        """Poll until a terminal status: (last body, number of Pending answers)."""
        for pending in range(limit):
            body = (await self.poll(submitted["polling_url"])).json()
            if body["status"] != "Pending":
                return body, pending
        raise AssertionError("the task never finished")

    async def image(self, body: Any, endpoint: str = "flux-pro-1.1") -> bytes:
        result, _ = await self.finish(await self.task(endpoint, body))
        assert result["status"] == "Ready", result
        response = await self.http.get(result["result"]["sample"])
        assert response.status_code == 200
        return response.content


Start = Callable[..., Awaitable[Api]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    async with AsyncExitStack() as stack:
        http = await asyncio.to_thread(create_http_client, timeout=10)
        stack.push_async_callback(http.aclose)

        async def factory(**knobs: Any) -> Api:
            knobs.setdefault("accepted_keys", {KEY, OTHER_KEY})
            emulator = BFLEmulator(**knobs)
            running = await stack.enter_async_context(serve_sandbox(Sandbox(bfl=emulator)))
            return Api(emulator, running.urls["bfl"], http)

        yield factory


@pytest.fixture
async def api(start: Start) -> Api:
    return await start()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def opened(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


# --- submit and polling ----------------------------------------------------------------------------


async def test_submit_answers_with_an_absolute_polling_url_and_cost(api: Api) -> None:
    submitted = await api.task("flux-pro-1.1", {"prompt": "a fox"})
    assert set(submitted) == {"id", "polling_url", "cost", "input_mp", "output_mp"}
    assert submitted["polling_url"] == f"{api.base}/v1/get_result?id={submitted['id']}"
    assert submitted["cost"] == 4.0 and submitted["input_mp"] == 0.0 and submitted["output_mp"] == 0.79


async def test_polling_lifecycle_pending_with_progress_then_ready(start: Start) -> None:
    api = await start(pending_polls=2)
    submitted = await api.task("flux-pro-1.1", {"prompt": "a fox", "seed": 42})
    first = (await api.poll(submitted["polling_url"])).json()
    second = (await api.poll(submitted["polling_url"])).json()
    assert [first["status"], second["status"]] == ["Pending", "Pending"]
    assert 0 < first["progress"] < second["progress"] < 1
    assert first["result"] is None and set(first) == {"id", "status", "result", "progress", "details", "preview"}
    ready = (await api.poll(submitted["polling_url"])).json()
    assert ready["status"] == "Ready"
    result = ready["result"]
    assert result["seed"] == 42 and result["prompt"] == "a fox"
    assert result["duration"] >= 0 and result["end_time"] >= result["start_time"]
    again = (await api.poll(submitted["polling_url"])).json()
    assert again["result"]["sample"] == result["sample"]
    fetched = await api.http.get(result["sample"])
    assert fetched.headers["content-type"] == "image/jpeg"
    assert opened(fetched.content).size == (1024, 768)


async def test_seed_is_random_when_not_sent(api: Api) -> None:
    first, _ = await api.finish(await api.task("flux-pro-1.1", {"prompt": "p"}))
    second, _ = await api.finish(await api.task("flux-pro-1.1", {"prompt": "p"}))
    assert isinstance(first["result"]["seed"], int) and first["result"]["seed"] != second["result"]["seed"]


class ManualClock:
    """The emulator's clock, moved by the test: time passes exactly when the test says."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_ready_after_keeps_a_task_pending_for_that_long(start: Start) -> None:
    clock = ManualClock()
    api = await start(pending_polls=0, ready_after=30, clock=clock)
    submitted = await api.task("flux-dev", {"prompt": "p"})
    assert (await api.poll(submitted["polling_url"])).json()["status"] == "Pending"
    clock.now += 29.9
    assert (await api.poll(submitted["polling_url"])).json()["status"] == "Pending"
    clock.now += 0.1
    assert (await api.poll(submitted["polling_url"])).json()["status"] == "Ready"


async def test_progress_values_are_reported_in_turn(start: Start) -> None:
    api = await start(pending_polls=3, progress_values=[None, 0.5])
    submitted = await api.task("flux-dev", {"prompt": "p"})
    seen = [(await api.poll(submitted["polling_url"])).json()["progress"] for _ in range(3)]
    assert seen == [None, 0.5, 0.5]


@pytest.mark.parametrize(
    ("trigger", "status"),
    [
        ("[[sandbox:moderation]]", "Request Moderated"),
        ("[[sandbox:content_moderated]]", "Content Moderated"),
        ("[[sandbox:error]]", "Error"),
        ("[[sandbox:not_found]]", "Task not found"),
    ],
)
async def test_every_terminal_status_through_triggers(api: Api, trigger: str, status: str) -> None:
    body, _ = await api.finish(await api.task("flux-pro-1.1", {"prompt": f"a cat {trigger}"}))
    assert body["status"] == status
    assert body["result"] is None
    if status != "Task not found":
        assert body["details"]["message"]


async def test_queued_outcomes_apply_to_the_next_tasks(api: Api) -> None:
    api.emulator.queue_outcome(TaskStatus.CONTENT_MODERATED)
    first, _ = await api.finish(await api.task("flux-pro-1.1", {"prompt": "p"}))
    second, _ = await api.finish(await api.task("flux-pro-1.1", {"prompt": "p"}))
    assert [first["status"], second["status"]] == ["Content Moderated", "Ready"]
    with pytest.raises(ValueError, match="Pending"):
        api.emulator.queue_outcome("Pending")


async def test_unknown_and_foreign_ids_are_task_not_found(api: Api) -> None:
    unknown = await api.poll(f"{api.base}/v1/get_result?id=no-such-task")
    assert unknown.status_code == 200 and unknown.json()["status"] == "Task not found"
    submitted = await api.task("flux-pro-1.1", {"prompt": "p"})
    foreign = await api.poll(submitted["polling_url"], key=OTHER_KEY)
    assert foreign.json()["status"] == "Task not found"
    missing = await api.poll(f"{api.base}/v1/get_result")
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["loc"] == ["query", "id"]


async def test_task_not_found_can_answer_404(start: Start) -> None:
    api = await start(not_found_status=404)
    response = await api.poll(f"{api.base}/v1/get_result?id=nope")
    assert response.status_code == 404 and response.json() == {"detail": "Task not found"}


async def test_slow_trigger_adds_pending_polls(api: Api) -> None:
    body, pending = await api.finish(await api.task("flux-pro-1.1", {"prompt": "p [[sandbox:slow=3]]"}))
    assert body["status"] == "Ready" and pending == 4  # the default one, plus three


async def test_polling_url_can_name_another_host_alias(start: Start) -> None:
    api = await start(polling_host_alias="localhost")
    submitted = await api.task("flux-pro-1.1", {"prompt": "p"})
    assert submitted["polling_url"].startswith(api.base.replace("127.0.0.1", "localhost"))
    body, _ = await api.finish(submitted)
    assert body["status"] == "Ready"
    assert api.emulator.requests[-1].headers["host"].startswith("localhost:")


async def test_served_under_bfl_and_at_the_root_with_links_on_the_same_prefix(start: Start) -> None:
    """The official client keeps only the host of its base URL, so the root answers as /bfl does."""
    api = await start()
    root = api.base.removesuffix("/bfl")
    for base in (api.base, root):
        response = await api.http.post(f"{base}/v1/flux-dev", json={"prompt": "p"}, headers={"x-key": KEY})
        submitted = response.json()
        assert submitted["polling_url"] == f"{base}/v1/get_result?id={submitted['id']}"
        body, _ = await api.finish(submitted)
        assert body["result"]["sample"].startswith(f"{base}/delivery/results/")
        assert (await api.http.get(body["result"]["sample"])).status_code == 200
    assert (await api.http.get(f"{root}/elsewhere")).json() == {"detail": "Not Found"}


def test_only_one_emulator_can_take_the_root() -> None:
    with pytest.raises(ValueError, match="root"):
        Sandbox(bfl=BFLEmulator(), openai=_RootClaimant()).app()


class _RootClaimant(OpenAIImagesEmulator):
    def mounts(self) -> dict[str, ASGIApp]:
        return {**super().mounts(), "": super().app()}


async def test_answers_without_polling_url(start: Start) -> None:
    api = await start(omit_polling_url=True)
    submitted = await api.task("flux-pro-1.1", {"prompt": "p"})
    assert "polling_url" not in submitted and submitted["cost"] == 4.0
    webhook = await api.task("flux-dev", {"prompt": "p", "webhook_url": "https://example.com/hook"})
    assert webhook["webhook_url"] == "https://example.com/hook" and "polling_url" not in webhook


async def test_prompt_upsampling_changes_the_used_prompt(api: Api) -> None:
    body, _ = await api.finish(await api.task("flux-pro-1.1", {"prompt": "a fox", "prompt_upsampling": True}))
    assert body["result"]["prompt"].startswith("a fox") and body["result"]["prompt"] != "a fox"


# --- endpoints, validation and outputs ----------------------------------------------------------


SMALL_INPUT = images.png(320, 256, (10, 200, 30))

MINIMAL_BODIES: dict[str, tuple[dict[str, Any], tuple[int, int]]] = {
    "flux-pro-1.1": ({"prompt": "p"}, (1024, 768)),
    "flux-pro-1.1-ultra": ({"prompt": "p", "aspect_ratio": "1:1", "raw": True}, (2048, 2048)),
    "flux-dev": ({"prompt": "p", "width": 512, "height": 256}, (512, 256)),
    "flux-pro": ({"prompt": "p", "width": 256, "height": 256}, (256, 256)),
    "flux-kontext-pro": ({"prompt": "p"}, (1024, 1024)),
    "flux-kontext-max": ({"prompt": "p", "aspect_ratio": "16:9"}, (1376, 768)),
    "flux-pro-1.0-fill": ({"image": b64(SMALL_INPUT)}, (320, 256)),
    "flux-pro-1.0-expand": ({"image": b64(SMALL_INPUT), "top": 64, "left": 32}, (352, 320)),
    "flux-2-pro": ({"prompt": "p", "width": 512, "height": 512}, (512, 512)),
    "flux-2-pro-preview": ({"prompt": "p", "width": 520, "height": 300}, (512, 288)),
    "flux-2-max": ({"prompt": "p"}, (1024, 1024)),
    "flux-2-flex": ({"prompt": "p", "width": 256, "height": 256, "steps": 10}, (256, 256)),
    "flux-2-klein-4b": ({"prompt": "p", "width": 3000, "height": 3000}, (2048, 2048)),
    "flux-2-klein-9b": ({"prompt": "p", "input_image": b64(SMALL_INPUT)}, (320, 256)),
    "flux-2-klein-9b-preview": ({"prompt": "p", "width": 256}, (256, 256)),
    "flux-pro-1.1-ultra-finetuned": (
        {"prompt": "p", "finetune_id": "sandbox-style", "aspect_ratio": "1:1"},
        (2048, 2048),
    ),
    "flux-pro-finetuned": (
        {"prompt": "p", "finetune_id": "sandbox-character", "width": 256, "height": 256},
        (256, 256),
    ),
    "flux-pro-1.0-fill-finetuned": ({"image": b64(SMALL_INPUT), "finetune_id": "sandbox-style"}, (320, 256)),
}


def test_every_catalogue_endpoint_is_covered() -> None:
    assert set(MINIMAL_BODIES) == set(ENDPOINTS)


@pytest.mark.parametrize("endpoint", sorted(MINIMAL_BODIES))
async def test_each_endpoint_renders_at_its_size(api: Api, endpoint: str) -> None:
    body, size = MINIMAL_BODIES[endpoint]
    data = await api.image({**body, "output_format": "jpeg"}, endpoint)
    assert opened(data).format == "JPEG" and opened(data).size == size


@pytest.mark.parametrize(("fmt", "pil"), [("png", "PNG"), ("webp", "WEBP"), ("jpeg", "JPEG")])
async def test_output_format_is_honoured(api: Api, fmt: str, pil: str) -> None:
    data = await api.image({"prompt": "p", "width": 256, "height": 256, "output_format": fmt})
    assert opened(data).format == pil


async def test_kontext_defaults_to_png_with_a_stamp(api: Api) -> None:
    data = await api.image({"prompt": "a red door"}, "flux-kontext-pro")
    stamp = read_stamp(data)
    assert stamp is not None and stamp["kind"] == "generation" and stamp["prompt"] == "a red door"


async def test_kontext_edit_uses_every_reference_in_order(api: Api) -> None:
    first, second = images.png(512, 256, (200, 0, 0)), images.encoded("JPEG", 64, 64)
    body = {"prompt": "combine", "input_image": b64(first), "input_image_2": "data:image/jpeg;base64," + b64(second)}
    submitted = await api.task("flux-kontext-pro", body)
    data = await api.image(body, "flux-kontext-pro")
    stamp = read_stamp(data)
    assert stamp is not None and stamp["kind"] == "edit"
    assert stamp["inputs"] == [hashlib.sha256(first).hexdigest(), hashlib.sha256(second).hexdigest()]
    width, height = opened(data).size
    assert abs(width / height - 2) < 0.1
    assert submitted["input_mp"] == round((512 * 256 + 64 * 64) / 1_000_000, 2)
    recorded = [r for r in api.emulator.requests if r.method == "POST"][-1]
    assert [f.field for f in recorded.files] == ["input_image", "input_image_2"]
    assert recorded.json["input_image"].endswith(f"<{len(b64(first))} chars>")


async def test_flux2_costs_per_megapixel(api: Api) -> None:
    square = images.png(1000, 1000)
    text = await api.task("flux-2-pro", {"prompt": "p", "width": 1008, "height": 992})
    edit = await api.task("flux-2-pro", {"prompt": "p", "input_image": b64(square), "width": 1008, "height": 992})
    assert text["output_mp"] == 1.0 and text["cost"] == 3.0
    assert edit["input_mp"] == 1.0 and edit["cost"] == 4.5


async def test_url_inputs_are_not_fetched_and_the_task_errors(api: Api) -> None:
    submitted = await api.task("flux-kontext-pro", {"prompt": "p", "input_image": "https://example.com/a.png"})
    body, _ = await api.finish(submitted)
    assert body["status"] == "Error" and "input_image" in body["details"]["message"]


@pytest.mark.parametrize(
    ("endpoint", "body", "kind", "loc"),
    [
        ("flux-pro-1.1", {"prompt": "p", "width": 1000}, "multiple_of", ["body", "width"]),
        ("flux-pro-1.1", {"prompt": "p", "height": 2016}, "less_than_equal", ["body", "height"]),
        ("flux-pro-1.1", {"prompt": "p", "width": 128}, "greater_than_equal", ["body", "width"]),
        ("flux-pro-1.1", {"prompt": "p", "safety_tolerance": 7}, "less_than_equal", ["body", "safety_tolerance"]),
        ("flux-pro-1.1", {"prompt": "p", "output_format": "gif"}, "enum", ["body", "output_format"]),
        ("flux-pro-1.1", {"prompt": "p", "width": "wide"}, "int_parsing", ["body", "width"]),
        ("flux-dev", {"prompt": "p", "steps": 0}, "greater_than_equal", ["body", "steps"]),
        ("flux-dev", {"prompt": "p", "guidance": 6}, "less_than_equal", ["body", "guidance"]),
        ("flux-pro", {"prompt": "p", "interval": 5}, "less_than_equal", ["body", "interval"]),
        ("flux-pro-1.1-ultra", {"prompt": "p", "aspect_ratio": "30:9"}, "value_error", ["body", "aspect_ratio"]),
        ("flux-pro-1.1-ultra", {"prompt": "p", "raw": "maybe"}, "bool_parsing", ["body", "raw"]),
        ("flux-kontext-pro", {"aspect_ratio": "1:1"}, "missing", ["body", "prompt"]),
        ("flux-kontext-max", {"prompt": "p", "input_image": "not base64!"}, "value_error", ["body", "input_image"]),
        ("flux-2-pro", {"prompt": "p", "safety_tolerance": 6}, "less_than_equal", ["body", "safety_tolerance"]),
        ("flux-2-pro", {"prompt": "p", "width": 32}, "greater_than_equal", ["body", "width"]),
        ("flux-2-flex", {"prompt": "p", "guidance": 11}, "less_than_equal", ["body", "guidance"]),
        ("flux-pro-1.0-fill", {"prompt": "p"}, "missing", ["body", "image"]),
        ("flux-pro-1.0-fill", {"image": b64(SMALL_INPUT), "steps": 10}, "greater_than_equal", ["body", "steps"]),
        ("flux-pro-1.0-expand", {"image": b64(SMALL_INPUT), "top": 3000}, "less_than_equal", ["body", "top"]),
        ("flux-pro-1.0-fill", {"image": "https://example.com/a.png"}, "value_error", ["body", "image"]),
        ("flux-pro-1.1-ultra-finetuned", {"prompt": "p"}, "missing", ["body", "finetune_id"]),
        ("flux-pro-finetuned", {"prompt": "p", "finetune_id": "nope"}, "value_error", ["body", "finetune_id"]),
        ("flux-pro-finetuned", {"finetune_id": "sandbox-style", "finetune_strength": 3}, "less_than_equal", None),
        ("flux-pro-1.1", ["not", "an", "object"], "model_type", ["body"]),
    ],
)
async def test_validation_errors_have_fastapi_shape(
    api: Api, endpoint: str, body: Any, kind: str, loc: list[Any] | None
) -> None:
    response = await api.submit(endpoint, body)
    assert response.status_code == 422, response.text
    (item,) = response.json()["detail"]
    assert item["type"] == kind
    assert item["loc"] == (loc or ["body", "finetune_strength"])
    assert item["msg"] and "input" in item
    assert "url" not in item


async def test_multiple_of_error_carries_its_context(api: Api) -> None:
    response = await api.submit("flux-pro-1.1", {"prompt": "p", "width": 1000, "height": 1001})
    detail = response.json()["detail"]
    assert [item["loc"][-1] for item in detail] == ["width", "height"]
    assert detail[0] == {
        "type": "multiple_of",
        "loc": ["body", "width"],
        "msg": "Input should be a multiple of 32",
        "input": 1000,
        "ctx": {"multiple_of": 32},
    }


async def test_broken_json_and_missing_body_are_422(api: Api) -> None:
    headers = {"x-key": KEY, "content-type": "application/json"}
    broken = await api.http.post(f"{api.base}/v1/flux-dev", content=b'{"prompt": ', headers=headers)
    assert broken.status_code == 422
    assert broken.json()["detail"][0]["type"] == "json_invalid"
    assert broken.json()["detail"][0]["loc"] == ["body", 11]
    empty = await api.http.post(f"{api.base}/v1/flux-dev", headers=headers)
    assert empty.json()["detail"][0]["type"] == "missing"


async def test_unknown_extra_fields_are_ignored(api: Api) -> None:
    assert (await api.submit("flux-pro-1.1", {"prompt": "p", "steps": 99, "whatever": 1})).status_code == 200


# --- auth, credits, limits -------------------------------------------------------------------------


async def test_auth_errors_are_403_with_detail(api: Api) -> None:
    missing = await api.submit("flux-pro-1.1", {"prompt": "p"}, key=None)
    wrong = await api.submit("flux-pro-1.1", {"prompt": "p"}, key="bfl_wrong")
    assert (missing.status_code, missing.json()) == (403, {"detail": "Not authenticated"})
    assert (wrong.status_code, wrong.json()) == (403, {"detail": "Not authenticated - Invalid Authentication"})
    assert (await api.poll(f"{api.base}/v1/get_result?id=x", key="bfl_wrong")).status_code == 403
    assert (await api.http.get(f"{api.base}/v1/my_finetunes")).status_code == 403


async def test_auth_status_can_be_401(start: Start) -> None:
    api = await start(auth_status=401)
    assert (await api.submit("flux-pro-1.1", {"prompt": "p"}, key="bfl_wrong")).status_code == 401


async def test_any_key_is_accepted_without_a_key_list(start: Start) -> None:
    api = await start(accepted_keys=None)
    assert (await api.submit("flux-pro-1.1", {"prompt": "p"}, key="anything")).status_code == 200


async def test_credits_are_deducted_and_402_when_exhausted(start: Start) -> None:
    api = await start(credits=5)
    await api.task("flux-pro-1.1", {"prompt": "p"})
    balance = await api.http.get(f"{api.base}/v1/credits", headers={"x-key": KEY})
    assert balance.json() == {"credits": 1.0}
    refused = await api.submit("flux-pro-1.1", {"prompt": "p"})
    assert refused.status_code == 402 and "credits" in refused.json()["detail"]
    other = await api.submit("flux-dev", {"prompt": "p"}, key=OTHER_KEY)
    assert other.status_code == 200
    assert api.emulator.credits_of(OTHER_KEY) == 2.5


async def test_credits_and_busy_triggers(api: Api) -> None:
    assert (await api.submit("flux-pro-1.1", {"prompt": "[[sandbox:credits]]"})).status_code == 402
    busy = await api.submit("flux-pro-1.1", {"prompt": "[[sandbox:busy]]"})
    assert busy.status_code == 429 and "active tasks" in busy.json()["detail"]
    status = await api.submit("flux-pro-1.1", {"prompt": "[[sandbox:status=503]]"})
    assert status.status_code == 503


async def test_unknown_trigger_is_a_422_on_prompt(api: Api) -> None:
    response = await api.submit("flux-pro-1.1", {"prompt": "[[sandbox:nonsense]]"})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "prompt"]


async def test_active_task_limit_until_a_task_finishes(start: Start) -> None:
    api = await start(max_active_tasks=2, pending_polls=1)
    first = await api.task("flux-dev", {"prompt": "p"})
    await api.task("flux-dev", {"prompt": "p"})
    refused = await api.submit("flux-dev", {"prompt": "p"})
    assert refused.status_code == 429
    assert (await api.submit("flux-dev", {"prompt": "p"}, key=OTHER_KEY)).status_code == 200
    await api.finish(first)
    assert (await api.submit("flux-dev", {"prompt": "p"})).status_code == 200


async def test_kontext_max_has_its_own_limit_of_six(api: Api) -> None:
    for _ in range(6):
        await api.task("flux-kontext-max", {"prompt": "p"})
    assert (await api.submit("flux-kontext-max", {"prompt": "p"})).status_code == 429
    assert (await api.submit("flux-kontext-pro", {"prompt": "p"})).status_code == 200


async def test_the_account_limit_counts_every_endpoint(start: Start) -> None:
    api = await start(max_active_tasks=2)
    await api.task("flux-dev", {"prompt": "p"})
    await api.task("flux-kontext-max", {"prompt": "p"})
    assert (await api.submit("flux-kontext-max", {"prompt": "p"})).status_code == 429


# --- delivery links --------------------------------------------------------------------------------


async def test_delivery_links_are_signed_and_expire(start: Start) -> None:
    clock = ManualClock()
    api = await start(url_ttl=600, clock=clock)
    body, _ = await api.finish(await api.task("flux-pro-1.1", {"prompt": "p", "width": 256, "height": 256}))
    sample = body["result"]["sample"]
    assert "se=" in sample and "sig=" in sample and sample.startswith(api.base + "/delivery/results/")
    assert (await api.http.get(sample)).status_code == 200  # no key needed
    tampered = sample.rsplit("sig=", 1)[0] + "sig=forged"
    assert (await api.http.get(tampered)).status_code == 403
    clock.now += 599.9
    assert (await api.http.get(sample)).status_code == 200
    clock.now += 0.1
    expired = await api.http.get(sample)
    assert expired.status_code == 403 and b"AuthenticationFailed" in expired.content
    assert (await api.http.get(f"{api.base}/delivery/results/img-unknown.jpg")).status_code == 404


# --- fine-tunes ------------------------------------------------------------------------------------


async def test_finetune_listing_details_and_deletion(api: Api) -> None:
    headers = {"x-key": KEY}
    listed = await api.http.get(f"{api.base}/v1/my_finetunes", headers=headers)
    assert listed.json() == {"finetunes": ["sandbox-character", "sandbox-style"]}
    details = await api.http.get(
        f"{api.base}/v1/finetune_details", params={"finetune_id": "sandbox-style"}, headers=headers
    )
    assert details.json()["finetune_details"]["trigger_word"] == "WTC"
    unknown = await api.http.get(f"{api.base}/v1/finetune_details", params={"finetune_id": "x"}, headers=headers)
    assert unknown.status_code == 404
    missing = await api.http.get(f"{api.base}/v1/finetune_details", headers=headers)
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["query", "finetune_id"]
    deleted = await api.http.post(
        f"{api.base}/v1/delete_finetune", json={"finetune_id": "sandbox-style"}, headers=headers
    )
    assert deleted.json()["deleted_finetune_id"] == "sandbox-style"
    assert (await api.http.get(f"{api.base}/v1/my_finetunes", headers=headers)).json()["finetunes"] == [
        "sandbox-character"
    ]


# --- routing, faults and the request log -----------------------------------------------------------


async def test_unknown_and_retired_endpoints_are_404_before_auth(start: Start) -> None:
    api = await start(retired_endpoints={"flux-pro"})
    for endpoint in ("flux-nonexistent", "flux-pro"):
        response = await api.submit(endpoint, {"prompt": "p"}, key=None)
        assert (response.status_code, response.json()) == (404, {"detail": "Not Found"})
    wrong_method = await api.http.get(f"{api.base}/v1/flux-dev", headers={"x-key": KEY})
    assert (wrong_method.status_code, wrong_method.json()) == (405, {"detail": "Method Not Allowed"})


async def test_queued_faults_hit_matching_requests_in_order(api: Api) -> None:
    api.emulator.faults.add(BFL_FAULTS["server_error"](), path_contains="get_result")
    submitted = await api.task("flux-pro-1.1", {"prompt": "p"})
    failed = await api.poll(submitted["polling_url"])
    assert (failed.status_code, failed.json()) == (500, {"detail": "Internal Server Error"})
    body, _ = await api.finish(submitted)
    assert body["status"] == "Ready"


async def test_malformed_and_empty_answers(api: Api) -> None:
    api.emulator.faults.add(Fault.malformed_json())
    api.emulator.faults.add(Fault.empty_data())
    malformed = await api.submit("flux-pro-1.1", {"prompt": "p"})
    assert malformed.status_code == 200
    with pytest.raises(ValueError):  # noqa: PT011 - any JSON decoding error
        malformed.json()
    assert (await api.submit("flux-pro-1.1", {"prompt": "p"})).json() == {}


async def test_control_routes_queue_faults_and_outcomes(api: Api) -> None:
    control = f"{api.base}/_sandbox/faults"
    added = await api.http.post(control, json={"preset": "busy", "args": {"retry_after": 2}})
    assert added.status_code == 201
    busy = await api.submit("flux-pro-1.1", {"prompt": "p"})
    assert busy.status_code == 429 and busy.headers["retry-after"] == "2"
    await api.http.post(control, json={"outcome": "Request Moderated"})
    body, _ = await api.finish(await api.task("flux-pro-1.1", {"prompt": "p"}))
    assert body["status"] == "Request Moderated"
    assert (await api.http.post(control, json={"preset": "nope"})).status_code == 400
    assert (await api.http.post(control, json={"kind": "stream_error"})).status_code == 400
    assert (await api.http.delete(control)).json() == {"faults": [], "outcomes": []}


async def test_delay_trigger_stalls_the_submit(api: Api) -> None:
    started = asyncio.get_running_loop().time()
    assert (await api.submit("flux-pro-1.1", {"prompt": "p [[sandbox:delay=0.3]]"})).status_code == 200
    assert asyncio.get_running_loop().time() - started >= 0.3


async def test_request_log_over_http(api: Api) -> None:
    await api.task("flux-dev", {"prompt": "logged"})
    log = (await api.http.get(f"{api.base}/_sandbox/requests")).json()["requests"]
    assert log[-1]["json"] == {"prompt": "logged"} and log[-1]["headers"]["x-key"] == KEY
    assert log[-1]["status"] == 200
    assert (await api.http.delete(f"{api.base}/_sandbox/requests")).json() == {"requests": []}
