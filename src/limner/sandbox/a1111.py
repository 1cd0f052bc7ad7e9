"""A loopback emulator of the AUTOMATIC1111 web UI API, and of Forge and SD.Next, its close relatives.

It follows ``shared/apis/a1111.md``. Routes, relative to where the app is mounted (the sandbox
runner mounts it at ``/a1111``, so ``SD_WEBUI_URL`` is ``http://127.0.0.1:PORT/a1111``):

- ``POST /sdapi/v1/txt2img``, ``/sdapi/v1/img2img``: generations, serialised by one global queue
  (a second request waits), ``seconds_per_step`` per sampling step.
- ``GET /sdapi/v1/progress``; ``POST /sdapi/v1/interrupt``, ``/sdapi/v1/skip``: the running job.
- ``GET``/``POST /sdapi/v1/options``; ``GET /sdapi/v1/sd-models``, ``/samplers``, ``/schedulers``,
  ``/upscalers``, ``/latent-upscale-modes``, ``/loras``, ``/hypernetworks``, ``/face-restorers``,
  ``/realesrgan-models``, ``/prompt-styles``, ``/embeddings``, ``/scripts``, ``/cmd-flags``, ``/memory``,
  ``/sd-vae`` (not Forge), ``/sd-modules`` (Forge), ``/status`` (SD.Next);
  ``POST /sdapi/v1/refresh-checkpoints``, ``/refresh-loras``, ``/png-info``.
- ``POST /sdapi/v1/extra-single-image``, ``/extra-batch-images`` (upscaling) and ``/interrogate`` (a caption),
  in the generation queue: :mod:`limner.sandbox.a1111_extras`. Every flavour answers them in A1111's shapes.
- ``/_sandbox/faults`` (``GET``, ``POST``, ``DELETE``), ``/_sandbox/requests`` (``GET``, ``DELETE``),
  ``/_sandbox/jobs`` (``GET``): fault knobs, the request log and finished jobs, for other processes.

Queued faults apply to every ``/sdapi`` route except ``/progress`` (which clients poll constantly,
so a queued fault would land on a poll at random); prompt triggers are in
:mod:`limner.sandbox.a1111_errors`. As the real web UI, a generation keeps running when its client
goes away: only ``/interrupt`` stops it. The emulator imports nothing from limner outside
``limner.sandbox``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import json
import secrets
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from limner.sandbox import a1111_catalog as catalog
from limner.sandbox.a1111_errors import (
    SUPPORTED_FAULTS,
    A1111Error,
    error_fault,
    exception_fault,
    fault_from_request,
    http_exception,
    out_of_memory_fault,
    plain_not_found,
    server_exception,
    trigger_fault,
    unauthorised,
    validation_error,
    validation_item,
)
from limner.sandbox.a1111_extras import caption, check_interrogation, extras_request, html_info, postprocess
from limner.sandbox.a1111_jobs import (
    JobOutput,
    ProgressState,
    Rendering,
    build_info,
    parse_infotext,
    preview_due,
    progress_body,
    read_text_chunks,
    render_preview,
    run_job,
)
from limner.sandbox.a1111_params import JobContext, JobKind, JobSpec, build_job, decode_image
from limner.sandbox.a1111_wire import MALFORMED_BODY, ProcessTime, extras_body, generation_body, json_error, loggable
from limner.sandbox.faults import Fault, FaultKind, FaultQueue
from limner.sandbox.openai_wire import route_path, wait_for_disconnect
from limner.sandbox.recorder import DEFAULT_LOG_LIMIT, RecordedRequest, RequestLog

_TRUTHY = frozenset({"true", "1", "yes", "on"})


@dataclass(frozen=True)
class JobSummary:
    """A finished generation, for tests: how far it got and what it returned."""

    kind: str
    prompt: str
    sampling_steps: int
    steps_done: int
    interrupted: bool
    images: int


@dataclass
class _Call:
    """One request on its way through the pipeline."""

    request: Request
    record: RecordedRequest
    data: Any = None
    fault: Fault | None = None


_Handler = Callable[[_Call], Awaitable[Response]]
_Endpoint = Callable[[Request], Awaitable[Response]]


class A1111Emulator:
    """State and configuration of one emulated web UI.

    ``flavour`` picks A1111, Forge or SD.Next behaviour. ``auth`` is the one ``user:password`` pair of
    ``--api-auth`` (SD.Next: ``--auth``). ``api_enabled=False`` is a web UI started without ``--api``
    (SD.Next's API cannot be turned off). ``models`` are checkpoint file names, the first one loaded;
    ``samplers`` replace the flavour's sampler names. ``extra_images`` appends that many script images
    (ControlNet maps, Forge's extra images) after the real ones.
    """

    def __init__(
        self,
        *,
        flavour: catalog.Flavour = "a1111",
        auth: tuple[str, str] | None = None,
        api_enabled: bool = True,
        seconds_per_step: float = 0.002,
        models: Sequence[str] | None = None,
        samplers: Sequence[str] | None = None,
        extra_images: int = 0,
        request_log_limit: int = DEFAULT_LOG_LIMIT,
    ) -> None:
        if flavour not in catalog.SPECS:
            raise ValueError(f"flavour must be one of {', '.join(catalog.FLAVOURS)}")
        self.spec = catalog.SPECS[flavour]
        if not api_enabled and self.spec.api_always_on:
            raise ValueError("SD.Next's API is always on; api_enabled=False does not exist there")
        self.flavour: catalog.Flavour = flavour
        self.auth = auth
        self.api_enabled = api_enabled
        self.seconds_per_step = seconds_per_step
        self.models = tuple(catalog.Checkpoint(name) for name in (models or catalog.DEFAULT_MODELS))
        self.samplers = catalog.default_samplers(flavour, samplers)
        self.extra_images = extra_images
        self.options: dict[str, Any] = catalog.initial_options(flavour, self.models[0])
        self.state = ProgressState()
        self.faults = FaultQueue()
        self.queued = 0
        self._log = RequestLog(request_log_limit)
        self._jobs: deque[JobSummary] = deque(maxlen=request_log_limit)
        self._queue = anyio.Lock()
        self._scopes: set[anyio.CancelScope] = set()

    # -- the Python API ------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """The recorded requests, oldest first (a copy; use :meth:`reset` to clear)."""
        return self._log.snapshot()

    @property
    def jobs(self) -> list[JobSummary]:
        """Finished generations, oldest first."""
        return list(self._jobs)

    def error_fault(self, status: int, detail: str) -> Fault:
        """A fault answering ``status`` with this flavour's ``HTTPException`` body."""
        return error_fault(self.spec, status, detail)

    def exception_fault(self, message: str, error: str = "RuntimeError") -> Fault:
        """A fault answering 500 as an exception inside the web UI does."""
        return exception_fault(self.spec, message, error)

    def out_of_memory_fault(self) -> Fault:
        """A fault answering the 500 of a CUDA out-of-memory error."""
        return out_of_memory_fault(self.spec)

    def reset(self) -> None:
        """Forget queued faults, recorded requests and finished jobs."""
        self.faults.clear()
        self._log.clear()
        self._jobs.clear()

    def close(self) -> None:
        """End every stalled request and running job, so a server can stop promptly."""
        for scope in list(self._scopes):
            scope.cancel()

    def mounts(self) -> dict[str, ASGIApp]:
        """Served at ``/a1111``."""
        return {"a1111": self.app()}

    def public_urls(self, base_url: str) -> dict[str, str]:
        """``SD_WEBUI_URL`` for a sandbox served at ``base_url``."""
        return {"a1111": f"{base_url.rstrip('/')}/a1111"}

    def app(self) -> ASGIApp:
        """The Starlette app serving every route of this emulator's flavour."""
        sdapi = "/sdapi/v1"
        routes = [
            Route(f"{sdapi}/txt2img", self._endpoint(self._txt2img, body=True), methods=["POST"]),
            Route(f"{sdapi}/img2img", self._endpoint(self._img2img, body=True), methods=["POST"]),
            Route(f"{sdapi}/progress", self._endpoint(self._progress, faults=False), methods=["GET"]),
            Route(f"{sdapi}/interrupt", self._endpoint(self._interrupt), methods=["POST"]),
            Route(f"{sdapi}/skip", self._endpoint(self._skip), methods=["POST"]),
            Route(f"{sdapi}/options", self._endpoint(self._get_options), methods=["GET"]),
            Route(f"{sdapi}/options", self._endpoint(self._set_options, body=True), methods=["POST"]),
            Route(f"{sdapi}/sd-models", self._listing(lambda: [m.listing(self.flavour) for m in self.models])),
            Route(f"{sdapi}/samplers", self._listing(lambda: [s.listing(self.flavour) for s in self.samplers])),
            Route(f"{sdapi}/schedulers", self._listing(lambda: catalog.scheduler_listing(self.flavour, self.samplers))),
            Route(f"{sdapi}/upscalers", self._listing(lambda: list(catalog.UPSCALERS))),
            Route(
                f"{sdapi}/latent-upscale-modes",
                self._listing(lambda: [{"name": name} for name in catalog.LATENT_UPSCALE_MODES]),
            ),
            Route(f"{sdapi}/loras", self._listing(lambda: list(catalog.LORAS))),
            Route(f"{sdapi}/hypernetworks", self._listing(lambda: list(catalog.HYPERNETWORKS))),
            Route(f"{sdapi}/face-restorers", self._listing(lambda: list(catalog.FACE_RESTORERS))),
            Route(f"{sdapi}/realesrgan-models", self._listing(lambda: list(catalog.REALESRGAN_MODELS))),
            Route(f"{sdapi}/prompt-styles", self._listing(lambda: list(catalog.PROMPT_STYLES))),
            Route(f"{sdapi}/embeddings", self._listing(lambda: catalog.embeddings(self._context().checkpoint))),
            Route(f"{sdapi}/scripts", self._listing(catalog.scripts)),
            Route(
                f"{sdapi}/cmd-flags",
                self._listing(lambda: catalog.cmd_flags(self.spec, api=self.api_enabled, auth=self.auth)),
            ),
            Route(f"{sdapi}/memory", self._listing(lambda: catalog.MEMORY)),
            Route(f"{sdapi}/extra-single-image", self._endpoint(self._extra_single, body=True), methods=["POST"]),
            Route(f"{sdapi}/extra-batch-images", self._endpoint(self._extra_batch, body=True), methods=["POST"]),
            Route(f"{sdapi}/interrogate", self._endpoint(self._interrogate, body=True), methods=["POST"]),
            Route(f"{sdapi}/refresh-checkpoints", self._endpoint(self._refresh), methods=["POST"]),
            Route(f"{sdapi}/refresh-loras", self._endpoint(self._refresh), methods=["POST"]),
            Route(f"{sdapi}/png-info", self._endpoint(self._png_info, body=True), methods=["POST"]),
            Route("/_sandbox/faults", self._control_faults, methods=["GET", "POST", "DELETE"]),
            Route("/_sandbox/requests", self._control_requests, methods=["GET", "DELETE"]),
            Route("/_sandbox/jobs", self._control_jobs, methods=["GET"]),
        ]
        if self.flavour == "forge":
            routes.append(Route(f"{sdapi}/sd-modules", self._listing(lambda: list(catalog.FORGE_MODULES))))
        else:
            routes.append(Route(f"{sdapi}/sd-vae", self._listing(lambda: list(catalog.VAES))))
        if self.flavour == "sdnext":
            routes.append(Route(f"{sdapi}/status", self._endpoint(self._status, faults=False), methods=["GET"]))
        handlers = {404: self._not_found, 405: self._not_found}
        return ProcessTime(Starlette(routes=routes, exception_handlers=handlers))

    # -- the request pipeline ------------------------------------------------------------------

    def _endpoint(self, handler: _Handler, *, body: bool = False, faults: bool = True) -> _Endpoint:
        """Wrap a handler: record, reachability, auth, body, queued fault, then the web UI's error shapes."""

        async def endpoint(request: Request) -> Response:
            call = _Call(request, self._record(request))
            try:
                path = route_path(request.scope)
                self._check_reachable(path)
                self._check_auth(request, path)
                if body:
                    call.data = await self._read_json(request, call.record)
                call.fault = self.faults.take(path, streaming=False) if faults else None
                _raise_error_fault(call.fault)
                response = await handler(call)
            except A1111Error as exc:
                response = _error_response(exc)
            call.record.status = response.status_code
            return response

        return endpoint

    def _listing(self, items: Callable[[], Any]) -> _Endpoint:
        async def handle(call: _Call) -> Response:
            return await self._plain(call, items())

        return self._endpoint(handle)

    def _record(self, request: Request) -> RecordedRequest:
        record = RecordedRequest(
            method=request.method,
            path=request.url.path,
            query=dict(request.query_params),
            headers={key.lower(): value for key, value in request.headers.items()},
            request_id=f"a1111_{secrets.token_hex(8)}",
        )
        self._log.append(record)
        return record

    def _check_reachable(self, path: str) -> None:
        if not self.api_enabled and path.startswith("/sdapi/") and path not in self.spec.open_routes:
            raise plain_not_found()

    def _check_auth(self, request: Request, path: str) -> None:
        """HTTP Basic as FastAPI's ``HTTPBasic`` plus the web UI's comparison; extension routes are open."""
        if self.auth is None or path in self.spec.open_routes:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic" or not token:
            raise unauthorised(self.spec, missing=True)
        try:
            user, separator, password = base64.b64decode(token, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise http_exception(self.spec, 401, "Invalid authentication credentials") from None
        expected_user, expected_password = self.auth
        same_user = secrets.compare_digest(user.encode(), expected_user.encode())
        same_password = secrets.compare_digest(password.encode(), expected_password.encode())
        if not (separator and same_user and same_password):
            raise unauthorised(self.spec, missing=False)

    async def _read_json(self, request: Request, record: RecordedRequest) -> dict[str, Any]:
        """The JSON object body, or FastAPI's 422 for a missing, broken or non-object body."""
        raw = await request.body()
        v2 = self.spec.pydantic_v2
        if not raw.strip():
            kind, message = ("missing", "Field required") if v2 else ("value_error.missing", "field required")
            raise validation_error([validation_item(self.spec, ["body"], kind, message, None)])
        try:
            data = await anyio.to_thread.run_sync(json.loads, raw)
        except ValueError as exc:
            raise validation_error([json_error(exc, v2)]) from exc
        record.json = loggable(data)
        if not isinstance(data, dict):
            kind, message = (
                ("model_attributes_type", "Input should be a valid dictionary or object to extract fields from")
                if v2
                else ("type_error.dict", "value is not a valid dict")
            )
            raise validation_error([validation_item(self.spec, ["body"], kind, message, data)])
        return data

    async def _plain(self, call: _Call, payload: Any, *, status: int = 200) -> Response:
        """Answer a non-generation route, after any delay, hang or malformed body it was given.

        ``payload`` as bytes is JSON already encoded (off the loop, when it holds images).
        """
        fault = call.fault
        if fault is not None and fault.kind in (FaultKind.DELAY, FaultKind.HANG):
            await self._stall(call.request, fault.seconds)
        if fault is not None and fault.kind is FaultKind.MALFORMED_JSON:
            return Response(MALFORMED_BODY, media_type="application/json")
        if status == 204:
            return Response(status_code=204)
        if isinstance(payload, bytes):
            return Response(payload, status_code=status, media_type="application/json")
        return JSONResponse(payload, status_code=status)

    @contextlib.contextmanager
    def _cancellable(self) -> Iterator[anyio.CancelScope]:
        with anyio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                yield scope
            finally:
                self._scopes.discard(scope)

    async def _stall(self, request: Request, seconds: float) -> None:
        """Sleep, but give up when the client leaves or the emulator is closed."""
        outcome = "closed"
        with self._cancellable() as scope:
            async with anyio.create_task_group() as group:

                async def watch_client() -> None:
                    nonlocal outcome
                    await wait_for_disconnect(request.receive)
                    outcome = "disconnected"
                    scope.cancel()

                group.start_soon(watch_client)
                await anyio.sleep(seconds)
                outcome = "done"
                scope.cancel()
        if outcome != "done":
            raise server_exception(self.spec, f"the sandbox request ended early: {outcome}")

    # -- generations ---------------------------------------------------------------------------

    async def _txt2img(self, call: _Call) -> Response:
        return await self._generate(call, "txt2img")

    async def _img2img(self, call: _Call) -> Response:
        return await self._generate(call, "img2img")

    async def _generate(self, call: _Call, kind: JobKind) -> Response:
        job, files = await anyio.to_thread.run_sync(build_job, call.data, kind, self._context())
        call.record.files = files
        fault = call.fault or self._trigger(job.prompts[0])
        _raise_error_fault(fault)
        async with self._turn():
            if fault is not None and fault.kind in (FaultKind.DELAY, FaultKind.HANG):
                await self._stall(call.request, fault.seconds)
            output = await self._run(job)
        return await self._answer(job, output, fault)

    @contextlib.asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        """Wait for the global queue lock, counted in ``queued`` while waiting."""
        self.queued += 1
        waiting = True
        try:
            async with self._queue:
                self.queued, waiting = self.queued - 1, False
                yield
        finally:
            if waiting:
                self.queued -= 1

    def _context(self) -> JobContext:
        checkpoint = catalog.find_checkpoint(self.models, self.options["sd_model_checkpoint"]) or self.models[0]
        return JobContext(self.spec, self.samplers, self.models, checkpoint, bool(self.options["img2img_fix_steps"]))

    def _trigger(self, prompt: str) -> Fault | None:
        try:
            return trigger_fault(self.spec, prompt)
        except ValueError as exc:
            item = validation_item(self.spec, ["body", "prompt"], "value_error", str(exc), prompt)
            raise validation_error([item]) from exc

    async def _run(self, job: JobSpec) -> JobOutput:
        rendering = Rendering(
            samples_format=str(self.options["samples_format"]),
            enable_pnginfo=bool(self.options["enable_pnginfo"]),
            return_grid=bool(self.options["return_grid"]),
            extra_images=self.extra_images,
        )
        with self._cancellable() as scope:
            output = await run_job(job, self.state, self.spec, self.seconds_per_step, rendering)
        if scope.cancelled_caught:
            raise server_exception(self.spec, "the sandbox is shutting down")
        real = len(output.images) - self.extra_images - (1 if output.has_grid else 0)
        summary = JobSummary(
            kind=job.kind,
            prompt=job.prompts[0],
            sampling_steps=job.sampling_steps * job.n_iter,
            steps_done=output.steps_done,
            interrupted=output.interrupted,
            images=real,
        )
        self._jobs.append(summary)
        return output

    async def _answer(self, job: JobSpec, output: JobOutput, fault: Fault | None) -> Response:
        kind = fault.kind if fault is not None else None
        if kind is FaultKind.MALFORMED_JSON:
            return Response(MALFORMED_BODY, media_type="application/json")
        info = build_info(job, output, self.spec)
        images = output.images if job.send_images and kind is not FaultKind.EMPTY_DATA else []
        omit = kind is FaultKind.EMPTY_DATA and fault is not None and fault.omit_data_key
        content = await anyio.to_thread.run_sync(generation_body, images, job.parameters, info, omit)
        return Response(content, media_type="application/json")

    # -- the other routes ----------------------------------------------------------------------

    async def _progress(self, call: _Call) -> Response:
        skip = call.request.query_params.get("skip_current_image", "false").lower() in _TRUTHY
        if not skip and self.options.get("live_previews_enable", True):
            await self._refresh_preview()
        return JSONResponse(progress_body(self.state, self.spec, include_image=not skip))

    async def _refresh_preview(self) -> None:
        """Render a new live preview when enough steps passed since the last one (A1111's rule)."""
        state, spec = self.state, self.state.job_spec
        if spec is None or not preview_due(state, int(self.options.get("show_progress_every_n_steps", 10))):
            return
        state.preview_step = step = state.sampling_step
        index = min(state.job_no * spec.batch_size, spec.total - 1)
        image = await anyio.to_thread.run_sync(render_preview, spec, index, step)
        if state.job_spec is spec:
            state.current_image = image

    async def _interrupt(self, call: _Call) -> Response:
        self.state.interrupted = True
        return await self._plain(call, {}, status=204 if self.spec.empty_controls else 200)

    async def _skip(self, call: _Call) -> Response:
        self.state.skipped = True
        return await self._plain(call, None, status=204 if self.spec.empty_controls else 200)

    async def _refresh(self, call: _Call) -> Response:
        return await self._plain(call, None, status=204 if self.spec.empty_controls else 200)

    async def _get_options(self, call: _Call) -> Response:
        return await self._plain(call, dict(self.options))

    async def _set_options(self, call: _Call) -> Response:
        """Unknown checkpoints are a 500 ``RuntimeError``; a known one is stored under its title."""
        changes: dict[str, Any] = dict(call.data)
        if "sd_model_checkpoint" in changes:
            name = changes["sd_model_checkpoint"]
            found = catalog.find_checkpoint(self.models, name)
            if found is None:
                raise server_exception(self.spec, f"model {name!r} not found")
            changes["sd_model_checkpoint"], changes["sd_checkpoint_hash"] = found.title, found.sha256
        self.options.update(changes)
        if self.flavour == "sdnext":
            return await self._plain(call, {"updated": [{key: True} for key in call.data]})
        return await self._plain(call, None)

    async def _png_info(self, call: _Call) -> Response:
        encoded = call.data.get("image") or ""
        if not str(encoded).strip():
            return await self._plain(call, {"info": "", "items": {}, "parameters": {}})
        data = await anyio.to_thread.run_sync(decode_image, self.spec, encoded)
        items = await anyio.to_thread.run_sync(read_text_chunks, data)
        text = items.pop("parameters", "")
        return await self._plain(call, {"info": text, "items": items, "parameters": parse_infotext(text)})

    async def _extra_single(self, call: _Call) -> Response:
        return await self._extras(call, batch=False)

    async def _extra_batch(self, call: _Call) -> Response:
        return await self._extras(call, batch=True)

    async def _extras(self, call: _Call, *, batch: bool) -> Response:
        """The extras tab: every image upscaled in turn, in the queue as the web UI runs it."""
        request = await anyio.to_thread.run_sync(functools.partial(extras_request, call.data, self.spec, batch=batch))
        call.record.files = list(request.files)
        samples_format = self.options["samples_format"]
        async with self._turn():
            done = [
                await anyio.to_thread.run_sync(postprocess, data, request, self.spec, samples_format)
                for _, data in request.images
            ]
        text = done[-1][1] if done else ""
        images = [image for image, _ in done]
        body = await anyio.to_thread.run_sync(functools.partial(extras_body, images, html_info(text), batch=batch))
        return await self._plain(call, body)

    async def _interrogate(self, call: _Call) -> Response:
        image, model, files = await anyio.to_thread.run_sync(check_interrogation, call.data, self.spec)
        call.record.files = files
        async with self._turn():
            text = await anyio.to_thread.run_sync(caption, image, model)
        return await self._plain(call, {"caption": text})

    async def _status(self, call: _Call) -> Response:
        """SD.Next's richer job status."""
        state, running = self.state, self.state.job_count > 0
        body = {
            "status": "running" if running else "idle",
            "task": state.job,
            "id": state.task_id if running else None,
            "current": state.job,
            "step": state.sampling_step if running else 0,
            "steps": state.sampling_steps if running else 0,
            "progress": round(min(state.fraction(), 1.0), 2) if running else 0,
            "eta": None,
            "queued": self.queued,
        }
        return await self._plain(call, body)

    async def _not_found(self, request: Request, exc: Exception) -> Response:
        record = self._record(request)
        status = getattr(exc, "status_code", 404)
        body = {"detail": "Method Not Allowed" if status == 405 else "Not Found"}
        record.status = status
        return JSONResponse(body, status_code=status)

    # -- control routes ------------------------------------------------------------------------

    async def _control_faults(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.faults.clear()
            return JSONResponse({"faults": []})
        if request.method == "POST":
            try:
                data = await request.json()
                fault = fault_from_request(self.spec, data)
                self.faults.add(fault, times=data.get("times", 1), path_contains=data.get("path_contains"))
            except (ValueError, TypeError, AttributeError) as exc:
                return JSONResponse({"error": f"invalid fault: {exc}"}, status_code=400)
        return JSONResponse({"faults": self.faults.describe()}, status_code=201 if request.method == "POST" else 200)

    async def _control_requests(self, request: Request) -> Response:
        if request.method == "DELETE":
            self._log.clear()
        return JSONResponse({"requests": [entry.to_json() for entry in self._log.snapshot()]})

    async def _control_jobs(self, request: Request) -> Response:
        return JSONResponse({"jobs": [asdict(job) for job in self._jobs], "state": self.state.as_dict()})


def _raise_error_fault(fault: Fault | None) -> None:
    """An error fault answers now; a kind with no A1111 equivalent is a test's mistake, reported loudly."""
    if fault is None:
        return
    if fault.kind is FaultKind.ERROR:
        raise A1111Error(fault.status, fault.body if fault.body is not None else {"detail": "Sandbox fault"})
    if fault.kind not in SUPPORTED_FAULTS:
        message = f"the A1111 emulator has no {fault.kind.value!r} fault"
        raise A1111Error(500, {"error": "ValueError", "detail": "", "body": "", "errors": message})


def _error_response(exc: A1111Error) -> Response:
    return JSONResponse(exc.body, status_code=exc.status)
