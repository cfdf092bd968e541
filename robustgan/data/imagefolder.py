"""Reader for image folders: `root/train/<class>/*.png|jpg|jpeg` and `root/test/<class>/...`.

Classes are the sorted folder names under train/ (label = position); test/ must have the
same folders. A split's images come in a fixed order that mixes the classes
(list_files). Decoding tens of thousands of files is slow, so the decoded arrays are
cached in `root/.robustgan_cache.npz`, keyed by every file's path, size and mtime; when
root is not writable the cache is skipped. The CIFAR-10 archive in the shared data
folder holds train/ and test/ at its top: `tar xzf cifar10_jpeg.tar.gz -C <root>`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from robustgan.errors import DataError

CACHE_NAME = ".robustgan_cache.npz"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "test")
# Bump when the decoding changes, so old caches are not reused.
CACHE_VERSION = "1"
ORDER_SEED = 0  # the fixed order of a split's images (list_files)

Files = list[tuple[Path, int]]  # (image path, label) pairs


def has_layout(root) -> bool:
    """Whether `root` has the train/ and test/ folders of this layout."""
    return all((Path(root) / split).is_dir() for split in SPLITS)


def class_names(split_dir: Path) -> list[str]:
    """Sorted names of the visible sub-folders: the classes."""
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_files(split_dir: Path, classes: list[str]) -> Files:
    """(path, label) of every image under split_dir/<class>/, in a fixed order that mixes
    the classes: a permutation (seed ORDER_SEED) of the files sorted by class and name.
    Folder order would put one class first, and an evaluation on a split's first N
    images (config.table.eval_num_examples, eval.num_examples) would see that class
    alone; the datasets' own files (CIFAR-10's batches) are not in class order either."""
    files = [
        (path, label)
        for label, name in enumerate(classes)
        for path in sorted((split_dir / name).iterdir())
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    ]
    return [files[i] for i in np.random.default_rng(ORDER_SEED).permutation(len(files))]


def find_files(root) -> dict[str, Files]:
    """{'train': files, 'test': files}; DataError when the layout or the classes are off."""
    root = Path(root)
    if not has_layout(root):
        raise DataError(
            f"image folder {root} lacks train/ or test/; set config.data.dir to a directory "
            "laid out as train/<class>/*.png|jpg|jpeg and test/<class>/... (extract archives "
            "first, e.g. tar xzf cifar10_jpeg.tar.gz -C <dir>).")
    classes = class_names(root / "train")
    test_classes = class_names(root / "test")
    if not classes or classes != test_classes:
        raise DataError(
            f"image folder {root}: train/ has class folders {classes} but test/ has "
            f"{test_classes}; both need the same, non-empty set of class folders.")
    return {split: list_files(root / split, classes) for split in SPLITS}


def decode(path: Path) -> np.ndarray:
    """One image as uint8 (H, W) if greyscale, else (H, W, 3)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            grey = image.mode in ("1", "L", "LA", "I", "I;16", "F")
            return np.asarray(image.convert("L" if grey else "RGB"))
    except (OSError, UnidentifiedImageError) as err:
        raise DataError(f"cannot decode image {path}: {err}. Remove or replace it.") from err


def decode_split(files: Files, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W, C) and labels of one split; grey images join RGB ones as RGB."""
    if not files:
        raise DataError(f"the {split}/ class folders hold no .png/.jpg/.jpeg images.")
    images = [decode(path) for path, _ in files]
    rgb = any(image.ndim == 3 for image in images)
    images = [
        np.repeat(image[..., None], 3, axis=-1) if rgb and image.ndim == 2 else image
        for image in images
    ]
    shape = images[0].shape
    for image, (path, _) in zip(images, files, strict=True):
        if image.shape != shape:
            raise DataError(
                f"image {path} has shape {image.shape} but {files[0][0]} has {shape}; "
                "all images must have one size. Resize them first.")
    return np.stack(images), np.array([label for _, label in files], dtype=np.int32)


def cache_key(files: dict[str, Files]) -> str:
    """Hash of every file's name under root, label, size and mtime."""
    digest = hashlib.sha256(CACHE_VERSION.encode())
    for split, pairs in files.items():
        for path, label in pairs:
            stat = path.stat()
            name = f"{split}/{path.parent.name}/{path.name}"  # relative: root may move
            digest.update(f"{name}\t{label}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def load_cache(path: Path, key: str) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    """The cached splits if `path` holds a readable cache made for `key`, else None."""
    try:
        with np.load(path, allow_pickle=False) as cache:
            if str(cache["key"]) != key:
                return None
            return {split: (cache[f"x_{split}"], cache[f"y_{split}"]) for split in SPLITS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def save_cache(path: Path, key: str, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Write the cache atomically (temp file then rename); skip it if not writable."""
    arrays = {f"{a}_{s}": v for s, (x, y) in splits.items() for a, v in (("x", x), ("y", y))}
    tmp = None
    try:
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as f:
            tmp = f.name
            np.savez(f, key=np.array(key), **arrays)
        os.replace(tmp, path)
    except OSError as err:
        logging.warning("not caching decoded images in %s: %s", path, err)
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def read_imagefolder(root) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'train': (images, labels), 'test': (images, labels)} from an image folder."""
    files = find_files(root)
    key = cache_key(files)
    cache_path = Path(root) / CACHE_NAME
    splits = load_cache(cache_path, key)
    if splits is None:
        splits = {split: decode_split(files[split], split) for split in SPLITS}
        save_cache(cache_path, key, splits)
    return splits
