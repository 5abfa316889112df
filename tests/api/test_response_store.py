"""The stored-responses database: ownership, retention, persistence across reopening."""

from __future__ import annotations

from pathlib import Path

from edgebox.api.response_store import LOCAL_OWNER, ResponseStore, owner_of


def response(rid: str) -> dict[str, object]:
    return {"id": rid, "object": "response", "output": [{"type": "message", "id": "m"}]}


def test_a_key_reads_and_deletes_only_its_own_responses(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path / "r.sqlite")
    alice, bob = owner_of("key-a"), owner_of("key-b")
    assert alice != bob and "key-a" not in alice and owner_of(None) == LOCAL_OWNER
    store.put(alice, response("resp_1"), [{"type": "message", "id": "i"}])
    assert store.get(bob, "resp_1") is None and not store.delete(bob, "resp_1")
    stored = store.get(alice, "resp_1")
    assert stored is not None and [i["id"] for i in stored.conversation()] == ["i", "m"]
    assert store.delete(alice, "resp_1") and store.get(alice, "resp_1") is None


def test_responses_survive_reopening_and_the_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    ResponseStore(path).put(LOCAL_OWNER, response("resp_1"), [])
    assert (path.stat().st_mode & 0o777) == 0o600
    reopened = ResponseStore(path)
    assert reopened.get(LOCAL_OWNER, "resp_1") is not None


def test_only_the_newest_are_kept_and_old_ones_expire() -> None:
    now = [1000.0]
    store = ResponseStore(keep=2, max_age_s=60, clock=lambda: now[0])
    for i in range(3):
        now[0] += 1
        store.put(LOCAL_OWNER, response(f"resp_{i}"), [])
    assert store.count() == 2 and store.get(LOCAL_OWNER, "resp_0") is None
    now[0] += 59
    assert store.get(LOCAL_OWNER, "resp_2") is not None
    now[0] += 2
    assert store.get(LOCAL_OWNER, "resp_2") is None  # past its age, even before pruning


def test_one_key_flooding_the_store_evicts_its_own_responses_not_anothers(tmp_path: Path) -> None:
    """A key that stores thousands of responses (or huge ones: echoed hosted tools, metadata)
    fills its own share: another key's conversations stay, and the file stays bounded."""
    store = ResponseStore(tmp_path / "r.sqlite", keep=6, max_bytes=400_000)
    alice, bob = owner_of("key-a"), owner_of("key-b")
    for i in range(2):
        store.put(alice, response(f"resp_a{i}"), [{"type": "message", "id": "i"}])
    for i in range(40):
        store.put(bob, response(f"resp_b{i}"), [])
    assert store.count() <= 6
    assert all(store.get(alice, f"resp_a{i}") is not None for i in range(2))
    assert store.get(bob, "resp_b39") is not None and store.get(bob, "resp_b0") is None
    padding = [{"type": "message", "id": "p", "content": "x" * 100_000}]
    for i in range(20):
        store.put(bob, response(f"resp_big{i}"), padding)
    assert store.stored_bytes() <= 400_000
    assert all(store.get(alice, f"resp_a{i}") is not None for i in range(2))
    assert store.get(bob, "resp_big19") is not None
    reopened = ResponseStore(tmp_path / "r.sqlite", keep=6, max_bytes=400_000)
    assert reopened.stored_bytes() == store.stored_bytes()


def test_a_database_from_before_the_byte_bound_is_upgraded(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE responses (id TEXT PRIMARY KEY, owner TEXT NOT NULL, "
            "created_at REAL NOT NULL, response TEXT NOT NULL, items TEXT NOT NULL)"
        )
        db.execute("INSERT INTO responses VALUES ('resp_old', 'local', 9e9, '{\"id\":1}', '[]')")
    store = ResponseStore(path)
    assert store.get(LOCAL_OWNER, "resp_old") is not None and store.stored_bytes() == 10
    store.put(LOCAL_OWNER, response("resp_new"), [])
    assert store.count() == 2
