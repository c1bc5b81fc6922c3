"""Snapshot bytes as they arrive: ``to_bytes`` JSON, or that JSON gzip-compressed.

The operator compresses large snapshots on the stream (once per version, for every
gateway), and may store them compressed in the Secret: 2,000 routes are ~1.7 MiB of JSON,
over a Secret's 1 MiB limit, but ~30 KiB gzipped. JSON never starts with gzip's magic
bytes, so no flag is needed to tell the two apart.
"""

from __future__ import annotations

import zlib

GZIP_MAGIC = b"\x1f\x8b"
MAX_SNAPSHOT_BYTES = 256 * 1024 * 1024
"""Largest snapshot accepted once decompressed (from the stream or the Secret)."""


def inflate(raw: bytes, limit: int) -> bytes:
    """``raw`` itself, or its gzip-decompressed content; ValueError when that is corrupt or
    larger than ``limit`` bytes (a decompression bomb is refused, not expanded)."""
    if not raw.startswith(GZIP_MAGIC):
        return raw
    decompressor = zlib.decompressobj(wbits=31)  # gzip framing
    try:
        out = decompressor.decompress(raw, limit + 1)
    except zlib.error as err:
        raise ValueError(f"snapshot is not valid gzip: {err}") from None
    if len(out) > limit or decompressor.unconsumed_tail:
        raise ValueError(f"snapshot is larger than {limit} bytes once decompressed")
    if not decompressor.eof:
        raise ValueError("snapshot gzip stream is truncated")
    return out
