"""What each emulated web UI (AUTOMATIC1111, Forge, SD.Next) knows and how it differs.

Everything here is data from ``shared/apis/a1111.md`` plus the lookups that use it: flavour
profiles (defaults, error shapes, route differences), checkpoints with their hashes and aliases,
samplers and schedulers with A1111's name resolution, and the settings ``/options`` starts with.
Kept apart from the HTTP emulator so the differences between flavours can be read in one place.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Flavour = Literal["a1111", "forge", "sdnext"]
FLAVOURS: tuple[Flavour, ...] = ("a1111", "forge", "sdnext")

DEFAULT_MODELS: tuple[str, ...] = ("v1-5-pruned-emaonly.safetensors", "sd_xl_base_1.0.safetensors")
MODELS_DIR = "/models/Stable-diffusion"


@dataclass(frozen=True)
class FlavourSpec:
    """The observable differences of one web UI; see §1, §8 and §9 of the reference."""

    name: Flavour
    version: str | None
    """``info.version``; SD.Next has none."""
    pydantic_v2: bool
    """422 items in Pydantic v2 style (``type``/``msg``/``input``) rather than v1's."""
    error_code_field: bool
    """SD.Next adds ``code`` to the error body."""
    empty_controls: bool
    """``/interrupt`` and ``/skip`` answer 204 with no body (SD.Next)."""
    auth_missing_detail: str
    auth_wrong_detail: str
    open_routes: frozenset[str]
    """Routes an extension registers straight on the app: outside ``--api-auth`` and ``--api``."""
    api_always_on: bool
    strict_samplers: bool
    """Unknown sampler names give 404 "Sampler not found" instead of falling back."""
    has_scheduler_field: bool
    infotext_schedule: bool
    """Whether infotexts carry ``Schedule type``."""


_EXTENSION_ROUTES = frozenset({"/sdapi/v1/loras", "/sdapi/v1/refresh-loras"})

SPECS: dict[Flavour, FlavourSpec] = {
    "a1111": FlavourSpec(
        name="a1111",
        version="v1.10.1",
        pydantic_v2=False,
        error_code_field=False,
        empty_controls=False,
        auth_missing_detail="Not authenticated",
        auth_wrong_detail="Incorrect username or password",
        open_routes=_EXTENSION_ROUTES,
        api_always_on=False,
        strict_samplers=False,
        has_scheduler_field=True,
        infotext_schedule=True,
    ),
    "forge": FlavourSpec(
        name="forge",
        version="f2.0.1v1.10.1-previous-669-gdfdcbab6",
        pydantic_v2=True,
        error_code_field=False,
        empty_controls=False,
        auth_missing_detail="Not authenticated",
        auth_wrong_detail="Incorrect username or password",
        open_routes=_EXTENSION_ROUTES,
        api_always_on=False,
        strict_samplers=False,
        has_scheduler_field=True,
        infotext_schedule=True,
    ),
    "sdnext": FlavourSpec(
        name="sdnext",
        version=None,
        pydantic_v2=True,
        error_code_field=True,
        empty_controls=True,
        auth_missing_detail="Unauthorized",
        auth_wrong_detail="Unauthorized",
        open_routes=frozenset(),
        api_always_on=True,
        strict_samplers=True,
        has_scheduler_field=False,
        infotext_schedule=False,
    ),
}


# -- checkpoints ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """One model file as ``/sd-models`` lists it; the hashes are derived from the name."""

    filename: str

    @property
    def sha256(self) -> str:
        """Stands in for the file's sha256 (the emulator has no file to hash)."""
        return hashlib.sha256(self.filename.encode()).hexdigest()

    @property
    def shorthash(self) -> str:
        """A1111's 10-character short hash."""
        return self.sha256[:10]

    @property
    def model_name(self) -> str:
        """The file name without its extension."""
        return self.filename.rsplit(".", 1)[0]

    @property
    def title(self) -> str:
        """``name.safetensors [hash]``, the value ``sd_model_checkpoint`` holds."""
        return f"{self.filename} [{self.shorthash}]"

    def aliases(self) -> set[str]:
        """Every string A1111's ``checkpoint_aliases`` would accept for this model."""
        return {self.title, self.filename, self.model_name, self.shorthash, self.sha256}

    def listing(self, flavour: Flavour) -> dict[str, Any]:
        """One ``/sd-models`` item; SD.Next adds the storage ``type``."""
        item: dict[str, Any] = {
            "title": self.title,
            "model_name": self.model_name,
            "hash": self.shorthash,
            "sha256": self.sha256,
            "filename": f"{MODELS_DIR}/{self.filename}",
            "config": None,
        }
        if flavour == "sdnext":
            item["type"] = self.filename.rsplit(".", 1)[-1] if "." in self.filename else "unknown"
        return item


def find_checkpoint(models: Sequence[Checkpoint], name: object) -> Checkpoint | None:
    """The model ``name`` refers to (title, file name, model name or hash), or None."""
    if not isinstance(name, str):
        return None
    return next((model for model in models if name in model.aliases()), None)


# -- samplers and schedulers ---------------------------------------------------------------------


@dataclass(frozen=True)
class Sampler:
    """A sampler as ``/samplers`` lists it."""

    name: str
    aliases: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)

    def listing(self, flavour: Flavour) -> dict[str, Any]:
        """SD.Next items have no ``aliases``."""
        if flavour == "sdnext":
            return {"name": self.name, "options": dict(self.options)}
        return {"name": self.name, "aliases": list(self.aliases), "options": dict(self.options)}


A1111_SAMPLERS: tuple[Sampler, ...] = (
    Sampler("DPM++ 2M", ("k_dpmpp_2m",), {"scheduler": "karras"}),
    Sampler("DPM++ SDE", ("k_dpmpp_sde",), {"scheduler": "karras", "second_order": True, "brownian_noise": True}),
    Sampler("DPM++ 2M SDE", ("k_dpmpp_2m_sde",), {"scheduler": "exponential", "brownian_noise": True}),
    Sampler("DPM++ 2S a", ("k_dpmpp_2s_a",), {"scheduler": "karras", "uses_ensd": True, "second_order": True}),
    Sampler("DPM++ 3M SDE", ("k_dpmpp_3m_sde",), {"scheduler": "exponential", "discard_next_to_last_sigma": True}),
    Sampler("Euler a", ("k_euler_a", "k_euler_ancestral"), {"uses_ensd": True}),
    Sampler("Euler", ("k_euler",), {}),
    Sampler("LMS", ("k_lms",), {}),
    Sampler("Heun", ("k_heun",), {"second_order": True}),
    Sampler("DPM2", ("k_dpm_2",), {"discard_next_to_last_sigma": True, "second_order": True}),
    Sampler("DPM2 a", ("k_dpm_2_a",), {"discard_next_to_last_sigma": True, "uses_ensd": True}),
    Sampler("DPM fast", ("k_dpm_fast",), {"uses_ensd": True}),
    Sampler("DPM adaptive", ("k_dpm_ad",), {"uses_ensd": True}),
    Sampler("Restart", ("restart",), {"scheduler": "karras", "second_order": True}),
    Sampler("DDIM", ("ddim",), {}),
    Sampler("DDIM CFG++", ("ddim_cfgpp",), {}),
    Sampler("PLMS", ("plms",), {}),
    Sampler("UniPC", ("unipc",), {}),
    Sampler("LCM", ("k_lcm",), {}),
)
SDNEXT_SAMPLERS: tuple[Sampler, ...] = tuple(
    Sampler(name)
    for name in (
        "Default",
        "Euler a",
        "Euler",
        "Heun",
        "DPM++ 2M",
        "DPM++ 2M SDE",
        "DPM++ SDE",
        "UniPC",
        "DDIM",
        "DEIS",
        "LCM",
        "Flow Match Euler",
    )
)
_SDNEXT_CLASSES = {
    "Default": "DefaultScheduler",
    "Euler a": "EulerAncestralDiscreteScheduler",
    "Euler": "EulerDiscreteScheduler",
    "Heun": "HeunDiscreteScheduler",
    "DPM++ 2M": "DPMSolverMultistepScheduler",
    "DPM++ 2M SDE": "DPMSolverMultistepScheduler",
    "DPM++ SDE": "DPMSolverSDEScheduler",
    "UniPC": "UniPCMultistepScheduler",
    "DDIM": "DDIMScheduler",
    "DEIS": "DEISMultistepScheduler",
    "LCM": "LCMScheduler",
    "Flow Match Euler": "FlowMatchEulerDiscreteScheduler",
}


@dataclass(frozen=True)
class Scheduler:
    """An A1111 noise schedule (``Schedule type``)."""

    name: str
    label: str
    aliases: tuple[str, ...] | None = None
    default_rho: float | None = None
    need_inner_model: bool = False

    def listing(self) -> dict[str, Any]:
        """One ``/schedulers`` item in A1111's shape."""
        return {
            "name": self.name,
            "label": self.label,
            "aliases": list(self.aliases) if self.aliases else None,
            "default_rho": self.default_rho,
            "need_inner_model": self.need_inner_model,
        }


SCHEDULERS: tuple[Scheduler, ...] = (
    Scheduler("automatic", "Automatic"),
    Scheduler("uniform", "Uniform", need_inner_model=True),
    Scheduler("karras", "Karras", default_rho=7.0),
    Scheduler("exponential", "Exponential"),
    Scheduler("polyexponential", "Polyexponential", default_rho=1.0),
    Scheduler("sgm_uniform", "SGM Uniform", ("SGMUniform",), need_inner_model=True),
    Scheduler("kl_optimal", "KL Optimal"),
    Scheduler("align_your_steps", "Align Your Steps"),
    Scheduler("simple", "Simple"),
    Scheduler("normal", "Normal", need_inner_model=True),
    Scheduler("ddim", "DDIM", need_inner_model=True),
    Scheduler("beta", "Beta"),
)


def scheduler_listing(flavour: Flavour, samplers: Sequence[Sampler]) -> list[dict[str, Any]]:
    """``/schedulers``: A1111's schedule types, or SD.Next's ``{name, cls, options}`` per sampler."""
    if flavour == "sdnext":
        return [
            {"name": s.name, "cls": _SDNEXT_CLASSES.get(s.name, "DiffusersScheduler"), "options": {}} for s in samplers
        ]
    return [scheduler.listing() for scheduler in SCHEDULERS]


def default_samplers(flavour: Flavour, names: Sequence[str] | None) -> tuple[Sampler, ...]:
    """The flavour's samplers, or the given names (without aliases) in their place."""
    if names is not None:
        if not names:
            raise ValueError("samplers must name at least one sampler")
        return tuple(Sampler(name) for name in names)
    return SDNEXT_SAMPLERS if flavour == "sdnext" else A1111_SAMPLERS


def resolve_a1111_sampler(samplers: Sequence[Sampler], name: str | None, scheduler: str | None) -> tuple[str, str]:
    """A1111's ``get_sampler_and_scheduler``: split a " Karras"-style suffix, resolve aliases,
    and fall back to the first sampler for an unknown name (v1.9 and later). Returns (sampler, label).
    """
    by_name = {s.name: s for s in samplers}
    found = next((s for s in SCHEDULERS if scheduler in (s.name, s.label)), SCHEDULERS[0])
    wanted = name or samplers[0].name
    for candidate in SCHEDULERS:
        suffix = next((o for o in (candidate.label, *(candidate.aliases or ())) if wanted.endswith(" " + o)), None)
        if suffix is not None:
            found, wanted = candidate, wanted[: -(len(suffix) + 1)]
            break
    sampler = by_name.get(wanted) or _by_alias(samplers, wanted) or samplers[0]
    return sampler.name, found.label


def resolve_sdnext_sampler(samplers: Sequence[Sampler], name: str | None) -> str | None:
    """SD.Next: case-insensitive and alias matching; None means "Sampler not found"."""
    wanted = name or "Default"
    exact = next((s for s in samplers if s.name.lower() == wanted.lower()), None)
    found = exact or _by_alias(samplers, wanted)
    return found.name if found is not None else None


def _by_alias(samplers: Sequence[Sampler], name: str) -> Sampler | None:
    lowered = name.lower()
    return next((s for s in samplers if lowered in (a.lower() for a in s.aliases)), None)


# -- settings and other listings -----------------------------------------------------------------


def initial_options(flavour: Flavour, checkpoint: Checkpoint) -> dict[str, Any]:
    """The settings ``GET /options`` starts with: the ones the emulator honours, plus a few common ones."""
    options: dict[str, Any] = {
        "sd_model_checkpoint": checkpoint.title,
        "sd_checkpoint_hash": checkpoint.sha256,
        "samples_format": "png",
        "enable_pnginfo": True,
        "return_grid": True,
        "CLIP_stop_at_last_layers": 1,
        "sd_vae": "Automatic",
        "show_progress_every_n_steps": 10,
        "live_previews_enable": True,
        "live_previews_image_format": "png",
        "img2img_fix_steps": False,
        "api_enable_requests": True,
        "api_forbid_local_requests": True,
        "outdir_samples": "",
    }
    if flavour == "forge":
        options["forge_additional_modules"] = []
        options["forge_preset"] = "sd"
    if flavour != "sdnext":  # SD.Next's GET /options hides the LoRA settings
        options["sd_lora"] = "None"
    return options


UPSCALERS: tuple[dict[str, Any], ...] = (
    {"name": "None", "model_name": None, "model_path": None, "model_url": None, "scale": 4},
    {"name": "Lanczos", "model_name": None, "model_path": None, "model_url": None, "scale": 4},
    {"name": "Nearest", "model_name": None, "model_path": None, "model_url": None, "scale": 4},
    {
        "name": "R-ESRGAN 4x+",
        "model_name": "R-ESRGAN 4x+",
        "model_path": "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth",
        "model_url": None,
        "scale": 4,
    },
)
LORAS: tuple[dict[str, Any], ...] = (
    {"name": "sandboxLora", "alias": "sandboxLora", "path": "/models/Lora/sandboxLora.safetensors", "metadata": {}},
)
VAES: tuple[dict[str, Any], ...] = (
    {"model_name": "vae-ft-mse-840000-ema-pruned.safetensors", "filename": "/models/VAE/vae-ft-mse.safetensors"},
)
FORGE_MODULES: tuple[dict[str, Any], ...] = (
    {"model_name": "ae.safetensors", "filename": "/models/VAE/ae.safetensors"},
    {"model_name": "clip_l.safetensors", "filename": "/models/text_encoder/clip_l.safetensors"},
)


# -- the read-only listings clients such as webuiapi ask for (§2) --------------------------------

LATENT_UPSCALE_MODES: tuple[str, ...] = (
    "Latent",
    "Latent (antialiased)",
    "Latent (bicubic)",
    "Latent (bicubic antialiased)",
    "Latent (nearest)",
    "Latent (nearest-exact)",
)
HYPERNETWORKS: tuple[dict[str, Any], ...] = (
    {"name": "sandboxHypernetwork", "path": "/models/hypernetworks/sandboxHypernetwork.pt"},
)
FACE_RESTORERS: tuple[dict[str, Any], ...] = (
    {"name": "CodeFormer", "cmd_dir": None},
    {"name": "GFPGAN", "cmd_dir": None},
)
_REALESRGAN = "https://github.com/xinntao/Real-ESRGAN/releases/download"
REALESRGAN_MODELS: tuple[dict[str, Any], ...] = (
    {"name": "R-ESRGAN General 4xV3", "path": f"{_REALESRGAN}/v0.2.5.0/realesr-general-x4v3.pth", "scale": 4},
    {"name": "R-ESRGAN General WDN 4xV3", "path": f"{_REALESRGAN}/v0.2.5.0/realesr-general-wdn-x4v3.pth", "scale": 4},
    {"name": "R-ESRGAN AnimeVideo", "path": f"{_REALESRGAN}/v0.2.5.0/realesr-animevideov3.pth", "scale": 4},
    {"name": "R-ESRGAN 4x+", "path": f"{_REALESRGAN}/v0.1.0/RealESRGAN_x4plus.pth", "scale": 4},
    {"name": "R-ESRGAN 4x+ Anime6B", "path": f"{_REALESRGAN}/v0.2.2.4/RealESRGAN_x4plus_anime_6B.pth", "scale": 4},
    {"name": "R-ESRGAN 2x+", "path": f"{_REALESRGAN}/v0.2.1/RealESRGAN_x2plus.pth", "scale": 2},
)
PROMPT_STYLES: tuple[dict[str, Any], ...] = (
    {"name": "sandbox watercolour", "prompt": "{prompt}, watercolour painting", "negative_prompt": "photo, blurry"},
)
MEMORY: dict[str, Any] = {
    "ram": {"free": 12884901888.0, "used": 4294967296, "total": 17179869184.0},
    "cuda": {
        "system": {"free": 6442450944, "used": 2147483648, "total": 8589934592},
        "active": {"current": 2097152000, "peak": 3145728000},
        "allocated": {"current": 2097152000, "peak": 3145728000},
        "reserved": {"current": 2147483648, "peak": 3221225472},
        "inactive": {"current": 50331648, "peak": 75497472},
        "events": {"retries": 0, "oom": 0},
    },
}
"""``/memory`` of an 8 GiB GPU at rest: fixed numbers, since the sandbox has no GPU to measure."""


def embeddings(checkpoint: Checkpoint) -> dict[str, Any]:
    """``/embeddings``: one textual-inversion embedding, loaded for the current checkpoint."""
    loaded = {
        "step": 500,
        "sd_checkpoint": checkpoint.shorthash,
        "sd_checkpoint_name": checkpoint.model_name,
        "shape": 768,
        "vectors": 4,
    }
    return {"loaded": {"sandboxEmbedding": loaded}, "skipped": {}}


def scripts() -> dict[str, list[str]]:
    """``/scripts``: the emulator runs no scripts (naming one is the web UI's 422), so it lists none.

    A real web UI lists its built-in ones ("prompt matrix", "x/y/z plot", ...); a client that checks
    the list before naming a script, as webuiapi does for ControlNet, sees what will work here.
    """
    return {"txt2img": [], "img2img": []}


def cmd_flags(spec: FlavourSpec, *, api: bool, auth: tuple[str, str] | None) -> dict[str, Any]:
    """``/cmd-flags``: the launch flags this emulated web UI behaves as if started with.

    As the real route does (it returns ``vars(cmd_opts)``), the credentials flag holds ``user:password``;
    SD.Next names it ``auth`` and has no ``--api`` switch.
    """
    credentials = f"{auth[0]}:{auth[1]}" if auth is not None else None
    flags: dict[str, Any] = {
        "data_dir": "/sd",
        "models_dir": "/models",
        "ckpt_dir": None,
        "lora_dir": "/models/Lora",
        "embeddings_dir": "/sd/embeddings",
        "hypernetwork_dir": "/models/hypernetworks",
        "listen": False,
        "port": None,
        "nowebui": False,
        "api_log": False,
        "no_half": False,
        "medvram": False,
        "lowvram": False,
        "xformers": False,
        "skip_torch_cuda_test": False,
        "timeout_keep_alive": 30,
        "subpath": None,
    }
    if spec.api_always_on:
        flags["auth"] = credentials
    else:
        flags.update(api=api, api_auth=credentials, api_server_stop=False)
    return flags
