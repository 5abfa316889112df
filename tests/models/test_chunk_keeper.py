"""Verified chunks are written by a thread of their own (`_Keeper`): every chunk handed over is
on disk and recorded (resume) once it closes, the whole-file hash sees them in order, and a
write that fails surfaces as the download's error rather than vanishing on that thread."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from edgebox.models._partial import InOrderHash, Layout, Partial
from edgebox.models.transfer import _Keeper

CHUNK = 64 << 10


def _chunks(n: int) -> list[bytes]:
    return [os.urandom(CHUNK) for _ in range(n)]


def test_every_chunk_handed_over_is_written_recorded_and_hashed(tmp_path: Path) -> None:
    data = _chunks(6)
    digests = [hashlib.sha256(c).hexdigest() for c in data]
    partial = Partial(tmp_path / "x.part", Layout(6 * CHUNK, CHUNK, digests))
    whole = InOrderHash(partial)
    keeper = _Keeper(partial, whole, depth=2)
    for i in (1, 0, 3, 2, 5, 4):  # as workers finish them: out of order
        keeper.put(i, bytearray(data[i]), digests[i])
    keeper.close()
    assert whole.result() == hashlib.sha256(b"".join(data)).hexdigest()
    assert (tmp_path / "x.part").read_bytes() == b"".join(data)
    again = Partial(tmp_path / "x.part", partial.layout)  # a resumed fetch sees them all
    assert again.done == dict(enumerate(digests))
    for p in (partial, again):
        p.close()
    whole.stop()


def test_a_failed_write_is_the_downloads_error(tmp_path: Path) -> None:
    data = _chunks(3)
    digests = [hashlib.sha256(c).hexdigest() for c in data]
    partial = Partial(tmp_path / "y.part", Layout(3 * CHUNK, CHUNK, digests))
    whole = InOrderHash(partial)
    keeper = _Keeper(partial, whole, depth=1)
    writable = partial.fd
    partial.fd = os.open(partial.path, os.O_RDONLY)  # the disk refuses writes (EBADF)
    keeper.put(0, bytearray(data[0]), digests[0])
    with pytest.raises(OSError):
        keeper.close()
    with pytest.raises(OSError):  # a worker handing over another chunk hears it too
        keeper.put(1, bytearray(data[1]), digests[1])
    assert partial.done == {}  # nothing recorded as done that was not written
    whole.stop()
    partial.close()
    os.close(writable)
