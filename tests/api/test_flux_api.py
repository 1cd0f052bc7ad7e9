"""The flux tool end to end through the HTTP API against the BFL emulator (sandbox)."""

from __future__ import annotations

import httpx2

from limner.sandbox.renderer import read_stamp
from tests.api.test_tools_api import Auth, call, content


async def test_flux_generate_then_edit_by_id_records_lineage(api: httpx2.AsyncClient, alice: Auth) -> None:
    _, headers = alice
    made = await call(api, headers, "flux", prompt="a lighthouse at dusk", width=1024, height=768, safety_tolerance=0)
    assert made.status_code == 200, made.text
    (image,) = made.json()["images"]
    assert (image["width"], image["height"], image["model"]) == (1024, 768, "flux-pro-1.1")
    assert image["id"] in made.json()["text"]
    other = (await call(api, headers, "image_gen_oai", prompt="a boat")).json()["images"][0]
    edited = await call(
        api, headers, "flux", action="edit", image_ids=[image["id"], other["id"]], prompt="put the boat in"
    )
    assert edited.status_code == 200, edited.text
    (new,) = edited.json()["images"]
    assert new["model"] == "flux-kontext-pro" and new["source"] == "edited"
    detail = (await api.get(f"/api/images/{new['id']}", headers=headers)).json()
    assert [p["id"] for p in detail["parents"]] == [image["id"], other["id"]]
    stamp = read_stamp(await content(api, headers, new))
    if stamp is not None:  # PNG output carries the renderer's stamp
        assert stamp["inputs"] == [image["sha256"], other["sha256"]]


async def test_flux_ultra_width_height_become_an_aspect_ratio(api: httpx2.AsyncClient, alice: Auth) -> None:
    _, headers = alice
    made = await call(
        api, headers, "flux", prompt="a wide valley", endpoint="/v1/flux-pro-1.1-ultra", width=1920, height=1080
    )
    assert made.status_code == 200, made.text
    (image,) = made.json()["images"]
    assert image["width"] > image["height"]


async def test_flux_moderation_is_a_content_policy_error(api: httpx2.AsyncClient, alice: Auth) -> None:
    _, headers = alice
    refused = await call(api, headers, "flux", prompt="a cat [[sandbox:moderation]]")
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error["code"] == "content_policy" and error["provider"] == "bfl" and error["hint"]


async def test_flux_list_finetunes_and_arguments_checked(api: httpx2.AsyncClient, alice: Auth) -> None:
    _, headers = alice
    listed = await call(api, headers, "flux", action="list_finetunes")
    assert listed.status_code == 200, listed.text
    assert listed.json()["images"] == []
    missing = await call(api, headers, "flux", action="generate_finetuned", prompt="x")
    assert missing.status_code == 400 and "finetune_id" in missing.json()["error"]["message"]
    unknown = await call(api, headers, "flux", prompt="x", endpoint="/v1/flux-nonexistent")
    assert unknown.status_code == 400 and "/v1/flux-pro-1.1" in unknown.json()["error"]["message"]
