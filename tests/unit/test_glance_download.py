"""glance-download's request checks (GLANCE-API 8.1) and how the caller's token goes
from the request to the background import. The download itself, with a real Keystone
and a second region: tests/functional/test_glance_download.py."""

from __future__ import annotations

import uuid

import pytest

from abbild import caller, glance_download
from abbild.errors import Invalid
from abbild.registry import Viewer

REMOTE = str(uuid.uuid4())
VIEWER = Viewer(project_id="p1", user_id="u1", roles=("member",))


def validated(method: dict, token: str | None = "a-token") -> dict:
    body = {"method": {"name": "glance-download", **method}}
    with caller.acting_as(VIEWER, token):
        glance_download.validate(None, body)
    return body


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ({"glance_image_id": REMOTE}, "needs the region to download from in method.glance_region"),
        ({"glance_image_id": REMOTE, "glance_region": " "}, "method.glance_region"),
        ({"glance_region": "R2"}, "needs the id of the image to download in method.glance_image_id"),
        ({"glance_region": "R2", "glance_image_id": "not-a-uuid"}, "'not-a-uuid' is not an image id"),
        ({"glance_region": "R2", "glance_image_id": 7}, "method.glance_image_id"),
        (
            {"glance_region": "R2", "glance_image_id": REMOTE, "glance_service_interface": "private"},
            "must be one of public, internal, admin, not 'private'",
        ),
    ],
)
def test_bad_requests_are_400(method, message):
    with pytest.raises(Invalid, match=message):
        validated(method)


def test_interface_defaults_to_public_and_the_token_is_kept_for_the_import():
    body = validated({"glance_region": "R2", "glance_image_id": REMOTE})
    assert body["method"]["glance_service_interface"] == "public"
    assert "a-token" not in repr(body)  # the body is the task's input: shown and stored
    assert glance_download._tokens.take(body) == ("a-token", "p1")
    assert glance_download._tokens.take(body) is None  # handed over once


def test_another_body_gets_nothing():
    validated({"glance_region": "R2", "glance_image_id": REMOTE})
    assert glance_download._tokens.take({"method": {"glance_region": "R2", "glance_image_id": REMOTE}}) is None


def test_without_a_keystone_token_it_says_what_the_service_needs():
    with pytest.raises(Invalid, match=r"flavor = keystone"):
        validated({"glance_region": "R2", "glance_image_id": REMOTE}, token=None)


def test_fetch_without_the_token_fails_with_advice():
    body = {"method": {"name": "glance-download", "glance_region": "R2", "glance_image_id": REMOTE}}
    with pytest.raises(glance_download.RemoteImageError, match="import the image again"):
        glance_download.fetch(None, None, body, VIEWER)


def test_tokens_of_imports_that_never_started_expire(monkeypatch):
    body = validated({"glance_region": "R2", "glance_image_id": REMOTE})
    monkeypatch.setattr(glance_download, "PENDING_SECONDS", -1)
    validated({"glance_region": "R2", "glance_image_id": REMOTE})  # any later request prunes
    assert glance_download._tokens.take(body) is None
