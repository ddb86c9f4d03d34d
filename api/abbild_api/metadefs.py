"""``/v2/metadefs``: namespaces, their resource type associations, properties, objects
and tags, and the resource types (Glance's metadata definitions API). The rules live
in :mod:`abbild.metadef_service`; this module parses requests and renders Glance's views."""

from __future__ import annotations

import urllib.parse

from abbild.errors import Forbidden, Invalid
from abbild.metadef_service import ListPage
from abbild.metadefs import (
    Association,
    MetadefObject,
    Namespace,
    NamespaceFilters,
    PropertyDefinition,
    namespace_from_document,
    object_document,
)
from abbild_api import metadef_schemas as schemas
from abbild_api.http import json_response, no_content, read_json, reject_body
from abbild_api.images import timestamp

NAMESPACES = "/v2/metadefs/namespaces"
_TRUE_WORDS = ("1", "t", "true", "on", "y", "yes")  # oslo's bool_from_string, as Glance reads X-Openstack-Append


def _viewer(app, req):
    return app.context(req).viewer


def _times(view: dict, item) -> dict:
    view["created_at"] = timestamp(item.created_at)
    view["updated_at"] = timestamp(item.updated_at)
    return {k: v for k, v in view.items() if v is not None}


def _check_writable(body: dict, read_only: tuple[str, ...]) -> None:
    for key in read_only:
        if key in body:
            raise Forbidden(f"Attribute '{key}' is read-only.")


# -- views ----------------------------------------------------------------------------------


def association_view(association: Association) -> dict:
    view = {"name": association.name, "prefix": association.prefix, "properties_target": association.properties_target}
    return _times(view, association)


def object_view(namespace: str, obj: MetadefObject, prefix: str = "") -> dict:
    view = {"name": obj.name, "description": obj.description}
    if obj.required:
        view["required"] = [prefix + name for name in obj.required]
    if obj.properties:
        view["properties"] = {prefix + name: dict(d) for name, d in obj.properties.items()}
    view = _times(view, obj)
    view["self"] = f"{NAMESPACES}/{namespace}/objects/{obj.name}"
    view["schema"] = "/v2/schemas/metadefs/object"
    return view


def property_view(prop: PropertyDefinition) -> dict:
    return {"name": prop.name, **prop.definition}


def tag_view(tag) -> dict:
    return _times({"name": tag.name}, tag)


def namespace_view(namespace: Namespace, *, detail: str | None = None, resource_type: str | None = None) -> dict:
    """The namespace's own fields, and its children as *detail* says: ``"list"`` (its
    associations, as a list shows them), ``"show"`` (everything, with times and links;
    property names prefixed for *resource_type*), ``"created"`` (the children as they
    were sent, as Glance answers a create); ``None``: none (an update's answer)."""
    view = {
        "namespace": namespace.namespace,
        "display_name": namespace.display_name,
        "description": namespace.description,
        "visibility": namespace.visibility,
        "protected": namespace.protected,
        "owner": namespace.owner,
    }
    view = _times(view, namespace)
    if detail == "created":
        document = {
            "resource_type_associations": [
                {k: v for k, v in association_view(a).items() if k in ("name", "prefix", "properties_target")}
                for a in namespace.associations
            ],
            "properties": {name: dict(d) for name, d in namespace.properties.items()},
            "objects": [object_document(o) for o in namespace.objects],
            "tags": [{"name": t.name} for t in namespace.tags],
        }
        view.update({k: v for k, v in document.items() if v})
    elif detail in ("list", "show") and namespace.associations:
        view["resource_type_associations"] = [association_view(a) for a in namespace.associations]
    if detail == "show":
        association = namespace.association(resource_type) if resource_type else None
        prefix = (association.prefix or "") if association else ""
        if namespace.properties:
            view["properties"] = {prefix + name: dict(d) for name, d in namespace.properties.items()}
        if namespace.objects:
            view["objects"] = [object_view(namespace.namespace, o, prefix) for o in namespace.objects]
        if namespace.tags:
            view["tags"] = [{"name": t.name} for t in namespace.tags]
    view["self"] = f"{NAMESPACES}/{namespace.namespace}"
    view["schema"] = "/v2/schemas/metadefs/namespace"
    return view


# -- query parameters -----------------------------------------------------------------------


def _limit(params, options, *, default: int | None) -> int | None:
    if "limit" not in params:
        return default
    try:
        limit = int(params["limit"])
    except ValueError:
        raise Invalid("limit param must be an integer") from None
    if limit < 0:
        raise Invalid("limit param must be positive")
    return min(limit, options.api_limit_max)


def _sort_dir(params) -> str:
    sort_dir = params.get("sort_dir", "desc")
    if sort_dir not in ("asc", "desc"):
        raise Invalid(f"Invalid sort direction: {sort_dir}")
    return sort_dir


def _list_page(params, options) -> ListPage:
    return ListPage(
        sort_key=params.get("sort_key", "created_at"),
        sort_dir=_sort_dir(params),
        limit=_limit(params, options, default=None),
        marker=params.get("marker"),
    )


# -- namespaces ----------------------------------------------------------------------------


def list_namespaces(app, req):
    reject_body(req)
    params = req.GET
    visibility = params.get("visibility")
    if visibility and visibility not in ("public", "private"):
        raise Invalid(f"Invalid visibility value: {visibility}")
    resource_types = tuple(t for t in params.get("resource_types", "").split(",") if t)
    limit = _limit(params, app.options, default=app.options.limit_param_default)
    namespaces = app.service.metadefs.list_namespaces(
        NamespaceFilters(visibility=visibility or None, resource_types=resource_types),
        params.get("sort_key", "created_at"),
        _sort_dir(params),
        limit,
        params.get("marker"),
        _viewer(app, req),
    )
    query = [(k, v) for k, v in params.items() if k != "marker"]
    body = {
        "namespaces": [namespace_view(ns, detail="list") for ns in namespaces],
        "first": NAMESPACES + (f"?{urllib.parse.urlencode(query)}" if query else ""),
        "schema": "/v2/schemas/metadefs/namespaces",
    }
    if namespaces and len(namespaces) == limit:
        body["next"] = NAMESPACES + "?" + urllib.parse.urlencode(query + [("marker", namespaces[-1].namespace)])
    return json_response(body)


def create_namespace(app, req):
    body = read_json(req)
    _check_writable(body, ("self", "schema", "created_at", "updated_at"))
    schemas.validate("namespace", schemas.namespace_schema, body)
    namespace = app.service.metadefs.create_namespace(namespace_from_document(body), _viewer(app, req))
    resp = json_response(namespace_view(namespace, detail="created"), 201)
    resp.location = f"{NAMESPACES}/{urllib.parse.quote(namespace.namespace, safe=':@')}"
    return resp


def show_namespace(app, req, namespace):
    reject_body(req)
    resource_type = req.GET.get("resource_type")
    found = app.service.metadefs.get_namespace(namespace, _viewer(app, req))
    return json_response(namespace_view(found, detail="show", resource_type=resource_type))


def update_namespace(app, req, namespace):
    body = read_json(req)
    _check_writable(body, ("self", "schema", "created_at", "updated_at"))
    schemas.validate("namespace", schemas.namespace_schema, body)
    updated = app.service.metadefs.update_namespace(namespace, body, _viewer(app, req))
    return json_response(namespace_view(updated))


def delete_namespace(app, req, namespace):
    app.service.metadefs.delete_namespace(namespace, _viewer(app, req))
    return no_content()


def delete_objects(app, req, namespace):
    app.service.metadefs.delete_objects(namespace, _viewer(app, req))
    return no_content()


def delete_properties(app, req, namespace):
    app.service.metadefs.delete_properties(namespace, _viewer(app, req))
    return no_content()


def delete_tags(app, req, namespace):
    app.service.metadefs.delete_tags(namespace, _viewer(app, req))
    return no_content()


# -- resource types ------------------------------------------------------------------------


def list_resource_types(app, req):
    reject_body(req)
    types = app.service.metadefs.list_resource_types(_viewer(app, req))
    return json_response({"resource_types": [_times({"name": t.name}, t) for t in types]})


def list_associations(app, req, namespace):
    reject_body(req)
    found = app.service.metadefs.list_associations(namespace, _viewer(app, req))
    return json_response({"resource_type_associations": [association_view(a) for a in found]})


def add_association(app, req, namespace):
    body = read_json(req)
    _check_writable(body, ("created_at", "updated_at"))
    schemas.validate("resource_type", schemas.resource_type_schema, body)
    association = Association(
        name=body["name"], prefix=body.get("prefix"), properties_target=body.get("properties_target")
    )
    added = app.service.metadefs.add_association(namespace, association, _viewer(app, req))
    return json_response(association_view(added), 201)


def remove_association(app, req, namespace, resource_type):
    app.service.metadefs.remove_association(namespace, resource_type, _viewer(app, req))
    return no_content()


# -- objects ------------------------------------------------------------------------------


def _object_from(body: dict) -> MetadefObject:
    return MetadefObject(
        name=body["name"],
        description=body.get("description"),
        required=list(body.get("required") or []),
        properties={name: dict(d) for name, d in (body.get("properties") or {}).items()},
    )


def list_objects(app, req, namespace):
    reject_body(req)
    page = _list_page(req.GET, app.options)
    found = app.service.metadefs.list_objects(namespace, page, _viewer(app, req))
    # Glance's list names its schema without the leading slash; clients do not follow it.
    return json_response(
        {"objects": [object_view(namespace, o) for o in found], "schema": "v2/schemas/metadefs/objects"}
    )


def create_object(app, req, namespace):
    body = read_json(req)
    _check_writable(body, ("self", "schema", "created_at", "updated_at"))
    schemas.validate("object", schemas.object_schema, body)
    for definition in (body.get("properties") or {}).values():
        schemas.validate("property-in-object", lambda: schemas.property_schema(require_name=False), definition)
    created = app.service.metadefs.create_object(namespace, _object_from(body), _viewer(app, req))
    return json_response(object_view(namespace, created), 201)


def show_object(app, req, namespace, object_name):
    reject_body(req)
    found = app.service.metadefs.get_object(namespace, object_name, _viewer(app, req))
    return json_response(object_view(namespace, found))


def update_object(app, req, namespace, object_name):
    body = read_json(req)
    _check_writable(body, ("self", "schema", "created_at", "updated_at"))
    schemas.validate("object", schemas.object_schema, body)
    updated = app.service.metadefs.update_object(namespace, object_name, _object_from(body), _viewer(app, req))
    return json_response(object_view(namespace, updated))


def delete_object(app, req, namespace, object_name):
    app.service.metadefs.delete_object(namespace, object_name, _viewer(app, req))
    return no_content()


# -- properties ----------------------------------------------------------------------------


def _property_from(body: dict) -> PropertyDefinition:
    return PropertyDefinition(body["name"], {k: v for k, v in body.items() if k != "name"})


def list_properties(app, req, namespace):
    reject_body(req)
    found = app.service.metadefs.list_properties(namespace, _viewer(app, req))
    return json_response({"properties": {name: dict(d) for name, d in found.items()}})


def create_property(app, req, namespace):
    body = read_json(req)
    _check_writable(body, ("created_at", "updated_at"))
    schemas.validate("property", schemas.property_schema, body)
    created = app.service.metadefs.create_property(namespace, _property_from(body), _viewer(app, req))
    return json_response(property_view(created), 201)


def show_property(app, req, namespace, property_name):
    reject_body(req)
    resource_type = req.GET.get("resource_type")
    found = app.service.metadefs.get_property(namespace, property_name, _viewer(app, req), resource_type)
    return json_response(property_view(found))


def update_property(app, req, namespace, property_name):
    body = read_json(req)
    _check_writable(body, ("created_at", "updated_at"))
    schemas.validate("property", schemas.property_schema, body)
    updated = app.service.metadefs.update_property(namespace, property_name, _property_from(body), _viewer(app, req))
    return json_response(property_view(updated))


def delete_property(app, req, namespace, property_name):
    app.service.metadefs.delete_property(namespace, property_name, _viewer(app, req))
    return no_content()


# -- tags ----------------------------------------------------------------------------------


def list_tags(app, req, namespace):
    reject_body(req)
    page = _list_page(req.GET, app.options)
    found = app.service.metadefs.list_tags(namespace, page, _viewer(app, req))
    return json_response({"tags": [{"name": t.name} for t in found]})


def create_tags(app, req, namespace):
    body = read_json(req)
    _check_writable(body, ("created_at", "updated_at"))
    schemas.validate("tags", schemas.tags_request_schema, body)
    append = req.headers.get("X-Openstack-Append", "").strip().lower() in _TRUE_WORDS
    names = [t["name"] for t in body.get("tags") or []]
    created = app.service.metadefs.create_tags(namespace, names, append, _viewer(app, req))
    return json_response({"tags": [{"name": t.name} for t in created]}, 201)


def create_tag(app, req, namespace, tag_name):
    schemas.validate("tag", schemas.tag_schema, {"name": tag_name})
    created = app.service.metadefs.create_tag(namespace, tag_name, _viewer(app, req))
    return json_response(tag_view(created), 201)


def show_tag(app, req, namespace, tag_name):
    reject_body(req)
    found = app.service.metadefs.get_tag(namespace, tag_name, _viewer(app, req))
    return json_response(tag_view(found))


def update_tag(app, req, namespace, tag_name):
    body = read_json(req)
    _check_writable(body, ("created_at", "updated_at"))
    schemas.validate("tag", schemas.tag_schema, body)
    updated = app.service.metadefs.update_tag(namespace, tag_name, body["name"], _viewer(app, req))
    return json_response(tag_view(updated))


def delete_tag(app, req, namespace, tag_name):
    app.service.metadefs.delete_tag(namespace, tag_name, _viewer(app, req))
    return no_content()


ROUTES = [
    ("/v2/metadefs/resource_types", {"GET": list_resource_types}),
    (NAMESPACES, {"GET": list_namespaces, "POST": create_namespace}),
    (
        NAMESPACES + "/{namespace}",
        {"GET": show_namespace, "PUT": update_namespace, "DELETE": delete_namespace},
    ),
    (NAMESPACES + "/{namespace}/resource_types", {"GET": list_associations, "POST": add_association}),
    (NAMESPACES + "/{namespace}/resource_types/{resource_type}", {"DELETE": remove_association}),
    (
        NAMESPACES + "/{namespace}/properties",
        {"GET": list_properties, "POST": create_property, "DELETE": delete_properties},
    ),
    (
        NAMESPACES + "/{namespace}/properties/{property_name}",
        {"GET": show_property, "PUT": update_property, "DELETE": delete_property},
    ),
    (NAMESPACES + "/{namespace}/objects", {"GET": list_objects, "POST": create_object, "DELETE": delete_objects}),
    (
        NAMESPACES + "/{namespace}/objects/{object_name}",
        {"GET": show_object, "PUT": update_object, "DELETE": delete_object},
    ),
    (NAMESPACES + "/{namespace}/tags", {"GET": list_tags, "POST": create_tags, "DELETE": delete_tags}),
    (
        NAMESPACES + "/{namespace}/tags/{tag_name}",
        {"GET": show_tag, "POST": create_tag, "PUT": update_tag, "DELETE": delete_tag},
    ),
]
