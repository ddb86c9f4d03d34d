"""Who may do what: oslo.policy rules with Glance's current defaults.

Operators override any rule in a policy file (``[oslo_policy] policy_file``, YAML,
looked up next to the config files). The service asks before every operation; the
answer depends on the caller's roles and project and on the image's owner,
visibility and membership.
"""

from __future__ import annotations

import functools
import os
import time

from oslo_policy import policy

from abbild.errors import Forbidden

ADMIN = "role:admin"
PROJECT_MEMBER = "role:member and project_id:%(project_id)s"
PROJECT_READER = "role:reader and project_id:%(project_id)s"
ADMIN_OR_MEMBER = f"{ADMIN} or ({PROJECT_MEMBER})"
ADMIN_OR_READER = f"{ADMIN} or ({PROJECT_READER})"
# Readable for: the owner project, a member project, or anyone when the visibility
# allows it. Whether a shared image is really visible is the registry's business:
# the policy only says which role a caller needs.
_IMAGE_READERS = (
    "project_id:%(project_id)s or project_id:%(member_id)s"
    " or 'community':%(visibility)s or 'public':%(visibility)s or 'shared':%(visibility)s"
)
_MEMBER_READERS = "project_id:%(project_id)s or project_id:%(member_id)s"
_NAMESPACE_READERS = f"{ADMIN} or (role:reader and (project_id:%(project_id)s or 'public':%(visibility)s))"

RULES: dict[str, tuple[str, str]] = {
    # name: (default, what it guards)
    "context_is_admin": (ADMIN, "Who is an administrator."),
    "service_api": ("role:service or role:admin", "Calls from other OpenStack services."),
    "default": ("", "Any rule not defined here."),
    "get_images": (ADMIN_OR_READER, "GET /v2/images"),
    "get_image": (f"{ADMIN} or (role:reader and ({_IMAGE_READERS}))", "GET /v2/images/{image_id}"),
    "add_image": (f"{ADMIN} or (role:member and project_id:%(owner)s)", "POST /v2/images"),
    "modify_image": (ADMIN_OR_MEMBER, "PATCH /v2/images/{image_id}, tags"),
    "delete_image": (ADMIN_OR_MEMBER, "DELETE /v2/images/{image_id}"),
    "upload_image": (ADMIN_OR_MEMBER, "PUT /v2/images/{image_id}/file"),
    "download_image": (f"{ADMIN} or (role:member and ({_IMAGE_READERS}))", "GET /v2/images/{image_id}/file"),
    "download_from_store": (
        f"{ADMIN} or (role:member and ({_IMAGE_READERS}))",
        "GET /v2/images/{image_id}/file?prefer=<stores>",
    ),
    "publicize_image": (ADMIN, "Setting visibility to public"),
    "communitize_image": (ADMIN_OR_MEMBER, "Setting visibility to community"),
    "deactivate": (ADMIN_OR_MEMBER, "POST /v2/images/{image_id}/actions/deactivate"),
    "reactivate": (ADMIN_OR_MEMBER, "POST /v2/images/{image_id}/actions/reactivate"),
    "get_image_location": (ADMIN_OR_READER, "Reading an image's locations"),
    "delete_image_location": (ADMIN, "DELETE /v2/stores/{store_id}/{image_id}"),
    "set_image_location": (ADMIN_OR_MEMBER, "Replacing an image's locations"),
    "add_image_location": (f"role:service or ({PROJECT_MEMBER})", "Registering a location (URL) for an image"),
    "fetch_image_location": ("rule:service_api", "GET /v2/images/{image_id}/locations"),
    "add_member": (ADMIN_OR_MEMBER, "POST /v2/images/{image_id}/members"),
    "delete_member": (ADMIN_OR_MEMBER, "DELETE /v2/images/{image_id}/members/{member_id}"),
    "get_member": (f"{ADMIN} or (role:reader and ({_MEMBER_READERS}))", "GET .../members/{member_id}"),
    "get_members": (f"{ADMIN} or (role:reader and ({_MEMBER_READERS}))", "GET /v2/images/{image_id}/members"),
    "modify_member": (f"{ADMIN} or (role:member and project_id:%(member_id)s)", "PUT .../members/{member_id}"),
    "copy_image": (ADMIN, "POST /v2/images/{image_id}/import with the copy-image method"),
    "stores_info_detail": ("role:admin or role:service", "GET /v2/info/stores/detail"),
    "cache_list": (ADMIN, "GET /v2/cache"),
    "cache_image": (ADMIN, "PUT /v2/cache/{image_id}"),
    "cache_delete": (ADMIN, "DELETE /v2/cache/{image_id}, DELETE /v2/cache"),
    "cache_clean": (ADMIN, "POST /v2/cache/clean"),
    "cache_prune": (ADMIN, "POST /v2/cache/prune"),
    "list_cached_nodes": (ADMIN, "GET /v2/cache/nodes/{image_id}"),
    # The Tasks API is Glance's deprecated, administrators-only API: tasks_api_access
    # gates it, the four task rules come after it (Glance's defaults). An image's own
    # tasks (GET /v2/images/{image_id}/tasks) need get_image instead, as in Glance.
    "tasks_api_access": (ADMIN, "GET and POST /v2/tasks, GET /v2/tasks/{task_id}"),
    "get_tasks": ("rule:default", "GET /v2/tasks"),
    "get_task": ("rule:default", "GET /v2/tasks/{task_id}"),
    "add_task": ("rule:default", "POST /v2/tasks"),
    "modify_task": ("rule:default", "Changing a task (the image service, as the task runs)"),
    # Metadata definitions (Glance's defaults): anyone with a role in a project reads
    # the public namespaces and their project's, administrators write. A namespace's
    # target is {"project_id": its owner, "visibility": its visibility}.
    "metadef_default": ("", "The old default of the metadef read rules."),
    "metadef_admin": (ADMIN, "Who may change metadata definitions."),
    "get_metadef_namespace": (_NAMESPACE_READERS, "GET /v2/metadefs/namespaces/{namespace}"),
    "get_metadef_namespaces": (ADMIN_OR_READER, "GET /v2/metadefs/namespaces"),
    "add_metadef_namespace": ("rule:metadef_admin", "POST /v2/metadefs/namespaces"),
    "modify_metadef_namespace": ("rule:metadef_admin", "PUT /v2/metadefs/namespaces/{namespace}"),
    "delete_metadef_namespace": ("rule:metadef_admin", "DELETE /v2/metadefs/namespaces/{namespace}"),
    "get_metadef_object": (_NAMESPACE_READERS, "GET .../objects/{object_name}"),
    "get_metadef_objects": (_NAMESPACE_READERS, "GET /v2/metadefs/namespaces/{namespace}/objects"),
    "add_metadef_object": ("rule:metadef_admin", "POST /v2/metadefs/namespaces/{namespace}/objects"),
    "modify_metadef_object": ("rule:metadef_admin", "PUT .../objects/{object_name}"),
    "delete_metadef_object": ("rule:metadef_admin", "DELETE .../objects/{object_name}, DELETE .../objects"),
    "list_metadef_resource_types": (_NAMESPACE_READERS, "GET /v2/metadefs/resource_types"),
    "get_metadef_resource_type": (_NAMESPACE_READERS, "GET /v2/metadefs/namespaces/{namespace}/resource_types"),
    "add_metadef_resource_type_association": ("rule:metadef_admin", "POST .../resource_types"),
    "remove_metadef_resource_type_association": ("rule:metadef_admin", "DELETE .../resource_types/{name}"),
    "get_metadef_property": (_NAMESPACE_READERS, "GET .../properties/{property_name}"),
    "get_metadef_properties": (_NAMESPACE_READERS, "GET /v2/metadefs/namespaces/{namespace}/properties"),
    "add_metadef_property": ("rule:metadef_admin", "POST /v2/metadefs/namespaces/{namespace}/properties"),
    "modify_metadef_property": ("rule:metadef_admin", "PUT .../properties/{property_name}"),
    "remove_metadef_property": ("rule:metadef_admin", "DELETE .../properties/{property_name}, .../properties"),
    "get_metadef_tag": (_NAMESPACE_READERS, "GET .../tags/{tag_name}"),
    "get_metadef_tags": (_NAMESPACE_READERS, "GET /v2/metadefs/namespaces/{namespace}/tags"),
    "add_metadef_tag": ("rule:metadef_admin", "POST .../tags/{tag_name}"),
    "add_metadef_tags": ("rule:metadef_admin", "POST /v2/metadefs/namespaces/{namespace}/tags"),
    "modify_metadef_tag": ("rule:metadef_admin", "PUT .../tags/{tag_name}"),
    "delete_metadef_tag": ("rule:metadef_admin", "DELETE .../tags/{tag_name}"),
    "delete_metadef_tags": ("rule:metadef_admin", "DELETE /v2/metadefs/namespaces/{namespace}/tags"),
}

#: What an anonymous caller (``allow_anonymous_access``) may do: read, nothing else.
#: Visibility still applies, so that means public and community images only.
ANONYMOUS_ACTIONS = frozenset({"get_images", "get_image", "download_image"})


def roles_of(viewer) -> set[str]:
    """The caller's roles, lower-cased; an administrator always has ``admin``."""
    return {r.lower() for r in viewer.roles} | ({"admin"} if viewer.is_admin else set())


def rule_defaults() -> list[policy.RuleDefault]:
    return [policy.RuleDefault(name, check, description=doc) for name, (check, doc) in RULES.items()]


def list_rules():
    """``oslo.policy.policies`` entry point: for oslopolicy-sample-generator."""
    return rule_defaults()


@functools.cache
def _pure_checks() -> tuple[type, ...]:
    """The checks whose answer depends on nothing but the rules, the target and the
    credentials: a rule made of these alone gives the same answer for the same question.

    oslo.policy exports its compound checks, not all its leaf check classes: those are
    the classes of what it parses (on first use: parsing loads its check plugins)."""
    leaves = ("role:member", "project_id:%(project_id)s", "@", "!")
    parsed = (type(policy.RuleDefault("probe", check).check) for check in leaves)
    return (policy.AndCheck, policy.OrCheck, policy.NotCheck, policy.RuleCheck, *parsed)


# Distinct questions remembered between two policy file changes; then it starts over.
DECISIONS_KEPT = 8192
# How often the policy files are looked at: a changed, new or removed policy file takes
# effect within this many seconds (a look costs a dozen stat calls: not one per check).
RECHECK_SECONDS = 1.0


def _pure(check) -> bool:
    if type(check) not in _pure_checks():
        return False  # http:, a plugin's check, or one of a later oslo.policy: ask it every time
    children = getattr(check, "rules", None) or [getattr(check, "rule", None)]
    return all(child is None or _pure(child) for child in children)


def _stat(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class _Enforcer(policy.Enforcer):
    """oslo.policy's Enforcer looks for the policy files on every check (a search of the
    config directories, then a read if one changed). This one searches at most every
    RECHECK_SECONDS, and reloads only when a policy file or dir appeared, went or
    changed."""

    def __init__(self, conf) -> None:
        super().__init__(conf)
        self.loaded_signature = None
        self.next_check = 0.0
        self.generation = 0  # counts the reloads; a decision belongs to one of them

    def signature(self) -> tuple:
        """Where the policy file and dirs are found now, as the enforcer searches (the
        --config-dir, the config files' directories, ~/.abbild, ~, /etc/abbild, /etc),
        and their states."""
        found = []
        for name in (self.conf.oslo_policy.policy_file, *self.conf.oslo_policy.policy_dirs):
            path = self.conf.find_file(name)
            found.append((path, _stat(path) if path else None))
            if path and os.path.isdir(path):
                found.append(tuple(sorted((entry, _stat(os.path.join(path, entry))) for entry in os.listdir(path))))
        return tuple(found)

    def load_rules(self, force_reload: bool = False) -> None:
        now = time.monotonic()
        if not force_reload and self.loaded_signature is not None and now < self.next_check:
            return
        signature = self.signature()
        self.next_check = now + RECHECK_SECONDS
        if force_reload or signature != self.loaded_signature:
            super().load_rules(force_reload)
            self.loaded_signature = signature
            self.generation += 1

    def forget_loaded(self) -> None:
        """Rules changed in memory (a default registered): load them on the next check."""
        self.loaded_signature = None


class Policy:
    """Checks against oslo.policy, remembering answers: the same question (action, target,
    caller) gets the same answer until a policy file changes, when rules are all pure
    (roles, rules, target and credential fields); an ``http:`` or a plugin's check is
    asked every time."""

    def __init__(self, conf) -> None:
        self.enforcer = _Enforcer(conf)
        self.enforcer.register_defaults(rule_defaults())
        self._decisions: dict = {}
        self._generation = -1
        self._cacheable = False

    def _fresh_decisions(self) -> dict | None:
        """The remembered answers of the rules loaded now (None: rules that must be asked)."""
        enforcer = self.enforcer
        enforcer.load_rules()
        if enforcer.generation != self._generation:
            self._cacheable = all(_pure(rule) for rule in enforcer.rules.values())
            self._decisions = {}
            self._generation = enforcer.generation
        if not self._cacheable:
            return None
        if len(self._decisions) >= DECISIONS_KEPT:
            self._decisions = {}
        return self._decisions

    def allows(self, action: str, viewer, target: dict | None = None) -> bool:
        """Whether *viewer* may do *action* on *target* (the image's attributes)."""
        if viewer.anonymous:
            return action in ANONYMOUS_ACTIONS
        roles = sorted(roles_of(viewer))
        # A missing key fails its check; a None value would match a None project.
        target = {k: v for k, v in (target or {}).items() if v is not None}
        decisions = self._fresh_decisions()
        key = None
        if decisions is not None:
            try:
                key = (action, tuple(roles), viewer.project_id, viewer.user_id, *sorted(target.items()))
                hash(key)
            except TypeError:  # a value no dict key can hold
                key = None
            else:
                answer = decisions.get(key)
                if answer is not None:
                    return answer
        creds = {"roles": roles, "project_id": viewer.project_id, "user_id": viewer.user_id}
        answer = bool(self.enforcer.enforce(action, target, creds))
        if key is not None:
            decisions[key] = answer
        return answer

    def authorize(self, action: str, viewer, target: dict | None = None) -> None:
        """:raises abbild.errors.Forbidden: *viewer* may not do *action*."""
        if not self.allows(action, viewer, target):
            raise Forbidden(f"You are not authorized to complete {action} action.")

    def add_rule(self, name: str, check: str) -> None:
        self.enforcer.register_default(policy.RuleDefault(name, check))
        self.enforcer.forget_loaded()
