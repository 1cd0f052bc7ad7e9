"""``/api/images``: upload, list, read, download, thumbnail, delete; always the caller's own images.

Someone else's image answers exactly like a missing one (404 ``image_not_found``). Content is served
with a strong ETag (the SHA-256), revalidation on every use and Range support. The browser may keep the bytes
but must ask again each time (``no-cache``): a 304 is cheap, and it is answered only after the owner check, so
nothing outlives access (a deleted image, or another user of the same browser, gets a 404, not a cached copy).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Query, Request, Response, UploadFile
from fastapi.responses import FileResponse

from limner.api.deps import CurrentUser, RuntimeDep
from limner.api.errors import ERROR_RESPONSES
from limner.api.schemas import ImageDetailOut, ImageListOut, ImageOut, ParentOut
from limner.backends.base import ImageOutput
from limner.errors import ImageTooLargeError
from limner.imaging import extension_for
from limner.library import Provenance

__all__ = ["router"]

router = APIRouter(prefix="/api/images", tags=["images"], responses=ERROR_RESPONSES)

_CACHE = "private, no-cache"
_NOSNIFF = {"X-Content-Type-Options": "nosniff"}


@router.post("", status_code=201, summary="Upload an image (multipart field `file`).")
async def upload_image(
    runtime: RuntimeDep,
    user: CurrentUser,
    file: Annotated[UploadFile, File(description="PNG, JPEG, WebP or GIF")],
) -> ImageOut:
    """Checked by content (never by name or declared type), size and pixel caps; EXIF orientation applied."""
    limit = runtime.settings.max_upload_bytes
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise ImageTooLargeError(
            f"The file is larger than the {limit:,} byte limit.",
            hint="Send a smaller image or ask the operator to raise LIMNER_MAX_UPLOAD_BYTES.",
        )
    provenance = Provenance(source="uploaded", original_name=(file.filename or "")[:255] or None)
    (record,) = await runtime.library.save(user.id, [ImageOutput(data=data)], provenance)
    return ImageOut.of(record)


@router.get("", summary="List the caller's images, newest first.")
async def list_images(
    runtime: RuntimeDep,
    user: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    before: Annotated[str | None, Query(description="Last ID of the previous page.")] = None,
    source: Literal["generated", "edited", "uploaded", "mcp"] | None = None,
) -> ImageListOut:
    """Cursor pagination by ID (IDs sort by creation time)."""
    records = await runtime.library.recent(user.id, limit=limit, before=before, source=source)
    next_before = records[-1].id if len(records) == limit else None
    return ImageListOut(images=[ImageOut.of(r) for r in records], next_before=next_before)


@router.get("/{image_id}", summary="An image's record with its parents (edit lineage).")
async def get_image(runtime: RuntimeDep, user: CurrentUser, image_id: str) -> ImageDetailOut:
    """The record and its lineage."""
    record = await runtime.library.get(user.id, image_id)
    parents = await runtime.library.parents(user.id, image_id)
    out = [ParentOut(id=p.id, role=p.role, image=ImageOut.of(p.image) if p.image else None) for p in parents]
    return ImageDetailOut(**ImageOut.of(record).model_dump(), parents=out)


@router.get(
    "/{image_id}/content",
    summary="The image's bytes (ETag, Cache-Control, Range).",
    response_class=Response,
    responses={200: {"content": {"image/*": {}}}, 206: {"description": "A byte range."}, 304: {}},
)
async def get_content(runtime: RuntimeDep, user: CurrentUser, image_id: str, request: Request) -> Response:
    """Streams the file; answers 304 when the client already has these bytes."""
    record, path, data = await runtime.library.content_path(user.id, image_id)
    etag = f'"{record.sha256}"'
    headers = {"ETag": etag, "Cache-Control": _CACHE, **_NOSNIFF}
    if _matches(request, etag):
        return Response(status_code=304, headers=headers)
    filename = f"{record.id}.{extension_for(record.media_type)}"
    if path is not None:
        return FileResponse(
            path,
            media_type=record.media_type,
            headers=headers,
            filename=filename,
            content_disposition_type="inline",
        )
    return Response(data, media_type=record.media_type, headers=headers)


@router.get(
    "/{image_id}/thumbnail",
    summary="A WebP thumbnail (at most 256 px on its longest side).",
    response_class=Response,
    responses={200: {"content": {"image/webp": {}}}, 304: {}},
)
async def get_thumbnail(runtime: RuntimeDep, user: CurrentUser, image_id: str, request: Request) -> Response:
    """Made on first request, then served from storage."""
    record = await runtime.library.get(user.id, image_id)
    etag = f'"{record.sha256}-t"'
    headers = {"ETag": etag, "Cache-Control": _CACHE, **_NOSNIFF}
    if _matches(request, etag):
        return Response(status_code=304, headers=headers)
    return Response(await runtime.library.thumbnail(user.id, image_id), media_type="image/webp", headers=headers)


@router.delete("/{image_id}", status_code=204, summary="Delete an image.")
async def delete_image(runtime: RuntimeDep, user: CurrentUser, image_id: str) -> Response:
    """Removes the record; the bytes go when no other record shares them."""
    await runtime.library.delete(user.id, image_id)
    return Response(status_code=204)


def _matches(request: Request, etag: str) -> bool:
    header = request.headers.get("if-none-match")
    return header is not None and (header.strip() == "*" or etag in [t.strip() for t in header.split(",")])
