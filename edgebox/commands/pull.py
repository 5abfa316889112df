"""`edgebox pull SPEC`: a model into this box's store, from peers first, else the internet."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from edgebox.commands._hubopts import AsJson, fail

if TYPE_CHECKING:
    from edgebox.models.pull import Pull
    from edgebox.models.transfer import Peer

out = Console()
err = Console(stderr=True)

Spec = Annotated[
    str,
    typer.Argument(
        help="ORG/REPO:FILE.gguf (Hugging Face), an http(s) URL, a local path, a bundled "
        "name, or a model NAME that a --peer holds."
    ),
]
Sha256 = Annotated[
    str | None, typer.Option("--sha256", help="The file's SHA-256, checked at the end.")
]
Name = Annotated[str | None, typer.Option("--name", help="The name in the store.")]
Peers = Annotated[
    list[str] | None,
    typer.Option("--peer", metavar="URL", help="A node to fetch from first (repeatable)."),
]
Key = Annotated[
    str | None,
    typer.Option(
        "--key",
        envvar=["EDGEBOX_FLEET_KEY", "EDGEBOX_API_KEY"],
        help="The key the peers' /v1/ routes take.",
        show_default=False,
    ),
]
Lan = Annotated[
    bool, typer.Option("--lan", help="Also ask the nodes on this LAN (mDNS) for the model.")
]
UseHub = Annotated[
    bool,
    typer.Option(
        "--hub/--no-hub",
        help="When logged in to a hub (`edgebox login`), fetch from its nodes first.",
    ),
]
MaxRate = Annotated[
    float, typer.Option("--max-rate", metavar="MB/S", help="Limit the download (0: none).")
]


def pull(
    spec: Spec,
    sha256: Sha256 = None,
    name: Name = None,
    peer: Peers = None,
    key: Key = None,
    lan: Lan = False,
    use_hub: UseHub = True,
    max_rate: MaxRate = 0.0,
    as_json: AsJson = False,
) -> None:
    """Download a model into the store: verified chunks, in parallel, resumable."""
    from edgebox.models.pull import Pull, PullError, plan_pull
    from edgebox.models.store import ModelStore

    peers, from_hub = _peers(peer or [], key, lan=lan, use_hub=use_hub)
    if sha256 and from_hub:  # the digest is known before planning: ask only its holders
        peers = holders_only(peers, from_hub, [sha256])
        from_hub = set()
    try:
        plan = plan_pull(spec, sha256=sha256, name=name, peers=peers)
        if from_hub:  # a Hugging Face file's LFS digest is known once planned
            peers = holders_only(peers, from_hub, [f.sha256 for f in plan.files])
        limit = max_rate * 1e6 if max_rate > 0 else None
        job = Pull(ModelStore(), plan, peers=peers, max_rate=limit)
    except PullError as exc:
        _failed(str(exc), as_json)
        raise fail(str(exc)) from None
    outcome: list[BaseException] = []

    def work() -> None:
        try:
            job.run()
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    (_json_lines if as_json else _bar)(job, thread)
    if outcome:
        _failed(str(outcome[0]), as_json)
        raise fail(str(outcome[0]))
    _report(job, as_json)


def _peers(
    urls: list[str], key: str | None, *, lan: bool, use_hub: bool
) -> tuple[list[Peer], set[str]]:
    """The peers to ask, and the URLs of those that came from the hub."""
    from edgebox.models.transfer import Peer

    peers = [Peer(url, key) for url in urls]
    from_hub: set[str] = set()
    if use_hub:  # the hub's nodes, each with a grant to read its blobs
        from edgebox.fleet.blob_peers import hub_grant_peers

        named = {p.url for p in peers}
        peers += [p for p in hub_grant_peers() if p.url not in named]
        from_hub = {p.url for p in peers} - named
    if lan:
        from edgebox.fleet.blob_peers import mdns_candidates

        named = {p.url for p in peers}
        peers += [p for p in mdns_candidates(None, key) if p.url not in named]
    return peers, from_hub


def holders_only(
    peers: list[Peer],
    from_hub: set[str],
    digests: Sequence[str | None],
    holders: Callable[[list[str]], set[str] | None] | None = None,
) -> list[Peer]:
    """`peers` less the hub's nodes that its blob registry says hold none of `digests`
    (`holders`: `blob_peers.hub_blob_holders`), so a pull asks the holders, not every online
    node, for chunk lists. Unchanged where a digest is not known up front or the hub cannot
    say; peers named otherwise (`--peer`, mDNS) are always kept."""
    if not from_hub or not digests or not all(digests):
        return peers
    if holders is None:
        from edgebox.fleet.blob_peers import hub_blob_holders

        holders = hub_blob_holders
    held = holders([d for d in digests if d])
    if held is None:
        return peers
    return [p for p in peers if p.url not in from_hub or p.url in held]


def _report(job: Pull, as_json: bool) -> None:
    manifest = job.manifest
    assert manifest is not None
    result = {
        "event": "done",
        "name": manifest.name,
        "size_bytes": manifest.size,
        "sha256": [f.sha256 for f in manifest.files],
        "sources": dict(job.progress.by_source),
        "rejected": job.progress.rejected,
    }
    if as_json:
        print(json.dumps(result), flush=True)
        return
    for why in job.progress.rejected:
        err.print(f"[yellow]left out[/yellow] {why}")
    out.print(
        f"pulled {manifest.name} ({manifest.size / 1e6:,.0f} MB): "
        f"`edgebox serve --model {manifest.name}`"
    )


def _failed(message: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"event": "error", "error": message}), flush=True)


def _json_lines(job: Pull, thread: threading.Thread) -> None:
    while thread.is_alive():
        thread.join(0.5)
        p = job.progress
        with p.lock:
            line = {
                "event": "progress",
                "done": p.done,
                "total": p.total,
                "sources": dict(p.by_source),
            }
        print(json.dumps(line), flush=True)


def _bar(job: Pull, thread: threading.Thread) -> None:
    columns = ("{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(job.plan.name, total=job.progress.total or None)
        while thread.is_alive():
            thread.join(0.2)
            bar.update(task, completed=job.progress.done)


def register(app: typer.Typer) -> None:
    app.command("pull")(pull)
