#!/usr/bin/env bash
# Build llama.cpp's C++ llama-server from the vendor/llama.cpp tree inside the
# llama-cpp-python sdist that edgebox pins, so the benchmark compares against the
# same llama.cpp revision. The build lives outside the repo (default
# ~/.cache/edgebox-bench) and is reused on later runs.
#
#   bash benchmarks/build_llama_server.sh            # prints the binary's path
#   EDGEBOX_BENCH_CACHE=/somewhere bash benchmarks/build_llama_server.sh
set -euo pipefail

version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
cache="${EDGEBOX_BENCH_CACHE:-$HOME/.cache/edgebox-bench}"
src="$cache/llama_cpp_python-$version"
build="$cache/llama-server-$version"
binary="$build/bin/llama-server"

if [[ -x "$binary" ]]; then
    echo "$binary"
    exit 0
fi

mkdir -p "$cache"
if [[ ! -d "$src/vendor/llama.cpp" ]]; then
    echo "fetching llama-cpp-python $version sdist" >&2
    python3 -m pip download --quiet --no-deps --no-binary :all: \
        "llama-cpp-python==$version" -d "$cache" >&2
    tar -xzf "$cache/llama_cpp_python-$version.tar.gz" -C "$cache"
fi

echo "configuring llama-server (this takes several minutes on 2 cores)" >&2
cmake -S "$src/vendor/llama.cpp" -B "$build" \
    -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON \
    -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    ${CMAKE_ARGS:-} >&2
cmake --build "$build" --target llama-server -j "$(nproc)" >&2
echo "$binary"
