"""Start-up step one: resolve the models `edgebox serve` names (fetching with a progress bar)
and open a runtime for each."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

from edgebox.agent.config import AgentError, NodeConfig

if TYPE_CHECKING:
    from edgebox.models import ResolvedModel
    from edgebox.runtimes.base import EmbeddingRuntime, Runtime
    from edgebox.runtimes.open import RuntimeOptions


@dataclass
class Runtimes:
    """The opened models, chat and embeddings apart, with the fast path each took."""

    chat: dict[str, Runtime] = field(default_factory=dict)
    embedders: dict[str, EmbeddingRuntime] = field(default_factory=dict)
    fast_paths: dict[str, str] = field(default_factory=dict)

    def close(self) -> None:
        for runtime in self.chat.values():
            runtime.close()
        for embedder in self.embedders.values():
            embedder.close()


def _progress_factory(progress: Progress) -> Callable[[str, int], Callable[[int], None]]:
    def start(label: str, total: int) -> Callable[[int], None]:
        task = progress.add_task(label, total=total)
        return lambda n: progress.advance(task, n)

    return start


def resolve_models(
    config: NodeConfig, err: Console, specs: dict[str, str] | None = None
) -> list[ResolvedModel]:
    """Each `--model` as a file on disk (fetched if need be). Only the default embedding model
    may be missing: the node then serves chat alone, and says so. `specs` (if given) gets each
    model's id → the spec it came from, so the node can load it again once unloaded."""
    from edgebox.models import DEFAULT_EMBEDDING_MODEL, ModelNotAvailable
    from edgebox.runtimes.open import resolve_model_or_dir as resolve_model

    resolved: list[ResolvedModel] = []
    columns = ("[progress.description]{task.description}", BarColumn(), DownloadColumn())
    try:
        with Progress(*columns, TimeRemainingColumn(), console=err, transient=True) as progress:
            for i, spec in enumerate(config.model_specs):
                name = config.aliases[i] if i < len(config.aliases) else None
                try:
                    found = resolve_model(spec, alias=name, progress=_progress_factory(progress))
                except ModelNotAvailable as exc:
                    if config.models or spec != DEFAULT_EMBEDDING_MODEL:
                        raise
                    err.print(f"[yellow]not serving embeddings:[/] {exc}", highlight=False)
                    continue
                resolved.append(found)
                if specs is not None:
                    specs[found.alias] = spec
    except ModelNotAvailable as exc:
        raise AgentError(str(exc)) from None
    ids = [m.alias for m in resolved]
    if len(set(ids)) < len(ids):
        raise AgentError(
            f"two models would be served as the same id ({', '.join(ids)}); use --alias"
        )
    return resolved


def fit_budget(
    resolved: list[ResolvedModel], config: NodeConfig, options: RuntimeOptions, err: Console
) -> tuple[list[ResolvedModel], list[ResolvedModel]]:
    """The models named at start split into (load now, leave on disk) under the node's memory
    budget (`node/residency.start_loads`); AgentError for one over the whole budget."""
    from pathlib import Path

    from edgebox.models.footprint import format_size, model_footprint
    from edgebox.node.ondemand import default_budget
    from edgebox.node.residency import start_loads

    budget = config.memory_budget or default_budget(None)
    needs = {
        m.alias: model_footprint(Path(m.path)).need(options.n_ctx, options.parallel or 1)
        for m in resolved
    }
    plan = start_loads(list(needs.items()), budget)
    if plan.too_big:
        name = plan.too_big[0]
        raise AgentError(
            f"{name} needs about {format_size(needs[name])} (weights + KV cache at --ctx "
            f"{options.n_ctx} x {options.parallel or 1} slot(s)) and the model memory budget is "
            f"{format_size(budget)}; raise --memory-budget, lower --ctx or --parallel, or pick "
            "a smaller quantisation"
        )
    used = sum(needs[n] for n in plan.load)
    for name in plan.on_disk:
        err.print(
            f"[yellow]{name}: left on disk[/]: needs about {format_size(needs[name])} and "
            f"{format_size(used)} of the {format_size(budget)} budget is taken; the first "
            "request for it loads it, unloading idle models",
            highlight=False,
        )
    return [m for m in resolved if m.alias in plan.load], [
        m for m in resolved if m.alias in plan.on_disk
    ]


def open_runtimes(
    resolved: list[ResolvedModel], config: NodeConfig, options: RuntimeOptions, err: Console
) -> Runtimes:
    """A runtime per model; if one cannot open, those already open are closed first."""
    from edgebox.runtimes.base import BackendError, EmbeddingRuntime, Runtime
    from edgebox.runtimes.open import open_model

    opened = Runtimes()
    for model in resolved:
        err.print(f"loading {model.alias} from {model.path} …", highlight=False, soft_wrap=True)
        # --runtime names the chat models' runtime; an embedding model always takes ONNX Runtime
        requested = "auto" if model.format == "onnx" else config.runtime
        try:
            runtime, chosen = open_model(
                model.path,
                name=model.alias,
                requested=requested,
                options=options,
                tokenizer=model.tokenizer,
            )
        except BackendError as exc:
            opened.close()
            raise AgentError(str(exc)) from None
        err.print(f"{model.alias}: runtime {chosen.runtime}: {chosen.reason}", highlight=False)
        opened.fast_paths[model.alias] = f"{chosen.runtime}: {chosen.reason}"
        if runtime.capabilities.embeddings:
            opened.embedders[model.alias] = cast(EmbeddingRuntime, runtime)
        else:
            opened.chat[model.alias] = cast(Runtime, runtime)
    return opened
