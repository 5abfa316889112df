"""Put the models a node serves into its store, by reference, so peers can fetch them."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from edgebox.models.pull import default_name
from edgebox.models.resolve import ResolvedModel
from edgebox.models.store import NAME, ModelStore, StoreError

log = logging.getLogger(__name__)


def register_resolved(store: ModelStore, models: Iterable[ResolvedModel]) -> list[str]:
    """Register each GGUF among `models` (bundled, Hugging Face cache, local files) without a
    copy; the names registered. Hashing a large file takes a while: call it off the loop."""
    names = []
    for model in models:
        if model.source == "store" or model.format != "gguf" or not model.path.is_file():
            continue
        name = model.alias if NAME.match(model.alias) else default_name(model.path.name)
        try:
            store.add_local(model.path, name, source=model.source, aliases=[model.alias])
        except (StoreError, OSError) as exc:
            log.warning("could not register %s in the model store: %s", name, exc)
            continue
        names.append(name)
    return names


def register_in_background(store: ModelStore, models: Iterable[ResolvedModel]) -> threading.Thread:
    """`register_resolved` in a daemon thread (a node serves while its files are hashed)."""
    thread = threading.Thread(
        target=register_resolved, args=(store, list(models)), name="store-register", daemon=True
    )
    thread.start()
    return thread
