"""``/v2/images/{id}/members``: sharing an image with other projects."""

from __future__ import annotations

from abbild.errors import Invalid
from abbild.registry import Member
from abbild_api.http import json_response, no_content, read_json, reject_body
from abbild_api.images import timestamp


def member_view(member: Member) -> dict:
    return {
        "member_id": member.member_id,
        "image_id": member.image_id,
        "status": member.status,
        "created_at": timestamp(member.created_at),
        "updated_at": timestamp(member.updated_at),
        "schema": "/v2/schemas/member",
    }


def _string_field(body: dict, name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise Invalid(f"Request body must contain a non-empty string '{name}'.")
    if len(value) > 255:
        raise Invalid(f"'{name}' may be at most 255 characters long.")
    return value


def index(app, req, image_id):
    reject_body(req)
    members = app.service.list_members(image_id, app.context(req).viewer)
    return json_response({"members": [member_view(m) for m in members], "schema": "/v2/schemas/members"})


def create(app, req, image_id):
    member_id = _string_field(read_json(req), "member")
    return json_response(member_view(app.service.add_member(image_id, member_id, app.context(req).viewer)))


def show(app, req, image_id, member_id):
    reject_body(req)
    return json_response(member_view(app.service.get_member(image_id, member_id, app.context(req).viewer)))


def update(app, req, image_id, member_id):
    status = _string_field(read_json(req), "status")
    member = app.service.set_member_status(image_id, member_id, status, app.context(req).viewer)
    return json_response(member_view(member))


def delete(app, req, image_id, member_id):
    reject_body(req)
    app.service.delete_member(image_id, member_id, app.context(req).viewer)
    return no_content()
