"""Embeddings (`/v1/embeddings` with the official `openai` client, Ollama `/api/embed` and
`/api/embeddings`) and llama-server's `/tokenize` / `/detokenize`, on the suite's server."""

import base64
import math
import struct

GREEDY = {"temperature": 0, "seed": 1}


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def embed(oai, text_or_list, **kw):
    r = oai.embeddings.create(model="smollm2-135m", input=text_or_list, encoding_format="float", **kw)
    return r, [d.embedding for d in sorted(r.data, key=lambda d: d.index)]


def test_same_input_same_vector_normalised(oai):
    r, [a] = embed(oai, "The cat sat on the mat.")
    _, [b] = embed(oai, "The cat sat on the mat.")
    assert r.object == "list" and r.model == "smollm2-135m"
    assert r.data[0].object == "embedding" and r.data[0].index == 0
    assert len(a) == 576  # SmolLM2-135M's hidden size
    assert a == b
    assert abs(math.sqrt(sum(x * x for x in a)) - 1) < 1e-5
    assert abs(cosine(a, a) - 1) < 1e-9
    assert r.usage.prompt_tokens == r.usage.total_tokens > 0


def test_batch_equals_one_by_one(oai):
    texts = ["Hello there.", "A much longer sentence, so that the inputs differ in length a lot.", "x"]
    r, batch = embed(oai, texts)
    assert [d.index for d in r.data] == [0, 1, 2]
    alone = [embed(oai, t)[1][0] for t in texts]
    assert batch == alone
    assert r.usage.prompt_tokens == sum(embed(oai, t)[0].usage.prompt_tokens for t in texts)
    # Different texts give different vectors.
    assert cosine(batch[0], batch[1]) < 0.999
    assert cosine(batch[1], batch[2]) < 0.999


def test_paraphrase_is_closer_than_an_unrelated_text(oai):
    # Mean pooling on SmolLM2: margins of 0.1 to 0.3 on these triples.
    triples = [
        ("The cat sat on the mat.", "A cat was sitting on the mat.", "Stock markets fell sharply today."),
        ("How do I bake bread?", "What is the way to make bread at home?", "The train leaves at noon."),
        ("The weather is sunny and warm.", "It is a warm, sunny day.", "He plays the violin in an orchestra."),
        ("I lost my car keys.", "My car keys are missing.", "Photosynthesis converts light into energy."),
    ]
    for text, paraphrase, unrelated in triples:
        _, [a, p, u] = embed(oai, [text, paraphrase, unrelated])
        assert cosine(a, p) > cosine(a, u) + 0.05, (text, cosine(a, p), cosine(a, u))


def test_client_default_base64_and_raw_base64(oai, server):
    # The openai client asks for base64 by default and decodes it itself.
    decoded = oai.embeddings.create(model="smollm2-135m", input="base64 please").data[0].embedding
    floats = embed(oai, "base64 please")[1][0]
    raw = server.post("/v1/embeddings", {"input": "base64 please", "encoding_format": "base64"}).json()
    data = base64.b64decode(raw["data"][0]["embedding"])
    assert len(data) == 4 * len(floats)
    from_b64 = list(struct.unpack(f"<{len(floats)}f", data))
    # JSON carries each f32 in its shortest form: the same f32 bits.
    assert struct.pack(f"<{len(floats)}f", *floats) == data
    assert decoded == from_b64


def test_token_id_inputs_equal_text_inputs(oai, server):
    text = "Token ids in, vectors out."
    ids = server.post("/tokenize", {"content": text, "add_special": True}).json()["tokens"]
    _, [by_text] = embed(oai, text)
    _, [by_ids] = embed(oai, ids)
    _, both = embed(oai, [ids, ids[:3]])
    assert by_ids == by_text
    assert both[0] == by_text and both[1] != by_text


def test_dimensions_and_errors(oai, server):
    assert len(embed(oai, "ok", dimensions=576)[1][0]) == 576
    cases = [
        ({"input": "ok", "dimensions": 64}, "dimensions"),
        ({"input": ""}, "empty"),
        ({"input": []}, "empty"),
        ({"input": [1, 2, 999999]}, "999999"),
        ({"input": [[1], [-1]]}, "input[1][0]"),
        ({"input": {"text": "x"}}, "must be"),
        ({"input": "word " * 5000}, "context"),
        ({"input": "ok", "encoding_format": "binary"}, "binary"),
    ]
    for body, words in cases:
        r = server.post("/v1/embeddings", body)
        assert r.status_code == 400, (body, r.text)
        assert words in r.json()["error"]["message"], (body, r.text)
    r = server.post("/v1/embeddings", {"input": "ok", "model": "gpt-4"})
    assert r.status_code == 404


def test_ollama_embed_and_legacy(oai, server):
    _, want = embed(oai, ["first text", "second text"])
    r = server.post("/api/embed", {"model": "smollm2-135m", "input": ["first text", "second text"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "smollm2-135m"
    assert body["embeddings"] == want
    assert body["prompt_eval_count"] > 0
    one = server.post("/api/embed", {"model": "smollm2-135m", "input": "first text"}).json()
    assert one["embeddings"] == want[:1]
    legacy = server.post("/api/embeddings", {"model": "smollm2-135m", "prompt": "first text"}).json()
    assert legacy["embedding"] == want[0]
    assert server.post("/api/embed", {"input": [1, 2]}).status_code == 400


def test_tokenize_detokenize_round_trip(oai, server):
    prompt = "The capital of France is Paris, and the capital of Italy is Rome."
    with_bos = server.post("/tokenize", {"content": prompt, "add_special": True}).json()["tokens"]
    plain = server.post("/tokenize", {"content": prompt}).json()["tokens"]
    r = oai.completions.create(model="smollm2-135m", prompt=prompt, max_tokens=1, **GREEDY)
    assert r.usage.prompt_tokens == len(with_bos)
    assert with_bos[-len(plain):] == plain
    assert server.post("/detokenize", {"tokens": plain}).json()["content"] == prompt
    pieces = server.post("/tokenize", {"content": prompt, "with_pieces": True}).json()["tokens"]
    assert [p["id"] for p in pieces] == plain
    assert "".join(p["piece"] for p in pieces) == prompt
    r = server.post("/detokenize", {"tokens": [0, 10**9]})
    assert r.status_code == 400 and "tokens[1]" in r.json()["error"]["message"]
    assert server.post("/detokenize", {"tokens": ["a"]}).status_code == 400
    assert server.post("/tokenize", {"add_special": True}).status_code == 400


def test_embeddings_while_generating(oai, server):
    # An embedding request is answered while a long generation streams.
    stream = oai.chat.completions.create(
        model="smollm2-135m", messages=[{"role": "user", "content": "Write a long story."}],
        max_tokens=200, stream=True, **GREEDY,
    )
    chunks = iter(stream)
    next(chunks)
    _, [v] = embed(oai, "during generation")
    # The generation was still running when the embedding came back (it ran between steps).
    assert server.get("/health").json()["active"] == 1
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    _, [w] = embed(oai, "during generation")
    assert v == w
    assert len("".join(pieces)) > 0


def test_pooling_flag(workdir, server):
    import subprocess

    from conftest import LEM, Server

    # `first` pooling: a causal model's first token sees only itself, so texts that start
    # with the same token get the same vector, and differ from mean pooling.
    s = Server(workdir, "pool-first", "--pooling", "first", "--ctx-size", "64").start()
    try:
        texts = ["Hello world, how are you?", "Hello there, nice weather."]
        ids = [s.post("/tokenize", {"content": t, "add_special": True}).json()["tokens"] for t in texts]
        assert ids[0][0] == ids[1][0] and ids[0] != ids[1]
        first = s.post("/v1/embeddings", {"input": texts}).json()["data"]
        assert first[0]["embedding"] == first[1]["embedding"]
        mean = server.post("/v1/embeddings", {"input": texts}).json()["data"]
        assert mean[0]["embedding"] != mean[1]["embedding"]
        assert cosine(first[0]["embedding"], mean[0]["embedding"]) < 0.999
        # Over the context (64 here): a 400, except on Ollama's /api/embed, which cuts the
        # input to the context unless told not to.
        long = "word " * 100
        r = s.post("/v1/embeddings", {"input": long})
        assert r.status_code == 400 and "context of 64 tokens" in r.json()["error"]["message"], r.text
        assert s.post("/api/embed", {"input": long, "truncate": False}).status_code == 400
        cut = s.post("/api/embed", {"input": long}).json()
        assert cut["prompt_eval_count"] == 64 and len(cut["embeddings"][0]) == 576
    finally:
        assert s.stop() == 0, s.tail()
    bad = subprocess.run([LEM, "serve", "--pooling", "max"], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "max" in bad.stderr
