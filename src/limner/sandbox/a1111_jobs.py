"""Running an emulated generation: the shared progress state, the step loop, and the answer's pieces.

A1111 keeps one global ``shared.state`` that ``/progress``, ``/interrupt`` and ``/skip`` read and
write while the (globally serialised) job runs; :class:`ProgressState` is that object. A job sleeps
``seconds_per_step`` per sampling step so that progress, interrupts and the queue can be observed,
then renders each batch with the sandbox renderer (in a worker thread). An interrupted or skipped
batch comes back "partially denoised", which here means pixelated.

Rendering, infotexts and the ``info`` JSON follow §5 and §6 of ``shared/apis/a1111.md``.
"""

from __future__ import annotations

import base64
import io
import json
import re
import struct
import time
import uuid
import zlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import anyio
import anyio.to_thread
from PIL import Image

from limner.sandbox.a1111_catalog import FlavourSpec
from limner.sandbox.a1111_params import JobSpec
from limner.sandbox.renderer import OutputFormat, render_edit, render_generation

_FORMATS: dict[str, OutputFormat] = {"png": "png", "jpg": "jpeg", "jpeg": "jpeg", "webp": "webp"}
_MAX_COARSENESS = 32
_AFTER_IHDR = 8 + 4 + 4 + 13 + 4  # signature, then IHDR's length, type, data and CRC


@dataclass
class ProgressState:
    """A1111's ``shared.state``: what ``/progress`` reports and ``/interrupt`` flips."""

    job: str = ""
    job_count: int = 0
    job_no: int = 0
    job_timestamp: str = "0"
    sampling_step: int = 0
    sampling_steps: int = 0
    skipped: bool = False
    interrupted: bool = False
    stopping_generation: bool = False
    time_start: float = 0.0
    textinfo: str | None = None
    task_id: str | None = None
    job_spec: JobSpec | None = None
    preview_step: int = 0
    current_image: str | None = None

    def begin(self, job: str, spec: JobSpec) -> None:
        """Start a job: flags from a previous interrupt are cleared here, not when it is sent."""
        self.job, self.job_count, self.job_no = job, spec.n_iter, 0
        self.job_timestamp = datetime.now().strftime("%Y%m%d%H%M%S")  # the web UI's local time
        self.sampling_step, self.sampling_steps = 0, spec.sampling_steps
        self.skipped = self.interrupted = self.stopping_generation = False
        self.time_start = time.time()
        self.task_id = spec.task_id or f"task({uuid.uuid4().hex[:15]})"
        self.job_spec, self.preview_step, self.current_image = spec, 0, None

    def next_job(self) -> None:
        """A batch is done; the next one starts at step 0."""
        self.job_no += 1
        self.sampling_step = 0
        self.preview_step = 0

    def end(self) -> None:
        """Back to idle; ``interrupted`` stays set until the next job begins, as in A1111."""
        self.job, self.job_count, self.job_no = "", 0, 0
        self.job_spec, self.current_image = None, None

    def as_dict(self) -> dict[str, Any]:
        """``state`` in ``/progress``."""
        return {
            "skipped": self.skipped,
            "interrupted": self.interrupted,
            "stopping_generation": self.stopping_generation,
            "job": self.job,
            "job_count": self.job_count,
            "job_timestamp": self.job_timestamp,
            "job_no": self.job_no,
            "sampling_step": self.sampling_step,
            "sampling_steps": self.sampling_steps,
        }

    def fraction(self) -> float:
        """``/progress``'s formula, uncapped: 0.01 + finished batches + this batch's steps."""
        progress = 0.01
        if self.job_count > 0:
            progress += self.job_no / self.job_count
        if self.sampling_steps > 0 and self.job_count > 0:
            progress += self.sampling_step / self.sampling_steps / self.job_count
        return progress

    def stopped(self) -> bool:
        """Whether the running batch must stop sampling now."""
        return self.interrupted or self.skipped or self.stopping_generation


@dataclass(frozen=True)
class JobOutput:
    """What the job made: encoded images (grid first, script extras last) and the infotext of each."""

    images: list[bytes]
    infotexts: list[str]
    job_timestamp: str
    has_grid: bool
    interrupted: bool
    steps_done: int


@dataclass(frozen=True)
class Rendering:
    """Server settings that decide how images are encoded."""

    samples_format: str
    enable_pnginfo: bool
    return_grid: bool
    extra_images: int


async def run_job(
    spec: JobSpec, state: ProgressState, flavour: FlavourSpec, seconds_per_step: float, rendering: Rendering
) -> JobOutput:
    """Sample batch after batch, honouring ``/skip`` and ``/interrupt`` between steps."""
    state.begin(f"scripts_{spec.kind}", spec)
    images: list[bytes] = []
    infotexts: list[str] = []
    steps_done = 0
    try:
        for batch in range(spec.n_iter):
            if state.skipped:
                state.skipped = False
            if state.interrupted or state.stopping_generation:
                break
            done = await _sample(state, spec.sampling_steps, seconds_per_step)
            steps_done += done
            coarseness = _coarseness(done, spec.sampling_steps)
            indices = range(batch * spec.batch_size, (batch + 1) * spec.batch_size)
            for index in indices:
                text = infotext(spec, index, flavour)
                images.append(await anyio.to_thread.run_sync(_render, spec, index, coarseness, text, rendering))
                infotexts.append(text)
            state.next_job()
        timestamp, interrupted = state.job_timestamp, state.interrupted
    finally:
        state.end()
    has_grid = await _add_grid_and_extras(spec, images, infotexts, rendering)
    return JobOutput(images, infotexts, timestamp, has_grid, interrupted, steps_done)


async def _sample(state: ProgressState, steps: int, seconds_per_step: float) -> int:
    """Returns how many steps ran before the batch ended or was cut short."""
    for step in range(steps):
        if state.stopped():
            return step
        await anyio.sleep(seconds_per_step)
        state.sampling_step = step + 1
    return steps


def _coarseness(done: int, steps: int) -> int:
    """1 for a finished batch; a cut-short one is blockier the earlier it stopped."""
    if steps <= 0 or done >= steps:
        return 1
    return max(2, round(_MAX_COARSENESS * (1 - done / steps)))


async def _add_grid_and_extras(spec: JobSpec, images: list[bytes], infotexts: list[str], rendering: Rendering) -> bool:
    """A grid first when images are saved and there are several; script images after the real ones.

    Returns whether a grid was added (``index_of_first_image`` is then 1).
    """
    has_grid = spec.save_images and rendering.return_grid and len(images) > 1
    if has_grid:
        grid = await anyio.to_thread.run_sync(_render_extra, spec, f"grid: {spec.prompts[0]}", rendering)
        images.insert(0, grid)
        infotexts.insert(0, infotexts[0])
    for index in range(rendering.extra_images):
        extra = await anyio.to_thread.run_sync(_render_extra, spec, f"script output {index + 1}", rendering)
        images.append(extra)
    return has_grid


def output_format(samples_format: object) -> OutputFormat:
    """The image format the ``samples_format`` setting asks for (PNG for anything unknown)."""
    return _FORMATS.get(str(samples_format).lower(), "png")


def _render(spec: JobSpec, index: int, coarseness: int, text: str, rendering: Rendering) -> bytes:
    fmt = output_format(rendering.samples_format)
    if spec.kind == "img2img":
        source = spec.init_images[index % len(spec.init_images)]
        data = render_edit(
            [source],
            spec.prompts[index],
            spec.width,
            spec.height,
            fmt,
            mask=spec.mask,
            variant=index,
            coarseness=coarseness,
        )
    else:
        data = render_generation(
            spec.prompts[index], spec.width, spec.height, fmt, variant=index, coarseness=coarseness
        )
    if fmt == "png" and rendering.enable_pnginfo:
        data = with_text_chunk(data, "parameters", text)
    return data


def _render_extra(spec: JobSpec, prompt: str, rendering: Rendering) -> bytes:
    fmt = output_format(rendering.samples_format)
    return render_generation(prompt, spec.width, spec.height, fmt)


def render_preview(spec: JobSpec, index: int, step: int) -> str:
    """A live preview of image ``index`` at ``step``: a coarse PNG, base64 (run in a thread)."""
    coarseness = _coarseness(step, spec.sampling_steps)
    if spec.kind == "img2img":
        source = spec.init_images[index % len(spec.init_images)]
        data = render_edit(
            [source], spec.prompts[index], spec.width, spec.height, "png", mask=spec.mask, coarseness=coarseness
        )
    else:
        data = render_generation(spec.prompts[index], spec.width, spec.height, "png", coarseness=coarseness)
    return base64.b64encode(data).decode("ascii")


def with_text_chunk(png: bytes, key: str, text: str) -> bytes:
    """Insert a ``tEXt`` chunk (``iTXt`` when the text is not Latin-1) right after ``IHDR``, as Pillow would.

    Before the image data, so readers that stop at ``IDAT`` (Pillow without ``load()``) still see it.
    """
    try:
        kind, payload = b"tEXt", key.encode("latin-1") + b"\x00" + text.encode("latin-1")
    except UnicodeEncodeError:
        kind, payload = b"iTXt", key.encode("latin-1") + b"\x00\x00\x00\x00\x00" + text.encode("utf-8")
    chunk = struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return png[:_AFTER_IHDR] + chunk + png[_AFTER_IHDR:]


def read_text_chunks(data: bytes) -> dict[str, str]:
    """The text chunks of a PNG (``/png-info``); empty for anything else. Run in a thread."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return {str(k): str(v) for k, v in image.info.items() if isinstance(v, str)}
    except (OSError, ValueError):
        return {}


# -- infotexts and info --------------------------------------------------------------------------


def infotext(spec: JobSpec, index: int, flavour: FlavourSpec) -> str:
    """The "parameters" text of image ``index``: prompt, negative prompt, then ``key: value`` pairs."""
    pairs: dict[str, Any] = {"Steps": spec.steps, "Sampler": spec.sampler}
    if flavour.infotext_schedule and spec.scheduler:
        pairs["Schedule type"] = spec.scheduler
    pairs.update(
        {
            "CFG scale": _number(spec.cfg_scale),
            "Seed": spec.seeds[index],
            "Size": f"{spec.width}x{spec.height}",
            "Model hash": spec.checkpoint.shorthash,
            "Model": spec.checkpoint.model_name,
        }
    )
    if spec.denoising_strength is not None:
        pairs["Denoising strength"] = _number(spec.denoising_strength)
    if spec.mask_blur is not None:
        pairs["Mask blur"] = spec.mask_blur
    if flavour.version:
        pairs["Version"] = flavour.version
    lines = [spec.prompts[index]]
    if spec.negative_prompts[index]:
        lines.append(f"Negative prompt: {spec.negative_prompts[index]}")
    lines.append(", ".join(f"{key}: {quote(value)}" for key, value in pairs.items()))
    return "\n".join(lines)


def _number(value: float) -> str:
    return f"{value:g}"


def quote(value: Any) -> str:
    """An infotext value as the web UI writes it: JSON-quoted when it holds a comma, colon, quote or newline."""
    text = str(value)
    return json.dumps(text) if any(char in text for char in ',"\n:') else text


def build_info(spec: JobSpec, output: JobOutput, flavour: FlavourSpec) -> dict[str, Any]:
    """``info`` (before JSON encoding): A1111 and Forge keys, or SD.Next's smaller set."""
    info: dict[str, Any] = {
        "prompt": spec.prompts[0],
        "all_prompts": list(spec.prompts),
        "negative_prompt": spec.negative_prompts[0],
        "all_negative_prompts": list(spec.negative_prompts),
        "seed": spec.seeds[0],
        "all_seeds": list(spec.seeds),
        "subseed": spec.subseeds[0],
        "all_subseeds": list(spec.subseeds),
        "subseed_strength": spec.subseed_strength,
        "width": spec.width,
        "height": spec.height,
        "sampler_name": spec.sampler,
        "cfg_scale": spec.cfg_scale,
        "steps": spec.steps,
        "batch_size": spec.batch_size,
    }
    extra: dict[str, Any] = {"Schedule type": spec.scheduler} if flavour.infotext_schedule and spec.scheduler else {}
    if spec.mask_blur is not None:
        extra["Mask blur"] = spec.mask_blur
    tail: dict[str, Any] = {
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": spec.denoising_strength,
        "extra_generation_params": extra,
        "index_of_first_image": 1 if output.has_grid else 0,
        "infotexts": output.infotexts,
        "styles": [],
        "job_timestamp": output.job_timestamp,
        "clip_skip": 1,
    }
    if flavour.name == "sdnext":
        info.update({"cfg_end": 1.0, "detailer": False, "detailer_model": None})
        info["sd_model_hash"] = spec.checkpoint.shorthash
        return {**info, **tail}
    info.update(
        {
            "restore_faces": False,
            "face_restoration_model": None,
            "sd_model_name": spec.checkpoint.model_name,
            "sd_model_hash": spec.checkpoint.shorthash,
            "sd_vae_name": None,
            "sd_vae_hash": None,
        }
    )
    return {**info, **tail, "is_using_inpainting_conditioning": False, "version": flavour.version}


def progress_body(state: ProgressState, flavour: FlavourSpec, *, include_image: bool) -> dict[str, Any]:
    """``/progress``: the idle shape, or the running job's fraction, eta and live preview."""
    body: dict[str, Any]
    if state.job_count == 0:
        body = {"progress": 0, "eta_relative": 0, "state": state.as_dict(), "current_image": None}
    else:
        progress = state.fraction()
        elapsed = time.time() - state.time_start
        eta = elapsed / progress - elapsed
        image = state.current_image if include_image else None
        body = {"progress": min(progress, 1.0), "eta_relative": eta, "state": state.as_dict(), "current_image": image}
    body["textinfo"] = state.textinfo
    if flavour.name == "sdnext":
        body["progress"] = round(body["progress"], 2)
        body["eta_relative"] = round(body["eta_relative"], 2)
        body["id"] = state.task_id if state.job_count else None
    return body


def preview_due(state: ProgressState, every_n_steps: int) -> bool:
    """A1111's ``set_current_image``: a new preview once ``every_n_steps`` steps passed since the last."""
    if state.job_spec is None or every_n_steps <= 0:
        return False
    return state.sampling_step - state.preview_step >= every_n_steps


_PARAM = re.compile(r'\s*([\w ./+\-]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def parse_infotext(text: str) -> dict[str, Any]:
    """``/png-info``'s ``parameters``: the prompt, the negative prompt, then every ``key: value`` pair."""
    if not text:
        return {}
    *head, last = text.strip().split("\n")
    if len(_PARAM.findall(last)) < 3:  # no parameter line: it is all prompt
        head, last = [*head, last], ""
    prompt: list[str] = []
    negative: list[str] = []
    for line in head:
        if line.startswith("Negative prompt:"):
            negative.append(line.removeprefix("Negative prompt:").strip())
        else:
            (negative if negative else prompt).append(line)
    parsed: dict[str, Any] = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in _PARAM.findall(last):
        parsed[key.strip()] = json.loads(value) if value.startswith('"') else value.strip()
    return parsed
