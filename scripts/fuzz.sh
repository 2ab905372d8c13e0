#!/usr/bin/env bash
# Longer fuzzing runs than CI's fixed budget (crates/lem-fuzz/tests/budget.rs).
#
#   scripts/fuzz.sh TARGET MINUTES [SEED]    # one target (or `all`, MINUTES each)
#   scripts/fuzz.sh list                     # the targets
#   target/release/lem-fuzz replay TARGET FILE   # replay a kept input
#
# Crashing inputs are kept in target/fuzz-crashes/ (named by their SHA-256); the tiny
# models the seeds come from are made by scripts/fixtures/tiny_models.py.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p lem-fuzz >&2
[ -f target/tiny-models/qwen3/f32.gguf ] || python3 scripts/fixtures/tiny_models.py >&2
if [ "${1:-list}" = list ]; then exec target/release/lem-fuzz; fi
exec target/release/lem-fuzz "$1" --minutes "${2:-10}" --seed "${3:-$(date +%s)}"
