from __future__ import annotations

import hashlib

import httpx2
import pytest

from limner.runtime import Runtime
from tests import images

Auth = tuple[str, dict[str, str]]


async def upload(
    api: httpx2.AsyncClient, headers: dict[str, str], data: bytes, name: str = "pic.png"
) -> httpx2.Response:
    return await api.post("/api/images", headers=headers, files={"file": (name, data, "image/png")})


async def test_upload_then_read_everything(api: httpx2.AsyncClient, alice: Auth) -> None:
    _, headers = alice
    data = images.png(300, 200)
    created = await upload(api, headers, data)
    assert created.status_code == 201, created.text
    image = created.json()
    assert image["source"] == "uploaded" and image["original_name"] == "pic.png"
    assert (image["width"], image["height"], image["media_type"]) == (300, 200, "image/png")

    detail = (await api.get(f"/api/images/{image['id']}", headers=headers)).json()
    assert detail["parents"] == []
    content = await api.get(image["content_url"], headers=headers)
    assert content.content == data
    assert content.headers["content-type"] == "image/png"
    assert content.headers["etag"] == f'"{image["sha256"]}"'
    assert content.headers["cache-control"] == "private, no-cache"  # revalidated: nothing outlives access

    cached = await api.get(image["content_url"], headers={**headers, "If-None-Match": content.headers["etag"]})
    assert cached.status_code == 304 and cached.content == b""
    part = await api.get(image["content_url"], headers={**headers, "Range": "bytes=0-9"})
    assert part.status_code == 206 and part.content == data[:10]

    thumb = await api.get(image["thumbnail_url"], headers=headers)
    assert thumb.headers["content-type"] == "image/webp"
    assert images.size_of(thumb.content) == (256, 171)

    listing = (await api.get("/api/images", headers=headers)).json()
    assert [i["id"] for i in listing["images"]] == [image["id"]]
    assert (await api.delete(f"/api/images/{image['id']}", headers=headers)).status_code == 204
    gone = await api.get(f"/api/images/{image['id']}", headers=headers)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "image_not_found"


async def test_pagination(api: httpx2.AsyncClient, alice: Auth) -> None:
    _, headers = alice
    ids = [(await upload(api, headers, images.png(color=(i, i, i)))).json()["id"] for i in range(5)]
    page1 = (await api.get("/api/images?limit=2", headers=headers)).json()
    page2 = (await api.get(f"/api/images?limit=2&before={page1['next_before']}", headers=headers)).json()
    page3 = (await api.get(f"/api/images?limit=2&before={page2['next_before']}", headers=headers)).json()
    seen = [i["id"] for p in (page1, page2, page3) for i in p["images"]]
    assert seen == list(reversed(ids))
    assert page3["next_before"] is None


@pytest.mark.parametrize(
    ("label", "data", "status", "code"),
    [
        ("text named .png", b"this is plainly text, not an image at all", 415, "unsupported_image"),
        ("truncated png", images.png(400, 400)[:900], 415, "unsupported_image"),
        ("png ending before IEND", images.noisy_png(200, 200)[:-12], 415, "unsupported_image"),
        ("png with its IEND cut", images.noisy_png(200, 200)[:-5], 415, "unsupported_image"),
        ("png with damaged image data", images.with_bad_crc(images.png(60, 40), b"IDAT"), 415, "unsupported_image"),
        ("png with a damaged header", images.with_bad_crc(images.png(60, 40), b"IHDR"), 415, "unsupported_image"),
        ("apng with a cut frame", images.with_cut_last_frame("PNG", images.animation("PNG")), 415, "unsupported_image"),
        ("gif with a cut frame", images.with_cut_last_frame("GIF", images.animation("GIF")), 415, "unsupported_image"),
        (
            "webp with a cut frame",
            images.with_cut_last_frame("WEBP", images.animation("WEBP")),
            415,
            "unsupported_image",
        ),
        ("apng cut short", images.animation("PNG")[:-40], 415, "unsupported_image"),
        ("gif cut short", images.animation("GIF")[:-40], 415, "unsupported_image"),
        ("decompression bomb", images.decompression_bomb(20_000), 413, "image_too_large"),
        ("empty file", b"", 415, "unsupported_image"),
    ],
)
async def test_bad_uploads_are_refused_and_store_nothing(
    api: httpx2.AsyncClient, alice: Auth, runtime: Runtime, label: str, data: bytes, status: int, code: str
) -> None:
    _, headers = alice
    response = await upload(api, headers, data)
    assert response.status_code == status, (label, response.text)
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    assert (await api.get("/api/images", headers=headers)).json()["images"] == []
    assert [k async for k in runtime.library.store.iter_keys()] == []


async def test_damaged_ancillary_chunk_is_repaired_and_the_repaired_bytes_stored(
    api: httpx2.AsyncClient, alice: Auth, runtime: Runtime
) -> None:
    """A colour profile with a bad CRC (browsers skip it): stored without it, pixels and ID as for a clean file."""
    _, headers = alice
    clean = images.with_chunk(images.png(90, 60, (20, 90, 200)), b"tEXt", b"Title\x00kept as it came")
    damaged = images.with_chunk(clean, b"iCCP", b"ICC Profile\x00\x00" + b"\x78\x9c" + b"\x00" * 40, bad_crc=True)
    created = await upload(api, headers, damaged)
    assert created.status_code == 201, created.text
    image = created.json()
    assert (image["width"], image["height"], image["media_type"]) == (90, 60, "image/png")
    content = (await api.get(image["content_url"], headers=headers)).content
    assert content == clean and image["sha256"] == hashlib.sha256(clean).hexdigest()
    assert images.pixels(content) == images.pixels(clean)
    assert image["byte_size"] == len(clean)


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "WEBP"])
async def test_whole_animation_upload_is_stored_as_it_came(api: httpx2.AsyncClient, alice: Auth, fmt: str) -> None:
    _, headers = alice
    data = images.animation(fmt, frames=4)
    created = await upload(api, headers, data, name=f"moving.{fmt.lower()}")
    assert created.status_code == 201, created.text
    content = (await api.get(created.json()["content_url"], headers=headers)).content
    assert content == data and images.frame_count(content) == 4


async def test_gif_missing_its_trailer_is_stored_complete(api: httpx2.AsyncClient, alice: Auth) -> None:
    _, headers = alice
    data = images.animation("GIF", frames=3)
    created = await upload(api, headers, data[:-1], name="moving.gif")
    assert created.status_code == 201, created.text
    assert (await api.get(created.json()["content_url"], headers=headers)).content == data


async def test_oversize_upload_is_refused(api: httpx2.AsyncClient, alice: Auth, runtime: Runtime) -> None:
    _, headers = alice
    big = b"\x89PNG\r\n\x1a\n" + b"\x00" * (runtime.settings.max_upload_bytes + 10)
    response = await upload(api, headers, big)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "image_too_large"
    assert [k async for k in runtime.library.store.iter_keys()] == []


async def test_requests_without_a_valid_token_get_401(api: httpx2.AsyncClient) -> None:
    for headers in ({}, {"Authorization": "Bearer lmn_wrong"}, {"Authorization": "Basic abc"}):
        response = await api.get("/api/images", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"


async def test_health_announces_the_sandbox(api: httpx2.AsyncClient) -> None:
    health = (await api.get("/api/health")).json()
    assert health["status"] == "ok"
    assert health["sandbox"]["active"] is True
    assert health["sandbox"]["reason"] == "LIMNER_SANDBOX=on"
    families = {f["id"]: f for f in health["families"]}
    assert families["image_gen_oai"] == {"id": "image_gen_oai", "available": True, "is_sandbox": True, "provider": None}
    assert all(f["available"] and f["is_sandbox"] for f in families.values())


async def test_openapi_document_lists_routes_and_error_shape(api: httpx2.AsyncClient) -> None:
    doc = (await api.get("/openapi.json")).json()
    for path in ("/api/images", "/api/images/{image_id}/content", "/api/tools/{name}", "/api/keys/{provider}"):
        assert path in doc["paths"]
    assert "ErrorResponse" in doc["components"]["schemas"]
    assert "404" in doc["paths"]["/api/images/{image_id}"]["get"]["responses"]


async def test_cached_copies_do_not_outlive_access(api: httpx2.AsyncClient, alice: Auth, bob: Auth) -> None:
    """Every use revalidates, and revalidation checks the owner: no cached copy survives a delete or a new user."""
    _, headers = alice
    image = (await upload(api, headers, images.png(64, 64))).json()
    for url in (image["content_url"], image["thumbnail_url"]):
        response = await api.get(url, headers=headers)
        cache = response.headers["cache-control"]
        assert "no-cache" in cache and "max-age" not in cache and "immutable" not in cache, (url, cache)
        etag = response.headers["etag"]
        as_bob = await api.get(url, headers={**bob[1], "If-None-Match": etag})
        assert as_bob.status_code == 404, url
    assert (await api.delete(f"/api/images/{image['id']}", headers=headers)).status_code == 204
    after = await api.get(image["content_url"], headers={**headers, "If-None-Match": f'"{image["sha256"]}"'})
    assert after.status_code == 404
