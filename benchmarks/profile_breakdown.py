"""Where a token's time goes: py-spy samples of a serving node, by category.

Record a node under load (no pausing, Python frames; the leaf frame's source line tells a
`llama_decode` call from sampling, detokenizing, the hand-off and the rest):

    py-spy record --pid PID --nonblocking --threads --idle --format raw -r 100 -d 20 -o prof.txt
    python benchmarks/profile_breakdown.py prof.txt [SOURCE_ROOT]

SOURCE_ROOT is the checkout the node ran (default: this one): line numbers are read from it.

(`--native` shows what inside llama_decode, but it stops the process for every sample: on a
loaded 2-core machine that slowed decode twentyfold, so the shares here come without it.)
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(sys.argv[2] if len(sys.argv) > 2 else Path(__file__).resolve().parents[1])
FRAME = re.compile(r"(\S+) \((.+):(\d+)\)$")
LOOP_KINDS = (
    ("hand-off (wake + queue)", ("_read_from_self", "_process_self_data", "put_nowait", "Inbox")),
    ("SSE/JSON framing", ("sse (", "ResponseShape.chunk", "json/", "dumps (")),
    ("metrics (TTFT/ITL histograms)", ("prometheus", "observe", "_count")),
    ("HTTP write (uvicorn/h11/socket)", ("h11", "uvicorn", "starlette", "transport", "_write")),
)
DETOKENIZE = ("TokenTextDecoder", "StopMatcher", "piece", "token_bytes", "codecs")
HAND_OFF = ("call_soon_threadsafe", "_write_to_self", "Inbox.put", "sink", "LoopWaker.wake")


def source_line(frame: str) -> tuple[str, str]:
    """(function, the source line it stood on) of one `func (path:line)` frame."""
    m = FRAME.match(frame.strip())
    if not m:
        return frame, ""
    func, path, line = m.groups()
    file = ROOT / path if path.startswith("edgebox/") else None
    text = file.read_text().splitlines()[int(line) - 1] if file and file.exists() else ""
    return func, text


def engine_kind(frames: list[str]) -> str:
    if any("Condition.wait" in f for f in frames) or not any("_step" in f for f in frames):
        return "idle (no request)"
    for frame in reversed(frames):  # leaf first
        func, src = source_line(frame)
        if "llama_decode" in src:
            return "llama_decode"
        if "llama_sampler_sample" in src:
            return "sampling (native chain)"
        if "token_logprobs" in src or "token_logprobs" in func:
            return "logprobs"
        if any(k in func for k in DETOKENIZE):
            return "detokenize + stop match"
        if any(k in func for k in HAND_OFF):
            return "hand-off to the event loop"
    return "Python bookkeeping (plan, batch, events)"


def loop_kind(frames: list[str]) -> str:
    if "select (selectors.py" in frames[-1]:
        return "idle (select)"
    text = ";".join(frames)
    for kind, keys in LOOP_KINDS:
        if any(k in text for k in keys):
            return kind
    return "other loop work (tasks, generators)"


def breakdown(path: Path) -> dict[str, Counter[str]]:
    out: dict[str, Counter[str]] = {"engine thread": Counter(), "event loop": Counter()}
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        thread, *frames = stack.split(";")
        if "llamacpp-engine" in thread:
            out["engine thread"][engine_kind(frames)] += int(n)
        elif "MainThread" in thread and frames:
            out["event loop"][loop_kind(frames)] += int(n)
    return out


def main() -> None:
    for title, counts in breakdown(Path(sys.argv[1])).items():
        busy = sum(v for k, v in counts.items() if not k.startswith("idle"))
        print(f"{title}: {sum(counts.values())} samples, {busy} busy")
        for kind, n in counts.most_common():
            share = "" if kind.startswith("idle") else f"{100 * n / max(busy, 1):5.1f} % of busy"
            print(f"  {kind:44s} {n:6d}  {share}")


if __name__ == "__main__":
    main()
