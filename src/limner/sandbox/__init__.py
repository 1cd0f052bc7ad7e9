"""Loopback emulators of the upstream image services, and the deterministic renderer they share.

The sandbox stands apart from the rest of limner, as the real upstreams do: nothing in it imports
limner code outside ``limner.sandbox``, so it stays faithful to the wire formats in
``shared/apis/`` rather than to our own client code. Tests and the quick start run it with
:func:`serve_sandbox`.
"""

from limner.sandbox.faults import Fault, FaultKind, FaultQueue
from limner.sandbox.openai_images import OpenAIImagesEmulator
from limner.sandbox.recorder import RecordedFile, RecordedRequest
from limner.sandbox.renderer import read_stamp, render_edit, render_generation
from limner.sandbox.server import RunningSandbox, Sandbox, serve_sandbox

__all__ = [
    "Fault",
    "FaultKind",
    "FaultQueue",
    "OpenAIImagesEmulator",
    "RecordedFile",
    "RecordedRequest",
    "RunningSandbox",
    "Sandbox",
    "read_stamp",
    "render_edit",
    "render_generation",
    "serve_sandbox",
]
