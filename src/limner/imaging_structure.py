"""The container around the pixels of PNG and GIF files: checked, and repaired where browsers repair it.

:mod:`limner.imaging` decodes pixels with Pillow; this module decides about the file around them, which
Pillow does not let us decide. Pillow refuses a PNG whose *ancillary* chunk (a colour profile, a text
note) fails its CRC, where browsers and libpng skip that chunk and show the image; and Pillow reads a
PNG or GIF that stops before its end marker without complaint, where a strict decoder (libpng, giflib)
refuses it. Pillow's one switch for the first, ``ImageFile.LOAD_TRUNCATED_IMAGES``, is process-wide and
also lets truncated pixel data through, which is exactly what must be refused. So the chunks (PNG) and
blocks (GIF) are walked here: a short loop over formats fixed since 1996 and 1989, no pixel decoded.

The rules, which the README's "Storage and safety" states for users:

* PNG: every chunk's CRC is checked. A damaged ancillary chunk (lower-case first letter) is dropped and
  the rest of the file kept byte for byte, so the pixels are those browsers show; the animation chunks of
  an APNG are the exception (dropping one would change the animation) and are refused like critical
  chunks. A damaged critical chunk (IHDR, PLTE, IDAT, IEND), an unknown critical chunk, a file without
  image data and a file cut before its IEND chunk are refused.
* GIF: a file that stops inside a block (a cut frame) is refused; one that stops right after a complete
  block and lacks only the one-byte trailer gets the trailer appended.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from limner.errors import UnsupportedImageError

__all__ = ["PNG_SIGNATURE", "CheckedPng", "check_gif", "check_png"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_KNOWN_CRITICAL = frozenset({b"IHDR", b"PLTE", b"IDAT", b"IEND"})
_ANIMATION_CHUNKS = frozenset({b"acTL", b"fcTL", b"fdAT"})
_CHUNK_NAMES = {
    b"IHDR": "header (IHDR chunk)",
    b"PLTE": "palette (PLTE chunk)",
    b"IDAT": "image data (IDAT chunk)",
    b"IEND": "end marker (IEND chunk)",
    b"acTL": "animation control (acTL chunk)",
    b"fcTL": "animation frame control (fcTL chunk)",
    b"fdAT": "animation frame data (fdAT chunk)",
}
_MAX_CHUNK_LENGTH = 2**31 - 1  # the PNG specification's limit
_GIF_TRAILER = 0x3B
_GIF_EXTENSION = 0x21
_GIF_IMAGE = 0x2C
_SEND_COMPLETE = "Send the complete file; the upload or download may have been interrupted."


@dataclass(frozen=True, slots=True)
class CheckedPng:
    """A PNG whose chunks passed: the bytes to keep, and what was dropped to get them."""

    data: bytes
    dropped: tuple[str, ...]  # chunk types of damaged ancillary chunks removed, in file order


def check_png(data: bytes) -> CheckedPng:
    """Walk every chunk of a PNG (``data`` starts with the signature); refuse or repair as the module says.

    Costs one CRC pass over the file and a loop per chunk; the bytes are copied only when a chunk is
    dropped.
    """
    view = memoryview(data)
    pos, drops, has_pixels = len(PNG_SIGNATURE), [], False
    while True:
        kind, end, crc_ok = _read_chunk(data, view, pos)
        if not crc_ok:
            if _is_critical(kind) or kind in _ANIMATION_CHUNKS:
                raise UnsupportedImageError(
                    f"The PNG image is damaged: its {_chunk_name(kind)} fails its checksum (CRC).",
                    hint="Send an undamaged copy of the file.",
                )
            drops.append((pos, end, kind.decode("ascii")))
        has_pixels |= kind == b"IDAT"
        pos = end
        if kind == b"IEND":
            break
    if not has_pixels:
        raise UnsupportedImageError("The PNG image has no image data (IDAT chunk).", hint=_SEND_COMPLETE)
    return CheckedPng(data=_without(data, drops), dropped=tuple(d[2] for d in drops))


def _read_chunk(data: bytes, view: memoryview, pos: int) -> tuple[bytes, int, bool]:
    """The chunk at ``pos``: its type, where the next one starts, and whether its CRC matches."""
    if pos + 8 > len(data):
        raise _cut_png()
    length, kind = struct.unpack_from(">I4s", data, pos)
    if length > _MAX_CHUNK_LENGTH or not kind.isalpha():
        raise UnsupportedImageError(
            f"The PNG image is damaged: the chunk at byte {pos:,} has no valid type or length.",
            hint="Send an undamaged copy of the file.",
        )
    end = pos + 12 + length
    if end > len(data):
        raise _cut_png()
    if _is_critical(kind) and kind not in _KNOWN_CRITICAL:
        # libpng (and so browsers) refuse an unknown critical chunk; Pillow would silently skip it.
        raise UnsupportedImageError(
            f"The PNG image has a critical chunk {kind.decode('ascii')!r} that PNG viewers do not know, "
            "so they cannot show it.",
            hint="Save the image again as a standard PNG.",
        )
    crc_ok = zlib.crc32(view[pos + 4 : end - 4]) == int.from_bytes(view[end - 4 : end], "big")
    return kind, end, crc_ok


def _is_critical(kind: bytes) -> bool:
    """Critical chunks have an upper-case first letter (bit 5 clear), by the PNG specification."""
    return not kind[0] & 0x20


def _chunk_name(kind: bytes) -> str:
    return _CHUNK_NAMES.get(kind, f"{kind.decode('ascii')} chunk")


def _cut_png() -> UnsupportedImageError:
    return UnsupportedImageError(
        "The PNG image is truncated: the file ends before its end marker (IEND chunk).", hint=_SEND_COMPLETE
    )


def _without(data: bytes, drops: list[tuple[int, int, str]]) -> bytes:
    if not drops:
        return data
    parts, start = [], 0
    for begin, end, _ in drops:
        parts.append(data[start:begin])
        start = end
    parts.append(data[start:])
    return b"".join(parts)


def check_gif(data: bytes) -> tuple[bytes, int]:
    """The GIF's bytes to keep and its number of frames; refuse a file cut inside a block.

    A file that stops right after a complete block, lacking only the trailer byte, gets it appended:
    every frame is whole, and giflib refuses the file without it. A byte that starts no block ends the
    walk, as it ends the file for browsers (what follows is not shown by them either).
    """
    pos, frames = _gif_first_block(data)
    while pos < len(data):
        marker = data[pos]
        if marker == _GIF_EXTENSION:
            pos = _skip_sub_blocks(data, pos + 2, frames)
        elif marker == _GIF_IMAGE:
            frames += 1
            if pos + 10 > len(data):
                raise _cut_gif(frames)
            pos = _skip_sub_blocks(data, pos + 11 + _colour_table_size(data[pos + 9]), frames)
        else:
            return data, frames
    return data + bytes([_GIF_TRAILER]), frames


def _gif_first_block(data: bytes) -> tuple[int, int]:
    """After the header, the logical screen descriptor and the global colour table: where blocks start."""
    if len(data) < 13:
        raise _cut_gif(0)
    return 13 + _colour_table_size(data[10]), 0


def _colour_table_size(flags: int) -> int:
    return 3 << ((flags & 0x07) + 1) if flags & 0x80 else 0


def _skip_sub_blocks(data: bytes, pos: int, frames: int) -> int:
    """Past a chain of data sub-blocks (each a length byte and that many bytes, ended by a zero length)."""
    while pos < len(data):
        size = data[pos]
        pos += 1 + size
        if size == 0:
            return pos
    raise _cut_gif(frames)


def _cut_gif(frames: int) -> UnsupportedImageError:
    where = f"inside frame {frames}" if frames else "before its first frame"
    return UnsupportedImageError(f"The GIF image is truncated: the file ends {where}.", hint=_SEND_COMPLETE)
