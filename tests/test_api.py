"""The control API through a real `trainsim run` process: every endpoint, every error, tokens,
and a property test that throws random requests at it."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from simulator import cli
from simulator.drills.stack import http_get
from simulator.schema.errors import UsageError
from simulator.web import api, auth
from simulator.web.server import start_server
from tests import test_compose as tc
from tests.conftest import wait_for

RUNS = ("alpha", "beta", "gamma")
CONFIG = """
defaults: {steps: 1000000, step_interval: 100ms, init: 5.5, optimizer: {learning_rate: 0.001}}
runs:
  - name: alpha
  - name: beta
  - name: gamma
"""
SPEED = 20
TOKEN = "s3cret-Token_value.42"


# ------------------------------------------------------------------------------- helpers


def request(d: Any, method: str, path: str, body: Any = None, *,
            headers: dict[str, str] | None = None, raw: bytes | None = None,
            ) -> tuple[int, dict[str, str], Any]:
    """One request with http.client; returns (status, headers, parsed JSON or raw bytes)."""
    conn = http.client.HTTPConnection(d.address, timeout=10)
    hdrs = dict(headers or {})
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    try:
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        payload = resp.read()
        out_headers = {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()
    if out_headers.get("content-type") == "application/json" and payload:
        return resp.status, out_headers, json.loads(payload)
    return resp.status, out_headers, payload


def raw_request(address: str, head: bytes, body: bytes = b"") -> tuple[int, dict[str, str],
                                                                          bytes]:
    """Send bytes as they are (any method, path or header) and read the one response."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=15) as sock:
        sock.sendall(head + body)
        sock.shutdown(socket.SHUT_WR)
        method = head.split(b" ", 1)[0].decode("latin-1")
        resp = http.client.HTTPResponse(sock, method=method)
        resp.begin()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()


def runs(d: Any) -> dict[str, dict[str, Any]]:
    status, _, payload = request(d, "GET", "/api/v1/runs")
    assert status == 200
    return {r["run"]: r for r in payload}


def state(d: Any) -> list[tuple[str, bool, int, tuple[str, ...]]]:
    """What a request may change: faults, pauses, restarts."""
    return [(name, r["paused"], r["restarts"], tuple(sorted(f["id"] for f in r["faults"])))
            for name, r in runs(d).items()]


def assert_error(result: tuple[int, dict[str, str], Any], status: int,
                 field: str | None = None) -> str:
    got, headers, payload = result
    assert got == status, payload
    assert headers["content-type"] == "application/json"
    assert set(payload) == {"error", "field"} and payload["error"], payload
    assert payload["field"] == field, payload
    return str(payload["error"])


@pytest.fixture
def daemon(daemon_factory: Any, write_config: Any) -> Any:
    return daemon_factory(write_config(CONFIG), speed=SPEED)


@pytest.fixture
def token_daemon(daemon_factory: Any, write_config: Any, tmp_path: Path) -> Any:
    token_file = tmp_path / "token"
    token_file.write_text(f"\n  {TOKEN}  \n")  # surrounding whitespace is not part of it
    return daemon_factory(write_config(CONFIG), speed=SPEED,
                          extra_args=("--web.listen-address", "127.0.0.1:0",
                                      "--web.control-token-file", str(token_file)))


def inject(d: Any, run: str = "alpha", **body: Any) -> dict[str, Any]:
    status, _, fault = request(d, "POST", f"/api/v1/runs/{run}/faults",
                               body or {"kind": "lr_spike", "params": {"factor": 5}})
    assert status == 201, fault
    return dict(fault)


# --------------------------------------------------------------------------- success paths


def test_list_runs_shows_every_run_with_state_step_loss_alerts_and_faults(daemon: Any) -> None:
    status, headers, payload = request(daemon, "GET", "/api/v1/runs")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert [r["run"] for r in payload] == list(RUNS)
    for r in payload:
        assert {"state", "step", "loss", "alerts", "faults", "paused", "restarts"} <= set(r)
        assert r["state"] == "running" and r["faults"] == [] and r["paused"] is False


def test_get_one_run(daemon: Any) -> None:
    status, _, payload = request(daemon, "GET", "/api/v1/runs/beta")
    assert status == 200
    assert payload["run"] == "beta"
    assert isinstance(payload["loss"], float)


def test_head_answers_like_get_without_a_body(daemon: Any) -> None:
    status, headers, payload = request(daemon, "HEAD", "/api/v1/runs/beta")
    assert status == 200 and payload == b""
    assert headers["content-type"] == "application/json"


def test_inject_fault_answers_201_with_its_id_and_location(daemon: Any) -> None:
    status, headers, fault = request(daemon, "POST", "/api/v1/runs/alpha/faults",
                                     {"kind": "lr_spike", "duration": "10m",
                                      "params": {"factor": 20}})
    assert status == 201
    assert fault["kind"] == "lr_spike" and fault["active"] is True and fault["id"]
    assert fault["params"] == {"factor": 20.0} and fault["duration_seconds"] == 600.0
    assert headers["location"] == f"/api/v1/runs/alpha/faults/{fault['id']}"
    status, _, again = request(daemon, "GET", headers["location"])
    assert status == 200 and (again["id"], again["kind"]) == (fault["id"], "lr_spike")
    assert [f["id"] for f in runs(daemon)["alpha"]["faults"]] == [fault["id"]]
    assert [f["id"] for f in request(daemon, "GET", "/api/v1/runs/alpha/faults")[2]] == [
        fault["id"]]
    _, body = http_get(f"{daemon.url}/metrics")
    assert 'trainsim_fault_active{fault="lr_spike",run="alpha"} 1.0' in body.decode()
    wait_for(lambda: any(e.get("event") == "fault_injected" and e.get("fault_id") == fault["id"]
                         for e in daemon.events()), what="fault_injected event")


def test_a_seventeenth_live_fault_on_a_run_is_409_and_the_run_keeps_running(
        daemon: Any) -> None:
    for _ in range(16):
        assert request(daemon, "POST", "/api/v1/runs/alpha/faults",
                       {"kind": "lr_spike", "duration": "10m", "params": {"factor": 1.01}}
                       )[0] == 201
    status, _, body = request(daemon, "POST", "/api/v1/runs/alpha/faults",
                              {"kind": "lr_spike", "duration": "10m"})
    assert status == 409
    assert body["error"] == ("run 'alpha' has 16 faults active or to come, the most a run can "
                             "have: clear one first")
    assert len(runs(daemon)["alpha"]["faults"]) == 16
    assert request(daemon, "POST", "/api/v1/runs/beta/faults", {"kind": "nan"})[0] == 201


def test_inject_with_steps(daemon: Any) -> None:
    fault = inject(daemon, "beta", kind="hang", steps=50)
    assert fault["duration_seconds"] == pytest.approx(5.0)  # 50 steps of 100ms


def test_delete_fault_clears_it(daemon: Any) -> None:
    fault = inject(daemon)
    status, _, cleared = request(daemon, "DELETE", f"/api/v1/runs/alpha/faults/{fault['id']}")
    assert status == 200
    assert cleared["id"] == fault["id"] and cleared["active"] is False
    assert runs(daemon)["alpha"]["faults"] == []
    _, body = http_get(f"{daemon.url}/metrics")
    assert 'trainsim_fault_active{fault="lr_spike",run="alpha"} 0.0' in body.decode()


def test_pause_stops_a_run_and_resume_lets_it_step_again(daemon: Any) -> None:
    status, _, view = request(daemon, "POST", "/api/v1/runs/alpha/pause")
    assert status == 200 and view["paused"] is True
    paused_at = view["step"]
    beta_then = runs(daemon)["beta"]["step"]
    wait_for(lambda: runs(daemon)["beta"]["step"] >= beta_then + 10, what="beta to step on")
    assert runs(daemon)["alpha"]["step"] == paused_at
    status, _, view = request(daemon, "POST", "/api/v1/runs/alpha/resume")
    assert status == 200 and view["paused"] is False
    wait_for(lambda: runs(daemon)["alpha"]["step"] > paused_at, what="alpha to step again")


def test_restart_starts_the_run_again_and_counts_it(daemon: Any) -> None:
    wait_for(lambda: runs(daemon)["gamma"]["step"] >= 20, what="gamma to take 20 steps")
    status, _, view = request(daemon, "POST", "/api/v1/runs/gamma/restart")
    assert status == 200
    assert view["restarts"] == 1 and view["step"] < 20


def test_actions_accept_an_empty_json_object(daemon: Any) -> None:
    status, _, view = request(daemon, "POST", "/api/v1/runs/beta/pause", {})
    assert status == 200 and view["paused"] is True


def test_query_strings_are_ignored(daemon: Any) -> None:
    assert request(daemon, "GET", "/api/v1/runs/alpha?x=1")[0] == 200


# ----------------------------------------------------------------------------- error paths


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/api/v1/runs/nope"),
    ("GET", "/api/v1/runs/nope/faults"),
    ("POST", "/api/v1/runs/nope/pause"),
    ("POST", "/api/v1/runs/nope/resume"),
    ("POST", "/api/v1/runs/nope/restart"),
    ("DELETE", "/api/v1/runs/nope/faults/1"),
])
def test_unknown_run_is_404(daemon: Any, method: str, path: str) -> None:
    assert "nope" in assert_error(request(daemon, method, path), 404)


def test_unknown_run_is_404_on_inject(daemon: Any) -> None:
    assert_error(request(daemon, "POST", "/api/v1/runs/nope/faults", {"kind": "nan"}), 404)


def test_unknown_fault_is_404(daemon: Any) -> None:
    assert_error(request(daemon, "DELETE", "/api/v1/runs/alpha/faults/999"), 404)
    assert_error(request(daemon, "GET", "/api/v1/runs/alpha/faults/999"), 404)


@pytest.mark.parametrize("path", ["/api", "/api/", "/api/v1", "/api/v1/", "/api/v2/runs",
                                  "/api/v1/runz", "/api/v1/runs/alpha/stop",
                                  "/api/v1/runs/alpha/faults/1/x"])
def test_unknown_endpoint_is_a_json_404(daemon: Any, path: str) -> None:
    assert_error(request(daemon, "GET", path), 404)


@pytest.mark.parametrize("segment", ["a%2Fb", "a%20b", "%C3%A9t%C3%A9", "%00", "a%0Ab", "",
                                     "x" * 129, "%ff"])
def test_invalid_run_name_in_the_path_is_400(daemon: Any, segment: str) -> None:
    before = state(daemon)
    assert_error(request(daemon, "GET", f"/api/v1/runs/{segment}"), 400)
    assert_error(request(daemon, "POST", f"/api/v1/runs/{segment}/pause"), 400)
    assert state(daemon) == before


def test_invalid_fault_id_in_the_path_is_400(daemon: Any) -> None:
    assert_error(request(daemon, "DELETE", "/api/v1/runs/alpha/faults/1%3B2"), 400)


@pytest.mark.parametrize("raw", [b"{", b"{'kind': 'nan'}", b"\xff\xfe{", b"[" * 30000,
                                 b'{"kind": "lr_spike", "params": {"factor": NaN}}',
                                 b'{"kind": "nan", "duration": Infinity}', b"", b"1" * 5000])
def test_invalid_json_is_400(daemon: Any, raw: bytes) -> None:
    before = state(daemon)
    result = request(daemon, "POST", "/api/v1/runs/alpha/faults", raw=raw,
                     headers={"Content-Type": "application/json"})
    assert_error(result, 400)
    assert state(daemon) == before


@pytest.mark.parametrize("body", [[{"kind": "nan"}], "nan", 3, None])
def test_a_body_that_is_not_an_object_is_400(daemon: Any, body: Any) -> None:
    result = request(daemon, "POST", "/api/v1/runs/alpha/faults",
                     raw=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    assert_error(result, 400)


@pytest.mark.parametrize(("body", "field"), [
    ({}, "kind"),
    ({"kind": "meltdown"}, "kind"),
    ({"kind": ["nan"]}, "kind"),
    ({"kind": {"a": 1}}, "kind"),
    ({"kind": "nan", "duration": "soon"}, "duration"),
    ({"kind": "nan", "duration": -5}, "duration"),
    ({"kind": "nan", "steps": 0}, "steps"),
    ({"kind": "nan", "duration": "1s", "steps": 3}, "steps"),
    ({"kind": "lr_spike", "params": {"factor": -2}}, "params.factor"),
    ({"kind": "lr_spike", "params": {"factor": "big"}}, "params.factor"),
    ({"kind": "lr_spike", "params": {"sigma": 2}}, "params.sigma"),
    ({"kind": "lr_spike", "params": {"at": 2}}, "params.at"),
    ({"kind": "lr_spike", "params": [1]}, "params"),
    ({"kind": "lr_spike", "at": 5}, "at"),
    ({"kind": "lr_spike", "colour": "red"}, "colour"),
])
def test_invalid_fault_body_is_422_with_the_field(daemon: Any, body: Any, field: str) -> None:
    before = state(daemon)
    assert_error(request(daemon, "POST", "/api/v1/runs/alpha/faults", body), 422, field)
    assert state(daemon) == before


@pytest.mark.parametrize(("body", "message"), [
    ({"kind": "lr_spike", "params": {"sigma": 2}},
     "not a parameter of fault kind lr_spike (expected: factor)"),
    ({"kind": "noise_burst", "params": {"shift": 1}},
     "not a parameter of fault kind noise_burst (expected: factor, sigma)"),
    ({"kind": "nan", "params": {"factor": 2}},
     "not a parameter of fault kind nan (expected: none, it takes no parameters)"),
])
def test_an_unknown_fault_parameter_is_named_with_the_kinds_parameters(
        daemon: Any, body: Any, message: str) -> None:
    field = f"params.{next(iter(body['params']))}"
    error = assert_error(request(daemon, "POST", "/api/v1/runs/alpha/faults", body), 422, field)
    assert error == message


def test_a_fault_on_a_gpu_the_run_lacks_is_422_and_changes_nothing(
        daemon_factory: Any, write_config: Any) -> None:
    d = daemon_factory(write_config(CONFIG.replace("  - name: gamma",
                                                   "  - name: gamma\n    hardware: {gpus: 4}")),
                       speed=SPEED)
    before = state(d)
    error = assert_error(request(d, "POST", "/api/v1/runs/alpha/faults",
                                 {"kind": "gpu_lost"}), 422)
    assert error == "run 'alpha': gpu_lost needs a run with a hardware block (its GPUs)"
    error = assert_error(request(d, "POST", "/api/v1/runs/gamma/faults",
                                 {"kind": "straggler", "params": {"rank": 4}}), 422)
    assert error == "run 'gamma': rank: the run has 4 GPUs (0-3), got 4"
    assert state(d) == before
    status, _, fault = request(d, "POST", "/api/v1/runs/gamma/faults",
                               {"kind": "gpu_lost", "params": {"gpu": 3}, "duration": "1m"})
    assert status == 201 and fault["kind"] == "gpu_lost"


def test_action_with_fields_is_422(daemon: Any) -> None:
    assert_error(request(daemon, "POST", "/api/v1/runs/alpha/pause", {"now": True}), 422, "now")
    assert runs(daemon)["alpha"]["paused"] is False


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("POST", "/api/v1/runs", "GET, HEAD"),
    ("DELETE", "/api/v1/runs/alpha", "GET, HEAD"),
    ("PUT", "/api/v1/runs/alpha/faults", "GET, HEAD, POST"),
    ("POST", "/api/v1/runs/alpha/faults/1", "GET, HEAD, DELETE"),
    ("GET", "/api/v1/runs/alpha/pause", "POST"),
    ("PATCH", "/api/v1/runs/alpha/resume", "POST"),
    ("OPTIONS", "/api/v1/runs/alpha/restart", "POST"),
    ("BREW", "/api/v1/runs", "GET, HEAD"),
])
def test_wrong_method_is_405_with_allow(daemon: Any, method: str, path: str, allow: str) -> None:
    result = request(daemon, method, path)
    assert_error(result, 405)
    assert result[1]["allow"] == allow


def test_body_over_the_limit_is_413_without_reading_it(daemon: Any) -> None:
    # Only the headers are sent: an answer at all proves the body was never waited for.
    head = (b"POST /api/v1/runs/alpha/faults HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n")
    status, headers, payload = raw_request(daemon.address, head)
    assert status == 413 and headers["connection"] == "close"
    assert json.loads(payload)["error"].startswith("body too large")


def test_body_just_over_the_limit_is_413(daemon: Any) -> None:
    body = b'{"kind": "nan", "pad": "' + b"x" * api.MAX_BODY_BYTES + b'"}'
    assert_error(request(daemon, "POST", "/api/v1/runs/alpha/faults", raw=body,
                         headers={"Content-Type": "application/json"}), 413)
    assert runs(daemon)["alpha"]["faults"] == []


def test_missing_content_length_is_411(daemon: Any) -> None:
    head = (b"POST /api/v1/runs/alpha/faults HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nConnection: close\r\n\r\n")
    status, _, payload = raw_request(daemon.address, head)
    assert status == 411 and "Content-Length" in json.loads(payload)["error"]


def test_chunked_body_is_411(daemon: Any) -> None:
    head = (b"POST /api/v1/runs/alpha/faults HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    status, _, _ = raw_request(daemon.address, head, b'f\r\n{"kind": "nan"}\r\n0\r\n\r\n')
    assert status == 411
    assert runs(daemon)["alpha"]["faults"] == []


@pytest.mark.parametrize("value", ["-1", "abc", "1e3", "+5"])
def test_malformed_content_length_is_400(daemon: Any, value: str) -> None:
    head = (f"POST /api/v1/runs/alpha/faults HTTP/1.1\r\nHost: x\r\nContent-Type: "
            f"application/json\r\nContent-Length: {value}\r\n\r\n").encode()
    assert raw_request(daemon.address, head)[0] == 400


def test_body_shorter_than_its_content_length_is_400(daemon: Any) -> None:
    head = (b"POST /api/v1/runs/alpha/faults HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n")
    assert raw_request(daemon.address, head, b'{"kind": "nan"}')[0] == 400
    assert runs(daemon)["alpha"]["faults"] == []


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded",
                                   "application/jsonp", None])
def test_unsupported_content_type_is_415(daemon: Any, ctype: str | None) -> None:
    headers = {} if ctype is None else {"Content-Type": ctype}
    result = request(daemon, "POST", "/api/v1/runs/alpha/faults",
                     raw=b'{"kind": "nan"}', headers=headers)
    assert_error(result, 415)
    assert runs(daemon)["alpha"]["faults"] == []


def test_content_type_with_charset_is_accepted(daemon: Any) -> None:
    status, _, _ = request(daemon, "POST", "/api/v1/runs/alpha/faults", {"kind": "nan"},
                           headers={"Content-Type": "Application/JSON; charset=utf-8"})
    assert status == 201


def test_cross_origin_browser_requests_may_not_change_anything(daemon: Any) -> None:
    result = request(daemon, "POST", "/api/v1/runs/alpha/pause",
                     headers={"Origin": "https://evil.example"})
    assert_error(result, 403)
    assert runs(daemon)["alpha"]["paused"] is False
    same = request(daemon, "POST", "/api/v1/runs/alpha/pause",
                   headers={"Origin": f"http://{daemon.address}"})
    assert same[0] == 200


def test_connection_stays_usable_after_a_refused_body(daemon: Any) -> None:
    conn = http.client.HTTPConnection(daemon.address, timeout=10)
    try:
        conn.request("POST", "/api/v1/runs/alpha/faults", body=b'{"kind": "nan"}',
                     headers={"Content-Type": "text/plain"})
        first = conn.getresponse()
        first.read()
        assert first.status == 415
        conn.request("GET", "/api/v1/runs/alpha")
        second = conn.getresponse()
        assert second.status == 200 and json.loads(second.read())["run"] == "alpha"
    finally:
        conn.close()


class _Broken:
    """A controller whose every call fails as a bug would."""

    def __init__(self) -> None:
        self.logged: list[tuple[str, dict[str, Any]]] = []
        self.log = self

    def exception(self, event: str, **kw: Any) -> None:
        self.logged.append((event, kw))

    def runs_view(self) -> list[dict[str, Any]]:
        raise RuntimeError("boom: secret internals")

    def run_view(self, run: str) -> dict[str, Any]:
        raise api.NotFoundError(f"unknown run {run!r}")



def test_an_unexpected_exception_is_a_logged_500_with_a_generic_message() -> None:
    broken = _Broken()
    server = start_server("127.0.0.1:0",
                          api.ControlApi(broken, auth.ControlSettings()).routes())  # type: ignore[arg-type]
    try:
        status, body = http_get(f"http://{server.address}/api/v1/runs")
        assert status == 500
        assert json.loads(body) == {"error": "internal error; see the daemon's log",
                                    "field": None}
        assert b"boom" not in body
        assert broken.logged == [("api_request_failed",
                                  {"method": "GET", "path": "/api/v1/runs"})]
        assert http_get(f"http://{server.address}/api/v1/runs/x")[0] == 404
    finally:
        server.close()


# ---------------------------------------------------------------------------------- tokens


def test_mutations_without_a_token_are_401_with_a_challenge(token_daemon: Any) -> None:
    result = request(token_daemon, "POST", "/api/v1/runs/alpha/pause")
    assert_error(result, 401)
    assert result[1]["www-authenticate"].startswith("Bearer")
    assert runs(token_daemon)["alpha"]["paused"] is False


@pytest.mark.parametrize("authorization", [
    "Bearer wrong", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"Basic {TOKEN}", TOKEN,
    "Bearer ", "Bearer \u00e9t\u00e9"])
def test_a_wrong_token_is_401(token_daemon: Any, authorization: str) -> None:
    result = request(token_daemon, "POST", "/api/v1/runs/alpha/faults", {"kind": "nan"},
                     headers={"Authorization": authorization})
    assert_error(result, 401)
    assert runs(token_daemon)["alpha"]["faults"] == []


def test_the_right_token_allows_every_mutation(token_daemon: Any) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    status, _, fault = request(token_daemon, "POST", "/api/v1/runs/alpha/faults",
                               {"kind": "nan"}, headers=auth)
    assert status == 201
    assert request(token_daemon, "DELETE", f"/api/v1/runs/alpha/faults/{fault['id']}",
                   headers=auth)[0] == 200
    for action in ("pause", "resume", "restart"):
        assert request(token_daemon, "POST", f"/api/v1/runs/alpha/{action}",
                       headers={"Authorization": f"bearer  {TOKEN} "})[0] == 200


def test_reads_need_no_token(token_daemon: Any) -> None:
    assert request(token_daemon, "GET", "/api/v1/runs")[0] == 200
    assert request(token_daemon, "GET", "/api/v1/runs/alpha/faults")[0] == 200


def test_sighup_reloads_the_token_file_and_keeps_the_old_token_if_the_new_file_is_unusable(
        token_daemon: Any, tmp_path: Path) -> None:
    def events(name: str) -> list[dict[str, Any]]:
        return [e for e in token_daemon.events() if e.get("event") == name]

    def pause(token: str) -> int:
        return int(request(token_daemon, "POST", "/api/v1/runs/alpha/pause",
                           headers={"Authorization": f"Bearer {token}"})[0])

    token_file = tmp_path / "token"
    token_file.write_text("")  # empty: rejected, the running token stays
    token_daemon.proc.send_signal(signal.SIGHUP)
    rejected = wait_for(lambda: events("control_token_rejected"), what="control_token_rejected")
    assert rejected[0]["error"] == f"--web.control-token-file: {token_file} is empty"
    assert pause(TOKEN) == 200
    token_file.write_text("rotated-token-2\n")
    token_daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: events("control_token_reloaded"), what="control_token_reloaded")
    assert pause(TOKEN) == 401
    assert pause("rotated-token-2") == 200
    assert "rotated-token-2" not in token_daemon.output()


def test_responses_and_logs_never_carry_the_token(token_daemon: Any) -> None:
    for bearer in (f"Bearer {TOKEN}", f"Bearer {TOKEN}x"):
        for method, path in (("POST", "/api/v1/runs/alpha/pause"),
                             ("POST", "/api/v1/runs/nope/pause"),
                             ("GET", "/api/v1/runs")):
            _, headers, payload = request(token_daemon, method, path,
                                          headers={"Authorization": bearer})
            assert TOKEN not in json.dumps(payload) + json.dumps(headers)
    assert TOKEN not in token_daemon.output()


def test_disabled_control_api_is_403_for_changes_and_serves_reads(
        daemon_factory: Any, write_config: Any) -> None:
    d = daemon_factory(write_config(CONFIG), speed=SPEED,
                       extra_args=("--no-web.enable-control-api",))
    for method, path in (("POST", "/api/v1/runs/alpha/faults"),
                         ("POST", "/api/v1/runs/alpha/pause"),
                         ("DELETE", "/api/v1/runs/alpha/faults/1")):
        message = assert_error(request(d, method, path, {"kind": "nan"}), 403)
        assert "--web.enable-control-api" in message
    assert request(d, "GET", "/api/v1/runs/alpha")[0] == 200
    assert runs(d)["alpha"]["faults"] == []


def _run_daemon(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "simulator", "run", "--log.format", "json",
                           *args], capture_output=True, text=True, timeout=30, cwd=tmp_path,
                          stdin=subprocess.DEVNULL)


def test_refuses_a_non_loopback_address_without_a_token(tmp_path: Path) -> None:
    # Refused before binding: the process exits at once and never listens.
    done = _run_daemon(tmp_path, "--web.listen-address", "0.0.0.0:0")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert "--web.control-token-file" in lines[0] and "--no-web.enable-control-api" in lines[0]
    assert "listening" not in done.stdout + done.stderr


@pytest.mark.parametrize(("contents", "message"), [("", "is empty"), (" \n\t", "is empty"),
                                                  ("two words", "printable ASCII")])
def test_unusable_token_file_is_a_usage_error(tmp_path: Path, contents: str,
                                              message: str) -> None:
    token = tmp_path / "token"
    token.write_text(contents)
    done = _run_daemon(tmp_path, "--web.listen-address", "127.0.0.1:0",
                       "--web.control-token-file", str(token))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and message in done.stderr


def test_missing_token_file_is_a_usage_error(tmp_path: Path) -> None:
    done = _run_daemon(tmp_path, "--web.control-token-file", str(tmp_path / "absent"))
    assert done.returncode == 2 and "cannot read" in done.stderr
    assert done.stderr.count("\n") == 1


def settings_of(args: Any) -> auth.ControlSettings:
    """The control API settings ``trainsim run`` takes from its flags."""
    return auth.control_settings(args.control_api, args.token_file, args.listen_address)


@pytest.mark.parametrize(("address", "flags", "allowed"), [
    ("127.0.0.1:9310", (), True),
    ("localhost:9310", (), True),
    ("[::1]:9310", (), True),
    ("0.0.0.0:9310", (), False),
    (":9310", (), False),
    ("[::]:9310", (), False),
    ("192.0.2.1:9310", (), False),
    ("example.org:9310", (), False),
    ("0.0.0.0:9310", ("--no-web.enable-control-api",), True),
])
def test_loopback_rule(address: str, flags: tuple[str, ...], allowed: bool) -> None:
    args = cli.build_parser().parse_args(["run", "--web.listen-address", address, *flags])
    if allowed:
        assert settings_of(args).token is None
    else:
        with pytest.raises(UsageError, match="refusing to listen"):
            settings_of(args)


def test_settings_repr_hides_the_token() -> None:
    assert "hunter2" not in repr(auth.ControlSettings(token=b"hunter2"))


# ---------------------------------------------------------------------- property-based test

_KINDS = ("lr_spike", "gradient_explosion", "nan", "plateau", "drift", "noise_burst",
          "slow_steps", "hang", "crash")
_NO_CRLF = st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n")
_SEGMENT = st.one_of(
    st.sampled_from([*RUNS, "runs", "faults", "pause", "resume", "restart", "1", "2", "99",
                     "..", ".", "", "%2F", "a%2Fb", "%2e%2e", "%00", "%ZZ", "%C3%28", "%ff",
                     "\u00e9", "\U0001f4a5", "\u202e", "x" * 3000, "alpha%20"]),
    st.text(_NO_CRLF, max_size=12),
)
_PATH = st.one_of(
    st.lists(_SEGMENT, max_size=5).map(lambda s: "/api/v1/" + "/".join(s)),
    st.builds(lambda run, tail: f"/api/v1/runs/{run}{tail}", st.sampled_from(RUNS),
              st.sampled_from(["", "/faults", "/faults/1", "/pause", "/resume", "/restart",
                               "/faults/", "//pause", "/pause/"])),
    st.sampled_from(["/", "/api", "/api/", "/api/v1", "/api/v2/runs", "//api/v1/runs",
                     "/api/v1/../v1/runs", "/api/v1/runs/..%2F..%2Fetc", "/metrics", "*"]),
    st.text(_NO_CRLF, max_size=40).map(lambda t: "/" + t),
).flatmap(lambda p: st.sampled_from([p, p + "?x=1", p + "?"]))
_METHOD = st.one_of(st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH",
                                     "OPTIONS", "TRACE", "CONNECT"]),
                    st.from_regex(r"[A-Za-z]{1,12}", fullmatch=True))
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                              max_size=4),
    max_leaves=12)
_FAULTISH = st.fixed_dictionaries(
    {"kind": st.sampled_from(_KINDS) | _JSON},
    optional={"duration": st.sampled_from(["1s", "10m", "0s", "-1s", "soon", 5, 0, -1, 1e308])
              | _JSON,
              "steps": st.integers(-5, 10**13) | _JSON,
              "params": st.dictionaries(st.sampled_from(["factor", "sigma", "shift", "at", "x"]),
                                        st.floats() | st.integers() | _JSON, max_size=3)
              | _JSON,
              "extra": _JSON})
_VALID_FAULT = st.fixed_dictionaries(
    {"kind": st.sampled_from(_KINDS)},
    optional={"duration": st.sampled_from(["1s", "10m", 5, 0.5]), "params": st.just({})},
).map(lambda v: json.dumps(v).encode())
_BODY = st.one_of(
    st.none(),
    st.binary(max_size=300),
    _JSON.map(lambda v: json.dumps(v).encode()),
    _FAULTISH.map(lambda v: json.dumps(v).encode()),
    st.just(b"[" * 20000),
    st.just(b'{"kind": "nan", "duration": NaN}'),
)
_CTYPE = st.one_of(st.none(), st.sampled_from(
    ["application/json", "application/json; charset=utf-8", "APPLICATION/JSON", "text/plain",
     "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/",
     ";", "application/json;;;"]), st.text(_NO_CRLF, max_size=30))
_LENGTH = st.sampled_from(["exact", "exact", "exact", "missing", "huge", "over-limit",
                           "garbage", "negative", "longer", "chunked", "twice"])


_ENDPOINTS = st.builds(
    lambda run, ep: (ep[0], ep[1].format(run=run)),
    st.sampled_from([*RUNS, "nope"]),
    st.sampled_from([("GET", "/api/v1/runs"), ("GET", "/api/v1/runs/{run}"),
                     ("HEAD", "/api/v1/runs/{run}/faults"), ("GET", "/api/v1/runs/{run}/faults"),
                     ("POST", "/api/v1/runs/{run}/faults"), ("POST", "/api/v1/runs/{run}/faults"),
                     ("DELETE", "/api/v1/runs/{run}/faults/1"),
                     ("POST", "/api/v1/runs/{run}/pause"), ("POST", "/api/v1/runs/{run}/resume"),
                     ("POST", "/api/v1/runs/{run}/restart")]))


@st.composite
def _requests(draw: st.DrawFn) -> tuple[str, str, bytes, bytes]:
    mode = draw(st.sampled_from(["valid", "near", "random"]))
    if mode == "valid":  # the endpoints' success paths must be reached too
        method, path = draw(_ENDPOINTS)
        body = draw(_VALID_FAULT) if path.endswith("/faults") and method == "POST" else \
            draw(st.sampled_from([None, b"{}"]))
        ctype = draw(st.sampled_from(["application/json", "application/json; charset=utf-8"]))
        length = "exact"
    elif mode == "near":  # one or more parts of a valid request perturbed
        method, path = draw(_ENDPOINTS)
        body = draw(st.one_of(_FAULTISH.map(lambda v: json.dumps(v).encode()),
                              st.sampled_from([None, b"{}", b'{"kind": "nan"}']), _BODY))
        ctype = draw(st.sampled_from(["application/json", "application/json; charset=utf-8"])
                     | _CTYPE)
        length = draw(st.sampled_from(["exact"] * 8) | _LENGTH)
    else:
        method, path, body, ctype, length = (draw(_METHOD), draw(_PATH), draw(_BODY),
                                             draw(_CTYPE), draw(_LENGTH))
    data = body or b""
    headers = ["Host: trainsim", "Connection: close"]
    if ctype is not None:
        headers.append(f"Content-Type: {ctype}")
    if body is not None or length != "exact":
        headers.append({
            "exact": f"Content-Length: {len(data)}",
            "missing": "X-No-Length: 1",
            "huge": "Content-Length: 99999999999999999999",
            "over-limit": f"Content-Length: {api.MAX_BODY_BYTES + 1}",
            "garbage": "Content-Length: twelve",
            "negative": "Content-Length: -3",
            "longer": f"Content-Length: {len(data) + 7}",
            "chunked": "Transfer-Encoding: chunked",
            "twice": f"Content-Length: {len(data)}\r\nContent-Length: {len(data)}",
        }[length])
    if length in ("huge", "over-limit"):
        data = b""  # the headers alone must be answered
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n"
    return method, path, head.encode("utf-8", "surrogateescape"), data


def _fixed(method: str, path: str, body: bytes | None = None,
           extra: str = "") -> tuple[str, str, bytes, bytes]:
    """A request for ``@example``: JSON content type and the exact length unless ``extra``."""
    head = f"{method} {path} HTTP/1.1\r\nHost: trainsim\r\nConnection: close\r\n"
    if body is not None:
        head += "Content-Type: application/json\r\n"
        head += extra or f"Content-Length: {len(body)}\r\n"
    return method, path, (head + "\r\n").encode(), body or b""


def _reset(d: Any) -> None:
    """Undo what a valid request changed: clear injected faults, resume every run."""
    for name, r in runs(d).items():
        for f in r["faults"]:
            request(d, "DELETE", f"/api/v1/runs/{name}/faults/{f['id']}")
        if r["paused"]:
            request(d, "POST", f"/api/v1/runs/{name}/resume")


def test_random_requests_never_5xx_and_bad_ones_change_nothing(daemon: Any) -> None:
    seen: dict[int, int] = {}

    @settings(max_examples=150, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(_requests())
    @example(_fixed("POST", "/api/v1/runs/alpha/faults", b'{"kind": "crash", "duration": "1m"}'))
    @example(_fixed("POST", "/api/v1/runs/beta/pause", b"{}"))
    @example(_fixed("POST", "/api/v1/runs/beta/faults", b'{"kind": "nan"}',
                    "Content-Length: 99999999999999999999\r\n"))
    @example(_fixed("POST", "/api/v1/runs/alpha%2Fpause", b""))
    @example(_fixed("GET", "/api/v1/runs/%2e%2e"))
    def check(req: tuple[str, str, bytes, bytes]) -> None:
        method, path, head, body = req
        before = state(daemon)
        status, _, payload = raw_request(daemon.address, head, body)
        seen[status] = seen.get(status, 0) + 1
        assert status < 500, (status, head[:300], payload[:300])
        assert http_get(f"{daemon.url}/metrics")[0] == 200
        if 200 <= status < 300:
            assert method in ("GET", "HEAD", "POST", "DELETE"), (method, path)
            if method in ("POST", "DELETE"):
                _reset(daemon)
        else:
            assert state(daemon) == before, (status, head[:300], payload[:300])

    check()
    print("statuses seen:", dict(sorted(seen.items())))
    # The generator reached the API's successes as well as its refusals.
    assert {200, 201, 400, 404, 405} <= set(seen), seen


def test_percent_decoding_happens_after_splitting_the_path(daemon: Any) -> None:
    quoted = urllib.parse.quote("alpha/pause", safe="")
    assert_error(request(daemon, "POST", f"/api/v1/runs/{quoted}"), 405)
    assert_error(request(daemon, "GET", f"/api/v1/runs/{quoted}"), 400)


# ------------------------------------------------------------------------------ deployment


def test_the_compose_stack_passes_the_loopback_rule_with_its_token() -> None:
    service = yaml.safe_load(tc.COMPOSE_FILE.read_text())["services"]["trainsim"]
    argv = tc._argv(service["command"])
    token_path = tc._flag(argv, "--web.control-token-file")
    assert token_path, "the compose stack starts the daemon without a control token"
    host_file = tc._host_path(service, token_path)
    assert host_file is not None and host_file.is_file()
    argv[argv.index(token_path)] = str(host_file)
    settings = settings_of(cli.build_parser().parse_args(argv))
    assert settings.enabled and settings.token == host_file.read_bytes().strip()


def test_the_bare_image_passes_the_loopback_rule() -> None:
    cmd = tc._exec_form(tc._last("CMD"))
    settings_of(cli.build_parser().parse_args(cmd))  # raises if refused
