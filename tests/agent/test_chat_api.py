"""The agent through the chat API, against the sandbox chat model (limner's real OpenAI-compatible path)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx2

from limner.runtime import Runtime
from tests import images

Auth = tuple[str, dict[str, str]]


async def converse(
    api: httpx2.AsyncClient, headers: dict[str, str], conversation: str, text: str, image_ids: list[str] | None = None
) -> list[tuple[str, dict[str, Any]]]:
    body = {"text": text, "image_ids": image_ids or []}
    events: list[tuple[str, dict[str, Any]]] = []
    async with api.stream("POST", f"/api/conversations/{conversation}/messages", headers=headers, json=body) as rsp:
        assert rsp.status_code == 200, await rsp.aread()
        assert rsp.headers["content-type"].startswith("text/event-stream")
        event = None
        async for line in rsp.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event:
                events.append((event, json.loads(line[6:])))
    return events


async def _until(condition: Callable[[], bool], timeout: float = 60) -> None:
    """Wait for a condition the test cannot be told about directly; fail, naming it, after a generous time."""

    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def new_conversation(api: httpx2.AsyncClient, headers: dict[str, str], **body: Any) -> str:
    created = await api.post("/api/conversations", headers=headers, json=body)
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def of_type(events: list[tuple[str, dict[str, Any]]], kind: str) -> list[dict[str, Any]]:
    return [data for name, data in events if name == kind]


async def test_generate_then_edit_in_a_later_turn(api: httpx2.AsyncClient, alice: Auth, runtime: Runtime) -> None:
    _, headers = alice
    conversation = await new_conversation(api, headers)
    first = await converse(api, headers, conversation, "draw a lighthouse at dusk")
    names = [name for name, _ in first]
    assert names[0] == "message_start" and names[-1] == "done"
    assert names.index("tool_call_started") < names.index("image_ready") < names.index("text_delta")
    (started,) = of_type(first, "tool_call_started")
    assert started["tool"] == "image_gen_oai" and started["arguments"]["prompt"] == "draw a lighthouse at dusk"
    (ready,) = of_type(first, "image_ready")
    image_id = ready["image"]["id"]
    done = of_type(first, "done")[0]
    assert image_id in done["text"] and "I can see the image" in done["text"]  # vision handoff happened
    assert done["image_ids"] == [image_id]

    second = await converse(api, headers, conversation, "now make it stormy")
    (edit,) = of_type(second, "tool_call_started")
    assert edit["tool"] == "image_edit_oai" and edit["arguments"]["image_ids"] == [image_id]
    new_id = of_type(second, "image_ready")[0]["image"]["id"]
    detail = (await api.get(f"/api/images/{new_id}", headers=headers)).json()
    assert [p["id"] for p in detail["parents"]] == [image_id]
    assert detail["conversation_id"] == conversation

    stored = (await api.get(f"/api/conversations/{conversation}", headers=headers)).json()
    assert [m["role"] for m in stored["messages"]] == ["user", "assistant", "user", "assistant"]
    assert stored["messages"][1]["image_ids"] == [image_id]
    assert stored["title"] == "draw a lighthouse at dusk"
    chat_requests = runtime_chat_requests(runtime)
    # the history replayed in turn two names the ID but carries no image bytes (handed off once)
    assert chat_requests[-2].image_placements == []
    assert chat_requests[1].image_placements == ["user_after_tool"]  # turn one: handed off right after the tool


def runtime_chat_requests(runtime: Runtime) -> list[Any]:
    assert runtime.sandbox is not None and runtime.sandbox.emulators is not None
    return list(runtime.sandbox.emulators.chat.requests)


async def test_upload_then_edit_and_combine_two(api: httpx2.AsyncClient, alice: Auth) -> None:
    _, headers = alice
    cat = (
        await api.post("/api/images", headers=headers, files={"file": ("cat.png", images.png(), "image/png")})
    ).json()
    dog = (
        await api.post(
            "/api/images", headers=headers, files={"file": ("dog.png", images.png(color=(0, 0, 200)), "image/png")}
        )
    ).json()
    conversation = await new_conversation(api, headers)
    edited = await converse(api, headers, conversation, "make it a painting", [cat["id"]])
    (call,) = of_type(edited, "tool_call_started")
    assert call["arguments"]["image_ids"] == [cat["id"]]
    combined = await converse(api, headers, conversation, f"combine {cat['id']} and {dog['id']} together")
    (call,) = of_type(combined, "tool_call_started")
    assert sorted(call["arguments"]["image_ids"]) == sorted([cat["id"], dog["id"]])
    new_id = of_type(combined, "image_ready")[0]["image"]["id"]
    parents = (await api.get(f"/api/images/{new_id}", headers=headers)).json()["parents"]
    assert sorted(p["id"] for p in parents) == sorted([cat["id"], dog["id"]])


async def test_a_tool_error_reaches_the_model_which_says_what_to_do(api: httpx2.AsyncClient, alice: Auth) -> None:
    _, headers = alice
    conversation = await new_conversation(api, headers)
    events = await converse(api, headers, conversation, "draw a cat [[sandbox:moderation]]")
    (failed,) = of_type(events, "tool_failed")
    assert failed["code"] == "content_policy" and failed["hint"]
    done = of_type(events, "done")[0]
    assert "did not work" in done["text"] and failed["hint"] in done["text"]  # the person hears what to do
    assert of_type(events, "image_ready") == []


async def test_foreign_attachment_fails_before_the_model_is_called(
    api: httpx2.AsyncClient, alice: Auth, bob: Auth
) -> None:
    _, alice_headers = alice
    _, bob_headers = bob
    secret = (
        await api.post("/api/images", headers=alice_headers, files={"file": ("a.png", images.png(), "image/png")})
    ).json()["id"]
    conversation = await new_conversation(api, bob_headers)
    response = await api.post(
        f"/api/conversations/{conversation}/messages",
        headers=bob_headers,
        json={"text": "edit this", "image_ids": [secret]},
    )
    assert response.status_code == 404 and response.json()["error"]["code"] == "image_not_found"
    other = await api.get(f"/api/conversations/{conversation}", headers=alice_headers)
    assert other.status_code == 404 and other.json()["error"]["code"] == "conversation_not_found"


async def test_vision_handoff_off_per_agent_sends_text_stubs(
    api: httpx2.AsyncClient, alice: Auth, runtime: Runtime
) -> None:
    _, headers = alice
    agent = await api.post("/api/agents", headers=headers, json={"name": "blind", "vision_handoff": False})
    assert agent.status_code == 201, agent.text
    conversation = await new_conversation(api, headers, agent_id=agent.json()["id"])
    events = await converse(api, headers, conversation, "draw a boat")
    done = of_type(events, "done")[0]
    assert "cannot see" in done["text"]
    assert all(r.image_placements == [] for r in runtime_chat_requests(runtime)[-2:])


async def test_agent_tool_families_limit_the_tools(api: httpx2.AsyncClient, alice: Auth) -> None:
    _, headers = alice
    agent = (
        await api.post("/api/agents", headers=headers, json={"name": "sd", "tool_families": ["stable-diffusion"]})
    ).json()
    conversation = await new_conversation(api, headers, agent_id=agent["id"])
    events = await converse(api, headers, conversation, "draw a castle")
    (call,) = of_type(events, "tool_call_started")
    assert call["tool"] == "stable-diffusion"
    listed = (await api.get("/api/agents", headers=headers)).json()
    ids = [a["id"] for a in listed]
    assert ids[0] == "default" and agent["id"] in ids


async def test_conversations_list_rename_delete(api: httpx2.AsyncClient, alice: Auth, bob: Auth) -> None:
    _, headers = alice
    conversation = await new_conversation(api, headers, title="first")
    renamed = await api.patch(f"/api/conversations/{conversation}", headers=headers, json={"title": "kites"})
    assert renamed.json()["title"] == "kites"
    assert [c["id"] for c in (await api.get("/api/conversations", headers=headers)).json()] == [conversation]
    assert (await api.get("/api/conversations", headers=bob[1])).json() == []
    assert (await api.delete(f"/api/conversations/{conversation}", headers=bob[1])).status_code == 404
    assert (await api.delete(f"/api/conversations/{conversation}", headers=headers)).status_code == 204
    assert (await api.get(f"/api/conversations/{conversation}", headers=headers)).status_code == 404


async def test_stopping_mid_generation_cancels_the_tool_and_stores_nothing(
    api: httpx2.AsyncClient, alice: Auth, runtime: Runtime
) -> None:
    import asyncio

    from limner.sandbox.faults import Fault

    user_id, headers = alice
    assert runtime.sandbox is not None and runtime.sandbox.emulators is not None
    runtime.sandbox.emulators.openai.faults.add(Fault.hang())
    conversation = await new_conversation(api, headers)
    turn = asyncio.create_task(converse(api, headers, conversation, "draw a slow lighthouse"))
    emulator = runtime.sandbox.emulators.openai
    await _until(lambda: conversation in runtime.running_turns and bool(emulator.requests))
    assert (await api.post(f"/api/conversations/{conversation}/stop", headers=headers)).status_code == 204
    events = await asyncio.wait_for(turn, timeout=10)
    assert [name for name, _ in events][-1] == "stopped"
    assert of_type(events, "image_ready") == []
    assert await runtime.library.recent(user_id) == []
    stored = (await api.get(f"/api/conversations/{conversation}", headers=headers)).json()
    assert stored["messages"][-1]["text"].endswith("The answer was stopped.")


async def test_a_model_that_cannot_see_gets_text_stubs_only(tmp_path: Any) -> None:
    from tests.conftest import create_user, make_settings

    settings = make_settings(tmp_path, chat_vision="off")
    async with Runtime.open(settings) as runtime:
        user_id, _ = await create_user(runtime, "ann")
        conversation = await runtime.chat.create(user_id)
        events: list[tuple[str, dict[str, Any]]] = []

        async def emit(name: str, data: dict[str, Any]) -> None:
            events.append((name, data))

        outcome = await runtime.chat.send(user_id, conversation.id, text="draw a fox", image_ids=[], emit=emit)
        assert "cannot see" in outcome.text
        assert runtime.sandbox is not None and runtime.sandbox.emulators is not None
        assert all(r.image_placements == [] for r in runtime.sandbox.emulators.chat.requests)


async def test_anthropic_wire_style_puts_the_image_inside_the_tool_result(tmp_path: Any) -> None:
    import anthropic
    from pydantic_ai.models.anthropic import AnthropicModel
    from pydantic_ai.providers.anthropic import AnthropicProvider

    from limner.chat.loop import ChatRunner
    from limner.chat.models import ChatModelChoice
    from tests.conftest import create_user, make_settings

    async with Runtime.open(make_settings(tmp_path)) as runtime:
        assert runtime.sandbox is not None and runtime.sandbox.emulators is not None and runtime.chat_client
        client = anthropic.AsyncAnthropic(
            base_url=runtime.sandbox.urls["anthropic"], api_key="sk-x", http_client=runtime.chat_client
        )
        model = AnthropicModel("sandbox-vision", provider=AnthropicProvider(anthropic_client=client))
        choice = ChatModelChoice(model, "sandbox-vision", supports_vision=True, is_sandbox=True)
        runner = ChatRunner(choice=choice, library=runtime.library, keyring=runtime.keyring, tools=runtime.agent_tools)
        user_id, _ = await create_user(runtime, "ann")

        async def emit(name: str, data: dict[str, Any]) -> None:
            pass

        outcome = await runner.run_turn(user_id=user_id, text="draw a fox", emit=emit)
        assert outcome.image_ids and "I can see the image" in outcome.text
        placements = [r.image_placements for r in runtime.sandbox.emulators.chat.requests]
        assert placements[-1] == ["tool_result"]


async def test_parallel_tool_calls_run_and_both_images_are_kept(
    api: httpx2.AsyncClient, alice: Auth, runtime: Runtime
) -> None:
    _, headers = alice
    conversation = await new_conversation(api, headers)
    events = await converse(api, headers, conversation, "draw two pictures: a cat and a dog")
    calls = of_type(events, "tool_call_started")
    assert [c["tool"] for c in calls] == ["image_gen_oai", "image_gen_oai"]
    ready = of_type(events, "image_ready")
    assert len(ready) == 2
    done = of_type(events, "done")[0]
    assert all(r["image"]["id"] in done["text"] for r in ready)
    assert runtime.sandbox is not None and runtime.sandbox.emulators is not None
    assert any(len(r.tool_calls) == 2 for r in runtime.sandbox.emulators.chat.requests)


async def test_progress_events_reach_the_stream(api: httpx2.AsyncClient, alice: Auth) -> None:
    _, headers = alice
    agent = (
        await api.post("/api/agents", headers=headers, json={"name": "sd", "tool_families": ["stable-diffusion"]})
    ).json()
    conversation = await new_conversation(api, headers, agent_id=agent["id"])
    events = await converse(api, headers, conversation, "draw a castle")
    names = [name for name, _ in events]
    progress = of_type(events, "progress")
    assert progress, names
    assert names.index("tool_call_started") < names.index("progress") < names.index("image_ready")
    assert all(p["fraction"] is None or 0 <= p["fraction"] <= 1 for p in progress)


async def test_the_tool_round_cap_stops_a_looping_model(runtime: Runtime) -> None:
    from collections.abc import AsyncIterator

    import pytest
    from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel

    from limner.chat.loop import ChatRunner
    from limner.chat.models import ChatModelChoice
    from limner.errors import InputError
    from tests.conftest import create_user

    async def always_list(messages: list[Any], info: AgentInfo) -> AsyncIterator[DeltaToolCalls]:
        yield {0: DeltaToolCall(name="image_list", json_args="{}")}

    model = FunctionModel(stream_function=always_list)
    choice = ChatModelChoice(model, "looping", supports_vision=False, is_sandbox=False)
    runner = ChatRunner(
        choice=choice, library=runtime.library, keyring=runtime.keyring, tools=runtime.agent_tools, max_tool_rounds=3
    )
    user_id, _ = await create_user(runtime, "ann")
    calls: list[str] = []

    async def emit(name: str, data: dict[str, Any]) -> None:
        if name == "tool_call_started":
            calls.append(data["tool"])

    with pytest.raises(InputError, match="3 rounds"):
        await runner.run_turn(user_id=user_id, text="hi", emit=emit)
    assert calls == ["image_list"] * 3


async def test_a_configured_openai_compatible_chat_model_is_used(tmp_path: Any) -> None:
    from limner.sandbox.server import Sandbox, serve_sandbox
    from tests.conftest import create_user, make_settings

    upstream = Sandbox()
    async with serve_sandbox(upstream) as running:
        settings = make_settings(
            tmp_path,
            sandbox="off",
            chat_base_url=running.urls["chat"],
            chat_model="sandbox-vision",
            chat_api_key="sk-chat",
            image_gen_oai_baseurl=running.urls["openai"],
            image_gen_oai_api_key="sk-images",
            fetch_allow_loopback=True,
        )
        async with Runtime.open(settings) as runtime:
            assert runtime.sandbox is None  # nothing stands in: both are "real" upstreams here
            user_id, _ = await create_user(runtime, "ann")
            conversation = await runtime.chat.create(user_id)

            async def emit(name: str, data: dict[str, Any]) -> None:
                pass

            first = await runtime.chat.send(user_id, conversation.id, text="draw a fox", image_ids=[], emit=emit)
            second = await runtime.chat.send(user_id, conversation.id, text="make it blue", image_ids=[], emit=emit)
            (new_id,) = second.image_ids
            parents = await runtime.library.parents(user_id, new_id)
            assert [p.id for p in parents] == first.image_ids
            record = await runtime.library.get(user_id, new_id)
            assert record.is_sandbox is False
    assert [r.rule for r in upstream.chat.requests] == ["generate", "tool_results", "edit", "tool_results"]


async def test_a_failing_chat_model_is_an_error_event_naming_the_chat_settings(
    api: httpx2.AsyncClient, alice: Auth
) -> None:
    _, headers = alice
    conversation = await new_conversation(api, headers)
    events = await converse(api, headers, conversation, "hello [[sandbox:chat_error=401]]")
    (error,) = of_type(events, "error")
    assert error["code"] == "provider_auth_failed" and error["provider"] == "chat"
    assert "LIMNER_CHAT_MODEL" in error["hint"]
    stored = (await api.get(f"/api/conversations/{conversation}", headers=headers)).json()
    assert [m["role"] for m in stored["messages"]] == ["user", "assistant"]


async def test_agents_are_checked(api: httpx2.AsyncClient, alice: Auth) -> None:
    _, headers = alice
    model = await api.post("/api/agents", headers=headers, json={"name": "a", "chat_model": "test"})
    assert model.status_code == 400 and "not allowed" in model.json()["error"]["message"]
    reserved = await api.post("/api/agents", headers=headers, json={"name": "default"})
    assert reserved.status_code == 400
    families = await api.post("/api/agents", headers=headers, json={"name": "a", "tool_families": ["nope"]})
    assert families.status_code == 400 and "nope" in families.json()["error"]["message"]
    first = (await api.post("/api/agents", headers=headers, json={"name": "one"})).json()
    await api.post("/api/agents", headers=headers, json={"name": "two"})
    clash = await api.patch(f"/api/agents/{first['id']}", headers=headers, json={"name": "two"})
    assert clash.status_code == 400 and "already" in clash.json()["error"]["message"]


async def test_one_turn_at_a_time_per_conversation(api: httpx2.AsyncClient, alice: Auth, runtime: Runtime) -> None:
    import asyncio

    from limner.sandbox.faults import Fault

    _, headers = alice
    assert runtime.sandbox is not None and runtime.sandbox.emulators is not None
    emulator = runtime.sandbox.emulators.openai
    emulator.faults.add(Fault.hang())  # the first turn is running until it is stopped, however slow the machine
    conversation = await new_conversation(api, headers)
    first = asyncio.create_task(converse(api, headers, conversation, "draw a slow boat"))
    await _until(lambda: conversation in runtime.running_turns and bool(emulator.requests))
    second = await api.post(
        f"/api/conversations/{conversation}/messages", headers=headers, json={"text": "draw a cat", "image_ids": []}
    )
    assert second.status_code == 409 and second.json()["error"]["code"] == "turn_in_progress"
    assert (await api.post(f"/api/conversations/{conversation}/stop", headers=headers)).status_code == 204
    assert [name for name, _ in await first][-1] == "stopped"
    assert conversation not in runtime.running_turns
    assert of_type(await converse(api, headers, conversation, "draw a cat"), "done")  # the next turn may start


async def test_a_tool_argument_named_run_is_just_an_argument(runtime: Runtime) -> None:
    from pydantic_ai.models.function import AgentInfo, DeltaToolCall, FunctionModel

    from limner.chat.loop import ChatRunner
    from limner.chat.models import ChatModelChoice
    from tests.conftest import create_user

    calls = 0

    async def model(messages: list[Any], info: AgentInfo) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            yield {0: DeltaToolCall(name="image_list", json_args='{"run": 1}')}
        else:
            yield "done"

    choice = ChatModelChoice(FunctionModel(stream_function=model), "fn", supports_vision=False, is_sandbox=False)
    runner = ChatRunner(choice=choice, library=runtime.library, keyring=runtime.keyring, tools=runtime.agent_tools)
    user_id, _ = await create_user(runtime, "ann")
    failed: list[dict[str, Any]] = []

    async def emit(name: str, data: dict[str, Any]) -> None:
        if name == "tool_failed":
            failed.append(data)

    outcome = await runner.run_turn(user_id=user_id, text="hi", emit=emit)
    assert outcome.text == "done"
    assert failed and "run" in failed[0]["message"]
