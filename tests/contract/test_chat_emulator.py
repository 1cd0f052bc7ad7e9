"""The chat model emulator, driven by the real ``openai`` and ``anthropic`` SDKs (and pydantic-ai) over loopback."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import anthropic
import httpx2
import openai
import pytest
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from pydantic_ai import Agent, BinaryContent, ToolReturn
from pydantic_ai.models import Model
from pydantic_ai.models.anthropic import AnthropicModel
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.anthropic import AnthropicProvider
from pydantic_ai.providers.openai import OpenAIProvider

from limner.sandbox import Fault, RunningSandbox, Sandbox, serve_sandbox
from limner.sandbox.chat import ChatEmulator, ChatModel, RecordedChat
from limner.sandbox.chat_anthropic import anthropic_body

KEY = "sk-sandbox-chat-key-0001"
ID_A = "img_01JZ8X5V3W2Q1P0N9M8K7J6H5A"
ID_B = "img_01JZ8X5V3W2Q1P0N9M8K7J6H5B"
ID_C = "img_01JZ8X5V3W2Q1P0N9M8K7J6H5C"


# -- tool schemas shaped like limner's (validated with pydantic, extra fields forbidden) ----------


class GenArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1, max_length=4000)
    size: Literal["1024x1024", "1536x1024"] | None = None
    n: int = Field(1, ge=1, le=4)


class EditArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_ids: list[str] = Field(min_length=1, max_length=16)
    prompt: str = Field(min_length=1)
    mask_image_id: str | None = None


class FluxArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: Literal["generate", "generate_finetuned", "list_finetunes", "edit"] = "generate"
    prompt: str | None = None
    image_ids: list[str] | None = Field(None, min_length=1)
    width: int | None = Field(None, ge=256)


class SdEditArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_ids: list[str] = Field(min_length=1, max_length=1)
    prompt: str


class ListArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    limit: int = Field(10, ge=1, le=50)


class ViewArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_id: str


class StrictArgs(BaseModel):
    """A foreign (MCP) tool with required fields the rules have no use for."""

    model_config = ConfigDict(extra="forbid")
    text: str
    style: Literal["noir", "pop"]
    steps: int = Field(ge=5)
    seed_list: list[int] = Field(min_length=2)
    strength: float = Field(gt=0)


SCHEMAS: dict[str, type[BaseModel]] = {
    "image_gen_oai": GenArgs,
    "image_edit_oai": EditArgs,
    "dalle": GenArgs,
    "flux": FluxArgs,
    "stable-diffusion": GenArgs,
    "stable-diffusion-edit": SdEditArgs,
    "image_list": ListArgs,
    "image_view": ViewArgs,
    "mcp_render_picture": StrictArgs,
}
LIMNER_TOOLS = ("image_gen_oai", "image_edit_oai", "image_list", "image_view")


def schema(model: type[BaseModel]) -> dict[str, Any]:
    value = model.model_json_schema()
    value.pop("title", None)
    return value


def openai_tools(*names: str) -> list[Any]:
    return [
        {"type": "function", "function": {"name": name, "description": name, "parameters": schema(SCHEMAS[name])}}
        for name in names
    ]


def anthropic_tools(*names: str) -> list[Any]:
    return [{"name": name, "description": name, "input_schema": schema(SCHEMAS[name])} for name in names]


def calls_of(completion: Any) -> list[tuple[str, dict[str, Any]]]:
    """(name, arguments) of each tool call, each validated against the tool's schema."""
    found = []
    for call in completion.choices[0].message.tool_calls or []:
        arguments = json.loads(call.function.arguments)
        SCHEMAS[call.function.name].model_validate(arguments)
        found.append((call.function.name, arguments))
    return found


def png(colour: tuple[int, int, int] = (200, 30, 30), *, noisy: bool = False) -> bytes:
    buffer = io.BytesIO()
    image = Image.effect_noise((64, 64), 80).convert("RGB") if noisy else Image.new("RGB", (16, 16), colour)
    image.save(buffer, "PNG")
    return buffer.getvalue()


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def generated(*ids: str) -> str:
    return f"Generated {len(ids)} image(s) with gpt-image-1.5 (1024x1024).\nimage_ids: {json.dumps(list(ids))}"


def after_generation(result: str, *, handoff: list[Any] | None = None, tool: str = "image_gen_oai") -> list[Any]:
    """A conversation that ends with a tool result (and, optionally, the user message carrying its images)."""
    messages: list[Any] = [
        {"role": "user", "content": "Draw a red fox"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": tool, "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": result},
    ]
    if handoff is not None:
        messages.append({"role": "user", "content": handoff})
    return messages


def with_image_in_context(text: str, *ids: str) -> list[Any]:
    """A later turn: an earlier generation left ``ids`` in the conversation; the user now says ``text``."""
    return [
        *after_generation(generated(*ids)),
        {"role": "assistant", "content": "Here it is."},
        {"role": "user", "content": text},
    ]


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def emulator() -> ChatEmulator:
    return ChatEmulator(accepted_keys={KEY})


@pytest.fixture
async def running(emulator: ChatEmulator) -> AsyncIterator[RunningSandbox]:
    async with serve_sandbox(Sandbox(chat=emulator)) as running:
        yield running


@pytest.fixture
async def http(running: RunningSandbox) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient() as client:
        yield client


@pytest.fixture
def client(running: RunningSandbox, http: httpx2.AsyncClient) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=KEY, base_url=running.urls["chat"], http_client=http, max_retries=0)


@pytest.fixture
def claude(running: RunningSandbox, http: httpx2.AsyncClient) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(api_key=KEY, base_url=running.urls["anthropic"], http_client=http, max_retries=0)


async def ask(client: openai.AsyncOpenAI, messages: list[Any], *names: str, **kwargs: Any) -> Any:
    tools = openai_tools(*(names or LIMNER_TOOLS))
    return await client.chat.completions.create(
        model=kwargs.pop("model", "sandbox-vision"), messages=messages, tools=tools, **kwargs
    )


async def collect_stream(stream: Any) -> tuple[str, dict[int, dict[str, str]], list[Any]]:
    """Join a chat stream: (text, {index: {id, name, arguments}}, chunks)."""
    text, calls, chunks = "", {}, []
    async for chunk in stream:
        chunks.append(chunk)
        for choice in chunk.choices:
            text += choice.delta.content or ""
            for delta in choice.delta.tool_calls or []:
                entry = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] += delta.id or ""
                entry["name"] += (delta.function and delta.function.name) or ""
                entry["arguments"] += (delta.function and delta.function.arguments) or ""
    return text, calls, chunks


# -- URLs and models -----------------------------------------------------------------------------


async def test_urls_and_model_listing(running: RunningSandbox, client: openai.AsyncOpenAI) -> None:
    chat_urls = {k: v for k, v in running.urls.items() if k in ("chat", "anthropic")}
    assert chat_urls == {"chat": f"{running.base_url}/chat/v1", "anthropic": f"{running.base_url}/chat"}
    models = await client.models.list()
    assert [model.id for model in models.data] == ["sandbox-text", "sandbox-vision"]


# -- rule: generation ----------------------------------------------------------------------------


async def test_generation_non_streaming(client: openai.AsyncOpenAI, emulator: ChatEmulator) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="sandbox-vision",
        messages=[{"role": "user", "content": "Draw a red fox in the snow"}],
        tools=openai_tools(*LIMNER_TOOLS),
    )
    assert raw.headers["x-request-id"].startswith("req_")
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.choices[0].finish_reason == "tool_calls"
    assert completion.choices[0].message.content is None
    assert calls_of(completion) == [("image_gen_oai", {"prompt": "Draw a red fox in the snow"})]
    assert completion.choices[0].message.tool_calls[0].id == "call_1"  # type: ignore[index]
    usage = completion.usage
    assert usage is not None
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens > 0
    assert emulator.requests[-1].rule == "generate"


async def test_generation_streams_arguments_in_pieces(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="sandbox-vision",
        messages=[{"role": "user", "content": "Please paint a lighthouse at dusk"}],
        tools=openai_tools(*LIMNER_TOOLS),
        stream=True,
        stream_options={"include_usage": True},
    )
    text, calls, chunks = await collect_stream(stream)
    assert text == ""
    assert calls == {
        0: {"id": "call_1", "name": "image_gen_oai", "arguments": '{"prompt":"Please paint a lighthouse at dusk"}'}
    }
    argument_chunks = [c for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert len(argument_chunks) > 4
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["tool_calls"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)


async def test_text_streams_word_by_word(client: openai.AsyncOpenAI, emulator: ChatEmulator) -> None:
    stream = await client.chat.completions.create(
        model="sandbox-vision", messages=[{"role": "user", "content": "Hello, who are you?"}], stream=True
    )
    text, calls, chunks = await collect_stream(stream)
    assert calls == {}
    assert text.startswith("Hello! I am limner's sandbox assistant.")
    deltas = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert len(deltas) >= 10
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)  # no usage chunk unless asked for
    assert emulator.requests[-1].text == text


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        (("dalle", "flux", "stable-diffusion"), ("dalle", {"prompt": "draw a cat"})),
        (("stable-diffusion", "flux"), ("flux", {"action": "generate", "prompt": "draw a cat"})),
        (("stable-diffusion", "image_list"), ("stable-diffusion", {"prompt": "draw a cat"})),
        (("image_list", "mcp_render_picture"), ("mcp_render_picture", None)),
    ],
)
async def test_generation_tool_preference(
    client: openai.AsyncOpenAI, offered: tuple[str, ...], expected: tuple[str, dict[str, Any] | None]
) -> None:
    completion = await ask(client, [{"role": "user", "content": "draw a cat"}], *offered)
    [(name, arguments)] = calls_of(completion)
    assert name == expected[0]
    if expected[1] is not None:
        assert arguments == expected[1]
    else:  # a foreign tool: every required field present and valid (checked by calls_of)
        assert arguments["text"] == "draw a cat"
        assert arguments["style"] == "noir"
        assert arguments["steps"] >= 5
        assert len(arguments["seed_list"]) == 2


async def test_no_generation_tool_offered_answers_in_text(client: openai.AsyncOpenAI, emulator: ChatEmulator) -> None:
    completion = await ask(client, [{"role": "user", "content": "draw a cat"}], "image_list", "image_view")
    assert completion.choices[0].message.tool_calls is None
    assert "no" in (completion.choices[0].message.content or "").lower() or "none" in (
        completion.choices[0].message.content or ""
    )
    assert emulator.requests[-1].rule == "no_tool"


# -- rule: parallel calls ------------------------------------------------------------------------


async def test_two_pictures_are_two_parallel_calls(client: openai.AsyncOpenAI, emulator: ChatEmulator) -> None:
    messages = [{"role": "user", "content": "Draw two pictures: a cat on a sofa and a dog in a park."}]
    completion = await ask(client, messages)
    assert calls_of(completion) == [
        ("image_gen_oai", {"prompt": "a cat on a sofa"}),
        ("image_gen_oai", {"prompt": "a dog in a park"}),
    ]
    assert [c.id for c in completion.choices[0].message.tool_calls or []] == ["call_1", "call_2"]
    stream = await ask(client, [{"role": "user", "content": "Paint both a cat and a dog"}], stream=True)
    _, calls, _ = await collect_stream(stream)
    assert [(calls[i]["id"], json.loads(calls[i]["arguments"])) for i in sorted(calls)] == [
        ("call_1", {"prompt": "a cat"}),
        ("call_2", {"prompt": "a dog"}),
    ]
    assert emulator.requests[-1].rule == "pair"


async def test_parallel_calls_can_be_switched_off(client: openai.AsyncOpenAI) -> None:
    messages = [{"role": "user", "content": "Draw two pictures: a cat and a dog"}]
    completion = await ask(client, messages, parallel_tool_calls=False)
    assert calls_of(completion) == [("image_gen_oai", {"prompt": "a cat"})]


# -- rules: edit, combine, list, view -------------------------------------------------------------


async def test_change_request_edits_the_most_recent_image(client: openai.AsyncOpenAI, emulator: ChatEmulator) -> None:
    completion = await ask(client, with_image_in_context("Now make it blue", ID_B, ID_A))
    assert calls_of(completion) == [("image_edit_oai", {"image_ids": [ID_B], "prompt": "Now make it blue"})]
    assert completion.choices[0].message.tool_calls[0].id == "call_2"  # type: ignore[index]  # call_1 was earlier
    assert emulator.requests[-1].rule == "edit"


async def test_change_request_uses_the_ids_it_names(client: openai.AsyncOpenAI) -> None:
    completion = await ask(client, with_image_in_context(f"replace the sky in {ID_A} with stars", ID_B, ID_A))
    assert calls_of(completion) == [
        ("image_edit_oai", {"image_ids": [ID_A], "prompt": f"replace the sky in {ID_A} with stars"})
    ]


async def test_new_drawing_request_is_not_an_edit(client: openai.AsyncOpenAI) -> None:
    completion = await ask(client, with_image_in_context("Now draw a horse with more spots", ID_A))
    assert calls_of(completion) == [("image_gen_oai", {"prompt": "Now draw a horse with more spots"})]


async def test_change_without_any_image_is_chat(client: openai.AsyncOpenAI) -> None:
    completion = await ask(client, [{"role": "user", "content": "make it blue"}])
    assert completion.choices[0].message.tool_calls is None


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        (("flux", "stable-diffusion-edit"), ("flux", {"action": "edit", "image_ids": [ID_A], "prompt": "add a hat"})),
        (
            ("stable-diffusion-edit", "image_gen_oai"),
            ("stable-diffusion-edit", {"image_ids": [ID_A], "prompt": "add a hat"}),
        ),
    ],
)
async def test_edit_tool_preference(
    client: openai.AsyncOpenAI, offered: tuple[str, ...], expected: tuple[str, dict[str, Any]]
) -> None:
    completion = await ask(client, with_image_in_context("add a hat", ID_A), *offered)
    assert calls_of(completion) == [expected]


async def test_combine_uses_the_named_ids_or_the_two_most_recent(client: openai.AsyncOpenAI) -> None:
    named = await ask(client, with_image_in_context(f"combine {ID_C} and {ID_A} into one scene", ID_B))
    assert calls_of(named)[0][1]["image_ids"] == [ID_C, ID_A]
    recent = await ask(client, with_image_in_context("blend them together", ID_B, ID_C, ID_A))
    assert calls_of(recent) == [
        ("image_edit_oai", {"image_ids": [ID_B, ID_C], "prompt": "blend them together"}),
    ]


async def test_system_message_ids_count_as_known(client: openai.AsyncOpenAI) -> None:
    messages = [
        {"role": "system", "content": f"The user attached images {ID_A} and {ID_B}."},
        {"role": "user", "content": "merge the two pictures"},
    ]
    assert calls_of(await ask(client, messages))[0] == (
        "image_edit_oai",
        {"image_ids": [ID_A, ID_B], "prompt": "merge the two pictures"},
    )


async def test_list_and_view(client: openai.AsyncOpenAI) -> None:
    listed = await ask(client, [{"role": "user", "content": "What images do I have? Show me my images"}])
    assert calls_of(listed) == [("image_list", {})]
    viewed = await ask(client, with_image_in_context(f"Look at {ID_A} again please", ID_B))
    assert calls_of(viewed) == [("image_view", {"image_id": ID_A})]
    described = await ask(client, with_image_in_context("describe it", ID_B))
    assert calls_of(described) == [("image_view", {"image_id": ID_B})]


# -- rule: after tool results (the vision handoff) ------------------------------------------------


async def test_tool_result_with_images_handed_over(client: openai.AsyncOpenAI, emulator: ChatEmulator) -> None:
    handoff = [
        {"type": "text", "text": f"Image {ID_A}:"},
        {"type": "image_url", "image_url": {"url": data_url(png())}},
    ]
    completion = await ask(client, after_generation(generated(ID_A), handoff=handoff))
    text = completion.choices[0].message.content or ""
    assert completion.choices[0].finish_reason == "stop"
    assert ID_A in text
    assert "I can see the image." in text
    record = emulator.requests[-1]
    assert record.rule == "tool_results"
    assert record.turns == ["user", "assistant", "tool", "user"]
    assert record.image_placements == ["user_after_tool"]
    assert record.images[0].media_type == "image/png"
    assert record.images[0].size == len(png())


async def test_tool_result_without_images(client: openai.AsyncOpenAI) -> None:
    completion = await ask(client, after_generation(generated(ID_A, ID_B)))
    text = completion.choices[0].message.content or ""
    assert ID_A in text
    assert ID_B in text
    assert "I have the image IDs but cannot see them." in text


async def test_tool_result_as_pydantic_ai_json_parts(client: openai.AsyncOpenAI) -> None:
    result = json.dumps([generated(ID_A), "See file 1a2b3c."])
    handoff = [{"type": "image_url", "image_url": {"url": data_url(png())}}] * 2
    text = (await ask(client, after_generation(result, handoff=handoff))).choices[0].message.content or ""
    assert ID_A in text
    assert "I can see the 2 images." in text


async def test_failed_tool_result_is_quoted(client: openai.AsyncOpenAI) -> None:
    error = (
        "Error (missing_credentials): No OpenAI key is configured.\n"
        "What to do: Set IMAGE_GEN_OAI_API_KEY, or enter your key in the settings."
    )
    text = (await ask(client, after_generation(error))).choices[0].message.content or ""
    assert "That did not work (image_gen_oai): No OpenAI key is configured." in text
    assert "Set IMAGE_GEN_OAI_API_KEY, or enter your key in the settings." in text
    assert "Error (" not in text and "What to do" not in text  # said to a person, not quoted from the tool


# -- tool_choice ---------------------------------------------------------------------------------


async def test_tool_choice(client: openai.AsyncOpenAI) -> None:
    none = await ask(client, [{"role": "user", "content": "draw a cat"}], tool_choice="none")
    assert none.choices[0].message.tool_calls is None
    required = await ask(client, [{"role": "user", "content": "hi there"}], tool_choice="required")
    assert calls_of(required) == [("image_gen_oai", {"prompt": "hi there"})]
    named = await ask(
        client,
        [{"role": "user", "content": "draw a cat"}],
        tool_choice={"type": "function", "function": {"name": "image_list"}},
    )
    assert calls_of(named) == [("image_list", {})]


# -- models and vision ---------------------------------------------------------------------------


async def test_text_model_rejects_images(client: openai.AsyncOpenAI) -> None:
    handoff = [{"type": "image_url", "image_url": {"url": data_url(png())}}]
    with pytest.raises(openai.BadRequestError) as caught:
        await ask(client, after_generation(generated(ID_A), handoff=handoff), model="sandbox-text")
    assert caught.value.status_code == 400
    assert caught.value.message.endswith("Invalid content type. image_url is only supported by certain models.")
    assert caught.value.param == "messages.[3].content.[0].type"
    blind = await ask(client, after_generation(generated(ID_A)), model="sandbox-text")
    assert "I have the image IDs but cannot see them." in (blind.choices[0].message.content or "")


async def test_custom_models(running: RunningSandbox, http: httpx2.AsyncClient, emulator: ChatEmulator) -> None:
    emulator.models = {"gpt-4o-mini": ChatModel("gpt-4o-mini", supports_vision=True)}
    client = openai.AsyncOpenAI(api_key=KEY, base_url=running.urls["chat"], http_client=http, max_retries=0)
    completion = await ask(client, [{"role": "user", "content": "hi"}], model="gpt-4o-mini")
    assert completion.model == "gpt-4o-mini"
    with pytest.raises(openai.NotFoundError) as caught:
        await ask(client, [{"role": "user", "content": "hi"}], model="sandbox-vision")
    assert caught.value.code == "model_not_found"


# -- errors --------------------------------------------------------------------------------------


async def test_bad_key_is_401(running: RunningSandbox, http: httpx2.AsyncClient) -> None:
    client = openai.AsyncOpenAI(
        api_key="sk-wrong-key-9999", base_url=running.urls["chat"], http_client=http, max_retries=0
    )
    with pytest.raises(openai.AuthenticationError) as caught:
        await client.chat.completions.create(model="sandbox-vision", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "invalid_api_key"
    assert "*************9999" in caught.value.message


@pytest.mark.parametrize(
    ("messages", "param", "fragment"),
    [
        ([{"role": "tool", "tool_call_id": "call_9", "content": "x"}], "messages.[0].role", "preceeding message"),
        (after_generation(generated(ID_A))[:2], "messages.[1].role", "call_1"),
        (
            [
                *after_generation("ok")[:2],
                {
                    "role": "tool",
                    "tool_call_id": "call_1",
                    "content": [{"type": "image_url", "image_url": {"url": data_url(png())}}],
                },
            ],
            "messages[2].content[0].type",
            "Supported values are: 'text'",
        ),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(b"not an image")}}]}],
            None,
            "unsupported image",
        ),
        ([], "messages", "empty array"),
    ],
)
async def test_invalid_requests_are_400(
    client: openai.AsyncOpenAI, messages: list[Any], param: str | None, fragment: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="sandbox-vision", messages=messages)
    assert caught.value.param == param
    assert fragment in caught.value.message


async def test_tool_names_are_checked(client: openai.AsyncOpenAI) -> None:
    tools: Any = [{"type": "function", "function": {"name": "server.generate", "parameters": {"type": "object"}}}]
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="sandbox-vision", messages=[{"role": "user", "content": "hi"}], tools=tools
        )
    assert caught.value.param == "tools[0].function.name"


async def test_queued_faults(client: openai.AsyncOpenAI, emulator: ChatEmulator) -> None:
    emulator.faults.add(Fault.rate_limit(retry_after=2))
    emulator.faults.add(Fault.server_error())
    with pytest.raises(openai.RateLimitError) as limited:
        await ask(client, [{"role": "user", "content": "hi"}])
    assert limited.value.response.headers["retry-after"] == "2"
    with pytest.raises(openai.InternalServerError) as failed:
        await ask(client, [{"role": "user", "content": "hi"}])
    assert failed.value.status_code == 500
    assert (await ask(client, [{"role": "user", "content": "hi"}])).choices[0].finish_reason == "stop"
    assert [r.status for r in emulator.requests] == [429, 500, 200]


async def test_stream_error_and_malformed(client: openai.AsyncOpenAI, emulator: ChatEmulator) -> None:
    emulator.faults.add(Fault.stream_error("The model crashed."))
    stream = await ask(client, [{"role": "user", "content": "hello"}], stream=True)
    with pytest.raises(openai.APIError, match="The model crashed."):
        await collect_stream(stream)
    emulator.faults.add(Fault.malformed_json())
    with pytest.raises(json.JSONDecodeError):
        await ask(client, [{"role": "user", "content": "hello"}])
    emulator.faults.add(Fault.empty_data())
    assert (await ask(client, [{"role": "user", "content": "hello"}])).choices == []


async def test_chat_markers_fault_the_chat_and_image_markers_pass_through(
    client: openai.AsyncOpenAI, emulator: ChatEmulator
) -> None:
    with pytest.raises(openai.InternalServerError):
        await ask(client, [{"role": "user", "content": "draw a cat [[sandbox:chat_error=500]]"}])
    with pytest.raises(openai.BadRequestError, match="unknown sandbox trigger"):
        await ask(client, [{"role": "user", "content": "draw a cat [[sandbox:chat_nonsense]]"}])
    completion = await ask(
        client, [{"role": "user", "content": "draw a cat [[sandbox:moderation]] [[sandbox:chat_slow=0]]"}]
    )
    assert calls_of(completion) == [("image_gen_oai", {"prompt": "draw a cat [[sandbox:moderation]]"})]


async def test_max_tokens_cuts_text(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="sandbox-vision", messages=[{"role": "user", "content": "hello"}], max_completion_tokens=3
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == "Hello! I am"


# -- pacing and cancellation ---------------------------------------------------------------------


async def test_slow_stream_can_be_cancelled(client: openai.AsyncOpenAI, emulator: ChatEmulator) -> None:
    emulator.seconds_per_token = 0.2
    started = time.monotonic()
    stream = await ask(client, [{"role": "user", "content": "hello"}], stream=True)
    seen = 0
    async for chunk in stream:
        seen += bool(chunk.choices and chunk.choices[0].delta.content)
        if seen == 2:
            break
    await stream.close()
    elapsed = time.monotonic() - started
    assert 0.35 < elapsed < 2.0  # two paced words, not the whole answer (~20 words at 0.2 s)
    emulator.seconds_per_token = 0.0
    assert (await ask(client, [{"role": "user", "content": "hello"}])).choices[0].finish_reason == "stop"


# -- determinism and the request log --------------------------------------------------------------


async def test_same_conversation_same_answer(client: openai.AsyncOpenAI) -> None:
    conversations = [
        [{"role": "user", "content": "Draw two pictures: a cat and a dog"}],
        with_image_in_context("turn it into a watercolour", ID_A),
        after_generation(generated(ID_A)),
    ]
    for messages in conversations:
        first, second = await ask(client, messages), await ask(client, messages)
        assert first.id != second.id
        assert first.choices[0].message == second.choices[0].message
        assert first.usage == second.usage


async def test_request_log(
    client: openai.AsyncOpenAI, emulator: ChatEmulator, http: httpx2.AsyncClient, running: RunningSandbox
) -> None:
    handoff = [{"type": "image_url", "image_url": {"url": data_url(png(noisy=True))}}]
    messages = [{"role": "developer", "content": "Be brief."}, *after_generation(generated(ID_A), handoff=handoff)]
    await ask(client, messages, "image_gen_oai", "image_list", stream=True, tool_choice="auto")
    await ask(client, [{"role": "user", "content": "draw a cat"}], "image_gen_oai")
    first, second = emulator.requests
    assert isinstance(first, RecordedChat)
    assert (first.api, first.model, first.stream, first.status) == ("openai", "sandbox-vision", True, 200)
    assert first.roles == ["developer", "user", "assistant", "tool", "user"]
    assert first.turns == ["system", "user", "assistant", "tool", "user"]
    assert first.image_placements == ["user_after_tool"]
    assert (first.images[0].message, first.images[0].part) == (4, 0)
    assert first.tools_offered == ["image_gen_oai", "image_list"]
    assert first.tool_choice == "auto"
    assert first.tool_calls == []
    assert first.headers["authorization"] == "Bearer " + "*" * (len(KEY) - 4) + KEY[-4:]
    assert "...<" in json.dumps(first.json)  # the data URL is shortened
    assert second.tool_calls == [{"id": "call_1", "name": "image_gen_oai", "arguments": {"prompt": "draw a cat"}}]
    assert second.finish_reason == "tool_calls"
    remote = (await http.get(f"{running.base_url}/chat/_sandbox/requests")).json()["requests"]
    assert [entry["rule"] for entry in remote] == ["tool_results", "generate"]
    assert remote[0]["images"][0]["placement"] == "user_after_tool"


async def test_control_routes(http: httpx2.AsyncClient, running: RunningSandbox, client: openai.AsyncOpenAI) -> None:
    base = f"{running.base_url}/chat/_sandbox"
    posted = await http.post(f"{base}/faults", json={"preset": "overloaded", "times": 1})
    assert posted.status_code == 201
    with pytest.raises(openai.InternalServerError) as caught:
        await ask(client, [{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 503
    settings = await http.post(f"{base}/settings", json={"seconds_per_token": 0.01})
    assert settings.json() == {"seconds_per_token": 0.01, "delay": 0.0}


# -- Anthropic Messages --------------------------------------------------------------------------


async def test_anthropic_tool_use(claude: anthropic.AsyncAnthropic, emulator: ChatEmulator) -> None:
    raw = await claude.messages.with_raw_response.create(
        model="sandbox-vision",
        max_tokens=1024,
        messages=[{"role": "user", "content": "Draw two pictures: a cat and a dog"}],
        tools=anthropic_tools(*LIMNER_TOOLS),
    )
    assert raw.headers["request-id"].startswith("req_")
    message = await raw.parse()
    assert message.stop_reason == "tool_use"
    uses = [block for block in message.content if block.type == "tool_use"]
    assert [(u.id, u.name, u.input) for u in uses] == [
        ("toolu_1", "image_gen_oai", {"prompt": "a cat"}),
        ("toolu_2", "image_gen_oai", {"prompt": "a dog"}),
    ]
    single = await claude.messages.create(
        model="sandbox-vision",
        max_tokens=1024,
        messages=[{"role": "user", "content": "Draw two pictures: a cat and a dog"}],
        tools=anthropic_tools(*LIMNER_TOOLS),
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
    )
    assert len(single.content) == 1
    assert emulator.requests[-1].api == "anthropic"


async def test_anthropic_streaming(claude: anthropic.AsyncAnthropic) -> None:
    async with claude.messages.stream(
        model="sandbox-vision",
        max_tokens=1024,
        messages=[{"role": "user", "content": "Generate a castle on a hill"}],
        tools=anthropic_tools(*LIMNER_TOOLS),
    ) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_message()
    assert kinds[0] == "message_start"
    assert kinds.count("input_json") > 3
    assert final.stop_reason == "tool_use"
    assert final.content[0].type == "tool_use"
    assert final.content[0].input == {"prompt": "Generate a castle on a hill"}
    async with claude.messages.stream(
        model="sandbox-vision", max_tokens=1024, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        pieces = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert len(pieces) >= 10
    assert final.stop_reason == "end_turn"
    assert "".join(pieces).startswith("Hello!")


def anthropic_after_generation(result: list[Any] | str, *, is_error: bool = False) -> list[Any]:
    return [
        {"role": "user", "content": "Draw a red fox"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "image_gen_oai", "input": {}}]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": result, "is_error": is_error}],
        },
    ]


def image_block(data: bytes, media_type: str = "image/png") -> dict[str, Any]:
    return {
        "type": "image",
        "source": {"type": "base64", "media_type": media_type, "data": base64.b64encode(data).decode()},
    }


async def test_anthropic_images_inside_tool_results(claude: anthropic.AsyncAnthropic, emulator: ChatEmulator) -> None:
    result = [{"type": "text", "text": generated(ID_A)}, image_block(png())]
    message = await claude.messages.create(
        model="sandbox-vision", max_tokens=1024, messages=anthropic_after_generation(result)
    )
    assert message.content[0].type == "text"
    assert ID_A in message.content[0].text
    assert "I can see the image." in message.content[0].text
    record = emulator.requests[-1]
    assert record.turns == ["user", "assistant", "tool"]
    assert record.image_placements == ["tool_result"]
    assert record.images[0].tool_call_id == "toolu_1"
    failed = await claude.messages.create(
        model="sandbox-vision",
        max_tokens=1024,
        messages=anthropic_after_generation("Provider refused.\nWhat to do: Try another prompt.", is_error=True),
    )
    assert "Provider refused. Try another prompt." in failed.content[0].text  # type: ignore[union-attr]


async def test_anthropic_errors(
    claude: anthropic.AsyncAnthropic, running: RunningSandbox, http: httpx2.AsyncClient, emulator: ChatEmulator
) -> None:
    result = [image_block(png())]
    with pytest.raises(anthropic.BadRequestError, match="does not support image input"):
        await claude.messages.create(model="sandbox-text", max_tokens=64, messages=anthropic_after_generation(result))
    with pytest.raises(anthropic.BadRequestError, match="Image does not match the provided media type image/jpeg"):
        await claude.messages.create(
            model="sandbox-vision",
            max_tokens=64,
            messages=anthropic_after_generation([image_block(png(), "image/jpeg")]),
        )
    with pytest.raises(anthropic.BadRequestError, match="without `tool_result` blocks"):
        await claude.messages.create(
            model="sandbox-vision", max_tokens=64, messages=anthropic_after_generation("x")[:2]
        )
    wrong = anthropic.AsyncAnthropic(
        api_key="nope", base_url=running.urls["anthropic"], http_client=http, max_retries=0
    )
    with pytest.raises(anthropic.AuthenticationError) as caught:
        await wrong.messages.create(model="sandbox-vision", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "invalid x-api-key"},
        "request_id": caught.value.request_id,
    }
    emulator.faults.add(Fault.overloaded())
    with pytest.raises(anthropic.OverloadedError):
        await claude.messages.create(
            model="sandbox-vision", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        )
    emulator.faults.add(Fault.raw_error(429, anthropic_body("rate_limit_error", "Slow down.")))
    with pytest.raises(anthropic.RateLimitError, match="Slow down."):
        await claude.messages.create(
            model="sandbox-vision", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        )
    emulator.faults.add(Fault.stream_error("Overloaded"))
    with pytest.raises(anthropic.APIStatusError, match="Overloaded"):
        async with claude.messages.stream(
            model="sandbox-vision", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            await stream.get_final_message()


# -- pydantic-ai, the agent loop's library -------------------------------------------------------


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_pydantic_ai_agent_round_trip(
    api: str, running: RunningSandbox, http: httpx2.AsyncClient, emulator: ChatEmulator
) -> None:
    model: Model
    if api == "openai":
        model = OpenAIChatModel(
            "sandbox-vision", provider=OpenAIProvider(base_url=running.urls["chat"], api_key=KEY, http_client=http)
        )
    else:
        model = AnthropicModel(
            "sandbox-vision",
            provider=AnthropicProvider(base_url=running.urls["anthropic"], api_key=KEY, http_client=http),
        )
    agent = Agent(model)
    prompts: list[str] = []

    @agent.tool_plain
    def image_gen_oai(prompt: str) -> ToolReturn:
        """Generate an image."""
        prompts.append(prompt)
        return ToolReturn(return_value=generated(ID_A), content=[BinaryContent(png(), media_type="image/png")])

    result = await agent.run("Draw a red fox")
    assert prompts == ["Draw a red fox"]
    assert result.output == f"Here is the image: {ID_A}. I can see the image."
    async with agent.run_stream("Draw a blue fox") as streamed:
        assert await streamed.get_output() == f"Here is the image: {ID_A}. I can see the image."
    assert [r.rule for r in emulator.requests] == ["generate", "tool_results"] * 2
    assert emulator.requests[1].image_placements == ["user_after_tool"]


async def test_sdk_stream_helper_assembles_parallel_calls(client: openai.AsyncOpenAI) -> None:
    async with client.chat.completions.stream(
        model="sandbox-vision",
        messages=[{"role": "user", "content": "Draw two pictures: a cat and a dog"}],
        tools=openai_tools(*LIMNER_TOOLS),
    ) as stream:
        final = await stream.get_final_completion()
    assert calls_of(final) == [("image_gen_oai", {"prompt": "a cat"}), ("image_gen_oai", {"prompt": "a dog"})]


async def test_hang_ends_when_the_client_gives_up(client: openai.AsyncOpenAI, emulator: ChatEmulator) -> None:
    with pytest.raises(openai.APITimeoutError):
        await ask(client, [{"role": "user", "content": "hi [[sandbox:chat_hang]]"}], timeout=0.3)
    emulator.faults.add(Fault.delay(0.2))
    started = time.monotonic()
    assert (await ask(client, [{"role": "user", "content": "hi"}])).choices[0].finish_reason == "stop"
    assert time.monotonic() - started >= 0.2
