#!/usr/bin/env bash
# What `lem score attention` adds to a prefill. For each packaged model: builds a prompt of
# exactly 512 tokens, then runs `lem score attention --timings --json` RUNS times and
# prints the medians of
#   overhead = capture + snapshot + score, where capture is the time spent copying the
#              keys during the prefill (the forward does nothing else differently for an
#              observer), snapshot the building of the key snapshot, score the scoring;
#   and, for context, the scoring prefill and a plain prefill (no observer) timed in the
#   same run (their difference is mostly noise on a busy machine: seconds, not the
#   milliseconds of the copy).
#
#   bench/score_overhead.sh                 # both models, 5 runs, 2 threads
#   RUNS=9 THREADS=4 bench/score_overhead.sh smollm2-135m
#
# Needs a release build (cargo build --release -p lem-cli) and the models
# (lem models fetch all). Numbers are recorded in docs/attention.md.
set -euo pipefail
cd "$(dirname "$0")/.."
LEM=${LEM:-./target/release/lem}
RUNS=${RUNS:-5}
THREADS=${THREADS:-2}
TOKENS=${TOKENS:-512}
MODELS=("$@")
[ ${#MODELS[@]} -gt 0 ] || MODELS=(smollm2-135m gemma3-270m)

python3 - "$LEM" "$RUNS" "$THREADS" "$TOKENS" "${MODELS[@]}" <<'PY'
import json, statistics, subprocess, sys

lem, runs, threads, tokens, models = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5:]
words = ("the model reads a long prompt about rivers mountains and cities then writes "
         "a careful summary of what it saw while the keys of every layer are kept ").split()

def count(model, n):
    text = " ".join(words[i % len(words)] for i in range(n))
    out = subprocess.run([lem, "tokenize", "-m", model, "--bos", "--json", "--text", text],
                         check=True, capture_output=True, text=True).stdout
    return len(json.loads(out)), text

for model in models:
    lo, hi = 1, 4 * tokens          # binary search: the most words with <= `tokens` tokens
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(model, mid)[0] <= tokens:
            lo = mid
        else:
            hi = mid - 1
    n, text = count(model, lo)
    rows = []
    for _ in range(runs):
        out = subprocess.run([lem, "score", "attention", "-m", model, "-t", threads, "--timings", "--json",
                              "--prompt", text], check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out))
    med = lambda k: statistics.median(r["timings"][k] for r in rows)
    r = rows[0]
    print(f"{model}: {n} tokens, {r['model']['n_layers']} layers x {r['model']['n_kv_heads']} KV heads x "
          f"{r['model']['head_dim']}, {r['regime']}, composite {r['composite']}, median of {runs} runs "
          f"({threads} threads):")
    print(f"  overhead {med('overhead_ms'):7.1f} ms = capture {med('capture_ms'):.1f} + snapshot "
          f"{med('snapshot_ms'):.1f} + score {med('score_ms'):.1f}  "
          f"(max {max(x['timings']['overhead_ms'] for x in rows):.1f} ms)")
    print(f"  prefill: scoring {med('prefill_ms'):.0f} ms, plain {med('plain_prefill_ms'):.0f} ms")
PY
