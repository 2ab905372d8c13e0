"""Tool calls on SmolLM2 through the official clients: `tool_choice` required and named
(forced by a grammar, so arguments validate with `jsonschema`), streamed deltas that
assemble to the non-streamed call, two-turn loops (call, tool result, answer) through the
OpenAI and Anthropic clients, Ollama `tools` via curl, a template that renders tools
itself (--chat-template-file), and refusals."""

import json
import pathlib
import subprocess

import jsonschema
import pytest

from conftest import Server

FIXTURES = pathlib.Path(__file__).parent / "fixtures"

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 40}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
}
ADD = {
    "type": "object",
    "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 1000}, "b": {"type": "integer", "minimum": 0, "maximum": 1000}},
    "required": ["a", "b"],
}
SCHEMAS = {"get_weather": WEATHER, "add": ADD}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "add", "description": "Adds two numbers", "parameters": ADD}},
]
ASK = [{"role": "user", "content": "What is the weather in Paris, in celsius?"}]
GREEDY = dict(temperature=0, seed=7, max_tokens=80)


def run_tool(name, args):
    if name == "add":
        return json.dumps({"sum": args["a"] + args["b"]})
    return json.dumps({"city": args["city"], "temperature": 21, "unit": args["unit"]})


def check_calls(message, names=SCHEMAS):
    assert message.tool_calls, message
    for call in message.tool_calls:
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_required_call_validates(oai):
    r = oai.chat.completions.create(model="default", messages=ASK, tools=TOOLS, tool_choice="required",
                                    parallel_tool_calls=False, **GREEDY)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert len(choice.message.tool_calls) == 1
    check_calls(choice.message)
    assert not choice.message.content


def test_named_call_validates_for_each_function(oai):
    for name in SCHEMAS:
        r = oai.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "Add 2 and 40, or tell me the weather in Oslo."}],
            tools=TOOLS, tool_choice={"type": "function", "function": {"name": name}}, parallel_tool_calls=False, **GREEDY)
        check_calls(r.choices[0].message, names=[name])
        assert r.choices[0].message.tool_calls[0].function.name == name


def test_parallel_forced_calls_are_bounded(oai):
    # SmolLM2 repeats its call; the grammar allows at most 8, then only the end.
    r = oai.chat.completions.create(model="default", messages=ASK, tools=TOOLS, tool_choice="required",
                                    temperature=0, seed=7, max_tokens=1000)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and 1 <= len(choice.message.tool_calls) <= 8
    check_calls(choice.message)
    assert r.usage.completion_tokens < 1000, "the grammar ended the reply, not the budget"


def test_streamed_deltas_assemble_to_the_same_call(oai):
    kw = dict(model="default", messages=ASK, tools=TOOLS, tool_choice="required", **GREEDY)
    whole = oai.chat.completions.create(**kw).choices[0].message
    calls, finish = {}, None
    for chunk in oai.chat.completions.create(stream=True, **kw):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        finish = chunk.choices[0].finish_reason or finish
        for tc in delta.tool_calls or []:
            c = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
            if tc.id:
                assert c["id"] is None, "the id comes once, first"
                c["id"] = tc.id
            if tc.function and tc.function.name:
                assert not c["arguments"], "the name comes before the arguments"
                c["name"] += tc.function.name
            if tc.function and tc.function.arguments:
                c["arguments"] += tc.function.arguments
    assert finish == "tool_calls"
    assert sorted(calls) == list(range(len(whole.tool_calls)))
    for i, call in enumerate(whole.tool_calls):
        assert (calls[i]["name"], json.loads(calls[i]["arguments"])) == (call.function.name, json.loads(call.function.arguments))
        assert calls[i]["id"].startswith("call_")


def test_two_turn_loop_openai(oai):
    first = oai.chat.completions.create(model="default", messages=ASK, tools=TOOLS,
                                        tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                        parallel_tool_calls=False, **GREEDY)
    msg = first.choices[0].message
    check_calls(msg, names=["get_weather"])
    call = msg.tool_calls[0]
    result = run_tool(call.function.name, json.loads(call.function.arguments))
    history = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": result},
    ]
    second = oai.chat.completions.create(model="default", messages=history, tools=TOOLS, tool_choice="none",
                                         temperature=0, seed=7, max_tokens=24)
    answer = second.choices[0]
    assert answer.finish_reason in ("stop", "length") and not answer.message.tool_calls
    assert answer.message.content.strip()
    # The call and its result are part of the second prompt (which, with `none`, has no
    # tool definitions): it is longer than the question alone by more than the call.
    base = oai.chat.completions.create(model="default", messages=ASK, tools=TOOLS, tool_choice="none", max_tokens=1)
    assert second.usage.prompt_tokens > base.usage.prompt_tokens + first.usage.completion_tokens


def test_auto_and_none(oai):
    none = oai.chat.completions.create(model="default", messages=ASK, tools=TOOLS, tool_choice="none", **GREEDY)
    assert not none.choices[0].message.tool_calls and none.choices[0].finish_reason in ("stop", "length")
    plain = oai.chat.completions.create(model="default", messages=ASK, **GREEDY)
    # `none` renders no tools: the prompt is the plain one.
    assert none.usage.prompt_tokens == plain.usage.prompt_tokens
    assert none.choices[0].message.content == plain.choices[0].message.content
    auto = oai.chat.completions.create(model="default", messages=ASK, tools=TOOLS, **GREEDY)
    assert auto.usage.prompt_tokens > plain.usage.prompt_tokens, "tools are in the prompt"
    message = auto.choices[0].message
    if message.tool_calls:  # whatever the model wrote; calls that parsed are JSON
        assert auto.choices[0].finish_reason == "tool_calls"
        for c in message.tool_calls:
            json.loads(c.function.arguments)
    else:
        assert message.content is not None


def anthropic_tools():
    return [{"name": t["function"]["name"], "description": t["function"]["description"],
             "input_schema": t["function"]["parameters"]} for t in TOOLS]


def test_two_turn_loop_anthropic(claude):
    kw = dict(model="default", max_tokens=80, tools=anthropic_tools(), extra_body={"temperature": 0},
              tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}, messages=ASK)
    first = claude.messages.create(**kw)
    assert first.stop_reason == "tool_use"
    uses = [b for b in first.content if b.type == "tool_use"]
    assert len(uses) == 1 and uses[0].name == "get_weather" and uses[0].id.startswith("toolu_")
    jsonschema.validate(uses[0].input, WEATHER)
    # Streamed: the same call, assembled by the SDK from input_json_delta events.
    with claude.messages.stream(**kw) as stream:
        final = stream.get_final_message()
    streamed = [b for b in final.content if b.type == "tool_use"]
    assert final.stop_reason == "tool_use" and [(b.name, b.input) for b in streamed] == [(uses[0].name, uses[0].input)]
    result = run_tool(uses[0].name, uses[0].input)
    second = claude.messages.create(
        model="default", max_tokens=24, tools=anthropic_tools(), extra_body={"temperature": 0}, messages=ASK + [
            {"role": "assistant", "content": [{"type": "tool_use", "id": uses[0].id, "name": uses[0].name, "input": uses[0].input}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": result}]},
        ], tool_choice={"type": "none"})
    assert second.stop_reason in ("end_turn", "max_tokens")
    assert [b.type for b in second.content] == ["text"] and second.content[0].text.strip()
    base = claude.messages.create(model="default", max_tokens=1, tools=anthropic_tools(), messages=ASK,
                                  tool_choice={"type": "none"})

    def prompt(m):
        return m.usage.input_tokens + m.usage.cache_read_input_tokens

    assert prompt(second) > prompt(base) + first.usage.output_tokens, "the call and its result are in the prompt"


def test_anthropic_any_validates(claude):
    m = claude.messages.create(model="default", max_tokens=80, tools=anthropic_tools(), tool_choice={"type": "any"},
                               extra_body={"temperature": 0}, messages=[{"role": "user", "content": "Add 3 and 4."}])
    assert m.stop_reason == "tool_use"
    for b in m.content:
        if b.type == "tool_use":
            jsonschema.validate(b.input, SCHEMAS[b.name])


def curl(server, path, body):
    cmd = ["curl", "-sS", "--max-time", "300", "-H", f"Authorization: Bearer {server.api_key}", "-d", json.dumps(body),
           server.url + path]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def test_ollama_tools_via_curl(server):
    body = {"model": "smollm2-135m", "messages": ASK, "tools": TOOLS, "tool_choice": "required", "stream": False,
            "options": {"temperature": 0, "num_predict": 80}}
    out = json.loads(curl(server, "/api/chat", body))
    calls = out["message"]["tool_calls"]
    assert out["done"] and calls
    for c in calls:
        assert isinstance(c["function"]["arguments"], dict)
        jsonschema.validate(c["function"]["arguments"], SCHEMAS[c["function"]["name"]])
    # Streamed NDJSON carries the same calls.
    lines = [json.loads(line) for line in curl(server, "/api/chat", {**body, "stream": True}).splitlines()]
    streamed = [c for line in lines for c in line["message"].get("tool_calls", [])]
    assert streamed == calls and lines[-1]["done"]
    # Second turn: the call and a `tool` message in the history.
    result = run_tool(calls[0]["function"]["name"], calls[0]["function"]["arguments"])
    history = ASK + [{"role": "assistant", "content": "", "tool_calls": calls[:1]},
                     {"role": "tool", "content": result, "tool_name": calls[0]["function"]["name"]}]
    out = json.loads(curl(server, "/api/chat", {**body, "messages": history, "tool_choice": "none",
                                                "options": {"temperature": 0, "num_predict": 16}}))
    assert out["done"] and "tool_calls" not in out["message"] and out["message"]["content"].strip()


def test_tool_refusals(server):
    def post(body):
        return server.post("/v1/chat/completions", {"model": "default", "messages": ASK, "max_tokens": 4, **body})
    for body, param in [
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": "always"}, "tool_choice"),
        ({"tools": [{"type": "retrieval"}]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools"),
        ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
        ({"messages": [{"role": "assistant", "content": "", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "add", "arguments": "{not json"}}]}]}, "messages"),
    ]:
        r = post(body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["param"] == param, (body, r.text)
    r = server.post("/v1/messages", {"model": "default", "max_tokens": 4, "messages": ASK,
                                     "tools": anthropic_tools(), "tool_choice": {"type": "tool"}})
    assert r.status_code == 400 and "tool_choice" in r.text


@pytest.fixture(scope="module")
def hermes(workdir):
    s = Server(workdir, "hermes", "--chat-template-file", str(FIXTURES / "hermes-tools.jinja")).start()
    yield s
    assert s.stop() == 0


def test_template_that_renders_tools(hermes):
    from openai import OpenAI

    client = OpenAI(base_url=hermes.url + "/v1", api_key=hermes.api_key, max_retries=0, timeout=300)
    r = client.chat.completions.create(model="default", messages=ASK, tools=TOOLS, tool_choice="required",
                                       parallel_tool_calls=False, **GREEDY)
    check_calls(r.choices[0].message)
    call = r.choices[0].message.tool_calls[0]
    history = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": run_tool(call.function.name, json.loads(call.function.arguments))},
    ]
    second = client.chat.completions.create(model="default", messages=history, tools=TOOLS, temperature=0, max_tokens=24)
    assert second.choices[0].finish_reason in ("stop", "length", "tool_calls")
