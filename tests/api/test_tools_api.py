from __future__ import annotations

import json

import httpx2

from limner.sandbox.renderer import read_stamp
from tests import images

Auth = tuple[str, dict[str, str]]


async def call(api: httpx2.AsyncClient, headers: dict[str, str], tool: str, **args: object) -> httpx2.Response:
    return await api.post(f"/api/tools/{tool}", headers=headers, json=args)


async def content(api: httpx2.AsyncClient, headers: dict[str, str], image: dict[str, str]) -> bytes:
    return (await api.get(image["content_url"], headers=headers)).content


async def test_generate_keeps_every_image_and_names_every_id(api: httpx2.AsyncClient, alice: Auth) -> None:
    _, headers = alice
    prompt = 'a sign that says "OPEN" at dusk'
    response = await call(api, headers, "image_gen_oai", prompt=prompt, n=3, size="1536x1024", quality="low")
    assert response.status_code == 200, response.text
    result = response.json()
    assert len(result["images"]) == 3
    for image in result["images"]:
        assert image["id"] in result["text"]
        assert (image["width"], image["height"]) == (1536, 1024)
        assert image["is_sandbox"] is True and image["source"] == "generated"
        assert image["prompt"] == prompt  # quotes kept
        assert image["usage"]["output_tokens"] > 0
    assert "already displayed" in result["text"]
    stamps = [read_stamp(await content(api, headers, image)) for image in result["images"]]
    assert {s["prompt"] for s in stamps if s} == {prompt}
    assert len({image["sha256"] for image in result["images"]}) == 3


async def test_edit_by_id_records_lineage_and_uses_the_right_inputs(api: httpx2.AsyncClient, alice: Auth) -> None:
    _, headers = alice
    first = (await call(api, headers, "image_gen_oai", prompt="a lighthouse")).json()["images"][0]
    upload = await api.post("/api/images", headers=headers, files={"file": ("cat.png", images.png(), "image/png")})
    second = upload.json()
    edited = await call(api, headers, "image_edit_oai", image_ids=[first["id"], second["id"]], prompt="combine them")
    assert edited.status_code == 200, edited.text
    result = edited.json()
    (new,) = result["images"]
    assert f"referenced_image_ids: {json.dumps([first['id'], second['id']])}" in result["text"]
    detail = (await api.get(f"/api/images/{new['id']}", headers=headers)).json()
    assert detail["source"] == "edited"
    assert [p["id"] for p in detail["parents"]] == [first["id"], second["id"]]
    stamp = read_stamp(await content(api, headers, new))
    assert stamp is not None and stamp["inputs"] == [first["sha256"], second["sha256"]]


async def test_masked_edit(api: httpx2.AsyncClient, alice: Auth) -> None:
    _, headers = alice
    base = (await call(api, headers, "image_gen_oai", prompt="a field", size="1024x1024")).json()["images"][0]
    mask_upload = await api.post(
        "/api/images", headers=headers, files={"file": ("m.png", images.mask_png(64, 64), "image/png")}
    )
    mask = mask_upload.json()
    edited = await call(
        api, headers, "image_edit_oai", image_ids=[base["id"]], prompt="add a tree", mask_image_id=mask["id"]
    )
    assert edited.status_code == 200, edited.text
    (new,) = edited.json()["images"]
    detail = (await api.get(f"/api/images/{new['id']}", headers=headers)).json()
    assert [(p["id"], p["role"]) for p in detail["parents"]] == [(base["id"], "input"), (mask["id"], "mask")]
    stamp = read_stamp(await content(api, headers, new))
    assert stamp is not None and stamp["mask"] is True


async def test_invalid_arguments_are_a_clear_4xx(api: httpx2.AsyncClient, alice: Auth) -> None:
    _, headers = alice
    response = await call(api, headers, "image_gen_oai", prompt="x", size="999x999")
    assert response.status_code == 400
    assert "size" in response.json()["error"]["message"]
    response = await call(api, headers, "image_gen_oai", prompt="x", colour="red")
    assert response.status_code == 400 and "colour" in response.json()["error"]["message"]
    response = await call(api, headers, "no_such_tool", prompt="x")
    assert response.status_code == 404 and response.json()["error"]["code"] == "tool_not_found"


async def test_tool_listing(api: httpx2.AsyncClient, alice: Auth) -> None:
    _, headers = alice
    families = {f["id"]: f for f in (await api.get("/api/tools", headers=headers)).json()["families"]}
    oai = families["image_gen_oai"]
    assert oai["available"] and oai["is_sandbox"] and oai["model"] == "gpt-image-1.5"
    tools = {t["name"]: t for t in oai["tools"]}
    gen = tools["image_gen_oai"]["parameters"]
    assert gen["required"] == ["prompt"]
    assert set(gen["properties"]) == {"prompt", "background", "quality", "size", "n"}
    assert gen["properties"]["quality"]["anyOf"][0]["enum"] == ["auto", "low", "medium", "high"]
    edit = tools["image_edit_oai"]["parameters"]
    assert edit["properties"]["image_ids"]["minItems"] == 1
    assert set(families["library"]["tools"][i]["name"] for i in range(2)) == {"image_list", "image_view"}


async def test_image_view_and_list(api: httpx2.AsyncClient, alice: Auth) -> None:
    _, headers = alice
    made = (await call(api, headers, "image_gen_oai", prompt="a red boat")).json()["images"][0]
    view = (await call(api, headers, "image_view", image_id=made["id"])).json()
    assert [i["id"] for i in view["images"]] == [made["id"]]
    listing = (await call(api, headers, "image_list")).json()
    assert made["id"] in listing["text"] and "a red boat" in listing["text"]


async def test_keys_are_stored_and_never_returned(api: httpx2.AsyncClient, alice: Auth) -> None:
    _, headers = alice
    put = await api.put("/api/keys/image_gen_oai", headers=headers, json={"key": "sk-alice-secret"})
    assert put.status_code == 204 and put.content == b""
    listing = await api.get("/api/keys", headers=headers)
    assert "sk-alice-secret" not in listing.text
    entry = next(k for k in listing.json()["keys"] if k["provider"] == "image_gen_oai")
    assert entry["is_set"] is True
    assert (await api.delete("/api/keys/image_gen_oai", headers=headers)).status_code == 204
    keys = (await api.get("/api/keys", headers=headers)).json()["keys"]
    assert next(k for k in keys if k["provider"] == "image_gen_oai")["is_set"] is False
    unknown = await api.put("/api/keys/nope", headers=headers, json={"key": "x"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_provider"
    blank = await api.put("/api/keys/image_gen_oai", headers=headers, json={"key": "   "})
    assert blank.status_code == 422
    keys = (await api.get("/api/keys", headers=headers)).json()["keys"]
    assert next(k for k in keys if k["provider"] == "image_gen_oai")["is_set"] is False


async def test_dalle_image_gets_an_id_that_image_edit_oai_accepts(api: httpx2.AsyncClient, alice: Auth) -> None:
    _, headers = alice
    made = await call(api, headers, "dalle", prompt="a watercolour fox", size="1024x1792", style="natural")
    assert made.status_code == 200, made.text
    (image,) = made.json()["images"]
    assert image["id"] in made.json()["text"] and image["tool"] == "dalle" and image["model"] == "dall-e-3"
    assert image["revised_prompt"]
    edited = await call(api, headers, "image_edit_oai", image_ids=[image["id"]], prompt="add snow")
    assert edited.status_code == 200, edited.text
    detail = (await api.get(f"/api/images/{edited.json()['images'][0]['id']}", headers=headers)).json()
    assert [p["id"] for p in detail["parents"]] == [image["id"]]


async def test_dalle_description_override(tmp_path: object) -> None:
    from pathlib import Path

    from limner.runtime import Runtime
    from tests.conftest import make_settings

    settings = make_settings(Path(str(tmp_path)), dalle3_system_prompt="Draw with DALL·E, in English.")
    async with Runtime.open(settings) as runtime:
        assert runtime.tool("dalle").description == "Draw with DALL·E, in English."


async def test_tool_listing_says_why_a_family_is_unavailable(tmp_path: object) -> None:
    from pathlib import Path

    from limner.runtime import Runtime
    from tests.conftest import make_settings

    settings = make_settings(Path(str(tmp_path)), sandbox="auto", flux_api_key="user_provided")
    async with Runtime.open(settings) as runtime:
        assert runtime.sandbox is not None and runtime.sandbox.reason is None  # images: no sandbox (chat only)
        status = {fid: family.status for fid, family in runtime.families.items()}
        assert status["flux"].available and status["flux"].accepts_user_key and not status["flux"].is_sandbox
        for fid, variable in (
            ("image_gen_oai", "IMAGE_GEN_OAI_API_KEY"),
            ("dalle", "DALLE3_API_KEY"),
            ("stable-diffusion", "SD_WEBUI_URL"),
        ):
            assert not status[fid].available and variable in (status[fid].reason or ""), fid
        assert "image_gen_oai" not in runtime.tools() and "flux" in runtime.tools()
