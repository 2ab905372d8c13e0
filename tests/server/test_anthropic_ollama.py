"""Anthropic Messages through the official `anthropic` package; Ollama's API through
requests (NDJSON) and curl."""

import json
import subprocess

import pytest


def test_messages_non_streaming(claude):
    m = claude.messages.create(
        model="smollm2-135m",
        max_tokens=12,
        system="You are brief.",
        messages=[{"role": "user", "content": "Name a fruit."}],
        # Sampling fields are not parameters of this SDK version: they travel in the body.
        extra_body={"temperature": 0},
    )
    assert m.type == "message" and m.role == "assistant"
    assert m.content[0].type == "text" and m.content[0].text
    assert m.stop_reason in ("end_turn", "max_tokens")
    assert m.usage.output_tokens > 0 and m.usage.input_tokens >= 0


def test_messages_streaming(claude):
    kw = dict(model="default", max_tokens=12, extra_body={"temperature": 0},
              messages=[{"role": "user", "content": [{"type": "text", "text": "Say something nice."}]}])
    whole = claude.messages.create(**kw).content[0].text
    with claude.messages.stream(**kw) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == whole
    assert final.content[0].text == whole
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert final.usage.output_tokens > 0


def test_messages_stop_sequence(claude):
    kw = dict(model="default", max_tokens=24, extra_body={"temperature": 0}, messages=[{"role": "user", "content": "List three animals."}])
    words = claude.messages.create(**kw).content[0].text.split()
    assert len(words) >= 3
    m = claude.messages.create(stop_sequences=[words[2]], **kw)
    assert m.stop_reason == "stop_sequence"
    assert m.stop_sequence == words[2]


def test_messages_errors(claude, server):
    import anthropic

    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(model="claude-opus-9", max_tokens=4, messages=[{"role": "user", "content": "x"}])
    bad = anthropic.Anthropic(base_url=server.url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model="default", max_tokens=4, messages=[{"role": "user", "content": "x"}])


def test_ollama_chat_stream_and_not(server):
    body = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "Name a planet."}],
            "options": {"temperature": 0, "num_predict": 10}}
    r = server.post("/api/chat", body)
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert all(not line["done"] for line in lines[:-1]) and lines[-1]["done"]
    assert lines[-1]["done_reason"] in ("stop", "length")
    assert lines[-1]["eval_count"] > 0 and lines[-1]["prompt_eval_count"] > 0
    streamed = "".join(line["message"]["content"] for line in lines)
    whole = server.post("/api/chat", {**body, "stream": False}).json()
    assert whole["done"] is True
    assert whole["message"]["content"] == streamed


def test_ollama_generate_and_tags(server):
    r = server.post("/api/generate", {"model": "smollm2-135m:latest", "prompt": "Why is grass green?", "stream": False,
                                      "options": {"temperature": 0, "num_predict": 8}})
    assert r.status_code == 200, r.text
    assert r.json()["response"] and r.json()["done"]
    raw = server.post("/api/generate", {"prompt": "Once upon a time", "raw": True, "options": {"num_predict": 5, "seed": 3}})
    assert json.loads(raw.text.splitlines()[-1])["done"]
    tags = server.get("/api/tags").json()
    assert tags["models"][0]["name"] == "smollm2-135m"


def curl(server, *args):
    cmd = ["curl", "-sS", "--max-time", "300", "-H", f"Authorization: Bearer {server.api_key}", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def test_curl_chat_stream_and_ollama(server):
    body = json.dumps({"model": "default", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "stream": True})
    out = curl(server, "-N", "-d", body, server.url + "/v1/chat/completions")
    assert out.rstrip().endswith("data: [DONE]")
    chunks = [json.loads(line[6:]) for line in out.splitlines() if line.startswith("data: {")]
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    out = curl(server, "-d", json.dumps({"messages": [{"role": "user", "content": "Hi"}], "options": {"num_predict": 3}}),
               server.url + "/api/chat")
    assert json.loads(out.splitlines()[-1])["done"] is True
    out = curl(server, server.url + "/v1/models")
    assert json.loads(out)["data"][0]["id"] == "smollm2-135m"
