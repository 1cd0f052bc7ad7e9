"""Stable Diffusion through an AUTOMATIC1111-compatible web UI API (A1111, Forge, SD.Next).

The wire format is ``shared/apis/a1111.md``. A generation is one JSON ``POST`` to
``/sdapi/v1/txt2img`` (edits: ``/sdapi/v1/img2img``) that answers only when the images are done, and
the web UI runs one job at a time for all its clients. So that limner's users neither watch each
other's progress nor interrupt each other's jobs, this backend sends one generation at a time too
(nothing is lost: the web UI would queue them anyway). While one runs, ``/sdapi/v1/progress`` is
polled for the progress callback. A call that is cancelled or times out is followed by a best-effort
``/sdapi/v1/interrupt``: the web UI does not notice that its client left and would keep the GPU busy
for nobody. Its API cannot name a job, so a client outside limner sharing the web UI could see its
own job stopped by that.

LibreChat's fixed values (cfg 4.5, 22 steps, 1024×1024, no sampler) are the defaults of
:class:`SDDefaults`; operators change them through settings, requests override them per call.
``--api-auth`` credentials come from the constructor, from ``user:password@`` in the URL, or per
call as ``api_key="user:password"``; passwords are scrubbed from every message.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit, urlunsplit

import anyio
import anyio.to_thread
import httpx2
from PIL import Image

from limner.backends.base import (
    Backend,
    EditRequest,
    GenerateRequest,
    ImageOutput,
    ModelProfile,
    Progress,
    ProgressCallback,
    SizeRule,
    public_url,
)
from limner.backends.retries import Outcome, RetryPolicy, call_with_retries, status_outcome, transport_outcome
from limner.errors import (
    ConfigurationError,
    LimnerError,
    ProviderAuthError,
    ProviderRequestError,
    ProviderResponseError,
    ProviderUnavailableError,
    UnsupportedImageError,
    UnsupportedOperationError,
    redact,
)
from limner.imaging import sniff_media_type

__all__ = ["MODEL", "PROFILE", "A1111Backend", "SDDefaults", "SDSizeRule"]

log = logging.getLogger(__name__)

MODEL = "stable-diffusion"
URL_SETTING = "SD_WEBUI_URL"
AUTH_SETTING = "LIMNER_SD_AUTH"
CHECKPOINT_SETTING = "LIMNER_SD_CHECKPOINT"
SAMPLER_SETTING = "LIMNER_SD_SAMPLER"
_INTERRUPT_SECONDS = 5.0
_SHORT_TIMEOUT = 30.0
_CONNECT_TIMEOUT = 10.0
_INPAINT_RANGES = {"inpainting_fill": (0, 3), "mask_blur": (0, 64), "inpaint_full_res_padding": (0, 256)}
_INPAINT_OPTIONS = (*_INPAINT_RANGES, "inpaint_full_res")
_INFO_KEYS = (
    *("negative_prompt", "subseed", "subseed_strength", "width", "height", "sampler_name", "cfg_scale"),
    *("steps", "denoising_strength", "sd_model_name", "sd_model_hash", "clip_skip", "job_timestamp", "version"),
)


@dataclass(frozen=True, slots=True)
class SDDefaults:
    """What a request that does not say otherwise gets; the defaults are LibreChat's fixed values.

    Each field maps to the setting ``LIMNER_SD_<FIELD>``. ``None`` sends nothing, so the web UI's own
    default applies (A1111 and Forge: Euler; SD.Next: the model's default sampler).
    """

    steps: int = 22
    cfg_scale: float = 4.5
    width: int = 1024
    height: int = 1024
    sampler: str | None = None
    scheduler: str | None = None
    checkpoint: str | None = None
    denoising_strength: float = 0.75


@dataclass(frozen=True, slots=True)
class SDSizeRule(SizeRule):
    """Any ``WxH`` whose sides are multiples of 8 between 64 and 4096: what the latent space allows."""

    min_edge: int = 64

    def problem(self, width: int, height: int) -> str | None:
        """Adds the shortest-edge bound that :class:`SizeRule` does not have."""
        if min(width, height) < self.min_edge:
            return f"width and height must be at least {self.min_edge}"
        return SizeRule.problem(self, width, height)  # no zero-argument super() in slotted dataclasses


PROFILE = ModelProfile(
    name=MODEL,
    family="a1111",
    sizes=("512x512", "768x768", "1024x1024", "832x1216", "1216x832", "896x1152", "1152x896"),
    size_rule=SDSizeRule(multiple=8, max_aspect=64.0, max_edge=4096, min_pixels=64 * 64, max_pixels=4096 * 4096),
    qualities=(),
    backgrounds=(),
    transparent_formats=(),
    output_formats=(),
    max_n=8,
    max_input_images=1,
    input_fidelities=(),
    supports_streaming=False,
    extra_params=("negative_prompt", "seed", "steps", "guidance", "strength"),
    option_keys=("sampler", "scheduler", *_INPAINT_OPTIONS),
    notes=(
        "The output format is the web UI's samples_format setting (PNG by default).",
        "Masks follow limner's convention: fully transparent pixels mark the area to repaint.",
    ),
)


class _BadResponse(Exception):
    """A 2xx answer limner cannot use; ``what`` completes "answered with ..."."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


class _StatusError(Exception):
    """A non-2xx answer, mapped in :meth:`A1111Backend._map_error`."""

    def __init__(self, path: str, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status} from {path}")
        self.path, self.status, self.body = path, status, body


@dataclass(frozen=True, slots=True)
class _Generation:
    """The real images of an answer (no grid, no script extras) and the parsed ``info``."""

    images: list[bytes]
    info: dict[str, Any]
    first_index: int


class A1111Backend(Backend):
    """One web UI: txt2img for generations, img2img (with an optional inpainting mask) for edits."""

    name: ClassVar[str] = "a1111"
    profiles: ClassVar[dict[str, ModelProfile]] = {MODEL: PROFILE}

    def __init__(
        self,
        *,
        base_url: str,
        http_client: httpx2.AsyncClient,
        defaults: SDDefaults,
        auth: tuple[str, str] | None = None,
        timeout: float = 300.0,
        progress_interval: float = 1.0,
        max_retries: int = 2,
        is_sandbox: bool = False,
    ) -> None:
        url, url_auth = _split_credentials(base_url)
        super().__init__(endpoint=url, is_sandbox=is_sandbox)
        self.base_url = url.rstrip("/")
        self.http_client = http_client
        self.retries = RetryPolicy(max_retries=max_retries)
        self.defaults = defaults
        self.auth = auth or url_auth
        self.timeout = timeout
        self.progress_interval = progress_interval
        host = urlsplit(self.base_url).netloc
        self.display_name = (
            "limner's sandbox A1111 emulator" if is_sandbox else f"the Stable Diffusion web UI at {host}"
        )
        self._turn = asyncio.Lock()
        self._checkpoint_seen = False

    async def list_models(self, *, api_key: str | None = None) -> list[str]:
        """The checkpoint titles the web UI offers: the values ``LIMNER_SD_CHECKPOINT`` accepts."""
        with self._errors(api_key):
            models = await self._get_json("/sdapi/v1/sd-models", self._credentials(api_key))
            if not isinstance(models, list):
                raise _BadResponse("a model list that is not a list")
            return [str(item["title"]) for item in models if isinstance(item, dict) and "title" in item]

    # -- generations ---------------------------------------------------------------------------

    async def _generate(
        self, req: GenerateRequest, *, api_key: str | None, progress: ProgressCallback | None
    ) -> list[ImageOutput]:
        width, height = _parse_size(req.size) or (self.defaults.width, self.defaults.height)
        body = self._body(req, has_mask=False)
        body.update(width=width, height=height)
        return await self._run("/sdapi/v1/txt2img", json.dumps(body).encode(), api_key, progress)

    async def _edit(
        self, req: EditRequest, *, api_key: str | None, progress: ProgressCallback | None
    ) -> list[ImageOutput]:
        body = self._body(req, has_mask=req.mask is not None)
        mask = req.mask.data if req.mask is not None else None
        area = self.defaults.width * self.defaults.height
        size = _parse_size(req.size)
        content = await anyio.to_thread.run_sync(_edit_content, body, req.images[0].data, mask, size, area)
        return await self._run("/sdapi/v1/img2img", content, api_key, progress)

    def _body(self, req: GenerateRequest | EditRequest, *, has_mask: bool) -> dict[str, Any]:
        """LibreChat's body (prompt and negative prompt as given), then what the request adds."""
        defaults = self.defaults
        body: dict[str, Any] = {
            "prompt": req.prompt,
            "negative_prompt": req.negative_prompt or "",
            "cfg_scale": req.guidance if req.guidance is not None else defaults.cfg_scale,
            "steps": req.steps if req.steps is not None else defaults.steps,
        }
        if req.n > 1:
            body["batch_size"] = req.n
        if req.seed is not None:
            body["seed"] = req.seed
        if isinstance(req, EditRequest):
            body["denoising_strength"] = req.strength if req.strength is not None else defaults.denoising_strength
        if defaults.checkpoint:
            body["override_settings"] = {"sd_model_checkpoint": defaults.checkpoint}
        body.update(_options_body(req.options, defaults, has_mask=has_mask))
        return body

    async def _run(
        self, path: str, content: bytes, api_key: str | None, progress: ProgressCallback | None
    ) -> list[ImageOutput]:
        auth = self._credentials(api_key)
        async with self._turn:
            await self._check_checkpoint(auth)
            response = await self._post_watched(path, content, auth, progress)
        generation = await anyio.to_thread.run_sync(_parse_generation, response.content)
        return [self._output(generation, index, data) for index, data in enumerate(generation.images)]

    async def _post_watched(
        self, path: str, content: bytes, auth: httpx2.Auth, progress: ProgressCallback | None
    ) -> httpx2.Response:
        """The generation call, with the progress poller beside it and an interrupt if it is abandoned."""
        watcher = asyncio.create_task(self._watch(auth, progress)) if progress is not None else None

        async def post() -> httpx2.Response:
            answer = await self.http_client.post(
                f"{self.base_url}{path}",
                content=content,
                headers={"content-type": "application/json"},
                auth=auth,
                timeout=httpx2.Timeout(self.timeout, connect=min(self.timeout, _CONNECT_TIMEOUT)),
            )
            _check_status(answer, path)
            return answer

        try:  # a generation: repeated only when the web UI certainly did not start it (retries.py)
            response = await call_with_retries(
                post, policy=self.retries, idempotent=False, classify=_retry_outcome, what=self.display_name
            )
        except (asyncio.CancelledError, httpx2.ReadTimeout):
            await self._interrupt(auth)
            raise
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
        return response

    async def _interrupt(self, auth: httpx2.Auth) -> None:
        """Best effort, shielded from the cancellation that caused it, and bounded in time."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(_INTERRUPT_SECONDS):
            try:
                url = f"{self.base_url}/sdapi/v1/interrupt"
                await self.http_client.post(url, auth=auth, timeout=_INTERRUPT_SECONDS)
            except httpx2.HTTPError as exc:
                log.warning("a1111: could not interrupt the abandoned job (%s)", type(exc).__name__)

    async def _watch(self, auth: httpx2.Auth, progress: ProgressCallback) -> None:
        """Report each advance of the running job; a failing listener stops the reports, not the job."""
        last_fraction, last_image = 0.0, None
        while True:
            await asyncio.sleep(self.progress_interval)
            update = await self._poll(auth)
            fresh = update is not None and update.partial_image not in (None, last_image)
            if update is None or ((update.fraction or 0.0) <= last_fraction and not fresh):
                continue
            last_fraction, last_image = max(last_fraction, update.fraction or 0.0), update.partial_image or last_image
            update = replace(update, fraction=last_fraction)
            if not fresh:
                update = replace(update, partial_image=None, partial_media_type=None)
            try:
                await progress(update)
            except Exception:
                log.exception("a1111: the progress listener failed; no further progress is reported")
                return

    async def _poll(self, auth: httpx2.Auth) -> Progress | None:
        """One ``/progress`` reading; None when idle or unreadable (polling is best effort)."""
        try:
            response = await self.http_client.get(
                f"{self.base_url}/sdapi/v1/progress",
                params={"skip_current_image": "false"},
                auth=auth,
                timeout=min(self.timeout, _SHORT_TIMEOUT),
            )
        except httpx2.HTTPError as exc:
            log.debug("a1111: progress poll failed (%s)", type(exc).__name__)
            return None
        if response.status_code != 200:
            return None
        return await anyio.to_thread.run_sync(_parse_progress, response.content)

    def _output(self, generation: _Generation, index: int, data: bytes) -> ImageOutput:
        media_type = sniff_media_type(data)
        if media_type not in PROFILE.input_media_types:
            raise _BadResponse("an image in a format limner does not accept")
        details = _info_details(generation.info, generation.first_index, index)
        seed = details.get("seed")
        return ImageOutput(
            data=data,
            media_type=media_type,
            seed=seed if isinstance(seed, int) else None,
            provider_details={"info": details},
        )

    async def _check_checkpoint(self, auth: httpx2.Auth) -> None:
        """The web UI silently ignores an unknown ``sd_model_checkpoint`` override, so check it once."""
        name = self.defaults.checkpoint
        if not name or self._checkpoint_seen:
            return
        models = await self._get_json("/sdapi/v1/sd-models", auth)
        items = [item for item in models if isinstance(item, dict)] if isinstance(models, list) else []
        if any(name in _checkpoint_aliases(item) for item in items):
            self._checkpoint_seen = True
            return
        titles = ", ".join(str(item.get("title")) for item in items[:12]) or "(no checkpoints installed)"
        raise ConfigurationError(
            f"The checkpoint {name!r} set in {CHECKPOINT_SETTING} is not on {self.display_name}.",
            hint=f"Set {CHECKPOINT_SETTING} to one of: {titles}.",
        )

    # -- HTTP ----------------------------------------------------------------------------------

    def _credentials(self, api_key: str | None) -> httpx2.Auth:
        """Per-call ``user:password`` wins over the configured pair; a bare ``Auth`` sends nothing."""
        if api_key:
            user, _, password = api_key.partition(":")
            return httpx2.BasicAuth(user, password)
        return httpx2.BasicAuth(*self.auth) if self.auth else httpx2.Auth()

    async def _get_json(self, path: str, auth: httpx2.Auth) -> Any:
        url = f"{self.base_url}{path}"

        async def get() -> httpx2.Response:
            answer = await self.http_client.get(url, auth=auth, timeout=min(self.timeout, _SHORT_TIMEOUT))
            _check_status(answer, path)
            return answer

        response = await call_with_retries(  # a listing: repeating it costs nothing
            get, policy=self.retries, idempotent=True, classify=_retry_outcome, what=self.display_name
        )
        try:
            return response.json()
        except ValueError as exc:
            raise _BadResponse("a body that is not valid JSON") from exc

    # -- error mapping -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, api_key: str | None) -> Iterator[None]:
        """The base mapping, scrubbing every secret of the call: the key as given, each password alone,
        and the Basic token made from them (an upstream error could echo any of them).
        """
        pairs = [self.auth] if self.auth else []
        if api_key:
            pairs.append(tuple(api_key.partition(":")[::2]))  # type: ignore[arg-type]
        tokens = [base64.b64encode(f"{user}:{password}".encode()).decode() for user, password in pairs]
        secrets = sorted({s for s in (api_key, *(p for _, p in pairs), *tokens) if s})
        with contextlib.ExitStack() as stack:
            for secret in secrets or [""]:
                stack.enter_context(super()._errors(secret))
            yield

    def _map_error(self, exc: Exception) -> LimnerError | None:
        """The one place where HTTP failures and unusable answers become limner errors."""
        common: dict[str, Any] = {"provider": self.name, "endpoint": self.endpoint}
        who = self.display_name
        if isinstance(exc, _StatusError):
            return self._map_status(exc)
        if isinstance(exc, _BadResponse):
            hint = f"Try again; if it persists, check that {URL_SETTING} points at an A1111-compatible web UI."
            return ProviderResponseError(f"{who} answered with {exc.what}.", hint=hint, **common)
        if isinstance(exc, httpx2.ConnectError | httpx2.ConnectTimeout):
            hint = (
                f"Check {URL_SETTING} and that the web UI is running with --api "
                "(and with --listen if it runs on another machine)."
            )
            return ProviderUnavailableError(f"Could not connect to {who} ({self.endpoint}).", hint=hint, **common)
        if isinstance(exc, httpx2.TimeoutException):
            hint = (
                "It may be busy with a long queue or a large job (which was interrupted); try again, "
                "or ask for fewer images, fewer steps or a smaller size."
            )
            return ProviderUnavailableError(f"{who} did not answer within {self.timeout:g} s.", hint=hint, **common)
        if isinstance(exc, httpx2.TransportError):
            hint = f"Try again; if it keeps failing, check that the web UI at {URL_SETTING} runs, and PROXY."
            message = f"The connection to {who} failed ({type(exc).__name__})."
            return ProviderUnavailableError(message, hint=hint, **common)
        return None

    def _map_status(self, exc: _StatusError) -> LimnerError:
        text = redact(_upstream_message(exc.body), limit=300)
        common: dict[str, Any] = {"provider": self.name, "endpoint": self.endpoint, "status_code": exc.status}
        who = self.display_name
        if exc.status in (401, 403):
            sent = "the configured user name and password" if self.auth else "no user name and password"
            hint = f"Set {AUTH_SETTING} to the user:password the web UI was started with (--api-auth; SD.Next: --auth)."
            return ProviderAuthError(f"{who} refused the request ({text}); limner sent {sent}.", hint=hint, **common)
        if exc.status == 404 and not (isinstance(exc.body, dict) and "error" in exc.body):  # not the API's own 404
            hint = f"Start the web UI with --api, and check that {URL_SETTING} is its address (e.g. http://host:7860)."
            return ProviderRequestError(f"{who} has no {exc.path}: the API is not enabled.", hint=hint, **common)
        if exc.status < 500:
            if "sampler" in text.lower():
                hint = (
                    f"Use a sampler the web UI lists at /sdapi/v1/samplers ({SAMPLER_SETTING} or the sampler option)."
                )
            else:
                hint = "Change the parameters the message names; if they look right, the web UI may be another version."
            return ProviderRequestError(f"{who} rejected the request: {text}", hint=hint, **common)
        if "out of memory" in text.lower():
            hint = "Ask for a smaller size or fewer images, or free GPU memory on the server."
            return ProviderUnavailableError(f"{who} ran out of GPU memory: {text}", hint=hint, **common)
        hint = "Try again; if it keeps failing, the web UI's console shows the cause."
        return ProviderUnavailableError(f"{who} failed with HTTP {exc.status}: {text}", hint=hint, **common)


# -- request building -----------------------------------------------------------------------------


def _split_credentials(base_url: str) -> tuple[str, tuple[str, str] | None]:
    """Check the URL and take ``user:password@`` out of it (where LibreChat users put them)."""
    parts = urlsplit(base_url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"{URL_SETTING} must be an http(s) URL; got {public_url(base_url)!r}.",
            hint="For example http://127.0.0.1:7860 (the web UI started with --api).",
        )
    auth = (unquote(parts.username or ""), unquote(parts.password or "")) if parts.username else None
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", "")), auth


def _parse_size(size: str | None) -> tuple[int, int] | None:
    """``WxH`` to integers; the profile has already checked the shape."""
    if size is None:
        return None
    width, _, height = size.partition("x")
    return int(width), int(height)


def _options_body(options: dict[str, Any], defaults: SDDefaults, *, has_mask: bool) -> dict[str, Any]:
    """The request's options (and the operator's sampler and scheduler) under the web UI's field names."""
    inpainting = sorted(key for key in _INPAINT_OPTIONS if key in options)
    if inpainting and not has_mask:
        raise UnsupportedOperationError(f"{', '.join(inpainting)} only apply to an edit with a mask.")
    body: dict[str, Any] = {}
    for key, field, default in (("sampler", "sampler_name", defaults.sampler), ("scheduler", "scheduler", None)):
        value = options.get(key, default or (defaults.scheduler if key == "scheduler" else None))
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise UnsupportedOperationError(f"The {key} option must be a name, such as 'Euler a'; got {value!r}.")
        if value is not None:
            body[field] = value
    for key, (low, high) in _INPAINT_RANGES.items():
        value = options.get(key)
        if key in options and (isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high):
            raise UnsupportedOperationError(f"The {key} option must be an integer from {low} to {high}; got {value!r}.")
        if key in options:
            body[key] = value
    if "inpaint_full_res" in options:
        if not isinstance(options["inpaint_full_res"], bool):
            raise UnsupportedOperationError("The inpaint_full_res option must be true or false.")
        body["inpaint_full_res"] = options["inpaint_full_res"]
    return body


def _edit_content(
    body: dict[str, Any], image: bytes, mask: bytes | None, size: tuple[int, int] | None, area: int
) -> bytes:
    """The img2img JSON: the input as is, the mask in the web UI's convention, and the output size.

    Without a requested size the output keeps the input's aspect ratio, scaled down to the default
    area when larger (a phone photo would otherwise run at 12 megapixels), in multiples of 8.
    CPU work on the whole image: run it in a worker thread.
    """
    try:
        with Image.open(io.BytesIO(image)) as opened:
            source = opened.size
    except (OSError, ValueError) as exc:
        raise UnsupportedImageError("The input image cannot be read.", hint="Use a PNG, JPEG or WebP image.") from exc
    width, height = size or _fit(*source, area)
    inputs: dict[str, Any] = {"init_images": [base64.b64encode(image).decode("ascii")]}
    if mask is not None:
        inputs["mask"] = _a1111_mask(mask, source)
    return json.dumps({**inputs, **body, "width": width, "height": height}).encode()


def _fit(width: int, height: int, area: int) -> tuple[int, int]:
    scale = min(1.0, math.sqrt(area / (width * height)))
    fitted = [min(4096, max(64, int(side * scale) // 8 * 8)) for side in (width, height)]
    return fitted[0], fitted[1]


def _a1111_mask(mask: bytes, size: tuple[int, int]) -> str:
    """Turn limner's mask (fully transparent = edit here) into the web UI's (white = repaint, black = keep).

    Sent as a greyscale PNG: the web UI reads an RGBA mask from its alpha channel with the opposite
    meaning (opaque = repaint), so the alpha must not reach it.
    """
    try:
        with Image.open(io.BytesIO(mask)) as opened:
            if not (opened.mode in ("RGBA", "LA", "PA") or "transparency" in opened.info):
                raise UnsupportedImageError(
                    "The mask has no transparency: the area to edit must be fully transparent (alpha 0).",
                    hint="Send a PNG whose transparent pixels mark where the image may change.",
                )
            alpha = opened.convert("RGBA").getchannel("A")
    except (OSError, ValueError) as exc:
        raise UnsupportedImageError("The mask cannot be read.", hint="Send the mask as a PNG.") from exc
    if alpha.size != size:
        alpha = alpha.resize(size, Image.Resampling.NEAREST)
    out = io.BytesIO()
    alpha.point(lambda value: 255 if value == 0 else 0).save(out, "PNG", compress_level=1)
    return base64.b64encode(out.getvalue()).decode("ascii")


# -- reading answers ------------------------------------------------------------------------------


def _retry_outcome(exc: BaseException) -> tuple[Outcome, float | None] | None:
    """What a failed request says about whether the web UI did the work (retries.py)."""
    if isinstance(exc, _StatusError):
        return status_outcome(exc.status), None
    outcome = transport_outcome(exc)
    return None if outcome is None else (outcome, None)


def _check_status(response: httpx2.Response, path: str) -> None:
    if response.status_code < 400:
        return
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text[:500]
    raise _StatusError(path, response.status_code, body)


def _checkpoint_aliases(item: dict[str, Any]) -> set[str]:
    """The names the web UI accepts for a checkpoint: title, file name, model name, hashes."""
    title = str(item.get("title") or "")
    filename = str(item.get("filename") or "").replace("\\", "/").rsplit("/", 1)[-1]
    names = {title, title.rsplit(" [", 1)[0], filename, str(item.get("model_name") or "")}
    return (names | {str(item[key]) for key in ("hash", "sha256") if item.get(key)}) - {""}


def _b64(value: str) -> bytes:
    try:
        return base64.b64decode(value.split(",", 1)[-1] if value.startswith("data:") else value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _BadResponse("an image that is not valid base64") from exc


def _parse_generation(content: bytes) -> _Generation:
    """The real images of a txt2img/img2img answer: ``info.index_of_first_image`` skips a grid and
    ``len(info.all_seeds)`` drops images that scripts appended (CPU work: run in a thread).
    """
    try:
        data = json.loads(content)
    except ValueError as exc:
        raise _BadResponse("a body that is not valid JSON") from exc
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list) or not all(isinstance(item, str) for item in images):
        raise _BadResponse("no list of images")
    info = _parse_info(data.get("info"))
    first = info.get("index_of_first_image")
    first = first if isinstance(first, int) and first >= 0 else 0
    seeds = info.get("all_seeds")
    real = images[first : first + len(seeds)] if isinstance(seeds, list) and seeds else images[first:]
    if not real:
        raise _BadResponse("no images")
    return _Generation([_b64(item) for item in real], info, first)


def _parse_info(value: Any) -> dict[str, Any]:
    """``info`` is a JSON string; without it the images are still good, only their metadata is lost."""
    try:
        parsed = json.loads(value) if isinstance(value, str) else value
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        log.warning("a1111: the answer's info is not a JSON object; seeds and infotexts are unknown")
        return {}
    return parsed


def _info_details(info: dict[str, Any], first: int, k: int) -> dict[str, Any]:
    """What limner keeps of ``info`` for the k-th real image: its seed, infotext and the settings used."""
    details = {key: info[key] for key in _INFO_KEYS if info.get(key) is not None}
    seeds, infotexts, extra = info.get("all_seeds"), info.get("infotexts"), info.get("extra_generation_params")
    if isinstance(seeds, list) and k < len(seeds):
        details["seed"] = seeds[k]
    elif isinstance(info.get("seed"), int):
        details["seed"] = info["seed"] + k
    if isinstance(extra, dict) and extra.get("Schedule type"):
        details["schedule_type"] = extra["Schedule type"]
    if isinstance(infotexts, list) and first + k < len(infotexts):
        details["infotext"] = infotexts[first + k]
    return details


def _parse_progress(content: bytes) -> Progress | None:
    """A running job's fraction, step and live preview; None when idle or unreadable (run in a thread)."""
    try:
        data = json.loads(content)
    except ValueError:
        return None
    state = data.get("state") if isinstance(data, dict) else None
    fraction = data.get("progress") if isinstance(data, dict) else None
    if not isinstance(state, dict) or not isinstance(fraction, int | float) or state.get("job_count", 1) == 0:
        return None
    current, image = data.get("current_image"), None
    if isinstance(current, str) and current:
        with contextlib.suppress(_BadResponse):
            image = _b64(current)
    return Progress(
        fraction=min(max(float(fraction), 0.0), 1.0),
        message=f"step {state.get('sampling_step', 0)}/{state.get('sampling_steps', 0)}",
        partial_image=image,
        partial_media_type=sniff_media_type(image) if image else None,
    )


def _upstream_message(body: Any) -> str:
    """The readable part of an error body: the detail, the validation items, or the exception text."""
    if isinstance(body, str):
        return body or "(no message)"
    detail, errors, error = (
        (body.get(k) for k in ("detail", "errors", "error")) if isinstance(body, dict) else [None] * 3
    )
    if isinstance(detail, list):
        return "; ".join(_validation_text(item) for item in detail[:5])
    if isinstance(detail, str) and detail:
        return detail
    if isinstance(errors, str) and errors:
        return f"{error}: {errors}" if isinstance(error, str) and error != "HTTPException" else errors
    return error if isinstance(error, str) and error else json.dumps(body)[:300]


def _validation_text(item: Any) -> str:
    if not isinstance(item, dict):
        return str(item)
    location = [str(part) for part in item.get("loc", []) if part != "body"]
    return f"{'.'.join(location) or 'body'}: {item.get('msg', 'invalid')}"
