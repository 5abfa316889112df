"""Whether llama.cpp's CPU "extra buffer types" (repacked weights, AMX tiles) work on this CPU.

llama.cpp repacks weights into CPU-specific layouts at load time (`CPU_REPACK`, and `AMX` on
Xeons that advertise `amx_tile`/`amx_int8`). Some VMs advertise AMX but fault on it: the
first prompt longer than a few tokens dies with a general-protection fault at `ldtilecfg`.
No exception reaches Python; the process is gone. So the first start asks a child process:
it loads the tiny bundled model with extra buffers on and decodes a 64-token prompt. A child
killed by a signal, or one that hangs, means "they fault here": models then load with
`use_extra_bufts = false`. The answer is cached per CPU (model and SIMD/AMX flags), llama.cpp
build and edgebox version in the user cache dir, so later starts pay nothing.

`decide` is the pure policy; the rest is the child, the cache and the process-wide memo.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgebox import __version__
from edgebox.hardware.probe import cpuinfo_fields
from edgebox.models.bundled import cache_dir

MODES = ("auto", "on", "off")
MODE_ENV = "EDGEBOX_CPU_EXTRA_BUFFERS"  # `serve --cpu-extra-buffers` default (service units)
# Tests only: the probe child crashes (SIGSEGV) right before decoding with extra buffers on,
# standing in for the AMX fault on machines without AMX.
FAULT_HOOK_ENV = "EDGEBOX_TEST_CPU_PROBE_FAULT"
PROBE_TOKENS = 64  # past llama.cpp's batched matmul threshold, where the AMX kernels run
PROBE_TIMEOUT_S = 60.0
CHILD_ERROR = 3  # the child could not run the probe (no model, load failed): not a CPU fault
DECODE_FAILED = 4  # llama_decode returned an error with extra buffers on
FORCE_HINT = "--cpu-extra-buffers on to force"
_CHILD_MODULE = "edgebox.runtimes.llamacpp._probe_child"


@dataclass(frozen=True)
class ProbeResult:
    """What the child reported. `status`: ok, faulted (signal, hang or failed decode) or error
    (the probe could not run at all, which says nothing about the CPU)."""

    status: str
    detail: str
    fallback_works: bool | None = None  # faulted: the same decode without extra buffers worked
    seconds: float = 0.0
    probed_at: float = 0.0


@dataclass(frozen=True)
class ExtraBuffers:
    """Whether llama.cpp models load with extra buffer types here, and why."""

    enabled: bool
    mode: str  # auto, on, off
    status: str  # forced on | forced off | probed ok | faulted | not probed | probe error | gpu
    detail: str = ""

    @property
    def fallback(self) -> bool:
        """Auto mode turned them off because the probe saw them fault."""
        return self.mode == "auto" and self.status == "faulted"

    def summary(self) -> str:
        state = "on" if self.enabled else "off"
        return f"{state} ({self.status}{': ' + self.detail if self.detail else ''})"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fallback": self.fallback}


def decide(mode: str, result: ProbeResult | None) -> ExtraBuffers:
    """The policy: a forced mode wins; auto follows the probe and keeps llama.cpp's default
    (on) unless the probe saw a fault."""
    if mode == "on":
        return ExtraBuffers(True, mode, "forced on")
    if mode == "off":
        return ExtraBuffers(False, mode, "forced off")
    if result is None:
        return ExtraBuffers(True, mode, "not probed")
    if result.status == "ok":
        return ExtraBuffers(True, mode, "probed ok", f"{result.seconds:.1f} s probe")
    if result.status == "faulted":
        detail = result.detail
        if result.fallback_works is False:
            detail += "; llama.cpp fails without them too: rebuild llama-cpp-python for this CPU"
        return ExtraBuffers(False, mode, "faulted", detail)
    return ExtraBuffers(True, mode, "probe error", result.detail)


def fallback_notice(decision: ExtraBuffers | None) -> str | None:
    """The serve banner's line when auto mode fell back."""
    if decision is None or not decision.fallback:
        return None
    return f"AMX/repacked weights fault on this CPU; serving without them ({FORCE_HINT})"


def normalise_mode(mode: str | None) -> str:
    """`mode` (or $EDGEBOX_CPU_EXTRA_BUFFERS when None) as auto/on/off; ValueError otherwise."""
    value = (mode if mode is not None else os.environ.get(MODE_ENV) or "auto").strip().lower()
    if value not in MODES:
        raise ValueError(f"cpu extra buffers must be auto, on or off, not {value!r}")
    return value


# ---- the cache key: what the answer depends on ------------------------------------------------

_KEY_FLAG_PREFIXES = ("amx", "avx512", "avx_vnni", "avx2", "fma", "f16c")
_KEY_ARM_FLAGS = ("asimddp", "i8mm", "sve", "sve2", "sme", "bf16")


def cpu_identity() -> tuple[str, tuple[str, ...]]:
    """(CPU model, the flags that decide llama.cpp's repack/AMX kernels), from /proc/cpuinfo."""
    text = ""
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    model, flags = cpuinfo_fields(text)
    wanted = {f for f in flags if f.startswith(_KEY_FLAG_PREFIXES) or f in _KEY_ARM_FLAGS}
    return model or platform.processor() or platform.machine(), tuple(sorted(wanted))


def llama_build() -> dict[str, str]:
    """llama-cpp-python's version, llama.cpp's system info (which CPU features it was built
    with: AMX_INT8, REPACK, ...) and the library file's size and mtime (a rebuild re-probes)."""
    import llama_cpp

    from edgebox.runtimes.llamacpp.model import init_backend

    init_backend()  # registers the CPU backend, whose features the system info lists
    lib = Path(llama_cpp.__file__).parent / "lib"
    libs = sorted(lib.glob("libllama*")) if lib.is_dir() else []
    stamp = f"{libs[0].stat().st_size}:{libs[0].stat().st_mtime_ns}" if libs else ""
    info = llama_cpp.llama_print_system_info().decode("utf-8", errors="replace").strip()
    return {"llama_cpp": llama_cpp.__version__, "system_info": info, "library": stamp}


def probe_key() -> dict[str, Any]:
    model, flags = cpu_identity()
    return {"cpu": model, "flags": list(flags), **llama_build(), "edgebox": __version__}


def _digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def cache_path() -> Path:
    return cache_dir() / "cpu_extra_buffers.json"


def _load_cache() -> dict[str, Any]:
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def cached_result(key: dict[str, Any]) -> ProbeResult | None:
    entry = _load_cache().get(_digest(key))
    try:
        return ProbeResult(**entry["result"]) if isinstance(entry, dict) else None
    except (KeyError, TypeError):
        return None


def store_result(key: dict[str, Any], result: ProbeResult) -> None:
    """Remember the answer (an error is not remembered: it says nothing about the CPU)."""
    if result.status == "error":
        return
    with contextlib.suppress(OSError):  # a read-only cache only costs a probe per start
        data = _load_cache()
        data[_digest(key)] = {"key": key, "result": asdict(result)}
        target = cache_path()
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(target)


# ---- the child ----------------------------------------------------------------------------------


def _no_core_dump() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _run_child(model: Path, extra: bool, timeout: float) -> tuple[int | None, str, float]:
    """(exit code, None on timeout; last stderr lines; seconds) of one probe child."""
    cmd = [sys.executable, "-m", _CHILD_MODULE, str(model), "on" if extra else "off"]
    env = {**os.environ, "GGML_NO_BACKTRACE": "1"}  # no gdb attach on abort
    started = time.monotonic()
    try:
        done = subprocess.run(
            cmd,
            capture_output=True,
            timeout=timeout,
            env=env,
            preexec_fn=_no_core_dump if os.name == "posix" else None,
        )
    except subprocess.TimeoutExpired:
        return None, "", time.monotonic() - started
    tail = done.stderr.decode("utf-8", errors="replace").strip().splitlines()[-3:]
    return done.returncode, " | ".join(tail), time.monotonic() - started


def _describe(code: int | None, timeout: float) -> str:
    if code is None:
        return f"the probe hung for {timeout:.0f} s"
    if code < 0:
        import signal

        with contextlib.suppress(ValueError):
            return f"the probe died by {signal.Signals(-code).name}"
        return f"the probe died by signal {-code}"
    if code == DECODE_FAILED:
        return "llama_decode failed"
    return f"the probe exited with {code}"


def run_probe(model: Path, *, timeout: float = PROBE_TIMEOUT_S) -> ProbeResult:
    """Decode a 64-token prompt in a child with extra buffers on; on a fault, check that the
    same decode works with them off (else turning them off would not help)."""
    code, tail, seconds = _run_child(model, True, timeout)
    now = time.time()
    if code == 0:
        return ProbeResult("ok", "", None, round(seconds, 2), now)
    if code is not None and 0 < code < 128 and code != DECODE_FAILED:  # Python-level failure
        return ProbeResult("error", f"{_describe(code, timeout)}: {tail}", None, seconds, now)
    off_code, _, _ = _run_child(model, False, timeout)
    detail = _describe(code, timeout) + " with extra buffers on"
    return ProbeResult("faulted", detail, off_code == 0, round(seconds, 2), now)


# ---- the process-wide decision --------------------------------------------------------------

_lock = threading.Lock()
_decisions: dict[str, ExtraBuffers] = {}
_last: ExtraBuffers | None = None


def probe_model(fallback: Path | None = None) -> Path | None:
    """The bundled SmolLM2 GGUF (Q4_1: AMX kernels take it), else `fallback`."""
    from edgebox.models import ModelNotAvailable, resolve_model

    try:
        return resolve_model("smollm2-135m").path
    except ModelNotAvailable:
        return fallback


def extra_buffers(
    mode: str = "auto", *, model: Path | None = None, all_on_gpu: bool = False
) -> ExtraBuffers:
    """The decision for this process: forced modes as given; auto from the cache, probing
    once (a second or two) when this CPU and build have no answer yet."""
    global _last
    mode = normalise_mode(mode)
    with _lock:
        if mode == "auto" and all_on_gpu:
            decision = ExtraBuffers(True, mode, "gpu", "every layer on the GPU: nothing to probe")
        elif mode != "auto":
            decision = decide(mode, None)
        elif "auto" in _decisions:
            decision = _decisions["auto"]
        else:
            decision = _decisions["auto"] = decide(mode, _cached_or_probe(model))
        _last = decision
        return decision


def _cached_or_probe(model: Path | None) -> ProbeResult | None:
    key = probe_key()
    result = cached_result(key)
    if result is not None:
        return result
    path = probe_model(model)
    if path is None:
        return None
    result = run_probe(path)
    store_result(key, result)
    return result


def current() -> ExtraBuffers | None:
    """The last decision taken in this process (None before any llama.cpp model loaded)."""
    return _last


def status(*, run: bool = False) -> ExtraBuffers:
    """What `edgebox doctor` shows: the env's forced mode, else the cached probe (running it
    first when `run` and none is cached)."""
    mode = normalise_mode(None)
    if mode != "auto":
        return decide(mode, None)
    key = probe_key()
    result = cached_result(key)
    if result is None and run:
        path = probe_model()
        if path is not None:
            result = run_probe(path)
            store_result(key, result)
    return decide(mode, result)
