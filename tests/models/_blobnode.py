"""A node process for the transfer tests: the node's real app (blob routes, admin pulls, key
scopes) with a model store and no runtime loaded (no inference is asked of it).

    python _blobnode.py STORE HOST PORT API_KEY ADMIN_KEY [MODEL_PATH [corrupt]]

BLOBNODE_ALLOW_PRIVATE=1 in the environment: URL pulls may reach private addresses (the
tests' "internet" is a server on the LAN or loopback). BLOBNODE_PULL_KEY: the node's pull key.
BLOBNODE_HUB and BLOBNODE_HUB_KEY: it takes blob grants from that hub (fingerprint, public key)
for the node id "blobnode". BLOBNODE_SEND_STALL_S: how long a blob send may stall.
MODEL_PATH is registered as `smollm2-135m` (alias HF_ALIAS); `corrupt` copies it and flips bytes in its third
chunk, keeping the true digests in the manifest: a peer that lies.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import uvicorn

from edgebox.api.auth import NodeKeys
from edgebox.api.blob_grant import GrantVerifier
from edgebox.models.store import DEFAULT_CHUNK_SIZE, ModelStore
from edgebox.node.app import create_app
from edgebox.node.state import NodeState

HF_ALIAS = "example/smol-GGUF:SmolLM2-135M-Instruct.Q4_1.gguf"  # as if pulled from there


def main() -> None:
    root, host, port, api_key, admin_key, *model = sys.argv[1:]
    store = ModelStore(root)
    if model:
        manifest = store.add_local(
            Path(model[0]), "smollm2-135m", link=len(model) == 1, aliases=[HF_ALIAS]
        )
        if model[1:] == ["corrupt"]:
            blob = store.blob_path(manifest.files[0].sha256)
            with blob.open("r+b") as f:
                f.seek(2 * DEFAULT_CHUNK_SIZE + 4096)
                f.write(b"\x00lie" * 64)
    state = NodeState({})
    state.store = store
    state.peer_key = api_key
    state.pull_private = bool(os.environ.get("BLOBNODE_ALLOW_PRIVATE"))  # the LAN "internet"
    keys = NodeKeys(
        api_key=api_key, admin_key=admin_key, pull_key=os.environ.get("BLOBNODE_PULL_KEY")
    )
    if os.environ.get("BLOBNODE_HUB_KEY"):  # takes blob grants from that hub, as node "blobnode"
        hub = os.environ["BLOBNODE_HUB"]
        grants = GrantVerifier(hub, "blobnode", os.environ["BLOBNODE_HUB_KEY"])
        keys = dataclasses.replace(keys, blob_grants=grants)
    if os.environ.get("BLOBNODE_SEND_STALL_S"):
        from edgebox.node import blobs_api

        blobs_api.BlobResponse.send_stall_s = float(os.environ["BLOBNODE_SEND_STALL_S"])
    app = create_app(state, keys=keys)
    uvicorn.run(app, host=host, port=int(port), log_level="warning")


if __name__ == "__main__":
    main()
