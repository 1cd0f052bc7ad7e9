"""A loopback emulator of the Black Forest Labs (BFL) FLUX API, following ``shared/apis/flux.md``.

Routes, relative to where the app is mounted. The sandbox runner mounts it at ``/bfl`` (that URL is what
limner and LibreChat-style clients take as ``FLUX_API_BASE_URL``) and again at the sandbox's root, where
BFL's official Python client (``blackforest``) sends its requests: it keeps only the scheme and host of its
base URL (``urljoin`` with ``v1/<model>`` replaces the base's last path segment, and its fallback poll is
the root-absolute ``/v1/get_result``). Links the emulator hands out stay under the prefix the request came
in on:

- ``POST /v1/<endpoint>`` for every endpoint of :data:`~limner.sandbox.bfl_catalog.ENDPOINTS` (FLUX1.1
  [pro] and Ultra, [dev], legacy [pro], Kontext [pro]/[max], Fill, Expand, every FLUX.2 endpoint, the
  fine-tuned ones): ``x-key`` auth, the schema's 422s, 402 without credits, 429 past the active tasks,
  then ``{id, polling_url, cost, input_mp, output_mp}``.
- ``GET /v1/get_result?id=``: ``Pending`` (with ``progress``), then ``Ready`` with ``result.sample``, or
  ``Request Moderated``, ``Content Moderated``, ``Error``; ``Task not found`` for unknown ids.
- ``GET /delivery/results/{name}?se=...&sig=...``: the signed, expiring result link (no auth, Azure Blob
  style errors once expired).
- ``GET /v1/my_finetunes``, ``GET /v1/finetune_details``, ``POST /v1/delete_finetune``, ``GET /v1/credits``.
- ``/_sandbox/faults`` (``GET``, ``POST``, ``DELETE``), ``/_sandbox/requests`` (``GET``, ``DELETE``).

Not emulated: webhook delivery (a given ``webhook_url`` only changes the submit answer's shape), fetching
``input_image`` URLs (the task ends in ``Error``), the legacy training API and the Canny/Depth tools. The
emulator imports nothing from limner outside ``limner.sandbox``; it is an upstream, not part of the app.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.datastructures import URL
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from limner.sandbox import bfl_wire as wire
from limner.sandbox.bfl_catalog import ENDPOINTS, EndpointSpec, cost_of, megapixels, validate_body
from limner.sandbox.bfl_jobs import DecodedInputs, InputProblem, Job, decode_inputs, output_size, render_job, upsample
from limner.sandbox.bfl_tasks import DEFAULT_TASK_LIMIT, Task, TaskStatus, TaskStore, Triggers, parse_triggers
from limner.sandbox.faults import Fault, FaultKind, FaultQueue
from limner.sandbox.hosted_files import HostedFiles, Lookup, expired_body, missing_body
from limner.sandbox.openai_errors import EmulatedError
from limner.sandbox.openai_wire import stall
from limner.sandbox.recorder import DEFAULT_LOG_LIMIT, RecordedRequest, RequestLog

__all__ = ["DEFAULT_FINETUNES", "BFLEmulator"]

Handler = Callable[[Request], Awaitable[Response]]

DEFAULT_FINETUNES: dict[str, dict[str, Any]] = {
    "sandbox-character": {
        "finetune_comment": "sandbox character",
        "trigger_word": "TOK",
        "mode": "character",
        "finetune_type": "lora",
        "lora_rank": 32,
        "iterations": 300,
        "learning_rate": 0.0001,
        "priority": "quality",
        "captioning": True,
        "timestamp": "2026-01-15T10:00:00Z",
    },
    "sandbox-style": {
        "finetune_comment": "sandbox watercolour style",
        "trigger_word": "WTC",
        "mode": "style",
        "finetune_type": "full",
        "iterations": 500,
        "learning_rate": 0.00001,
        "priority": "speed",
        "captioning": False,
        "timestamp": "2026-02-01T09:30:00Z",
    },
}
_MEDIA_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
_OUTCOME_DETAILS = {
    TaskStatus.REQUEST_MODERATED: {"message": "The sandbox moderated the request (prompt or input image)."},
    TaskStatus.CONTENT_MODERATED: {"message": "The sandbox moderated the generated image."},
    TaskStatus.ERROR: {"message": "The sandbox failed this task on request."},
}


class BFLEmulator:
    """State and configuration of one emulated BFL account set.

    ``accepted_keys`` None accepts any non-empty ``x-key``. A task answers ``Pending`` for
    ``pending_polls`` polls and until ``ready_after`` seconds have passed, reporting ``progress_values``
    in turn (the last one repeats; None computes a rising fraction). ``url_ttl`` is how long result links
    work. ``polling_host_alias`` names another host (``localhost`` for ``127.0.0.1``) in ``polling_url``;
    ``omit_polling_url`` answers like the old single-cluster hosts, with no ``polling_url``. ``credits``
    is every key's starting balance; ``max_active_tasks`` the unfinished tasks a key may have (Kontext
    [max] keeps its own limit of 6). ``retired_endpoints`` answer 404 like removed routes.
    ``auth_status`` (403, or 401) and ``not_found_status`` (200 per the spec, or 404) pick between the
    forms clients must both handle. ``clock`` (Unix seconds) times ``ready_after`` and link expiry; a test
    passes its own to move time instead of sleeping.
    """

    def __init__(
        self,
        *,
        accepted_keys: set[str] | None = None,
        pending_polls: int = 1,
        ready_after: float = 0.0,
        progress_values: Sequence[float | None] | None = None,
        url_ttl: float = 600.0,
        polling_host_alias: str | None = None,
        omit_polling_url: bool = False,
        credits: float = 10_000.0,
        max_active_tasks: int = 24,
        finetunes: Mapping[str, Mapping[str, Any]] | None = None,
        retired_endpoints: Iterable[str] = (),
        auth_status: int = 403,
        not_found_status: int = 200,
        request_log_limit: int = DEFAULT_LOG_LIMIT,
        task_limit: int = DEFAULT_TASK_LIMIT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.accepted_keys = accepted_keys
        self.pending_polls = pending_polls
        self.ready_after = ready_after
        self.progress_values = progress_values
        self.url_ttl = url_ttl
        self.polling_host_alias = polling_host_alias
        self.omit_polling_url = omit_polling_url
        self.credits = credits
        self.max_active_tasks = max_active_tasks
        source = DEFAULT_FINETUNES if finetunes is None else finetunes
        self.finetunes: dict[str, dict[str, Any]] = {name: dict(details) for name, details in source.items()}
        self.retired_endpoints = set(retired_endpoints)
        self.auth_status = auth_status
        self.not_found_status = not_found_status
        self.faults = FaultQueue()
        self._outcomes: deque[TaskStatus] = deque()
        self._balances: dict[str, float] = {}
        self._tasks = TaskStore(task_limit)
        self._log = RequestLog(request_log_limit)
        self.clock = clock
        self._files = HostedFiles(clock=clock)
        self._secret = secrets.token_bytes(16)
        self._pauses: set[anyio.CancelScope] = set()

    # -- knobs and introspection ------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """The recorded requests, oldest first (a copy)."""
        return self._log.snapshot()

    @property
    def tasks(self) -> list[Task]:
        """Every task still remembered, oldest first."""
        return self._tasks.all()

    def queue_outcome(self, status: TaskStatus | str, *, times: int = 1) -> None:
        """Make the next ``times`` submitted tasks end in ``status`` (unless their prompt says otherwise)."""
        outcome = TaskStatus(status)
        if outcome is TaskStatus.PENDING:
            raise ValueError("a task cannot end Pending; use pending_polls or [[sandbox:slow=N]]")
        self._outcomes.extend([outcome] * times)

    def credits_of(self, key: str) -> float:
        """The balance of ``key`` in credits (1 credit = US$0.01)."""
        return self._balances.get(key, self.credits)

    def set_credits(self, key: str, amount: float) -> None:
        """Set the balance of ``key``."""
        self._balances[key] = amount

    def reset(self) -> None:
        """Forget faults, queued outcomes, tasks, balances, recorded requests and hosted results."""
        self.faults.clear()
        self._outcomes.clear()
        self._tasks.clear()
        self._balances.clear()
        self._log.clear()
        self._files.clear()

    def close(self) -> None:
        """Release every stalled request, so a server can stop promptly."""
        for scope in list(self._pauses):
            scope.cancel()

    def mounts(self) -> dict[str, ASGIApp]:
        """Served at ``/bfl`` and at the root (``""``), where the official client sends (module docstring)."""
        app = self.app()
        return {"bfl": app, "": app}

    def public_urls(self, base_url: str) -> dict[str, str]:
        """The client base URL (``FLUX_API_BASE_URL``) for a sandbox served at ``base_url``."""
        return {"bfl": f"{base_url.rstrip('/')}/bfl"}

    def app(self) -> Starlette:
        """The Starlette app serving every route of this emulator."""
        routes = [
            Route("/v1/get_result", self._route(self._get_result), methods=["GET"]),
            Route("/v1/my_finetunes", self._route(self._my_finetunes), methods=["GET"]),
            Route("/v1/finetune_details", self._route(self._finetune_details), methods=["GET"]),
            Route("/v1/delete_finetune", self._route(self._delete_finetune), methods=["POST"]),
            Route("/v1/credits", self._route(self._credits), methods=["GET"]),
            Route("/v1/{endpoint}", self._route(self._submit, known=self._is_endpoint), methods=["POST"]),
            Route("/delivery/results/{name}", self._route(self._deliver, authenticated=False), methods=["GET"]),
            Route("/_sandbox/faults", self._control_faults, methods=["GET", "POST", "DELETE"]),
            Route("/_sandbox/requests", self._control_requests, methods=["GET", "DELETE"]),
        ]
        handlers = {404: self._not_found, 405: self._not_allowed}
        return Starlette(routes=routes, exception_handlers=handlers)

    # -- the request pipeline ----------------------------------------------------------------

    def _route(
        self, handler: Handler, *, authenticated: bool = True, known: Callable[[Request], bool] | None = None
    ) -> Handler:
        """Wrap a handler: record, answer 404 for unknown paths before auth (as routing does), fault, errors."""

        async def serve(request: Request) -> Response:
            record = self._record(request)
            request.state.record = record
            try:
                if known is not None and not known(request):
                    raise wire.detail_error(404, "Not Found")
                if authenticated:
                    request.state.key = self._authenticate(request)
                response = await self._with_fault(request, handler)
            except EmulatedError as exc:
                response = JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)
            record.status = response.status_code
            return response

        return serve

    def _record(self, request: Request) -> RecordedRequest:
        record = RecordedRequest(
            method=request.method,
            path=request.url.path,
            query=dict(request.query_params),
            headers={key.lower(): value for key, value in request.headers.items()},
            request_id="",
        )
        self._log.append(record)
        return record

    def _authenticate(self, request: Request) -> str:
        key = request.headers.get("x-key", "").strip()
        if not key:
            raise wire.not_authenticated(missing=True, status=self.auth_status)
        if self.accepted_keys is not None and key not in self.accepted_keys:
            raise wire.not_authenticated(missing=False, status=self.auth_status)
        return key

    async def _with_fault(self, request: Request, handler: Handler) -> Response:
        fault = self.faults.take(request.url.path, streaming=False)
        if fault is None or fault.kind not in wire.SUPPORTED_FAULT_KINDS:
            return await handler(request)
        if fault.kind is FaultKind.ERROR:
            raise EmulatedError(fault.status, fault.body or {}, fault.headers)
        if fault.kind is FaultKind.MALFORMED_JSON:
            return Response(wire.MALFORMED_BODY, media_type="application/json")
        if fault.kind is FaultKind.EMPTY_DATA:
            return JSONResponse({})
        await self._stall(request, fault.seconds)
        return await handler(request)

    async def _stall(self, request: Request, seconds: float) -> None:
        """Sleep, but give up when the client leaves or the emulator is closed."""
        await request.body()  # the disconnect watcher may only read once the body is consumed
        outcome = await stall(request.receive, seconds, self._pauses)
        if outcome == "closed":
            raise wire.detail_error(503, "The sandbox is shutting down.")
        if outcome == "disconnected":
            raise wire.detail_error(499, "Client closed the request.")

    # -- submit ------------------------------------------------------------------------------

    def _is_endpoint(self, request: Request) -> bool:
        name = request.path_params["endpoint"]
        return name in ENDPOINTS and name not in self.retired_endpoints

    async def _submit(self, request: Request) -> Response:
        spec = ENDPOINTS[request.path_params["endpoint"]]
        body = await wire.read_body(request)
        request.state.record.json = wire.loggable(body)
        params = validate_body(spec, body)
        if isinstance(params, list):
            raise wire.validation_error(params)
        triggers = self._triggers(params)
        try:
            decoded = await anyio.to_thread.run_sync(decode_inputs, spec, params)
        except InputProblem as exc:
            raise wire.validation_error(exc.detail) from exc
        request.state.record.files = decoded.recorded
        await self._play(request, triggers)
        self._check_finetune(spec, params)
        task = self._new_task(request.state.key, spec, params, decoded, triggers)
        return JSONResponse(self._submitted(request, task, params))

    def _triggers(self, params: dict[str, Any]) -> Triggers:
        try:
            return parse_triggers(str(params.get("prompt") or ""))
        except ValueError as exc:
            item = {"type": "value_error", "loc": ["body", "prompt"], "msg": f"Value error, {exc}"}
            raise wire.validation_error([{**item, "input": params.get("prompt"), "ctx": {"error": {}}}]) from exc

    async def _play(self, request: Request, triggers: Triggers) -> None:
        """The submit-time triggers: a stall, then an HTTP error instead of a task."""
        if triggers.hang or triggers.delay > 0:
            await self._stall(request, 24 * 3600.0 if triggers.hang else triggers.delay)
        if triggers.http_status is not None:
            raise wire.status_error(triggers.http_status)

    def _check_finetune(self, spec: EndpointSpec, params: dict[str, Any]) -> None:
        finetune_id = params.get("finetune_id")
        if spec.finetuned and finetune_id not in self.finetunes:
            message = f"Value error, unknown finetune_id {finetune_id!r}: it is not one of your fine-tunes"
            item = {"type": "value_error", "loc": ["body", "finetune_id"], "msg": message, "input": finetune_id}
            raise wire.validation_error([{**item, "ctx": {"error": {}}}])

    def _new_task(
        self, key: str, spec: EndpointSpec, params: dict[str, Any], decoded: DecodedInputs, triggers: Triggers
    ) -> Task:
        width, height = output_size(spec, params, decoded)
        output_mp, input_mp = megapixels(width, height), round(decoded.input_pixels / 1_000_000, 2)
        cost = cost_of(spec, output_mp, input_mp)
        if self._tasks.active(key) >= self.max_active_tasks:
            raise wire.active_tasks_exceeded(self.max_active_tasks)
        if spec.active_limit is not None and self._tasks.active(key, spec.name) >= spec.active_limit:
            raise wire.active_tasks_exceeded(spec.active_limit)
        if self.credits_of(key) < cost:
            raise wire.insufficient_credits()
        self._balances[key] = round(self.credits_of(key) - cost, 4)
        outcome, details = self._outcome(triggers, decoded)
        task = Task(
            key=key,
            endpoint=spec.name,
            job=self._job(spec, params, decoded, width, height),
            outcome=outcome,
            pending_polls=self.pending_polls + triggers.extra_polls,
            ready_at=self.clock() + self.ready_after,
            clock=self.clock,
            cost=cost,
            input_mp=input_mp,
            output_mp=output_mp,
            details=details,
        )
        self._tasks.add(task)
        return task

    def _outcome(self, triggers: Triggers, decoded: DecodedInputs) -> tuple[TaskStatus, dict[str, Any] | None]:
        """The prompt's trigger first, then a queued outcome, then the URL-input refusal, else Ready."""
        if triggers.outcome is not None:
            return triggers.outcome, _OUTCOME_DETAILS.get(triggers.outcome)
        if self._outcomes:
            outcome = self._outcomes.popleft()
            return outcome, _OUTCOME_DETAILS.get(outcome)
        if decoded.url_fields:
            fields = ", ".join(decoded.url_fields)
            return TaskStatus.ERROR, {"message": f"The sandbox does not fetch image URLs ({fields}); send base64."}
        return TaskStatus.READY, None

    def _job(self, spec: EndpointSpec, params: dict[str, Any], decoded: DecodedInputs, width: int, height: int) -> Job:
        prompt = str(params.get("prompt") or "")
        if params.get("prompt_upsampling"):
            prompt = upsample(prompt)
        seed = params.get("seed")
        return Job(
            spec=spec,
            prompt=prompt,
            inputs=decoded.images,
            mask=decoded.mask,
            width=width,
            height=height,
            output_format=params.get("output_format") or "jpeg",
            seed=int(seed) if seed is not None else secrets.randbelow(2**32),
        )

    def _submitted(self, request: Request, task: Task, params: dict[str, Any]) -> dict[str, Any]:
        """``AsyncResponse``, or ``AsyncWebhookResponse`` (no ``polling_url``) when a webhook was given."""
        body: dict[str, Any] = {"id": task.id}
        if params.get("webhook_url"):
            body.update(status="Pending", webhook_url=params["webhook_url"])
        elif not self.omit_polling_url:
            url = _here(request, "/v1/get_result").include_query_params(id=task.id)
            if self.polling_host_alias:
                url = url.replace(hostname=self.polling_host_alias)
            body["polling_url"] = str(url)
        body.update(cost=task.cost, input_mp=task.input_mp, output_mp=task.output_mp)
        return body

    # -- polling -----------------------------------------------------------------------------

    async def _get_result(self, request: Request) -> Response:
        task_id = request.query_params.get("id")
        if task_id is None:
            raise wire.missing_query("id")
        task = self._tasks.get(task_id, request.state.key)
        if task is None or task.outcome is TaskStatus.NOT_FOUND:
            return self._task_not_found(task_id)
        status = task.advance()
        body: dict[str, Any] = {"id": task.id, "status": status.value, "result": None, "progress": None}
        if status is TaskStatus.PENDING:
            body["progress"] = self._progress(task)
        elif status is TaskStatus.READY:
            body["result"] = await self._result(request, task)
        else:
            body["details"] = task.details
        body.setdefault("details", None)
        body["preview"] = None
        return JSONResponse(body)

    def _task_not_found(self, task_id: str) -> Response:
        if self.not_found_status == 404:
            return JSONResponse({"detail": "Task not found"}, status_code=404)
        body = {"id": task_id, "status": TaskStatus.NOT_FOUND.value, "result": None, "progress": None}
        return JSONResponse({**body, "details": None, "preview": None}, status_code=self.not_found_status)

    def _progress(self, task: Task) -> float | None:
        answered = task.pending_answered
        if self.progress_values is not None:
            if not self.progress_values:
                return None
            return self.progress_values[min(answered, len(self.progress_values)) - 1]
        return min(0.99, round(answered / (task.pending_polls + 1), 2))

    async def _result(self, request: Request, task: Task) -> dict[str, Any]:
        """Render once (the first Ready poll), then hand out the same link on every later poll."""
        async with task.lock:
            if task.result is None:
                data = await anyio.to_thread.run_sync(render_job, task.job)
                name = self._files.put(data, _MEDIA_TYPES[task.job.output_format], self.url_ttl)
                end = task.settled_at or time.time()
                task.result = {
                    "sample": self._signed_url(request, name),
                    "prompt": task.job.prompt,
                    "seed": task.job.seed,
                    "start_time": task.submitted_at,
                    "end_time": end,
                    "duration": round(end - task.submitted_at, 3),
                }
            return dict(task.result)

    def _signature(self, name: str, expiry: str) -> str:
        return hmac.new(self._secret, f"{name}\n{expiry}".encode(), hashlib.sha256).hexdigest()[:43]

    def _signed_url(self, request: Request, name: str) -> str:
        """A link in the shape of the real delivery links (Azure SAS query), on this emulator."""
        expiry = datetime.fromtimestamp(self._files.expiry(name) or 0, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        query = f"se={expiry}&sp=r&sv=2021-08-06&sr=b&sig={self._signature(name, expiry)}"
        return f"{_here(request, f'/delivery/results/{name}')}?{query}"

    async def _deliver(self, request: Request) -> Response:
        name = request.path_params["name"]
        outcome, found = self._files.get(name)
        if found is None:
            return Response(missing_body(), status_code=404, media_type="application/xml")
        expiry = request.query_params.get("se", "")
        if not hmac.compare_digest(request.query_params.get("sig", ""), self._signature(name, expiry)):
            body = expired_body(expiry or "missing", "n/a").replace("Signed expiry time", "Signature mismatch;")
            return Response(body, status_code=403, media_type="application/xml")
        if outcome is Lookup.EXPIRED:
            now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            return Response(expired_body(expiry, now), status_code=403, media_type="application/xml")
        return Response(found.data, media_type=found.media_type)

    # -- fine-tunes and credits --------------------------------------------------------------

    async def _my_finetunes(self, request: Request) -> Response:
        return JSONResponse({"finetunes": list(self.finetunes)})

    async def _finetune_details(self, request: Request) -> Response:
        finetune_id = request.query_params.get("finetune_id")
        if finetune_id is None:
            raise wire.missing_query("finetune_id")
        details = self.finetunes.get(finetune_id)
        if details is None:
            raise wire.detail_error(404, "Finetune not found")
        return JSONResponse({"finetune_details": details})

    async def _delete_finetune(self, request: Request) -> Response:
        body = await wire.read_body(request)
        request.state.record.json = body
        finetune_id = body.get("finetune_id") if isinstance(body, dict) else None
        if not isinstance(finetune_id, str):
            item = {"type": "missing", "loc": ["body", "finetune_id"], "msg": "Field required", "input": body}
            raise wire.validation_error([item])
        if self.finetunes.pop(finetune_id, None) is None:
            raise wire.detail_error(404, "Finetune not found")
        answer = {
            "status": "Success",
            "message": f"Finetune {finetune_id} deleted.",
            "deleted_finetune_id": finetune_id,
            "timestamp": datetime.now(UTC).isoformat(),
        }
        return JSONResponse(answer)

    async def _credits(self, request: Request) -> Response:
        return JSONResponse({"credits": self.credits_of(request.state.key)})

    # -- control and fallbacks ---------------------------------------------------------------

    async def _control_faults(self, request: Request) -> Response:
        """``{"outcome": "Content Moderated"}`` queues task outcomes; anything else is a fault."""
        if request.method == "DELETE":
            self.faults.clear()
            self._outcomes.clear()
        elif request.method == "POST":
            try:
                data = await request.json()
                times = data.get("times", 1)
                if "outcome" in data:
                    self.queue_outcome(str(data["outcome"]), times=int(times))
                else:
                    fault: Fault = wire.bfl_fault_from_json(data)
                    self.faults.add(fault, times=times, path_contains=data.get("path_contains"))
            except (ValueError, TypeError, AttributeError) as exc:
                return JSONResponse({"error": f"invalid fault: {exc}"}, status_code=400)
        answer = {"faults": self.faults.describe(), "outcomes": [outcome.value for outcome in self._outcomes]}
        return JSONResponse(answer, status_code=201 if request.method == "POST" else 200)

    async def _control_requests(self, request: Request) -> Response:
        if request.method == "DELETE":
            self._log.clear()
        return JSONResponse({"requests": [entry.to_json() for entry in self._log.snapshot()]})

    async def _not_found(self, request: Request, exc: Exception) -> Response:
        return JSONResponse({"detail": "Not Found"}, status_code=404)

    async def _not_allowed(self, request: Request, exc: Exception) -> Response:
        return JSONResponse({"detail": "Method Not Allowed"}, status_code=405)


def _here(request: Request, path: str) -> URL:
    """``path`` on this emulator as ``request`` reached it: its scheme, host and mount prefix, no query.

    Built from the mount's ``root_path`` rather than by route name, because the same app answers under
    ``/bfl`` and at the root, and a name would resolve to the first mount whichever the client used.
    """
    return request.url.replace(path=request.scope.get("root_path", "") + path, query="")
