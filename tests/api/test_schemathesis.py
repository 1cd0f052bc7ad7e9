"""A bounded schemathesis run over limner's OpenAPI document, against ``limner serve`` over loopback.

Every operation gets generated requests (valid and invalid, within the schema's types), as the caller's
own token; each answer must be no 5xx, a status the document lists, the declared content type and a body
matching the declared schema. It keeps the nits found by an outside schemathesis run fixed: overlong keys
padded with whitespace, a wrongly typed ``vision_handoff`` coerced, ``OPTIONS`` answered with a one-method
``Allow``, ``409 turn_in_progress`` undocumented.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import positive_data_acceptance

from tests.processes import LimnerServe, clean_env


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LimnerServe, str]]:
    workdir = tmp_path_factory.mktemp("schemathesis")
    env = clean_env(LIMNER_DATA_DIR=str(workdir / "data"))
    made = subprocess.run(
        [sys.executable, "-m", "limner", "tokens", "create", "--user", "fuzz"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=workdir,
    )
    server = LimnerServe(workdir, env)
    try:
        server.wait_ready()
        yield server, made.stdout.split()[-1]
    finally:
        server.stop()


# Operations whose acceptance depends on what no schema can say: an upload must be an image (its bytes
# decide), an agent's chat model must be on the operator's LIMNER_CHAT_MODELS and its name not taken. For
# them a schema-valid request may get a 4xx; every other check still applies.
CONTENT_OR_STATE_DECIDES = {("POST", "/api/images"), ("POST", "/api/agents"), ("PATCH", "/api/agents/{agent_id}")}


def _check_operation(operation: Any, base_url: str, token: str) -> None:
    key = (operation.method.upper(), operation.path)
    excluded = [positive_data_acceptance] if key in CONTENT_OR_STATE_DECIDES else []

    @settings(
        max_examples=8,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        database=None,
        derandomize=True,  # the same requests on every run: a failure here is a finding, never luck
    )
    @given(case=operation.as_strategy())
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(
            base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30, excluded_checks=excluded
        )

    check()


def _summary(exc: BaseException) -> str:
    found = [str(exc).strip().splitlines()[0]]
    for sub in getattr(exc, "exceptions", ()):
        found.append(" ".join(str(sub).split())[:600])
    found += [line.strip() for line in str(exc).splitlines() if line.strip().startswith(("curl", "`{"))]
    return "\n    ".join(found)


def test_the_api_answers_as_documented(served: tuple[LimnerServe, str]) -> None:
    server, token = served
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()
        try:
            _check_operation(operation, server.url, token)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # schemathesis reports a FailureGroup (a BaseExceptionGroup): collect all
            failures.append(f"{operation.method.upper()} {operation.path}: {_summary(exc)}")
    assert failures == [], "\n\n".join(failures)
