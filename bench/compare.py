#!/usr/bin/env python3
"""lem against llama.cpp on the same GGUF file, prompt length and thread count.

Runs `lem bench` and the reference's `ref.py bench` alternately, PAIRS times each, in
fresh processes, and prints the medians, the min/median ratio of each (a bimodal
collapse shows as a low min), peak RSS, and the lem/llama.cpp ratios:

  bench/compare.py [--model smollm2-135m] [--threads 2] [--pairs 5]
                   [--prompt-tokens 512] [--gen-tokens 128] [--json] [--lem BINARY]

Prefill is measured on a PROMPT_TOKENS prompt; decode is GEN_TOKENS tokens after it;
time to first token is measured separately on an 8-token prompt. The reference is
llama.cpp through llama-cpp-python (../shared/tools/reference/install.sh); its peak RSS
is the child's ru_maxrss. Run from the repository root after `cargo build --release`.

Long prompts (e.g. --prompt-tokens 4096 --gen-tokens 128): both engines get a context of
PROMPT_TOKENS + GEN_TOKENS (rounded up to 256) when that exceeds 4096, lem through
`--ctx-size`, llama.cpp through the same measurement as `ref.py bench` (one `eval` of
the prompt, then one token at a time) with that `n_ctx` (ref.py's is fixed at 4096).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REF_DIR = os.path.join(os.path.dirname(ROOT), "shared", "tools", "reference")
LEM = os.path.join(ROOT, "target", "release", "lem")


# `ref.py bench` with a context of argv[5] tokens (ref.py's own is fixed at 4096).
REF_BENCH_LONG = r"""
import json, sys, time
import numpy as np
from llama_cpp import Llama
path, n_prompt, n_gen, threads, n_ctx = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
llm = Llama(model_path=path, n_ctx=n_ctx, verbose=False, logits_all=False, n_threads=threads, n_threads_batch=threads)
prompt = [100 + (i * 37) % 5000 for i in range(n_prompt)]
t = time.perf_counter()
llm.eval(prompt)
prefill = time.perf_counter() - t
t = time.perf_counter()
for _ in range(n_gen):
    logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
    llm.eval([int(np.argmax(logits))])
decode = time.perf_counter() - t
print(json.dumps({"prefill_tok_s": n_prompt / prefill, "decode_tok_s": n_gen / decode,
                  "prompt_tokens": n_prompt, "gen_tokens": n_gen}))
"""

# The context both engines get by default; longer runs get a larger one.
DEFAULT_CTX = 4096


def run_json(cmd):
    """Runs cmd in a fresh process; returns (parsed JSON of its last stdout line, peak RSS bytes)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the max over all children so far; report it only when it grew.
    return json.loads(out.strip().splitlines()[-1]), max(after, before) * 1024


def model_path(alias):
    if os.path.exists(alias):
        return alias
    subprocess.run([LEM, "models", "fetch", alias], check=True, capture_output=True)
    out = subprocess.run([LEM, "models", "list"], check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        f = line.split()
        if f and f[0] == alias:
            return f[-1]
    sys.exit(f"compare.py: unknown model {alias}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--lem", default=LEM, help="the lem binary (default target/release/lem)")
    a = ap.parse_args()
    py = subprocess.run(["bash", os.path.join(REF_DIR, "install.sh")], check=True, capture_output=True,
                        text=True).stdout.strip().splitlines()[-1]
    path = model_path(a.model)
    if a.prompt_tokens < 1 or a.gen_tokens < 1:
        sys.exit("compare.py: --prompt-tokens and --gen-tokens must be at least 1")
    need = a.prompt_tokens + a.gen_tokens
    ctx = DEFAULT_CTX if need <= DEFAULT_CTX else -(-need // 256) * 256
    rows = {"lem": [], "llama.cpp": []}
    ttft = {"lem": [], "llama.cpp": []}
    rss = {"lem": 0, "llama.cpp": 0}
    for i in range(a.pairs):
        for name in ("lem", "llama.cpp"):
            if name == "lem":
                cmd = [a.lem, "bench", "-m", path, "--prompt-tokens", str(a.prompt_tokens), "--gen-tokens",
                       str(a.gen_tokens), "--threads", str(a.threads), "--json"]
                if ctx != DEFAULT_CTX:
                    cmd += ["--ctx-size", str(ctx)]
                short = [a.lem, "bench", "-m", path, "--prompt-tokens", "8", "--gen-tokens", "1", "--threads",
                         str(a.threads), "--json"]
            else:
                ref = os.path.join(REF_DIR, "ref.py")
                cmd = [py, ref, "bench", path, str(a.prompt_tokens), str(a.gen_tokens), str(a.threads)]
                if ctx != DEFAULT_CTX:
                    cmd = [py, "-c", REF_BENCH_LONG, path, str(a.prompt_tokens), str(a.gen_tokens), str(a.threads),
                           str(ctx)]
                short = [py, ref, "bench", path, "8", "1", str(a.threads)]
            r, peak = run_json(cmd)
            rows[name].append(r)
            rss[name] = r.get("peak_rss_bytes", peak) if name == "lem" else peak
            s, _ = run_json(short)
            ttft[name].append(8 / s["prefill_tok_s"] * 1000.0)
            print(f"pair {i + 1} {name}: prefill {r['prefill_tok_s']:.1f} tok/s, decode {r['decode_tok_s']:.1f} tok/s",
                  file=sys.stderr)

    def stats(name, key):
        v = [r[key] for r in rows[name]]
        return statistics.median(v), min(v)

    out = {"model": os.path.basename(path), "threads": a.threads, "pairs": a.pairs,
           "prompt_tokens": a.prompt_tokens, "gen_tokens": a.gen_tokens}
    for name in rows:
        p_med, p_min = stats(name, "prefill_tok_s")
        d_med, d_min = stats(name, "decode_tok_s")
        out[name] = {"prefill_tok_s": p_med, "prefill_min": p_min, "decode_tok_s": d_med, "decode_min": d_min,
                     "ttft_ms_8tok": statistics.median(ttft[name]), "peak_rss_bytes": rss[name]}
    out["ratio_prefill"] = out["lem"]["prefill_tok_s"] / out["llama.cpp"]["prefill_tok_s"]
    out["ratio_decode"] = out["lem"]["decode_tok_s"] / out["llama.cpp"]["decode_tok_s"]
    if a.json:
        print(json.dumps(out))
        return
    print(f"{out['model']}, {a.threads} threads, {a.pairs} pairs, prefill {a.prompt_tokens} tok, "
          f"decode {a.gen_tokens} tok after it")
    print("| engine | prefill tok/s (median / min) | decode tok/s (median / min) | TTFT 8-tok prompt | peak RSS |")
    print("|---|---|---|---|---|")
    for name in rows:
        o = out[name]
        print(f"| {name} | {o['prefill_tok_s']:.1f} / {o['prefill_min']:.1f} | {o['decode_tok_s']:.1f} / "
              f"{o['decode_min']:.1f} | {o['ttft_ms_8tok']:.1f} ms | {o['peak_rss_bytes'] / 2**20:.0f} MiB |")
    print(f"ratio lem/llama.cpp: prefill {out['ratio_prefill']:.2f}, decode {out['ratio_decode']:.2f}")


if __name__ == "__main__":
    main()
