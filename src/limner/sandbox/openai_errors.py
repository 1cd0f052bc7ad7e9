"""Error bodies of the OpenAI Images API and of Azure OpenAI, exactly as clients see them.

The two services disagree on shape: OpenAI always sends all four keys ``message``, ``type``,
``param`` and ``code`` (null when unused), while Azure's gateway answers auth, routing and
throttling failures with only ``code`` (often a numeric string) and ``message``. Clients branch
on those details, so the emulator builds every error through this module and never by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

AUTH_MISSING_MESSAGE = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header "
    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank "
    "username) if you're accessing the API from your browser and are prompted for a username and "
    "password. You can obtain an API key from https://platform.openai.com/account/api-keys."
)
AZURE_ACCESS_DENIED_MESSAGE = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a "
    "valid key for an active subscription and use a correct regional API endpoint for your resource."
)
AZURE_KEY_MISSING_MESSAGE = (
    "Access denied due to missing subscription key. Make sure to include subscription key when "
    "making requests to an API."
)
AZURE_DEPLOYMENT_MISSING_MESSAGE = (
    "The API deployment for this resource does not exist. If you created the deployment within the "
    "last 5 minutes, please wait a moment and try again."
)
INVALID_JSON_MESSAGE = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
    "your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not "
    "valid JSON. If you have trouble figuring out how to fix this, please contact us through our "
    "help center at help.openai.com.)"
)
REQUEST_ID_PLACEHOLDER = "{request_id}"


class EmulatedError(Exception):
    """An HTTP error answer; raised anywhere in a request's handling and rendered at the edge."""

    def __init__(self, status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None):
        super().__init__(status, body)
        self.status = status
        self.body = dict(body)
        self.headers = dict(headers or {})


def openai_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """The OpenAI envelope; all four keys are always present, as in the real service."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def azure_body(code: str, message: str) -> dict[str, Any]:
    """The two-key envelope Azure's API gateway uses for auth, routing and throttling errors."""
    return {"error": {"code": code, "message": message}}


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> EmulatedError:
    """The 400 behind nearly every validation failure."""
    return EmulatedError(400, openai_body(message, "invalid_request_error", param, code))


def unknown_parameter(name: str) -> EmulatedError:
    """Sent for a field the chosen model does not take, e.g. ``response_format`` on GPT image."""
    return invalid_request(f"Unknown parameter: '{name}'.", name, "unknown_parameter")


def missing_parameter(name: str) -> EmulatedError:
    """Sent when a required field is absent."""
    return invalid_request(f"Missing required parameter: '{name}'.", name, "missing_required_parameter")


def invalid_type(name: str, expected: str, got: object) -> EmulatedError:
    """Sent when a field has the wrong JSON type (or a form value cannot be read as one)."""
    message = f"Invalid type for '{name}': expected {expected}, but got {_json_type_name(got)} instead."
    return invalid_request(message, name, "invalid_type")


def invalid_choice(name: str, value: object, allowed: list[str]) -> EmulatedError:
    """Sent for a value outside a closed enum; the message lists the supported values."""
    return invalid_request(
        f"Invalid value: '{value}'. Supported values are: {_quoted_list(allowed)}.", name, "invalid_value"
    )


def integer_out_of_range(name: str, value: int, low: int, high: int) -> EmulatedError:
    """The length-and-range wording of the real API for integers."""
    if value > high:
        message = f"Invalid '{name}': integer above maximum value. Expected a value <= {high}, but got {value} instead."
        return invalid_request(message, name, "integer_above_max_value")
    message = f"Invalid '{name}': integer below minimum value. Expected a value >= {low}, but got {value} instead."
    return invalid_request(message, name, "integer_below_min_value")


def string_too_long(name: str, length: int, limit: int) -> EmulatedError:
    """Sent for a prompt over the model's limit."""
    message = (
        f"Invalid '{name}': string too long. Expected a string with maximum length {limit}, "
        f"but got a string with length {length} instead."
    )
    return invalid_request(message, name, "string_above_max_length")


def invalid_api_key(key: str) -> EmulatedError:
    """401 for a key the emulator does not accept; only the last four characters stay visible."""
    message = (
        f"Incorrect API key provided: {mask_key(key)}. You can find your API key at "
        "https://platform.openai.com/account/api-keys."
    )
    return EmulatedError(401, openai_body(message, "invalid_request_error", None, "invalid_api_key"))


def missing_api_key() -> EmulatedError:
    """401 with code null, as the real API answers a request without ``Authorization``."""
    return EmulatedError(401, openai_body(AUTH_MISSING_MESSAGE, "invalid_request_error", None, None))


def model_not_found(model: str, *, retired: bool) -> EmulatedError:
    """404 for an unknown or retired model, with ``param`` set to ``model``."""
    if retired:
        message = f"The model '{model}' does not exist or has been deprecated."
    else:
        message = f"The model '{model}' does not exist or you do not have access to it."
    return EmulatedError(404, openai_body(message, "invalid_request_error", "model", "model_not_found"))


def azure_access_denied(*, missing: bool) -> EmulatedError:
    """Azure's 401 for a missing or wrong ``api-key``."""
    return EmulatedError(401, azure_body("401", AZURE_KEY_MISSING_MESSAGE if missing else AZURE_ACCESS_DENIED_MESSAGE))


def azure_deployment_not_found() -> EmulatedError:
    """Azure's 404 for a deployment name the resource does not have."""
    return EmulatedError(404, azure_body("DeploymentNotFound", AZURE_DEPLOYMENT_MISSING_MESSAGE))


def azure_resource_not_found() -> EmulatedError:
    """Azure's 404 for an unknown path or an api-version that does not offer the operation."""
    return EmulatedError(404, azure_body("404", "Resource not found"))


def invalid_url(method: str, path: str) -> EmulatedError:
    """OpenAI's answer to a route it does not have."""
    return EmulatedError(404, openai_body(f"Invalid URL ({method} {path})", "invalid_request_error"))


def mask_key(key: str) -> str:
    """Hide all but the last four characters, the way the real 401 message does."""
    if len(key) <= 4:
        return "*" * len(key)
    return "*" * (len(key) - 4) + key[-4:]


def fill_request_id(value: Any, request_id: str) -> Any:
    """Replace ``{request_id}`` in every string of an error body (moderation messages cite it)."""
    if isinstance(value, str):
        return value.replace(REQUEST_ID_PLACEHOLDER, request_id)
    if isinstance(value, dict):
        return {key: fill_request_id(item, request_id) for key, item in value.items()}
    if isinstance(value, list):
        return [fill_request_id(item, request_id) for item in value]
    return value


def _quoted_list(values: list[str]) -> str:
    quoted = [f"'{value}'" for value in values]
    if len(quoted) <= 2:
        return " and ".join(quoted)
    return ", ".join(quoted[:-1]) + ", and " + quoted[-1]


def _json_type_name(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "null" if value is None else "an unknown type"
