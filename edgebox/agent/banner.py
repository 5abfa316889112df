"""The lines `edgebox serve` prints once the node is up: what it serves, where, and a curl."""

from __future__ import annotations

import json
import sys

from rich.console import Console

from edgebox.agent.runtimes import Runtimes


def print_banner(out: Console, url: str, runtimes: Runtimes, *, threads: int, keyed: bool) -> None:
    """One line per model, a request to try (with the key header when `keyed`), and a notice
    when llama.cpp's extra CPU buffers were turned off after a fault."""
    for alias, rt in runtimes.chat.items():
        info = rt.info
        out.print(
            f"[bold green]edgebox[/] serving [bold]{alias}[/] ({info.description}, "
            f"{info.n_ctx} ctx x {rt.stats().slots} slots, {threads} "
            f"threads) at [bold]{url}/v1[/]",
            highlight=False,
        )
    for alias, emb in runtimes.embedders.items():
        providers = ", ".join(emb.info.metadata.get("providers", []))
        out.print(
            f"[bold green]edgebox[/] serving [bold]{alias}[/] ({emb.dimensions}-d "
            f"embeddings, {emb.info.n_ctx} tokens max, {providers}) at [bold]{url}/v1[/]",
            highlight=False,
        )
    auth = ' -H "Authorization: Bearer $EDGEBOX_API_KEY"' if keyed else ""
    route, body = _example(runtimes)
    out.print(
        f"try:  curl -s {url}/v1/{route} -H 'Content-Type: application/json'{auth} -d '{body}'",
        highlight=False,
        soft_wrap=True,
    )
    notice = extra_buffers_notice()
    if notice:
        out.print(f"[yellow]{notice}[/]", highlight=False)
    out.print("Ctrl-C to stop.", style="dim")


def _example(runtimes: Runtimes) -> tuple[str, str]:
    """A request to try: a chat with the first chat model, else an embedding."""
    if runtimes.chat:
        first = next(iter(runtimes.chat))
        chat = {"model": first, "messages": [{"role": "user", "content": "Hello!"}]}
        return "chat/completions", json.dumps(chat)
    return "embeddings", json.dumps({"model": next(iter(runtimes.embedders)), "input": "Hello!"})


def extra_buffers_notice() -> str | None:
    """The banner's line when llama.cpp's extra CPU buffers were turned off after a fault."""
    if "edgebox.runtimes.llamacpp.cpu_probe" not in sys.modules:  # no llama.cpp model loaded
        return None
    from edgebox.runtimes.llamacpp import cpu_probe

    return cpu_probe.fallback_notice(cpu_probe.current())
