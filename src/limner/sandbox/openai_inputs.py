"""Input images of the edit and variation endpoints: collecting, type checks and decoding.

The real service judges a file part by its declared ``Content-Type`` first (raw bytes sent by the
SDK arrive as ``application/octet-stream`` and are refused), and only then decodes it. Both
steps are reproduced here, with the service's messages. Decoding is CPU work: the functions that
call :func:`~limner.sandbox.renderer.probe_image` must run in a worker thread.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

from limner.sandbox.openai_errors import (
    invalid_request,
    invalid_type,
    missing_parameter,
    unknown_parameter,
)
from limner.sandbox.renderer import ImageProbe, probe_image

GPT_INPUT_TYPES = ("image/jpeg", "image/png", "image/webp")
MAX_INPUT_IMAGES = 16
GPT_MAX_FILE_BYTES = 50 * 1024 * 1024
DALL_E_MAX_FILE_BYTES = 4 * 1024 * 1024
_DECODABLE_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*?);base64,(?P<data>.*)$", re.DOTALL)
_IMAGE_REF_KEYS = {"image_url", "file_id"}


@dataclass(frozen=True)
class UploadedFile:
    """A file as received: the form field (or JSON path) it came in, and its declared type."""

    field: str
    filename: str | None
    content_type: str | None
    data: bytes


@dataclass(frozen=True)
class InputImage:
    """An uploaded file that passed the type check and decoded."""

    upload: UploadedFile
    probe: ImageProbe

    @property
    def data(self) -> bytes:
        """The bytes as uploaded; hashes in the render stamp are taken over exactly these."""
        return self.upload.data


@dataclass(frozen=True)
class EditInputs:
    """Everything an edit renders from, already validated."""

    images: list[InputImage]
    mask: InputImage | None
    markup: InputImage | None


def collect_form_files(
    files: list[UploadedFile],
) -> tuple[list[UploadedFile], UploadedFile | None, UploadedFile | None]:
    """Split multipart files into images (``image``, ``image[]``, repeated), mask and markup."""
    images = [item for item in files if item.field in ("image", "image[]")]
    masks = [item for item in files if item.field == "mask"]
    markups = [item for item in files if item.field == "markup"]
    for item in files:
        if item.field not in ("image", "image[]", "mask", "markup"):
            raise unknown_parameter(item.field)
    return images, (masks[-1] if masks else None), (markups[-1] if markups else None)


def decode_image_refs(fields: dict[str, Any]) -> tuple[list[UploadedFile], UploadedFile | None]:
    """Turn the JSON edit variant's ``images`` and ``mask`` ImageRefs into uploads.

    Only ``data:`` URLs can be honoured: the emulator has no Files API and fetches nothing.
    """
    refs = fields.get("images")
    if refs is None:
        raise missing_parameter("images")
    if not isinstance(refs, list):
        raise invalid_type("images", "an array", refs)
    images = [_decode_ref(ref, f"images[{index}]") for index, ref in enumerate(refs)]
    mask_ref = fields.get("mask")
    mask = None if mask_ref is None else _decode_ref(mask_ref, "mask")
    return images, mask


def _decode_ref(ref: object, path: str) -> UploadedFile:
    if not isinstance(ref, dict):
        raise invalid_type(path, "an object", ref)
    extra = set(ref) - _IMAGE_REF_KEYS
    if extra:
        raise unknown_parameter(f"{path}.{sorted(extra)[0]}")
    if ("image_url" in ref) == ("file_id" in ref):
        raise invalid_request(
            f"Invalid '{path}': provide exactly one of 'image_url' or 'file_id'.", path, "invalid_value"
        )
    if "file_id" in ref:
        message = (
            f"Invalid '{path}.file_id': the sandbox has no Files API, so file IDs cannot be resolved. "
            "Send the image as a data: URL in 'image_url' instead."
        )
        raise invalid_request(message, f"{path}.file_id", "invalid_value")
    return _decode_data_url(ref["image_url"], f"{path}.image_url")


def _decode_data_url(url: object, path: str) -> UploadedFile:
    if not isinstance(url, str):
        raise invalid_type(path, "a string", url)
    if url.startswith(("http://", "https://")):
        message = f"Invalid '{path}': the sandbox does not fetch remote URLs. Send a data: URL instead."
        raise invalid_request(message, path, "invalid_value")
    match = _DATA_URL.match(url)
    if match is None:
        raise invalid_request(f"Invalid '{path}': expected a URL or a base64 data URL.", path, "invalid_value")
    try:
        data = base64.b64decode(match.group("data"), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise invalid_request(f"Invalid '{path}': the data URL is not valid base64.", path, "invalid_value") from exc
    return UploadedFile(path, None, match.group("mime") or "application/octet-stream", data)


def check_declared_type(upload: UploadedFile, allowed: tuple[str, ...] = GPT_INPUT_TYPES) -> None:
    """Refuse a part whose declared Content-Type is not an accepted image type."""
    declared = (upload.content_type or "application/octet-stream").split(";")[0].strip().lower()
    if declared in allowed:
        return
    name = _logical_name(upload.field)
    message = (
        f"Invalid file '{name}': unsupported mimetype ('{declared}'). "
        f"Supported file formats are {_quoted_types(allowed)}."
    )
    raise invalid_request(message, name, "unsupported_file_mimetype")


def decode_upload(upload: UploadedFile, index: int, limit: int = GPT_MAX_FILE_BYTES) -> InputImage:
    """Decode one upload after its type check; refuses oversize files and undecodable bytes."""
    name = _logical_name(upload.field)
    if len(upload.data) > limit:
        megabytes = limit // (1024 * 1024)
        size = len(upload.data)
        message = f"Invalid file '{name}': the file is {size} bytes; the maximum is {megabytes} MB."
        raise invalid_request(message, name, "file_too_large")
    probe = probe_image(upload.data)
    if probe is None or probe.format not in _DECODABLE_FORMATS:
        message = f"Invalid image file or mode for image {index + 1}, please check your image file."
        raise invalid_request(message, name, "invalid_image_file")
    return InputImage(upload, probe)


def gpt_edit_inputs(
    images: list[UploadedFile],
    mask: UploadedFile | None,
    markup: UploadedFile | None,
    *,
    supports_markup: bool,
) -> EditInputs:
    """Validate the inputs of a GPT image edit: 1 to 16 images, optional PNG mask or markup."""
    if not images:
        raise missing_parameter("image")
    if len(images) > MAX_INPUT_IMAGES:
        message = (
            f"Invalid 'image': array too long. Expected an array with maximum length {MAX_INPUT_IMAGES}, "
            f"but got an array with length {len(images)} instead."
        )
        raise invalid_request(message, "image", "array_above_max_length")
    for upload in [*images, *(item for item in (mask, markup) if item is not None)]:
        check_declared_type(upload)
    if markup is not None and not supports_markup:
        raise unknown_parameter("markup")
    if markup is not None and mask is not None:
        raise invalid_request("'markup' cannot be combined with 'mask'.", "markup", "invalid_value")
    decoded = [decode_upload(upload, index) for index, upload in enumerate(images)]
    first = decoded[0].probe
    return EditInputs(decoded, _overlay("mask", mask, first), _overlay("markup", markup, first))


def _overlay(name: str, upload: UploadedFile | None, first: ImageProbe) -> InputImage | None:
    """A mask or markup must be a PNG with alpha and exactly the first image's dimensions."""
    if upload is None:
        return None
    image = decode_upload(upload, 0)
    probe = image.probe
    if probe.format != "PNG" or not probe.has_transparency:
        message = f"Invalid '{name}': the {name} must be a PNG image with an alpha channel."
        raise invalid_request(message, name, "invalid_value")
    if (probe.width, probe.height) != (first.width, first.height):
        message = (
            f"Invalid '{name}': {name} dimensions ({probe.width}x{probe.height}) must match the "
            f"first image ({first.width}x{first.height})."
        )
        raise invalid_request(message, name, "invalid_value")
    return image


def dall_e_2_inputs(images: list[UploadedFile], mask: UploadedFile | None, *, require_alpha: bool) -> EditInputs:
    """dall-e-2 edits and variations: exactly one square PNG under 4 MB; edits need alpha unless masked."""
    if not images:
        raise missing_parameter("image")
    if len(images) > 1:
        message = f"Invalid 'image': dall-e-2 accepts exactly one image, but got {len(images)}."
        raise invalid_request(message, "image", "invalid_value")
    check_declared_type(images[0], ("image/png",))
    image = _dall_e_png(images[0])
    if image.probe.width != image.probe.height:
        message = f"Invalid input image - image must be square, got {image.probe.width}x{image.probe.height}."
        raise invalid_request(message, "image", "invalid_value")
    if require_alpha and mask is None and image.probe.mode not in ("RGBA", "LA", "L"):
        message = f"Invalid input image - format must be in ['RGBA', 'LA', 'L'], got {image.probe.mode}."
        raise invalid_request(message, "image", "invalid_value")
    checked_mask = None
    if mask is not None:
        check_declared_type(mask, ("image/png",))
        checked_mask = _overlay("mask", mask, image.probe)
    return EditInputs([image], checked_mask, None)


def _dall_e_png(upload: UploadedFile) -> InputImage:
    if len(upload.data) > DALL_E_MAX_FILE_BYTES:
        raise invalid_request("Uploaded image must be a PNG and less than 4 MB.", "image", "invalid_value")
    image = decode_upload(upload, 0, DALL_E_MAX_FILE_BYTES)
    if image.probe.format != "PNG":
        raise invalid_request("Uploaded image must be a PNG and less than 4 MB.", "image", "invalid_value")
    return image


def reject_form_text_images(fields: dict[str, Any]) -> None:
    """An ``image`` sent as a plain text field (no filename) is not a file upload."""
    for name in ("image", "image[]", "mask", "markup"):
        if name in fields:
            logical = _logical_name(name)
            raise invalid_request(f"Invalid file '{logical}': expected a file upload.", logical, "invalid_value")


def _logical_name(field: str) -> str:
    return "image" if field == "image[]" else field


def _quoted_types(types: tuple[str, ...]) -> str:
    quoted = [f"'{item}'" for item in types]
    if len(quoted) == 1:
        return quoted[0]
    return ", ".join(quoted[:-1]) + ", and " + quoted[-1]
