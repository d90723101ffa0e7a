"""The playground's icon: the ◴ of its header (a ring with its upper-left quarter filled), drawn
here as a 32×32 ICO. Drawn, not shipped: the package data holds only text files, and a browser
asks for an icon on every page, which must not be a 404 in its console."""

from __future__ import annotations

import math
import struct
from functools import cache

SIZE = 32
_ACCENT = (0x3B, 0x5B, 0xDB)  # --accent of playground.css (RGB)
_SUB = 4  # sub-samples per pixel side, for smooth edges


def _inside(x: float, y: float) -> bool:
    """Is the point (pixel units, y down) on the glyph?"""
    dx, dy = x - SIZE / 2, y - SIZE / 2
    r = math.hypot(dx, dy)
    ring = 11.5 <= r <= 15
    quarter = r < 11.5 and dx <= 0 and dy <= 0
    return ring or quarter


def _coverage(px: int, py: int) -> float:
    hits = sum(
        _inside(px + (i + 0.5) / _SUB, py + (j + 0.5) / _SUB)
        for i in range(_SUB)
        for j in range(_SUB)
    )
    return hits / _SUB**2


@cache
def ico() -> bytes:
    """ICONDIR + one ICONDIRENTRY + a 32-bit BMP (BGRA rows bottom-up, then a blank AND mask:
    the alpha channel carries the shape)."""
    r, g, b = _ACCENT
    rows = [
        b"".join(bytes((b, g, r, round(255 * _coverage(x, y)))) for x in range(SIZE))
        for y in reversed(range(SIZE))
    ]
    pixels = b"".join(rows)
    mask = bytes(SIZE * SIZE // 8)  # 1 bit per pixel, 32-pixel rows are already 4-byte aligned
    # BITMAPINFOHEADER: the height counts the colour rows and the mask rows
    bmp = struct.pack(
        "<IiiHHIIiiII", 40, SIZE, 2 * SIZE, 1, 32, 0, len(pixels) + len(mask), 0, 0, 0, 0
    )
    image = bmp + pixels + mask
    head = struct.pack("<HHH", 0, 1, 1)  # reserved, type 1 (icon), one image
    entry = struct.pack("<BBBBHHII", SIZE, SIZE, 0, 0, 1, 32, len(image), 6 + 16)
    return head + entry + image
