"""The ten ``/v2/schemas/metadefs/*`` JSON schemas, in the shape Glance serves them:
glanceclient builds its ``md-*`` commands from them and validates what it sends and
receives against them (warlock), so every field a response carries is in its schema.
The API checks request bodies against the same schemas."""

from __future__ import annotations

import copy

import jsonschema

from abbild.errors import Invalid

_TYPES = ["array", "boolean", "integer", "number", "object", "string", None]  # None: Glance lists null too


def _time(what: str) -> dict:
    return {"type": "string", "readOnly": True, "description": what, "format": "date-time"}


def _definitions(*, string_array_min_items: bool) -> dict:
    string_array = {"type": "array", "items": {"type": "string"}, "uniqueItems": True}
    if string_array_min_items:
        string_array["minItems"] = 1
    return {
        "positiveInteger": {"type": "integer", "minimum": 0},
        "positiveIntegerDefault0": {"allOf": [{"$ref": "#/definitions/positiveInteger"}, {"default": 0}]},
        "stringArray": string_array,
    }


def _property_fields() -> dict:
    """What a property definition may say (Glance's PropertyType)."""
    return {
        "name": {"type": "string", "maxLength": 80},
        "title": {"type": "string"},
        "description": {"type": "string"},
        "operators": {"type": "array", "items": {"type": "string"}},
        "type": {"type": "string", "enum": list(_TYPES)},
        "required": {"$ref": "#/definitions/stringArray"},
        "minimum": {"type": "number"},
        "maximum": {"type": "number"},
        "maxLength": {"$ref": "#/definitions/positiveInteger"},
        "minLength": {"$ref": "#/definitions/positiveIntegerDefault0"},
        "pattern": {"type": "string", "format": "regex"},
        "enum": {"type": "array"},
        "readonly": {"type": "boolean"},
        "confidential": {"type": "boolean"},
        "default": {},
        "items": {
            "type": "object",
            "properties": {"type": {"type": "string", "enum": list(_TYPES)}, "enum": {"type": "array"}},
        },
        "maxItems": {"$ref": "#/definitions/positiveInteger"},
        "minItems": {"$ref": "#/definitions/positiveIntegerDefault0"},
        "uniqueItems": {"type": "boolean", "default": False},
        "additionalItems": {"type": "boolean"},
    }


def _namespace_definitions() -> dict:
    definitions = _definitions(string_array_min_items=False)
    definitions["property"] = {
        "type": "object",
        "additionalProperties": {"type": "object", "required": ["title", "type"], "properties": _property_fields()},
    }
    return definitions


def _association_fields() -> dict:
    return {
        "name": {"type": "string"},
        "prefix": {"type": "string"},
        "properties_target": {"type": "string"},
    }


def namespace_schema() -> dict:
    return {
        "name": "namespace",
        "properties": {
            "namespace": {"type": "string", "description": "The unique namespace text.", "maxLength": 80},
            "display_name": {
                "type": "string",
                "description": "The user friendly name for the namespace. Used by UI if available.",
                "maxLength": 80,
            },
            "description": {
                "type": "string",
                "description": "Provides a user friendly description of the namespace.",
                "maxLength": 500,
            },
            "visibility": {
                "type": "string",
                "description": "Scope of namespace accessibility.",
                "enum": ["public", "private"],
            },
            "protected": {"type": "boolean", "description": "If true, namespace will not be deletable."},
            "owner": {"type": "string", "description": "Owner of the namespace.", "maxLength": 255},
            "created_at": _time("Date and time of namespace creation"),
            "updated_at": _time("Date and time of the last namespace modification"),
            "schema": {"type": "string", "readOnly": True},
            "self": {"type": "string", "readOnly": True},
            "resource_type_associations": {
                "type": "array",
                "items": {"type": "object", "properties": _association_fields()},
            },
            "properties": {"$ref": "#/definitions/property"},
            "objects": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "description": {"type": "string"},
                        "required": {"$ref": "#/definitions/stringArray"},
                        "properties": {"$ref": "#/definitions/property"},
                    },
                },
            },
            "tags": {
                "type": "array",
                "items": {"type": "object", "properties": {"name": {"type": "string"}}},
            },
        },
        "additionalProperties": False,
        "definitions": _namespace_definitions(),
        "required": ["namespace"],
    }


def object_schema() -> dict:
    return {
        "name": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 80},
            "description": {"type": "string"},
            "required": {"$ref": "#/definitions/stringArray"},
            "properties": {"$ref": "#/definitions/property"},
            "schema": {"type": "string", "readOnly": True},
            "self": {"type": "string", "readOnly": True},
            "created_at": _time("Date and time of object creation"),
            "updated_at": _time("Date and time of the last object modification"),
        },
        "additionalProperties": False,
        "definitions": _namespace_definitions(),
        "required": ["name"],
    }


def property_schema(*, require_name: bool = True) -> dict:
    return {
        "name": "property",
        "properties": _property_fields(),
        "additionalProperties": False,
        "definitions": _definitions(string_array_min_items=True),
        "required": ["title", "type", *(["name"] if require_name else [])],
    }


def resource_type_schema() -> dict:
    fields = _association_fields()
    fields["name"].update(
        maxLength=80,
        description="Resource type names should be aligned with Heat resource types whenever possible: "
        "https://docs.openstack.org/heat/latest/template_guide/openstack.html",
    )
    fields["prefix"].update(
        maxLength=80,
        description="Specifies the prefix to use for the given resource type. Any properties in the namespace "
        "should be prefixed with this prefix when being applied to the specified resource type. Must include "
        "prefix separator (e.g. a colon :).",
    )
    fields["properties_target"].update(
        maxLength=80,
        description="Some resource types allow more than one key / value pair per instance.  For example, Cinder "
        "allows user and image metadata on volumes. Only the image properties metadata is evaluated by Nova "
        "(scheduling or drivers). This property allows a namespace target to remove the ambiguity.",
    )
    fields["created_at"] = _time("Date and time of resource type association")
    fields["updated_at"] = _time("Date and time of the last resource type association modification")
    return {
        "name": "resource_type_association",
        "properties": fields,
        "additionalProperties": False,
        "required": ["name"],
    }


def tag_schema() -> dict:
    return {
        "name": "tag",
        "properties": {
            "name": {"type": "string", "maxLength": 80},
            "created_at": _time("Date and time of tag creation"),
            "updated_at": _time("Date and time of the last tag modification"),
        },
        "additionalProperties": False,
        "required": ["name"],
    }


def tags_request_schema() -> dict:
    """The body of the bulk ``POST .../tags``."""
    return {
        "name": "tags",
        "properties": {
            "tags": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}},
                    "required": ["name"],
                    "additionalProperties": False,
                },
            }
        },
        "additionalProperties": False,
    }


_LINKS = [
    {"rel": "first", "href": "{first}"},
    {"rel": "next", "href": "{next}"},
    {"rel": "describedby", "href": "{schema}"},
]


def _collection(name: str, item: dict, *, as_dict: bool = False) -> dict:
    """Glance's CollectionSchema (an array of items) or DictCollectionSchema (an object
    of them): the item's definitions move to the top."""
    item = copy.deepcopy(item)
    definitions = item.pop("definitions", None)
    container = {"type": "object", "additionalProperties": item} if as_dict else {"type": "array", "items": item}
    schema = {
        "name": name,
        "properties": {
            name: container,
            "first": {"type": "string"},
            "next": {"type": "string"},
            "schema": {"type": "string"},
        },
        "links": copy.deepcopy(_LINKS),
    }
    if definitions:
        schema["definitions"] = definitions
    return schema


def namespaces_schema() -> dict:
    return _collection("namespaces", namespace_schema())


def objects_schema() -> dict:
    return _collection("objects", object_schema())


def properties_schema() -> dict:
    return _collection("properties", property_schema(require_name=False), as_dict=True)


def resource_types_schema() -> dict:
    return _collection("resource_type_associations", resource_type_schema())


def tags_schema() -> dict:
    return _collection("tags", tag_schema())


#: ``/v2/schemas/metadefs/<name>``
SCHEMAS = {
    "namespace": namespace_schema,
    "namespaces": namespaces_schema,
    "object": object_schema,
    "objects": objects_schema,
    "property": property_schema,
    "properties": properties_schema,
    "resource_type": resource_type_schema,
    "resource_types": resource_types_schema,
    "tag": tag_schema,
    "tags": tags_schema,
}

_VALIDATORS: dict[str, jsonschema.Draft4Validator] = {}


def validate(schema_name: str, build, body) -> None:
    """:raises abbild.errors.Invalid: *body* does not match the schema *build* returns,
    in Glance's words plus where."""
    validator = _VALIDATORS.get(schema_name)
    if validator is None:
        validator = _VALIDATORS[schema_name] = jsonschema.Draft4Validator(build())
    error = jsonschema.exceptions.best_match(validator.iter_errors(body))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path)
        name = build()["name"]
        raise Invalid(
            f"Provided object does not match schema '{name}': {error.message}" + (f" (at '{where}')" if where else "")
        )
