"""`rnnserve data download imdb|sst2|tinyshakespeare --to DIR`: fetch, verify, unpack.

Each source is the public original; the archive's checksum is verified before anything is
unpacked, and members are extracted only inside the target folder (no absolute paths, no `..`).

Layouts written (what the loaders read):
    DIR/imdb/aclImdb/{train,test}/{pos,neg}/*.txt      data.dataset = "imdb", path = DIR/imdb/aclImdb
    DIR/sst2/SST-2/{train,dev,test}.tsv                data.dataset = "sst2", path = DIR/sst2/SST-2
    DIR/tinyshakespeare/input.txt                      data.dataset = "text"
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Source:
    name: str
    url: str
    digest: str  # hex digest of the downloaded file
    algorithm: str  # "sha256" (or "md5" where only that is published)
    kind: str  # "tar.gz" | "zip" | "file"
    subdir: str  # folder under --to that receives the unpacked data
    filename: str  # what a plain "file" source is saved as


SOURCES: dict[str, Source] = {
    # Maas et al. 2011; the checksum published by many loaders of the same file.
    "imdb": Source(
        "imdb",
        "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",
        "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe",
        "sha256",
        "tar.gz",
        "imdb",
        "aclImdb_v1.tar.gz",
    ),
    # GLUE's SST-2 zip. Only an MD5 is published for it (torchtext's SST2 loader); we verify that
    # and print the SHA-256 we computed.
    "sst2": Source(
        "sst2",
        "https://dl.fbaipublicfiles.com/glue/data/SST-2.zip",
        "9f81648d4199384278b86e315dac217c",
        "md5",
        "zip",
        "sst2",
        "SST-2.zip",
    ),
    # karpathy/char-rnn's file, byte for byte (sha256 from ../shared/datasets/README.md).
    "tinyshakespeare": Source(
        "tinyshakespeare",
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        "sha256",
        "file",
        "tinyshakespeare",
        "input.txt",
    ),
}


class DownloadError(RuntimeError):
    pass


def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_url(url: str, dest: Path) -> None:
    """Stream `url` to `dest` (the tests replace this function; they never touch the network)."""
    with urllib.request.urlopen(url, timeout=60) as r, dest.open("wb") as f:
        shutil.copyfileobj(r, f, 1 << 20)


def verify(path: Path, source: Source) -> None:
    actual = file_digest(path, source.algorithm)
    if actual != source.digest:
        raise DownloadError(
            f"{source.name}: {source.algorithm} of {path.name} is {actual}, expected "
            f"{source.digest}; the download is corrupt or the file changed upstream"
        )


def _safe_target(root: Path, member: str) -> Path:
    target = (root / member).resolve()
    if not target.is_relative_to(root.resolve()):
        raise DownloadError(f"archive member {member!r} would be written outside {root}")
    return target


def unpack(archive: Path, source: Source, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    if source.kind == "file":
        shutil.copyfile(archive, dest / source.filename)
    elif source.kind == "tar.gz":
        with tarfile.open(archive, "r:gz") as tar:
            members = [m for m in tar.getmembers() if m.isfile() or m.isdir()]  # no links/devices
            for m in members:
                _safe_target(dest, m.name)
            tar.extractall(dest, members=members, filter="data")
    elif source.kind == "zip":
        with zipfile.ZipFile(archive) as z:
            for name in z.namelist():
                _safe_target(dest, name)
            z.extractall(dest)
    else:
        raise DownloadError(f"unknown archive kind {source.kind!r}")


def download(
    name: str,
    to: Path,
    *,
    fetch: Callable[[str, Path], None] | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Fetch dataset `name` into `to/<subdir>` and return that folder."""
    if name not in SOURCES:
        raise DownloadError(f"unknown dataset {name!r} (choose from {', '.join(SOURCES)})")
    source = SOURCES[name]
    fetch = fetch or fetch_url
    dest = to / source.subdir
    with tempfile.TemporaryDirectory(prefix="rnnserve-dl-") as tmp:
        archive = Path(tmp) / source.filename
        log(f"fetching {source.url}")
        fetch(source.url, archive)
        verify(archive, source)
        log(
            f"{source.algorithm} ok ({source.digest[:16]}…); sha256 {file_digest(archive, 'sha256')}"
        )
        unpack(archive, source, dest)
    log(f"unpacked into {dest}")
    return dest
