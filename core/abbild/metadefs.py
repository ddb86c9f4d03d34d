"""Metadata definitions (metadefs): a catalog of the properties other services
understand (``hw_watchdog_action``, ``os_distro``, ...), grouped in namespaces and
associated with the resource types they apply to (``OS::Glance::Image``,
``OS::Nova::Flavor``, ...), as Glance's ``/v2/metadefs`` API shows them.

A namespace is one aggregate: its properties, objects, tags and resource type
associations are read and written with it (:meth:`abbild.registry.Registry.save_namespace`,
a compare-and-swap on ``Namespace.version``), so a change to any part of it is one
atomic write and two writers never silently overwrite each other.

Value objects only, no I/O.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any, NamedTuple

#: Resource types every deployment knows (protected: never removed by
#: ``abbild db unload-metadefs``); any other is created when an association first names it.
CORE_RESOURCE_TYPES = (
    "OS::Glance::Image",
    "OS::Cinder::Volume",
    "OS::Nova::Flavor",
    "OS::Nova::Aggregate",
    "OS::Nova::Server",
)
#: The resource type whose associated namespaces describe image properties
#: (``validate_image_properties``).
IMAGE_RESOURCE_TYPE = "OS::Glance::Image"
VISIBILITIES = ("public", "private")
#: What ``GET /v2/metadefs/namespaces`` may be sorted by.
NAMESPACE_SORT_KEYS = ("created_at", "updated_at", "namespace", "display_name", "visibility", "protected", "owner")
#: What a namespace's tags may be sorted by.
TAG_SORT_KEYS = ("created_at", "updated_at", "name")
#: The JSON types a property definition may have.
PROPERTY_TYPES = ("array", "boolean", "integer", "number", "object", "string", "null")


@dataclasses.dataclass
class ResourceType:
    """A kind of resource namespaces may describe (``OS::Nova::Flavor``)."""

    name: str
    protected: bool = False
    created_at: datetime.datetime | None = None
    updated_at: datetime.datetime | None = None


@dataclasses.dataclass
class Association:
    """A namespace applies to a resource type: its property names take *prefix* there
    (``hw_`` for images, ``hw:`` for flavors), and *properties_target* says which of
    the resource's property sets they go to (a volume's ``image`` metadata, say)."""

    name: str  # the resource type's
    prefix: str | None = None
    properties_target: str | None = None
    created_at: datetime.datetime | None = None
    updated_at: datetime.datetime | None = None


@dataclasses.dataclass
class MetadefObject:
    """A named group of property definitions (``CPU Limits``), with the names of the
    ones a resource must have."""

    name: str
    description: str | None = None
    required: list[str] = dataclasses.field(default_factory=list)
    properties: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # name -> definition
    created_at: datetime.datetime | None = None
    updated_at: datetime.datetime | None = None


class PropertyDefinition(NamedTuple):
    """One property of a namespace, as hooks are told about it."""

    name: str
    definition: dict[str, Any]


@dataclasses.dataclass
class MetadefTag:
    name: str
    created_at: datetime.datetime | None = None
    updated_at: datetime.datetime | None = None


@dataclasses.dataclass
class Namespace:
    """One namespace and everything in it.

    ``properties`` maps a property name to its definition: the JSON-schema-like
    document the API shows (``title``, ``type``, ``enum``, ``minimum``, ...), without
    the name. ``objects``, ``tags`` and ``associations`` keep the order the registry
    returns (by name). Children's times are the registry's: it sets ``created_at`` of
    a child it has not stored before and ``updated_at`` of one whose content changed.
    """

    namespace: str
    display_name: str | None = None
    description: str | None = None
    visibility: str = "private"
    protected: bool = False
    owner: str | None = None
    created_at: datetime.datetime | None = None
    updated_at: datetime.datetime | None = None
    properties: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    objects: list[MetadefObject] = dataclasses.field(default_factory=list)
    tags: list[MetadefTag] = dataclasses.field(default_factory=list)
    associations: list[Association] = dataclasses.field(default_factory=list)
    version: int = 0  # for compare-and-swap, as Image.version

    def object(self, name: str) -> MetadefObject | None:
        return next((o for o in self.objects if o.name == name), None)

    def tag(self, name: str) -> MetadefTag | None:
        return next((t for t in self.tags if t.name == name), None)

    def association(self, resource_type: str) -> Association | None:
        return next((a for a in self.associations if a.name == resource_type), None)


@dataclasses.dataclass(frozen=True)
class NamespaceFilters:
    visibility: str | None = None  # "public" | "private" | None: both
    resource_types: tuple[str, ...] = ()  # associated with any of these; (): no filter


def namespace_visible(namespace: Namespace, viewer) -> bool:
    """Whether *viewer* (an :class:`abbild.registry.Viewer`, or ``None`` for the service
    itself) may know that *namespace* exists: administrators and the service see every
    namespace, anyone else the public ones, their project's and those nobody owns (as
    Glance). The one statement of the rule: the service asks it, and the SQL registry's
    list query says the same in SQL."""
    if viewer is None or viewer.is_admin:
        return True
    if namespace.visibility == "public" or namespace.owner is None:
        return True
    return viewer.project_id is not None and namespace.owner == viewer.project_id


# -- the document form: a metadefs JSON file (etc/metadefs/*.json), and the API's body --


def namespace_document(namespace: Namespace) -> dict[str, Any]:
    """*namespace* as a metadefs JSON file holds it (``abbild db export-metadefs``), which
    is also the API's view without its links and times: fields that are unset or empty
    are left out, as Glance leaves them out."""
    doc: dict[str, Any] = {"namespace": namespace.namespace}
    for field in ("display_name", "description"):
        if getattr(namespace, field) is not None:
            doc[field] = getattr(namespace, field)
    doc.update(visibility=namespace.visibility, protected=namespace.protected)
    if namespace.owner is not None:
        doc["owner"] = namespace.owner
    if namespace.associations:
        doc["resource_type_associations"] = [
            _drop_none(name=a.name, prefix=a.prefix, properties_target=a.properties_target)
            for a in namespace.associations
        ]
    if namespace.properties:
        doc["properties"] = {name: dict(definition) for name, definition in namespace.properties.items()}
    if namespace.objects:
        doc["objects"] = [object_document(o) for o in namespace.objects]
    if namespace.tags:
        doc["tags"] = [{"name": t.name} for t in namespace.tags]
    return doc


def object_document(obj: MetadefObject) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": obj.name}
    if obj.description is not None:
        doc["description"] = obj.description
    if obj.required:
        doc["required"] = list(obj.required)
    if obj.properties:
        doc["properties"] = {name: dict(definition) for name, definition in obj.properties.items()}
    return doc


def namespace_from_document(doc: Any, *, where: str = "The namespace") -> Namespace:
    """The namespace a metadefs JSON document describes (its shape only: the API checks
    the values against its schemas first).

    :raises abbild.errors.Invalid: a message that names the field.
    """
    from abbild.errors import Invalid

    def need(value, kind, what):
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise Invalid(f"{where}: {what} must be {_KIND_NAMES[kind]}.")
        return value

    need(doc, dict, "the document")
    name = need(doc.get("namespace"), str, "'namespace'")
    optional_text = {}
    for field in ("display_name", "description", "owner"):
        if doc.get(field) is not None:
            optional_text[field] = need(doc[field], str, f"'{field}'")
    visibility = doc.get("visibility") or "private"
    if visibility not in VISIBILITIES:
        raise Invalid(f"{where}: 'visibility' must be one of {', '.join(VISIBILITIES)}, not {visibility!r}.")
    associations = []
    for i, a in enumerate(need(doc.get("resource_type_associations") or [], list, "'resource_type_associations'")):
        need(a, dict, f"resource_type_associations[{i}]")
        associations.append(
            Association(
                name=need(a.get("name"), str, f"resource_type_associations[{i}].name"),
                prefix=None
                if a.get("prefix") is None
                else need(a["prefix"], str, f"resource_type_associations[{i}].prefix"),
                properties_target=None
                if a.get("properties_target") is None
                else need(a["properties_target"], str, f"resource_type_associations[{i}].properties_target"),
            )
        )
    objects = []
    for i, o in enumerate(need(doc.get("objects") or [], list, "'objects'")):
        need(o, dict, f"objects[{i}]")
        objects.append(
            MetadefObject(
                name=need(o.get("name"), str, f"objects[{i}].name"),
                description=None
                if o.get("description") is None
                else need(o["description"], str, f"objects[{i}].description"),
                required=[
                    need(r, str, f"objects[{i}].required[]")
                    for r in need(o.get("required") or [], list, f"objects[{i}].required")
                ],
                properties=_definitions(
                    need(o.get("properties") or {}, dict, f"objects[{i}].properties"), need, f"objects[{i}].properties"
                ),
            )
        )
    tags = []
    for i, t in enumerate(need(doc.get("tags") or [], list, "'tags'")):
        need(t, dict, f"tags[{i}]")
        tags.append(MetadefTag(name=need(t.get("name"), str, f"tags[{i}].name")))
    return Namespace(
        namespace=name,
        visibility=visibility,
        protected=need(doc.get("protected", False), bool, "'protected'"),
        properties=_definitions(need(doc.get("properties") or {}, dict, "'properties'"), need, "properties"),
        objects=objects,
        tags=tags,
        associations=associations,
        **optional_text,
    )


_KIND_NAMES = {dict: "an object", list: "an array", str: "a string", bool: "true or false"}


def _definitions(value: dict, need, what: str) -> dict[str, dict[str, Any]]:
    return {name: dict(need(definition, dict, f"{what}.{name}")) for name, definition in value.items()}


def _drop_none(**fields) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}
