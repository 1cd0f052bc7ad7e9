"""A second user can neither list, read, download, edit, delete nor reference the first user's images,
and gets exactly the answer a missing ID gets."""

from __future__ import annotations

import httpx2

from tests import images

Auth = tuple[str, dict[str, str]]
MISSING = "img_01JD0000000000000000000000"


def _normalised(response: httpx2.Response, image_id: str) -> tuple[int, str]:
    return response.status_code, response.text.replace(image_id, "ID")


async def test_foreign_ids_look_missing_everywhere(api: httpx2.AsyncClient, alice: Auth, bob: Auth) -> None:
    _, alice_headers = alice
    _, bob_headers = bob
    created = await api.post("/api/images", headers=alice_headers, files={"file": ("a.png", images.png(), "image/png")})
    secret = created.json()["id"]

    requests = [
        ("GET", "/api/images/{id}", None),
        ("GET", "/api/images/{id}/content", None),
        ("GET", "/api/images/{id}/thumbnail", None),
        ("DELETE", "/api/images/{id}", None),
        ("POST", "/api/tools/image_edit_oai", {"image_ids": ["{id}"], "prompt": "make it blue"}),
        ("POST", "/api/tools/image_view", {"image_id": "{id}"}),
    ]
    for method, path, body in requests:
        answers = []
        for image_id in (secret, MISSING):
            json_body = None
            if body is not None:
                json_body = {
                    k: ([image_id] if isinstance(v, list) else image_id if v == "{id}" else v) for k, v in body.items()
                }
            response = await api.request(method, path.format(id=image_id), headers=bob_headers, json=json_body)
            answers.append(_normalised(response, image_id))
        assert answers[0] == answers[1], (method, path)
        assert answers[0][0] == 404, (method, path, answers[0])

    # referencing the foreign image as a mask fails like a missing ID too
    own = await api.post("/api/images", headers=bob_headers, files={"file": ("b.png", images.png(), "image/png")})
    mask_answers = []
    for image_id in (secret, MISSING):
        response = await api.post(
            "/api/tools/image_edit_oai",
            headers=bob_headers,
            json={"image_ids": [own.json()["id"]], "prompt": "p", "mask_image_id": image_id},
        )
        mask_answers.append(_normalised(response, image_id))
    assert mask_answers[0] == mask_answers[1]
    assert mask_answers[0][0] == 404

    listing = (await api.get("/api/images", headers=bob_headers)).json()
    assert [i["id"] for i in listing["images"]] == [own.json()["id"]]
    tool_list = (await api.post("/api/tools/image_list", headers=bob_headers, json={})).json()
    assert secret not in tool_list["text"]
    # still there for its owner
    assert (await api.get(f"/api/images/{secret}", headers=alice_headers)).status_code == 200
