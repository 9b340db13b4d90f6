"""Image sets with their true ImageNet labels.

Three layouts are recognised (:func:`load_image_set` picks one):

``samples``
    a flat folder of ``<wnid>_<name>.JPEG`` files, one per class (the
    1,000-image sample set): the wnid in the file name is the label.
``per-class``
    an ImageNet validation folder with one sub-folder per wnid
    (``val/n01440764/ILSVRC2012_val_00000293.JPEG``), as torchvision's
    ``ImageFolder`` expects.
``flat + ground truth``
    flat ``ILSVRC2012_val_*.JPEG`` files plus a ground-truth file: Kaggle's
    ``LOC_val_solution.csv``; a ``val.txt`` of ``<file> <class index>`` lines;
    or the official devkit's ``ILSVRC2012_validation_ground_truth.txt`` with its
    ``meta.mat`` (which maps the devkit's ILSVRC2012 ids to wnids).

The class index of a wnid is its position among the 1,000 sorted wnids (the
torchvision/timm order).
"""

from __future__ import annotations

import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import torch

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp")
SAMPLES_REPO = "https://github.com/EliSchwartz/imagenet-sample-images"
SAMPLES_COMMIT = "bc69043"
_SAMPLE_NAME = re.compile(r"^(n\d{8})_.+$")
_WNID = re.compile(r"^n\d{8}$")


class DataError(RuntimeError):
    """An image set cannot be found or read."""


#: The 1,000 ImageNet-1k wnids, one per line, sorted (timm's ``ImageNetInfo().label_names()``, the
#: torchvision order; a test checks they agree), kept here so the lean install reads labels without timm.
WNIDS_FILE = Path(__file__).with_name("imagenet_wnids.txt")


@lru_cache(maxsize=1)
def wnids() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k wnids, sorted: position = class index."""
    names = tuple(WNIDS_FILE.read_text().split())
    assert len(names) == 1000 and list(names) == sorted(names) and all(_WNID.match(n) for n in names)
    return names


@lru_cache(maxsize=1)
def wnid_to_index() -> dict[str, int]:
    return {w: i for i, w in enumerate(wnids())}


@lru_cache(maxsize=1)
def class_names() -> tuple[str, ...]:
    """Short human-readable names of the 1,000 classes (torchvision's)."""
    from torchvision.models import VGG16_Weights

    return tuple(VGG16_Weights.IMAGENET1K_V1.meta["categories"])


def class_name(index: int) -> str:
    return class_names()[int(index)]


@dataclass(frozen=True)
class ImageSet:
    """A list of image files with their class indices."""

    root: Path
    paths: tuple[Path, ...]
    labels: tuple[int, ...]
    layout: str

    def __len__(self) -> int:
        return len(self.paths)

    def ids(self) -> list[str]:
        """Stable identifiers: paths relative to the root."""
        return [str(p.relative_to(self.root)) for p in self.paths]

    def subset(self, indices) -> "ImageSet":
        idx = [int(i) for i in indices]
        return ImageSet(self.root, tuple(self.paths[i] for i in idx), tuple(self.labels[i] for i in idx), self.layout)


def default_data_dir() -> Path | None:
    """``$APEM_DATA``, else ``../shared/data/imagenet-samples`` beside the repository, else None."""
    env = os.environ.get("APEM_DATA")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent.parent / ".." / "shared" / "data" / "imagenet-samples"
    return here.resolve() if here.is_dir() else None


def resolve_data_dir(path: str | os.PathLike | None = None) -> Path:
    """The data folder: ``path``, else ``$APEM_DATA``, else the shared sample set."""
    p = Path(path) if path else default_data_dir()
    if p is None:
        raise DataError(
            "no image folder given: pass --data DIR or set APEM_DATA. To get the 1,000-image "
            "sample set on a machine with internet: python -m apem download-samples DIR"
        )
    if not p.exists():
        raise DataError(f"image folder {p} does not exist (from --data / APEM_DATA)")
    if not p.is_dir():
        raise DataError(f"{p} is not a folder")
    return p


def _is_image_name(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS


def _warn_skipped(skipped: list[str], why: str) -> None:
    if skipped:
        shown = ", ".join(skipped[:10]) + (f" and {len(skipped) - 10} more" if len(skipped) > 10 else "")
        warnings.warn(f"skipped {len(skipped)} file(s) {why}: {shown}", stacklevel=3)


def _samples_layout(root: Path) -> ImageSet:
    w2i = wnid_to_index()
    paths, labels, skipped = [], [], []
    for p in sorted(root.iterdir()):
        if p.is_dir() or p.name.startswith("."):
            continue
        m = _SAMPLE_NAME.match(p.stem)
        if not _is_image_name(p) or not m or m.group(1) not in w2i:
            skipped.append(p.name)
            continue
        paths.append(p)
        labels.append(w2i[m.group(1)])
    _warn_skipped(skipped, "that are not <wnid>_<name> images")
    return ImageSet(root, tuple(paths), tuple(labels), "samples")


def _per_class_layout(root: Path) -> ImageSet:
    w2i = wnid_to_index()
    paths, labels, skipped = [], [], []
    for d in sorted(root.iterdir()):
        if not d.is_dir():
            continue
        if d.name not in w2i:
            skipped.append(d.name + "/")
            continue
        for p in sorted(d.iterdir()):
            if p.is_file() and _is_image_name(p):
                paths.append(p)
                labels.append(w2i[d.name])
            elif not p.name.startswith("."):
                skipped.append(f"{d.name}/{p.name}")
    _warn_skipped(skipped, "that are not images in a wnid folder")
    return ImageSet(root, tuple(paths), tuple(labels), "per-class")


def _read_ground_truth(gt: Path, root: Path) -> dict[str, int]:
    """File name (no extension) -> class index, from one of the known ground-truth files."""
    w2i = wnid_to_index()
    name = gt.name
    text = gt.read_text()
    out: dict[str, int] = {}
    if name.endswith(".csv"):  # Kaggle LOC_val_solution.csv: ImageId,PredictionString
        for line in text.splitlines()[1:]:
            if not line.strip():
                continue
            image_id, pred = line.split(",", 1)
            wnid = pred.split()[0]
            if wnid not in w2i:
                raise DataError(f"{gt}: unknown wnid {wnid!r} for {image_id}")
            out[image_id.strip()] = w2i[wnid]
        return out
    if "ground_truth" in name:  # official devkit: line i = ILSVRC2012 id of image i (1-based)
        meta = gt.parent / "meta.mat"
        if not meta.is_file():
            raise DataError(
                f"{gt} holds the devkit's ILSVRC2012 ids, which only the devkit's meta.mat maps to "
                f"wnids: put meta.mat beside it ({meta})"
            )
        from scipy.io import loadmat

        synsets = loadmat(str(meta), squeeze_me=True)["synsets"]
        id_to_wnid = {int(s[0]): str(s[1]) for s in synsets if int(s[0]) <= 1000}
        for i, line in enumerate(text.split(), start=1):
            out[f"ILSVRC2012_val_{i:08d}"] = w2i[id_to_wnid[int(line)]]
        return out
    # val.txt: "<file> <index>" per line, index in sorted-wnid order
    for n, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DataError(f"{gt}:{n}: expected '<file> <class index>', got {line!r}")
        idx = int(parts[1])
        if not 0 <= idx < 1000:
            raise DataError(f"{gt}:{n}: class index {idx} is outside 0..999")
        out[Path(parts[0]).stem] = idx
    return out


GROUND_TRUTH_FILES = ("LOC_val_solution.csv", "ILSVRC2012_validation_ground_truth.txt", "val.txt", "val_labels.txt")


def _flat_layout(root: Path, gt: Path) -> ImageSet:
    table = _read_ground_truth(gt, root)
    paths, labels, missing = [], [], []
    for p in sorted(root.iterdir()):
        if not p.is_file() or not _is_image_name(p):
            continue
        if p.stem in table:
            paths.append(p)
            labels.append(table[p.stem])
        else:
            missing.append(p.name)
    _warn_skipped(missing, f"that {gt.name} gives no label for")
    return ImageSet(root, tuple(paths), tuple(labels), "flat+ground-truth")


def load_image_set(path: str | os.PathLike | None = None, ground_truth: str | os.PathLike | None = None) -> ImageSet:
    """Find the layout of ``path`` (or ``$APEM_DATA``) and list its images with labels."""
    root = resolve_data_dir(path)
    if ground_truth is not None:
        gt = Path(ground_truth)
        if not gt.is_file():
            raise DataError(f"ground-truth file {gt} does not exist")
        s = _flat_layout(root, gt)
    else:
        entries = [p for p in root.iterdir() if not p.name.startswith(".")]
        if any(p.is_dir() and _WNID.match(p.name) for p in entries):
            s = _per_class_layout(root)
        else:
            gts = [root / n for n in GROUND_TRUTH_FILES if (root / n).is_file()]
            gts += [root.parent / n for n in GROUND_TRUTH_FILES if (root.parent / n).is_file()]
            s = _flat_layout(root, gts[0]) if gts else _samples_layout(root)
    if len(s) == 0:
        raise DataError(
            f"no labelled images in {root}: expected <wnid>_<name>.JPEG files, one folder per wnid, "
            f"or flat files with a ground-truth file ({', '.join(GROUND_TRUTH_FILES)})"
        )
    return s


def image_set_identity(path: str | os.PathLike | None = None, ground_truth: str | os.PathLike | None = None) -> dict:
    """Which images a configuration reads: the resolved folder and a fingerprint of its content.

    The fingerprint is a SHA-256 over every listed image's relative path, content digest
    (:func:`file_digests`) and label, and over the ground-truth file's content. Content, not
    modification times: a folder copied afresh (new times, same bytes) is the same data and its
    results are reused, while a file rewritten with other bytes changes the fingerprint. The
    digests are cached by (path, size, modification time), so only new or touched files are read:
    hashing the 1,000 sample images (110 MB) took about 0.4 s on the 2-core machine, a folder
    that did not change costs a ``stat`` per file.
    """
    import hashlib

    s = load_image_set(path, ground_truth)
    h = hashlib.sha256()
    for p, label, digest in zip(s.paths, s.labels, file_digests(s.paths)):
        h.update(f"{p.relative_to(s.root)}\t{digest}\t{label}\n".encode())
    gt = None
    if ground_truth is not None:
        g = Path(ground_truth).resolve()
        gt = str(g)
        h.update(f"ground truth {g}\t{file_digests([g])[0]}\n".encode())
    return {"folder": str(s.root.resolve()), "ground_truth": gt, "layout": s.layout, "images": len(s),
            "fingerprint": h.hexdigest()[:16]}


_digests: dict[tuple, str] = {}  # (path, size, mtime_ns) -> sha256 hex, for this process


def _digest_cache_file() -> Path:
    root = Path(os.environ.get("APEM_RESULTS") or Path(__file__).resolve().parent.parent / "results")
    return root / "_digests.json"


def file_digests(paths) -> list[str]:
    """SHA-256 (hex) of each file's bytes, cached by (path, size, modification time).

    The cache lives in this process and in ``<results>/_digests.json`` (best effort: a read-only
    or missing results folder only costs re-reading). A file whose size or time changed is read
    again, so a digest is never older than its file's last write.
    """
    import hashlib
    import json

    paths = [Path(p) for p in paths]
    stats = [p.stat() for p in paths]
    keys = [(str(p.resolve()), st.st_size, st.st_mtime_ns) for p, st in zip(paths, stats)]
    missing = [k for k in keys if k not in _digests]
    disk_file = _digest_cache_file()
    if missing:
        try:
            disk = {tuple(json.loads(k)): v for k, v in json.loads(disk_file.read_text()).items()}
            _digests.update(disk)
        except (OSError, ValueError, TypeError):
            pass
        missing = [k for k in keys if k not in _digests]
        for k in missing:
            h = hashlib.sha256()
            with open(k[0], "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            _digests[k] = h.hexdigest()
        if missing:
            try:
                from apem.store import atomic_write_bytes

                disk_file.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(disk_file, json.dumps({json.dumps(list(k)): v for k, v in _digests.items()}).encode())
            except OSError:
                pass  # a cache only
    return [_digests[k] for k in keys]


# --------------------------------------------------------------------------- loading


def load_image(path: Path, transform) -> torch.Tensor:
    """Decode one image to RGB and apply ``transform``; a clear DataError when it cannot."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            return transform(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {e}") from e


def iter_batches(
    images: ImageSet, transform, batch_size: int = 32, workers: int | None = None
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """Yield ``(indices, x, labels)`` batches; unreadable files are skipped with a warning naming them.

    Decoding runs in a small thread pool (PIL releases the GIL while decoding).
    """
    workers = workers or min(4, os.cpu_count() or 1)

    def one(i):
        try:
            return i, load_image(images.paths[i], transform)
        except DataError as e:
            warnings.warn(f"skipped unreadable image: {e}", stacklevel=2)
            return i, None

    with ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(images), batch_size):
            got = [r for r in pool.map(one, range(start, min(start + batch_size, len(images)))) if r[1] is not None]
            if not got:
                continue
            idx = [i for i, _ in got]
            yield idx, torch.stack([t for _, t in got]), torch.tensor([images.labels[i] for i in idx])


def load_tensors(images: ImageSet, transform, batch_size: int = 64) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """All readable images of a set at once: ``(indices, x, labels)``."""
    idx, xs, ys = [], [], []
    for i, x, y in iter_batches(images, transform, batch_size):
        idx += i
        xs.append(x)
        ys.append(y)
    if not xs:
        raise DataError(f"no readable image in {images.root}")
    return idx, torch.cat(xs), torch.cat(ys)


def download_samples(dest: str | os.PathLike, commit: str = SAMPLES_COMMIT) -> Path:
    """Fetch the 1,000-image sample set (needs internet; never called by tests or the book)."""
    import io
    import urllib.request
    import zipfile

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    url = f"{SAMPLES_REPO}/archive/{commit}.zip"
    print(f"downloading {url} ...")
    with urllib.request.urlopen(url) as r:  # noqa: S310 - a fixed https URL
        blob = r.read()
    n = 0
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        for info in z.infolist():
            name = Path(info.filename).name
            if _SAMPLE_NAME.match(Path(name).stem) and _is_image_name(Path(name)):
                (dest / name).write_bytes(z.read(info))
                n += 1
    print(f"{n} images in {dest}; use --data {dest} or APEM_DATA={dest}")
    return dest
