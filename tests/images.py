"""Image bytes for tests, made with Pillow (no fixtures on disk to drift)."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def png(
    width: int = 64, height: int = 48, color: tuple[int, int, int] = (200, 30, 30), *, alpha: bool = False
) -> bytes:
    mode = "RGBA" if alpha else "RGB"
    fill = (*color, 255) if alpha else color
    im = Image.new(mode, (width, height), fill)
    out = io.BytesIO()
    im.save(out, format="PNG")
    return out.getvalue()


def noisy_png(width: int = 300, height: int = 300) -> bytes:
    """A PNG that compresses badly (noise): its image data spans several IDAT chunks."""
    out = io.BytesIO()
    Image.effect_noise((width, height), 50).convert("RGB").save(out, format="PNG")
    return out.getvalue()


def encoded(fmt: str, width: int = 40, height: int = 30, color: tuple[int, int, int] = (10, 120, 240)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format=fmt)
    return out.getvalue()


def jpeg_with_orientation(width: int = 60, height: int = 20, orientation: int = 6) -> bytes:
    im = Image.new("RGB", (width, height), (0, 200, 0))
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    im.save(out, format="JPEG", exif=exif.tobytes())
    return out.getvalue()


def mask_png(width: int, height: int) -> bytes:
    """Opaque except a transparent square in the middle (the area to edit)."""
    im = Image.new("RGBA", (width, height), (0, 0, 0, 255))
    for x in range(width // 4, 3 * width // 4):
        for y in range(height // 4, 3 * height // 4):
            im.putpixel((x, y), (0, 0, 0, 0))
    out = io.BytesIO()
    im.save(out, format="PNG")
    return out.getvalue()


def decompression_bomb(side: int = 20_000) -> bytes:
    """A valid PNG header and a tiny compressed IDAT claiming side x side pixels of one colour."""
    chunk = _png_chunk
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def size_of(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as im:
        return im.size


# --- PNG chunks, animations and the ways files arrive damaged -------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunk(kind: bytes, data: bytes, *, bad_crc: bool = False) -> bytes:
    crc = zlib.crc32(kind + data) ^ (0xFFFFFFFF if bad_crc else 0)
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc & 0xFFFFFFFF)


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """The (type, body) of every chunk of a well-formed PNG."""
    pos, found = len(PNG_SIGNATURE), []
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        found.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return found


def png_from_chunks(chunks: list[tuple[bytes, bytes]], *, bad_crc_at: int | None = None) -> bytes:
    """A PNG of these chunks with correct CRCs, except the chunk at index ``bad_crc_at``."""
    body = b"".join(_png_chunk(k, d, bad_crc=i == bad_crc_at) for i, (k, d) in enumerate(chunks))
    return PNG_SIGNATURE + body


def with_bad_crc(data: bytes, kind: bytes) -> bytes:
    """The PNG with the CRC of its first ``kind`` chunk broken (everything else intact)."""
    chunks = png_chunks(data)
    return png_from_chunks(chunks, bad_crc_at=[k for k, _ in chunks].index(kind))


def with_chunk(data: bytes, kind: bytes, body: bytes, *, bad_crc: bool = False) -> bytes:
    """The PNG with one more chunk right after IHDR (where iCCP, tEXt and the like go)."""
    chunks = png_chunks(data)
    chunks.insert(1, (kind, body))
    return png_from_chunks(chunks, bad_crc_at=1 if bad_crc else None)


def pixels(data: bytes) -> tuple[str, tuple[int, int], bytes]:
    """Mode, size and raw pixels of the first frame, for comparing two files' pictures."""
    with Image.open(io.BytesIO(data)) as im:
        return im.mode, im.size, im.tobytes()


def animation(fmt: str, frames: int = 3, size: tuple[int, int] = (64, 48)) -> bytes:
    """An animated PNG, GIF or WebP whose frames differ (noise, so each frame has real data)."""
    pictures = [Image.effect_noise(size, 40 + 20 * i).convert("RGB") for i in range(frames)]
    out = io.BytesIO()
    options: dict[str, object] = {"lossless": True} if fmt == "WEBP" else {}
    pictures[0].save(out, format=fmt, save_all=True, append_images=pictures[1:], duration=80, loop=0, **options)
    return out.getvalue()


def frame_count(data: bytes) -> int:
    with Image.open(io.BytesIO(data)) as im:
        return int(getattr(im, "n_frames", 1))


def with_cut_last_frame(fmt: str, data: bytes) -> bytes:
    """The animation with its last frame's data cut in half, the file around it well-formed.

    What a careless editor or a re-muxed download leaves: every length, CRC and end marker is right,
    so only decoding that frame shows the damage.
    """
    if fmt == "PNG":
        chunks = png_chunks(data)
        last = max(i for i, (k, _) in enumerate(chunks) if k == b"fdAT")
        chunks[last] = (b"fdAT", chunks[last][1][: len(chunks[last][1]) // 2])
        return png_from_chunks(chunks)
    if fmt == "GIF":
        return _gif_with_cut_last_frame(data)
    return _webp_with_cut_last_frame(data)


def _gif_with_cut_last_frame(data: bytes) -> bytes:
    def table(flags: int) -> int:
        return 3 << ((flags & 7) + 1) if flags & 0x80 else 0

    pos, last_frame_data = 13 + table(data[10]), 0
    while data[pos] != 0x3B:  # blocks until the trailer: extensions (0x21) and frames (0x2C)
        if data[pos] == 0x21:
            pos += 2
        else:
            pos += 11 + table(data[pos + 9])
            last_frame_data = pos
        while data[pos]:
            pos += 1 + data[pos]
        pos += 1
    sub_blocks, pos = [], last_frame_data
    while data[pos]:
        sub_blocks.append(data[pos : pos + 1 + data[pos]])
        pos += 1 + data[pos]
    assert len(sub_blocks) > 2, "the last frame is too small to cut"
    return data[:last_frame_data] + b"".join(sub_blocks[: len(sub_blocks) // 2]) + b"\x00;"


def _webp_with_cut_last_frame(data: bytes) -> bytes:
    pos, chunks = 12, []
    while pos < len(data):
        (length,) = struct.unpack_from("<I", data, pos + 4)
        chunks.append(data[pos : pos + 8 + length + (length & 1)])
        pos += 8 + length + (length & 1)
    last = chunks[-1]
    assert last[:4] == b"ANMF"
    header, frame = last[8:24], last[24:]  # ANMF's 16-byte header, then the frame's own chunk
    (frame_length,) = struct.unpack_from("<I", frame, 4)
    keep = frame_length // 2
    frame = frame[:4] + struct.pack("<I", keep) + frame[8 : 8 + keep] + (b"\x00" if keep & 1 else b"")
    chunks[-1] = b"ANMF" + struct.pack("<I", len(header) + len(frame)) + header + frame
    body = b"WEBP" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body
