"""The ``glance`` and ``openstack`` command-line clients, run as subprocesses against a real
``abbild serve``, with no Keystone: as README.md tells users to run them.

Each test prepares its images over plain HTTP (fast) and runs only the commands it is
about; every image carries the test's own unique tag."""

from __future__ import annotations

import hashlib
import json
import os
import uuid

import pytest
import requests

from tests.functional.clis import executable, run

SIZE = 1024 * 1024 + 77


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    """No OS_* settings from the caller; a private HOME (glance caches schemas there)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env["HOME"] = str(tmp_path_factory.mktemp("home"))
    return env


@pytest.fixture
def glance(server, cli_env):
    def glance(*args, ok=True, env=cli_env):
        return run([executable("glance"), "--os-image-url", server.url, "--os-auth-token", "x", *args], env, ok)

    return glance


OPENSTACK_AUTH = {
    # README.md: auth type "none" with the unversioned endpoint (found through the versions document)
    "none": lambda url: ["--os-auth-type", "none", "--os-endpoint", url],
    # an admin token plugin gets the endpoint as-is: it must name the version
    "admin_token": lambda url: ["--os-auth-type", "admin_token", "--os-endpoint", f"{url}/v2", "--os-token", "x"],
}


@pytest.fixture
def openstack(server, cli_env):
    def openstack(*args, ok=True, auth="none"):
        proc = run([executable("openstack"), *OPENSTACK_AUTH[auth](server.url), *args], cli_env, ok)
        return json.loads(proc.stdout) if ok and "json" in args else proc

    return openstack


@pytest.fixture(scope="module")
def payload():
    return os.urandom(SIZE)


@pytest.fixture
def payload_file(payload, tmp_path):
    path = tmp_path / "disk.raw"
    path.write_bytes(payload)
    return path


@pytest.fixture
def tag():
    return f"cli-{uuid.uuid4().hex}"


# -- plain-HTTP helpers for setup and checks ----------------------------------------------------


def api_get(server, image_id) -> dict:
    resp = requests.get(f"{server.url}/v2/images/{image_id}", timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


def api_image(server, tag, data=None, **attrs) -> dict:
    body = {"name": tag, "disk_format": "raw", "container_format": "bare", "tags": [tag], **attrs}
    resp = requests.post(f"{server.url}/v2/images", json=body, timeout=10)
    assert resp.status_code == 201, resp.text
    image_id = resp.json()["id"]
    if data is not None:
        resp = requests.put(
            f"{server.url}/v2/images/{image_id}/file",
            data=data,
            timeout=30,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert resp.status_code == 204, resp.text
    return api_get(server, image_id)


def api_patch(server, image_id, **values) -> None:
    ops = [{"op": "replace", "path": f"/{k}", "value": v} for k, v in values.items()]
    resp = requests.patch(
        f"{server.url}/v2/images/{image_id}",
        json=ops,
        timeout=10,
        headers={"Content-Type": "application/openstack-images-v2.1-json-patch"},
    )
    assert resp.status_code == 200, resp.text


def api_list(server, **params) -> list[dict]:
    resp = requests.get(f"{server.url}/v2/images", params=params, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()["images"]


@pytest.fixture
def four_images(server, tag):
    """Queued images ``<tag>-0`` .. ``<tag>-3`` with a ``parity`` property."""
    return [api_image(server, tag, name=f"{tag}-{i}", parity=("odd", "even")[i % 2 == 0])["id"] for i in range(4)]


# -- glance's tables ------------------------------------------------------------------------


def rows(text: str) -> list[list[str]]:
    return [[cell.strip() for cell in line[1:-1].split("|")] for line in text.splitlines() if line.startswith("|")]


def show_table(text: str) -> dict[str, str]:
    """glance's Property/Value table as a dict; values wrapped over several lines are joined."""
    props: dict[str, str] = {}
    key = None
    for name, value in rows(text)[1:]:
        if name:
            key, props[name] = name, value
        else:
            props[key] += value
    return props


def list_table(text: str) -> list[dict[str, str]]:
    header, *body = rows(text)
    return [dict(zip(header, row)) for row in body]


# == glance ==================================================================================


def test_glance_discovers_v2_and_caches_the_image_schema(glance, server, cli_env, tmp_path, tag):
    proc = glance("image-list", "--tag", tag, env={**cli_env, "HOME": str(tmp_path)})
    assert list_table(proc.stdout) == []
    assert "falling back to v1" not in proc.stderr
    cached = json.loads((tmp_path / ".glanceclient" / "image_schema.json").read_text())
    assert cached == requests.get(f"{server.url}/v2/schemas/image", timeout=10).json()


def test_glance_image_create_from_file_and_download(glance, tag, payload, payload_file, tmp_path):
    proc = glance(
        "image-create",
        "--name",
        tag,
        "--disk-format",
        "raw",
        "--container-format",
        "bare",
        "--min-ram",
        "64",
        "--property",
        "foo=bar",
        "--tags",
        tag,
        "--file",
        str(payload_file),
    )
    image = show_table(proc.stdout)
    assert (image["name"], image["status"], image["size"], image["stores"]) == (tag, "active", str(SIZE), "local")
    assert (image["min_ram"], image["foo"], json.loads(image["tags"])) == ("64", "bar", [tag])
    assert image["checksum"] == hashlib.md5(payload).hexdigest()
    assert (image["os_hash_algo"], image["os_hash_value"]) == ("sha512", hashlib.sha512(payload).hexdigest())
    out = tmp_path / "out.raw"
    glance("image-download", "--file", str(out), image["id"])  # verifies os_hash_value too
    assert out.read_bytes() == payload


def test_glance_image_update(glance, server, tag):
    image = api_image(server, tag, foo="bar")
    proc = glance(
        "image-update",
        image["id"],
        "--name",
        "renamed",
        "--min-ram",
        "256",
        "--property",
        "color=blue",
        "--remove-property",
        "foo",
    )
    for shown in (show_table(proc.stdout), api_get(server, image["id"])):
        assert (shown["name"], str(shown["min_ram"]), shown["color"]) == ("renamed", "256", "blue")
        assert "foo" not in shown


def test_glance_tags(glance, server, tag):
    image = api_image(server, tag)
    glance("image-tag-update", image["id"], "blue")
    glance("image-tag-delete", image["id"], tag)
    assert api_get(server, image["id"])["tags"] == ["blue"]


def test_glance_image_list_filters_sort_and_pages(glance, tag, four_images):
    proc = glance(
        "image-list", "--tag", tag, "--property-filter", "parity=even", "--sort", "name:asc", "--page-size", "1"
    )
    assert [row["Name"] for row in list_table(proc.stdout)] == [f"{tag}-0", f"{tag}-2"]
    proc = glance(
        "image-list", "--tag", tag, "--sort-key", "name", "--sort-dir", "desc", "--limit", "3", "--page-size", "2"
    )
    assert [(row["ID"], row["Name"]) for row in list_table(proc.stdout)] == [
        (four_images[i], f"{tag}-{i}") for i in (3, 2, 1)
    ]


def test_glance_deactivate_and_reactivate(glance, server, tag):
    image = api_image(server, tag, data=b"x" * 1000)
    glance("image-deactivate", image["id"])
    assert api_get(server, image["id"])["status"] == "deactivated"
    glance("image-reactivate", image["id"])
    assert api_get(server, image["id"])["status"] == "active"


def test_glance_protected_delete_refused_then_delete_and_404(glance, server, tag):
    image = api_image(server, tag, protected=True)
    proc = glance("image-delete", image["id"], ok=False)
    assert proc.returncode == 1 and f"You are not permitted to delete the image '{image['id']}'" in proc.stderr
    assert api_get(server, image["id"])["status"] == "queued"
    api_patch(server, image["id"], protected=False)
    glance("image-delete", image["id"])
    proc = glance("image-show", image["id"], ok=False)
    assert proc.returncode == 1 and f"HTTP 404 Not Found: No image found with ID {image['id']}" in proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        # abbild answers 400
        (["image-list", "--visibility", "bogus"], "HTTP 400 Bad Request: Invalid visibility value: bogus"),
        # glance validates against the schema it fetched from abbild, before sending
        (
            ["image-create", "--min-ram", "-1"],
            "Unable to set 'min_ram' to -1. Reason: -1 is less than the minimum of 0",
        ),
        (
            ["image-create", "--disk-format", "floppy"],
            "Unable to set 'disk_format' to 'floppy'. Reason: 'floppy' is not one of",
        ),
    ],
    ids=["list-visibility", "create-min-ram", "create-disk-format"],
)
def test_glance_bad_input(glance, server, tag, payload_file, args, message):
    if args[0] == "image-create":
        args = [*args, "--name", tag, "--container-format", "bare", "--file", str(payload_file)]
        if "--disk-format" not in args:
            args += ["--disk-format", "raw"]
    proc = glance(*args, ok=False)
    assert proc.returncode == 1 and message in proc.stderr
    assert api_list(server, name=tag) == []


# == openstack ===============================================================================


@pytest.mark.parametrize("auth", OPENSTACK_AUTH)
def test_openstack_connects_without_keystone(openstack, server, tag, auth):
    image = api_image(server, tag)
    listed = openstack("image", "list", "--tag", tag, "-f", "json", auth=auth)
    assert listed == [{"ID": image["id"], "Name": tag, "Status": "queued"}]


def test_openstack_image_create_from_file_and_save(openstack, tag, payload, payload_file, tmp_path):
    image = openstack(
        "image",
        "create",
        "--disk-format",
        "raw",
        "--container-format",
        "bare",
        "--file",
        str(payload_file),
        "--property",
        "foo=bar",
        "--tag",
        tag,
        "--min-ram",
        "64",
        tag,
        "-f",
        "json",
    )
    assert (image["name"], image["status"], image["size"], image["min_ram"]) == (tag, "active", SIZE, 64)
    assert image["checksum"] == hashlib.md5(payload).hexdigest() and image["tags"] == [tag]
    props = image["properties"]
    assert (props["foo"], props["stores"], props["os_hash_algo"]) == ("bar", "local", "sha512")
    assert props["os_hash_value"] == hashlib.sha512(payload).hexdigest()
    out = tmp_path / "out.raw"
    openstack("image", "save", "--file", str(out), image["id"])
    assert out.read_bytes() == payload


def test_openstack_image_set_and_unset(openstack, server, tag):
    image = api_image(server, tag, foo="bar", tags=[tag, "old"])
    openstack(
        "image",
        "set",
        "--name",
        "renamed",
        "--min-ram",
        "128",
        "--property",
        "color=blue",
        "--tag",
        "extra",
        image["id"],
    )
    openstack("image", "unset", "--property", "foo", "--tag", "old", image["id"])
    shown = api_get(server, image["id"])
    assert (shown["name"], shown["min_ram"], shown["color"]) == ("renamed", 128, "blue")
    assert "foo" not in shown and sorted(shown["tags"]) == sorted([tag, "extra"])


def test_openstack_image_list_filters_sort_and_limit(openstack, tag, four_images):
    # --tag and --limit go to abbild; --property and --sort are applied by the client.
    listed = openstack("image", "list", "--tag", tag, "--property", "parity=even", "--sort", "name:asc", "-f", "json")
    assert [row["Name"] for row in listed] == [f"{tag}-0", f"{tag}-2"]
    listed = openstack("image", "list", "--tag", tag, "--sort", "name:desc", "--limit", "2", "--long", "-f", "json")
    names = [row["Name"] for row in listed]
    assert len(names) == 2 and names == sorted(names, reverse=True) and set(names) < {f"{tag}-{i}" for i in range(4)}
    assert {row["Tags"][0] for row in listed} == {tag}


def test_openstack_deactivate_and_activate(openstack, server, tag):
    image = api_image(server, tag, data=b"x" * 1000)
    openstack("image", "set", "--deactivate", image["id"])
    assert api_get(server, image["id"])["status"] == "deactivated"
    openstack("image", "set", "--activate", image["id"])
    assert api_get(server, image["id"])["status"] == "active"


def test_openstack_protected_delete_refused_then_delete_and_404(openstack, server, tag):
    image = api_image(server, tag, protected=True)
    proc = openstack("image", "delete", image["id"], ok=False)
    assert proc.returncode == 1 and "403" in proc.stderr and "is protected and cannot be deleted" in proc.stderr
    api_patch(server, image["id"], protected=False)
    openstack("image", "delete", image["id"])
    assert requests.get(f"{server.url}/v2/images/{image['id']}", timeout=10).status_code == 404


@pytest.mark.parametrize(
    "command, message",
    [
        (
            lambda tag, path, image: ["image", "create", "--file", path, "--tag", tag, "--min-ram", "-1", tag],
            "400 Bad Request: Provided object does not match schema 'image': -1 is less than the minimum of 0",
        ),
        # the SDK sends its PATCH with an empty Accept, gets text/plain and shows no detail
        (lambda tag, path, image: ["image", "set", "--min-ram", "-1", image], "BadRequestException: 400"),
    ],
    ids=["create", "set"],
)
def test_openstack_bad_input_is_400(openstack, server, tag, payload_file, command, message):
    image = api_image(server, f"{tag}-existing")
    proc = openstack(*command(tag, str(payload_file), image["id"]), ok=False)
    assert proc.returncode == 1 and message in proc.stderr.replace("&#x27;", "'")
    assert api_get(server, image["id"])["min_ram"] == 0
    assert api_list(server, name=tag) == []
