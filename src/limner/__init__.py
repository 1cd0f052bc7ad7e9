"""limner: image generation and editing as tools for AI agents.

Only public names live here; a test keeps ``__all__`` sorted and complete.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
