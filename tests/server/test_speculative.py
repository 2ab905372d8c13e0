"""Speculative decoding in the server (`lem serve --draft ...`): under continuous batching
with four concurrent streams, every reply equals plain decoding's, a request can opt out
with `"speculative": false`, and /metrics counts drafted and accepted tokens."""

import concurrent.futures as cf

import pytest
from openai import OpenAI

from conftest import MODEL, Server

PROMPTS = [
    "Repeat this shopping list exactly:\n1. apples\n2. bread\n3. milk\n4. carrots\n5. rice\n6. lemons",
    "Quote exactly: The lighthouse stood at the end of the rocky point, white and tall against the grey sky.",
    "Rename `total` to `sum` and write the function again:\ndef add_all(xs):\n    total = 0\n    for x in xs:\n        total = total + x\n    return total",
    "Tell me a short story about a lighthouse keeper.",
    "Fix the typos and write the sentence again: The cat sat on teh mat and lookd out of the windw.",
]


def client(server):
    return OpenAI(base_url=server.url + "/v1", api_key=server.api_key, max_retries=0, timeout=300)


def reply(server, prompt, speculative, stream, max_tokens=48):
    c = client(server)
    kw = dict(
        model=MODEL,
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        max_tokens=max_tokens,
        extra_body={"speculative": speculative},
    )
    if not stream:
        r = c.chat.completions.create(**kw)
        return r.choices[0].message.content, r.choices[0].finish_reason
    text, finish = "", None
    for chunk in c.chat.completions.create(stream=True, **kw):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    return text, finish


@pytest.fixture(scope="module", params=["ngram", "self-model"])
def spec_server(request, workdir):
    draft = "ngram" if request.param == "ngram" else MODEL
    s = Server(workdir, f"spec-{request.param}", "--draft", draft, "--max-concurrent", "4").start()
    yield s
    assert s.stop() == 0, s.tail()


def drafted(server):
    m = server.metrics()
    return m.get("lem_draft_tokens_total", 0), m.get("lem_draft_accepted_tokens_total", 0)


def test_concurrent_speculative_streams_equal_plain_decoding(spec_server):
    plain = [reply(spec_server, p, False, stream=False) for p in PROMPTS]
    before = drafted(spec_server)
    with cf.ThreadPoolExecutor(4) as pool:
        spec = list(pool.map(lambda p: reply(spec_server, p, True, stream=True), PROMPTS))
    after = drafted(spec_server)
    for p, a, b in zip(PROMPTS, plain, spec):
        assert b == a, f"{spec_server.name}: {p[:40]!r}: speculative {b!r} != plain {a!r}"
    assert after[0] > before[0], f"nothing drafted: {after}"
    assert 0 < after[1] - before[1] <= after[0] - before[0]


def test_opting_out_drafts_nothing(spec_server):
    before = drafted(spec_server)
    text, finish = reply(spec_server, PROMPTS[0], False, stream=False)
    assert text and finish in ("stop", "length")
    assert drafted(spec_server) == before
    # Other APIs take the same field.
    r = spec_server.post(
        "/v1/messages",
        json={"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": PROMPTS[0]}], "speculative": False},
    )
    assert r.status_code == 200, r.text
    r = spec_server.post(
        "/api/chat",
        json={"model": MODEL, "stream": False, "messages": [{"role": "user", "content": PROMPTS[0]}],
              "options": {"num_predict": 16, "speculative": False}},
    )
    assert r.status_code == 200, r.text
    assert drafted(spec_server) == before
    r = spec_server.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "speculative": "no"})
    assert r.status_code == 400, r.text


def test_a_draft_model_with_another_tokenizer_is_refused(workdir):
    s = Server(workdir, "spec-bad", "--draft", "gemma3-270m")
    with pytest.raises(RuntimeError) as e:
        s.start()
    assert "tokenizer differs" in str(e.value), str(e.value)
