"""Token embeddings → sentence vectors: mean over real tokens, then unit length (pure numpy)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

Int64s = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float32]


def pad_batch(
    token_ids: Sequence[Sequence[int]], type_ids: Sequence[Sequence[int]]
) -> dict[str, Int64s]:
    """Right-pad to the longest sequence in this batch (pad id 0), with the attention mask."""
    longest = max(len(ids) for ids in token_ids)
    ids = np.zeros((len(token_ids), longest), dtype=np.int64)
    types = np.zeros_like(ids)
    mask = np.zeros_like(ids)
    for row, (tokens, kinds) in enumerate(zip(token_ids, type_ids, strict=True)):
        ids[row, : len(tokens)] = tokens
        types[row, : len(kinds)] = kinds
        mask[row, : len(tokens)] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def mean_pool(hidden: Floats, mask: Int64s) -> Floats:
    """Average each row's token vectors where the mask is 1 (padding does not count)."""
    weights = mask[..., None].astype(np.float32)
    summed = (hidden * weights).sum(axis=1)
    counts = np.clip(weights.sum(axis=1), 1e-9, None)
    return (summed / counts).astype(np.float32)


def normalise(vectors: Floats) -> Floats:
    """Scale each row to unit L2 norm (a zero row stays zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.clip(norms, 1e-12, None)).astype(np.float32)
