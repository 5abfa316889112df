"""A whole Hugging Face repo as one model: `edgebox pull ORG/REPO` for an MLX model directory.

MLX models (mlx-community's) are a folder, not one file: `config.json`, the weights as
`*.safetensors` (with `model.safetensors.index.json` when sharded) and the tokenizer's
files. The repo's file list comes from the hub's tree API (`/api/models/{repo}/tree/main`,
top level only); the files kept are those an MLX load reads, each then asked for its size and
LFS sha256 like any Hugging Face file. A repo without `config.json` and a `.safetensors`
file is not an MLX model (a GGUF repo: name the file, `ORG/REPO:FILE.gguf`).
"""

from __future__ import annotations

import json
import os
import re
from urllib.parse import urlsplit

import httpx

from edgebox.models.remote import (
    PullError,
    RemoteFile,
    gated_error,
    hf_file,
    hf_headers,
    network_error,
)

HF_REPO = re.compile(r"^(?:hf://)?(?P<repo>[\w.-]+/[\w.-]+)/?$")
MLX_FILES = re.compile(
    r"^(config\.json|[\w.-]+\.safetensors|model\.safetensors\.index\.json|tokenizer\.json|"
    r"tokenizer_config\.json|special_tokens_map\.json|tokenizer\.model|added_tokens\.json|"
    r"generation_config\.json|chat_template\.(json|jinja)|vocab\.json|merges\.txt)$"
)
MAX_REPO_FILES = 512  # entries read from the tree; a model has tens
MAX_TREE_BYTES = 4 << 20


def repo_listing(client: httpx.Client, repo: str) -> list[str]:
    """The top-level file names of `repo` (bounded); PullError for 404, gated or offline."""
    endpoint = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    url = f"{endpoint}/api/models/{repo}/tree/main"
    try:
        r = client.get(url, headers=dict(hf_headers()))
    except httpx.HTTPError as exc:
        raise network_error(urlsplit(endpoint).netloc, exc) from None
    if r.status_code in (401, 403):
        raise gated_error(repo)
    if r.status_code == 404:
        raise PullError(f"not found (404): no Hugging Face repo {repo}")
    if r.status_code >= 400 or len(r.content) > MAX_TREE_BYTES:
        raise PullError(f"{repo}: the hub's file list answered HTTP {r.status_code}")
    try:
        entries = json.loads(r.content)
    except ValueError:
        raise PullError(f"{repo}: the hub's file list is not JSON") from None
    if not isinstance(entries, list):
        raise PullError(f"{repo}: the hub's file list is not a list")
    return [
        str(e["path"])
        for e in entries[:MAX_REPO_FILES]
        if isinstance(e, dict) and e.get("type") == "file" and isinstance(e.get("path"), str)
    ]


def mlx_repo_files(client: httpx.Client, repo: str) -> list[RemoteFile]:
    """The files of an MLX model repo, each with its size and digest from the hub."""
    names = sorted(n for n in repo_listing(client, repo) if MLX_FILES.match(n))
    if "config.json" not in names or not any(n.endswith(".safetensors") for n in names):
        raise PullError(
            f"{repo} is not an MLX model (no config.json with *.safetensors); for a GGUF repo "
            "name the file: ORG/REPO:FILE.gguf"
        )
    return [hf_file(client, repo, name) for name in names]
