"""What :meth:`pairkit.filestore.FileStorage.read` gives (the keystore's file and its lock
records' file, runtime/lockouts.py): the file's first ``limit + 1`` bytes at most, whatever its
size against the pieces it is read in (issue 13, session 13: read without a buffer of the whole
limit), so that a caller sees a file longer than its limit and never a part of one within it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pairkit.filestore import FileStorage
from pairkit.pairing.errors import KeystoreError

LIMIT = 256 * 1024
SIZES = (0, 1, 33, 4095, 4096, 4097, 65535, 65536, 65537, 3 * 65536 + 7, LIMIT, LIMIT + 1,
         LIMIT + 2, LIMIT + 70_000)


@pytest.mark.parametrize("size", SIZES)
def test_a_read_gives_the_files_first_bytes_up_to_one_past_the_limit(tmp_path: Path,
                                                                      size: int) -> None:
    path = tmp_path / "keystore.pk.locks"
    data = os.urandom(size)
    path.write_bytes(data)
    assert FileStorage(path).read(LIMIT) == data[:LIMIT + 1]


@pytest.mark.parametrize("limit", (0, 15, 65536, 65537))
def test_a_read_stops_one_past_any_limit(tmp_path: Path, limit: int) -> None:
    path = tmp_path / "keystore.pk"
    data = os.urandom(3 * 65536)
    path.write_bytes(data)
    assert FileStorage(path).read(limit) == data[:limit + 1]


def test_no_file_reads_as_none_and_one_that_cannot_be_read_raises(tmp_path: Path) -> None:
    assert FileStorage(tmp_path / "none").read(LIMIT) is None
    (tmp_path / "dir").mkdir()
    with pytest.raises(KeystoreError, match="could not read"):
        FileStorage(tmp_path / "dir").read(LIMIT)
