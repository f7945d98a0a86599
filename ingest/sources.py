"""Sources: what to ingest. A CelebA directory, a folder of images, or a list file.

Every source yields `ImageRecord`s (path + identity + optional attributes) lazily, in a stable
order, so runs are reproducible and a resumed run walks the same sequence.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, Optional

from lookalike.ingest.images import IMAGE_SUFFIXES
from lookalike.schemas import ATTRIBUTES, CELEBA_ATTRIBUTE_NAMES, field_for_attribute
from lookalike.schemas.errors import UsageError

PARTITIONS = {"train": 0, "val": 1, "test": 2}


class SourceError(UsageError):
    """A source that cannot be read as asked: missing, of no known layout, a bad partition (exit 2)."""


@dataclass(frozen=True)
class ImageRecord:
    path: str
    identity: str = ""
    # the 40 attributes as a bit mask (bit i = schemas.ATTRIBUTES[i]), None when the source has
    # no annotation; an int keeps 200k records small in the driver
    attributes: Optional[int] = None

    def attribute_dict(self) -> Dict[str, bool]:
        mask = self.attributes or 0
        return {name: bool(mask >> i & 1) for i, name in enumerate(ATTRIBUTES)}


class Source:
    kind = "source"

    def __iter__(self) -> Iterator[ImageRecord]:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - interface
        raise NotImplementedError


def is_celeba_dir(path: Path) -> bool:
    return path.is_dir() and (
        (path / "img_align_celeba").is_dir() or (path / "img_celeba").is_dir()
    ) and ((path / "list_attr_celeba.txt").is_file() or (path / "identity_CelebA.txt").is_file())


class CelebASource(Source):
    """CelebA in its official layout. Annotation rows for absent images are fine (the official files
    list 202,599 images; a sample holds a few hundred)."""

    kind = "celeba"

    def __init__(self, root: Path, limit: Optional[int] = None, partition: Optional[str] = None,
                 variant: Optional[str] = None):
        self.root = Path(root)
        self.limit = limit
        if partition is not None and partition not in PARTITIONS:
            raise SourceError(f"--partition must be one of {', '.join(PARTITIONS)}, got '{partition}'")
        self.partition = partition
        if partition is not None and not (self.root / "list_eval_partition.txt").is_file():
            raise SourceError(f"--partition needs {self.root / 'list_eval_partition.txt'}, which is missing")
        # The in-the-wild images are what users' photos look like; the aligned crops are the
        # common benchmark set. Prefer in-the-wild when both are present unless told otherwise.
        candidates = {"wild": "img_celeba", "aligned": "img_align_celeba"}
        if variant is not None:
            if variant not in candidates:
                raise SourceError(f"--celeba-images must be wild or aligned, got '{variant}'")
            self.images = self.root / candidates[variant]
        else:
            found = next((self.root / d for d in candidates.values() if (self.root / d).is_dir()), None)
            self.images = found if found is not None else self.root / "img_celeba"
        if not self.images.is_dir():
            raise SourceError(f"{self.root}: no img_celeba/ or img_align_celeba/ folder")
        self._identities: Optional[Dict[str, str]] = None
        self._attrs: Optional[Dict[str, int]] = None

    def describe(self) -> str:
        part = f", partition {self.partition}" if self.partition else ""
        return f"CelebA {self.images}{part}"

    def _load_identities(self) -> Dict[str, str]:
        out: Dict[str, str] = {}
        f = self.root / "identity_CelebA.txt"
        if f.is_file():
            with open(f, encoding="utf-8") as fh:
                for line in fh:
                    parts = line.split()
                    if len(parts) == 2 and parts[1].isdigit():
                        out[parts[0]] = parts[1]
        return out

    def _load_attributes(self) -> Dict[str, int]:
        out: Dict[str, int] = {}
        f = self.root / "list_attr_celeba.txt"
        if not f.is_file():
            return out
        with open(f, encoding="utf-8") as fh:
            fh.readline()  # row count
            names = fh.readline().split()
            if names != list(CELEBA_ATTRIBUTE_NAMES):
                unknown = set(names) ^ set(CELEBA_ATTRIBUTE_NAMES)
                raise SourceError(f"{f}: unexpected attribute header (differs in {sorted(unknown)[:5]})")
            order = [ATTRIBUTES.index(field_for_attribute(n)) for n in names]
            for line in fh:
                parts = line.split()
                if len(parts) != len(names) + 1:
                    continue
                out[parts[0]] = sum(1 << pos for pos, v in zip(order, parts[1:]) if v == "1")
        return out

    def _partition_files(self) -> Optional[set]:
        if self.partition is None:
            return None
        f = self.root / "list_eval_partition.txt"
        if not f.is_file():
            raise SourceError(f"--partition needs {f}, which is missing")
        want = str(PARTITIONS[self.partition])
        with open(f, encoding="utf-8") as fh:
            return {p[0] for p in (line.split() for line in fh) if len(p) == 2 and p[1] == want}

    def __iter__(self) -> Iterator[ImageRecord]:
        if self._identities is None or self._attrs is None:
            self._identities = self._load_identities()
            self._attrs = self._load_attributes()
        identities, attrs = self._identities, self._attrs
        keep = self._partition_files()
        n = 0
        for name in sorted(os.listdir(self.images)):
            if self.limit is not None and n >= self.limit:
                return
            if Path(name).suffix.lower() not in IMAGE_SUFFIXES or (keep is not None and name not in keep):
                continue
            n += 1
            yield ImageRecord(str(self.images / name), identities.get(name, ""), attrs.get(name))


class FolderSource(Source):
    """Any folder of images; the folder an image sits in names its identity (nested folders are
    walked; images directly in the root have no identity). Symlinked folders are not followed, so
    a symlink loop cannot trap the walk."""

    kind = "folder"

    def __init__(self, root: Path, limit: Optional[int] = None):
        self.root = Path(root)
        self.limit = limit

    def describe(self) -> str:
        return f"folder {self.root}"

    def __iter__(self) -> Iterator[ImageRecord]:
        n = 0
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
            dirnames.sort()
            rel = Path(dirpath).relative_to(self.root)
            identity = rel.name if rel.parts else ""
            for name in sorted(filenames):
                if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                if self.limit is not None and n >= self.limit:
                    return
                n += 1
                yield ImageRecord(os.path.join(dirpath, name), identity, None)


class ListSource(Source):
    """A text file: one image path per line (relative paths are relative to the file), optionally
    followed by a tab and an identity label. Blank lines and lines starting with # are skipped."""

    kind = "list"

    def __init__(self, listfile: Path, limit: Optional[int] = None):
        self.listfile = Path(listfile)
        self.limit = limit

    def describe(self) -> str:
        return f"list {self.listfile}"

    def __iter__(self) -> Iterator[ImageRecord]:
        base = self.listfile.parent
        n = 0
        with open(self.listfile, encoding="utf-8") as fh:
            for line in fh:
                line = line.rstrip("\n")
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                if self.limit is not None and n >= self.limit:
                    return
                path, _, identity = line.partition("\t")
                p = Path(path.strip()).expanduser()
                n += 1
                yield ImageRecord(str(p if p.is_absolute() else base / p), identity.strip(), None)


def open_source(source: str, limit: Optional[int] = None, partition: Optional[str] = None,
                celeba_images: Optional[str] = None) -> Source:
    p = Path(source).expanduser()
    if not p.exists():
        raise SourceError(f"{source}: no such file or folder")
    if is_celeba_dir(p):
        return CelebASource(p, limit=limit, partition=partition, variant=celeba_images)
    if partition is not None:
        raise SourceError(f"--partition applies to CelebA directories only; {source} is not one")
    if p.is_dir():
        return FolderSource(p, limit=limit)
    if p.suffix.lower() in IMAGE_SUFFIXES:
        raise SourceError(f"{source}: is an image; give its folder, or a text file listing images")
    return ListSource(p, limit=limit)

