"""Persistence: tables, the unit of work, and owner-scoped repositories."""

from limner.db.models import ApiToken, Base, Credential, Image, ImageParent, User
from limner.db.session import Database

__all__ = ["ApiToken", "Base", "Credential", "Database", "Image", "ImageParent", "User"]
