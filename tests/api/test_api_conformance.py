"""The nits an outside schemathesis run found, each pinned by a direct test beside the bounded run in
test_schemathesis.py (which may not draw these exact inputs every time)."""

from __future__ import annotations

import httpx2

Auth = tuple[str, dict[str, str]]


async def test_a_wrongly_typed_vision_handoff_is_refused_not_coerced(api: httpx2.AsyncClient, alice: Auth) -> None:
    _, headers = alice
    response = await api.post("/api/agents", headers=headers, json={"name": "x", "vision_handoff": "yes"})
    assert response.status_code == 422 and "vision_handoff" in response.json()["error"]["message"]


async def test_options_and_405_name_every_method_of_the_path(api: httpx2.AsyncClient, alice: Auth) -> None:
    _, headers = alice
    options = await api.request("OPTIONS", "/api/images", headers=headers)
    assert options.status_code == 204 and options.headers["allow"] == "GET, POST, OPTIONS"
    wrong = await api.put("/api/images", headers=headers, json={})
    assert wrong.status_code == 405 and wrong.headers["allow"] == "GET, POST"
    assert wrong.json()["error"]["code"] == "method_not_allowed" and wrong.json()["error"]["hint"]
    one = await api.request("OPTIONS", "/api/images/img_01JD0000000000000000000000", headers=headers)
    assert one.headers["allow"] == "GET, DELETE, OPTIONS"


async def test_turn_in_progress_is_documented(api: httpx2.AsyncClient) -> None:
    spec = (await api.get("/openapi.json")).json()
    responses = spec["paths"]["/api/conversations/{conversation_id}/messages"]["post"]["responses"]
    assert "turn_in_progress" in responses["409"]["description"]


async def test_keys_are_limited_as_sent_and_stored_trimmed(api: httpx2.AsyncClient, alice: Auth) -> None:
    _, headers = alice
    url = "/api/keys/image_gen_oai"
    assert (await api.put(url, headers=headers, json={"key": "   "})).status_code == 422  # blank
    padded = "sk-" + "a" * 4000 + " " * 200  # the key fits, the request does not: the schema's limit holds
    assert (await api.put(url, headers=headers, json={"key": padded})).status_code == 422
    assert (await api.put(url, headers=headers, json={"key": "  sk-abc123456789  "})).status_code == 204
    keys = (await api.get("/api/keys", headers=headers)).json()["keys"]
    assert {k["provider"]: k["is_set"] for k in keys}["image_gen_oai"] is True
    spec = (await api.get("/openapi.json")).json()
    key_schema = spec["components"]["schemas"]["KeyIn"]["properties"]["key"]
    assert key_schema["maxLength"] == 4096 and key_schema["pattern"] == r"\S"
