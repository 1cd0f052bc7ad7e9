from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from limner.errors import ConfigurationError, MissingCredentialsError
from limner.keys import CredentialCipher, KeySource, load_cipher
from limner.runtime import Runtime
from tests.conftest import create_user

SOURCE = KeySource("image_gen_oai", "IMAGE_GEN_OAI_API_KEY", "the OpenAI Image Tools", None)


def test_ciphertext_is_bound_to_owner_and_provider() -> None:
    cipher = CredentialCipher(b"secret")
    sealed = cipher.encrypt("sk-user", user_id="usr_a", provider="image_gen_oai")
    assert "sk-user" not in sealed
    assert cipher.decrypt(sealed, user_id="usr_a", provider="image_gen_oai") == "sk-user"
    with pytest.raises(ConfigurationError):
        cipher.decrypt(sealed, user_id="usr_b", provider="image_gen_oai")
    with pytest.raises(ConfigurationError, match="CREDS_KEY"):
        CredentialCipher(b"other").decrypt(sealed, user_id="usr_a", provider="image_gen_oai")


async def test_generated_key_file_is_private_and_stable(tmp_path: Path) -> None:
    first = await load_cipher(None, tmp_path)
    sealed = first.encrypt("k", user_id="u", provider="p")
    mode = stat.S_IMODE((tmp_path / "creds.key").stat().st_mode)
    assert mode == 0o600
    assert (await load_cipher(None, tmp_path)).decrypt(sealed, user_id="u", provider="p") == "k"
    other = await load_cipher(SecretStr("f34be427ebb29de8d88c107a71546019685ed8b241d8f2ed00c3df97ad2566f0"), tmp_path)
    with pytest.raises(ConfigurationError):
        other.decrypt(sealed, user_id="u", provider="p")


async def test_short_creds_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="CREDS_KEY is too short"):
        await load_cipher(SecretStr("abc"), tmp_path)


async def test_damaged_key_file_is_refused_not_used(tmp_path: Path) -> None:
    (tmp_path / "creds.key").write_bytes(b"")
    with pytest.raises(ConfigurationError, match="damaged"):
        await load_cipher(None, tmp_path)


async def test_resolution_chain(runtime: Runtime) -> None:
    user, _ = await create_user(runtime, "ann")
    with pytest.raises(MissingCredentialsError) as caught:
        await runtime.keyring.resolve(user, SOURCE)
    assert "IMAGE_GEN_OAI_API_KEY" in str(caught.value)
    assert "/api/keys/image_gen_oai" in str(caught.value)
    await runtime.keyring.set(user, "image_gen_oai", "sk-mine")
    assert await runtime.keyring.resolve(user, SOURCE) == "sk-mine"
    operator = KeySource("image_gen_oai", "IMAGE_GEN_OAI_API_KEY", "t", SecretStr("sk-operator"))
    assert await runtime.keyring.resolve(user, operator) == "sk-operator"
    user_provided = KeySource("image_gen_oai", "IMAGE_GEN_OAI_API_KEY", "t", SecretStr("user_provided"))
    assert await runtime.keyring.resolve(user, user_provided) == "sk-mine"
    assert await runtime.keyring.remove(user, "image_gen_oai")
    with pytest.raises(MissingCredentialsError):
        await runtime.keyring.resolve(user, SOURCE)


async def test_keys_are_per_user(runtime: Runtime) -> None:
    ann, _ = await create_user(runtime, "ann")
    ben, _ = await create_user(runtime, "ben")
    await runtime.keyring.set(ann, "image_gen_oai", "sk-ann")
    assert list(await runtime.keyring.stored(ben)) == []
    with pytest.raises(MissingCredentialsError):
        await runtime.keyring.resolve(ben, SOURCE)


async def test_key_is_not_stored_in_clear(runtime: Runtime) -> None:
    user, _ = await create_user(runtime, "ann")
    await runtime.keyring.set(user, "image_gen_oai", "sk-very-secret-key")
    await runtime.db.dispose()
    raw = (runtime.settings.data_dir / "limner.db").read_bytes()
    wal = runtime.settings.data_dir / "limner.db-wal"
    raw += wal.read_bytes() if wal.exists() else b""
    assert b"sk-very-secret-key" not in raw
