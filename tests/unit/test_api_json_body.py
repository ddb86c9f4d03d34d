"""The API's JSON answers (abbild_api.http.json_body)."""

import json

from abbild_api.http import json_body, json_response


def test_a_body_is_the_same_json_as_the_json_module_writes():
    value = {"name": "Überbild ✓", "size": 2**63 - 1, "tags": ["a", "b"], "min_ram": 0, "x": None, "ok": True}
    body = json_body(value)
    assert json.loads(body) == value
    assert "Überbild ✓".encode() in body  # UTF-8, not \u escapes


def test_an_integer_beyond_64_bits_falls_back_to_the_json_module():
    # A metadata definition may carry any JSON number; orjson refuses these.
    value = {"maximum": 10**30, "minimum": -(2**64)}
    assert json.loads(json_body(value)) == value


def test_a_response_carries_the_body_as_utf8_json():
    resp = json_response({"images": []}, status=201, x_openstack_request_id="req-1")
    assert resp.status_code == 201
    assert resp.content_type == "application/json"
    assert resp.headers["x-openstack-request-id"] == "req-1"
    assert json.loads(resp.body) == {"images": []}
