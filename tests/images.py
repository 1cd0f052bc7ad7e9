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

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def size_of(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as im:
        return im.size
