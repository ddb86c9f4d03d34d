"""validate_image_properties over HTTP, against real ``abbild serve`` processes: the
``glance`` command line (``image-create --property``, ``image-update --property``) and
``openstack image create|set --property`` as the noauth administrator with the option
on and off, and python-glanceclient as project members behind a trusted-headers
gateway, where only the namespaces the image's owner may see count. The namespaces are
made through ``/v2/metadefs``.

Every property name here starts with ``xt_``: no shipped definition names one."""

from __future__ import annotations

import html
import uuid

import pytest
import requests
from glanceclient import Client, exc

from tests.functional.clis import executable, run
from tests.functional.helpers import server_config, who
from tests.functional.test_clients_cli import OPENSTACK_AUTH

pytestmark = pytest.mark.filterwarnings("ignore:`version` keyword is being deprecated:DeprecationWarning")
ON = "validate_image_properties = true"


def _namespace(name: str, **fields) -> dict:
    """A namespace associated with OS::Glance::Image under the prefix ``xt_``."""
    return {
        "namespace": name,
        "visibility": "public",
        "resource_type_associations": [{"name": "OS::Glance::Image", "prefix": "xt_"}],
        **fields,
    }


CPU = {
    "properties": {
        "cpu_policy": {"title": "CPU policy", "type": "string", "enum": ["shared", "dedicated"]},
        "cpu_flags": {
            "title": "CPU flags",
            "type": "array",
            "items": {"type": "string", "enum": ["sse", "avx"]},
        },
        "secure": {"title": "Secure boot", "type": "boolean"},
        "machine": {"title": "Machine type", "type": "string", "pattern": "^pc-[a-z0-9.-]+$", "maxLength": 20},
    },
    "objects": [
        {
            "name": "CPU Limits",
            "properties": {"cpu_cores": {"title": "Cores", "type": "integer", "minimum": 1, "maximum": 64}},
        }
    ],
}


def _create_namespace(url: str, body: dict, headers: dict | None = None) -> None:
    resp = requests.post(f"{url}/v2/metadefs/namespaces", json=body, headers=headers or {}, timeout=30)
    assert resp.status_code == 201, resp.text


@pytest.fixture(scope="module")
def noauth_servers(server_factory):
    """Two noauth servers with the same namespace, the option on and off."""
    servers = {}
    for option in ("on", "off"):
        srv = server_factory(f"validate-{option}", server_config(default=ON if option == "on" else ""))
        _create_namespace(srv.url, _namespace("Test::Validation::CPU", **CPU))
        servers[option] = srv
    return servers


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env["HOME"] = str(tmp_path_factory.mktemp("home"))
    return env


def _glance(url, env):
    def glance(*args, ok=True):
        proc = run([executable("glance"), "--os-image-url", url, "--os-auth-token", "x", *args], env, ok)
        # webob's error page escapes quotes and angle brackets (as Glance's does), and glance prints it as it came
        proc.stderr = html.unescape(proc.stderr)
        return proc

    return glance


def _new_image_args(*properties: str, name: str | None = None) -> list[str]:
    name = name or f"v-{uuid.uuid4().hex[:8]}"
    args = ["image-create", "--name", name, "--disk-format", "raw", "--container-format", "bare"]
    for prop in properties:
        args += ["--property", prop]
    return args


def _properties(url: str, image_id: str) -> dict:
    resp = requests.get(f"{url}/v2/images/{image_id}", timeout=30)
    resp.raise_for_status()
    return resp.json()


def _created_id(output: str) -> str:
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0] == "id":
            return cells[1]
    raise AssertionError(f"no id in:\n{output}")


@pytest.mark.parametrize(
    "prop, message",
    [
        (
            "xt_cpu_policy=fast",
            "Property xt_cpu_policy='fast' is not one of ['shared', 'dedicated'] (namespace Test::Validation::CPU).",
        ),
        ("xt_cpu_cores=0", "Property xt_cpu_cores='0' is less than its minimum 1 (namespace Test::Validation::CPU)."),
        ("xt_cpu_cores=two", "Property xt_cpu_cores='two' is not an integer (namespace Test::Validation::CPU)."),
        ("xt_secure=maybe", "Property xt_secure='maybe' is not a boolean (true or false)"),
        ("xt_cpu_flags=<in> sse,mmx", "Property xt_cpu_flags='<in> sse,mmx' has the item 'mmx', which is not one of"),
        ("xt_machine=q35", "Property xt_machine='q35' does not match its pattern '^pc-[a-z0-9.-]+$'"),
        ("xt_machine=pc-i440fx-2.12-and-more", "is longer than its maxLength 20"),
    ],
)
def test_glance_image_create_refuses_what_a_definition_forbids(noauth_servers, cli_env, prop, message):
    url = noauth_servers["on"].url
    name = f"refused-{uuid.uuid4().hex[:8]}"
    proc = _glance(url, cli_env)(*_new_image_args(prop, name=name), ok=False)
    assert proc.returncode != 0
    assert "400" in proc.stderr and message in proc.stderr, proc.stderr
    assert requests.get(f"{url}/v2/images", params={"name": name}, timeout=30).json()["images"] == []


def test_glance_image_create_and_update_with_values_the_definitions_accept(noauth_servers, cli_env):
    url = noauth_servers["on"].url
    glance = _glance(url, cli_env)
    created = glance(
        *_new_image_args(
            "xt_cpu_policy=dedicated",
            "xt_cpu_cores=4",
            "xt_secure=true",
            "xt_cpu_flags=<in> sse,avx",
            "xt_machine=pc-q35-8.2",
            "xt_free_text=anything",  # no definition names it
        )
    )
    image_id = _created_id(created.stdout)
    image = _properties(url, image_id)
    assert (image["xt_cpu_policy"], image["xt_cpu_cores"], image["xt_cpu_flags"]) == ("dedicated", "4", "<in> sse,avx")

    proc = glance("image-update", image_id, "--property", "xt_cpu_cores=65", ok=False)
    assert proc.returncode != 0 and "400" in proc.stderr
    assert "Property xt_cpu_cores='65' is greater than its maximum 64 (namespace Test::Validation::CPU)." in proc.stderr
    proc = glance("image-update", image_id, "--property", "xt_cpu_policy=fast", ok=False)
    assert "Property xt_cpu_policy='fast' is not one of" in proc.stderr
    assert _properties(url, image_id)["xt_cpu_cores"] == "4"  # unchanged by the refused updates

    glance("image-update", image_id, "--property", "xt_cpu_cores=64", "--property", "xt_secure=no")
    glance("image-update", image_id, "--remove-property", "xt_cpu_policy")
    image = _properties(url, image_id)
    assert image["xt_cpu_cores"] == "64" and image["xt_secure"] == "no" and "xt_cpu_policy" not in image


def test_openstack_image_create_and_set_are_checked_too(noauth_servers, cli_env):
    url = noauth_servers["on"].url

    def openstack(*args, ok=True):
        proc = run([executable("openstack"), *OPENSTACK_AUTH["none"](url), *args], cli_env, ok)
        proc.stderr = html.unescape(proc.stderr)
        return proc

    name = f"osc-{uuid.uuid4().hex[:8]}"
    proc = openstack("image", "create", "--property", "xt_cpu_policy=fast", name, ok=False)
    assert proc.returncode != 0 and "Property xt_cpu_policy='fast' is not one of" in proc.stderr, proc.stderr
    image_id = openstack("image", "create", "--property", "xt_cpu_policy=shared", "-f", "value", "-c", "id", name)
    image_id = image_id.stdout.strip()
    proc = openstack("image", "set", "--property", "xt_cpu_cores=0", image_id, ok=False)
    # openstacksdk names only the status of a refused PATCH (the body is the same as the POST's)
    assert proc.returncode != 0 and "BadRequestException: 400" in proc.stderr, proc.stderr
    assert "xt_cpu_cores" not in _properties(url, image_id)
    openstack("image", "set", "--property", "xt_cpu_cores=2", image_id)
    assert _properties(url, image_id)["xt_cpu_cores"] == "2"


def test_with_the_option_off_nothing_is_checked(noauth_servers, cli_env):
    url = noauth_servers["off"].url
    glance = _glance(url, cli_env)
    image_id = _created_id(glance(*_new_image_args("xt_cpu_policy=fast", "xt_cpu_cores=0")).stdout)
    glance("image-update", image_id, "--property", "xt_secure=maybe")
    image = _properties(url, image_id)
    assert (image["xt_cpu_policy"], image["xt_cpu_cores"], image["xt_secure"]) == ("fast", "0", "maybe")


# -- the owner's namespaces, with python-glanceclient as project members ------------------------


@pytest.fixture(scope="module")
def gateway_server(server_factory):
    return server_factory("validate-members", server_config(flavor="trusted-headers", default=ON))


def _client(url: str, project: str) -> Client:
    """python-glanceclient as a member of *project* (roles as the session's header:
    glanceclient %-escapes its identity headers' commas)."""
    headers = who(project, "member", "reader")
    roles = headers.pop("X-Roles")
    client = Client("2", endpoint=url, token="x", identity_headers=headers)
    client.http_client.session.headers["X-Roles"] = roles
    return client


def _admin_of(project: str) -> dict:
    return who(project, "admin", "member", "reader")


def test_only_namespaces_the_owner_sees_count(gateway_server):
    url = gateway_server.url
    mine, other = f"p-{uuid.uuid4().hex[:8]}", f"p-{uuid.uuid4().hex[:8]}"
    private = f"Test::Private::{mine}"
    rule = {"title": "Mode", "type": "string", "enum": ["calm"]}
    # An administrator of *mine* makes a namespace private to it, and one public.
    _create_namespace(url, _namespace(private, visibility="private", properties={"mode": rule}), _admin_of(mine))
    public = f"Test::Public::{mine}"
    _create_namespace(url, _namespace(public, properties={"level": {"title": "L", "type": "integer"}}), _admin_of(mine))

    owner, stranger = _client(url, mine), _client(url, other)
    with pytest.raises(exc.HTTPBadRequest) as refused:
        owner.images.create(name="x", disk_format="raw", container_format="bare", xt_mode="wild")
    assert f"Property xt_mode='wild' is not one of ['calm'] (namespace {private})." in html.unescape(str(refused.value))
    accepted = stranger.images.create(name="x", disk_format="raw", container_format="bare", xt_mode="wild")
    assert accepted["xt_mode"] == "wild"  # another project's private namespace says nothing about this one's images

    for client in (owner, stranger):  # a public namespace counts for everyone
        with pytest.raises(
            exc.HTTPBadRequest, match=rf"xt_level=&#x27;high&#x27; is not an integer \(namespace {public}\)"
        ):
            client.images.create(name="x", disk_format="raw", container_format="bare", xt_level="high")

    image = owner.images.create(name="x", disk_format="raw", container_format="bare", xt_mode="calm")
    with pytest.raises(exc.HTTPBadRequest, match=r"xt_mode=&#x27;wild&#x27; is not one of"):
        owner.images.update(image["id"], xt_mode="wild")
    assert owner.images.update(image["id"], xt_level="3")["xt_level"] == "3"

    # The definitions are read at each change: without the namespace, the value goes through.
    resp = requests.delete(f"{url}/v2/metadefs/namespaces/{private}", headers=_admin_of(mine), timeout=30)
    assert resp.status_code == 204, resp.text
    assert owner.images.update(image["id"], xt_mode="wild")["xt_mode"] == "wild"
