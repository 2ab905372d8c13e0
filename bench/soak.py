#!/usr/bin/env python3
"""Soak a running `lem serve` from loopback clients and check every answer.

    python3 bench/soak.py --url http://127.0.0.1:8080 --api-key KEY --minutes 10 \
        [--clients 24] [--sessions 100] [--pid PID] [--json]

Each client loops over a mix of requests: OpenAI chat (plain, streamed, streamed and
dropped after three chunks), completions, Anthropic messages (plain and streamed),
Ollama chat and generate, embeddings, tokenize, session turns over `--sessions` names
with forks and deletions, malformed JSON, oversized bodies and unknown models. Each
answer is checked: the status is the one documented for that request, error bodies are
JSON error objects, streams end with their end marker. With `--pid`, the server's
resident memory is sampled every second. Prints (or with --json writes) the counts by
kind and outcome, the problems found, and the memory curve; exit status 1 on any problem.

tests/server/test_soak.py runs this for 60 seconds in CI; run it longer by hand.
"""

import argparse
import json
import random
import threading
import time
from collections import Counter

import requests

PROMPTS = [
    "Say hello.",
    "Name a fruit.",
    "Count to three.",
    "What colour is the sky?",
    "Write one word.",
]


def rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Soak:
    def __init__(self, args):
        self.url = args.url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        self.model = args.model
        self.sessions = args.sessions
        self.only = set(args.only.split(",")) if args.only else None
        self.max_turns = args.max_turns
        self.turns = Counter()
        self.deadline = time.monotonic() + args.minutes * 60
        self.counts = Counter()
        self.problems = []
        self.lock = threading.Lock()

    def record(self, kind, outcome, problem=None):
        with self.lock:
            self.counts[(kind, outcome)] += 1
            if problem and len(self.problems) < 50:
                self.problems.append(f"{kind}: {problem}")

    def post(self, path, body=None, data=None, stream=False, timeout=120):
        h = dict(self.headers)
        h["Content-Type"] = "application/json"
        return requests.post(
            self.url + path,
            json=body if data is None else None,
            data=data,
            headers=h,
            stream=stream,
            timeout=timeout,
        )

    def check_error(self, kind, r, statuses):
        if r.status_code not in statuses:
            self.record(kind, f"status {r.status_code}", f"expected {statuses}, got {r.status_code}: {r.text[:200]}")
            return
        try:
            e = r.json()
            assert "error" in e or e.get("type") == "error"
        except Exception:
            self.record(kind, "bad error body", f"{r.status_code} error body is not a JSON error: {r.text[:200]}")
            return
        self.record(kind, f"refused {r.status_code}")

    def answered(self, kind, r):
        """True for a 200; records anything else (429, a full queue, is documented)."""
        if r.status_code == 429:
            self.check_error(kind, r, {429})
        elif r.status_code != 200:
            self.record(kind, f"status {r.status_code}", r.text[:200])
        return r.status_code == 200

    def ok_json(self, kind, r, check):
        if not self.answered(kind, r):
            return
        try:
            v = r.json()
            problem = check(v)
        except Exception as e:  # noqa: BLE001 (any failure to parse is a problem)
            problem = f"{type(e).__name__}: {e}"
        self.record(kind, "ok" if not problem else "bad", problem)

    def sse(self, kind, r, end, drop_after=None):
        if not self.answered(kind, r):
            return
        chunks, ended = 0, False
        for line in r.iter_lines():
            if not line:
                continue
            chunks += 1
            if drop_after is not None and chunks >= drop_after:
                r.close()
                self.record(kind, "dropped")
                return
            if end(line.decode("utf-8", "replace")):
                ended = True
        self.record(kind, "ok" if ended else "bad", None if ended else "the stream ended without its end marker")

    # --- the request kinds ---------------------------------------------------------

    def chat(self, rng):
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
            "max_tokens": rng.randint(1, 12),
            "temperature": rng.choice([0, 0.7]),
            "seed": rng.randint(0, 9),
        }
        self.ok_json("chat", self.post("/v1/chat/completions", body), lambda v: None if v["choices"][0]["message"]["role"] == "assistant" else v)

    def chat_stream(self, rng, drop=False):
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
            "max_tokens": 24 if drop else rng.randint(1, 12),
            "stream": True,
        }
        r = self.post("/v1/chat/completions", body, stream=True)
        self.sse("chat_stream_dropped" if drop else "chat_stream", r, lambda l: l == "data: [DONE]", 3 if drop else None)

    def completion(self, rng):
        body = {"model": self.model, "prompt": rng.choice(PROMPTS), "max_tokens": rng.randint(1, 8)}
        self.ok_json("completion", self.post("/v1/completions", body), lambda v: None if "text" in v["choices"][0] else v)

    def anthropic(self, rng):
        body = {"model": self.model, "max_tokens": rng.randint(1, 8), "messages": [{"role": "user", "content": rng.choice(PROMPTS)}]}
        if rng.random() < 0.5:
            body["stream"] = True
            self.sse("anthropic_stream", self.post("/v1/messages", body, stream=True), lambda l: "message_stop" in l)
        else:
            self.ok_json("anthropic", self.post("/v1/messages", body), lambda v: None if v["type"] == "message" else v)

    def ollama(self, rng):
        if rng.random() < 0.5:
            body = {"model": self.model, "messages": [{"role": "user", "content": rng.choice(PROMPTS)}], "stream": False, "options": {"num_predict": 4}}
            self.ok_json("ollama_chat", self.post("/api/chat", body), lambda v: None if v["done"] else v)
        else:
            body = {"model": self.model, "prompt": rng.choice(PROMPTS), "options": {"num_predict": 4}}
            r = self.post("/api/generate", body, stream=True)
            self.sse("ollama_generate", r, lambda l: json.loads(l).get("done") is True)

    def embed(self, rng):
        body = {"model": self.model, "input": [rng.choice(PROMPTS) for _ in range(rng.randint(1, 3))]}
        self.ok_json("embeddings", self.post("/v1/embeddings", body), lambda v: None if len(v["data"]) == len(body["input"]) else v)

    def tokenize(self, rng):
        self.ok_json("tokenize", self.post("/tokenize", {"content": rng.choice(PROMPTS)}), lambda v: None if v["tokens"] else v)

    def session_turn(self, rng):
        name = f"soak-{rng.randrange(self.sessions)}"
        with self.lock:
            self.turns[name] += 1
            restart = self.max_turns and self.turns[name] > self.max_turns
            if restart:
                self.turns[name] = 1
        if restart:
            # Conversations end: a session past --max-turns starts over, so the traffic
            # reaches a steady state instead of every session growing to the context.
            r = requests.delete(f"{self.url}/v1/sessions/{name}", headers=self.headers, timeout=60)
            if r.status_code not in (200, 204):
                self.check_error("session_delete", r, {404, 409})
        body = {
            "model": self.model,
            "session": name,
            "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
            "max_tokens": rng.randint(1, 6),
        }
        r = self.post("/v1/chat/completions", body)
        if r.status_code == 409:
            # Another client is using the session right now: documented.
            self.check_error("session_turn", r, {409})
        else:
            self.ok_json("session_turn", r, lambda v: None)

    def session_admin(self, rng):
        name = f"soak-{rng.randrange(self.sessions)}"
        if rng.random() < 0.5:
            r = self.post(f"/v1/sessions/{name}/fork", {"name": f"{name}-fork"})
            if r.status_code in (201, 200):
                self.record("session_fork", "ok")
                requests.delete(f"{self.url}/v1/sessions/{name}-fork", headers=self.headers, timeout=60)
            else:
                self.check_error("session_fork", r, {404, 409})
        else:
            r = requests.delete(f"{self.url}/v1/sessions/{name}", headers=self.headers, timeout=60)
            if r.status_code in (200, 204):
                self.record("session_delete", "ok")
            else:
                self.check_error("session_delete", r, {404, 409})

    def malformed(self, rng):
        data = rng.choice([b"{", b"[]", b'{"messages": 3}', b'{"messages": [{"role": "wizard", "content": "x"}]}', b"\xff\xfe"])
        self.check_error("malformed", self.post("/v1/chat/completions", data=data), {400, 422})

    def oversized(self, rng):
        data = b'{"prompt": "' + b"a" * (3 << 20) + b'"}'
        self.check_error("oversized", self.post("/v1/completions", data=data), {413})

    def unknown_model(self, rng):
        body = {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}
        self.check_error("unknown_model", self.post("/v1/chat/completions", body), {404})

    def client(self, seed):
        rng = random.Random(seed)
        kinds = [
            (self.chat, 4), (lambda r: self.chat_stream(r), 3), (lambda r: self.chat_stream(r, drop=True), 1),
            (self.completion, 2), (self.anthropic, 2), (self.ollama, 2), (self.embed, 1), (self.tokenize, 1),
            (self.session_turn, 4), (self.session_admin, 1), (self.malformed, 1), (self.oversized, 0.2),
            (self.unknown_model, 0.5),
        ]
        if self.only:
            kinds = [(f, w) for f, w in kinds if getattr(f, "__name__", "") in self.only]
        fns, weights = zip(*kinds)
        while time.monotonic() < self.deadline:
            fn = rng.choices(fns, weights)[0]
            try:
                fn(rng)
            except requests.RequestException as e:
                self.record(getattr(fn, "__name__", "request"), "transport error", f"{type(e).__name__}: {e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--api-key")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--minutes", type=float, default=1.0)
    ap.add_argument("--clients", type=int, default=24)
    ap.add_argument("--sessions", type=int, default=100)
    ap.add_argument("--max-turns", type=int, default=8, help="turns after which a session starts over (0: never)")
    ap.add_argument("--pid", type=int, help="the server's pid, to sample its resident memory")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only", help="comma-separated request kinds (method names: chat, completion, session_turn, ...)")
    ap.add_argument("--json", help="write the report to this file")
    args = ap.parse_args()

    soak = Soak(args)
    start = time.monotonic()
    memory = []
    threads = [threading.Thread(target=soak.client, args=(args.seed * 1000 + i,), daemon=True) for i in range(args.clients)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        if args.pid:
            m = rss_mib(args.pid)
            if m is not None:
                memory.append((round(time.monotonic() - start, 1), round(m, 1)))
        time.sleep(1)
    for t in threads:
        t.join()
    # The queue drains: nothing active or waiting once every client has stopped.
    health = None
    for _ in range(60):
        health = requests.get(f"{soak.url}/health", headers=soak.headers, timeout=30).json()
        if health.get("active", 0) == 0 and health.get("queued", 0) == 0:
            break
        time.sleep(0.5)
    else:
        soak.problems.append(f"the queue did not drain: {health}")
    by_kind = Counter()
    for (kind, _), n in soak.counts.items():
        by_kind[kind] += n
    report = {
        "seconds": round(time.monotonic() - start, 1),
        "requests": sum(soak.counts.values()),
        "by_kind": dict(sorted(by_kind.items())),
        "outcomes": {f"{k} {o}": n for (k, o), n in sorted(soak.counts.items())},
        "problems": soak.problems,
        "health": health,
        "memory_mib": memory,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    print(f"{report['requests']} requests in {report['seconds']} s")
    for k, n in report["outcomes"].items():
        print(f"  {k}: {n}")
    if memory:
        print(f"  resident MiB: first {memory[0][1]}, max {max(m for _, m in memory)}, last {memory[-1][1]}")
    for p in soak.problems:
        print(f"  PROBLEM {p}")
    raise SystemExit(1 if soak.problems else 0)


if __name__ == "__main__":
    main()
