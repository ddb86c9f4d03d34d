"""Discovery: ``/v2/info/import``, ``/v2/info/stores`` and ``/v2/info/stores/detail``, and
the schemas."""

from __future__ import annotations

from abbild_api import metadef_schemas, schemas
from abbild_api.http import json_response, reject_body


def import_methods(app, req):
    methods = app.service.imports.methods
    return json_response(
        {"import-methods": {"description": "Import methods available.", "type": "array", "value": methods}}
    )


def _store(app, store, detail: bool) -> dict:
    entry = {"id": store.name, "description": store.description}
    if store is app.service.stores.default:
        entry["default"] = "true"
    if store.read_only:
        entry["read-only"] = "true"
    if detail:
        entry.update(type=store.driver_name, weight=store.weight, properties=store.driver.properties())
    return entry


def stores(app, req):
    return json_response({"stores": [_store(app, s, False) for s in app.service.stores]})


def stores_detail(app, req):
    app.service.policy.authorize("stores_info_detail", app.context(req).viewer)
    return json_response({"stores": [_store(app, s, True) for s in app.service.stores]})


def usage(app, req):
    reject_body(req)
    return json_response({"usage": app.service.usage(app.context(req).viewer)})


def schema(builder):
    def handler(app, req):
        reject_body(req)
        return json_response(builder())

    return handler


SCHEMAS = {
    "image": schema(schemas.image_schema),
    "images": schema(schemas.images_schema),
    "member": schema(schemas.member_schema),
    "members": schema(schemas.members_schema),
    "task": schema(schemas.task_schema),
    "tasks": schema(schemas.tasks_schema),
    **{f"metadefs/{name}": schema(build) for name, build in metadef_schemas.SCHEMAS.items()},
}
