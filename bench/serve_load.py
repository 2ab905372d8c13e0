#!/usr/bin/env python3
"""Loopback load benchmark for `lem serve`: aggregate generation throughput at several
levels of concurrency.

For each level C, C client threads each send R streaming requests one after another
(bounded: C * R requests, each with at most --max-tokens tokens and a timeout) and the
level's aggregate throughput is the generated tokens (from the usage chunk) divided by
the level's wall time. Time to first token and inter-token latency are measured by the
clients. With --rounds N the levels are measured N times, interleaved, and the best
round of each level is reported (other load on the machine only ever slows a round).
Only the loopback address is ever contacted.

    python3 bench/serve_load.py                    # starts target/release/lem serve itself
    python3 bench/serve_load.py --url http://127.0.0.1:8080 --api-key KEY
    python3 bench/serve_load.py --levels 1,4,16 --requests 2 --max-tokens 48 --json out.json
    python3 bench/serve_load.py --endpoint completions --rounds 2   # short raw prompts: decode-bound

Standard library only.
"""

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TOPICS = [
    "a lighthouse keeper", "a lost robot", "the first snow of winter", "a desert caravan",
    "an old library", "a fox and a crow", "a city under the sea", "a clockmaker's apprentice",
    "a mountain railway", "a garden on the moon", "a ship in a storm", "a forgotten song",
    "a market at dawn", "a dragon who collects maps", "a quiet village", "a bridge of glass",
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_loopback(url):
    host = urllib.parse.urlparse(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit(f"serve_load: refusing to load {host}: loopback addresses only")


def start_server(lem, model, extra):
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="lem-bench-")
    log = open(os.path.join(workdir, "server.log"), "w")
    cmd = [lem, "serve", "--model", model, "--port", str(port), "--sessions-dir", os.path.join(workdir, "sessions")]
    proc = subprocess.Popen(cmd + extra, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"serve_load: server exited with {proc.returncode}; see {log.name}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    sys.exit("serve_load: server did not come up")


def stream_request(url, api_key, endpoint, prompt, max_tokens, seed, timeout):
    """One streaming request: (completion tokens, ttft s, inter-token gaps s, total s)."""
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    body = {
        "model": "default",
        "max_tokens": max_tokens,
        "temperature": 0.8,
        "seed": seed,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if endpoint == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    body = json.dumps(body)
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    start = time.perf_counter()
    path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
    conn.request("POST", path, body, headers)
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:200]!r}")
    ttft, last, gaps, tokens = None, None, [], None
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            break
        chunk = json.loads(data)
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        for c in chunk.get("choices", []):
            if c.get("delta", {}).get("content") or c.get("text"):
                now = time.perf_counter()
                if ttft is None:
                    ttft = now - start
                else:
                    gaps.append(now - last)
                last = now
    conn.close()
    if tokens is None:
        raise RuntimeError("stream ended without a usage chunk")
    return tokens, ttft or 0.0, gaps, time.perf_counter() - start


def run_level(url, api_key, endpoint, clients, requests, max_tokens, timeout):
    results, errors = [], []
    lock = threading.Lock()

    def client(i):
        for r in range(requests):
            topic = TOPICS[(i * requests + r) % len(TOPICS)]
            if endpoint == "chat":
                prompt = f"Write a long, detailed story about {topic}."
            else:
                prompt = f"Once upon a time, {topic}"
            try:
                out = stream_request(url, api_key, endpoint, prompt, max_tokens, seed=1000 * i + r, timeout=timeout)
                with lock:
                    results.append(out)
            except Exception as e:  # noqa: BLE001 - reported, not fatal
                with lock:
                    errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    tokens = sum(r[0] for r in results)
    gaps = [g for r in results for g in r[2]]
    return {
        "clients": clients,
        "requests": len(results),
        "errors": errors,
        "tokens": tokens,
        "wall_s": round(wall, 3),
        "aggregate_tok_s": round(tokens / wall, 2) if wall > 0 else 0.0,
        "per_client_tok_s": round(tokens / wall / clients, 2) if wall > 0 else 0.0,
        "ttft_p50_ms": round(1e3 * statistics.median([r[1] for r in results]), 1) if results else None,
        "token_gap_p50_ms": round(1e3 * statistics.median(gaps), 1) if gaps else None,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="a running server (loopback only); default: start one")
    ap.add_argument("--lem", default=os.path.join(ROOT, "target", "release", "lem"))
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--api-key")
    ap.add_argument("--levels", default="1,4,16")
    ap.add_argument("--endpoint", choices=["chat", "completions"], default="chat")
    ap.add_argument("--rounds", type=int, default=1, help="measure every level this many times; keep the best")
    ap.add_argument("--requests", type=int, default=2, help="requests per client per level")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("server_args", nargs="*", help="extra `lem serve` flags (after --)")
    a = ap.parse_args()

    proc = None
    url = a.url
    if url:
        check_loopback(url)
    else:
        proc, url = start_server(a.lem, a.model, a.server_args)
    try:
        # Warm up (first-use costs out of the measurement).
        stream_request(url, a.api_key, a.endpoint, "Hello", 4, 0, a.timeout)
        counts = [int(c) for c in a.levels.split(",")]
        rounds = [[run_level(url, a.api_key, a.endpoint, c, a.requests, a.max_tokens, a.timeout) for c in counts]
                  for _ in range(max(1, a.rounds))]
        levels = [max((rd[i] for rd in rounds), key=lambda r: (not r["errors"], r["aggregate_tok_s"]))
                  for i in range(len(counts))]
        for rd in rounds:
            for r in rd:
                if r["errors"]:
                    levels[[lv["clients"] for lv in levels].index(r["clients"])]["errors"] += r["errors"]
    finally:
        if proc:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    print(f"{'clients':>7} {'requests':>8} {'tokens':>7} {'wall s':>7} {'agg tok/s':>9} {'per client':>10} "
          f"{'ttft p50 ms':>11} {'gap p50 ms':>10}")
    for r in levels:
        print(f"{r['clients']:>7} {r['requests']:>8} {r['tokens']:>7} {r['wall_s']:>7.2f} {r['aggregate_tok_s']:>9.1f} "
              f"{r['per_client_tok_s']:>10.1f} {r['ttft_p50_ms'] or 0:>11.1f} {r['token_gap_p50_ms'] or 0:>10.1f}")
        for e in r["errors"]:
            print(f"  error: {e}")
    if len(levels) >= 2 and levels[0]["aggregate_tok_s"] > 0:
        for r in levels[1:]:
            print(f"{r['clients']} clients vs {levels[0]['clients']}: "
                  f"{r['aggregate_tok_s'] / levels[0]['aggregate_tok_s']:.2f}x aggregate throughput")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"endpoint": a.endpoint, "max_tokens": a.max_tokens, "requests_per_client": a.requests,
                       "rounds": rounds, "levels": levels}, f, indent=2)
    if any(r["errors"] for r in levels):
        sys.exit(1)


if __name__ == "__main__":
    main()
