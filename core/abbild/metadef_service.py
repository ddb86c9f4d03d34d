"""The metadata definitions service: who may read and change which namespace, and the
rules every change keeps (Glance's ``/v2/metadefs``).

Reached as ``service.metadefs``. Every operation reads the namespace once, checks the
visibility rule (:func:`abbild.metadefs.namespace_visible`: a namespace the caller may
not see is as missing as one that does not exist, also for writes) and the policy with
the target ``{"project_id": owner, "visibility": visibility}``; a refused action is a
404 when the caller may not even read the namespace (``get_metadef_namespace``), else
a 403. Changes go through :meth:`abbild.registry.Registry.update_namespace`, so two
writers never lose each other's changes, and each committed change fires
``abbild_metadef_changed``.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import math
import re
from collections.abc import Callable
from typing import Any

from abbild.errors import Conflict, Forbidden, Invalid, MetadefNotFound
from abbild.metadefs import (
    NAMESPACE_SORT_KEYS,
    PROPERTY_TYPES,
    TAG_SORT_KEYS,
    Association,
    MetadefObject,
    MetadefTag,
    Namespace,
    NamespaceFilters,
    PropertyDefinition,
    ResourceType,
    namespace_visible,
)
from abbild.plugins import notify

#: What Glance keeps of a property definition (its PropertyType); anything else a
#: namespace or object body carries in a definition is dropped, as Glance drops it.
PROPERTY_FIELDS = (
    "title",
    "type",
    "description",
    "operators",
    "default",
    "readonly",
    "minimum",
    "maximum",
    "enum",
    "pattern",
    "minLength",
    "maxLength",
    "confidential",
    "items",
    "uniqueItems",
    "minItems",
    "maxItems",
    "additionalItems",
)
ITEM_FIELDS = ("type", "enum")
#: Object and list sort keys (a namespace's objects, like its tags).
OBJECT_SORT_KEYS = ("created_at", "updated_at", "name")
NAME_LENGTH = 80  # namespaces, objects, properties, tags, resource types (Glance's columns)

_PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}


# -- messages (Glance's) ------------------------------------------------------------------


def _namespace_missing(name: str) -> MetadefNotFound:
    return MetadefNotFound(f"Metadata definition namespace={name} was not found.")


def _namespace_not_found(name: str) -> MetadefNotFound:
    # Glance's routes below a namespace say it this way, for a missing and an invisible one alike.
    return MetadefNotFound(f"Namespace {name} not found")


def _object_missing(namespace: str, name: str) -> MetadefNotFound:
    return MetadefNotFound(f"The metadata definition object with name={name} was not found in namespace={namespace}.")


def _property_missing(namespace: str, name: str) -> MetadefNotFound:
    return MetadefNotFound(f"The metadata definition property with name={name} was not found in namespace={namespace}.")


def _tag_missing(namespace: str, name: str) -> MetadefNotFound:
    return MetadefNotFound(f"The metadata definition tag with name={name} was not found in namespace={namespace}.")


def _duplicate_object(namespace: str, name: str) -> Conflict:
    return Conflict(f"A metadata definition object with name={name} already exists in namespace={namespace}.")


def _duplicate_property(namespace: str, name: str) -> Conflict:
    return Conflict(f"A metadata definition property with name={name} already exists in namespace={namespace}.")


def _duplicate_tag(namespace: str, name: str) -> Conflict:
    return Conflict(f"A metadata tag with name={name} already exists in namespace={namespace}.")


def _duplicate_association(namespace: str, name: str) -> Conflict:
    return Conflict(
        f"The metadata definition resource-type association of resource-type={name} "
        f"to namespace={namespace} already exists."
    )


# -- names and property definitions ---------------------------------------------------------


def check_name(kind: str, name: Any) -> str:
    """A name a URL can address: a non-empty string of at most 80 characters without '/'.

    :raises abbild.errors.Invalid:
    """
    if not isinstance(name, str) or not name:
        raise Invalid(f"A metadata definition {kind} needs a name: a non-empty string.")
    if len(name) > NAME_LENGTH:
        raise Invalid(
            f"The {kind} name '{name[:40]}...' is {len(name)} characters long; at most {NAME_LENGTH} are kept."
        )
    if "/" in name:
        raise Invalid(f"The {kind} name {name!r} contains '/': it could not be addressed in a URL.")
    return name


def kept_definition(definition: dict[str, Any]) -> dict[str, Any]:
    """The fields of *definition* Glance keeps (:data:`PROPERTY_FIELDS`), ``items`` with
    its type and enum only."""
    kept = {k: copy.deepcopy(v) for k, v in definition.items() if k in PROPERTY_FIELDS}
    if isinstance(kept.get("items"), dict):
        kept["items"] = {k: v for k, v in kept["items"].items() if k in ITEM_FIELDS}
    return kept


def _of_type(value: Any, type_: str | None) -> bool:
    if type_ not in _PYTHON_TYPES:
        return True  # no type to hold it to
    if isinstance(value, bool) and type_ not in ("boolean",):
        return False
    if type_ == "number" and isinstance(value, float) and not math.isfinite(value):
        return False
    return isinstance(value, _PYTHON_TYPES[type_])


def check_property_definition(name: str, definition: dict[str, Any]) -> dict[str, Any]:
    """*definition* as it is kept, if it says something a value can satisfy: a known
    ``type``, a compilable ``pattern``, lower bounds not above upper ones, ``enum``
    values and a ``default`` of the property's type (the default within the rules).

    :raises abbild.errors.Invalid: a message that names the property and the problem.
    """
    check_name("property", name)
    definition = kept_definition(definition)
    where = f"Property '{name}'"
    for required in ("title", "type"):
        if required not in definition:
            raise Invalid(f"{where}: '{required}' is required.")
    type_ = definition["type"]
    if type_ not in PROPERTY_TYPES:
        raise Invalid(f"{where}: type {type_!r} is not one of {', '.join(PROPERTY_TYPES)}.")
    if not isinstance(definition["title"], str):
        raise Invalid(f"{where}: 'title' must be a string.")
    pattern = definition.get("pattern")
    if pattern is not None:
        if not isinstance(pattern, str):
            raise Invalid(f"{where}: 'pattern' must be a string.")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise Invalid(f"{where}: 'pattern' {pattern!r} is no regular expression: {exc}.") from None
    for bound in ("minimum", "maximum"):
        if definition.get(bound) is not None and not _of_type(definition[bound], "number"):
            raise Invalid(f"{where}: '{bound}' must be a number, not {definition[bound]!r}.")
    for bound in ("minLength", "maxLength", "minItems", "maxItems"):
        value = definition.get(bound)
        if value is not None and (not _of_type(value, "integer") or value < 0):
            raise Invalid(f"{where}: '{bound}' must be an integer of 0 or more, not {value!r}.")
    for low, high in (("minimum", "maximum"), ("minLength", "maxLength"), ("minItems", "maxItems")):
        if definition.get(low) is not None and definition.get(high) is not None and definition[low] > definition[high]:
            raise Invalid(f"{where}: '{low}' ({definition[low]}) is greater than '{high}' ({definition[high]}).")
    items = definition.get("items")
    if items is not None:
        if not isinstance(items, dict):
            raise Invalid(f"{where}: 'items' must be an object with a type and an enum.")
        item_type = items.get("type")
        if item_type is not None and item_type not in PROPERTY_TYPES:
            raise Invalid(f"{where}: items type {item_type!r} is not one of {', '.join(PROPERTY_TYPES)}.")
        _check_enum(f"{where}: items", items.get("enum"), item_type)
    _check_enum(where, definition.get("enum"), type_)
    if "default" in definition and definition["default"] is not None:
        problem = _violation(definition["default"], definition)
        if problem:
            raise Invalid(f"{where}: the default {definition['default']!r} {problem}.")
    return definition


def _check_enum(where: str, enum: Any, type_: str | None) -> None:
    if enum is None:
        return
    if not isinstance(enum, list):
        raise Invalid(f"{where}: 'enum' must be an array.")
    for value in enum:
        if not _of_type(value, type_):
            raise Invalid(f"{where}: enum value {value!r} is not of type {type_}.")


def _violation(value: Any, definition: dict[str, Any]) -> str | None:
    """What is wrong with *value* under *definition*, or ``None``."""
    type_ = definition.get("type")
    if not _of_type(value, type_):
        return f"is not of type {type_}"
    if "enum" in definition and definition["enum"] is not None and value not in definition["enum"]:
        return f"is not one of the enum values {definition['enum']!r}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if definition.get("minimum") is not None and value < definition["minimum"]:
            return f"is less than the minimum {definition['minimum']}"
        if definition.get("maximum") is not None and value > definition["maximum"]:
            return f"is greater than the maximum {definition['maximum']}"
    if isinstance(value, str):
        if definition.get("minLength") is not None and len(value) < definition["minLength"]:
            return f"is shorter than minLength {definition['minLength']}"
        if definition.get("maxLength") is not None and len(value) > definition["maxLength"]:
            return f"is longer than maxLength {definition['maxLength']}"
        if definition.get("pattern") is not None and not re.search(definition["pattern"], value):
            return f"does not match the pattern {definition['pattern']!r}"
    if isinstance(value, list):
        if definition.get("minItems") is not None and len(value) < definition["minItems"]:
            return f"has fewer than minItems {definition['minItems']} items"
        if definition.get("maxItems") is not None and len(value) > definition["maxItems"]:
            return f"has more than maxItems {definition['maxItems']} items"
        items = definition.get("items") or {}
        for item in value:
            problem = _violation(item, items) if items else None
            if problem:
                return f"has an item {item!r} that {problem}"
    return None


def check_object(obj: MetadefObject) -> MetadefObject:
    """*obj* with its property definitions as they are kept.

    :raises abbild.errors.Invalid:
    """
    check_name("object", obj.name)
    obj.properties = {name: check_property_definition(name, d) for name, d in obj.properties.items()}
    return obj


@dataclasses.dataclass
class ListPage:
    """What a list of a namespace's children asks for."""

    sort_key: str = "created_at"
    sort_dir: str = "desc"
    limit: int | None = None
    marker: str | None = None


def _page(items: list, page: ListPage, namespace: str, missing: Callable[[str, str], Exception]):
    """*items* (objects or tags) sorted and cut as *page* says; the marker is a name."""

    def key(item):
        value = getattr(item, page.sort_key)
        if value is None:  # not stored yet: first
            value = "" if page.sort_key == "name" else datetime.datetime.min
        return value, item.name

    ordered = sorted(items, key=key, reverse=page.sort_dir == "desc")
    if page.marker is not None:
        names = [i.name for i in ordered]
        if page.marker not in names:
            raise missing(namespace, page.marker)
        ordered = ordered[names.index(page.marker) + 1 :]
    return ordered if page.limit is None else ordered[: page.limit]


class Metadefs:
    def __init__(self, service) -> None:
        self.service = service
        self.registry = service.registry
        self.policy = service.policy
        self.plugins = service.plugins

    # -- who may do what --------------------------------------------------------------

    @staticmethod
    def target(namespace: Namespace) -> dict:
        return {"project_id": namespace.owner, "visibility": namespace.visibility}

    def _read(self, name: str, viewer, missing: Callable[[str], MetadefNotFound] = _namespace_not_found) -> Namespace:
        """The namespace *name* if *viewer* may know it exists.

        :raises abbild.errors.MetadefNotFound: it does not exist, or not for *viewer*.
        """
        try:
            namespace = self.registry.get_namespace(name)
        except MetadefNotFound:
            raise missing(name) from None
        if not namespace_visible(namespace, viewer):
            raise missing(name)
        return namespace

    def _authorize(self, namespace: Namespace, viewer, *actions: str, missing=_namespace_not_found) -> None:
        """Glance's MetadefAPIPolicy: a refused action is a 404 for a caller who may not
        read the namespace either, a 403 for one who may."""
        target = self.target(namespace)
        for action in actions:
            if self.policy.allows(action, viewer, target):
                continue
            if action == "get_metadef_namespace" or not self.policy.allows("get_metadef_namespace", viewer, target):
                raise missing(namespace.namespace)
            raise Forbidden(f"You are not authorized to complete {action} action.")

    def _authorized(self, name: str, viewer, *actions: str, missing=_namespace_not_found) -> Namespace:
        namespace = self._read(name, viewer, missing)
        self._authorize(namespace, viewer, *actions, missing=missing)
        return namespace

    def _changed(self, event: str, namespace: Namespace, item=None, old_name: str | None = None) -> None:
        notify(self.plugins, "abbild_metadef_changed", event=event, namespace=namespace, item=item, old_name=old_name)

    def _update(self, name: str, change: Callable[[Namespace], None]) -> Namespace:
        """Apply *change* to the current namespace and save it (retried on concurrent
        writes); a namespace gone meanwhile is a 404, *change*'s own errors pass as they are."""
        refusal: Exception | None = None

        def apply(namespace: Namespace) -> None:
            nonlocal refusal
            try:
                change(namespace)
            except Exception as exc:
                refusal = exc
                raise

        try:
            return self.registry.update_namespace(name, apply)
        except MetadefNotFound as exc:
            if exc is refusal:
                raise
            raise _namespace_not_found(name) from None

    # -- namespaces ---------------------------------------------------------------------

    def list_namespaces(
        self,
        filters: NamespaceFilters,
        sort_key: str,
        sort_dir: str,
        limit: int | None,
        marker: str | None,
        viewer,
    ) -> list[Namespace]:
        own = {"project_id": viewer.project_id}
        self.policy.authorize("get_metadef_namespaces", viewer, own)
        self.policy.authorize("list_metadef_resource_types", viewer, own)
        if sort_key not in NAMESPACE_SORT_KEYS:
            raise Invalid(f"Invalid sort key: {sort_key}. It must be one of: {', '.join(NAMESPACE_SORT_KEYS)}.")
        if marker is not None:
            self._read(marker, viewer, _namespace_missing)  # an invisible marker is as unknown as a missing one
        found = self.registry.list_namespaces(filters, sort_key, sort_dir, limit, marker, viewer)
        return [
            ns
            for ns in found
            if namespace_visible(ns, viewer) and self.policy.allows("get_metadef_namespace", viewer, self.target(ns))
        ]

    def get_namespace(self, name: str, viewer) -> Namespace:
        return self._authorized(
            name,
            viewer,
            "get_metadef_namespace",
            "list_metadef_resource_types",
            "get_metadef_objects",
            "get_metadef_properties",
            "get_metadef_tags",
            missing=_namespace_missing,
        )

    def create_namespace(self, namespace: Namespace, viewer) -> Namespace:
        """Create *namespace* with the children it carries; its owner is the caller's
        project unless it names one."""
        own = {"project_id": viewer.project_id}
        actions = ["add_metadef_namespace"]
        for children, action in (
            (namespace.associations, "add_metadef_resource_type_association"),
            (namespace.objects, "add_metadef_object"),
            (namespace.properties, "add_metadef_property"),
            (namespace.tags, "add_metadef_tag"),
        ):
            if children:
                actions.append(action)
        for action in actions:
            self.policy.authorize(action, viewer, own)
        check_name("namespace", namespace.namespace)
        if namespace.owner is None:
            namespace.owner = viewer.project_id
        self._check_children(namespace)
        try:
            created = self.registry.create_namespace(namespace)
        except Conflict:
            raise Conflict(f"The metadata definition namespace={namespace.namespace} already exists.") from None
        self._changed("metadef_namespace.create", created)
        for association in created.associations:
            self._changed("metadef_resource_type.create", created, association)
        for obj in created.objects:
            self._changed("metadef_object.create", created, obj)
        for tag in created.tags:
            self._changed("metadef_tag.create", created, tag)
        for prop, definition in created.properties.items():
            self._changed("metadef_property.create", created, PropertyDefinition(prop, definition))
        return created

    @staticmethod
    def _check_children(namespace: Namespace) -> None:
        name = namespace.namespace
        namespace.properties = {p: check_property_definition(p, d) for p, d in namespace.properties.items()}
        seen: set[str] = set()
        for obj in namespace.objects:
            check_object(obj)
            if obj.name in seen:
                raise _duplicate_object(name, obj.name)
            seen.add(obj.name)
        seen = set()
        for tag in namespace.tags:
            check_name("tag", tag.name)
            if tag.name in seen:
                raise _duplicate_tag(name, tag.name)
            seen.add(tag.name)
        seen = set()
        for association in namespace.associations:
            check_name("resource type", association.name)
            if association.name in seen:
                raise _duplicate_association(name, association.name)
            seen.add(association.name)

    def update_namespace(self, name: str, fields: dict[str, Any], viewer) -> Namespace:
        """Glance's PUT: the namespace's own fields are replaced (its children stay);
        visibility, protected and owner fall back to private, false and the caller's
        project when left out."""
        namespace = self._authorized(name, viewer, "modify_metadef_namespace")
        new_name = check_name("namespace", fields["namespace"])

        def change(ns: Namespace) -> None:
            if not namespace_visible(ns, viewer):
                raise _namespace_not_found(name)
            ns.namespace = new_name
            ns.display_name = fields.get("display_name")
            ns.description = fields.get("description")
            ns.visibility = fields.get("visibility") or "private"
            ns.protected = bool(fields.get("protected") or False)
            ns.owner = fields.get("owner") or viewer.project_id

        try:
            updated = self._update(namespace.namespace, change)
        except Conflict:
            if new_name == name:
                raise
            raise Conflict(
                "Invalid update. It would result in a duplicate metadata definition namespace "
                f"with the same name of {new_name}"
            ) from None
        self._changed("metadef_namespace.update", updated, old_name=name)
        return updated

    def delete_namespace(self, name: str, viewer) -> None:
        namespace = self._authorized(name, viewer, "delete_metadef_namespace")
        if namespace.protected:
            raise Forbidden(f"Metadata definition namespace {name} is protected and cannot be deleted.")
        try:
            self.registry.delete_namespace(name)
        except MetadefNotFound:
            raise _namespace_not_found(name) from None
        self._changed("metadef_namespace.delete", namespace)

    def _clear(self, name: str, viewer, kind: str, actions: tuple[str, ...]) -> None:
        """DELETE .../objects, .../properties, .../tags: everything of *kind* goes."""
        namespace = self._authorized(name, viewer, *actions)
        refusal = Forbidden(f"Metadata definition namespace {name} is protected and cannot be deleted.")
        if namespace.protected:
            raise refusal

        def change(ns: Namespace) -> None:
            if ns.protected:  # it may have become protected since the first read
                raise refusal
            setattr(ns, kind, {} if kind == "properties" else [])

        updated = self._update(name, change)
        self._changed(f"metadef_namespace.delete_{kind}", updated)

    def delete_objects(self, name: str, viewer) -> None:
        self._clear(name, viewer, "objects", ("delete_metadef_namespace",))

    def delete_properties(self, name: str, viewer) -> None:
        self._clear(name, viewer, "properties", ("delete_metadef_namespace",))

    def delete_tags(self, name: str, viewer) -> None:
        self._clear(name, viewer, "tags", ("delete_metadef_namespace", "delete_metadef_tags"))

    # -- resource types and associations ------------------------------------------------

    def list_resource_types(self, viewer) -> list[ResourceType]:
        self.policy.authorize("list_metadef_resource_types", viewer, {"project_id": viewer.project_id})
        return self.registry.list_resource_types()

    def list_associations(self, name: str, viewer) -> list[Association]:
        namespace = self._authorized(name, viewer, "list_metadef_resource_types")
        if not self.policy.allows("get_metadef_resource_type", viewer, self.target(namespace)):
            return []
        return namespace.associations

    def add_association(self, name: str, association: Association, viewer) -> Association:
        self._authorized(name, viewer, "add_metadef_resource_type_association")
        check_name("resource type", association.name)

        def change(ns: Namespace) -> None:
            if ns.association(association.name) is not None:
                raise _duplicate_association(name, association.name)
            ns.associations.append(dataclasses.replace(association))

        updated = self._update(name, change)
        added = updated.association(association.name)
        self._changed("metadef_resource_type.create", updated, added)
        return added

    def remove_association(self, name: str, resource_type: str, viewer) -> None:
        self._authorized(name, viewer, "remove_metadef_resource_type_association")
        removed = None

        def change(ns: Namespace) -> None:
            nonlocal removed
            removed = ns.association(resource_type)
            if removed is None:
                raise MetadefNotFound(f"Failed to find resource type {resource_type} to delete")
            if ns.protected:
                raise Forbidden(
                    f"Metadata definition resource-type-association {resource_type} is protected and cannot be deleted."
                )
            ns.associations.remove(removed)

        updated = self._update(name, change)
        self._changed("metadef_resource_type.delete", updated, removed)

    # -- objects ------------------------------------------------------------------------

    def list_objects(self, name: str, page: ListPage, viewer) -> list[MetadefObject]:
        namespace = self._authorized(name, viewer, "get_metadef_objects")
        if not self.policy.allows("get_metadef_object", viewer, self.target(namespace)):
            return []
        if page.sort_key not in OBJECT_SORT_KEYS:
            raise Invalid(f"Invalid sort key: {page.sort_key}. It must be one of: {', '.join(OBJECT_SORT_KEYS)}.")
        return _page(namespace.objects, page, name, _object_missing)

    def get_object(self, name: str, object_name: str, viewer) -> MetadefObject:
        namespace = self._authorized(name, viewer, "get_metadef_object")
        obj = namespace.object(object_name)
        if obj is None:
            raise _object_missing(name, object_name)
        return obj

    def create_object(self, name: str, obj: MetadefObject, viewer) -> MetadefObject:
        self._authorized(name, viewer, "add_metadef_object")
        check_object(obj)

        def change(ns: Namespace) -> None:
            if ns.object(obj.name) is not None:
                raise _duplicate_object(name, obj.name)
            ns.objects.append(copy.deepcopy(obj))

        updated = self._update(name, change)
        created = updated.object(obj.name)
        self._changed("metadef_object.create", updated, created)
        return created

    def update_object(self, name: str, object_name: str, obj: MetadefObject, viewer) -> MetadefObject:
        """Glance's PUT: name, description, required and properties are replaced."""
        self._authorized(name, viewer, "modify_metadef_object")
        check_object(obj)

        def change(ns: Namespace) -> None:
            current = ns.object(object_name)
            if current is None:
                raise _object_missing(name, object_name)
            if obj.name != object_name and ns.object(obj.name) is not None:
                raise _duplicate_object(name, obj.name)
            current.name = obj.name
            current.description = obj.description
            current.required = list(obj.required)
            current.properties = copy.deepcopy(obj.properties)

        updated = self._update(name, change)
        changed = updated.object(obj.name)
        self._changed("metadef_object.update", updated, changed, old_name=object_name)
        return changed

    def delete_object(self, name: str, object_name: str, viewer) -> None:
        self._authorized(name, viewer, "delete_metadef_object")
        removed = None

        def change(ns: Namespace) -> None:
            nonlocal removed
            removed = ns.object(object_name)
            if removed is None:
                raise _object_missing(name, object_name)
            if ns.protected:
                raise Forbidden(f"Metadata definition object {object_name} is protected and cannot be deleted.")
            ns.objects.remove(removed)

        updated = self._update(name, change)
        self._changed("metadef_object.delete", updated, removed)

    # -- properties ---------------------------------------------------------------------

    def list_properties(self, name: str, viewer) -> dict[str, dict]:
        namespace = self._authorized(name, viewer, "get_metadef_properties")
        return namespace.properties

    def get_property(
        self, name: str, property_name: str, viewer, resource_type: str | None = None
    ) -> PropertyDefinition:
        """With *resource_type*, *property_name* carries that association's prefix
        (``hw:cpu_policy`` for ``OS::Nova::Flavor``), as Glance reads it."""
        namespace = self._authorized(name, viewer, "get_metadef_property")
        if resource_type:
            self._authorize(namespace, viewer, "get_metadef_resource_type")
            association = namespace.association(resource_type)
            if association is None:
                raise MetadefNotFound(
                    f"The metadata definition resource-type association of resource-type={resource_type} "
                    f"to namespace={name}, was not found."
                )
            prefix = association.prefix
            if not prefix or not property_name.startswith(prefix):
                raise MetadefNotFound(
                    f"Property {property_name} does not start with the expected resource type "
                    f"association prefix of '{prefix}'."
                )
            property_name = property_name[len(prefix) :]
        definition = namespace.properties.get(property_name)
        if definition is None:
            raise _property_missing(name, property_name)
        return PropertyDefinition(property_name, definition)

    def create_property(self, name: str, prop: PropertyDefinition, viewer) -> PropertyDefinition:
        self._authorized(name, viewer, "add_metadef_property")
        definition = check_property_definition(prop.name, prop.definition)

        def change(ns: Namespace) -> None:
            if prop.name in ns.properties:
                raise _duplicate_property(name, prop.name)
            ns.properties[prop.name] = definition

        updated = self._update(name, change)
        created = PropertyDefinition(prop.name, updated.properties[prop.name])
        self._changed("metadef_property.create", updated, created)
        return created

    def update_property(self, name: str, property_name: str, prop: PropertyDefinition, viewer) -> PropertyDefinition:
        self._authorized(name, viewer, "modify_metadef_property")
        definition = check_property_definition(prop.name, prop.definition)

        def change(ns: Namespace) -> None:
            if property_name not in ns.properties:
                raise _property_missing(name, property_name)
            if prop.name != property_name and prop.name in ns.properties:
                raise _duplicate_property(name, prop.name)
            # a rename keeps the property's place: the others' order stays as it was
            ns.properties = {
                (prop.name if key == property_name else key): (definition if key == property_name else value)
                for key, value in ns.properties.items()
            }

        updated = self._update(name, change)
        changed = PropertyDefinition(prop.name, updated.properties[prop.name])
        self._changed("metadef_property.update", updated, changed, old_name=property_name)
        return changed

    def delete_property(self, name: str, property_name: str, viewer) -> None:
        self._authorized(name, viewer, "remove_metadef_property")
        removed = None

        def change(ns: Namespace) -> None:
            nonlocal removed
            if property_name not in ns.properties:
                raise _property_missing(name, property_name)
            if ns.protected:
                raise Forbidden(f"Metadata definition property {property_name} is protected and cannot be deleted.")
            removed = PropertyDefinition(property_name, ns.properties.pop(property_name))

        updated = self._update(name, change)
        self._changed("metadef_property.delete", updated, removed)

    # -- tags ---------------------------------------------------------------------------

    def list_tags(self, name: str, page: ListPage, viewer) -> list[MetadefTag]:
        namespace = self._authorized(name, viewer, "get_metadef_tags")
        if page.sort_key not in TAG_SORT_KEYS:
            raise Invalid(f"Invalid sort key: {page.sort_key}. It must be one of: {', '.join(TAG_SORT_KEYS)}.")
        return _page(namespace.tags, page, name, _tag_missing)

    def get_tag(self, name: str, tag_name: str, viewer) -> MetadefTag:
        namespace = self._authorized(name, viewer, "get_metadef_tag")
        tag = namespace.tag(tag_name)
        if tag is None:
            raise _tag_missing(name, tag_name)
        return tag

    def create_tag(self, name: str, tag_name: str, viewer) -> MetadefTag:
        self._authorized(name, viewer, "add_metadef_tag")
        check_name("tag", tag_name)

        def change(ns: Namespace) -> None:
            if ns.tag(tag_name) is not None:
                raise _duplicate_tag(name, tag_name)
            ns.tags.append(MetadefTag(tag_name))

        updated = self._update(name, change)
        created = updated.tag(tag_name)
        self._changed("metadef_tag.create", updated, created)
        return created

    def create_tags(self, name: str, tag_names: list[str], append: bool, viewer) -> list[MetadefTag]:
        """Bulk create: the namespace's tags become *tag_names* (appended to the ones it
        has with *append*); an empty list changes nothing, as in Glance. A name twice in
        the list, or (appending) one the namespace has, is a 409 and nothing changes."""
        self._authorized(name, viewer, "add_metadef_tags")
        seen: set[str] = set()
        for tag_name in tag_names:
            check_name("tag", tag_name)
            if tag_name in seen:
                raise _duplicate_tag(name, tag_name)
            seen.add(tag_name)
        if not tag_names:
            return []

        def change(ns: Namespace) -> None:
            if append:
                for tag_name in tag_names:
                    if ns.tag(tag_name) is not None:
                        raise _duplicate_tag(name, tag_name)
                ns.tags.extend(MetadefTag(t) for t in tag_names)
            else:
                ns.tags = [MetadefTag(t) for t in tag_names]

        updated = self._update(name, change)
        created = [updated.tag(t) for t in tag_names]
        for tag in created:
            self._changed("metadef_tag.create", updated, tag)
        return created

    def update_tag(self, name: str, tag_name: str, new_name: str, viewer) -> MetadefTag:
        self._authorized(name, viewer, "modify_metadef_tag")
        check_name("tag", new_name)

        def change(ns: Namespace) -> None:
            tag = ns.tag(tag_name)
            if tag is None:
                raise _tag_missing(name, tag_name)
            if new_name != tag_name and ns.tag(new_name) is not None:
                raise _duplicate_tag(name, new_name)
            tag.name = new_name

        updated = self._update(name, change)
        changed = updated.tag(new_name)
        self._changed("metadef_tag.update", updated, changed, old_name=tag_name)
        return changed

    def delete_tag(self, name: str, tag_name: str, viewer) -> None:
        self._authorized(name, viewer, "delete_metadef_tag")
        removed = None

        def change(ns: Namespace) -> None:
            nonlocal removed
            removed = ns.tag(tag_name)
            if removed is None:
                raise _tag_missing(name, tag_name)
            if ns.protected:
                raise Forbidden(f"Metadata definition tag {tag_name} is protected and cannot be deleted.")
            ns.tags.remove(removed)

        updated = self._update(name, change)
        self._changed("metadef_tag.delete", updated, removed)
