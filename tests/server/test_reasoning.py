"""Reasoning (`<think>...</think>`) on SmolLM2 with a thinking test template
(fixtures/think.jinja, given with --chat-template-file): servers in each `--reasoning`
mode (capture, show, hide) and the per-request overrides, on OpenAI
(`reasoning_content`, streamed too; a regex forces `<think>...</think>answer`),
Anthropic (`thinking` blocks, `thinking_delta`) and Ollama (`message.thinking`)."""

import json
import pathlib
import re

import pytest

from conftest import Server

TEMPLATE = pathlib.Path(__file__).parent / "fixtures" / "think.jinja"
ASK = [{"role": "user", "content": "Is the sky blue? Think first."}]
# The model writes the whole block (think_in_prompt=false), or the template opened it.
CASES = [
    ({"think_in_prompt": False}, r"<think>[a-z ]{4,40}</think>[A-Za-z ]{4,40}"),
    ({}, r"[a-z ]{4,40}</think>[A-Za-z ]{4,40}"),
]


def start(workdir, mode):
    return Server(workdir, f"think-{mode}", "--chat-template-file", str(TEMPLATE), "--reasoning", mode).start()


@pytest.fixture(scope="module")
def servers(workdir):
    started = {}
    try:
        for mode in ("capture", "show", "hide"):
            started[mode] = start(workdir, mode)
        yield started
    finally:
        for s in started.values():
            assert s.stop() == 0


def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key=server.api_key, max_retries=0, timeout=300)


def split(raw):
    """The reasoning and the answer of a raw reply, as the server should split them."""
    body = raw[len("<think>"):] if raw.startswith("<think>") else raw
    reasoning, _, answer = body.partition("</think>")
    return reasoning, answer.lstrip()


def chat(server, kwargs, regex, **extra):
    msg = client(server).chat.completions.create(
        model="default", messages=ASK, temperature=0, max_tokens=100,
        extra_body={"regex": regex, "chat_template_kwargs": kwargs, **extra}).choices[0].message
    return msg.content, getattr(msg, "reasoning_content", None)


@pytest.mark.parametrize("kwargs,regex", CASES)
def test_openai_three_modes(servers, kwargs, regex):
    raw, none = chat(servers["capture"], kwargs, regex, reasoning_format="show")
    assert none is None and re.fullmatch(regex, raw), raw
    reasoning, answer = split(raw)
    assert reasoning and answer
    # Capture (the server's mode, and per request), hide, show: by flag and by request.
    assert chat(servers["capture"], kwargs, regex) == (answer, reasoning)
    assert chat(servers["hide"], kwargs, regex, reasoning_format="capture") == (answer, reasoning)
    assert chat(servers["capture"], kwargs, regex, reasoning_format="hide") == (answer, None)
    assert chat(servers["hide"], kwargs, regex) == (answer, None)
    assert chat(servers["show"], kwargs, regex) == (raw, None)
    # Streamed: reasoning_content deltas, then content deltas.
    stream = client(servers["capture"]).chat.completions.create(
        model="default", messages=ASK, temperature=0, max_tokens=100, stream=True,
        extra_body={"regex": regex, "chat_template_kwargs": kwargs})
    got, order = {"reasoning_content": "", "content": ""}, []
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        r = (delta.model_extra or {}).get("reasoning_content")
        for key, text in (("reasoning_content", r), ("content", delta.content)):
            if text:
                got[key] += text
                order.append(key)
    assert got == {"reasoning_content": reasoning, "content": answer}
    assert order == sorted(order, key=lambda k: k != "reasoning_content"), "reasoning streams before the answer"


def anthropic(server, **kw):
    import anthropic as sdk

    c = sdk.Anthropic(base_url=server.url, api_key=server.api_key, max_retries=0, timeout=300)
    return c.messages.create(model="default", max_tokens=12, messages=ASK, extra_body={"temperature": 0}, **kw)


def blocks(m):
    return [(b.type, b.thinking if b.type == "thinking" else b.text) for b in m.content]


def test_anthropic_thinking_blocks(servers):
    # The template opens <think>: 12 tokens of reasoning, unclosed.
    captured = anthropic(servers["capture"])
    kinds = blocks(captured)
    assert kinds[0][0] == "thinking" and kinds[0][1], kinds
    thought = kinds[0][1]
    assert blocks(anthropic(servers["show"])) == [("text", thought)]
    assert blocks(anthropic(servers["hide"])) == [("text", "")]
    assert blocks(anthropic(servers["hide"], thinking={"type": "enabled", "budget_tokens": 1024}))[0] == ("thinking", thought)
    # Disabled: the template closes an empty block, so the reply is all answer.
    off = blocks(anthropic(servers["capture"], thinking={"type": "disabled"}))
    assert [k for k, _ in off] == ["text"] and off[0][1]
    # Streamed: thinking_delta events build the same block.
    import anthropic as sdk

    c = sdk.Anthropic(base_url=servers["capture"].url, api_key=servers["capture"].api_key, max_retries=0)
    with c.messages.stream(model="default", max_tokens=12, messages=ASK, extra_body={"temperature": 0}) as s:
        deltas = [e.delta.thinking for e in s if e.type == "content_block_delta" and e.delta.type == "thinking_delta"]
        final = s.get_final_message()
    assert "".join(deltas) == thought and final.content[0].thinking == thought
    # The same greedy reasoning as the OpenAI API's for the same prompt.
    msg = client(servers["capture"]).chat.completions.create(model="default", messages=ASK, temperature=0, max_tokens=12)
    assert msg.choices[0].message.model_extra["reasoning_content"] == thought


def ollama(server, stream=False, **kw):
    body = {"messages": ASK, "stream": stream, "options": {"temperature": 0, "num_predict": 12}, **kw}
    r = server.post("/api/chat", body)
    assert r.status_code == 200, r.text
    if not stream:
        return r.json()["message"]
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert lines[-1]["done"]
    return {"content": "".join(l["message"]["content"] for l in lines),
            "thinking": "".join(l["message"].get("thinking", "") for l in lines)}


def test_ollama_thinking(servers):
    m = ollama(servers["capture"])
    thought = m["thinking"]
    assert thought and m["content"] == ""
    assert ollama(servers["capture"], stream=True) == {"content": "", "thinking": thought}
    assert ollama(servers["hide"], think=True)["thinking"] == thought
    shown = ollama(servers["show"])
    assert shown["content"] == thought and "thinking" not in shown
    hidden = ollama(servers["hide"])
    assert hidden["content"] == "" and "thinking" not in hidden
    # /api/generate: the same prompt through the template, `thinking` beside `response`.
    g = servers["capture"].post("/api/generate", {"prompt": ASK[0]["content"], "stream": False,
                                                  "options": {"temperature": 0, "num_predict": 12}}).json()
    assert (g["thinking"], g["response"]) == (thought, "")
    off = ollama(servers["capture"], think=False)
    assert off["content"] and "thinking" not in off
    r = servers["capture"].post("/api/chat", {"messages": ASK, "think": "very", "stream": False})
    assert r.status_code == 400 and "think" in r.text


def test_reasoning_refusals(servers):
    r = servers["capture"].post("/v1/chat/completions", {"messages": ASK, "max_tokens": 2, "reasoning_format": "loud"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "reasoning_format"
    r = servers["capture"].post("/v1/messages", {"messages": ASK, "max_tokens": 2, "thinking": {"type": "sometimes"}})
    assert r.status_code == 400 and "thinking" in r.text


def test_reasoning_effort_reaches_the_template(servers):
    def prompt_tokens(**extra):
        r = servers["capture"].post("/v1/chat/completions", {"messages": ASK, "max_tokens": 1, **extra})
        assert r.status_code == 200, r.text
        return r.json()["usage"]["prompt_tokens"]

    base = prompt_tokens()
    high = prompt_tokens(reasoning_effort="high")
    assert high > base
    # chat_template_kwargs set by the request win over reasoning_effort.
    assert prompt_tokens(reasoning_effort="high", chat_template_kwargs={"reasoning_effort": "a very long effort"}) > high
    # Ollama's think level is the same variable.
    r = servers["capture"].post("/api/chat", {"messages": ASK, "think": "high", "stream": False, "options": {"num_predict": 1}})
    assert r.status_code == 200 and r.json()["prompt_eval_count"] == high
