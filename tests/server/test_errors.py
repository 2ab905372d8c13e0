"""Bad input gets the OpenAI-style error object with the right status; the server keeps
serving."""

import json
import subprocess

import openai
import pytest

CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "hi"}]


def check(r, status, code=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str)
    if code:
        assert err["code"] == code, r.text
    return err


def raw(server, path, data, headers=None):
    import requests

    h = {**server.headers, "Content-Type": "application/json", **(headers or {})}
    return requests.post(server.url + path, data=data, headers=h, timeout=120)


def test_malformed_json(server):
    check(raw(server, CHAT, b'{"messages": [}'), 400, "invalid_json")
    check(raw(server, CHAT, b""), 400, "invalid_json")


def test_wrong_types_and_missing_fields(server):
    check(server.post(CHAT, {"messages": "hello"}), 400)
    check(server.post(CHAT, {"messages": USER, "temperature": "hot"}), 400)
    check(server.post(CHAT, {"messages": USER, "max_tokens": "ten"}), 400)
    err = check(server.post(CHAT, {"model": "default"}), 400)
    assert "messages" in err["message"]
    check(server.post(CHAT, {"messages": []}), 400)
    check(server.post(CHAT, {"messages": [{"role": "wizard", "content": "x"}]}), 400)
    check(server.post(CHAT, {"messages": USER, "temperature": 5}), 400)
    check(server.post(CHAT, {"messages": USER, "n": 3}), 400)
    check(server.post("/v1/messages", {"messages": USER}), 400)  # Anthropic requires max_tokens


def test_chat_template_kwargs_must_be_an_object(server):
    for bad in ("enable_thinking=false", [{"enable_thinking": False}], True, 3):
        err = check(server.post(CHAT, {"messages": USER, "chat_template_kwargs": bad}), 400)
        assert err["type"] == "invalid_request_error", err
        assert err["param"] == "chat_template_kwargs", err


def test_unknown_model(server, oai):
    check(server.post(CHAT, {"model": "gpt-4o", "messages": USER}), 404, "model_not_found")
    with pytest.raises(openai.NotFoundError) as e:
        oai.chat.completions.create(model="gpt-4o", messages=USER)
    assert e.value.status_code == 404


def test_max_tokens_limits(server, oai):
    for bad in (-1, 0, 10**9):
        err = check(server.post(CHAT, {"messages": USER, "max_tokens": bad}), 400)
        assert err["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="default", messages=USER, max_tokens=-5)


def test_prompt_over_context(server):
    long = "lorem ipsum " * 4000
    check(server.post(CHAT, {"messages": [{"role": "user", "content": long}]}), 400, "context_length_exceeded")
    check(server.post("/v1/completions", {"prompt": long}), 400, "context_length_exceeded")


def test_body_over_limit(server):
    huge = json.dumps({"messages": [{"role": "user", "content": "x" * (3 << 20)}]}).encode()
    check(raw(server, CHAT, huge), 413, "body_too_large")


def test_api_key(server):
    import requests

    r = requests.post(server.url + CHAT, json={"messages": USER}, timeout=30)
    check(r, 401, "invalid_api_key")
    r = requests.post(server.url + CHAT, json={"messages": USER}, headers={"Authorization": "Bearer nope"}, timeout=30)
    check(r, 401, "invalid_api_key")
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    assert requests.get(server.url + "/health", timeout=30).status_code == 200


def test_routes_and_methods(server):
    check(server.get("/v1/nothing"), 404, "unknown_route")
    check(server.get(CHAT), 405)


def test_curl_errors(server):
    out = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", "-H", f"x-api-key: {server.api_key}", "-d", "{oops",
                          server.url + CHAT], check=True, capture_output=True, text=True).stdout
    body, code = out.rsplit("\n", 1)
    assert code == "400"
    assert json.loads(body)["error"]["code"] == "invalid_json"


def test_still_serving_after_errors(oai, server):
    assert server.get("/health").json()["status"] == "ok"
    r = oai.chat.completions.create(model="default", messages=USER, max_tokens=3)
    assert r.choices[0].finish_reason in ("stop", "length")
    m = server.metrics()
    assert m['lem_errors_total{type="invalid_request_error"}'] >= 5
