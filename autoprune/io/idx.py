"""The IDX file format (Fashion-MNIST, MNIST): a checked reader with a per-process cache of decoded files."""

from __future__ import annotations

import functools
import gzip
import os
import pathlib
import zlib

import numpy as np
import torch

from autoprune.errors import DataError

# IDX type codes (third byte of the magic number) -> big-endian numpy dtype
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike[str], *, magic: int | None = None) -> torch.Tensor:
    """Read an IDX file (gzip-compressed or raw) into a tensor shaped by its header.

    The header, the element type and the payload length are checked; with ``magic`` the file must also
    carry exactly that magic number (``0x00000803`` for ubyte images, ``0x00000801`` for ubyte labels).
    Decoded files are cached per process by resolved path and modification time: do not modify the
    returned tensor in place.
    """
    p = pathlib.Path(path)
    try:
        st = p.stat()
    except OSError as exc:
        raise DataError(f"IDX file {p} cannot be read ({exc.strerror or exc}); check the path") from None
    found, tensor = _decode_idx(str(p.resolve()), st.st_mtime_ns, st.st_size)
    if magic is not None and found != magic:
        raise DataError(
            f"IDX file {p} has magic number 0x{found:08X}, expected 0x{magic:08X}; "
            "the file is of the wrong kind (images vs labels) or mislabelled"
        )
    return tensor


@functools.lru_cache(maxsize=8)
def _decode_idx(resolved: str, mtime_ns: int, size: int) -> tuple[int, torch.Tensor]:
    # mtime_ns and size are only part of the cache key: a rewritten file is decoded again
    path = pathlib.Path(resolved)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"IDX file {path} cannot be read ({exc.strerror or exc}); check its permissions") from None
    if data[:2] == b"\x1f\x8b":  # gzip magic; also accepts a compressed file without the .gz suffix
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(
                f"IDX file {path} is a corrupt or truncated gzip file ({exc}); replace it with an intact copy"
            ) from None
    if len(data) < 4:
        raise DataError(f"IDX file {path} is truncated: {len(data)} bytes, shorter than the 4-byte magic number")
    magic = int.from_bytes(data[:4], "big")
    code, ndim = data[2], data[3]
    if data[0] != 0 or data[1] != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise DataError(
            f"IDX file {path} has an invalid magic number 0x{magic:08X} (expected 0x0000TTDD with type TT in "
            f"{', '.join(f'{c:02X}' for c in _IDX_DTYPES)} and DD >= 1 dimensions); it is not an IDX file"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"IDX file {path} is truncated inside its header ({len(data)} of {header} bytes)")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header
    if actual != expected:
        what = "truncated" if actual < expected else "longer than its header says"
        raise DataError(
            f"IDX file {path} is {what}: header dims {'x'.join(map(str, dims))} need {expected} payload bytes, "
            f"found {actual}; replace it with an intact copy"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    # astype copies into native byte order and a writable buffer, which torch.from_numpy needs
    return magic, torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))
