#!/usr/bin/env bash
# Builds llama.cpp's llama-server from the source node-llama-cpp ships (a git bundle inside the package), for the
# opt-in suite tests/engines/llama-server.test.ts. No download: the source is the installed package's; the build is
# cached outside the repository (SR_LLAMA_CACHE, default ~/.cache/session-reaper/llama.cpp) and skipped when the
# binary is there. Needs cmake and g++ (Debian: cmake, g++). About 7 minutes on 2 cores (6 min 48 s measured). Prints the binary's path.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bundle="$here/node_modules/node-llama-cpp/llama/gitRelease.bundle"
info="$here/node_modules/node-llama-cpp/llama/llama.cpp.info.json"
[ -f "$bundle" ] || { echo "node-llama-cpp is not installed: npm --prefix runtimes/llama-engine run setup" >&2; exit 1; }
tag="$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).tag)' "$info")"
cache="${SR_LLAMA_CACHE:-$HOME/.cache/session-reaper/llama.cpp}/$tag"
bin="$cache/build/bin/llama-server"
if [ ! -x "$bin" ]; then
  [ -d "$cache/src/.git" ] || git clone --quiet "$bundle" "$cache/src" >&2
  git -C "$cache/src" checkout --quiet "$tag" 2>/dev/null || true
  cmake -S "$cache/src" -B "$cache/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DGGML_NATIVE=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON >&2
  cmake --build "$cache/build" --target llama-server -j "$(nproc)" >&2
fi
echo "$bin"
