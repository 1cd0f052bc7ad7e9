from __future__ import annotations

import pytest

from limner.errors import ImageTooLargeError, UnsupportedImageError
from limner.imaging import make_thumbnail, prepare_mask, sniff_media_type, validate_image, validate_image_sync
from tests import images

LIMITS = {"max_bytes": 5_000_000, "max_pixels": 40_000_000}


@pytest.mark.parametrize(
    ("fmt", "media_type"), [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp"), ("GIF", "image/gif")]
)
def test_accepted_formats_are_sniffed_and_measured(fmt: str, media_type: str) -> None:
    data = images.encoded(fmt, 40, 30)
    assert sniff_media_type(data) == media_type
    info = validate_image_sync(data, **LIMITS)
    assert (info.media_type, info.width, info.height) == (media_type, 40, 30)
    assert info.data == data  # nothing to re-orient: the bytes are kept as they came


def test_text_named_png_is_refused_by_content() -> None:
    with pytest.raises(UnsupportedImageError, match="checked by content"):
        validate_image_sync(b"hello, I am text pretending to be a PNG", **LIMITS)


def test_empty_file_is_refused() -> None:
    with pytest.raises(UnsupportedImageError, match="empty"):
        validate_image_sync(b"", **LIMITS)


def test_truncated_png_is_refused() -> None:
    data = images.png(300, 300)
    with pytest.raises(UnsupportedImageError, match="damaged|truncated"):
        validate_image_sync(data[: len(data) // 2], **LIMITS)


def test_decompression_bomb_is_refused_before_decoding() -> None:
    bomb = images.decompression_bomb(20_000)
    assert len(bomb) < 200_000  # tiny on disk, 400 million pixels when decoded
    with pytest.raises(ImageTooLargeError, match="pixels"):
        validate_image_sync(bomb, **LIMITS)


def test_oversize_file_is_refused() -> None:
    data = images.png(200, 200)
    with pytest.raises(ImageTooLargeError, match="bytes"):
        validate_image_sync(data, max_bytes=len(data) - 1, max_pixels=10**9)


def test_exif_orientation_is_applied() -> None:
    info = validate_image_sync(images.jpeg_with_orientation(60, 20, orientation=6), **LIMITS)
    assert (info.width, info.height) == (20, 60)
    assert images.size_of(info.data) == (20, 60)


async def test_thumbnail_is_small_webp() -> None:
    thumb = await make_thumbnail(images.png(1024, 512), 256)
    assert sniff_media_type(thumb) == "image/webp"
    assert images.size_of(thumb) == (256, 128)


async def test_mask_is_resized_to_the_first_image() -> None:
    mask = await prepare_mask(images.mask_png(64, 64), (128, 96))
    assert images.size_of(mask) == (128, 96)


async def test_mask_without_transparency_is_refused() -> None:
    with pytest.raises(UnsupportedImageError, match="transparen"):
        await prepare_mask(images.png(10, 10), (10, 10))


async def test_validate_runs_in_a_thread() -> None:
    info = await validate_image(images.png(10, 10), **LIMITS)
    assert info.width == 10


def test_structural_check_of_provider_png_still_catches_damage() -> None:
    data = images.png(300, 300)
    assert validate_image_sync(data, thorough=False, **LIMITS).width == 300
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    for damaged in (data[: len(data) // 2], data[:-5], bytes(flipped)):
        with pytest.raises(UnsupportedImageError, match="damaged|truncated"):
            validate_image_sync(damaged, thorough=False, **LIMITS)
    with pytest.raises(ImageTooLargeError):
        validate_image_sync(images.decompression_bomb(20_000), thorough=False, **LIMITS)


def _mpo(width: int = 48, height: int = 32) -> bytes:
    """A Multi-Picture JPEG as phones write them: two pictures, the first one shown everywhere."""
    import io

    from PIL import Image

    first = Image.new("RGB", (width, height), (200, 40, 40))
    second = Image.new("RGB", (width, height), (40, 40, 200))
    out = io.BytesIO()
    first.save(out, format="MPO", save_all=True, append_images=[second])
    return out.getvalue()


@pytest.mark.parametrize("thorough", [True, False])
def test_mpo_phone_photo_is_accepted_as_jpeg(thorough: bool) -> None:
    from PIL import Image

    data = _mpo()
    with Image.open(__import__("io").BytesIO(data)) as im:
        assert im.format == "MPO" and getattr(im, "n_frames", 1) == 2  # really a multi-picture file
    info = validate_image_sync(data, max_bytes=10_000_000, max_pixels=10_000_000, thorough=thorough)
    assert (info.media_type, info.width, info.height) == ("image/jpeg", 48, 32)
    assert info.data == data


async def test_mpo_thumbnail_shows_the_first_picture() -> None:
    thumb = await make_thumbnail(_mpo(), 16)
    assert images.size_of(thumb) == (16, 11)
