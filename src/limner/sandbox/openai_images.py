"""A loopback emulator of the OpenAI Images API and of Azure OpenAI's image routes.

It follows ``shared/apis/openai-images.md``: the official ``openai`` SDK (``OpenAI``,
``AzureOpenAI``) must not be able to tell it from the real service. Routes, relative to where the
app is mounted (the sandbox runner mounts it at ``/openai`` for OpenAI clients and at ``/azure``
as the Azure resource endpoint):

- ``POST /v1/images/generations``, ``/v1/images/edits`` (multipart, or JSON with data URLs),
  ``/v1/images/variations``: OpenAI, ``Authorization: Bearer``.
- ``POST /openai/deployments/{deployment}/images/{generations|edits}?api-version=...``: Azure,
  ``api-key`` (or an Entra ``Bearer`` token); the deployment picks the model.
- ``POST /openai/v1/images/{generations|edits}``: Azure v1; the body's ``model`` is the deployment.
- ``GET /files/{name}``: images handed out as URLs (DALL·E, or the ``url_instead_of_b64`` fault).
- ``/_sandbox/faults`` (``GET``, ``POST``, ``DELETE``) and ``/_sandbox/requests`` (``GET``,
  ``DELETE``): fault knobs and the request log for tests in another process.

Fault knobs and prompt triggers are described in :mod:`limner.sandbox.faults`. The emulator
imports nothing from limner outside ``limner.sandbox``; it is an upstream, not part of the app.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route as HttpRoute
from starlette.types import ASGIApp

from limner.sandbox import openai_catalog as catalog
from limner.sandbox import openai_responses as answers
from limner.sandbox.faults import Fault, FaultKind, FaultQueue, fault_from_json, trigger_fault
from limner.sandbox.hosted_files import HostedFiles, Lookup, expired_body, missing_body
from limner.sandbox.openai_errors import (
    EmulatedError,
    azure_access_denied,
    azure_deployment_not_found,
    azure_resource_not_found,
    fill_request_id,
    invalid_api_key,
    invalid_request,
    invalid_url,
    missing_api_key,
    missing_parameter,
    openai_body,
)
from limner.sandbox.openai_params import Endpoint, ImageJob, ModelPolicy, RawCall, Route, Surface, build_job
from limner.sandbox.openai_wire import (
    RequestIds,
    bearer_token,
    read_form,
    read_json,
    redact_data_urls,
    request_id,
    route_path,
    single_chunk,
    sse,
    sse_error,
    stall,
    summarise_files,
)
from limner.sandbox.recorder import DEFAULT_LOG_LIMIT, RecordedRequest, RequestLog

AZURE_API_VERSIONS: frozenset[str] = frozenset(
    {
        "2023-12-01-preview",
        "2024-02-01",
        "2024-02-15-preview",
        "2024-03-01-preview",
        "2024-04-01-preview",
        "2024-05-01-preview",
        "2024-06-01",
        "2024-07-01-preview",
        "2024-08-01-preview",
        "2024-09-01-preview",
        "2024-10-01-preview",
        "2024-10-21",
        "2024-12-01-preview",
        "2025-01-01-preview",
        "2025-02-01-preview",
        "2025-03-01-preview",
        "2025-04-01-preview",
    }
)
AZURE_V1_API_VERSIONS: frozenset[str | None] = frozenset({None, "preview", "v1", "latest"})
AZURE_EDITS_SINCE = "2025-04-01"
_MALFORMED_BODY = b'{"created": 1764150000, "data": [{"b64_json": "iVBORw0KGgoAAAANSUhEUgAA'


class OpenAIImagesEmulator:
    """State and configuration of one emulated OpenAI (and Azure OpenAI) images service.

    ``accepted_keys`` None accepts any non-empty key. ``azure_deployments`` maps deployment names
    to models; by default every known model id is also a deployment of that model, and a given
    mapping replaces that default. ``retired_models`` answer 404 ``model_not_found`` on the
    OpenAI routes; on Azure an existing deployment is what counts. ``delay`` stalls every image
    request, ``url_ttl`` is how long handed-out URLs work. ``azure_output_formats`` reflects that
    Azure does not offer WebP output.
    """

    def __init__(
        self,
        *,
        accepted_keys: set[str] | None = None,
        azure_deployments: dict[str, str] | None = None,
        azure_api_versions: set[str] | None = None,
        retired_models: set[str] | None = None,
        delay: float = 0.0,
        url_ttl: float = 3600.0,
        azure_output_formats: Iterable[str] = ("png", "jpeg"),
        request_log_limit: int = DEFAULT_LOG_LIMIT,
    ) -> None:
        self.accepted_keys = accepted_keys
        self.azure_deployments = dict(azure_deployments or {model: model for model in catalog.KNOWN_MODELS})
        unknown = {model for model in self.azure_deployments.values() if model not in catalog.KNOWN_MODELS}
        if unknown:
            raise ValueError(f"azure_deployments map to unknown models: {sorted(unknown)}")
        self.azure_api_versions = frozenset(azure_api_versions or AZURE_API_VERSIONS)
        self.policy = ModelPolicy(
            retired=frozenset(catalog.DEFAULT_RETIRED_MODELS if retired_models is None else retired_models),
            azure_output_formats=frozenset(azure_output_formats),
        )
        self.delay = delay
        self.url_ttl = url_ttl
        self.faults = FaultQueue()
        self._log = RequestLog(request_log_limit)
        self._files = HostedFiles()
        self._pauses: set[anyio.CancelScope] = set()

    @property
    def requests(self) -> list[RecordedRequest]:
        """The recorded requests, oldest first (a copy; use :meth:`reset` to clear)."""
        return self._log.snapshot()

    def reset(self) -> None:
        """Forget queued faults, recorded requests and hosted files."""
        self.faults.clear()
        self._log.clear()
        self._files.clear()

    def close(self) -> None:
        """Release every request that is stalled by a delay or hang, so a server can stop promptly."""
        for scope in list(self._pauses):
            scope.cancel()

    def mounts(self) -> dict[str, ASGIApp]:
        """Served at ``/openai`` and again at ``/azure``.

        The second prefix makes the Azure resource endpoint look like a real one
        (``https://RESOURCE.openai.azure.com``, no path): clients that normalise an endpoint by
        stripping a trailing ``/openai``, as LibreChat-style settings invite, then still work.
        """
        app = self.app()
        return {"openai": app, "azure": app}

    def public_urls(self, base_url: str) -> dict[str, str]:
        """Client base URLs for a sandbox served at ``base_url`` with :meth:`mounts`."""
        root = base_url.rstrip("/")
        return {"openai": f"{root}/openai/v1", "azure_openai": f"{root}/azure"}

    def app(self) -> ASGIApp:
        """The Starlette app serving every route of this emulator."""
        routes = [
            HttpRoute("/v1/images/generations", self._openai("generations"), methods=["POST"]),
            HttpRoute("/v1/images/edits", self._openai("edits"), methods=["POST"]),
            HttpRoute("/v1/images/variations", self._openai("variations"), methods=["POST"]),
            HttpRoute(
                "/openai/deployments/{deployment}/images/generations",
                self._azure("generations"),
                methods=["POST"],
            ),
            HttpRoute("/openai/deployments/{deployment}/images/edits", self._azure("edits"), methods=["POST"]),
            HttpRoute("/openai/v1/images/generations", self._azure_v1("generations"), methods=["POST"]),
            HttpRoute("/openai/v1/images/edits", self._azure_v1("edits"), methods=["POST"]),
            HttpRoute("/files/{name}", self._serve_file, methods=["GET"], name="sandbox_file"),
            HttpRoute("/_sandbox/faults", self._control_faults, methods=["GET", "POST", "DELETE"]),
            HttpRoute("/_sandbox/requests", self._control_requests, methods=["GET", "DELETE"]),
        ]
        handlers = {404: self._not_found, 405: self._not_found}
        return RequestIds(Starlette(routes=routes, exception_handlers=handlers))

    # -- route factories ---------------------------------------------------------------------

    def _openai(self, endpoint: Endpoint) -> Callable[[Request], Any]:
        async def handle(request: Request) -> Response:
            return await self._handle(request, Route(endpoint, "openai"))

        return handle

    def _azure(self, endpoint: Endpoint) -> Callable[[Request], Any]:
        async def handle(request: Request) -> Response:
            return await self._handle(request, Route(endpoint, "azure"))

        return handle

    def _azure_v1(self, endpoint: Endpoint) -> Callable[[Request], Any]:
        async def handle(request: Request) -> Response:
            return await self._handle(request, Route(endpoint, "azure_v1"))

        return handle

    # -- the request pipeline ----------------------------------------------------------------

    async def _handle(self, request: Request, route: Route) -> Response:
        started = time.monotonic()
        record = self._record(request)
        try:
            raw = await self._read_raw(request, route, record)
            self._authenticate(request, route.surface)
            route = self._resolve_route(request, route, raw)
            fault = self._pick_fault(request, route, raw)
            response = await self._answer(request, route, raw, fault, started)
        except EmulatedError as exc:
            response = self._error_response(request, exc, started)
        record.status = response.status_code
        return response

    async def _answer(
        self, request: Request, route: Route, raw: RawCall, fault: Fault | None, started: float
    ) -> Response:
        if fault is not None and fault.kind is FaultKind.ERROR:
            raise EmulatedError(fault.status, fill_request_id(fault.body or {}, request_id(request)), fault.headers)
        paused = fault.seconds if fault is not None and fault.kind in (FaultKind.DELAY, FaultKind.HANG) else 0.0
        for seconds in (paused, self.delay):
            if seconds > 0:
                await self._stall(request, seconds)
        job = await anyio.to_thread.run_sync(build_job, raw, route, self.policy)
        if job.stream:
            return self._stream(request, job, fault, started)
        return await self._json_answer(request, job, fault, started)

    async def _stall(self, request: Request, seconds: float) -> None:
        """Sleep, but give up when the client leaves or the emulator is closed."""
        outcome = await stall(request.receive, seconds, self._pauses)
        if outcome == "closed":
            raise EmulatedError(503, openai_body("The sandbox is shutting down.", "service_unavailable_error"))
        if outcome == "disconnected":
            raise EmulatedError(499, openai_body("Client closed the request.", "invalid_request_error"))

    async def _json_answer(self, request: Request, job: ImageJob, fault: Fault | None, started: float) -> Response:
        kind = fault.kind if fault is not None else None
        if kind is FaultKind.MALFORMED_JSON:
            return self._respond(request, Response(_MALFORMED_BODY, media_type="application/json"), started)
        created = int(time.time())
        if kind is FaultKind.EMPTY_DATA:
            body: dict[str, Any] = (
                {"created": created} if fault and fault.omit_data_key else {"created": created, "data": []}
            )
            return self._respond(request, JSONResponse(body), started)
        use_url = job.response_format == "url" or kind is FaultKind.URL_INSTEAD_OF_B64
        rendered = await anyio.to_thread.run_sync(lambda: answers.render_all(job, with_b64=not use_url))
        azure = job.route.surface != "openai"
        items = [
            answers.data_item(
                job, url=self._host(request, data, job) if use_url else None, b64_json=encoded, azure=azure
            )
            for data, encoded in rendered
        ]
        return self._respond(request, JSONResponse(answers.images_body(job, items, created)), started)

    def _stream(self, request: Request, job: ImageJob, fault: Fault | None, started: float) -> Response:
        kind = fault.kind if fault is not None else None
        if kind is FaultKind.MALFORMED_JSON:
            events: AsyncIterator[bytes] = single_chunk(
                b'event: image_generation.completed\ndata: {"type": "image_gen\n\n'
            )
        elif kind is FaultKind.EMPTY_DATA:
            events = single_chunk(b"")
        else:
            events = self._events(request, job, fault)
        response = StreamingResponse(
            events, media_type="text/event-stream; charset=utf-8", headers={"cache-control": "no-cache"}
        )
        return self._respond(request, response, started)

    async def _events(self, request: Request, job: ImageJob, fault: Fault | None) -> AsyncIterator[bytes]:
        """Partial images (coarse to fine), then the finished image, for each of the ``n`` outputs."""
        error = fault.body if fault is not None and fault.kind is FaultKind.STREAM_ERROR else None
        for variant in range(job.n):
            for index in range(job.partial_images):
                encoded = await anyio.to_thread.run_sync(answers.render_partial, job, variant, index)
                yield sse(answers.partial_event(job, encoded, index, int(time.time())))
                if error is not None:
                    yield sse_error(error)
                    return
            if error is not None:
                yield sse_error(error)
                return
            data = await anyio.to_thread.run_sync(answers.render_image, job, variant)
            as_url = fault is not None and fault.kind is FaultKind.URL_INSTEAD_OF_B64
            yield sse(
                answers.completed_event(
                    job,
                    b64_json=None if as_url else answers.b64(data),
                    url=self._host(request, data, job) if as_url else None,
                    created=int(time.time()),
                    partials=job.partial_images,
                )
            )

    # -- steps -------------------------------------------------------------------------------

    def _record(self, request: Request) -> RecordedRequest:
        record = RecordedRequest(
            method=request.method,
            path=request.url.path,
            query=dict(request.query_params),
            headers={key.lower(): value for key, value in request.headers.items()},
            request_id=request_id(request),
        )
        self._log.append(record)
        return record

    async def _read_raw(self, request: Request, route: Route, record: RecordedRequest) -> RawCall:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "multipart/form-data" and route.endpoint != "generations":
            raw = await read_form(request)
            record.form = {key: str(value) for key, value in raw.fields.items()}
        elif content_type == "application/json" or route.endpoint == "generations":
            raw = RawCall(await read_json(request))
            record.json = redact_data_urls(raw.fields)
        else:
            expected = (
                "multipart/form-data" if route.endpoint == "variations" else "multipart/form-data or application/json"
            )
            raise invalid_request(f"Invalid Content-Type header ({content_type or 'none'}), expected {expected}.")
        record.files = await anyio.to_thread.run_sync(summarise_files, raw)
        return raw

    def _authenticate(self, request: Request, surface: Surface) -> None:
        bearer = bearer_token(request.headers.get("authorization"))
        if surface == "openai":
            if not bearer:
                raise missing_api_key()
            if not self._accepts(bearer):
                raise invalid_api_key(bearer)
            return
        key = request.headers.get("api-key") or bearer
        if not key:
            raise azure_access_denied(missing=True)
        if not self._accepts(key):
            raise azure_access_denied(missing=False)

    def _accepts(self, key: str) -> bool:
        return bool(key) and (self.accepted_keys is None or key in self.accepted_keys)

    def _resolve_route(self, request: Request, route: Route, raw: RawCall) -> Route:
        """Azure only: check the api-version and turn the deployment into a model."""
        version = request.query_params.get("api-version")
        if route.surface == "azure":
            if version is None or version not in self.azure_api_versions:
                raise azure_resource_not_found()
            if route.endpoint == "edits" and version[:10] < AZURE_EDITS_SINCE:
                raise azure_resource_not_found()
            deployment = request.path_params["deployment"]
        elif route.surface == "azure_v1":
            if version not in AZURE_V1_API_VERSIONS:
                raise azure_resource_not_found()
            deployment = raw.fields.get("model")
            if not deployment:
                raise missing_parameter("model")
        else:
            return route
        model = self.azure_deployments.get(str(deployment))
        if model is None:
            raise azure_deployment_not_found()
        return Route(route.endpoint, route.surface, model)

    def _pick_fault(self, request: Request, route: Route, raw: RawCall) -> Fault | None:
        streaming = raw.fields.get("stream") in (True, "true", "True")
        queued = self.faults.take(request.url.path, streaming=streaming)
        if queued is not None:
            return queued
        prompt = raw.fields.get("prompt")
        if not isinstance(prompt, str):
            return None
        dall_e = (route.model or str(raw.fields.get("model") or "")).startswith("dall-e")
        try:
            return trigger_fault(prompt, azure=route.surface != "openai", dall_e=dall_e)
        except ValueError as exc:
            raise invalid_request(str(exc), "prompt", "invalid_value") from exc

    def _host(self, request: Request, data: bytes, job: ImageJob) -> str:
        """Store an output and return its URL, pointing back at this emulator on loopback."""
        name = self._files.put(data, answers.MEDIA_TYPES[job.output_format], self.url_ttl)
        expiry = datetime.fromtimestamp(self._files.expiry(name) or 0, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        signature = hashlib.sha256(f"{name}{expiry}".encode()).hexdigest()[:43]
        query = f"se={expiry}&sp=r&sv=2021-08-06&sr=b&sig={signature}"
        return f"{request.url_for('sandbox_file', name=name)}?{query}"

    def _respond(self, request: Request, response: Response, started: float) -> Response:
        response.headers["openai-processing-ms"] = str(max(1, round((time.monotonic() - started) * 1000)))
        response.headers["openai-version"] = "2020-10-01"
        response.headers["openai-organization"] = "user-sandbox"
        return response

    def _error_response(self, request: Request, exc: EmulatedError, started: float) -> Response:
        response = JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)
        return self._respond(request, response, started)

    # -- other routes ------------------------------------------------------------------------

    async def _serve_file(self, request: Request) -> Response:
        outcome, found = self._files.get(request.path_params["name"])
        if outcome is Lookup.FOUND and found is not None:
            return Response(found.data, media_type=found.media_type)
        if outcome is Lookup.EXPIRED and found is not None:
            expiry = datetime.fromtimestamp(found.expires_at, UTC)
            now = datetime.now(UTC)
            body = expired_body(expiry.strftime("%Y-%m-%dT%H:%M:%SZ"), now.strftime("%Y-%m-%dT%H:%M:%SZ"))
            return Response(body, status_code=403, media_type="application/xml")
        return Response(missing_body(), status_code=404, media_type="application/xml")

    async def _control_faults(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.faults.clear()
            return JSONResponse({"faults": []})
        if request.method == "POST":
            try:
                data = await request.json()
                times = data.get("times", 1)
                fault = fault_from_json(data)
                self.faults.add(fault, times=times, path_contains=data.get("path_contains"))
            except (ValueError, TypeError, AttributeError) as exc:
                return JSONResponse({"error": f"invalid fault: {exc}"}, status_code=400)
        return JSONResponse({"faults": self.faults.describe()}, status_code=201 if request.method == "POST" else 200)

    async def _control_requests(self, request: Request) -> Response:
        if request.method == "DELETE":
            self._log.clear()
        return JSONResponse({"requests": [entry.to_json() for entry in self._log.snapshot()]})

    async def _not_found(self, request: Request, exc: Exception) -> Response:
        path = route_path(request.scope)
        if path.startswith("/openai/"):
            error = azure_resource_not_found()
        elif isinstance(exc, HTTPException) and exc.status_code == 405:
            message = f"Invalid method for URL ({request.method} {path})"
            error = EmulatedError(405, openai_body(message, "invalid_request_error"))
        else:
            error = invalid_url(request.method, path)
        return JSONResponse(error.body, status_code=error.status)
