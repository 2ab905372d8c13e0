"""Gemma 3's on-disk prefix cache with a prompt longer than its sliding window (512 + one
batch): the server stores blocks as its prefill passes them, so a restarted server with
the same `--prefix-cache-dir` reuses the whole shared prefix, and the greedy answer is the
one of a server without the cache. (Needs `lem models fetch gemma3-270m`.)"""

import pytest

from conftest import Server

MODEL = "gemma3-270m"
BLOCK = 64

# A long shared "system prompt": varied sentences, so the text is ~2,400 tokens.
FACTS = [
    "The lighthouse keeper logs the weather at dawn",
    "Copper wire carries the signal to the harbour office",
    "A blue ledger records every ship that passes the cape",
    "Fishermen mend their nets on the northern pier",
    "The ferry leaves at nine and returns at four",
    "Gulls nest on the cliffs above the old fort",
    "The museum keeps a brass telescope from the last century",
    "Winter storms close the coastal road for days",
]
SYSTEM = "You answer questions about the town of Saltmere.\n" + "\n".join(
    f"Fact {i}: {FACTS[i % len(FACTS)]}, according to record {i * 7 + 3}." for i in range(98)
)


def complete(server, question):
    r = server.post("/v1/completions", {
        "model": MODEL, "prompt": f"{SYSTEM}\n\nQuestion: {question}\nAnswer:", "max_tokens": 12,
        "temperature": 0, "seed": 1,
    })
    assert r.status_code == 200, r.text
    return r.json()


def tokens(server, question):
    body = {"content": f"{SYSTEM}\n\nQuestion: {question}\nAnswer:", "add_special": True}
    return server.post("/tokenize", body).json()["tokens"]


@pytest.fixture(scope="module")
def gemma(workdir):
    servers = []

    def make(name, *extra):
        s = Server(workdir, name, *extra, model=MODEL).start()
        servers.append(s)
        return s

    yield make
    for s in servers:
        assert s.stop() == 0, s.tail()


def test_long_prompt_reused_across_restart(gemma, workdir):
    cache_dir = workdir / "gemma-prefix-cache"
    a, b = "Where do gulls nest?", "When does the ferry leave?"
    cached = gemma("gemma-cached", "--prefix-cache-dir", str(cache_dir))
    ta, tb = tokens(cached, a), tokens(cached, b)
    shared = next(i for i, (x, y) in enumerate(zip(ta, tb)) if x != y)
    assert shared > 2000, f"the shared prefix is only {shared} tokens"
    first = complete(cached, a)
    assert first["usage"]["prompt_tokens"] == len(ta)
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0

    cached.restart()
    second = complete(cached, b)
    assert second["usage"]["prompt_tokens"] == len(tb)
    reused = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert reused >= shared // BLOCK * BLOCK, f"reused {reused} of {shared} shared tokens"
    assert reused <= shared
    # The restarted process found the blocks (its memory tier started empty: they came from disk).
    assert cached.metrics()["lem_prefix_cache_reused_tokens_total"] == reused

    # A server without the disk cache computes everything, and answers the same.
    plain = gemma("gemma-plain")
    want = complete(plain, b)
    assert want["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert second["choices"][0]["text"] == want["choices"][0]["text"]
    again = complete(plain, a)
    assert again["choices"][0]["text"] == first["choices"][0]["text"]
