#!/usr/bin/env python3
"""Plain against speculative decoding, alternating, on the same prompts.

For each model and drafter, runs every prompt of tests/fixtures/speculative/prompts.json
(an input-grounded set: quote, edit code, fix typos, fill a JSON record from a document,
summarise, extract; and an open-ended chat set) with `lem generate --json`, greedy,
plain and speculative in alternating order, PAIRS times, in fresh processes, and prints
per set the median over pairs of the aggregate decode speed (generated tokens over decode
time, summed over the set's prompts), the speed-up, the acceptance rate and the mean
tokens accepted per verification. Every speculative output is checked to equal the plain
one (it always must).

  bench/speculative.py [--model smollm2-135m --model gemma3-270m] [--draft ngram]
                       [--draft early-exit] [--draft MODEL] [--threads 2] [--pairs 5]
                       [--gen-tokens 128] [--draft-max 8] [--json]

Also printed per set: tokens per forward pass, and the same for a perfect prompt lookup
on the plain output (`lookup_bound`: the ceiling of any prompt-lookup drafter there).

Run from the repository root after `cargo build --release -p lem-cli`.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEM = os.path.join(ROOT, "target", "release", "lem")
PROMPTS = os.path.join(ROOT, "tests", "fixtures", "speculative", "prompts.json")


def generate(model, prompt, threads, gen_tokens, draft, draft_max=8):
    cmd = [LEM, "generate", "-m", model, "-t", str(threads), "-n", str(gen_tokens), "--temperature", "0",
           "--json", "-p", prompt["text"]]
    if prompt["form"] == "chat":
        cmd.append("--chat")
    if draft:
        cmd += ["--draft", draft, "--draft-max", str(draft_max)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def decode_seconds(g):
    """Decode time of a generation: tokens after the first over the decode rate."""
    n = len(g["ids"]) - 1
    rate = g["timings"]["decode_tok_s"]
    return n, (n / rate if rate > 0 else 0.0)


def lookup_bound(g, cap):
    """Tokens per forward pass that a perfect prompt lookup would reach on generation `g`:
    at each step it drafts the longest run (at most `cap`) of the tokens that actually
    follow which occurs verbatim anywhere in the context, and the verifier adds one. No
    prompt-lookup drafter can do better on the same output, whatever it matches on;
    the speed-up is at most this (verification is not free)."""
    ctx, rest = list(g["prompt_ids"]) + g["ids"][:1], g["ids"][1:]
    text = lambda seq: "," + ",".join(map(str, seq)) + ","
    forwards, i = 0, 0
    while i < len(rest):
        hay, k = text(ctx), 0
        while k < cap and i + k < len(rest) and text(rest[i : i + k + 1]) in hay:
            k += 1
        step = min(k + 1, len(rest) - i)
        ctx += rest[i : i + step]
        i += step
        forwards += 1
    return len(rest), forwards


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append")
    ap.add_argument("--draft", action="append")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--draft-max", type=int, default=8, help="lem's --draft-max (and the lookup bound's cap)")
    ap.add_argument("--only", choices=["grounded", "open"], help="one prompt set")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    models = a.model or ["smollm2-135m", "gemma3-270m"]
    drafts = a.draft or ["ngram"]
    prompts = json.load(open(PROMPTS))["prompts"]
    if a.only:
        prompts = [p for p in prompts if p["kind"] == a.only]
    results = []
    for model in models:
        for draft in drafts:
            # per set: per pair [plain tokens, plain seconds, spec tokens, spec seconds, drafted, accepted, verifies]
            sets = {}
            for pair in range(a.pairs):
                acc = {}
                for i, p in enumerate(prompts):
                    order = [None, draft] if (pair + i) % 2 == 0 else [draft, None]
                    got = {d: generate(model, p, a.threads, a.gen_tokens, d, a.draft_max) for d in order}
                    plain, spec = got[None], got[draft]
                    if plain["ids"] != spec["ids"]:
                        sys.exit(f"speculative.py: {model}/{draft}/{p['name']}: output differs from plain decoding")
                    row = acc.setdefault(p["kind"], [0, 0.0, 0, 0.0, 0, 0, 0, 0, 0, 0])
                    n, s = decode_seconds(plain)
                    row[0] += n
                    row[1] += s
                    n, s = decode_seconds(spec)
                    row[2] += n
                    row[3] += s
                    sp = spec["speculative"]
                    row[4] += sp["drafted"]
                    row[5] += sp["accepted"]
                    row[6] += sp["verify_steps"]
                    row[7] += sp["decode_steps"]
                    bound = lookup_bound(plain, a.draft_max)
                    row[8] += bound[0]
                    row[9] += bound[1]
                for kind, row in acc.items():
                    sets.setdefault(kind, []).append(row)
                print(f"# {model} {draft}: pair {pair + 1}/{a.pairs} done", file=sys.stderr)
            for kind, rows in sets.items():
                plain = statistics.median(r[0] / r[1] for r in rows if r[1] > 0)
                spec = statistics.median(r[2] / r[3] for r in rows if r[3] > 0)
                drafted, accepted, verifies, steps, b_tokens, b_forwards = (sum(r[j] for r in rows) for j in range(4, 10))
                res = {
                    "model": model,
                    "draft": draft,
                    "set": kind,
                    "prompts": sum(1 for p in prompts if p["kind"] == kind),
                    "pairs": len(rows),
                    "plain_tok_s": round(plain, 1),
                    "speculative_tok_s": round(spec, 1),
                    "speedup": round(spec / plain, 3),
                    "acceptance_rate": round(accepted / drafted, 3) if drafted else 0.0,
                    "mean_accepted_per_step": round(accepted / verifies, 2) if verifies else 0.0,
                    "tokens_per_forward": round(sum(r[2] for r in rows) / steps, 2) if steps else 0.0,
                    "lookup_bound_tokens_per_forward": round(b_tokens / b_forwards, 2) if b_forwards else 0.0,
                }
                results.append(res)
                if not a.json:
                    print(
                        f"{model:14} {draft:12} {kind:8} plain {plain:7.1f} tok/s  speculative {spec:7.1f} tok/s  "
                        f"{spec / plain:5.2f}x  acceptance {res['acceptance_rate']:.2f}  "
                        f"{res['mean_accepted_per_step']:.2f}/verify  {res['tokens_per_forward']:.2f} tok/forward "
                        f"(lookup bound {res['lookup_bound_tokens_per_forward']:.2f})  ({len(rows)} pairs, {res['prompts']} prompts)",
                        flush=True,
                    )
    if a.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
