"""`data download` offline: archives built here, the fetch replaced, checksums verified."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest

from training.data import download as dl


def _tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _patch(
    monkeypatch: pytest.MonkeyPatch, name: str, archive: Path, algorithm: str = "sha256"
) -> None:
    digest = hashlib.new(algorithm, archive.read_bytes()).hexdigest()
    src = dataclasses.replace(dl.SOURCES[name], digest=digest, algorithm=algorithm)
    monkeypatch.setitem(dl.SOURCES, name, src)


def _copy_from(archive: Path):  # type: ignore[no-untyped-def]
    calls: list[str] = []

    def fetch(url: str, dest: Path) -> None:
        calls.append(url)
        shutil.copyfile(archive, dest)

    fetch.calls = calls  # type: ignore[attr-defined]
    return fetch


def test_imdb_unpacks_into_loader_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from training.data.sentiment import read_examples

    archive = _tar(
        tmp_path / "a.tar.gz",
        {
            "aclImdb/train/pos/0_9.txt": b"great",
            "aclImdb/train/neg/0_1.txt": b"bad",
            "aclImdb/test/pos/0_8.txt": b"fine",
            "aclImdb/test/neg/0_2.txt": b"poor",
        },
    )
    _patch(monkeypatch, "imdb", archive)
    fetch = _copy_from(archive)
    dest = dl.download("imdb", tmp_path / "data", fetch=fetch, log=lambda s: None)
    assert fetch.calls == [dl.SOURCES["imdb"].url]
    rows = read_examples("imdb", dest / "aclImdb", split="test")
    assert [(e.text, e.label) for e in rows] == [("poor", "negative"), ("fine", "positive")]


def test_sst2_zip_and_md5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from training.data.sentiment import read_examples

    archive = tmp_path / "SST-2.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("SST-2/train.tsv", "sentence\tlabel\ngood . \t1\n")
        z.writestr("SST-2/dev.tsv", "sentence\tlabel\nbad . \t0\n")
    _patch(monkeypatch, "sst2", archive, "md5")
    dest = dl.download("sst2", tmp_path / "d", fetch=_copy_from(archive), log=lambda s: None)
    assert read_examples("sst2", dest / "SST-2", split="dev")[0].label == "negative"


def test_plain_file_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "input.txt"
    src.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n")
    _patch(monkeypatch, "tinyshakespeare", src)
    dest = dl.download("tinyshakespeare", tmp_path / "d", fetch=_copy_from(src), log=lambda s: None)
    assert (dest / "input.txt").read_text() == src.read_text()


def test_checksum_mismatch_unpacks_nothing(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "a.tar.gz", {"aclImdb/train/pos/0_9.txt": b"x"})
    with pytest.raises(dl.DownloadError, match=r"sha256 .* expected c40f74a1"):
        dl.download("imdb", tmp_path / "d", fetch=_copy_from(archive), log=lambda s: None)
    assert not (tmp_path / "d").exists()


def test_archive_escaping_the_target_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = _tar(tmp_path / "evil.tar.gz", {"../escape.txt": b"x"})
    _patch(monkeypatch, "imdb", archive)
    with pytest.raises(dl.DownloadError, match="outside"):
        dl.download("imdb", tmp_path / "d", fetch=_copy_from(archive), log=lambda s: None)
    assert not (tmp_path / "escape.txt").exists()


def test_unknown_dataset() -> None:
    with pytest.raises(dl.DownloadError, match="unknown dataset"):
        dl.download("mnist", Path("/nonexistent"), fetch=lambda u, d: None, log=lambda s: None)


def test_published_checksums_are_well_formed() -> None:
    for s in dl.SOURCES.values():
        assert len(s.digest) == {"sha256": 64, "md5": 32}[s.algorithm]
        assert s.url.startswith("https://")
