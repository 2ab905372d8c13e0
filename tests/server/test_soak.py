"""Soak: 16 loopback clients for 60 seconds mixing every API, streams dropped mid-way,
session turns over 100 names with forks and deletions, malformed, oversized and
unknown-model requests (bench/soak.py, which checks every answer). Afterwards: no
problem found, no panic in the log, the queue drained, /metrics counted every request,
and resident memory after the soak within 10% of what it was after the warm-up."""

import json
import pathlib
import statistics
import subprocess
import sys

from conftest import ROOT, Server

SOAK = ROOT / "bench" / "soak.py"
SECONDS = 60


def test_soak(workdir):
    s = Server(workdir, "soak", "--prefix-cache-mib", "8", "--prefix-cache-dir", str(workdir / "soak-prefix")).start()
    report_path = pathlib.Path(workdir) / "soak.json"
    try:
        before = s.metrics()
        run = subprocess.run(
            [sys.executable, str(SOAK), "--url", s.url, "--api-key", s.api_key, "--minutes", str(SECONDS / 60),
             "--clients", "16", "--sessions", "100", "--pid", str(s.proc.pid), "--json", str(report_path)],
            capture_output=True, text=True, timeout=SECONDS + 240,
        )
        report = json.loads(report_path.read_text())
        after = s.metrics()
    finally:
        rc = s.stop()
    print(run.stdout)
    assert run.returncode == 0 and not report["problems"], run.stdout + run.stderr
    assert rc == 0, s.tail()
    log = s.log.read_text()
    assert "panicked" not in log, log[-4000:]

    # Every request kind ran, and the server counted every request the clients made
    # (plus the soak's own /health polls and this test's /metrics reads).
    kinds = report["by_kind"]
    for kind in ["chat", "chat_stream", "chat_stream_dropped", "completion", "anthropic", "ollama_chat",
                 "session_turn", "malformed", "unknown_model", "embeddings"]:
        assert kinds.get(kind, 0) > 0, f"no {kind} request ran: {kinds}"
    served = sum(v for k, v in after.items() if k.startswith("lem_requests_total")) - sum(
        v for k, v in before.items() if k.startswith("lem_requests_total"))
    assert served >= report["requests"], (served, report["requests"])
    assert served <= report["requests"] + 200, (served, report["requests"])
    assert after["lem_active_sequences"] == 0 and after["lem_queued_requests"] == 0

    # No leak: once warm (30 s: caches at their budgets, sessions at their turn limit),
    # resident memory stays within 10%.
    mem = report["memory_mib"]
    warm = statistics.median(m for t, m in mem if 25 <= t <= 30)
    end = statistics.median(m for t, m in mem[-5:])
    print(f"resident MiB: start {mem[0][1]}, warm {warm}, end {end}")
    assert end <= warm * 1.10, f"resident memory grew from {warm} to {end} MiB after the warm-up: {mem}"
