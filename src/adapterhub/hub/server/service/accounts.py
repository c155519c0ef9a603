"""Accounts and API tokens: users and organisations, memberships, who may publish where, token checks."""

from __future__ import annotations

import hashlib
import secrets

import sqlalchemy as sa
from sqlalchemy.orm import Session

from adapterhub.hub.errors import HubAuthError, HubConflictError
from adapterhub.hub.identifiers import OWNER_RE
from adapterhub.hub.server.models import ApiToken, Membership, Owner
from adapterhub.hub.server.service.helpers import TOKEN_PREFIX, close_matches, invalid, not_found


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def get_owner(s: Session, name: str) -> Owner | None:
    if not isinstance(name, str) or not OWNER_RE.match(name):
        return None
    return s.scalar(sa.select(Owner).where(Owner.name_key == name.lower()))


def require_owner(s: Session, name: str) -> Owner:
    owner = get_owner(s, name)
    if owner is None:
        names = s.scalars(sa.select(Owner.name)).all()
        raise not_found(
            "unknown_owner",
            f"There is no user or organisation {name!r} on this hub.",
            [f"@{c}" for c in close_matches(name, names)],
        )
    return owner


def create_owner(
    s: Session, name: str, *, kind: str = "user", display_name: str = "", is_admin: bool = False
) -> Owner:
    if not OWNER_RE.match(name or ""):
        raise invalid(
            "invalid_name", f"{name!r} is not a valid owner name (letters, digits, '_', '-'; at most 39)."
        )
    if get_owner(s, name) is not None:
        raise HubConflictError(f"The name {name!r} is taken.", code="exists", status=409)
    owner = Owner(
        name=name, name_key=name.lower(), kind=kind, display_name=display_name or name, is_admin=is_admin
    )
    s.add(owner)
    s.flush()
    return owner


def create_token(s: Session, user: Owner, name: str = "") -> str:
    if user.kind != "user":
        raise invalid("invalid_request", "Tokens belong to users, not organisations.")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    s.add(ApiToken(user_id=user.id, name=name[:100], token_hash=hash_token(token), prefix=token[:12]))
    s.flush()
    return token


def authenticate(s: Session, token: str | None) -> Owner:
    if not token:
        raise HubAuthError(
            "This needs an API token: pass 'Authorization: Bearer TOKEN' "
            "(adapterhub login TOKEN stores one).",
            code="unauthorized",
            status=401,
        )
    row = s.scalar(sa.select(ApiToken).where(ApiToken.token_hash == hash_token(token)))
    if row is None or row.revoked_at is not None:
        raise HubAuthError(
            "The API token is not valid on this hub (wrong, revoked or for another hub).",
            code="unauthorized",
            status=401,
        )
    return row.user


def add_member(s: Session, org: Owner, user: Owner, role: str = "member") -> None:
    if org.kind != "org":
        raise invalid("invalid_request", f"{org.name!r} is a user, not an organisation.")
    if user.kind != "user":
        raise invalid("invalid_request", f"{user.name!r} is not a user.")
    if role not in ("admin", "member"):
        raise invalid("invalid_request", "role must be 'admin' or 'member'.")
    row = s.get(Membership, (org.id, user.id))
    if row is None:
        s.add(Membership(org_id=org.id, user_id=user.id, role=role))
    else:
        row.role = role
    s.flush()


def membership_role(s: Session, org: Owner, user: Owner) -> str | None:
    row = s.get(Membership, (org.id, user.id))
    return row.role if row else None


def may_publish(s: Session, user: Owner, owner: Owner) -> bool:
    if user.id == owner.id or user.is_admin:
        return True
    return owner.kind == "org" and membership_role(s, owner, user) is not None


def require_publisher(s: Session, token: str | None, owner_name: str) -> tuple[Owner, Owner]:
    """``(user, owner)`` for the holder of ``token`` publishing under ``owner_name``: the token must be valid
    (``authenticate``), the owner must exist and the user must be allowed to publish there (403 otherwise)."""
    user = authenticate(s, token)
    owner = require_owner(s, owner_name)
    if not may_publish(s, user, owner):
        raise HubAuthError(
            f"@{user.name} may not publish under @{owner.name} (not a member).", code="forbidden", status=403
        )
    return user, owner


def require_admin(user: Owner) -> None:
    if not user.is_admin:
        raise HubAuthError("Only a hub administrator may do this.", code="forbidden", status=403)
