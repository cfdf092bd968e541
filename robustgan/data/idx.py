"""Reader for MNIST-format (IDX) files, the format MNIST and Fashion-MNIST ship in.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of
dimensions), one big-endian uint32 per dimension, then the values. Files may be gzipped.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from robustgan.errors import DataError

# IDX type code -> big-endian numpy dtype.
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

# (split, images or labels) -> canonical file name and the number of dimensions it holds.
IDX_FILES = {
    ("train", "images"): ("train-images-idx3-ubyte", 3),
    ("train", "labels"): ("train-labels-idx1-ubyte", 1),
    ("test", "images"): ("t10k-images-idx3-ubyte", 3),
    ("test", "labels"): ("t10k-labels-idx1-ubyte", 1),
}


def _candidates(name: str) -> list[str]:
    """Accepted spellings of a canonical name: plain or .gz, '-idx' or '.idx'."""
    dotted = name.replace("-idx", ".idx")
    return [name, name + ".gz", dotted, dotted + ".gz"]


def _locate(root: Path) -> dict[tuple[str, str], Path | None]:
    """The first existing spelling of each of the four files, or None."""
    return {
        key: next((root / c for c in _candidates(name) if (root / c).is_file()), None)
        for key, (name, _) in IDX_FILES.items()
    }


def has_idx_files(root) -> bool:
    """Whether `root` holds all four IDX files."""
    return all(path is not None for path in _locate(Path(root)).values())


def find_idx_files(root) -> dict[tuple[str, str], Path]:
    """The four IDX files in `root`; DataError listing what is expected if any is missing."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"IDX data directory {root} does not exist; set config.data.dir to a directory "
            f"holding {', '.join(name for name, _ in IDX_FILES.values())} (each may be .gz).")
    found = _locate(root)
    missing = [IDX_FILES[key][0] for key, path in found.items() if path is None]
    if missing:
        raise DataError(
            f"IDX data directory {root} lacks {', '.join(missing)} (plain or .gz); it needs "
            f"all of {', '.join(name for name, _ in IDX_FILES.values())}.")
    return found


def parse_idx(data: bytes, what: str) -> np.ndarray:
    """The array stored in the bytes of one IDX file; `what` names it in errors."""
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in IDX_DTYPES or data[3] == 0:
        raise DataError(
            f"{what} is not an IDX file (magic number {data[:4].hex() or 'missing'}; expected "
            "00 00, a type code, a dimension count). Replace it with an intact copy.")
    ndim, header = data[3], 4 + 4 * data[3]
    if len(data) < header:
        raise DataError(f"{what} is truncated inside its header; replace it with an intact copy.")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = np.dtype(IDX_DTYPES[data[2]])
    expected = math.prod(dims) * dtype.itemsize
    if len(data) - header != expected:
        raise DataError(
            f"{what}: header says shape {dims} ({expected} bytes of data) but the file has "
            f"{len(data) - header}; it is truncated or corrupt. Replace it with an intact copy.")
    return np.frombuffer(data, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx_file(path: Path) -> np.ndarray:
    """The array in one IDX file, gunzipped first if its name ends in .gz."""
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"cannot read {path}: {err}. Replace it with an intact copy.") from err
    return parse_idx(data, str(path))


def read_idx_dir(root) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'train': (images, labels), 'test': (images, labels)} from a directory of IDX files."""
    arrays = {}
    for key, path in find_idx_files(root).items():
        array = read_idx_file(path)
        ndim = IDX_FILES[key][1]
        if array.ndim != ndim:
            raise DataError(
                f"{path} holds a {array.ndim}-D array of shape {array.shape}; expected "
                f"{ndim}-D {key[1]}. Check that the file names match their contents.")
        arrays[key] = array
    return {s: (arrays[s, "images"], arrays[s, "labels"]) for s in ("train", "test")}
