"""Runtime: everything a front end needs, built from Settings and closed in one place.

The HTTP app's lifespan, the CLI and the MCP server all open a :class:`Runtime`: it migrates the
database, opens the blob store and the key ring, decides whether the built-in emulators stand in for the
providers (DESIGN: never silently for a family an operator configured), builds one HTTP client per
backend, and offers the tool families. It sits with the front ends in the layer map: it may import every
layer below, including ``sandbox``, and nothing below imports it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import httpx2

from limner.accounts import Accounts
from limner.chat.conversations import ChatService
from limner.chat.loop import AgentConfig, ChatRunner
from limner.chat.models import resolve_chat_model
from limner.config import SandboxMode, Settings
from limner.db.session import Database
from limner.errors import ConfigurationError, ToolNotFoundError
from limner.imaging import decode_budget
from limner.keys import KeyRing, KeySource, load_cipher
from limner.library import ImageLibrary, ImageLimits
from limner.net import FetchPolicy, create_http_client
from limner.periodic import repeating
from limner.probes import PROBE_INTERVAL, ProbeTarget, ProviderProbes
from limner.sandbox.a1111 import A1111Emulator
from limner.sandbox.openai_images import OpenAIImagesEmulator
from limner.sandbox.server import Sandbox, serve_sandbox
from limner.storage import LocalBlobStore, make_private
from limner.tools.base import ToolContext, ToolSpec
from limner.tools.family import BackendFamily, BuildContext, Family, FamilyStatus, SandboxURLs
from limner.tools.library import library_tools
from limner.tools.registry import any_configured, build_families

__all__ = ["Runtime", "SandboxInfo"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SandboxInfo:
    """Where the built-in emulators run, when they do, and what they stand in for."""

    base_url: str
    urls: dict[str, str]
    reason: str | None
    """Why the image emulators stand in for the providers; None when only the chat emulator is used."""
    chat: bool = False
    """Whether the sandbox chat model answers (no chat model is configured)."""
    emulators: Sandbox | None = None
    """The running emulators themselves (tests read their request logs and set fault knobs)."""


class Runtime:
    """Settings, database, storage, library, keys and tool families of one running limner."""

    def __init__(
        self,
        *,
        settings: Settings,
        db: Database,
        library: ImageLibrary,
        keyring: KeyRing,
        families: Sequence[Family],
        sandbox: SandboxInfo | None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.library = library
        self.keyring = keyring
        self.families = {family.id: family for family in families}
        self.sandbox = sandbox
        self._library_tools = library_tools()
        self.chat_client: httpx2.AsyncClient | None = None
        self._runners: dict[str | None, ChatRunner] = {}
        self.chat = ChatService(
            db,
            library,
            self.chat_runner,
            allowed_models=settings.allowed_chat_models,
            families=lambda: [f for f in self.families if not f.startswith("mcp:")] + ["library"],
        )
        self.accounts = Accounts.from_settings(db, settings)
        self.probes = ProviderProbes()  # replaced in open() when real providers are configured
        self.running_turns: dict[str, asyncio.Task[Any]] = {}
        """Conversation ID to the task answering it, so a client can ask to stop."""

    def chat_runner(self, model: str | None = None) -> ChatRunner:
        """The agent loop for a chat model (the configured one, or an allowed agent's own), built once."""
        if model is not None and model not in self.settings.allowed_chat_models:
            model = None  # an agent saved before the operator narrowed the list falls back to the default
        if model not in self._runners:
            if self.chat_client is None:
                raise ConfigurationError(
                    "The chat agent is not available in this command.",
                    hint="Use `limner chat` or the web UI of `limner serve` to talk to the agent.",
                )
            settings = self.settings if model is None else self.settings.model_copy(update={"chat_model": model})
            sandbox_url = self.sandbox.urls["chat"] if self.sandbox is not None and self.sandbox.chat else None
            choice = resolve_chat_model(settings, sandbox_url=sandbox_url, http_client=self.chat_client)
            self._runners[model] = ChatRunner(
                choice=choice,
                library=self.library,
                keyring=self.keyring,
                tools=self.agent_tools,
                vision_max_side=settings.vision_max_side,
                max_tool_rounds=settings.max_tool_rounds,
            )
        return self._runners[model]

    def agent_tools(self, agent: AgentConfig) -> list[ToolSpec[Any]]:
        """The tools an agent offers its model: the library tools and its available families' tools."""
        specs = list(self._library_tools)
        for family in self.families.values():
            if family.status.available and (agent.tool_families is None or family.id in agent.tool_families):
                specs += family.tools()
        return specs

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings, *, with_tools: bool = True) -> AsyncIterator[Runtime]:
        """Build everything; on exit close clients, stop the emulators and dispose of the engine.

        ``with_tools=False`` skips the tool families (no emulators, no upstream clients) for commands
        that only manage users, tokens or stored images.
        """
        async with AsyncExitStack() as stack:
            await anyio.to_thread.run_sync(make_private, settings.data_dir)
            decode_budget().set_limit(settings.decode_memory_mb * 1024 * 1024)  # memory is per process
            db = await Database.open(settings.resolved_database_url)
            stack.push_async_callback(db.dispose)
            await db.upgrade()
            keyring = KeyRing(db, await load_cipher(settings.creds_key, settings.data_dir))
            policy = FetchPolicy(
                max_bytes=settings.max_upload_bytes,
                allow_loopback=settings.fetch_allow_loopback,
                proxy=settings.proxy,
            )
            library = ImageLibrary(
                db,
                LocalBlobStore(settings.data_dir / "blobs"),
                ImageLimits(max_bytes=settings.max_upload_bytes, max_pixels=settings.max_image_pixels),
                policy,
                fetch_client=await _http_client(settings, stack, sandbox=False),
            )
            sandbox = await _start_sandbox(settings, stack) if with_tools else None
            families = await _families(settings, sandbox, stack) if with_tools else []
            runtime = cls(
                settings=settings, db=db, library=library, keyring=keyring, families=families, sandbox=sandbox
            )
            await stack.enter_async_context(runtime.accounts.sweeping())  # expired sessions and tokens
            if with_tools:
                runtime.chat_client = await _http_client(settings, stack, sandbox=sandbox is not None and sandbox.chat)
                targets = _probe_targets(families)
                if targets:
                    runtime.probes = ProviderProbes(targets, await _http_client(settings, stack, sandbox=False))
            yield runtime

    @asynccontextmanager
    async def chores(self) -> AsyncIterator[None]:
        """A long-running server's background work (``limner serve``); the CLI's short commands skip it.

        The sweep of files left by a crash mid-save, so nobody has to remember ``limner db sweep``, and the
        probe of each configured provider, so an address that answers nothing is known before a call fails.
        """
        sweep = self.library.sweep_and_report
        async with (
            repeating(sweep, self.settings.sweep_interval, name="sweep of orphaned files"),
            repeating(self.probes.probe_all, PROBE_INTERVAL, name="provider probe"),
        ):
            yield

    def tools(self) -> dict[str, ToolSpec[Any]]:
        """Every tool that can run now, by wire name."""
        found = {spec.name: spec for spec in self._library_tools}
        for family in self.families.values():
            if family.status.available:
                found.update({spec.name: spec for spec in family.tools()})
        return found

    def tool(self, name: str) -> ToolSpec[Any]:
        """The tool to run; a ConfigurationError saying why when it exists but is unavailable."""
        spec = self.tools().get(name)
        if spec is not None:
            return spec
        status = next((st for s, st in self.all_tools() if s.name == name), None)
        if status is not None:
            raise ConfigurationError(
                f"The tool {name} is not available: {status.reason}.",
                hint="An operator can configure it (the README's configuration table names each setting); "
                "the other tools work meanwhile.",
            )
        available = ", ".join(sorted(self.tools()))
        raise ToolNotFoundError(f"There is no tool named {name!r}.", hint=f"The tools available now: {available}.")

    def all_tools(self) -> list[tuple[ToolSpec[Any], FamilyStatus | None]]:
        """Every tool, available or not, with its family's status (library tools have none)."""
        listed: list[tuple[ToolSpec[Any], FamilyStatus | None]] = [(s, None) for s in self._library_tools]
        for family in self.families.values():
            listed += [(spec, family.status) for spec in family.tools()]
        return listed

    def tool_context(self, user_id: str, **extra: Any) -> ToolContext:
        """A ToolContext acting as ``user_id``."""
        return ToolContext(user_id=user_id, library=self.library, keyring=self.keyring, **extra)

    def key_sources(self) -> dict[str, KeySource]:
        """Families that take a key, by provider name (the ``{provider}`` of ``/api/keys``)."""
        return {fid: f.key_source for fid, f in self.families.items() if f.key_source is not None}


def default_sandbox() -> Sandbox:
    """The emulators `limner serve` and `limner sandbox` run. DALL·E stays available here (OpenAI retired
    it, and the contract tests cover that answer), so the ``dalle`` tool can be tried offline.
    """
    return Sandbox(
        openai=OpenAIImagesEmulator(retired_models={"gpt-image-1"}),
        a1111=A1111Emulator(seconds_per_step=0.02),  # slow enough for progress to show
    )


def _sandbox_reason(settings: Settings) -> str | None:
    if settings.sandbox is SandboxMode.ON:
        return "LIMNER_SANDBOX=on"
    if settings.sandbox is SandboxMode.AUTO and not any_configured(settings):
        return "no image provider is configured"
    return None


def _chat_configured(settings: Settings) -> bool:
    return settings.chat_model is not None or settings.chat_base_url is not None


async def _start_sandbox(settings: Settings, stack: AsyncExitStack) -> SandboxInfo | None:
    reason = _sandbox_reason(settings)
    chat = not _chat_configured(settings)
    if reason is None and not chat:
        return None
    emulators = default_sandbox()
    running = await stack.enter_async_context(serve_sandbox(emulators, port=settings.sandbox_port))
    if reason is not None:
        log.warning(
            "SANDBOX: %s, so every image tool talks to limner's built-in emulators at %s. Images are "
            "deterministic test renders, marked as sandbox-made. Configure a provider (e.g. IMAGE_GEN_OAI_API_KEY) "
            "for real images.",
            reason,
            running.base_url,
        )
    if chat:
        log.warning(
            "SANDBOX: no chat model is configured (LIMNER_CHAT_MODEL), so the chat agent is limner's rule-based "
            "sandbox model. Set LIMNER_CHAT_MODEL for a real LLM."
        )
    return SandboxInfo(
        base_url=running.base_url, urls=dict(running.urls), reason=reason, chat=chat, emulators=emulators
    )


def _probe_targets(families: Iterable[Family]) -> list[ProbeTarget]:
    """The configured providers worth probing: a real backend with a URL setting (not an emulator, not MCP)."""
    targets = []
    for family in families:
        backend = family.backend if isinstance(family, BackendFamily) else None
        if backend is not None and not backend.is_sandbox and isinstance(family, BackendFamily) and family.url_setting:
            targets.append(ProbeTarget(family.id, family.title, backend.endpoint, family.url_setting))
    return targets


async def _http_client(settings: Settings, stack: AsyncExitStack, *, sandbox: bool) -> httpx2.AsyncClient:
    # Building a client loads the CA bundle from disk: off the event loop.
    proxy = None if sandbox else settings.proxy
    client = await anyio.to_thread.run_sync(lambda: create_http_client(timeout=settings.provider_timeout, proxy=proxy))
    stack.push_async_callback(client.aclose)
    return client


async def _families(settings: Settings, sandbox: SandboxInfo | None, stack: AsyncExitStack) -> list[Family]:
    async def client(for_sandbox: bool) -> httpx2.AsyncClient:
        return await _http_client(settings, stack, sandbox=for_sandbox)

    urls = None
    if sandbox is not None and sandbox.reason is not None:
        urls = SandboxURLs(urls=sandbox.urls, reason=sandbox.reason)

    def on_close(callback: Callable[[], Awaitable[None]]) -> None:
        stack.push_async_callback(callback)

    context = BuildContext(settings=settings, sandbox=urls, http_client=client, on_close=on_close)
    return await build_families(context)
