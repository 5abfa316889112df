"""The Python half of `benchmarks/gpu_check.sh`: what it asks of NVML, the GPU and a node.

    python benchmarks/gpu_check.py nvml OUT.json          # NVML's answers, as replay fixtures
    python benchmarks/gpu_check.py bandwidth OUT.json     # device copy GB/s through torch
    python benchmarks/gpu_check.py client URL MODEL OUT.json [--functional] [--no-throughput]
    python benchmarks/gpu_check.py summary DIR            # the figures of one run, as JSON

`client` drives a running `edgebox serve` with the real `openai` SDK over loopback HTTP:
with --functional a chat completion, a streamed one and a forced tool call first; then a
prefill of a ~1,000-token prompt (the batched kernels: AMX on CPUs that have it) and, unless
--no-throughput, streamed completions of TOKENS tokens at 1 and 8 concurrent streams (decode
tok/s per stream after the first token, aggregate tok/s of the round). Tokens are counted
from the stream's usage chunk, not from chunks.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

TOKENS = int(os.environ.get("GPU_CHECK_TOKENS", "256"))  # smaller for a dry run on a slow CPU
ROUNDS = int(os.environ.get("GPU_CHECK_ROUNDS", "3"))
STREAMS = (1, 8)
TOPICS = (
    "a robot who learns to paint",
    "a lighthouse keeper and a storm",
    "a cat that runs a bakery",
    "the last train of the night",
    "a gardener on Mars",
    "a clock that runs backwards",
    "two rival chess players",
    "a map drawn by a child",
)
LONG = " ".join(
    f"Paragraph {i}: the lighthouse keeper counted ships, logged the weather and wrote letters."
    for i in range(55)
)  # ~1,000 tokens with SmolLM2's tokenizer: past the batch size where AMX/GPU kernels run
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather forecast for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 40},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "days"],
        },
    },
}


# ---- NVML ---------------------------------------------------------------------------------


def _nvml_answer(nvml: Any, fn: str, *args: Any) -> Any:
    """An NVML answer as JSON: a value, or {"error": code} where NVML refused."""
    try:
        value = getattr(nvml, fn)(*args)
    except nvml.NVMLError as exc:
        return {"error": getattr(exc, "value", str(exc))}
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list | tuple) and value and hasattr(value[0], "pid"):
        return [{"pid": p.pid, "usedGpuMemory": p.usedGpuMemory} for p in value]
    if hasattr(value, "total") and hasattr(value, "used"):
        return {"total": value.total, "free": value.free, "used": value.used}
    if hasattr(value, "gpu") and hasattr(value, "memory"):
        return {"gpu": value.gpu, "memory": value.memory}
    return list(value) if isinstance(value, tuple) else value


def record_nvml(out: Path) -> None:
    """Every NVML answer edgebox reads (`hardware/nvidia.py`), per device, for replay tests."""
    import pynvml as nvml

    nvml.nvmlInit()
    try:
        devices = []
        for i in range(nvml.nvmlDeviceGetCount()):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            devices.append(
                {
                    "name": _nvml_answer(nvml, "nvmlDeviceGetName", h),
                    "memory": _nvml_answer(nvml, "nvmlDeviceGetMemoryInfo", h),
                    "cc": _nvml_answer(nvml, "nvmlDeviceGetCudaComputeCapability", h),
                    "util": _nvml_answer(nvml, "nvmlDeviceGetUtilizationRates", h),
                    "temp": _nvml_answer(
                        nvml, "nvmlDeviceGetTemperature", h, nvml.NVML_TEMPERATURE_GPU
                    ),
                    "power_mw": _nvml_answer(nvml, "nvmlDeviceGetPowerUsage", h),
                    "compute": _nvml_answer(nvml, "nvmlDeviceGetComputeRunningProcesses", h),
                    "graphics": _nvml_answer(nvml, "nvmlDeviceGetGraphicsRunningProcesses", h),
                    "mig_mode": _nvml_answer(nvml, "nvmlDeviceGetMigMode", h),
                }
            )
        answer = {
            "driver": _nvml_answer(nvml, "nvmlSystemGetDriverVersion"),
            "nvml_version": _nvml_answer(nvml, "nvmlSystemGetNVMLVersion"),
            "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "devices": devices,
        }
    finally:
        nvml.nvmlShutdown()
    out.write_text(json.dumps(answer, indent=1))
    print(json.dumps(answer))


# ---- GPU memory bandwidth ------------------------------------------------------------------


def measure_bandwidth(out: Path, gib: float = 2.0, repeats: int = 20) -> None:
    """GB/s of a device-to-device copy through torch, counting bytes read plus written (the
    median of `repeats` timed copies after warm-ups, CUDA events); random data, never zeros."""
    import torch

    n = int(gib * 2**30) // 4
    src = torch.rand(n, device="cuda", dtype=torch.float32)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    assert torch.equal(dst[:1024], src[:1024]), "the copy did not copy"
    moved = 2 * src.numel() * src.element_size()
    median = statistics.median(times)
    answer = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "bytes_moved_per_copy": moved,
        "median_s": median,
        "gbps_read_plus_write": moved / median / 1e9,
        "best_gbps": moved / min(times) / 1e9,
        "multiprocessors": torch.cuda.get_device_properties(0).multi_processor_count,
    }
    out.write_text(json.dumps(answer, indent=1))
    print(json.dumps(answer))


# ---- the node, over HTTP -------------------------------------------------------------------


def functional(base_url: str, model: str) -> dict[str, Any]:
    """A chat completion, a streamed one and a forced tool call, through the openai SDK."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=300)
    ask = [{"role": "user", "content": "Name three colours of the rainbow."}]
    reply = client.chat.completions.create(model=model, messages=ask, max_tokens=40)  # type: ignore[arg-type]
    chat = {
        "text": reply.choices[0].message.content,
        "finish_reason": reply.choices[0].finish_reason,
        "usage": reply.usage.model_dump() if reply.usage else None,
    }
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=ask,  # type: ignore[arg-type]
            max_tokens=40,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = next((c.usage for c in chunks if c.usage), None)
    call = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is the weather in Paris for 3 days?"}],
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=80,
        temperature=0,
    ).choices[0]
    calls = call.message.tool_calls or []
    arguments = json.loads(calls[0].function.arguments) if calls else None  # type: ignore[union-attr]
    return {
        "chat": chat,
        "stream": {"chunks": len(chunks), "text": streamed, "usage": _dump(usage)},
        "tool_call": {
            "finish_reason": call.finish_reason,
            "name": calls[0].function.name if calls else None,  # type: ignore[union-attr]
            "arguments": arguments,
            "ok": call.finish_reason == "tool_calls"
            and isinstance(arguments, dict)
            and {"city", "days"} <= arguments.keys(),
        },
        "ok": bool(chat["text"]) and bool(streamed) and len(chunks) > 2,
    }


def _dump(value: Any) -> Any:
    return value.model_dump() if value is not None else None


async def _stream(client: Any, model: str, prompt: str, max_tokens: int) -> dict[str, float]:
    """One streamed completion: ttft, decode tok/s after the first token, tokens (usage)."""
    started = time.perf_counter()
    first = last = 0.0
    tokens = 0
    stream = await client.completions.create(
        model=model,
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            last = time.perf_counter() - started
            first = first or last
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    decode = (tokens - 1) / (last - first) if tokens > 1 and last > first else 0.0
    return {"ttft_s": first, "decode_tps": decode, "tokens": tokens, "wall_s": last}


async def throughput(base_url: str, model: str, streams_at: tuple[int, ...]) -> dict[str, Any]:
    """Prefill of LONG, then decode at each of `streams_at` concurrent streams, ROUNDS rounds."""
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)
    await _stream(client, model, "Warm-up: count to five.", 16)
    prefill = await _stream(client, model, f"{time.time_ns()}\n{LONG}\nSummary:", 1)
    levels: dict[str, Any] = {}
    for streams in streams_at:
        rounds = []
        for r in range(ROUNDS):
            prompts = [
                f"Run {r}.{i} at {time.time_ns()}.\nWrite a long story about "
                f"{TOPICS[i % len(TOPICS)]}.\nStory:"
                for i in range(streams)
            ]
            started = time.perf_counter()
            done = await asyncio.gather(*(_stream(client, model, p, TOKENS) for p in prompts))
            wall = time.perf_counter() - started
            rounds.append(
                {
                    "aggregate_tps": sum(d["tokens"] for d in done) / wall,
                    "decode_tps": [d["decode_tps"] for d in done],
                    "ttft_s": [d["ttft_s"] for d in done],
                    "tokens": [d["tokens"] for d in done],
                }
            )
        levels[str(streams)] = {
            "aggregate_tps_median": statistics.median(r["aggregate_tps"] for r in rounds),
            "decode_tps_per_stream_median": statistics.median(
                t for r in rounds for t in r["decode_tps"]
            ),
            "ttft_s_median": statistics.median(t for r in rounds for t in r["ttft_s"]),
            "rounds": rounds,
        }
    await client.close()
    return {"prefill_ttft_s": prefill["ttft_s"], "tokens": TOKENS, "streams": levels}


def client_main(base_url: str, model: str, out: Path, flags: list[str]) -> None:
    result: dict[str, Any] = {"base_url": base_url, "model": model}
    if "--functional" in flags:
        result["functional"] = functional(base_url, model)
        out.write_text(json.dumps(result, indent=1))  # kept if the node dies next
    streams_at = () if "--no-throughput" in flags else STREAMS
    result["throughput"] = asyncio.run(throughput(base_url, model, streams_at))
    out.write_text(json.dumps(result, indent=1))
    short = {k: v["aggregate_tps_median"] for k, v in result["throughput"]["streams"].items()}
    print(json.dumps({"functional_ok": result.get("functional", {}).get("ok"), "tps": short}))


# ---- the run's figures ---------------------------------------------------------------------


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def summary(directory: Path) -> dict[str, Any]:
    """The figures of one run from the files gpu_check.sh left in `directory`."""
    bandwidth = _load(directory / "bandwidth.json") or {}
    model_bytes = (_load(directory / "model.json") or {}).get("bytes")
    runs = {}
    for name in ("gpu", "cpu", "gpu_visible_0_layers"):
        found = _load(directory / f"client_{name}.json")
        if found and found.get("throughput", {}).get("streams"):
            streams = found["throughput"]["streams"]
            runs[name] = {
                "decode_tps_1_stream": streams["1"]["decode_tps_per_stream_median"],
                "aggregate_tps_1_stream": streams["1"]["aggregate_tps_median"],
                "aggregate_tps_8_streams": streams["8"]["aggregate_tps_median"],
                "decode_tps_per_stream_8_streams": streams["8"]["decode_tps_per_stream_median"],
                "prefill_ttft_s": found["throughput"]["prefill_ttft_s"],
                "functional": found.get("functional"),
            }
    raw = {p.stem: _load(p) for p in sorted(directory.glob("*.json"))}
    nodes = {
        name: {
            "served": raw.get(f"health_{name}") is not None,
            "alive_after_requests": "died" not in (raw.get(f"health_after_{name}") or {"died": 1}),
            "exit": (raw.get(f"exit_{name}") or {}).get("exit"),  # 0: stopped by the script
        }
        for name in ("gpu", "cpu", "gpu_visible_0_layers", "cpu_repack_on")
        if f"exit_{name}" in raw
    }
    result: dict[str, Any] = {
        "runs": runs,
        "nodes": nodes,
        "bandwidth": bandwidth,
        "model_bytes": model_bytes,
    }
    gbps = bandwidth.get("gbps_read_plus_write")
    if gbps and model_bytes and "gpu" in runs:
        light = gbps * 1e9 / model_bytes  # tok/s if each token read every weight once, no more
        result["speed_of_light"] = {
            "tokens_per_s": light,
            "decode_1_stream_fraction": runs["gpu"]["decode_tps_1_stream"] / light,
            "aggregate_8_streams_fraction": runs["gpu"]["aggregate_tps_8_streams"] / light,
        }
    if "gpu" in runs and "cpu" in runs:
        result["gpu_over_cpu"] = {
            k: runs["gpu"][k] / runs["cpu"][k]
            for k in ("decode_tps_1_stream", "aggregate_tps_8_streams")
            if runs["cpu"][k]
        }
    result["files"] = raw  # health, NVML, probe, build and client answers as recorded
    return result


def main(argv: list[str]) -> None:
    command, *args = argv
    if command == "nvml":
        record_nvml(Path(args[0]))
    elif command == "bandwidth":
        measure_bandwidth(Path(args[0]))
    elif command == "client":
        client_main(args[0], args[1], Path(args[2]), args[3:])
    elif command == "summary":
        print(json.dumps(summary(Path(args[0])), indent=1))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
