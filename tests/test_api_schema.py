"""The OpenAPI document fuzzed with schemathesis against the running API: `peon serve-api` as
its own process on 127.0.0.1, over the real engine and a real SQLite store holding one real
server. Every operation gets generated requests (valid and invalid); no answer may be a 5xx,
and every answer must match the document (status code, content type, body schema).

Kept bounded: MAX_EXAMPLES requests per operation, no shrinking. The one route left out is
GET /api/v1/events/stream: a Server-Sent Events stream never ends by design, so a generated
call to it would wait forever (tests/test_api.py reads it with a deadline instead).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from bot.settings import ApiSettings
from tests.conftest import ROOT, cleanup_instance, config_file, make_settings, peon

pytestmark = pytest.mark.docker

MAX_EXAMPLES = 15
SERVER = "web-fuzz"
STREAM = "/api/v1/events/stream"


@dataclass(frozen=True)
class Served:
    base: str
    token: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, fakegame: str) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("fuzz")
    port = _free_port()
    # A rate far above what the fuzzer sends: 429s would hide the answers under test.
    api = ApiSettings(listen=f"127.0.0.1:{port}", rate=10000, burst=100000)
    cfg = make_settings(tmp, api=api)
    config = config_file(cfg, tmp / "peon.yaml")
    made = peon(config, "server", "create", "fakegame", SERVER)
    assert made.returncode == 0, made.stderr
    out = peon(config, "token", "create", "web-fuzz", "--role", "admin")
    assert out.returncode == 0, out.stderr
    found = re.search(r"peon_[A-Za-z0-9_-]+", out.stdout)
    assert found, out.stdout
    env = {**os.environ, "PEON_CONFIG": str(config)}
    env.pop("DISCORD_TOKEN", None)
    log = (tmp / "serve-api.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "serve-api"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{base}/api/v1/openapi.json", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None, (tmp / "serve-api.log").read_text()
            assert time.monotonic() < deadline, "peon serve-api did not answer in 60 s"
            time.sleep(0.2)
        yield Served(base, found.group(0))
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        text = (tmp / "serve-api.log").read_text()
        print(f"peon serve-api log: {tmp / 'serve-api.log'}")
        # An unexpected exception is answered with 500 and logged with a traceback: none.
        assert "Traceback" not in text, text[-4000:]
        cleanup_instance(cfg.instance_id)


@pytest.fixture(scope="module")
def api_schema(served: Served) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_url(f"{served.base}/api/v1/openapi.json")
    schema.config.update(
        base_url=served.base,
        headers={"Authorization": f"Bearer {served.token}"},
        request_timeout=60,
    )
    return schema.exclude(path=STREAM)


def _fuzz(operation: schemathesis.APIOperation, mode: GenerationMode) -> None:
    @given(operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,  # the same requests every run: a failure reproduces
        suppress_health_check=list(HealthCheck),
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: bounded in time
    )
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate()

    run()


# Operations one at a time under Hypothesis directly: schemathesis' pytest plugin
# (schemathesis.pytest.from_fixture) fails on pytest 9 ('Function' has no '_nodeid').
@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda m: m.value)
def test_every_answer_matches_the_openapi_document(
    api_schema: schemathesis.BaseSchema, mode: GenerationMode
) -> None:
    failures: list[str] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) > 20
    for operation in operations:
        try:
            _fuzz(operation, mode)
        except Unsatisfiable:
            # Negative mode on an operation with nothing to make invalid (no parameters,
            # or only free-form strings): there is no request to send.
            assert mode is GenerationMode.NEGATIVE, operation.label
        except (Exception, BaseExceptionGroup) as e:  # every failure, not only the first
            failures.append(f"{operation.label}: {e}")
    assert not failures, "\n\n".join(failures)


def test_the_stream_is_the_only_route_left_out(api_schema: schemathesis.BaseSchema) -> None:
    """The exclusion above removes exactly the event stream, nothing else."""
    full = schemathesis.openapi.from_url(api_schema.get_base_url() + "/api/v1/openapi.json")
    everything = {op.ok().label for op in full.get_all_operations()}
    fuzzed = {op.ok().label for op in api_schema.get_all_operations()}
    assert everything - fuzzed == {f"GET {STREAM}"}


def test_the_fuzzed_server_is_left_whole(served: Served) -> None:
    """What the fuzzer sent (random names, bodies, ids) never reached the one real server
    in a way that broke it: it still answers with its own record."""
    r = requests.get(
        f"{served.base}/api/v1/servers/{SERVER}",
        headers={"Authorization": f"Bearer {served.token}"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.json()["name"] == SERVER
