"""Helpers for functional tests that need real Keystone tokens (not a test module).

``tools/keystone-up.sh`` (run by ``make test``) starts a Keystone on loopback and writes
its admin credentials to ``$KEYSTONE_DIR/env.sh`` (default ``/tmp/abbild-keystone``).
These helpers read the ``OS_*`` variables from the environment, or from that file when
the environment has none, and talk to Keystone's REST API through keystoneauth1 and
python-keystoneclient: much faster than the ``openstack`` CLI.

Everything is idempotent (reruns, and xdist workers racing to create the same thing,
are fine)::

    from tests.functional import keystone as ks     # under `python -m pytest` (cwd on sys.path)

    ks.ensure_user("alice", "alice-pw", "abbild-alpha", ["member"])
    token, project_id, user_id = ks.token_for("alice", "alice-pw", "abbild-alpha")

``unavailable_reason()`` says why Keystone cannot be used (for ``pytest.skip``), or None.
The bootstrap creates the roles admin, manager, member, reader and service, the project
``admin``, the region ``RegionOne`` and the identity endpoint; everything is in the
domain ``default``. Policy runs with the new defaults and scope enforcement on, as in
current OpenStack deployments; a project-scoped ``admin`` is a cloud administrator.
"""

from __future__ import annotations

import functools
import os
import urllib.request

from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import session as ks_session
from keystoneauth1.identity import v3
from keystoneclient.v3 import client as ks_client

from abbild.testing.backends import read_env_file

DOMAIN_ID = "default"
DEFAULT_KEYSTONE_DIR = "/tmp/abbild-keystone"


def settings() -> dict[str, str]:
    """The ``OS_*`` settings: the environment's if it has OS_AUTH_URL, else those in
    ``$KEYSTONE_DIR/env.sh``. Raises RuntimeError when there are none."""
    if os.environ.get("OS_AUTH_URL"):
        return {k: v for k, v in os.environ.items() if k.startswith("OS_")}
    path = os.path.join(os.environ.get("KEYSTONE_DIR", DEFAULT_KEYSTONE_DIR), "env.sh")
    found = read_env_file(path)
    if "OS_AUTH_URL" not in found:
        raise RuntimeError(f"no OS_AUTH_URL in the environment or {path}: run tools/keystone-up.sh")
    return found


def auth_url() -> str:
    return settings()["OS_AUTH_URL"]


def unavailable_reason() -> str | None:
    """None if Keystone answers GET /v3, else why not (a message for pytest.skip)."""
    try:
        url = auth_url()
        with urllib.request.urlopen(url, timeout=5) as resp:
            if resp.status == 200:
                return None
            return f"GET {url} answered {resp.status}"
    except (OSError, RuntimeError) as exc:
        return f"Keystone is not available: {exc}"


@functools.cache
def admin_session() -> ks_session.Session:
    """A keystoneauth1 session as the bootstrap admin, scoped to the ``admin`` project
    (re-authenticates by itself when the token expires)."""
    s = settings()
    auth = v3.Password(
        auth_url=s["OS_AUTH_URL"],
        username=s.get("OS_USERNAME", "admin"),
        password=s["OS_PASSWORD"],
        project_name=s.get("OS_PROJECT_NAME", "admin"),
        user_domain_name=s.get("OS_USER_DOMAIN_NAME", "Default"),
        project_domain_name=s.get("OS_PROJECT_DOMAIN_NAME", "Default"),
    )
    return ks_session.Session(auth=auth)


@functools.cache
def admin_client() -> ks_client.Client:
    """A python-keystoneclient v3 client on :func:`admin_session`."""
    return ks_client.Client(session=admin_session(), interface="public")


def _ensure(manager, name: str, create, **filters):
    """The id of the entity called *name* (``manager.list(name=..)``), created with
    *create()* if missing; a concurrent creator's Conflict means it exists now."""
    for found in manager.list(name=name, **filters):
        if found.name == name:
            return found.id
    try:
        return create().id
    except ks_exc.Conflict:
        for found in manager.list(name=name, **filters):
            if found.name == name:
                return found.id
        raise


def ensure_role(name: str) -> str:
    """The id of the global role *name*, created if missing."""
    roles = admin_client().roles
    return _ensure(roles, name, lambda: roles.create(name))


def ensure_project(name: str) -> str:
    """The id of the project *name* in the default domain, created if missing."""
    projects = admin_client().projects
    return _ensure(
        projects,
        name,
        lambda: projects.create(name, DOMAIN_ID, description="abbild functional tests"),
        domain=DOMAIN_ID,
    )


def _password_works(name: str, password: str) -> bool:
    auth = v3.Password(auth_url=auth_url(), username=name, password=password, user_domain_id=DOMAIN_ID, unscoped=True)
    try:
        auth.get_auth_ref(ks_session.Session())
        return True
    except ks_exc.Unauthorized:
        return False


def ensure_user(name: str, password: str, project: str | None = None, roles=()) -> str:
    """The id of the user *name* in the default domain, created if missing, whose password
    is *password* and who has each role in *roles* (names, created if missing) on the
    project *project* (a name, created if missing). An existing user's password is only
    changed when it does not work already, since a change revokes the user's tokens;
    roles are only added, never taken away."""
    users = admin_client().users
    project_id = ensure_project(project) if project else None
    user_id = _ensure(
        users,
        name,
        lambda: users.create(name, domain=DOMAIN_ID, password=password, default_project=project_id),
        domain=DOMAIN_ID,
    )
    if not _password_works(name, password):
        users.update(user_id, password=password, enabled=True)
    if roles and not project_id:
        raise ValueError("roles need a project")
    for role in roles:
        admin_client().roles.grant(ensure_role(role), user=user_id, project=project_id)
    return user_id


def token_for(user: str, password: str, project: str) -> tuple[str, str, str]:
    """A fresh project-scoped token for *user* on *project* (names, default domain):
    ``(token, project_id, user_id)``."""
    auth = v3.Password(
        auth_url=auth_url(),
        username=user,
        password=password,
        user_domain_id=DOMAIN_ID,
        project_name=project,
        project_domain_id=DOMAIN_ID,
    )
    ref = auth.get_auth_ref(ks_session.Session())
    return ref.auth_token, ref.project_id, ref.user_id


def validate_token(token: str) -> dict:
    """Keystone's answer to ``GET /v3/auth/tokens`` for *token*, asked as the admin: the
    ``token`` body (user, project, roles, catalog, expires_at). Raises
    keystoneauth1.exceptions.NotFound for an invalid or revoked token."""
    resp = admin_session().get(
        "/auth/tokens",
        endpoint_filter={"service_type": "identity", "interface": "public"},
        headers={"X-Subject-Token": token},
    )
    return resp.json()["token"]
