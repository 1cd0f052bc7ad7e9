"""The deterministic rules by which the chat emulator answers: a tool call, or a short text.

The rules read only the neutral :class:`Conversation`, so OpenAI and Anthropic requests get the same
answers, and the same conversation always gets the same answer. They are simple on purpose: tests of
the agent loop need to know in advance which tool a message triggers, and the texts written after
tool results say exactly which image IDs the model saw and whether it could see the images, so a
test can check the vision handoff from the answer alone.

Rules, first match wins (``rule`` in the log names the one that fired):

===================  ==========================================================================
``tool_results``     the conversation ends with tool results (optionally followed by one user
                     message carrying their images): a text naming every image ID in them, and
                     whether the images arrived as vision input; a failed result is quoted
``combine``          combine / merge / together / blend, with two or more known image IDs: the
                     edit tool with the IDs named in the message (else the two most recent)
``list``             my images / list / what images / show me my: ``image_list``
``view``             look at / view / describe, with an image ID (named, else the most recent):
                     ``image_view``
``pair``             a drawing request for "two pictures" / "both" of "X and Y": two parallel
                     generation calls, one per subject
``edit``             an image ID is known and the message asks for a change (change, edit, make
                     it, turn, replace, remove, instead; or add, more, less, now when it does not
                     also ask for a new picture): the edit tool with the named IDs, else the most
                     recent, and the user's text as prompt
``generate``         draw, picture, image of, generate, paint, illustrate, photo of, make me,
                     create: the generation tool with the user's text as prompt
``chat``             anything else: a friendly text
===================  ==========================================================================

When a rule wants a tool that was not offered (or ``tool_choice`` is ``none``) the answer is a text
saying so (``no_tool``). ``tool_choice`` ``required`` (Anthropic ``any``) or a named tool turns a
text answer into a call of that tool (``forced``); parallel calls are cut to one when the request
disallows them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from limner.sandbox.chat_conversation import (
    Conversation,
    Message,
    PlannedCall,
    Reply,
    ToolOffer,
    image_ids,
    without_chat_triggers,
)
from limner.sandbox.chat_tools import Intent, build_arguments, choose_tool, fits

FRIENDLY = "Hello! I am limner's sandbox assistant. Ask me to draw a picture, or to change one of your images."
SEE_ONE = "I can see the image."
SEE_MANY = "I can see the {count} images."
BLIND = "I have the image IDs but cannot see them."


def _words(*patterns: str) -> re.Pattern[str]:
    return re.compile("|".join(rf"\b{pattern}" for pattern in patterns))


_COMBINE = _words(r"combin", r"merg", r"together\b", r"blend")
_LIST = _words(r"my images\b", r"list\b", r"what images\b", r"show me my\b")
_VIEW = _words(r"look at\b", r"view\b", r"describe\b")
_PAIR = _words(r"two (?:pictures|images|photos|drawings|paintings)\b", r"both\b")
_STRONG_CHANGE = _words(r"chang", r"edit", r"make it\b", r"turn\b", r"replac", r"remov", r"instead\b")
_WEAK_CHANGE = _words(r"add\b", r"more\b", r"less\b", r"now\b")
_GENERATE = _words(
    r"draw", r"pictures?\b", r"image of\b", r"generat", r"paint", r"illustrat", r"photo of\b", r"make me\b", r"creat"
)
_SUBJECTS = re.compile(
    r"(?:\btwo (?:pictures|images|photos|drawings|paintings)\b|\bboth\b)\s*(?:of\b|:)?\s*(?:both\b)?\s*"
    r"(?P<first>.+?)\s+and\s+(?P<second>[^.!?;\n]+)",
    re.IGNORECASE,
)


def decide(conversation: Conversation) -> Reply:
    """The answer to ``conversation``: the first rule that matches, then ``tool_choice`` applied."""
    offers = _callable_offers(conversation)
    results, handoffs = trailing_results(conversation.messages)
    if results:
        reply = Reply("tool_results", summarise_results(conversation, results, handoffs))
    else:
        reply = _answer_user(conversation, offers)
    return _apply_choice(conversation, offers, reply)


def _callable_offers(conversation: Conversation) -> list[ToolOffer]:
    choice = conversation.choice
    if choice.mode == "none":
        return []
    if choice.names is None:
        return list(conversation.tools)
    return [offer for offer in conversation.tools if offer.name in choice.names]


# -- rule 1: after tool results -------------------------------------------------------------------


def trailing_results(messages: Sequence[Message]) -> tuple[list[Message], list[Message]]:
    """The tool results that end the conversation, and the user messages handing over their images.

    User messages after tool results count as the handoff when each carries images or names an ID from
    those results (a client may send one per tool result after parallel calls); any other user message
    is a new request.
    """
    end = len(messages)
    while end and messages[end - 1].role == "user":
        end -= 1
    handoffs = list(messages[end:])
    start = end
    while start > 0 and messages[start - 1].role == "tool":
        start -= 1
    results = list(messages[start:end])
    if not results:
        return [], []
    result_ids = {found for result in results for found in image_ids(result.text)}
    for handoff in handoffs:
        if not handoff.images and not result_ids.intersection(image_ids(handoff.text)):
            return [], []
    return results, handoffs


def summarise_results(conversation: Conversation, results: list[Message], handoffs: list[Message]) -> str:
    """A short text naming every image ID in the results, what could be seen, and any failure."""
    names = conversation.call_names()
    sentences: list[str] = []
    found: list[str] = []
    for result in results:
        name = names.get(result.tool_call_id or "", "tool")
        text = readable_result(result.text)
        if result.is_error or is_error_text(text):
            sentences.append(f"That did not work ({name}): {_error_message(text)} {what_to_do(text)}".strip())
        elif image_ids(text):
            found.extend(found_id for found_id in image_ids(text) if found_id not in found)
        else:
            sentences.append(f"The {name} tool answered: {_first_line(text)}")
    seen = sum(result.images for result in results) + sum(handoff.images for handoff in handoffs)
    if found:
        noun = "the image" if len(found) == 1 else "the images"
        sentences.insert(0, f"Here {'is' if len(found) == 1 else 'are'} {noun}: {', '.join(found)}.")
        sentences.insert(1, _vision_sentence(seen))
    elif seen:
        sentences.append(_vision_sentence(seen))
    return " ".join(sentences)


def _vision_sentence(seen: int) -> str:
    if seen == 0:
        return BLIND
    return SEE_ONE if seen == 1 else SEE_MANY.format(count=seen)


def readable_result(text: str) -> str:
    """A tool result as text: pydantic-ai may send JSON (a list of parts, or ``{"error": ...}``)."""
    stripped = text.strip()
    if not stripped.startswith(("[", "{")):
        return stripped
    try:
        value = json.loads(stripped)
    except ValueError:
        return stripped
    return _flatten(value)


def _flatten(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(_flatten(item) for item in value)
    if isinstance(value, dict) and "error" in value:
        inner = _flatten(value["error"])
        return inner if inner.startswith("Error") else f"Error: {inner}"
    return json.dumps(value)


def is_error_text(text: str) -> bool:
    """Whether a tool result reports a failure: limner's failed results start with ``Error``."""
    return text.lstrip().startswith("Error")


def what_to_do(text: str) -> str:
    """What the person can do, as a model would pass it on: the error's "For the user" line, else its
    "What to do" line (without the label); nothing when it has neither.
    """
    found = {}
    for line in text.splitlines():
        label, _, rest = line.strip().partition(":")
        if label.lower() in ("for the user", "what to do") and rest.strip():
            found[label.lower()] = rest.strip()
    return found.get("for the user") or found.get("what to do") or ""


def _error_message(text: str) -> str:
    """The message of an ``Error (code): message`` line, else the first line."""
    first = _first_line(text)
    return first.split("): ", 1)[1] if first.startswith("Error (") and "): " in first else first


def _first_line(text: str) -> str:
    line = (text.strip().splitlines() or [""])[0].strip()
    return line if len(line) <= 200 else line[:199] + "…"


# -- rule 2: a user request -----------------------------------------------------------------------


def known_ids(messages: Sequence[Message]) -> list[str]:
    """Every image ID in the conversation, most recent message first (in order within a message)."""
    ordered: list[str] = []
    for message in reversed(messages):
        texts = [message.text, *(call.arguments for call in message.calls)]
        for found in image_ids("\n".join(texts)):
            if found not in ordered:
                ordered.append(found)
    return ordered


def _answer_user(conversation: Conversation, offers: list[ToolOffer]) -> Reply:
    text = without_chat_triggers(conversation.last_user_text())
    lowered = text.lower()
    named = image_ids(text)
    known = known_ids(conversation.messages)
    if _COMBINE.search(lowered) and len(set(named) | set(known)) >= 2:
        ids = named if len(named) >= 2 else list(dict.fromkeys([*named, *known]))[:2]
        return _call("combine", Intent("edit", text, tuple(ids)), offers)
    if _LIST.search(lowered):
        return _call("list", Intent("list"), offers)
    if _VIEW.search(lowered) and (named or known):
        return _call("view", Intent("view", image_ids=((named or known)[0],)), offers)
    pair = _SUBJECTS.search(text) if _PAIR.search(lowered) and _GENERATE.search(lowered) else None
    if pair is not None:
        subjects = (pair.group("first").strip(" ,:"), pair.group("second").strip(" ,:"))
        return _calls("pair", [Intent("generate", subject) for subject in subjects], offers)
    if known and _asks_for_change(lowered):
        return _call("edit", Intent("edit", text, tuple(named or known[:1])), offers)
    if _GENERATE.search(lowered):
        return _call("generate", Intent("generate", text), offers)
    return Reply("chat", FRIENDLY)


def _asks_for_change(lowered: str) -> bool:
    if _STRONG_CHANGE.search(lowered):
        return True
    return bool(_WEAK_CHANGE.search(lowered)) and not _GENERATE.search(lowered)


def _call(rule: str, intent: Intent, offers: list[ToolOffer]) -> Reply:
    return _calls(rule, [intent], offers)


def _calls(rule: str, intents: list[Intent], offers: list[ToolOffer]) -> Reply:
    planned: list[PlannedCall] = []
    for intent in intents:
        offer = choose_tool(intent, offers)
        if offer is None:
            return Reply("no_tool", _missing_tool_text(intent))
        planned.append(PlannedCall(offer.name, build_arguments(offer, intent)))
    return Reply(rule, calls=tuple(planned))


def _missing_tool_text(intent: Intent) -> str:
    wanted = {
        "generate": "an image generation tool",
        "edit": "an image editing tool",
        "list": "the image_list tool",
        "view": "the image_view tool",
    }[intent.kind]
    about = f" for {', '.join(intent.image_ids)}" if intent.image_ids else ""
    return f"I would use {wanted}{about}, but none is available to me here."


# -- tool_choice ----------------------------------------------------------------------------------


def _apply_choice(conversation: Conversation, offers: list[ToolOffer], reply: Reply) -> Reply:
    choice = conversation.choice
    if reply.calls and not choice.parallel:
        reply = Reply(reply.rule, calls=reply.calls[:1])
    if reply.calls or choice.mode != "required" or not offers:
        return reply
    return Reply("forced", calls=(_forced_call(conversation, offers[0]),))


def _forced_call(conversation: Conversation, offer: ToolOffer) -> PlannedCall:
    """A call of a tool the request insists on, with the most sensible intent it can carry."""
    text = without_chat_triggers(conversation.last_user_text())
    known = known_ids(conversation.messages)
    if offer.name == "image_list":
        intent = Intent("list")
    elif offer.name == "image_view" and known:
        intent = Intent("view", image_ids=(known[0],))
    elif known and fits(offer, "edit"):
        intent = Intent("edit", text, (known[0],))
    else:
        intent = Intent("generate", text)
    return PlannedCall(offer.name, build_arguments(offer, intent))
