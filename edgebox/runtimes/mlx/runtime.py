"""The MLX `Runtime`: an MLX-format directory (config.json + *.safetensors + tokenizer)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgebox.runtimes.base import (
    BackendError,
    Capabilities,
    EventSink,
    GenerationRequest,
    ModelInfo,
    RequestHandle,
    RuntimeStats,
)
from edgebox.runtimes.chat_template import ChatTemplate, fallback_template
from edgebox.runtimes.mlx.engine import MlxConfig, MlxEngine

_CHAT_MARKERS = ("<|im_start|>", "<|start_header_id|>", "<|assistant|>")
INSTALL = 'pip install "edgebox[mlx]"  (mlx-lm; on Linux also "mlx[cpu]")'


def _load(path: Path) -> tuple[Any, Any]:
    try:
        from mlx_lm.utils import load
    except ImportError as exc:
        raise BackendError(f"mlx-lm is not installed: {INSTALL}") from exc
    try:
        loaded: Any = load(str(path))
    except (OSError, ValueError, KeyError) as exc:
        raise BackendError(f"could not load the MLX model at {path}: {exc}") from exc
    return loaded[0], loaded[1]


class MlxRuntime:
    """mlx-lm generation behind the Runtime protocol; one request decodes at a time."""

    def __init__(self, path: str | Path, *, name: str, config: MlxConfig | None = None) -> None:
        self.name = name
        path = Path(path)
        if not (path / "config.json").is_file():
            raise BackendError(f"{path} is not an MLX model directory (no config.json)")
        model_config = json.loads((path / "config.json").read_text())
        self.model, self.tokenizer = _load(path)
        config = config or MlxConfig()
        n_ctx_train = int(model_config.get("max_position_embeddings") or config.n_ctx)
        n_ctx = min(config.n_ctx, n_ctx_train)
        self.engine = MlxEngine(self.model, self.tokenizer, n_ctx=n_ctx, config=config)
        self.template = self._template(model_config)
        architecture = str(model_config.get("model_type", "unknown"))
        size = sum(f.stat().st_size for f in path.glob("*.safetensors"))
        self.info = ModelInfo(
            path=str(path),
            architecture=architecture,
            n_ctx_train=n_ctx_train,
            n_ctx=n_ctx,
            n_params=_count_params(self.model),
            size_bytes=size,
            description=f"{architecture} (MLX)",
            has_chat_template=self.template.name == "tokenizer",
            metadata={
                "chat_template": self.template.name,
                "n_vocab": int(model_config.get("vocab_size", 0)),
                "quantization": model_config.get("quantization"),
            },
        )
        self.capabilities = Capabilities(chat=True, completions=True, logprobs=True, batching=False)

    def _template(self, model_config: Mapping[str, Any]) -> ChatTemplate:
        tok = self.tokenizer
        bos, eos = tok.bos_token or "", tok.eos_token or ""
        source = getattr(tok, "chat_template", None)
        if source:
            return ChatTemplate(source, name="tokenizer", bos_token=bos, eos_token=eos)
        vocab = tok.get_vocab()
        name, source = fallback_template(
            str(model_config.get("model_type", "")), {m: m in vocab for m in _CHAT_MARKERS}
        )
        return ChatTemplate(source, name=name, bos_token=bos, eos_token=eos)

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        bos = self.tokenizer.bos_token
        # A rendered chat prompt may already start with BOS text; never add a second one.
        add = add_special and not (bos and text.startswith(bos))
        return list(self.tokenizer.encode(text, add_special_tokens=add))

    def detokenize(self, tokens: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(tokens)))

    def render_chat(self, messages: Sequence[dict[str, Any]]) -> str:
        return self.template.render(messages)

    def submit(self, request: GenerationRequest, sink: EventSink) -> RequestHandle:
        return self.engine.submit(request, sink)

    def kv_fingerprint(self) -> Mapping[str, str] | None:
        return None

    def stats(self) -> RuntimeStats:
        return self.engine.stats()

    def close(self) -> None:
        self.engine.close()


def _count_params(model: Any) -> int:
    from mlx.utils import tree_flatten

    leaves: Any = tree_flatten(model.parameters())
    return sum(int(value.size) for _, value in leaves)
