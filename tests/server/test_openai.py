"""OpenAI API through the official `openai` package (and raw HTTP where framing matters)."""

import json
import subprocess

from conftest import LEM, MODEL, sse_events

GREEDY = {"temperature": 0, "seed": 1}


def test_models(oai, server):
    models = oai.models.list()
    ids = [m.id for m in models.data]
    assert ids == ["smollm2-135m"]
    assert oai.models.retrieve("smollm2-135m").id == "smollm2-135m"


def test_chat_non_streaming(oai):
    r = oai.chat.completions.create(
        model="smollm2-135m",
        messages=[{"role": "system", "content": "You are brief."}, {"role": "user", "content": "Name a colour."}],
        max_tokens=12,
        **GREEDY,
    )
    assert r.object == "chat.completion"
    assert r.model == "smollm2-135m"
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0
    assert 0 < r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.prompt_tokens_details.cached_tokens < r.usage.prompt_tokens


def test_shared_prefix_is_reused(oai, server):
    # Two prompts sharing a long prefix: the second reports the shared part (at least its
    # whole 64-token blocks) as cached, and its answer is what a cold server computes.
    prefix = "Reference notes. " + " ".join(f"Item {i} is stored in bin {i * 13 % 97}." for i in range(60))
    a, b = f"{prefix}\nQuestion: where is item 5?\nAnswer:", f"{prefix}\nQuestion: where is item 9?\nAnswer:"
    ta = server.post("/tokenize", {"content": a, "add_special": True}).json()["tokens"]
    tb = server.post("/tokenize", {"content": b, "add_special": True}).json()["tokens"]
    shared = next(i for i, (x, y) in enumerate(zip(ta, tb)) if x != y)
    assert shared >= 256, shared
    first = oai.completions.create(model="default", prompt=a, max_tokens=4, **GREEDY)
    assert first.usage.prompt_tokens == len(ta)
    second = oai.completions.create(model="default", prompt=b, max_tokens=4, **GREEDY)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert shared // 64 * 64 <= cached <= shared, (cached, shared)
    want = lem_generate("-p", b, "-n", "4")
    assert second.choices[0].text == want["text"]


def test_chat_streaming_matches_non_streaming(oai):
    kw = dict(model="default", messages=[{"role": "user", "content": "Count from one to five."}], max_tokens=16, **GREEDY)
    whole = oai.chat.completions.create(**kw).choices[0].message.content
    stream = oai.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw)
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                pieces.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
    assert "".join(pieces) == whole
    assert finish in ("stop", "length")
    assert usage is not None and usage.completion_tokens > 0


def test_chat_template_kwargs_accepted(oai):
    # SmolLM2's template reads no variables: the same prompt with and without them.
    kw = dict(model="default", messages=[{"role": "user", "content": "hi"}], max_tokens=1, **GREEDY)
    plain = oai.chat.completions.create(**kw)
    extra = oai.chat.completions.create(extra_body={"chat_template_kwargs": {"enable_thinking": False}}, **kw)
    assert extra.usage.prompt_tokens == plain.usage.prompt_tokens
    assert extra.choices[0].message.content == plain.choices[0].message.content


def test_sampling_parameters(oai):
    base = dict(model="smollm2-135m", messages=[{"role": "user", "content": "Tell me a short story."}],
                max_completion_tokens=16)
    greedy = oai.chat.completions.create(temperature=0, **base).choices[0].message.content

    def sample(seed, temperature=1.0, **extra):
        r = oai.chat.completions.create(temperature=temperature, seed=seed, **base, **extra)
        return r.choices[0].message.content

    # top_k 1 (and a vanishing top_p) leave only the most likely token: greedy, whatever the seed.
    for seed in (1, 2, 3):
        assert sample(seed, extra_body={"top_k": 1}) == greedy
        assert sample(seed, top_p=1e-6) == greedy
    # Temperature 1 samples: seeds give different stories, not the greedy one.
    texts = [sample(seed) for seed in (1, 2, 3, 4)]
    assert len(set(texts)) >= 3, texts
    assert any(t != greedy for t in texts)
    # The same seed gives the same text, penalties included.
    kw = dict(temperature=0.9, top_p=0.9, presence_penalty=0.5, frequency_penalty=0.5)
    assert sample(42, **kw) == sample(42, **kw)
    # A stop string ends the text just before its first occurrence.
    words = greedy.split()
    assert len(words) >= 4, greedy
    stop = " " + words[3]
    cut = oai.chat.completions.create(temperature=0, stop=[stop], **base)
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == greedy[: greedy.index(stop)]


def test_stop_strings(oai):
    kw = dict(model="default", messages=[{"role": "user", "content": "List three animals."}], max_tokens=24, **GREEDY)
    full = oai.chat.completions.create(**kw).choices[0].message.content
    words = full.split()
    assert len(words) >= 3, full
    stop = words[2]
    cut = oai.chat.completions.create(stop=[stop], **kw)
    text = cut.choices[0].message.content
    assert stop not in text
    assert full.startswith(text)
    assert cut.choices[0].finish_reason == "stop"


def test_logprobs(oai):
    r = oai.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=4,
        logprobs=True,
        top_logprobs=3,
        **GREEDY,
    )
    content = r.choices[0].logprobs.content
    assert 1 <= len(content) <= 4
    for t in content:
        assert t.logprob <= 0
        assert len(t.top_logprobs) == 3
        # Greedy: the chosen token is the most likely one.
        assert abs(t.top_logprobs[0].logprob - t.logprob) < 1e-5
        assert bytes(t.bytes).decode("utf-8", "replace") == t.token


def test_completions(oai):
    r = oai.completions.create(model="smollm2-135m", prompt="The capital of France is", max_tokens=8, logprobs=2, **GREEDY)
    assert r.object == "text_completion"
    c = r.choices[0]
    assert c.text
    assert len(c.logprobs.tokens) == len(c.logprobs.token_logprobs) == len(c.logprobs.top_logprobs)
    stream = oai.completions.create(model="smollm2-135m", prompt="The capital of France is", max_tokens=8, stream=True, **GREEDY)
    assert "".join(ch.choices[0].text for ch in stream if ch.choices) == c.text


def test_raw_sse_framing(server):
    r = server.post(
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 6, "stream": True,
         "stream_options": {"include_usage": True}, "seed": 7},
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == (None, "[DONE]")
    chunks = [json.loads(d) for _, d in events[:-1]]
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finishes) == 1
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0


def lem_generate(*args):
    out = subprocess.run([LEM, "generate", "--model", MODEL, "--temperature", "0", "--json", *args],
                         check=True, capture_output=True, text=True, timeout=300)
    return json.loads(out.stdout)


def test_greedy_equals_lem_generate(oai):
    prompt = "The three primary colours are"
    want = lem_generate("-p", prompt, "-n", "24")
    got = oai.completions.create(model="smollm2-135m", prompt=prompt, max_tokens=24, temperature=0, seed=5)
    assert got.choices[0].text == want["text"]
    assert got.usage.completion_tokens == len(want["ids"])

    question = "Why is the sky blue?"
    want = lem_generate("--chat", "-p", question, "-n", "24")
    got = oai.chat.completions.create(model="smollm2-135m", messages=[{"role": "user", "content": question}],
                                      max_tokens=24, temperature=0)
    assert got.choices[0].message.content == want["text"]
    assert got.usage.prompt_tokens == len(want["prompt_ids"])
