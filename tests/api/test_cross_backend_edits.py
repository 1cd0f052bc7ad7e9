"""Every backend's image has an ID that every editing tool accepts (LibreChat drops those IDs)."""

from __future__ import annotations

import httpx2
import pytest

from tests.api.test_tools_api import Auth, call

GENERATORS = {
    "image_gen_oai": {"prompt": "a red kite"},
    "dalle": {"prompt": "a red kite"},
    "stable-diffusion": {"prompt": "red kite, sky", "size": "512x512"},
    "flux": {"prompt": "a red kite", "width": 512, "height": 512},
}
EDITORS = {
    "image_edit_oai": {"prompt": "make it blue"},
    "stable-diffusion-edit": {"prompt": "blue kite"},
    "flux": {"action": "edit", "prompt": "make it blue"},
}


@pytest.mark.parametrize("editor", list(EDITORS))
async def test_each_editor_accepts_each_backends_image(api: httpx2.AsyncClient, alice: Auth, editor: str) -> None:
    _, headers = alice
    for generator, arguments in GENERATORS.items():
        made = await call(api, headers, generator, **arguments)
        assert made.status_code == 200, (generator, made.text)
        (image,) = made.json()["images"]
        edited = await call(api, headers, editor, image_ids=[image["id"]], **EDITORS[editor])
        assert edited.status_code == 200, (generator, editor, edited.text)
        (new,) = edited.json()["images"]
        assert image["id"] in edited.json()["text"]
        detail = (await api.get(f"/api/images/{new['id']}", headers=headers)).json()
        assert [p["id"] for p in detail["parents"]] == [image["id"]], (generator, editor)
