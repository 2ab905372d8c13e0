#!/usr/bin/env bash
# Restore vs prefill: for each packaged model, builds a prompt of exactly TOKENS tokens
# (2000 by default), saves its KV state with `lem kv save`, then RUNS times measures
#
#   prefill: `lem generate --json -n 1`    ttft_ms = prefill the prompt + first new token
#   restore: `lem kv load --json -n 1`     ttft_ms = read + verify (sha256) + import the
#                                          snapshot from disk + first new token
#
# both measured inside the process from the start of the work (model loading excluded on
# both sides; the model fingerprint comes from the on-disk fingerprint cache, as it does
# after a model's first use). Prints the median of each and the speedup.
#
#   bench/kv_restore.sh                     # both models, 3 runs, 2 threads
#   RUNS=5 THREADS=4 TOKENS=4000 bench/kv_restore.sh smollm2-135m
#
# Needs a release build (cargo build --release -p lem-cli) and the models
# (lem models fetch all). Numbers are recorded in docs/kv-state.md.
set -euo pipefail
cd "$(dirname "$0")/.."
LEM=${LEM:-./target/release/lem}
RUNS=${RUNS:-3}
THREADS=${THREADS:-2}
TOKENS=${TOKENS:-2000}
MODELS=("$@")
[ ${#MODELS[@]} -gt 0 ] || MODELS=(smollm2-135m gemma3-270m)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

python3 - "$LEM" "$RUNS" "$THREADS" "$TOKENS" "$TMP" "${MODELS[@]}" <<'PY'
import json, os, statistics, subprocess, sys

lem, runs, threads, tokens, tmp, models = (sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]),
                                           sys.argv[5], sys.argv[6:])
words = ("the archive keeps letters about grain prices weather a dispute over a fence and a "
         "wedding in june while the river bends past the old mill and children count boats ").split()

def run(args):
    out = subprocess.run([lem] + args, check=True, capture_output=True, text=True).stdout
    return json.loads(out)

def count(model, n):
    text = " ".join(words[i % len(words)] for i in range(n))
    return len(run(["tokenize", "-m", model, "--bos", "--json", "--text", text])), text

for model in models:
    lo, hi = 1, 2 * tokens          # binary search: the most words with <= `tokens` tokens
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(model, mid)[0] <= tokens:
            lo = mid
        else:
            hi = mid - 1
    n, text = count(model, lo)
    snap = os.path.join(tmp, model + ".lemkv")
    common = ["-m", model, "-t", threads]
    saved = run(["kv", "save", "--json", "-p", text, "-o", snap] + common)
    gen = ["--temperature", "0", "-n", "1", "--json"] + common
    prefill, restore, read, same = [], [], [], True
    for _ in range(runs):
        g = run(["generate", "-p", text] + gen)
        r = run(["kv", "load", "-s", snap] + gen)
        prefill.append(g["timings"]["ttft_ms"])
        restore.append(r["timings"]["ttft_ms"])
        read.append(r["snapshot"]["restore_ms"])
        same &= g["ids"] == r["ids"]
    p, r, rd = statistics.median(prefill), statistics.median(restore), statistics.median(read)
    print(f"{model}: {n} tokens, snapshot {saved['file_bytes'] / 2**20:.1f} MiB, "
          f"prefill+first token {p:.0f} ms ({n / p * 1e3:.1f} tok/s), "
          f"restore+first token {r:.1f} ms (of which reading+verifying+importing {rd:.1f} ms), "
          f"speedup {p / r:.1f}x, same first token: {same}")
PY
