"""The Stable Diffusion tools end to end through the HTTP API against the A1111 emulator (sandbox)."""

from __future__ import annotations

import httpx2

from limner.sandbox.renderer import read_stamp
from tests import images
from tests.api.test_tools_api import Auth, call, content


async def test_sd_generate_with_defaults_then_img2img_any_backends_image(api: httpx2.AsyncClient, alice: Auth) -> None:
    _, headers = alice
    made = await call(
        api, headers, "stable-diffusion", prompt="castle, fog, oil painting", negative_prompt="blurry, text"
    )
    assert made.status_code == 200, made.text
    (image,) = made.json()["images"]
    assert (image["width"], image["height"]) == (1024, 1024)  # LibreChat's default, an operator setting here
    assert image["backend"] == "a1111" and image["id"] in made.json()["text"]

    dalle = (await call(api, headers, "dalle", prompt="a fox")).json()["images"][0]
    edited = await call(
        api, headers, "stable-diffusion-edit", image_ids=[dalle["id"]], prompt="winter, snow", denoising_strength=0.4
    )
    assert edited.status_code == 200, edited.text
    (new,) = edited.json()["images"]
    detail = (await api.get(f"/api/images/{new['id']}", headers=headers)).json()
    assert [p["id"] for p in detail["parents"]] == [dalle["id"]]
    stamp = read_stamp(await content(api, headers, new))
    assert stamp is not None and stamp["inputs"] == [dalle["sha256"]]


async def test_sd_inpainting_with_a_mask(api: httpx2.AsyncClient, alice: Auth) -> None:
    _, headers = alice
    base = (await call(api, headers, "stable-diffusion", prompt="field", size="512x512")).json()["images"][0]
    mask = (
        await api.post("/api/images", headers=headers, files={"file": ("m.png", images.mask_png(64, 64), "image/png")})
    ).json()
    edited = await call(
        api, headers, "stable-diffusion-edit", image_ids=[base["id"]], prompt="a tree", mask_image_id=mask["id"]
    )
    assert edited.status_code == 200, edited.text
    detail = (await api.get(f"/api/images/{edited.json()['images'][0]['id']}", headers=headers)).json()
    assert [(p["id"], p["role"]) for p in detail["parents"]] == [(base["id"], "input"), (mask["id"], "mask")]


async def test_sd_edit_takes_exactly_one_image(api: httpx2.AsyncClient, alice: Auth) -> None:
    _, headers = alice
    a = (await call(api, headers, "stable-diffusion", prompt="a", size="512x512")).json()["images"][0]
    refused = await call(api, headers, "stable-diffusion-edit", image_ids=[a["id"], a["id"]], prompt="b")
    assert refused.status_code == 400 and "image_ids" in refused.json()["error"]["message"]


async def test_sd_upstream_failure_names_the_setting(api: httpx2.AsyncClient, alice: Auth) -> None:
    _, headers = alice
    failed = await call(api, headers, "stable-diffusion", prompt="a cat [[sandbox:error=500]]")
    assert failed.status_code >= 500, failed.text
    error = failed.json()["error"]
    assert error["provider"] == "a1111" and error["hint"]
