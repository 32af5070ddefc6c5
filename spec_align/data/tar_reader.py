"""A lean tar reader for webdataset shards: raw samples grouped by key, truncation never silent.

Replaces webdataset's tar expansion, which accepts a truncated member as a short read and a
cut-off header as the end: a shard cut off mid-file would silently yield a sample with damaged
or missing fields. Here a cut-off or damaged shard raises `tarfile.ReadError`; the pipeline
(`spec_align.data.samples.TarSamples`) counts and skips it.
"""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import Iterator
from typing import BinaryIO

from webdataset.gopen import gopen

__all__ = ["tar_members", "tar_samples"]

_BLOCK = 512
_END_OF_ARCHIVE = bytes(_BLOCK)
# Bytes read from the stream at a time: a few syscalls per shard instead of three per member.
_CHUNK = 1 << 20


def _octal(field: bytes) -> int:
    if field[0] & 0x80:  # GNU base-256 encoding of large sizes
        return int.from_bytes(field[1:], "big")
    field = field.split(b"\0", 1)[0].strip()
    return int(field, 8) if field else 0


def _checksum_ok(header: bytes) -> bool:
    """The header's checksum: its byte sum with the checksum field read as 8 spaces.

    Summed in C: the low 16 bits of Adler-32 are 1 + (byte sum mod 65521), so a damaged
    header passes only if its sum is off by an exact multiple of 65521 (a Python `sum` over
    the 512 bytes cost more than the rest of the header parsing).
    """
    byte_sum = (zlib.adler32(header) & 0xFFFF) - 1
    expected = byte_sum - sum(header[148:156]) + 8 * 32
    return (expected - _octal(header[148:156])) % 65521 == 0


def tar_members(stream: BinaryIO) -> Iterator[tuple[str, bytes]]:
    """(name, data) of the regular files of a tar stream (ustar, GNU and pax headers).

    A lean reader instead of `tarfile`, whose per-header Python parsing costs more than
    decoding a small image: the stream is read in large chunks and parsed in memory. Unlike
    tarfile (and so webdataset), it raises on a stream that ends without the end-of-archive
    block or inside a member, so truncation is never silent.
    """
    buffer, pos = b"", 0
    long_name: str | None = None
    while True:
        if len(buffer) - pos < _BLOCK:
            buffer, pos = buffer[pos:] + stream.read(_CHUNK), 0
            if not buffer:
                raise tarfile.ReadError("truncated tar file: no end-of-archive block")
            if len(buffer) < _BLOCK:
                raise tarfile.ReadError(f"truncated tar file: header of {len(buffer)} bytes")
        header = buffer[pos : pos + _BLOCK]
        if header == _END_OF_ARCHIVE:
            return
        if not _checksum_ok(header):
            raise tarfile.ReadError("invalid tar header (checksum mismatch)")
        size = _octal(header[124:136])
        start = pos + _BLOCK
        pos = start + size + (-size % _BLOCK)  # data, then padding to the next block
        if pos > len(buffer):
            missing = pos - len(buffer)
            buffer = buffer[start:] + stream.read(max(_CHUNK, missing))
            start, pos = 0, pos - start
            if pos > len(buffer):
                raise tarfile.ReadError(f"truncated tar file: a member of {size} bytes is cut off")
        data = buffer[start : start + size]
        kind = header[156:157]
        if kind in (b"L", b"x"):
            # GNU long name, or pax header whose `path` record names the next member.
            if kind == b"L":
                long_name = data.split(b"\0", 1)[0].decode("utf-8")
            else:
                for record in data.decode("utf-8").splitlines():
                    key, _, value = record.partition(" ")[2].partition("=")
                    if key == "path":
                        long_name = value
            continue
        if kind not in (b"0", b"\0"):
            long_name = None  # directories, links, global headers carry no sample data
            continue
        name = long_name
        if name is None:
            name = header[:100].split(b"\0", 1)[0].decode("utf-8")
            if header[345] and header[257:263] == b"ustar\0":  # POSIX name prefix
                name = header[345:500].split(b"\0", 1)[0].decode("utf-8") + "/" + name
        long_name = None
        yield name, data


def tar_samples(url: str) -> Iterator[dict]:
    """Raw samples (dict of extension -> bytes, plus `__key__` and `__url__`) of one shard.

    Member names follow webdataset: "<dir/>key.ext.ext2" is field "ext.ext2" (lower case) of
    sample "<dir/>key", the key ending at the first dot of the base name.

    Raises:
        tarfile.ReadError: the shard is truncated or a header is damaged.
        ValueError: a sample holds the same field twice.
    """
    with gopen(url) as stream:
        current: dict | None = None
        for name, data in tar_members(stream):
            base = name.rfind("/") + 1
            dot = name.find(".", base)
            if dot <= base or name.startswith("__"):
                continue  # no extension, a hidden file, or webdataset metadata
            key, ext = name[:dot], name[dot + 1 :].lower()
            if current is None or current["__key__"] != key:
                if current is not None:
                    yield current
                current = {"__key__": key, "__url__": url}
            if ext in current:
                raise ValueError(f"{name}: duplicate file in sample {key!r}")
            current[ext] = data
        if current is not None:
            yield current
