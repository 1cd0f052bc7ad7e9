"""Which offered tool the chat emulator calls for an intent, and arguments that fit its JSON schema.

The emulator only ever calls a tool the request offered, and only with arguments its schema accepts
(required fields present, enum values from the enum, lengths and item counts inside their bounds), so
an agent loop that validates arguments never sees a malformed call from the sandbox. limner's own
tools are preferred by name; anything else (an MCP server's tools) is used only when none fits.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from limner.sandbox.chat_conversation import ToolOffer

IntentKind = Literal["generate", "edit", "list", "view"]

GENERATE_PREFERENCE = ("image_gen_oai", "dalle", "flux", "stable-diffusion")
EDIT_PREFERENCE = ("image_edit_oai", "flux", "stable-diffusion-edit")
LIBRARY_TOOLS = {"list": "image_list", "view": "image_view"}
_KNOWN = {*GENERATE_PREFERENCE, *EDIT_PREFERENCE, *LIBRARY_TOOLS.values()}
_PROMPT_KEYS = ("prompt", "text", "instruction", "instructions", "description", "query", "input")
_GENERATE_NAME = re.compile(r"generat|draw|paint|creat|imag|pictur|render", re.IGNORECASE)
_EDIT_NAME = re.compile(r"edit|modif|transform|inpaint", re.IGNORECASE)


@dataclass(frozen=True)
class Intent:
    """What the user asked for, before it is bound to a tool."""

    kind: IntentKind
    prompt: str = ""
    image_ids: tuple[str, ...] = ()


def choose_tool(intent: Intent, offers: Sequence[ToolOffer]) -> ToolOffer | None:
    """The offered tool for ``intent``: limner's by preference, else a fitting foreign one, else None."""
    by_name = {offer.name: offer for offer in offers}
    if intent.kind in LIBRARY_TOOLS:
        return by_name.get(LIBRARY_TOOLS[intent.kind])
    preference = GENERATE_PREFERENCE if intent.kind == "generate" else EDIT_PREFERENCE
    for name in preference:
        offer = by_name.get(name)
        if offer is not None and fits(offer, intent.kind):
            return offer
    foreign = [offer for offer in offers if offer.name not in _KNOWN and fits(offer, intent.kind)]
    pattern = _GENERATE_NAME if intent.kind == "generate" else _EDIT_NAME
    named = [offer for offer in foreign if pattern.search(offer.name) or pattern.search(offer.description)]
    return named[0] if named else None


def fits(offer: ToolOffer, kind: IntentKind) -> bool:
    """Whether the tool's schema can carry this intent (a prompt; image IDs for an edit; the action)."""
    properties = schema_properties(offer.schema)
    action = properties.get("action")
    if action is not None and "enum" in action and kind in ("generate", "edit") and kind not in action["enum"]:
        return False
    has_ids = _image_ids_key(properties) is not None
    if kind == "edit":
        return has_ids and _prompt_key(properties) is not None
    if kind == "generate":
        required_ids = has_ids and _image_ids_key(properties) in _required(offer.schema)
        return _prompt_key(properties) is not None and not required_ids
    return True


def build_arguments(offer: ToolOffer, intent: Intent) -> dict[str, Any]:
    """Arguments for ``offer`` carrying ``intent``, filled up to what the schema requires."""
    properties = schema_properties(offer.schema)
    arguments: dict[str, Any] = {}
    action = properties.get("action")
    if action is not None and intent.kind in _enum(action):
        arguments["action"] = intent.kind
    prompt_key = _prompt_key(properties)
    if prompt_key is not None and intent.kind in ("generate", "edit") and intent.prompt:
        arguments[prompt_key] = _fit_string(intent.prompt, properties[prompt_key])
    ids_key = _image_ids_key(properties)
    if ids_key is not None and intent.image_ids and intent.kind in ("edit", "view"):
        arguments[ids_key] = _fit_ids(intent.image_ids, properties[ids_key])
    for name in _required(offer.schema):
        if name not in arguments and name in properties:
            arguments[name] = placeholder(properties[name], intent.prompt or "sandbox")
    return arguments


def schema_properties(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each property's schema with ``$ref`` followed and ``anyOf [X, null]`` reduced to X."""
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return {}
    definitions = schema.get("$defs") or schema.get("definitions") or {}
    return {name: _resolve(prop, definitions) for name, prop in properties.items() if isinstance(prop, dict)}


def _resolve(prop: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    ref = prop.get("$ref")
    if isinstance(ref, str) and ref.rsplit("/", 1)[-1] in definitions:
        return _resolve(definitions[ref.rsplit("/", 1)[-1]], definitions)
    for key in ("anyOf", "oneOf"):
        branches = prop.get(key)
        if isinstance(branches, list):
            concrete = [b for b in branches if isinstance(b, dict) and b.get("type") != "null"]
            if concrete:
                return {**{k: v for k, v in prop.items() if k != key}, **_resolve(concrete[0], definitions)}
    return prop


def _required(schema: dict[str, Any]) -> list[str]:
    required = schema.get("required")
    return [name for name in required if isinstance(name, str)] if isinstance(required, list) else []


def _type(prop: dict[str, Any]) -> str:
    kind = prop.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if isinstance(kind, str):
        return kind
    if "enum" in prop or "const" in prop:
        return "enum"
    return "object" if "properties" in prop else "string"


def _enum(prop: dict[str, Any]) -> list[Any]:
    values = prop.get("enum")
    return values if isinstance(values, list) else []


def _prompt_key(properties: dict[str, dict[str, Any]]) -> str | None:
    for key in _PROMPT_KEYS:
        if key in properties and _type(properties[key]) == "string" and not _enum(properties[key]):
            return key
    return None


def _image_ids_key(properties: dict[str, dict[str, Any]]) -> str | None:
    """The property that takes image IDs: ``image_ids``, ``image_id``, ``images``... never a mask."""
    for name, prop in properties.items():
        lowered = name.lower()
        if "mask" in lowered or "image" not in lowered:
            continue
        if _type(prop) == "array" or lowered.endswith(("id", "ids")) or lowered in ("image", "images"):
            return name
    return None


def _fit_string(text: str, prop: dict[str, Any]) -> str:
    limit = prop.get("maxLength")
    return text[:limit] if isinstance(limit, int) else text


def _fit_ids(ids: tuple[str, ...], prop: dict[str, Any]) -> Any:
    if _type(prop) != "array":
        return ids[0]
    limit = prop.get("maxItems")
    return list(ids[:limit] if isinstance(limit, int) else ids)


def placeholder(prop: dict[str, Any], text: str) -> Any:
    """A value of the property's type that its schema accepts, for a required field we have no use for."""
    if "const" in prop:
        return prop["const"]
    if _enum(prop):
        return _enum(prop)[0]
    if "default" in prop and prop["default"] is not None:
        return prop["default"]
    kind = _type(prop)
    if kind in ("integer", "number"):
        low = prop.get("minimum", prop.get("exclusiveMinimum", 0))
        value = max(1, int(low) + (1 if "exclusiveMinimum" in prop else 0))
        return value if kind == "integer" else float(value)
    if kind == "boolean":
        return False
    if kind == "array":
        items = prop.get("items") if isinstance(prop.get("items"), dict) else {}
        return [placeholder(items or {}, text) for _ in range(int(prop.get("minItems", 0)))]
    if kind == "object":
        return {}
    return _fit_string(text, prop)
