"""Per-user provider credentials, encrypted at rest, and the key resolution chain.

Keys are encrypted with AES-256-GCM under a key derived (HKDF-SHA256) from ``CREDS_KEY``, or from a
random secret generated once into ``LIMNER_DATA_DIR/creds.key`` (mode 0600) when ``CREDS_KEY`` is unset.
The owner and provider are the associated data, so a ciphertext copied to another user's row does not
decrypt. Plain keys exist only in memory, on their way to an upstream call; they are never logged,
shown to the LLM or returned by the API.

Resolution (DESIGN §2 step 3): the operator's key from the environment, else the user's stored key,
else :class:`~limner.errors.MissingCredentialsError` naming both places.
"""

from __future__ import annotations

import base64
import os
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import anyio.to_thread
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import SecretStr

from limner.config import operator_key
from limner.db.repositories import CredentialRepository
from limner.db.session import Database
from limner.errors import ConfigurationError, MissingCredentialsError, StoredKeyUnreadableError

__all__ = ["CredentialCipher", "KeyRing", "KeySource", "load_cipher"]

_VERSION = "v1"
_KEY_FILE = "creds.key"


class CredentialCipher:
    """Encrypts and decrypts stored keys, bound to their owner and provider."""

    def __init__(self, secret: bytes) -> None:
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"limner", info=b"limner-credentials-v1")
        self._aead = AESGCM(hkdf.derive(secret))

    def encrypt(self, plaintext: str, *, user_id: str, provider: str) -> str:
        """``v1:<base64(nonce + ciphertext)>``."""
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), _aad(user_id, provider))
        return f"{_VERSION}:{base64.b64encode(nonce + sealed).decode()}"

    def decrypt(self, token: str, *, user_id: str, provider: str) -> str:
        """The plain key; a ConfigurationError when CREDS_KEY changed since it was stored."""
        version, _, payload = token.partition(":")
        try:
            raw = base64.b64decode(payload)
            if version != _VERSION:
                raise ValueError(version)
            return self._aead.decrypt(raw[:12], raw[12:], _aad(user_id, provider)).decode()
        except (InvalidTag, ValueError) as exc:
            raise StoredKeyUnreadableError(
                f"Your stored key for {provider} can no longer be decrypted.",
                hint=f"CREDS_KEY may have changed; enter the key again in Settings (PUT /api/keys/{provider}).",
            ) from exc


def _aad(user_id: str, provider: str) -> bytes:
    return f"{user_id}\x00{provider}".encode()


_MIN_SECRET = 32


async def load_cipher(creds_key: SecretStr | None, data_dir: Path) -> CredentialCipher:
    """The cipher from CREDS_KEY, or from the generated key file (created on first use)."""
    if creds_key is not None and creds_key.get_secret_value().strip():
        secret = creds_key.get_secret_value().strip().encode()
        if len(secret) < _MIN_SECRET:
            raise ConfigurationError(
                f"CREDS_KEY is too short ({len(secret)} characters; at least {_MIN_SECRET} are needed).",
                hint="Use 64 random hex characters, e.g. the output of: openssl rand -hex 32",
            )
        return CredentialCipher(secret)
    path = data_dir / _KEY_FILE
    return CredentialCipher(await anyio.to_thread.run_sync(lambda: _read_or_create_key_file(path)))


def _read_or_create_key_file(path: Path) -> bytes:
    """Read the generated key, or create it atomically: written in full to a temporary file, fsynced,
    then linked into place, so a crash never leaves an empty key and two first starts agree.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{_KEY_FILE}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_hex(32).encode())
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # fails if another process won the race: then use theirs
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    secret = path.read_bytes().strip()
    if len(secret) < _MIN_SECRET:
        raise ConfigurationError(
            f"The generated credentials key {path} is damaged.",
            hint="Set CREDS_KEY, or delete the file (stored user keys will then need to be entered again).",
        )
    return secret


@dataclass(frozen=True, slots=True)
class KeySource:
    """Where a family's key comes from: the operator's value and the names to show when it is missing."""

    provider: str
    env_var: str
    tool: str
    operator_value: SecretStr | None = None

    @property
    def operator_key(self) -> str | None:
        """The operator's key unless it is empty or ``user_provided``."""
        return operator_key(self.operator_value)


class KeyRing:
    """Stores users' keys and resolves the key for a call."""

    def __init__(self, db: Database, cipher: CredentialCipher) -> None:
        self.db = db
        self.cipher = cipher

    async def set(self, user_id: str, provider: str, key: str) -> None:
        """Store or replace the user's key for ``provider``."""
        sealed = self.cipher.encrypt(key, user_id=user_id, provider=provider)
        async with self.db.unit_of_work(write=True) as session:
            await CredentialRepository(session, user_id).put(provider, sealed)

    async def remove(self, user_id: str, provider: str) -> bool:
        """Delete the user's key; whether there was one."""
        async with self.db.unit_of_work(write=True) as session:
            return await CredentialRepository(session, user_id).remove(provider)

    async def stored(self, user_id: str) -> dict[str, datetime]:
        """Provider to the time of the last change, for ``GET /api/keys`` (never the key)."""
        async with self.db.unit_of_work() as session:
            return await CredentialRepository(session, user_id).providers()

    async def user_key(self, user_id: str, provider: str) -> str | None:
        """The user's own decrypted key, if stored."""
        async with self.db.unit_of_work() as session:
            row = await CredentialRepository(session, user_id).get(provider)
        return None if row is None else self.cipher.decrypt(row.ciphertext, user_id=user_id, provider=provider)

    async def resolve(self, user_id: str, source: KeySource) -> str:
        """Operator key, else the user's key, else MissingCredentialsError naming both."""
        key = source.operator_key or await self.user_key(user_id, source.provider)
        if key is None:
            raise MissingCredentialsError(provider=source.provider, env_var=source.env_var, tool=source.tool)
        return key
