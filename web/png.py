"""A PNG writer for the first layer's filter image: zlib and struct, no imaging library.

Why our own: the image is a few kilobytes of 8-bit grey or RGB pixels, which the PNG
format stores as filtered scanlines in one zlib stream between a header and an end chunk
(RFC 2083). Twenty lines do that; Pillow would be a large dependency of the server for it.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOUR_TYPE = {1: 0, 3: 2}  # channels -> PNG colour type: 0 greyscale, 2 truecolour (RGB)
BIT_DEPTH = 8
COMPRESSION_LEVEL = 6  # zlib's default: images this small compress in well under a millisecond


def encode_png(pixels: bytes, width: int, height: int, channels: int) -> bytes:
    """``height x width x channels`` uint8 pixels (row-major, as in :class:`monitor.events.Filters`) as PNG."""
    if channels not in _COLOUR_TYPE:
        raise ValueError(f"channels: expected 1 (grey) or 3 (RGB), got {channels!r}")
    if len(pixels) != width * height * channels:
        raise ValueError(f"pixels: expected {width * height * channels} bytes, got {len(pixels)}")
    rows = np.frombuffer(pixels, dtype=np.uint8).reshape(height, width * channels)
    scanlines = np.hstack([np.zeros((height, 1), np.uint8), rows])  # filter type 0 (None) before each row
    header = struct.pack(">IIBBBBB", width, height, BIT_DEPTH, _COLOUR_TYPE[channels], 0, 0, 0)
    return (SIGNATURE + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(scanlines.tobytes(), COMPRESSION_LEVEL)) + _chunk(b"IEND", b""))


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
