from __future__ import annotations

import gc
import io
import logging
import weakref
import zlib
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import pytest
from PIL import Image, ImageFile, UnidentifiedImageError

from limner.errors import ImageTooLargeError, UnsupportedImageError
from limner.imaging import (
    DecodeBudget,
    make_thumbnail,
    prepare_mask,
    sniff_media_type,
    validate_image,
    validate_image_sync,
    vision_copy,
)
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
    first = Image.new("RGB", (width, height), (200, 40, 40))
    second = Image.new("RGB", (width, height), (40, 40, 200))
    out = io.BytesIO()
    first.save(out, format="MPO", save_all=True, append_images=[second])
    return out.getvalue()


@pytest.mark.parametrize("thorough", [True, False])
def test_mpo_phone_photo_is_accepted_as_jpeg(thorough: bool) -> None:
    data = _mpo()
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "MPO" and getattr(im, "n_frames", 1) == 2  # really a multi-picture file
    info = validate_image_sync(data, max_bytes=10_000_000, max_pixels=10_000_000, thorough=thorough)
    assert (info.media_type, info.width, info.height) == ("image/jpeg", 48, 32)
    assert info.data == data


async def test_mpo_thumbnail_shows_the_first_picture() -> None:
    thumb = await make_thumbnail(_mpo(), 16)
    assert images.size_of(thumb) == (16, 11)


# --- damage browsers tolerate is repaired; damage a strict decoder refuses is refused (issue 24) ---


def _with_text_note(data: bytes) -> bytes:
    return images.with_chunk(data, b"tEXt", b"Comment\x00made by a test")


@pytest.mark.parametrize("thorough", [True, False])
@pytest.mark.parametrize(
    ("kind", "body"),
    [
        (b"tEXt", b"Comment\x00a note"),
        (b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(b"not really a profile" * 20)),
        (b"zzZz", b"a private chunk nobody knows"),
    ],
)
def test_damaged_ancillary_chunk_is_dropped_and_the_pixels_kept(
    kind: bytes, body: bytes, thorough: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Browsers and libpng skip an ancillary chunk that fails its CRC; limner stores the file without it."""
    caplog.set_level(logging.INFO, logger="limner.imaging")
    clean = _with_text_note(images.png(50, 40, (10, 200, 90), alpha=True))
    damaged = images.with_chunk(clean, kind, body, bad_crc=True)
    with pytest.raises(UnidentifiedImageError):  # Pillow alone refuses it: this is the case the repair is for
        images.pixels(damaged)
    info = validate_image_sync(damaged, thorough=thorough, **LIMITS)
    assert info.data == clean  # the damaged chunk removed, every other byte as it came
    assert (info.width, info.height, info.media_type) == (50, 40, "image/png")
    assert images.pixels(info.data) == images.pixels(clean)
    assert validate_image_sync(info.data, **LIMITS).data == info.data  # stored bytes pass the strict check as they are
    assert [r.getMessage() for r in caplog.records if r.name == "limner.imaging"] == [
        f"PNG stored without its damaged ancillary chunks ('{kind.decode()}',) (browsers skip them too)"
    ]


@pytest.mark.parametrize("thorough", [True, False])
@pytest.mark.parametrize(
    ("kind", "name"),
    [
        (b"IHDR", "header"),
        (b"PLTE", "palette"),
        (b"IDAT", "image data"),
        (b"IEND", "end marker"),
        (b"acTL", "animation control"),
        (b"fcTL", "animation frame control"),
        (b"fdAT", "animation frame data"),
    ],
)
def test_damaged_critical_or_animation_chunk_is_refused(kind: bytes, name: str, thorough: bool) -> None:
    source = {
        b"PLTE": images.encoded("PNG", 30, 20, (1, 2, 3)),
        b"acTL": images.animation("PNG"),
        b"fcTL": images.animation("PNG"),
        b"fdAT": images.animation("PNG"),
    }.get(kind, images.png(30, 20))
    if kind == b"PLTE":
        with Image.open(io.BytesIO(source)) as im:
            out = io.BytesIO()
            im.convert("P").save(out, format="PNG")
            source = out.getvalue()
    assert kind in [k for k, _ in images.png_chunks(source)]
    with pytest.raises(UnsupportedImageError, match=rf"damaged: its {name} \(\w+ chunk\) fails its checksum"):
        validate_image_sync(images.with_bad_crc(source, kind), thorough=thorough, **LIMITS)


def test_corrupt_compressed_data_with_valid_crcs_is_refused_by_the_full_decode() -> None:
    chunks = images.png_chunks(images.noisy_png(120, 90))
    index = [k for k, _ in chunks].index(b"IDAT")
    body = bytearray(chunks[index][1])
    body[len(body) // 2 : len(body) // 2 + 64] = bytes(64)  # 64 bytes of the deflate stream zeroed
    chunks[index] = (b"IDAT", bytes(body))
    with pytest.raises(UnsupportedImageError, match="damaged or truncated: its pixel data cannot be decoded"):
        validate_image_sync(images.png_from_chunks(chunks), **LIMITS)


@pytest.mark.parametrize("thorough", [True, False])
@pytest.mark.parametrize("cut", [12, 5, 20, 4000])
def test_png_ending_before_iend_is_refused(cut: int, thorough: bool) -> None:
    """Without IEND (or with IDAT's last bytes gone) Pillow still decodes every row; a strict decoder does not."""
    data = images.noisy_png(300, 300)
    with pytest.raises(UnsupportedImageError, match=r"truncated: the file ends before its end marker \(IEND"):
        validate_image_sync(data[:-cut], thorough=thorough, **LIMITS)


def test_png_without_image_data_or_with_an_unknown_critical_chunk_is_refused() -> None:
    chunks = images.png_chunks(images.png(20, 20))
    no_pixels = images.png_from_chunks([c for c in chunks if c[0] != b"IDAT"])
    with pytest.raises(UnsupportedImageError, match=r"no image data \(IDAT"):
        validate_image_sync(no_pixels, thorough=False, **LIMITS)
    unknown = images.with_chunk(images.png(20, 20), b"CgBI", b"\x50\x00\x20\x06")  # Apple's "crushed" PNG marker
    with pytest.raises(UnsupportedImageError, match="critical chunk 'CgBI' that PNG viewers do not know"):
        validate_image_sync(unknown, thorough=False, **LIMITS)


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "WEBP"])
def test_whole_animation_is_kept_as_it_came(fmt: str) -> None:
    data = images.animation(fmt, frames=4)
    info = validate_image_sync(data, **LIMITS)
    assert info.data == data and images.frame_count(info.data) == 4


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "WEBP"])
def test_animation_with_a_cut_frame_is_refused(fmt: str) -> None:
    """Every length, CRC and end marker is right; only decoding the last frame shows it is cut."""
    damaged = images.with_cut_last_frame(fmt, images.animation(fmt, frames=3))
    name = {"PNG": "PNG", "GIF": "GIF", "WEBP": "WebP"}[fmt]
    with pytest.raises(UnsupportedImageError, match=rf"The {name} image is damaged or truncated: frame 3 of 3"):
        validate_image_sync(damaged, **LIMITS)


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "WEBP"])
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_cut_animation_file_is_refused(fmt: str, keep: float) -> None:
    data = images.animation(fmt, frames=3)
    with pytest.raises(UnsupportedImageError, match="truncated|damaged or incomplete"):
        validate_image_sync(data[: int(len(data) * keep)], **LIMITS)


def test_apng_declaring_more_frames_than_it_has_is_refused() -> None:
    chunks = images.png_chunks(images.animation("PNG", frames=3))
    last_control = max(i for i, (k, _) in enumerate(chunks) if k == b"fcTL")
    short = images.png_from_chunks(chunks[:last_control] + chunks[-1:])  # frame 3's fcTL and fdAT gone
    with pytest.raises(UnsupportedImageError, match="frame 3 of 3 cannot be decoded"):
        validate_image_sync(short, **LIMITS)


@pytest.mark.parametrize("thorough", [True, False])
def test_gif_missing_only_its_trailer_gets_it(thorough: bool) -> None:
    """Every frame is whole: the one-byte trailer giflib insists on is added, nothing else changes."""
    data = images.animation("GIF", frames=3)
    assert data.endswith(b";")
    info = validate_image_sync(data[:-1], thorough=thorough, **LIMITS)
    assert info.data == data and images.frame_count(info.data) == 3


def test_gif_cut_inside_a_frame_names_the_frame() -> None:
    data = images.animation("GIF", frames=3)
    with pytest.raises(UnsupportedImageError, match="truncated: the file ends inside frame 3"):
        validate_image_sync(data[:-2], thorough=False, **LIMITS)  # the last frame's block terminator missing
    with pytest.raises(UnsupportedImageError, match="ends before its first frame"):
        validate_image_sync(data[:10], **LIMITS)


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "WEBP"])
def test_animation_too_costly_to_check_is_refused(fmt: str) -> None:
    """Every frame is decoded, so all frames together may have at most 10 x max_pixels pixels."""
    limits = {"max_bytes": 5_000_000, "max_pixels": 64 * 48}
    assert validate_image_sync(images.animation(fmt, frames=10), **limits).width == 64
    with pytest.raises(ImageTooLargeError, match=r"11 frames of 64x48 \(33,792 pixels in all\)"):
        validate_image_sync(images.animation(fmt, frames=11), **limits)


def test_animation_with_too_many_frames_is_refused_before_decoding() -> None:
    one = images.animation("GIF", frames=1, size=(1, 1))
    frame = one[one.index(b"\x21\xf9") : -1]  # a control extension and its 1x1 frame
    many = one[: one.index(b"\x21\xf9")] + frame * 10_001 + b";"
    with pytest.raises(ImageTooLargeError, match="10,001 frames"):
        validate_image_sync(many, **LIMITS)


def test_animated_webp_with_exif_orientation_keeps_every_frame() -> None:
    """An upright copy would be the first frame alone: an animation keeps its bytes."""
    exif = Image.Exif()
    exif[0x0112] = 6
    frames = [Image.new("RGB", (60, 20), (i * 60, 0, 0)) for i in range(3)]
    out = io.BytesIO()
    frames[0].save(out, format="WEBP", save_all=True, append_images=frames[1:], exif=exif.tobytes(), lossless=True)
    info = validate_image_sync(out.getvalue(), **LIMITS)
    assert info.data == out.getvalue() and images.frame_count(info.data) == 3


# --- memory: decodes wait for room in the budget; thumbnails never hold a second full-size copy (issue 24) ---


async def _until(condition: Callable[[], bool]) -> None:
    """Wait for a state another task reaches (it runs in worker threads, so poll it, with a deadline)."""
    with anyio.fail_after(30):
        while not condition():
            await anyio.sleep(0.005)


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The size of every image Pillow decodes (``ImageFile.load`` with pixels still to read)."""
    seen: list[tuple[int, int]] = []
    original = ImageFile.ImageFile.load

    def load(self: ImageFile.ImageFile) -> Any:
        if self.tile:
            seen.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return seen


@pytest.mark.parametrize(
    "call",
    [
        lambda data, budget: make_thumbnail(data, 256, budget=budget),
        lambda data, budget: vision_copy(data, 512, budget=budget),
        lambda data, budget: validate_image(data, **LIMITS, budget=budget),
        lambda data, budget: prepare_mask(images.mask_png(8, 8), (600, 400), budget=budget),
    ],
    ids=["thumbnail", "vision copy", "upload check", "mask"],
)
async def test_a_decode_waits_while_the_budget_is_used(
    call: Callable[[bytes, DecodeBudget], Awaitable[object]], loads: list[tuple[int, int]]
) -> None:
    budget = DecodeBudget(10 * 1024 * 1024)
    done = anyio.Event()

    async def decode() -> None:
        await call(images.png(600, 400), budget)
        done.set()

    async with anyio.create_task_group() as tg:
        async with budget.reserve(budget.limit_bytes):  # another decode holds all of it
            tg.start_soon(decode)
            await _until(lambda: budget.waiting == 1)
            assert loads == [] and not done.is_set()  # the header was read; no pixel yet
        await done.wait()
    assert loads and budget.in_use == 0


async def test_a_provider_png_is_checked_without_waiting_for_the_budget(loads: list[tuple[int, int]]) -> None:
    budget = DecodeBudget(1024 * 1024)
    async with budget.reserve(budget.limit_bytes):
        info = await validate_image(images.png(600, 400), **LIMITS, thorough=False, budget=budget)
    assert info.width == 600 and loads == []  # the chunk walk decodes nothing, so it needs no room


async def test_a_decode_larger_than_the_budget_runs_when_nothing_else_does() -> None:
    budget = DecodeBudget(1024 * 1024)  # the image decodes to about 4 MB
    assert images.size_of(await make_thumbnail(images.png(1200, 900), 256, budget=budget)) == (256, 192)
    assert budget.in_use == 0


async def test_large_jpeg_thumbnail_is_decoded_at_a_reduced_scale(loads: list[tuple[int, int]]) -> None:
    data = images.encoded("JPEG", 4000, 3000)
    thumb = await make_thumbnail(data, 256)
    assert images.size_of(thumb) == (256, 192)
    assert loads and max(max(size) for size in loads) <= 1000  # 1/4 scale at most: 2x the target or more


@pytest.mark.parametrize("mode", ["P", "RGBA"])
async def test_thumbnail_of_a_large_png_converts_stripes_not_the_whole_image(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A palette or RGBA image needs converting (to RGBA, to premultiplied alpha): never the whole of it at once."""
    source = _noisy(3000, 2000, mode)
    converted: list[tuple[int, int]] = []
    original = Image.Image.convert

    def convert(self: Image.Image, *args: Any, **kwargs: Any) -> Image.Image:
        converted.append(self.size)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "convert", convert)
    copy, media_type = await vision_copy(source, 256)
    monkeypatch.undo()
    assert media_type == "image/png" and converted
    assert max(height for _, height in converted) < 2000 // 4  # stripes and the reduced copy only
    with Image.open(io.BytesIO(source)) as im:  # the same pixels as a whole-image reduce, then Lanczos
        expected = im.convert("RGBA").reduce(5).resize((256, 171), Image.Resampling.LANCZOS)
    assert images.pixels(copy) == ("RGBA", (256, 171), expected.tobytes())


async def test_no_image_outlives_the_thumbnail(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[weakref.ref[Image.Image]] = []
    original = Image.Image.__init__

    def init(self: Image.Image) -> None:
        original(self)
        made.append(weakref.ref(self))

    monkeypatch.setattr(Image.Image, "__init__", init)
    await make_thumbnail(_noisy(1500, 1000, "RGBA"), 256)
    await vision_copy(images.encoded("JPEG", 1500, 1000), 256)
    monkeypatch.undo()
    gc.collect()
    assert len(made) > 5 and [ref for ref in made if ref() is not None] == []


def _noisy(width: int, height: int, mode: str) -> bytes:
    """A PNG in ``mode`` (a palette with a transparent entry, or RGBA) that compresses badly."""
    noise = Image.effect_noise((width, height), 60)
    if mode == "P":
        im = noise.convert("P")
        im.info["transparency"] = 0
    else:
        im = Image.merge(
            "RGBA", [noise, noise.rotate(90, expand=False), noise.transpose(Image.Transpose.FLIP_LEFT_RIGHT), noise]
        )
    out = io.BytesIO()
    im.save(out, format="PNG", compress_level=1)
    return out.getvalue()


class RecordingBudget(DecodeBudget):
    """A budget that notes what each decode reserved."""

    def __init__(self) -> None:
        super().__init__(1 << 40)
        self.reserved: list[int] = []

    def reserve(self, nbytes: int) -> AbstractAsyncContextManager[None]:
        self.reserved.append(nbytes)
        return super().reserve(nbytes)


@pytest.mark.parametrize(
    ("fmt", "options", "at_least", "below"),
    [
        ("PNG", {}, 4, 5),  # four bytes a pixel (RGB is stored in four)
        ("WEBP", {"lossless": True}, 16, 17),  # libwebp's canvas and Pillow's copies of it
        ("JPEG", {}, 4, 5),
        ("JPEG", {"progressive": True}, 10, 11),  # the coefficients of every block, beside the pixels
    ],
)
async def test_an_upload_check_reserves_what_its_decoder_holds(
    fmt: str, options: dict[str, Any], at_least: int, below: int
) -> None:
    out = io.BytesIO()
    Image.new("RGB", (1000, 800), (5, 6, 7)).save(out, format=fmt, **options)
    budget = RecordingBudget()
    await validate_image(out.getvalue(), **LIMITS, budget=budget)
    (reserved,) = budget.reserved
    assert at_least * 800_000 <= reserved < below * 800_000


async def test_a_jpeg_thumbnail_reserves_a_fraction_of_the_full_decode() -> None:
    budget = RecordingBudget()
    await make_thumbnail(images.encoded("PNG", 4000, 3000), 256, budget=budget)
    await make_thumbnail(images.encoded("JPEG", 4000, 3000), 256, budget=budget)
    png, jpeg = budget.reserved
    assert png >= 4000 * 3000 * 4 and jpeg < png / 8  # decoded at 1/4 scale
