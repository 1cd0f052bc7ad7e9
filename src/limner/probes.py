"""Is each configured provider answering? A cheap, cached probe in the background of ``limner serve``.

LibreChat's stock ``SD_WEBUI_URL=http://host.docker.internal:7860`` points at nothing on most machines, and
without a probe the operator learns it from the first person whose picture fails. The probe sends one GET
to each configured provider's base URL (through the same proxy settings as real calls) and counts any HTTP
answer, even a 401 or a 404, as "answering": it checks that something listens there, never a key, so it
costs no credits and needs none. It runs just after start (never delaying it) and then every few minutes;
``/api/health``, the start-up log and the web UI's family list show the last result. Emulators are not
probed: they run in this process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import httpx2

__all__ = ["PROBE_INTERVAL", "ProbeResult", "ProbeTarget", "ProviderProbes"]

log = logging.getLogger(__name__)

PROBE_INTERVAL = 300.0
"""Seconds between probes: a provider that comes back is seen within five minutes."""
_PROBE_TIMEOUT = 5.0

State = Literal["unknown", "answering", "not_answering"]


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    """A family to probe: where its provider answers and the setting that says so."""

    family: str
    title: str
    url: str
    setting: str


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The last probe of one provider; ``detail`` says why it is not answering (never an address)."""

    state: State
    checked_at: float | None = None
    detail: str | None = None
    hint: str | None = None


class ProviderProbes:
    """The probe results by family ID; families that are not probed have none."""

    def __init__(self, targets: Iterable[ProbeTarget] = (), client: httpx2.AsyncClient | None = None) -> None:
        self.targets = {target.family: target for target in targets}
        assert client is not None or not self.targets, "targets need a client to probe them with"
        self.client = client
        self.results: dict[str, ProbeResult] = {family: ProbeResult("unknown") for family in self.targets}

    def result(self, family: str) -> ProbeResult | None:
        """The last result for ``family``, or None when it is not probed (sandbox, MCP, not configured)."""
        return self.results.get(family)

    async def probe_all(self) -> None:
        """Probe every target at once; log what changed (a warning when a provider stops answering)."""
        await asyncio.gather(*(self._probe_and_log(target) for target in self.targets.values()))

    async def _probe_and_log(self, target: ProbeTarget) -> None:
        before = self.results[target.family].state
        result = await self.probe(target)
        self.results[target.family] = result
        if result.state == before:
            return
        if result.state == "not_answering":
            log.warning("%s: %s %s", target.title, result.detail, result.hint)
        else:
            log.info("%s: the provider answers", target.title)

    async def probe(self, target: ProbeTarget) -> ProbeResult:
        """One GET to the provider's base URL; any HTTP answer means something listens there."""
        assert self.client is not None
        try:
            response = await self.client.get(target.url, timeout=_PROBE_TIMEOUT, follow_redirects=False)
            await response.aclose()
        except httpx2.TimeoutException:
            return self._not_answering(target, f"the provider did not answer within {_PROBE_TIMEOUT:g} s")
        except httpx2.ConnectError:  # the exception's text may hold the address: /api/health is public
            return self._not_answering(target, "nothing accepts connections there, or the host name is unknown")
        except httpx2.TransportError as exc:
            return self._not_answering(target, f"the connection failed ({type(exc).__name__})")
        return ProbeResult("answering", checked_at=time.time())

    @staticmethod
    def _not_answering(target: ProbeTarget, detail: str) -> ProbeResult:
        hint = f"Check {target.setting} and the proxy (PROXY); the tools fail until the provider answers."
        detail = f"{detail[:1].upper()}{detail[1:]}."
        return ProbeResult("not_answering", checked_at=time.time(), detail=detail, hint=hint)
