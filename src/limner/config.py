"""Settings: LibreChat's environment variable names where LibreChat has one, ``LIMNER_*`` for ours.

Nothing reads the environment at import time: front ends call :func:`load_settings` once and pass the
result down (``create_app(settings)``). A LibreChat ``.env`` full of unrelated variables loads without
error (unknown names are ignored); an invalid value fails at start with a
:class:`~limner.errors.ConfigurationError` that names the variable. An empty value means "not set", and
a key whose value is ``user_provided`` means each user enters their own key in the UI, as in LibreChat.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from dotenv import dotenv_values
from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from limner.errors import ConfigurationError

__all__ = ["USER_PROVIDED", "SandboxMode", "Settings", "load_settings"]

USER_PROVIDED = "user_provided"
DEFAULT_OAI_MODEL = "gpt-image-1.5"
"""The default of IMAGE_GEN_OAI_MODEL: a current GPT image model (gpt-image-1 is shut down)."""


def default_data_dir() -> Path:
    """Per-user data folder following the XDG convention (``~/.local/share/limner``)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "limner"


class SandboxMode(StrEnum):
    """When the built-in emulators stand in for real providers."""

    AUTO = "auto"
    """Only when no provider at all is configured: the quick start works with no keys."""
    ON = "on"
    """Every family talks to the emulators, whatever is configured (announced at start)."""
    OFF = "off"
    """Never; unconfigured families are simply unavailable."""


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class _DocumentedNamesSource(PydanticBaseSettingsSource):
    """The process environment over a ``.env`` file, read under each field's documented names only.

    pydantic-settings' own env sources also look a field up by its bare name when the model allows
    population by name (``Settings(data_dir=...)`` in Python code), so a LibreChat ``.env`` would move
    limner onto LibreChat's ``HOST`` and ``PORT``. Reading the documented names here, through the public
    source interface, keeps that rule whatever the library's private helpers become. Names match without
    regard to case, an empty value counts as unset, and the first of a field's names that is set wins.
    """

    def __init__(self, settings_cls: type[BaseSettings], env_files: list[Path]) -> None:
        super().__init__(settings_cls)
        found: dict[str, str] = {}
        for env_file in env_files:  # a later file overrides an earlier one, as in pydantic-settings
            if env_file.is_file():
                found.update({k.upper(): v for k, v in dotenv_values(env_file).items() if v})
        found.update({k.upper(): v for k, v in os.environ.items() if v})  # the environment wins
        self._found = found

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """The first documented name of ``field`` that is set: (value, that name, not complex)."""
        for name in _documented_names(field):
            if name.upper() in self._found:
                return self._found[name.upper()], name, False
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for field_name, field in self.settings_cls.model_fields.items():
            value, _, _ = self.get_field_value(field, field_name)
            if value is not None:
                values[field_name] = value
        return values


def _documented_names(field: FieldInfo) -> list[str]:
    alias = field.validation_alias
    return [str(name) for name in alias.choices] if isinstance(alias, AliasChoices) else []


class Settings(BaseSettings):
    """Every setting limner reads. Each field's docstring is the README's description of it."""

    model_config = SettingsConfigDict(
        extra="ignore",
        env_ignore_empty=True,
        case_sensitive=False,
        populate_by_name=True,
        use_attribute_docstrings=True,
        frozen=True,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Python keyword arguments by field name; the environment and ``.env`` by documented name only."""
        env_file = getattr(dotenv_settings, "env_file", None)  # ``_env_file=`` or the model's default
        files = [] if env_file is None else [env_file] if isinstance(env_file, str | Path) else list(env_file)
        return (init_settings, _DocumentedNamesSource(settings_cls, [Path(f) for f in files]))

    # --- OpenAI Image Tools (LibreChat names) -------------------------------------------------
    image_gen_oai_api_key: SecretStr | None = Field(None, validation_alias=_env("IMAGE_GEN_OAI_API_KEY"))
    """API key of the OpenAI Image Tools (OpenAI, Azure or a compatible service). Empty or
    `user_provided`: each user enters their own key in Settings."""
    image_gen_oai_model: str = Field(DEFAULT_OAI_MODEL, validation_alias=_env("IMAGE_GEN_OAI_MODEL"))
    """Model for `image_gen_oai` and `image_edit_oai` (on Azure: the deployment name when the base URL
    is the resource endpoint). Unknown names are sent as given with the most permissive GPT image
    profile."""
    image_gen_oai_baseurl: str | None = Field(None, validation_alias=_env("IMAGE_GEN_OAI_BASEURL"))
    """Base URL of an OpenAI-compatible service, an Azure deployment URL
    (`https://RES.openai.azure.com/openai/deployments/DEP`), an Azure resource endpoint, or an Azure
    v1 URL (`https://RES.openai.azure.com/openai/v1`). Default: OpenAI."""
    image_gen_oai_azure_api_version: str | None = Field(None, validation_alias=_env("IMAGE_GEN_OAI_AZURE_API_VERSION"))
    """Azure OpenAI `api-version` (e.g. `2025-04-01-preview`); with a base URL it selects Azure mode."""
    image_gen_oai_description: str | None = Field(None, validation_alias=_env("IMAGE_GEN_OAI_DESCRIPTION"))
    """Replaces the description of `image_gen_oai` that the LLM reads."""
    image_gen_oai_prompt_description: str | None = Field(
        None, validation_alias=_env("IMAGE_GEN_OAI_PROMPT_DESCRIPTION")
    )
    """Replaces the description of the `prompt` parameter of `image_gen_oai`."""
    image_edit_oai_description: str | None = Field(None, validation_alias=_env("IMAGE_EDIT_OAI_DESCRIPTION"))
    """Replaces the description of `image_edit_oai` that the LLM reads."""
    image_edit_oai_prompt_description: str | None = Field(
        None, validation_alias=_env("IMAGE_EDIT_OAI_PROMPT_DESCRIPTION")
    )
    """Replaces the description of the `prompt` parameter of `image_edit_oai`."""

    # --- DALL·E (LibreChat names) ---------------------------------------------------------------
    dalle_api_key: SecretStr | None = Field(None, validation_alias=_env("DALLE3_API_KEY", "DALLE_API_KEY"))
    """API key of the `dalle` tool (`DALLE3_API_KEY`, else `DALLE_API_KEY`; also the Azure key).
    Empty or `user_provided`: each user enters their own."""
    dalle_reverse_proxy: str | None = Field(None, validation_alias=_env("DALLE_REVERSE_PROXY"))
    """Base URL of a reverse proxy or compatible service for DALL·E (OpenAI retired DALL·E)."""
    dalle3_baseurl: str | None = Field(None, validation_alias=_env("DALLE3_BASEURL"))
    """Azure OpenAI URL for DALL·E (a deployment URL or the resource endpoint); needs the api-version."""
    dalle3_azure_api_version: str | None = Field(None, validation_alias=_env("DALLE3_AZURE_API_VERSION"))
    """Azure `api-version` for DALL·E, e.g. `2024-10-21`."""
    dalle3_system_prompt: str | None = Field(None, validation_alias=_env("DALLE3_SYSTEM_PROMPT"))
    """Replaces the description of the `dalle` tool that the LLM reads (dead in LibreChat; it works here)."""
    dalle_model: str = Field("dall-e-3", validation_alias=_env("LIMNER_DALLE_MODEL"))
    """Model of the `dalle` tool: `dall-e-3` or `dall-e-2` (on Azure with a resource endpoint: the
    deployment name)."""

    # --- Stable Diffusion (AUTOMATIC1111, Forge, SD.Next) -----------------------------------------
    sd_webui_url: str | None = Field(None, validation_alias=_env("SD_WEBUI_URL"))
    """URL of an AUTOMATIC1111-compatible web UI started with `--api` (A1111, Forge, SD.Next), e.g.
    `http://127.0.0.1:7860`."""
    sd_auth: SecretStr | None = Field(None, validation_alias=_env("LIMNER_SD_AUTH"))
    """`user:password` for the web UI's HTTP basic auth (A1111 `--api-auth`, SD.Next `--auth`)."""
    sd_steps: int = Field(22, ge=1, le=150, validation_alias=_env("LIMNER_SD_STEPS"))
    """Sampling steps (LibreChat's fixed value is the default)."""
    sd_cfg_scale: float = Field(4.5, gt=0, le=30, validation_alias=_env("LIMNER_SD_CFG_SCALE"))
    """Classifier-free guidance scale."""
    sd_width: int = Field(1024, ge=64, le=4096, multiple_of=8, validation_alias=_env("LIMNER_SD_WIDTH"))
    """Default image width (a multiple of 8)."""
    sd_height: int = Field(1024, ge=64, le=4096, multiple_of=8, validation_alias=_env("LIMNER_SD_HEIGHT"))
    """Default image height (a multiple of 8)."""
    sd_sampler: str | None = Field(None, validation_alias=_env("LIMNER_SD_SAMPLER"))
    """Sampler name, e.g. `DPM++ 2M` (unset: the web UI's default)."""
    sd_scheduler: str | None = Field(None, validation_alias=_env("LIMNER_SD_SCHEDULER"))
    """Scheduler, e.g. `Karras` (unset: automatic)."""
    sd_checkpoint: str | None = Field(None, validation_alias=_env("LIMNER_SD_CHECKPOINT"))
    """Checkpoint to use for every call, sent as `override_settings.sd_model_checkpoint`."""
    sd_denoising_strength: float = Field(0.75, ge=0, le=1, validation_alias=_env("LIMNER_SD_DENOISING_STRENGTH"))
    """Default strength of img2img edits (0 keeps the input, 1 ignores it)."""

    # --- Flux (Black Forest Labs) ---------------------------------------------------------------
    flux_api_key: SecretStr | None = Field(None, validation_alias=_env("FLUX_API_KEY"))
    """Black Forest Labs API key. Empty or `user_provided`: each user enters their own."""
    flux_api_base_url: str = Field("https://api.us1.bfl.ai", validation_alias=_env("FLUX_API_BASE_URL"))
    """BFL API host: `https://api.bfl.ai` (global), `https://api.eu.bfl.ai`, `https://api.us.bfl.ai`, or the
    legacy single-cluster `https://api.us1.bfl.ai` / `https://api.eu1.bfl.ai` (needed for fine-tunes)."""
    flux_model: str = Field("flux-pro-1.1", validation_alias=_env("LIMNER_FLUX_MODEL"))
    """Default generation endpoint of the `flux` tool (without `/v1/`)."""
    flux_edit_model: str = Field("flux-kontext-pro", validation_alias=_env("LIMNER_FLUX_EDIT_MODEL"))
    """Default editing endpoint of the `flux` tool (a FLUX Kontext or FLUX.2 endpoint)."""
    flux_deadline: float = Field(300.0, gt=0, validation_alias=_env("LIMNER_FLUX_DEADLINE"))
    """Seconds a Flux task may take from submission to a ready image before it is abandoned."""
    flux_result_hosts: tuple[str, ...] = Field((), validation_alias=_env("LIMNER_FLUX_RESULT_HOSTS"))
    """Comma-separated host names or `*.domain` patterns where Flux result links may also point, for a
    gateway that hands out links on yet another host. BFL's delivery hosts (`*.bfl.ai`, `*.bfl.ml`) and the
    host of `FLUX_API_BASE_URL` are always allowed."""

    allow_registration: bool = Field(True, validation_alias=_env("LIMNER_ALLOW_REGISTRATION"))
    """Whether anyone may sign up in the web UI (the first user becomes the administrator)."""
    session_days: int = Field(14, ge=1, le=365, validation_alias=_env("LIMNER_SESSION_DAYS"))
    """How long a browser session lasts."""
    signin_max_failures: int = Field(10, ge=1, validation_alias=_env("LIMNER_SIGNIN_MAX_FAILURES"))
    """Failed sign-ins for one account name within `LIMNER_SIGNIN_WINDOW` before that name is refused (429)."""
    signin_max_failures_per_address: int = Field(
        50, ge=1, validation_alias=_env("LIMNER_SIGNIN_MAX_FAILURES_PER_ADDRESS")
    )
    """Failed sign-ins from one client address within `LIMNER_SIGNIN_WINDOW` before that address is refused."""
    signin_window: float = Field(900.0, gt=0, validation_alias=_env("LIMNER_SIGNIN_WINDOW"))
    """Seconds a failed sign-in counts against its name and address."""
    password_hash_concurrency: int = Field(2, ge=1, le=64, validation_alias=_env("LIMNER_PASSWORD_HASH_CONCURRENCY"))
    """How many password hashes (Argon2, CPU- and memory-heavy) may run at once; the rest queue."""

    # --- MCP ----------------------------------------------------------------------------------
    mcp_config: Path | None = Field(None, validation_alias=_env("LIMNER_MCP_CONFIG"))
    """YAML file of MCP servers shaped like LibreChat's `mcpServers` block; their tools are offered to the
    agent and the API, and the images they return are stored with IDs."""

    # --- chat ---------------------------------------------------------------------------------
    chat_model: str | None = Field(None, validation_alias=_env("LIMNER_CHAT_MODEL"))
    """Chat model in pydantic-ai's `provider:model` form (`openai:gpt-4.1`, `anthropic:claude-sonnet-4-5`,
    `google-gla:gemini-2.5-flash`, ...), keys from the provider's usual variable (`OPENAI_API_KEY`, ...). With
    `LIMNER_CHAT_BASE_URL`: the model name at that OpenAI-compatible server. Unset: the sandbox chat model."""
    chat_models: str | None = Field(None, validation_alias=_env("LIMNER_CHAT_MODELS"))
    """Comma-separated further chat models that agents may choose (same form as `LIMNER_CHAT_MODEL`).
    Unset: agents use `LIMNER_CHAT_MODEL` only; users cannot pick providers on the operator's keys."""
    chat_base_url: str | None = Field(None, validation_alias=_env("LIMNER_CHAT_BASE_URL"))
    """OpenAI-compatible chat server (Ollama `http://127.0.0.1:11434/v1`, vLLM, OpenRouter, ...)."""
    chat_api_key: SecretStr | None = Field(None, validation_alias=_env("LIMNER_CHAT_API_KEY"))
    """Key for `LIMNER_CHAT_BASE_URL` (any text for servers that need none)."""
    chat_vision: Literal["auto", "on", "off"] = Field("auto", validation_alias=_env("LIMNER_CHAT_VISION"))
    """Whether the chat model can see images: `auto` knows the common families (GPT-4o/4.1/5, o-series,
    Claude, Gemini, LLaVA, Qwen-VL, ...); `on`/`off` override."""
    vision_max_side: int = Field(1024, ge=128, le=4096, validation_alias=_env("LIMNER_VISION_MAX_SIDE"))
    """Longest side of images handed to the chat model as vision input (downscaled copies; the stored
    image is untouched)."""
    max_tool_rounds: int = Field(8, ge=1, le=50, validation_alias=_env("LIMNER_MAX_TOOL_ROUNDS"))
    """Most model calls in one turn (each round of tool calls, and the final answer) before it is stopped."""

    # --- shared LibreChat names ---------------------------------------------------------------
    proxy: str | None = Field(None, validation_alias=_env("PROXY"))
    """Outbound HTTP(S) proxy for every upstream call, e.g. `http://proxy:3128`."""
    creds_key: SecretStr | None = Field(None, validation_alias=_env("CREDS_KEY"))
    """Secret from which the key that encrypts users' stored provider keys is derived. Unset: a key
    is generated once and kept in `LIMNER_DATA_DIR/creds.key`."""

    # --- limner's own -------------------------------------------------------------------------
    data_dir: Path = Field(default_factory=default_data_dir, validation_alias=_env("LIMNER_DATA_DIR"))
    """Folder for the SQLite database, the image blobs and the generated credentials key.
    Default: `$XDG_DATA_HOME/limner` or `~/.local/share/limner`."""
    database_url: str | None = Field(None, validation_alias=_env("LIMNER_DATABASE_URL"))
    """SQLAlchemy async URL of the database. Default: SQLite at `LIMNER_DATA_DIR/limner.db`."""
    host: str = Field("127.0.0.1", validation_alias=_env("LIMNER_HOST"))
    """Address `limner serve` listens on."""
    port: int = Field(8480, ge=0, le=65535, validation_alias=_env("LIMNER_PORT"))
    """Port `limner serve` listens on."""
    sandbox: SandboxMode = Field(SandboxMode.AUTO, validation_alias=_env("LIMNER_SANDBOX"))
    """`auto` (emulators only when no provider is configured at all), `on` (always, for every
    family) or `off` (never)."""
    sandbox_port: int = Field(0, ge=0, le=65535, validation_alias=_env("LIMNER_SANDBOX_PORT"))
    """Port of the built-in emulators when they run inside `limner serve` (0: any free port)."""
    max_upload_bytes: int = Field(25 * 1024 * 1024, gt=0, validation_alias=_env("LIMNER_MAX_UPLOAD_BYTES"))
    """Largest accepted image file, for uploads and for bytes from providers and URLs."""
    max_image_pixels: int = Field(40_000_000, gt=0, validation_alias=_env("LIMNER_MAX_IMAGE_PIXELS"))
    """Largest accepted width x height; guards against decompression bombs."""
    decode_memory_mb: int = Field(512, ge=16, validation_alias=_env("LIMNER_DECODE_MEMORY_MB"))
    """MiB of decoded pixels the process may hold at once (uploads checked, thumbnails, vision copies,
    masks); further decodes wait their turn, and one larger than this runs alone. A 6300x6300 image is
    about 150 MiB decoded."""
    provider_timeout: float = Field(300.0, gt=0, validation_alias=_env("LIMNER_PROVIDER_TIMEOUT"))
    """Seconds before an upstream image call is abandoned (generations can take minutes)."""
    partial_images: int = Field(0, ge=0, le=3, validation_alias=_env("LIMNER_PARTIAL_IMAGES"))
    """Partial images to stream while a GPT image model works (0-3), shown as progress. Each one adds
    about 100 output tokens to the cost; 0 turns streaming off."""
    provider_max_retries: int = Field(2, ge=0, le=10, validation_alias=_env("LIMNER_PROVIDER_MAX_RETRIES"))
    """Retries of every upstream call by one rule: a call the service certainly did not do (connection
    refused, 429, 503) is retried after its `Retry-After` (up to 60 s) or a backoff; a paid generation
    whose outcome is unknown (a timeout after sending, 500, 502, 504) is never repeated."""
    fetch_allow_loopback: bool = Field(False, validation_alias=_env("LIMNER_FETCH_ALLOW_LOOPBACK"))
    """Let the safe fetcher reach loopback addresses (for emulators on this machine; private networks
    stay refused). The built-in sandbox allows its own URLs without this."""
    local_user: str = Field("local", min_length=1, validation_alias=_env("LIMNER_LOCAL_USER"))
    """Name of the user the CLI acts as when it works on the local data dir."""
    sweep_interval: float = Field(3600.0, ge=0, validation_alias=_env("LIMNER_SWEEP_INTERVAL"))
    """Seconds between sweeps that remove stored files no image record points at (left by a crash
    mid-save; only files older than an hour, so saves in flight are safe). The first runs just after
    start. 0: never (`limner db sweep` by hand)."""
    log_level: str = Field("INFO", validation_alias=_env("LIMNER_LOG_LEVEL"))
    """Log level of `limner serve` (DEBUG, INFO, WARNING, ERROR)."""

    @field_validator(
        "image_gen_oai_baseurl",
        "dalle_reverse_proxy",
        "dalle3_baseurl",
        "sd_webui_url",
        "chat_base_url",
        "proxy",
        "database_url",
    )
    @classmethod
    def _strip_url(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @field_validator("flux_result_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        """A comma-separated string becomes lower-case host patterns; a URL or a stray ``*`` is refused."""
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            return value
        hosts = tuple(str(item).strip().lower().rstrip(".") for item in items if str(item).strip())
        for host in hosts:
            bare = host.removeprefix("*.")
            if not bare or any(char in bare for char in "*/:@ ") or ".." in bare or bare.startswith("."):
                raise ValueError(
                    f"{host!r} is not a host name or *.domain pattern (e.g. gw.example.com, *.example.com)"
                )
        return hosts

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        upper = value.upper()
        if upper not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
        return upper

    @property
    def allowed_chat_models(self) -> list[str]:
        """The models an agent may name: the configured one and ``LIMNER_CHAT_MODELS``."""
        extra = [m.strip() for m in (self.chat_models or "").split(",") if m.strip()]
        return [m for m in [self.chat_model, *extra] if m]

    @property
    def resolved_database_url(self) -> str:
        """The configured database URL or the SQLite file inside the data dir."""
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'limner.db'}"

    @classmethod
    def env_names(cls) -> dict[str, list[str]]:
        """Field name to the environment variable names it is read from (for docs and errors)."""
        names: dict[str, list[str]] = {}
        for name, field in cls.model_fields.items():
            names[name] = _documented_names(field) or [name]
        return names


def operator_key(secret: SecretStr | None) -> str | None:
    """The operator's key, or None when it is unset, empty or ``user_provided``."""
    if secret is None:
        return None
    value = secret.get_secret_value().strip()
    return None if not value or value == USER_PROVIDED else value


def load_settings(env_file: str | Path | None = ".env", **overrides: Any) -> Settings:
    """Read the environment (and a LibreChat-style ``.env`` when present) into Settings.

    Errors name the environment variable, not the Python field, because that is what operators edit.
    """
    try:
        return Settings(_env_file=env_file, **overrides)
    except ValidationError as exc:
        env_names = Settings.env_names()
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            var = "/".join(env_names.get(field, [field]))
            problems.append(f"{var}: {err['msg']}")
        raise ConfigurationError(
            "Invalid configuration: " + "; ".join(problems),
            hint="Fix the named environment variables (or your .env file) and start again.",
        ) from exc
