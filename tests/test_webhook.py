"""`trainsim webhook`: the demo stack's Alertmanager receiver, in-process and behind a real
Alertmanager running the shipped alertmanager.yml."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from simulator.drills import stack
from simulator.drills.profile import fast_alertmanager_config
from simulator.web.webhook import MAX_BODY, WebhookReceiver
from tests.conftest import need_binary, wait_for

REPO = Path(__file__).resolve().parent.parent
ALERTMANAGER_YML = REPO / "configs" / "alertmanager" / "alertmanager.yml"


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            status, raw = int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = int(exc.code), exc.read()
    return status, json.loads(raw) if raw.strip() else None


def test_the_receiver_records_lists_and_refuses_what_is_not_a_notification() -> None:
    seen = []
    receiver = WebhookReceiver(on_notification=seen.append, keep=2)
    try:
        for n in range(3):
            status, _ = post(f"{receiver.url}/alerts/warning",
                             json.dumps({"receiver": "r", "status": "firing", "n": n}).encode())
            assert status == 200
        assert [n.payload["n"] for n in seen] == [0, 1, 2]
        # Only the last ``keep`` are listed, oldest first, with their path and arrival time.
        status, body = stack.http_get(f"{receiver.url}/")
        listed = json.loads(body)["notifications"]
        assert status == 200 and [n["n"] for n in listed] == [1, 2]
        assert listed[0]["path"] == "/alerts/warning" and listed[0]["received"] > 0
        assert post(receiver.url, b"[1, 2]") == (400, {"error": "body must be a JSON object"})
        assert post(receiver.url, b"{not json") == (400, {"error": "body must be a JSON object"})
        assert post(receiver.url, b"{}", {"Content-Length": str(MAX_BODY + 1)})[0] == 413
        assert stack.http_get(f"{receiver.url}/healthz") == (200, b"ok\n")
        assert stack.http_get(f"{receiver.url}/nope")[0] == 404
        assert len(seen) == 3  # refused bodies are not notifications
    finally:
        receiver.close()


def test_a_bad_listen_address_is_one_line_and_exit_2() -> None:
    res = subprocess.run([sys.executable, "-m", "simulator", "webhook",
                          "--web.listen-address", "nowhere"],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2
    assert res.stderr.startswith("trainsim: --web.listen-address: ")
    assert len(res.stderr.strip().splitlines()) == 1


def test_the_shipped_alertmanager_config_notifies_trainsim_webhook_by_route(
        tmp_path: Path) -> None:
    need_binary("prometheus-alertmanager", "alertmanager")
    port = stack.free_port()
    hook = subprocess.Popen(
        [sys.executable, "-m", "simulator", "webhook", "--web.listen-address",
         f"127.0.0.1:{port}", "--log.format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        stack.wait_http_ok(f"http://127.0.0.1:{port}/healthz", hook, "trainsim webhook")
        # The shipped file, its webhook host pointed at this receiver (paths kept: each route
        # has its own) and its timings divided by 60 so the test takes seconds.
        config = fast_alertmanager_config(ALERTMANAGER_YML.read_text(), 60,
                                          webhook_url=f"http://127.0.0.1:{port}")
        with stack.start_alertmanager(tmp_path / "am", config) as am:
            alerts = [{"labels": {"alertname": "TrainsimRunStalled", "severity": "warning",
                                  "job": "trainsim", "instance": "t:9310", "run": "r1"}},
                      {"labels": {"alertname": "TrainsimRunDiverging", "severity": "critical",
                                  "job": "trainsim", "instance": "t:9310", "run": "drill-r2",
                                  "drill": "true"}}]
            status, _ = post(f"{am.url}/api/v2/alerts", json.dumps(alerts).encode())
            assert status == 200
            listed = wait_for(lambda: len(_listed(port)) >= 2 and _listed(port),
                              timeout=30, what="two notifications")
    finally:
        hook.send_signal(signal.SIGTERM)
        out, _ = hook.communicate(timeout=10)
    assert hook.returncode == 0
    by_receiver = {n["receiver"]: n for n in listed}
    assert by_receiver["trainsim-warning"]["path"] == "/alerts/warning"
    assert by_receiver["trainsim-drill"]["path"] == "/drill"  # a drill never reaches on-call
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    logged = [e for e in events if e["event"] == "notification_received"]
    assert {"path": "/alerts/warning", "receiver": "trainsim-warning", "status": "firing",
            "alerts": [{"status": "firing", "alertname": "TrainsimRunStalled", "run": "r1",
                        "severity": "warning"}]} in [
        {k: e[k] for k in ("path", "receiver", "status", "alerts")} for e in logged]
    assert events[-1]["event"] == "stopped"


def _listed(port: int) -> list[dict[str, Any]]:
    notifications: list[dict[str, Any]] = json.loads(
        stack.http_get(f"http://127.0.0.1:{port}/")[1])["notifications"]
    return notifications


def test_compose_runs_the_receiver_the_shipped_alertmanager_config_names() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    service = compose["services"]["trainsim-webhook"]
    argv = service["command"]
    assert argv[0] == "webhook"
    listen = argv[argv.index("--web.listen-address") + 1]
    assert listen.startswith("0.0.0.0:")
    port = int(listen.rsplit(":", 1)[1])
    urls = {hook["url"] for r in yaml.safe_load(ALERTMANAGER_YML.read_text())["receivers"]
            for hook in r.get("webhook_configs", [])}
    assert urls and all(u.startswith(f"http://trainsim-webhook:{port}/") for u in urls), urls
    assert f"127.0.0.1:{port}:{port}" in service["ports"]
    # The image's HEALTHCHECK probes the daemon's port; this service has its own.
    assert f":{port}/healthz" in " ".join(service["healthcheck"]["test"])
    assert compose["services"]["alertmanager"]["depends_on"]["trainsim-webhook"] == {
        "condition": "service_healthy"}
