"""Named sessions: across two requests, through every API, and across a server restart
(with a graceful shutdown in the middle of a stream)."""

import threading
import time

import requests

from conftest import RUN_ID


def name(tag):
    return f"suite-{tag}-{RUN_ID}"


def chat(oai, session, content, max_tokens=8, **kw):
    return oai.chat.completions.create(
        model="default", messages=[{"role": "user", "content": content}], max_tokens=max_tokens, temperature=0,
        extra_body={"session": session}, **kw)


def wait_saved(server, session, messages, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = server.get(f"/v1/sessions/{session}")
        if r.status_code == 200 and r.json()["messages"] >= messages:
            return r.json()
        time.sleep(0.1)
    raise AssertionError(f"session {session} not saved with {messages} messages")


def test_session_across_two_requests(oai, server):
    s = name("two")
    first = chat(oai, s, "My favourite colour is teal. Please remember it.")
    # Only the new turn is sent: the session holds the history and its KV state.
    second = chat(oai, s, "What is my favourite colour?")
    assert second.usage.prompt_tokens > first.usage.prompt_tokens + first.usage.completion_tokens - 2
    assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens
    info = wait_saved(server, s, 4)
    assert info["tokens"] > 0
    transcript = info["transcript"]
    assert [m["role"] for m in transcript] == ["user", "assistant", "user", "assistant"]
    assert transcript[1]["content"] == first.choices[0].message.content

    listed = [x["name"] for x in server.get("/v1/sessions").json()["data"]]
    assert s in listed
    fork = server.post(f"/v1/sessions/{s}/fork", {"to": s + "-fork"})
    assert fork.status_code == 201, fork.text
    assert server.post(f"/v1/sessions/{s}/fork", {"to": s + "-fork"}).status_code == 409
    # The fork continues independently, from the same state.
    forked = chat(oai, s + "-fork", "And my favourite animal?")
    assert forked.usage.prompt_tokens_details.cached_tokens >= second.usage.prompt_tokens
    r = requests.delete(f"{server.url}/v1/sessions/{s}-fork", headers=server.headers, timeout=30)
    assert r.status_code == 200 and r.json()["deleted"] is True
    r = requests.delete(f"{server.url}/v1/sessions/{s}-fork", headers=server.headers, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found"


def test_session_header_and_other_apis(server, claude):
    s = name("hdr")
    r = server.post("/api/chat", {"messages": [{"role": "user", "content": "I live in Oslo."}], "stream": False,
                                  "options": {"temperature": 0, "num_predict": 6}}, headers={"X-Lem-Session": s})
    assert r.status_code == 200, r.text
    m = claude.messages.create(model="default", max_tokens=6, extra_body={"temperature": 0},
                               messages=[{"role": "user", "content": "Where do I live?"}],
                               extra_headers={"X-Lem-Session": s})
    assert m.usage.cache_read_input_tokens >= r.json()["prompt_eval_count"]
    # Plain-text sessions append.
    t = name("text")
    a = server.post("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 5, "temperature": 0, "session": t}).json()
    b = server.post("/v1/completions", {"prompt": " Then", "max_tokens": 5, "temperature": 0, "session": t}).json()
    assert b["usage"]["prompt_tokens_details"]["cached_tokens"] >= a["usage"]["prompt_tokens"]


def test_session_survives_graceful_restart(server, oai):
    s = name("restart")
    first = chat(oai, s, "The secret word is lemon.")
    wait_saved(server, s, 2)
    # A stream in flight when SIGTERM arrives still completes, and its turn is saved.
    done = {}

    def stream():
        chunks = list(chat(oai, s, "Write a poem about the secret word.", max_tokens=24, stream=True))
        done["finish"] = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        done["text"] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    t = threading.Thread(target=stream)
    t.start()
    deadline = time.time() + 120
    while server.metrics().get("lem_active_sequences", 0) < 1 and time.time() < deadline:
        time.sleep(0.05)
    rc = server.stop()
    t.join(timeout=120)
    assert rc == 0, server.tail()
    assert done.get("finish") and done["finish"][0] in ("stop", "length"), done
    assert "session saved" in server.log.read_text()

    server.start()
    info = server.get(f"/v1/sessions/{s}").json()
    assert info["messages"] == 4, info
    assert info["transcript"][3]["content"] == done["text"]
    third = chat(oai, s, "What is the secret word?")
    # Only the new turn is computed: the rest comes from the session file.
    assert third.usage.prompt_tokens_details.cached_tokens >= info["tokens"] - 1
    assert third.usage.prompt_tokens_details.cached_tokens > first.usage.prompt_tokens
    m = server.metrics()
    assert m["lem_session_wakes_total"] >= 1
    assert info["name"] == s


def test_session_limits(workdir):
    """--max-sessions: a request that would create one more session gets 507 with a clear
    message; existing sessions go on; deleting one makes room."""
    from conftest import Server

    s = Server(workdir, "limits", "--max-sessions", "2").start()
    try:
        def turn(session):
            return s.post("/v1/chat/completions", {
                "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "session": session})

        for n in ["a", "b"]:
            assert turn(n).status_code == 200
            wait_saved(s, n, 2)
        r = turn("c")
        assert r.status_code == 507, r.text
        err = r.json()["error"]
        assert err["code"] == "session_limit" and "--max-sessions" in err["message"], err
        assert turn("a").status_code == 200, "an existing session must go on"
        assert s.get("/v1/sessions/c").status_code == 404
        assert requests.delete(s.url + "/v1/sessions/b", headers=s.headers, timeout=60).status_code in (200, 204)
        assert turn("c").status_code == 200
    finally:
        assert s.stop() == 0, s.tail()


def test_broken_session_store_and_files(workdir):
    """A damaged session file gets 409 session_unusable; a session store that cannot be
    read or written (here its directory replaced by a file) gets 503
    session_store_unavailable; either way the server goes on serving."""
    import pathlib
    import shutil

    from conftest import Server

    s = Server(workdir, "broken").start()
    try:
        def turn(session=None):
            body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
            if session:
                body["session"] = session
            return s.post("/v1/chat/completions", body)

        assert turn("ok").status_code == 200
        wait_saved(s, "ok", 2)
        files = [p for p in pathlib.Path(s.sessions).rglob("ok.lemkv")]
        assert len(files) == 1, list(pathlib.Path(s.sessions).rglob("*"))
        data = bytearray(files[0].read_bytes())
        data[len(data) // 2] ^= 0xFF
        files[0].write_bytes(bytes(data))
        r = turn("ok")
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "session_unusable", r.text

        shutil.rmtree(s.sessions)
        pathlib.Path(s.sessions).write_text("not a directory")
        r = turn("other")
        assert r.status_code == 503, r.text
        err = r.json()["error"]
        assert err["code"] == "session_store_unavailable" and "unavailable" in err["message"], err
        assert turn().status_code == 200, "the server must go on serving"
        assert s.get("/health").status_code == 200
    finally:
        s.stop()
        pathlib.Path(s.sessions).unlink(missing_ok=True)
