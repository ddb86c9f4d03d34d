"""The registry's cache index with ``auth_strategy = keystone`` and a REAL Keystone: an
API node keeps it with its service token alone (cache work happens outside any user's
request, and a hit is counted as the service even inside one); a user's token, even
with the API node's service token, does not reach it; an administrator's does."""

from __future__ import annotations

import json
import urllib.parse

import pytest
import requests

from abbild import config
from abbild.caller import acting_as
from abbild.registry import CacheEntry, Viewer
from abbild.registry_client import HTTPRegistry
from tests.functional import keystone as ks
from tests.functional.conftest import RegistryProcess
from tests.functional.test_registry_keystone import (
    API_NODE_USER,
    OWNER,
    PASSWORD,
    SERVICE_PROJECT,
    registry_conf,  # noqa: F401 - a fixture
    token,
    tokens,  # noqa: F401 - a fixture
)

NODE = "http://api-a.example:9292"
MD5 = "0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def registry(tokens, registry_conf):  # noqa: F811
    """A keystone-mode registry process, and a config file of an API node using it."""
    process = RegistryProcess(registry_conf.parent, [str(registry_conf)])
    process.client_options = (
        f"auth_strategy = keystone\nauth_url = {ks.auth_url()}\nusername = {API_NODE_USER}\n"
        f"password = {PASSWORD}\nproject_name = {SERVICE_PROJECT}\n"
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def client(registry):
    client = HTTPRegistry(config.load([registry.client_config()]))
    for entry in client.cache_entries():
        client.cache_remove(entry.node, entry.image_id)
    yield client
    client.close()


def test_the_api_node_keeps_the_index_with_its_service_token(client, tokens):  # noqa: F811
    with acting_as(Viewer("p1"), tokens["owner"]):  # inside the owner's download, say
        stored = client.cache_put(CacheEntry(NODE, "image-1", "cached", size=3, checksum=MD5))
        client.cache_hit(NODE, "image-1")
        client.cache_hit(NODE, "image-1")
    [entry] = client.cache_entries(NODE)
    assert (entry.image_id, entry.state, entry.hits) == ("image-1", "cached", 2)
    assert entry.last_modified == stored.last_modified and entry.last_accessed is not None
    assert client.cache_entries(image_id="image-2") == []
    assert client.cache_remove(NODE, "image-1") is True
    assert client.cache_entries() == []


def _call(registry, method: str, path: str, body: dict | None = None, **headers) -> requests.Response:
    data = None if body is None else json.dumps(body).encode()
    return requests.request(method, registry.url + path, data=data, headers=headers, timeout=30)


def test_users_do_not_reach_the_index(registry, client, tokens):  # noqa: F811
    client.cache_put(CacheEntry(NODE, "image-1"))
    node = urllib.parse.quote(NODE, safe="")
    calls = [
        ("GET", "/v1/cache", None),
        ("PUT", "/v1/cache", {"node": NODE, "image_id": "image-2"}),
        ("POST", "/v1/cache/hits", {"node": NODE, "image_id": "image-1"}),
        ("DELETE", f"/v1/cache?node={node}&image_id=image-1", None),
    ]
    service = tokens["service"]
    admin = token("abbild-cache-admin", OWNER[1], roles=("admin", "member"))
    for method, path, body in calls:
        as_user = _call(registry, method, path, body, **{"X-Auth-Token": tokens["owner"], "X-Service-Token": service})
        assert as_user.status_code == 403, as_user.text
        assert "cache index is for the service and administrators only" in as_user.text
        assert _call(registry, method, path, body, **{"X-Auth-Token": tokens["owner"]}).status_code == 401
        assert _call(registry, method, path, body).status_code == 401
    assert [(e.image_id, e.hits) for e in client.cache_entries()] == [("image-1", 0)]  # untouched
    for method, path, body in calls:
        as_admin = _call(registry, method, path, body, **{"X-Auth-Token": admin, "X-Service-Token": service})
        assert as_admin.status_code in (200, 204), as_admin.text
    assert client.cache_entries(image_id="image-1") == []
    assert [e.image_id for e in client.cache_entries()] == ["image-2"]
