"""``/v2/images``: create, list, show, update (json-patch), delete, tags, actions."""

from __future__ import annotations

import datetime
import operator
import re
import urllib.parse
import uuid

import jsonschema
import webob.exc as exc

from abbild.errors import Conflict, Forbidden, Invalid
from abbild.image import HASH_LENGTHS, Image, Status
from abbild.imports import HIDDEN_PROPERTIES
from abbild.registry import IN_FILTERS, NUMBER_FILTERS, SORT_KEYS, TIME_OPERATORS, ImageFilters
from abbild_api import schemas
from abbild_api.http import image_cache, json_response, no_content, read_json, reject_body

# Settable base attributes; everything else a client writes is an extra property.
WRITABLE = (
    "name",
    "visibility",
    "protected",
    "os_hidden",
    "owner",
    "container_format",
    "disk_format",
    "min_ram",
    "min_disk",
    "tags",
)
_BASE = (
    "id",
    "name",
    "status",
    "visibility",
    "protected",
    "os_hidden",
    "owner",
    "disk_format",
    "container_format",
    "size",
    "virtual_size",
    "checksum",
    "os_hash_algo",
    "os_hash_value",
    "min_disk",
    "min_ram",
)
_BASE_VALUES = operator.attrgetter(*_BASE)
PATCH_TYPES = ("application/openstack-images-v2.1-json-patch", "application/openstack-images-v2.0-json-patch")
_VALIDATOR = jsonschema.Draft4Validator(schemas.image_validation_schema())


def timestamp(value: datetime.datetime | None) -> str | None:
    if not value:
        return None
    if value.tzinfo is None and value.year >= 1000:  # isoformat: a third of strftime's time
        return value.isoformat(timespec="seconds") + "Z"
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def image_view(image: Image, options) -> dict:
    """The image as the API shows it; pass it through ``service.readable`` first.
    *options* (the app's :class:`abbild_api.app.ApiOptions`, or the conf) decides whether
    locations are shown (``show_multiple_locations``, ``show_image_direct_url``)."""
    properties = image.properties
    if HIDDEN_PROPERTIES.isdisjoint(properties):
        view = dict(properties)
    else:
        view = {name: value for name, value in properties.items() if name not in HIDDEN_PROPERTIES}
    view.update(zip(_BASE, _BASE_VALUES(image)))
    view["status"] = image.status._value_
    view["created_at"] = timestamp(image.created_at)
    view["updated_at"] = timestamp(image.updated_at)
    view["tags"] = sorted(image.tags)
    view["self"] = f"/v2/images/{image.id}"
    view["file"] = f"/v2/images/{image.id}/file"
    view["schema"] = "/v2/schemas/image"
    active = [loc for loc in image.locations if loc.status == "active"]
    if active:
        view["stores"] = ",".join(dict.fromkeys(loc.store for loc in active))
    if options.show_multiple_locations:
        view["locations"] = [location_view(loc) for loc in active]
    if options.show_image_direct_url and active:
        view["direct_url"] = active[0].uri
    return view


def location_view(location) -> dict:
    return {"url": location.uri, "metadata": {**location.metadata, "store": location.store}}


def _validate(values: dict, options) -> None:
    error = jsonschema.exceptions.best_match(_VALIDATOR.iter_errors(values))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path)
        raise Invalid(
            f"Provided object does not match schema 'image': {error.message}" + (f" (at '{where}')" if where else "")
        )
    longest = options.max_property_value_length
    for name, value in values.items():
        if name not in schemas.IMAGE_PROPERTIES and isinstance(value, str) and len(value) > longest:
            raise Invalid(
                f"Property '{name}' is {len(value)} characters long; a property value may have at most "
                f"{longest} characters (max_property_value_length)."
            )


def _check_settable(name: str) -> None:
    if name in schemas.READ_ONLY or name == "locations":
        raise Forbidden(f"Attribute '{name}' is read-only.")
    if name in schemas.RESERVED or name.startswith("os_glance"):
        raise Forbidden(f"Attribute '{name}' is reserved.")
    if len(name) > 255:
        raise Invalid(f"Property name '{name[:40]}...' is longer than 255 characters.")


def _apply(image: Image, values: dict) -> None:
    """Write validated client values (base attributes and extra properties) onto *image*."""
    image.properties = {}
    for name, value in values.items():
        if name == "tags":
            image.tags = set(value)
        elif name in WRITABLE:
            setattr(image, name, value)
        elif value is not None:  # a null extra property (kernel_id, ramdisk_id) is no property
            image.properties[name] = value


def _writable_view(image: Image) -> dict:
    values = dict(image.properties)
    values.update({name: getattr(image, name) for name in WRITABLE})
    values["tags"] = sorted(image.tags)
    return values


# -- create -------------------------------------------------------------------------------


def new_image(app, ctx, body: dict) -> Image:
    """Create the image a ``POST /v2/images`` body describes (also the legacy import
    task's ``image_properties``), checked as that request is."""
    body = dict(body)
    for name in body:
        if name == "id":
            continue
        _check_settable(name)
    image_id = body.pop("id") if "id" in body else str(uuid.uuid4())  # null or "" fail validation
    _validate({"id": image_id, **body}, app.options)
    owner = body.get("owner", ctx.project_id)
    image = Image(id=image_id.lower(), owner=owner)
    values = _writable_view(image)
    values.update(body)
    values["tags"] = sorted(set(values["tags"]))
    _apply(image, values)
    return app.service.create(image, ctx.viewer)


def create(app, req):
    body = read_json(req)
    ctx = app.context(req)
    image = new_image(app, ctx, body)
    resp = json_response(image_view(app.service.readable(image, ctx.viewer), app.options), 201)
    resp.location = f"/v2/images/{image.id}"
    resp.headers["OpenStack-image-store-ids"] = ",".join(s.name for s in app.service.stores if not s.read_only)
    if app.service.imports.methods:
        resp.headers["OpenStack-image-import-methods"] = ",".join(app.service.imports.methods)
    return resp


# -- list ---------------------------------------------------------------------------------


def _split_in(value: str) -> list[str]:
    """``in:a,"b, c",d`` -> ['a', 'b, c', 'd']."""
    values, current, quoted = [], "", False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            values.append(current)
            current = ""
        else:
            current += ch
    if quoted:
        raise Invalid(f"Unmatched quote in filter value {value!r}.")
    return values + [current]


def _bool(name: str, value: str) -> bool:
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise Invalid(f"Invalid value '{value}' for {name}: expected true or false.")


def _int(name: str, value: str, minimum: int = 0, maximum: int | None = schemas.INT64_MAX) -> int:
    shown = value if len(value) <= 40 else value[:40] + "..."
    try:
        number = int(value)
    except ValueError:
        raise Invalid(f"Invalid value '{shown}' for {name}: expected an integer.") from None
    if number < minimum:
        raise Invalid(f"Invalid value '{shown}' for {name}: must be at least {minimum}.")
    if maximum is not None and number > maximum:
        raise Invalid(f"Invalid value '{shown}' for {name}: must be at most {maximum}.")
    return number


def _time(name: str, value: str) -> tuple[str, str, datetime.datetime]:
    op, sep, when = value.partition(":")
    if not sep or op not in TIME_OPERATORS:
        raise Invalid(
            f"Invalid operator '{op}' for {name}: use one of {', '.join(TIME_OPERATORS)}, e.g. gte:2024-01-01T00:00:00Z"
        )
    try:
        parsed = datetime.datetime.fromisoformat(when.replace("Z", "+00:00"))
    except ValueError:
        raise Invalid(f"Invalid time '{when}' for {name}: use ISO 8601, e.g. 2024-01-01T00:00:00Z") from None
    if parsed.tzinfo is not None:
        try:
            parsed = parsed.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        except OverflowError:
            raise Invalid(f"Invalid time '{when}' for {name}: in UTC it falls outside the years 1 to 9999.") from None
    return name, op, parsed


def _sort(params) -> list[tuple[str, str]]:
    keys, dirs, sort = params.getall("sort_key"), params.getall("sort_dir"), params.getall("sort")
    if sort and (keys or dirs):
        raise Invalid("The 'sort' parameter cannot be combined with 'sort_key' or 'sort_dir'.")
    pairs = []
    if sort:
        for item in ",".join(sort).split(","):
            key, _, direction = item.strip().partition(":")
            pairs.append((key, direction or "desc"))
    else:
        if len(dirs) > 1 and len(dirs) != len(keys):
            raise Invalid("The number of sort_dir values must be 1 or equal to the number of sort_key values.")
        if dirs and not keys:
            keys = ["created_at"]
        directions = dirs if len(dirs) > 1 else (dirs or ["desc"]) * max(1, len(keys))
        pairs = list(zip(keys, directions))
    for key, direction in pairs:
        if key not in SORT_KEYS:
            raise Invalid(f"Invalid sort key '{key}'; valid keys: {', '.join(SORT_KEYS)}.")
        if direction not in ("asc", "desc"):
            raise Invalid(f"Invalid sort direction '{direction}'; use asc or desc.")
    return pairs


def parse_list_params(params, options) -> tuple[ImageFilters, list, int, str | None]:
    f = ImageFilters()
    limit, marker = options.limit_param_default, None
    for name, value in params.items():
        if name in ("sort_key", "sort_dir", "sort"):
            continue
        if name == "limit":
            limit = min(_int("limit", value, maximum=None), options.api_limit_max)  # never reaches the database
        elif name == "marker":
            marker = value
        elif name in IN_FILTERS:
            if value.startswith("in:"):
                f.values[name] = _split_in(value[3:])
            elif re.match(r"^[a-z]+:", value) and name != "name":
                raise Invalid(f"Invalid operator in filter {name}={value}; only 'in:' is supported.")
            else:
                f.values[name] = [value]
        elif name == "visibility":
            if value not in ("public", "private", "shared", "community", "all"):
                raise Invalid(f"Invalid visibility value: {value}")
            f.visibility = value
        elif name == "member_status":
            if value not in ("pending", "accepted", "rejected", "all"):
                raise Invalid(f"Invalid status value: {value}")
            f.member_status = value
        elif name in ("size_min", "size_max"):
            setattr(f, name, _int(name, value))
        elif name in NUMBER_FILTERS:
            column_max = schemas.INT32_MAX if name.startswith("min_") else schemas.INT64_MAX
            f.numbers[name] = _int(name, value, maximum=column_max)
        elif name in ("owner", "checksum", "os_hash_value"):
            setattr(f, name, value)
        elif name == "tag":
            f.tags.append(value)
        elif name in ("protected", "os_hidden"):
            setattr(f, name, _bool(name, value))
        elif name in ("created_at", "updated_at"):
            f.times.append(_time(name, value))
        elif name == "changes-since":
            raise Invalid("The 'changes-since' filter is no longer available on v2.")
        else:
            f.properties[name] = value
    return f, _sort(params), limit, marker


def _unreadable(app, name: str, viewer) -> bool:
    """Whether property protections hide extra property *name* from *viewer*."""
    protections = app.service.protections
    return protections is not None and not protections.allows(name, "read", viewer)


def index(app, req):
    filters, sort, limit, marker = parse_list_params(req.GET, app.options)
    viewer = app.context(req).viewer
    for name in filters.properties:
        # The answer would tell whether some image holds that value.
        if _unreadable(app, name, viewer):
            raise Forbidden(f"Property '{name}' is protected: you may not read it, so you may not filter images by it.")
    images = app.service.list(filters, sort, limit, marker, viewer)
    query = [(k, v) for k, v in req.GET.items() if k != "marker"]
    body = {
        "images": [image_view(app.service.readable(i, viewer), app.options) for i in images],
        "first": "/v2/images" + (f"?{urllib.parse.urlencode(query)}" if query else ""),
        "schema": "/v2/schemas/images",
    }
    if images and len(images) == limit:
        body["next"] = "/v2/images?" + urllib.parse.urlencode(query + [("marker", images[-1].id)])
    return json_response(body)


# -- show / update / delete -----------------------------------------------------------------


def show(app, req, image_id):
    reject_body(req)
    viewer = app.context(req).viewer
    return json_response(image_view(app.service.readable(app.service.get(image_id, viewer), viewer), app.options))


def _pointer(path) -> str:
    if not isinstance(path, str) or not path.startswith("/"):
        raise Invalid(f'Pointer `{path}` does not start with "/".')
    if path.endswith("/") or "//" in path:
        raise Invalid(f'Pointer `{path}` contains adjacent "/".')
    if re.search(r"~(?![01])", path):
        raise Invalid(f'Pointer `{path}` contains "~" not part of a recognized escape sequence.')
    parts = path[1:].split("/")
    if len(parts) > 1:
        raise Invalid(f"Nested paths are not allowed: `{path}`.")
    return parts[0].replace("~1", "/").replace("~0", "~")


def parse_patch(req) -> list[tuple[str, str, object]]:
    content_type = req.headers.get("Content-Type", "").split(";")[0].strip()
    if content_type not in PATCH_TYPES:
        raise exc.HTTPUnsupportedMediaType(
            explanation=f"Unsupported Content-Type {content_type or '(none)'}: use {PATCH_TYPES[0]}",
            headers={"Accept-Patch": ", ".join(reversed(PATCH_TYPES))},
        )
    body = read_json(req, kind=(list,))
    legacy = content_type == PATCH_TYPES[1]
    ops = []
    for change in body:
        if not isinstance(change, dict):
            raise Invalid("Each change must be a JSON object.")
        if legacy:
            found = [op for op in ("add", "remove", "replace") if op in change]
            if len(found) != 1:
                raise Invalid("Each change must name exactly one operation: add, remove or replace.")
            op, path = found[0], change[found[0]]
        else:
            op, path = change.get("op"), change.get("path")
            if op not in ("add", "remove", "replace"):
                raise Invalid(f"Invalid operation: `{op}`; use add, remove or replace.")
            if "path" not in change:
                raise Invalid("Unable to find `path` in the change.")
        if op != "remove" and "value" not in change:
            raise Invalid(f"Unable to find `value` in the change of {path}.")
        if isinstance(path, str) and (path == "/locations" or path.startswith("/locations/")):
            ops.append((op, "locations", (path, change.get("value")), legacy))
            continue
        name = _pointer(path)
        if op == "remove" and name == "stores":
            continue  # computed from the locations; openstacksdk's update_image removes it as a stale extra
        _check_settable(name)
        ops.append((op, name, change.get("value"), legacy))
    return ops


def _validation_data(value) -> dict | None:
    """The shape of ``validation_data``; whether the values fit the image (409 when
    they differ from its hashes, as Glance) is the service's to say."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"checksum", "os_hash_algo", "os_hash_value"}:
        raise Invalid("validation_data may hold checksum, os_hash_algo and os_hash_value only.")
    if ("os_hash_algo" in value) != ("os_hash_value" in value):
        raise Invalid("validation_data needs os_hash_algo and os_hash_value together.")
    algo = value.get("os_hash_algo")
    if algo is not None and algo not in HASH_LENGTHS:
        raise Invalid(f"os_hash_algo {algo!r} is not one of {', '.join(HASH_LENGTHS)}.")
    for name in ("checksum", "os_hash_value"):
        if name in value and not (isinstance(value[name], str) and re.fullmatch("[0-9a-f]{1,128}", value[name])):
            raise Invalid(f"validation_data {name} must be lower-case hex digits.")
    return value


def _location_value(value) -> tuple[str, dict, dict | None]:
    if not isinstance(value, dict) or not isinstance(value.get("url"), str) or not value["url"]:
        raise Invalid("A location is an object with a non-empty string 'url' and an object 'metadata'.")
    metadata = value.get("metadata", {})
    if not isinstance(metadata, dict):
        raise Invalid("A location's 'metadata' must be an object.")
    if len(value["url"]) > 2048:
        raise Invalid("A location's url may be at most 2048 characters long.")
    return value["url"], metadata, _validation_data(value.get("validation_data"))


def _change_location(app, ctx, image_id, op, path, value) -> Image:
    """One json-patch change of ``/locations`` (the legacy location API); the image after it."""
    if not app.options.show_multiple_locations:
        raise Forbidden(
            "Locations are not shown here (show_multiple_locations is off), so they cannot be changed "
            f"through PATCH; register one with POST /v2/images/{image_id}/locations instead."
        )
    if op == "add":
        if not re.fullmatch(r"/locations/(-|\d+)", path):
            raise Invalid(f"Add a location at /locations/- (or /locations/<index>), not {path}.")
        url, metadata, validation = _location_value(value)
        return app.service.locations.add(image_id, url, metadata, validation, ctx.viewer)
    if op == "remove":
        m = re.fullmatch(r"/locations/(\d+)", path)
        if not m:
            raise Invalid(f"Remove a location by its index: /locations/<index>, not {path}.")
        return app.service.locations.remove(image_id, int(m.group(1)), ctx.viewer)
    if path == "/locations" and value == []:
        raise Forbidden("Cannot remove every location of an image: delete the image instead.")
    if path == "/locations" and isinstance(value, list):
        locations = [_location_value(location)[:2] for location in value]
        return app.service.locations.replace_metadata(image_id, locations, ctx.viewer)
    raise Invalid(f"Replace /locations as a whole (its metadata only), not {path}.")


def update(app, req, image_id):
    ops = parse_patch(req)
    ctx = app.context(req)
    location_ops = [o for o in ops if o[1] == "locations"]
    for op, _, (path, value), _ in location_ops:
        image = _change_location(app, ctx, image_id, op, path, value)
    ops = [o for o in ops if o[1] != "locations"]
    if location_ops and not ops:
        return json_response(image_view(app.service.readable(image, ctx.viewer), app.options))

    def change(image: Image) -> None:
        values = _writable_view(image)
        for op, name, value, legacy in ops:
            base = name in schemas.IMAGE_PROPERTIES
            if not base and _unreadable(app, name, ctx.viewer):
                # The same answer whether the image has it or not: nothing to learn from it.
                raise Forbidden(f"Property '{name}' is protected: you may not read it, so you may not change it.")
            if op == "remove":
                if base:
                    raise Forbidden(f"Properties {name} may not be removed.")
                if name not in values:
                    raise Conflict(f"Property {name} does not exist.")
                del values[name]
                continue
            if op == "replace" and name not in values and not base:
                raise Conflict(f"Property {name} does not exist.")
            if op == "add" and legacy and name in values:  # base attributes always exist
                raise Conflict(f"Property {name} already present.")
            if (
                name in ("disk_format", "container_format")
                and image.status is not Status.QUEUED
                and value != values.get(name)
            ):
                raise Forbidden(f"Attribute {name} can be only replaced for a queued image.")
            if name == "owner" and value != image.owner and not ctx.is_admin:
                raise Forbidden("Only administrators may change the owner of an image.")
            if name == "tags" and isinstance(value, list) and all(isinstance(tag, str) for tag in value):
                value = sorted(set(value))  # anything else fails validation below, with a message
            values[name] = value
        _validate({"id": image.id, **values}, app.options)
        _apply(image, values)

    image = app.service.update(image_id, change, ctx.viewer)
    return json_response(image_view(app.service.readable(image, ctx.viewer), app.options))


def add_location(app, req, image_id):
    """``POST /v2/images/{id}/locations`` (API 2.17): 202, and the image becomes active
    once its data was read and hashed in the background."""
    body = read_json(req)
    unknown = set(body) - {"url", "validation_data"}
    if unknown:
        raise Invalid(f"Unknown field(s) {', '.join(sorted(unknown))}: a location has url and validation_data.")
    url, _, validation = _location_value(body)
    app.service.locations.import_(image_id, url, validation, app.context(req).viewer)
    return no_content(202)


def list_locations(app, req, image_id):
    reject_body(req)
    locations = app.service.locations.list(image_id, app.context(req).viewer)
    return json_response([location_view(loc) for loc in locations])


def delete(app, req, image_id):
    reject_body(req)
    app.service.deletes.delete(image_id, app.context(req).viewer, cache=image_cache(req))
    return no_content()


def delete_from_store(app, req, store, image_id):
    reject_body(req)
    app.service.deletes.delete_from_store(image_id, store, app.context(req).viewer)
    return no_content()


# -- tags and actions ---------------------------------------------------------------------


def add_tag(app, req, image_id, tag):
    reject_body(req)
    if len(tag) > 255:
        raise Invalid("Tags may be at most 255 characters long.")
    app.service.update(image_id, lambda image: image.tags.add(tag), app.context(req).viewer)
    return no_content()


def delete_tag(app, req, image_id, tag):
    reject_body(req)

    def change(image: Image) -> None:
        if tag not in image.tags:
            raise exc.HTTPNotFound(explanation=f"Tag {tag} not found on image {image_id}.")
        image.tags.discard(tag)

    app.service.update(image_id, change, app.context(req).viewer)
    return no_content()


def deactivate(app, req, image_id):
    reject_body(req)
    app.service.set_active(image_id, False, app.context(req).viewer, cache=image_cache(req))
    return no_content()


def reactivate(app, req, image_id):
    reject_body(req)
    app.service.set_active(image_id, True, app.context(req).viewer)
    return no_content()
