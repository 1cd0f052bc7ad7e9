from __future__ import annotations

from pathlib import Path

import pytest

from limner.config import SandboxMode, Settings, load_settings, operator_key
from limner.errors import ConfigurationError, LimnerError

LIBRECHAT_ENV = """
# a slice of LibreChat's .env.example: most of it is not ours
HOST=localhost
PORT=3080
MONGO_URI=mongodb://127.0.0.1:27017/LibreChat
DOMAIN_CLIENT=http://localhost:3080
OPENAI_API_KEY=user_provided
DEBUG_OPENAI=false
IMAGE_GEN_OAI_API_KEY=sk-from-env-file
IMAGE_GEN_OAI_MODEL=gpt-image-2
IMAGE_GEN_OAI_DESCRIPTION=
DALLE_API_KEY=
SD_WEBUI_URL=http://host.docker.internal:7860
FLUX_API_BASE_URL=https://api.us1.bfl.ai
CREDS_KEY=f34be427ebb29de8d88c107a71546019685ed8b241d8f2ed00c3df97ad2566f0
CREDS_IV=e2341419ec3dd3d19b13a1a87fafcbfb
JWT_SECRET=16f8c0ef4a5d391b26034086c628469d3f9f497f08163ab9b40137092f2909ef
PROXY=
"""


def test_librechat_env_file_loads_and_unknown_names_are_ignored(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text(LIBRECHAT_ENV)
    settings = load_settings(env)
    assert operator_key(settings.image_gen_oai_api_key) == "sk-from-env-file"
    assert settings.image_gen_oai_model == "gpt-image-2"
    assert settings.image_gen_oai_description is None  # empty means unset
    assert settings.proxy is None
    assert settings.creds_key is not None


def test_invalid_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIMNER_PORT", "not-a-port")
    with pytest.raises(ConfigurationError, match="LIMNER_PORT"):
        load_settings(None)


def test_invalid_sandbox_mode_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIMNER_SANDBOX", "sometimes")
    with pytest.raises(ConfigurationError, match="LIMNER_SANDBOX"):
        load_settings(None)


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    settings = load_settings(None)
    assert settings.data_dir == tmp_path / "limner"
    assert settings.sandbox is SandboxMode.AUTO
    assert settings.image_gen_oai_model == "gpt-image-1.5"
    assert settings.resolved_database_url == f"sqlite+aiosqlite:///{tmp_path / 'limner' / 'limner.db'}"


@pytest.mark.parametrize(("value", "expected"), [("user_provided", None), ("  ", None), ("sk-1", "sk-1")])
def test_user_provided_means_no_operator_key(value: str, expected: str | None) -> None:
    settings = Settings(_env_file=None, image_gen_oai_api_key=value)
    assert operator_key(settings.image_gen_oai_api_key) == expected


def test_secrets_do_not_show_in_repr() -> None:
    settings = Settings(_env_file=None, image_gen_oai_api_key="sk-secret-value", creds_key="abc")
    assert "sk-secret-value" not in repr(settings)


def test_every_field_has_a_docstring_and_an_env_name() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description, name
        assert Settings.env_names()[name], name


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        ("Authorization: Bearer lmn_abcdefghijklmnop123", "lmn_abcdefghijklmnop123"),
        ("Incorrect API key provided: 0123456789abcdef0123456789abcdef.", "0123456789abcdef0123456789abcdef"),
        ("Incorrect API key provided: sk-proj-abcdefghijklmnop1234.", "abcdefghijklmnop1234"),
        ("keys gsk_abcdefghijkl, xai-abcdefghijkl and AIzaSyA-1234567890abcdefghijk", "abcdefghijkl"),
        ("https://x.blob.core.windows.net/a.png?sv=2020&sig=abcDEF%2B123&se=1", "abcDEF%2B123"),
        ('{"api_key": "secret-value-1234"}', "secret-value-1234"),
        ("data:image/png;base64," + "A" * 100, "A" * 40),
    ],
)
def test_redact_removes_secrets(text: str, leak: str) -> None:
    from limner.errors import redact

    assert leak not in redact(text)


def test_redact_removes_a_known_secret_of_any_shape() -> None:
    from limner.errors import redact

    assert "hunter2hunter2" not in redact("upstream said: key hunter2hunter2 invalid", secrets=("hunter2hunter2",))
    assert redact("The size is not supported by this model.") == "The size is not supported by this model."


def _bare_field_names_env() -> str:
    """Every Settings field under its bare name, with a value that differs from its default."""
    lines = [
        "HOST=localhost",
        "PORT=3080",
        "ALLOW_REGISTRATION=false",
        "DATABASE_URL=postgresql://librechat@db/librechat",
        "DATA_DIR=/srv/librechat/data",
        "LOG_LEVEL=debug",
        "SANDBOX=off",
        "CHAT_MODEL=openai:gpt-4o",
        "MCP_CONFIG=/app/librechat.yaml",
        "DEBUG_LOGGING=true",
    ]
    documented = {name.upper() for names in Settings.env_names().values() for name in names}
    for field in Settings.model_fields:
        if field.upper() not in documented:
            lines.append(f"{field.upper()}=1")
    return "\n".join(lines) + "\n"


def test_bare_field_names_are_not_read_from_env_file_or_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A LibreChat .env (HOST, PORT, ...) must not move limner onto LibreChat's port or data."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    defaults = load_settings(None)
    env = tmp_path / ".env"
    env.write_text(LIBRECHAT_ENV + _bare_field_names_env())
    from_file = load_settings(env)
    for line in _bare_field_names_env().splitlines():
        name, value = line.split("=", 1)
        monkeypatch.setenv(name, value)
    from_environment = load_settings(None)
    for field in Settings.model_fields:
        if field in {"image_gen_oai_api_key", "image_gen_oai_model", "sd_webui_url", "creds_key"}:
            continue  # LibreChat's own names in LIBRECHAT_ENV, read on purpose
        assert getattr(from_file, field) == getattr(defaults, field), field
        assert getattr(from_environment, field) == getattr(defaults, field), field
    assert from_file.port == 8480
    assert from_file.host == "127.0.0.1"
    # LibreChat's image names are still read from the same file
    assert from_file.image_gen_oai_model == "gpt-image-2"
    assert from_file.sd_webui_url == "http://host.docker.internal:7860"


def test_python_code_still_passes_settings_by_field_name(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path, port=9999, sandbox="off")
    assert (settings.data_dir, settings.port, settings.sandbox) == (tmp_path, 9999, SandboxMode.OFF)


def test_the_environment_beats_the_env_file_and_the_first_name_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = tmp_path / ".env"
    env.write_text(
        'export LIMNER_PORT=7001\nlimner_host="0.0.0.0"\nDALLE_API_KEY=sk-second\nDALLE3_API_KEY=sk-first\n'
        "LIMNER_LOG_LEVEL=\n"
    )
    monkeypatch.setenv("LIMNER_PORT", "7002")
    settings = load_settings(env)
    assert settings.port == 7002  # the process environment over the file, as pydantic-settings does
    assert settings.host == "0.0.0.0"  # names match without regard to case; quotes are removed
    assert settings.dalle_api_key is not None and settings.dalle_api_key.get_secret_value() == "sk-first"
    assert settings.log_level == "INFO"  # an empty value means "not set"


def _every_error_class() -> list[type[LimnerError]]:
    found, todo = [], [LimnerError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


@pytest.mark.parametrize("cls", _every_error_class(), ids=lambda cls: cls.__name__)
def test_every_error_has_a_hint_even_when_the_raise_site_gives_none(cls: type[LimnerError]) -> None:
    """A person always learns what to do: no error reaches a front end with ``hint: null``."""
    assert cls.default_hint.strip() and cls.default_hint.endswith((".", ")"))
    if cls.__init__ is LimnerError.__init__:  # classes with their own constructor build their hint themselves
        assert cls("Something failed.").to_dict()["hint"] == cls.default_hint
