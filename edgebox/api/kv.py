"""The KV snapshot wire constants a node and a router share (the format itself, its reader and
the store of pending uploads are the node's: `edgebox.node.kv_transfer`).

A snapshot streams as `MAGIC + JSON header + b"\\n" + raw sequence state` with content type
`MEDIA_TYPE`; a generation request names an uploaded snapshot in the `KV_HEADER` header.
"""

from __future__ import annotations

MAGIC = b"EBKV1\n"
MEDIA_TYPE = "application/x-edgebox-kv"
KV_HEADER = "x-edgebox-kv"
