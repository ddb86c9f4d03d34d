"""``abbild replicate``: copy images between two Image API v2 services (abbild or
Glance, in any pairing), or through a directory for air-gapped sites.

Unlike glance-replicator, which speaks the removed v1 API, this speaks v2 to both sides,
keeps each image's id, metadata, members and status, streams the data from the source's
``GET .../file`` into the target's ``PUT .../file`` (one chunk in memory, no temporary
file) and checks the target's checksum and os_hash against the source's afterwards.

Every run starts by comparing, so a run is idempotent and an interrupted one resumes:
an identical image is skipped, metadata and members are brought in line with a PATCH
and member calls, and an image the target holds without data (``queued``, as an upload
that was cut off leaves it) is uploaded again. Images in scope are the source's
``active`` and ``deactivated`` ones (a deactivated image is copied, then deactivated on
the target); images still without data, ``killed`` and deleted ones are not copied, and
nothing is ever deleted on the target.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import requests

from abbild.errors import AbbildError, ConfigError
from abbild_cmd.progress import MIB, ProgressBar

CHUNK = 1 << 20
STATUSES = ("active", "deactivated")
# What a service computes or manages itself: never sent, never compared as metadata.
SERVER_SIDE = frozenset(
    {
        "id",
        "status",
        "checksum",
        "os_hash_algo",
        "os_hash_value",
        "size",
        "virtual_size",
        "created_at",
        "updated_at",
        "direct_url",
        "self",
        "file",
        "schema",
        "locations",
        "stores",
    }
)
# Base attributes a client sets; every image view carries them (null when unset).
BASE = (
    "name",
    "visibility",
    "protected",
    "os_hidden",
    "owner",
    "container_format",
    "disk_format",
    "min_ram",
    "min_disk",
)
# How long a target image left 'saving' by an interrupted run may take to fall back to
# 'queued' (the target notices the dropped connection) before it counts as a failure.
SAVING_WAIT = 60.0


class Refused(AbbildError):
    """A service answered a request with an unexpected status."""

    def __init__(self, role: str, method: str, url: str, status: int, reason: str) -> None:
        self.status = status
        super().__init__(f"{role} {method} {url}: {status} {reason}".rstrip())


class Unreachable(AbbildError):
    def __init__(self, role: str, url: str, reason: str) -> None:
        super().__init__(f"{role} {url} is unreachable: {reason}")


# -- the two sides ------------------------------------------------------------------------


@dataclass
class Credentials:
    """How to authenticate to one side: a token, Keystone password credentials, or
    nothing (a noauth service)."""

    token: str | None = None
    auth_url: str | None = None
    username: str | None = None
    password: str | None = None
    project: str | None = None
    user_domain: str = "Default"
    project_domain: str = "Default"


def endpoint_root(url: str) -> str:
    """The service's root: what ``/v2/...`` paths and a listing's ``next`` links hang off."""
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{url!r} is no http(s) URL of an image service (for example http://glance.example.org:9292)")
    return url.removesuffix("/v2")


class Service:
    """One Image API v2 service, as an administrator of it (to see every image, set
    ids and owners, and download deactivated images)."""

    def __init__(self, role: str, url: str, credentials: Credentials, timeout: float = 60.0) -> None:
        self.role = role
        self.root = endpoint_root(url)
        self.timeout = timeout
        self.http = requests.Session()
        self.http.headers["Accept"] = "application/json"
        self.token = credentials.token
        self.keystone = None
        if credentials.auth_url:
            self.keystone = _keystone_session(role, credentials)

    def _auth_headers(self) -> dict:
        if self.keystone is not None:
            from keystoneauth1 import exceptions

            try:
                # keystoneauth keeps the token and fetches a new one shortly before it expires
                return {"X-Auth-Token": self.keystone.get_token()}
            except exceptions.ClientException as exc:
                raise ConfigError(f"{self.role}: Keystone refused the credentials: {exc}") from exc
        return {"X-Auth-Token": self.token} if self.token else {}

    def call(self, method: str, path: str, ok: tuple[int, ...] = (200,), **kwargs) -> requests.Response:
        url = path if path.startswith("http") else self.root + path
        headers = {**self._auth_headers(), **kwargs.pop("headers", {})}
        try:
            resp = self.http.request(method, url, headers=headers, timeout=(10, self.timeout), **kwargs)
        except requests.RequestException as exc:
            raise Unreachable(self.role, self.root, str(exc)) from exc
        if resp.status_code not in ok:
            reason = _reason(resp)
            resp.close()
            if resp.status_code == 401:
                reason += f" (give --{self.role}-token or Keystone credentials of an administrator)"
            raise Refused(self.role, method, url, resp.status_code, reason)
        return resp

    def listing(self, filters: Filters) -> dict[str, dict]:
        """The images the service lists (every status but killed and deleted), hidden
        ones too, that the service's filters select: by id."""
        found = {}
        for hidden in ("false", "true"):  # a listing leaves out hidden images unless asked for them alone
            params = {"limit": 200, "os_hidden": hidden, "visibility": filters.visibility or "all"}
            if filters.owner:
                params["owner"] = filters.owner
            params.update(filters.properties)
            url = "/v2/images"
            while url:
                page = self.call("GET", url, params=params).json()
                params = None  # ``next`` carries the query
                found.update((image["id"], image) for image in page["images"])
                url = page.get("next")
        return found

    def images(self, filters: Filters) -> list[dict]:
        """The active and deactivated images *filters* select, oldest first."""
        found = self.listing(filters).values()
        return sorted((i for i in found if i["status"] in STATUSES and filters.match(i)), key=_order)

    def image(self, image_id: str) -> dict | None:
        resp = self.call("GET", f"/v2/images/{image_id}", ok=(200, 404))
        return resp.json() if resp.status_code == 200 else None

    def members(self, image: dict) -> dict[str, str]:
        """member id -> status; only shared images have members."""
        if image.get("visibility") != "shared":
            return {}
        members = self.call("GET", f"/v2/images/{image['id']}/members").json()["members"]
        return {m["member_id"]: m["status"] for m in members}

    def data(self, image: dict) -> Iterator[bytes]:
        """The image's bytes, streamed; exactly its size, or ReplicationFailed."""
        path = f"/v2/images/{image['id']}/file"
        resp = self.call("GET", path, ok=(200, 204), stream=True, headers={"Accept": "application/octet-stream"})
        with resp:
            if resp.status_code == 204:
                return
            try:
                yield from resp.iter_content(CHUNK)
            except requests.RequestException as exc:
                raise Unreachable(self.role, self.root, f"download of {image['id']} broke off: {exc}") from exc


def _keystone_session(role: str, c: Credentials):
    missing = [f"--{role}-{name}" for name in ("username", "password", "project") if not getattr(c, name)]
    if missing:
        raise ConfigError(f"--{role}-auth-url needs {', '.join(missing)} too")
    from keystoneauth1 import session
    from keystoneauth1.identity import v3

    auth = v3.Password(
        auth_url=c.auth_url,
        username=c.username,
        password=c.password,
        project_name=c.project,
        user_domain_name=c.user_domain,
        project_domain_name=c.project_domain,
    )
    return session.Session(auth=auth)


def _reason(resp: requests.Response) -> str:
    """The message of an error response (JSON from abbild and Glance, text otherwise)."""
    try:
        body = resp.json()
    except ValueError:
        lines = [line.strip() for line in resp.text.splitlines() if line.strip()]
        return " ".join(lines[1:] or lines)[:500]
    if isinstance(body, dict):
        inner = body.get("error") if isinstance(body.get("error"), dict) else body
        return str(inner.get("message") or inner.get("title") or body)[:500]
    return str(body)[:500]


def _order(image: dict) -> tuple:
    return (image.get("created_at") or "", image["id"])


@dataclass
class Filters:
    owner: str | None = None
    visibility: str | None = None
    properties: dict[str, str] = field(default_factory=dict)

    def match(self, image: dict) -> bool:
        """Checked here too: a service may ignore a filter it does not know."""
        if self.owner and image.get("owner") != self.owner:
            return False
        if self.visibility and image.get("visibility") != self.visibility:
            return False
        return all(_text(image.get(k)) == v for k, v in self.properties.items())


def _text(value) -> str | None:
    if isinstance(value, bool):
        return str(value).lower()
    return None if value is None else str(value)


# -- what differs ---------------------------------------------------------------------------


def metadata(image: dict) -> dict:
    """What a user sets on an image: the base attributes (null included), the sorted
    tags and the extra properties; not what the service computes, nor Glance's own
    ``os_glance_*`` bookkeeping."""
    values = {name: image.get(name) for name in BASE}
    values["tags"] = sorted(image.get("tags") or [])
    for name, value in image.items():
        if name in SERVER_SIDE or name in values or name.startswith("os_glance") or value is None:
            continue
        values[name] = value
    return values


def same_data(source: dict, target: dict) -> bool:
    if source.get("size") != target.get("size") or source.get("checksum") != target.get("checksum"):
        return False
    # os_hash_value only means something under the same algorithm (a side may use sha256)
    return source.get("os_hash_algo") != target.get("os_hash_algo") or (
        source.get("os_hash_value") == target.get("os_hash_value")
    )


def differences(source: dict, source_members: dict, target: dict | None, target_members: dict) -> list[str]:
    """How *target* differs from *source*: ``[]`` when identical, ``["missing"]`` when
    the target has no such image, else ``metadata (keys)``, ``members``, ``no data
    (status)``, ``checksum``, ``status``."""
    if target is None:
        return ["missing"]
    found = []
    want, have = metadata(source), metadata(target)
    changed = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
    if changed:
        found.append(f"metadata ({', '.join(changed)})")
    if source_members != target_members:
        found.append("members")
    if target["status"] not in STATUSES:
        found.append(f"no data ({target['status']})")
    elif not same_data(source, target):
        found.append("checksum")
    elif source["status"] != target["status"]:
        found.append(f"status ({target['status']})")
    return found


# -- copying --------------------------------------------------------------------------------


class ReplicationFailed(AbbildError):
    """One image could not be copied; the run goes on with the next."""


@dataclass
class Outcome:
    image_id: str
    name: str | None
    result: str  # copied | skipped | failed
    done: list[str] = field(default_factory=list)  # what was done: created, metadata, members, data, ...
    bytes: int = 0
    error: str | None = None


class _Body:
    """An upload body of known length whose chunks come from *chunks*: requests then
    sends a Content-Length (the target can refuse an image over its quota at once) and
    streams the chunks as they come, one at a time."""

    def __init__(self, chunks: Iterable[bytes], size: int, progress: Callable[[int], None]) -> None:
        self.chunks, self.size, self.progress, self.sent = chunks, size, progress, 0

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            self.sent += len(chunk)
            if self.sent > self.size:
                raise ReplicationFailed(f"the source sent more than the image's {self.size} bytes")
            self.progress(self.sent)
            yield chunk
        if self.sent != self.size:
            # Raising here drops the connection, so the target sees the upload fail
            # instead of waiting for the missing bytes.
            raise ReplicationFailed(f"the source sent {self.sent} of the image's {self.size} bytes")


class Copier:
    """Brings each source image onto *target*: created with the same id, metadata and
    members made equal, data uploaded where the target has none, then checked."""

    def __init__(self, target: Service, progress: Callable[[str, int, int], None]) -> None:
        self.target = target
        self.progress = progress

    def copy(self, image: dict, members: dict, data: Callable[[], Iterable[bytes]], existing: dict | None) -> Outcome:
        outcome = Outcome(image["id"], image.get("name"), "skipped")
        try:
            self._copy(image, members, data, existing, outcome)
        except AbbildError as exc:
            outcome.result, outcome.error = "failed", str(exc)
        else:
            if outcome.done:
                outcome.result = "copied"
        return outcome

    def _copy(self, image: dict, members: dict, data, existing: dict | None, outcome: Outcome) -> None:
        target, image_id = self.target, image["id"]
        if existing is None:
            existing = self._create(image)
            outcome.done.append("created")
        if existing["status"] == "saving":
            existing = self._wait_saving(existing)
        want, have = metadata(image), metadata(existing)
        patch = _patch(want, have)
        if patch:
            target.call(
                "PATCH",
                f"/v2/images/{image_id}",
                data=json.dumps(patch),
                headers={"Content-Type": "application/openstack-images-v2.1-json-patch"},
            )
            if "created" not in outcome.done:
                outcome.done.append("metadata")
        if self._members(image, members):
            outcome.done.append("members")
        status = existing["status"]
        if status == "queued":
            size = image.get("size") or 0
            self.progress(image_id, 0, size)
            body = _Body(data(), size, lambda sent: self.progress(image_id, sent, size))
            target.call(
                "PUT",
                f"/v2/images/{image_id}/file",
                ok=(204, 201, 200),
                data=body if size else b"",
                headers={"Content-Type": "application/octet-stream"},
            )
            outcome.bytes = size
            outcome.done.append("data")
            existing = target.image(image_id) or {"status": "gone"}
            status = existing["status"]
        elif status not in STATUSES:
            raise ReplicationFailed(
                f"the target's image is '{status}': its data cannot be uploaded again; "
                "it needs an administrator's attention on the target"
            )
        if status not in STATUSES:
            raise ReplicationFailed(f"the target's image is '{status}' after the upload")
        if not same_data(image, existing):
            raise ReplicationFailed(
                "the target's data differs from the source's "
                f"(size {existing.get('size')} vs {image.get('size')}, checksum {existing.get('checksum')} vs "
                f"{image.get('checksum')}); an active image's data cannot be replaced: fix it on the target"
            )
        if image["status"] != status:
            action = "deactivate" if image["status"] == "deactivated" else "reactivate"
            target.call("POST", f"/v2/images/{image_id}/actions/{action}", ok=(204,))
            outcome.done.append(action + "d")

    def _create(self, image: dict) -> dict:
        body = {k: v for k, v in metadata(image).items() if v is not None and v != []}
        body["id"] = image["id"]
        try:
            return self.target.call("POST", "/v2/images", ok=(201,), json=body).json()
        except Refused as exc:
            if exc.status != 409:
                raise
        held = self.target.image(image["id"])
        if held is None:
            raise ReplicationFailed(
                "the target refuses the id: it belonged to an image deleted there, and ids are never reused"
            )
        return held  # not listed (a hidden status such as killed); _copy says what it is

    def _wait_saving(self, image: dict) -> dict:
        """An upload an interrupted run left behind returns to 'queued' once the target
        notices the dropped connection."""
        deadline = time.monotonic() + SAVING_WAIT
        while image["status"] == "saving" and time.monotonic() < deadline:
            time.sleep(0.5)
            image = self.target.image(image["id"]) or {"status": "gone"}
        if image["status"] == "saving":
            raise ReplicationFailed(f"the target's image has been 'saving' for more than {SAVING_WAIT:.0f} s")
        return image

    def _members(self, image: dict, want: dict[str, str]) -> bool:
        """Make the target's members and their statuses *want*; whether anything changed."""
        if image.get("visibility") != "shared" and not want:
            return False
        path = f"/v2/images/{image['id']}/members"
        have = self.target.members(image)
        if have == want:
            return False
        for member_id, status in want.items():
            if member_id not in have:
                self.target.call("POST", path, json={"member": member_id})
                have[member_id] = "pending"  # what a new member starts as
            if have[member_id] != status:
                self.target.call("PUT", f"{path}/{member_id}", json={"status": status})
        for member_id in sorted(have.keys() - want.keys()):
            self.target.call("DELETE", f"{path}/{member_id}", ok=(204,))
        return True


def _patch(want: dict, have: dict) -> list[dict]:
    """The JSON patch that turns metadata *have* into *want*."""
    ops = []
    for name in sorted(want.keys() | have.keys()):
        if want.get(name) == have.get(name):
            continue
        path = "/" + name.replace("~", "~0").replace("/", "~1")
        if name in BASE or name == "tags":
            ops.append({"op": "replace", "path": path, "value": want.get(name)})
        elif name in want:
            ops.append({"op": "add", "path": path, "value": want[name]})
        else:
            ops.append({"op": "remove", "path": path})
    return ops


# -- the directory of dump and load -------------------------------------------------------


class Directory:
    """A dump: for each image ``<id>.data`` (its bytes) and ``<id>.json`` (``{"image":
    <the source's view>, "members": {member: status}}``), each written to a temporary
    name, fsynced and renamed, the JSON last: an image whose JSON is there is complete."""

    def __init__(self, path: str) -> None:
        self.path = path

    def _file(self, image_id: str, suffix: str) -> str:
        return os.path.join(self.path, f"{image_id}.{suffix}")

    def entries(self, filters: Filters) -> list[tuple[dict, dict]]:
        if not os.path.isdir(self.path):
            raise ConfigError(f"{self.path} is no directory")
        found = []
        for name in sorted(os.listdir(self.path)):
            if not name.endswith(".json"):
                continue
            try:
                with open(os.path.join(self.path, name)) as f:
                    entry = json.load(f)
                image, members = entry["image"], entry["members"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"{os.path.join(self.path, name)} is no image of a dump: {exc}") from exc
            if image.get("status") in STATUSES and filters.match(image):
                found.append((image, members))
        return sorted(found, key=lambda e: _order(e[0]))

    def read(self, image: dict) -> Iterator[bytes]:
        with open(self._file(image["id"], "data"), "rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk

    def holds(self, image: dict, members: dict) -> bool:
        try:
            with open(self._file(image["id"], "json")) as f:
                entry = json.load(f)
        except (OSError, ValueError):
            return False
        old = entry.get("image", {})
        return (
            metadata(old) == metadata(image)
            and old.get("status") == image["status"]
            and same_data(image, old)
            and entry.get("members") == members
            and os.path.exists(self._file(image["id"], "data"))
        )

    def write(self, image: dict, members: dict, chunks: Iterable[bytes], progress: Callable[[int], None]) -> int:
        """Store the image, its data checked against the source's checksum and os_hash;
        returns the bytes written (0 when the data was there already)."""
        data = self._file(image["id"], "data")
        written = 0
        if not self._data_matches(image):
            md5 = hashlib.md5(usedforsecurity=False)
            algo = image.get("os_hash_algo")
            os_hash = hashlib.new(algo) if algo in hashlib.algorithms_available else None
            part = data + ".part"
            with open(part, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                    md5.update(chunk)
                    if os_hash is not None:
                        os_hash.update(chunk)
                    written += len(chunk)
                    progress(written)
                f.flush()
                os.fsync(f.fileno())
            wrong = written != (image.get("size") or 0) or image.get("checksum") not in (None, md5.hexdigest())
            if os_hash is not None and image.get("os_hash_value") not in (None, os_hash.hexdigest()):
                wrong = True
            if wrong:
                os.unlink(part)
                raise ReplicationFailed("the data read from the source does not match its size and checksums")
            os.replace(part, data)
        self._atomic_write(self._file(image["id"], "json"), json.dumps({"image": image, "members": members}, indent=1))
        self._sync_dir()
        return written

    def _data_matches(self, image: dict) -> bool:
        """A data file from an earlier run for the same bytes (its JSON names them)."""
        try:
            with open(self._file(image["id"], "json")) as f:
                old = json.load(f)["image"]
        except (OSError, ValueError, KeyError):
            return False
        return same_data(image, old) and os.path.exists(self._file(image["id"], "data"))

    def _atomic_write(self, path: str, text: str) -> None:
        with open(path + ".part", "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + ".part", path)

    def _sync_dir(self) -> None:
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- the commands ---------------------------------------------------------------------------


def _service(args, role: str) -> Service:
    def option(name: str, default=None):
        value = getattr(args, f"{role}_{name}")
        return value if value is not None else os.environ.get(f"ABBILD_{role.upper()}_{name.upper()}", default)

    credentials = Credentials(
        token=option("token"),
        auth_url=option("auth_url"),
        username=option("username"),
        password=option("password"),
        project=option("project"),
        user_domain=option("user_domain", "Default"),
        project_domain=option("project_domain", "Default"),
    )
    return Service(role, getattr(args, role), credentials, timeout=args.timeout)


def _filters(args) -> Filters:
    properties = {}
    for item in args.property or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--property {item!r}: write it as key=value")
        properties[key] = value
    return Filters(owner=args.owner, visibility=args.visibility, properties=properties)


def cmd_size(args) -> int:
    source = _service(args, "source")
    images = source.images(_filters(args))
    result = {status: {"images": 0, "bytes": 0} for status in STATUSES}
    for image in images:
        result[image["status"]]["images"] += 1
        result[image["status"]]["bytes"] += image.get("size") or 0
    if args.json:
        print(json.dumps({"source": source.root, **result}, indent=2))
    else:
        rows = [("Status", "Images", "Bytes", "Size")]
        rows += [(s, str(v["images"]), str(v["bytes"]), _human(v["bytes"])) for s, v in result.items()]
        print(f"{source.root}:")
        _table(rows)
    return 0


def cmd_compare(args) -> int:
    source, target = _service(args, "source"), _service(args, "target")
    held = target.listing(Filters())  # unfiltered: an image may differ in what the filters look at
    report = []
    for image in source.images(_filters(args)):
        existing = held.get(image["id"])
        found = differences(image, source.members(image), existing, target.members(existing) if existing else {})
        report.append({"id": image["id"], "name": image.get("name"), "differences": found})
    differing = [r for r in report if r["differences"]]
    if args.json:
        print(json.dumps({"identical": not differing, "compared": len(report), "images": report}, indent=2))
    else:
        if differing:
            rows = [("ID", "Name", "Differences")]
            rows += [(r["id"], r["name"] or "", "; ".join(r["differences"])) for r in differing]
            _table(rows)
        print(f"{len(report)} image(s) compared, {len(differing)} differ")
    return 1 if differing else 0


def _copy_all(sources, copier: Copier, held: dict) -> list[Outcome]:
    outcomes = []
    for image, members, data in sources:
        try:
            want = members()
        except AbbildError as exc:
            outcomes.append(Outcome(image["id"], image.get("name"), "failed", error=str(exc)))
            continue
        existing = held.get(image["id"])
        if existing is not None and not differences(image, want, existing, copier.target.members(existing)):
            outcomes.append(Outcome(image["id"], image.get("name"), "skipped"))
            continue
        outcomes.append(copier.copy(image, want, data, existing))
    return outcomes


def _run_copy(args, sources_of, target: Service) -> int:
    progress = ProgressBar(sys.stderr) if not args.quiet else (lambda *a: None)
    held = target.listing(Filters())  # unfiltered: an image may differ in what the filters look at
    try:
        outcomes = _copy_all(sources_of(), Copier(target, progress), held)
    finally:
        if isinstance(progress, ProgressBar):
            progress.done()
    return _report(args, outcomes)


def cmd_livecopy(args) -> int:
    source, target = _service(args, "source"), _service(args, "target")

    def sources():
        for image in source.images(_filters(args)):
            yield image, (lambda i=image: source.members(i)), (lambda i=image: source.data(i))

    return _run_copy(args, sources, target)


def cmd_load(args) -> int:
    directory, target = Directory(args.dir), _service(args, "target")

    def sources():
        for image, members in directory.entries(_filters(args)):
            yield image, (lambda m=members: m), (lambda i=image: directory.read(i))

    return _run_copy(args, sources, target)


def cmd_dump(args) -> int:
    source, directory = _service(args, "source"), Directory(args.dir)
    os.makedirs(args.dir, exist_ok=True)
    progress = ProgressBar(sys.stderr) if not args.quiet else None
    outcomes = []
    try:
        for image in source.images(_filters(args)):
            outcome = Outcome(image["id"], image.get("name"), "skipped")
            try:
                members = source.members(image)
                if not directory.holds(image, members):
                    size = image.get("size") or 0

                    def step(done, image_id=image["id"], size=size):
                        if progress is not None:
                            progress(image_id, done, size)

                    outcome.bytes = directory.write(image, members, source.data(image), step)
                    outcome.result, outcome.done = "copied", ["data" if outcome.bytes else "metadata"]
            except (AbbildError, OSError) as exc:
                outcome.result, outcome.error = "failed", str(exc)
            outcomes.append(outcome)
    finally:
        if progress is not None:
            progress.done()
    return _report(args, outcomes)


def _report(args, outcomes: list[Outcome]) -> int:
    failed = [o for o in outcomes if o.result == "failed"]
    totals = {
        "copied": sum(o.result == "copied" for o in outcomes),
        "skipped": sum(o.result == "skipped" for o in outcomes),
        "failed": len(failed),
        "bytes": sum(o.bytes for o in outcomes),
    }
    if args.json:
        images = [
            {"id": o.image_id, "name": o.name, "result": o.result, "done": o.done, "bytes": o.bytes, "error": o.error}
            for o in outcomes
        ]
        print(json.dumps({**totals, "images": images}, indent=2))
    else:
        rows = [("ID", "Name", "Result", "Done", "Bytes")]
        rows += [(o.image_id, o.name or "", o.result, ", ".join(o.done), str(o.bytes)) for o in outcomes]
        _table(rows)
        print(
            f"copied {totals['copied']}, skipped {totals['skipped']} (identical), failed {totals['failed']}, "
            f"{_human(totals['bytes'])} moved"
        )
    for o in failed:
        print(f"abbild: failed: {o.image_id} ({o.name or 'no name'}): {o.error}", file=sys.stderr)
    return 1 if failed else 0


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _human(n: int) -> str:
    return f"{n / MIB:.1f} MiB" if n < 1 << 30 else f"{n / (1 << 30):.2f} GiB"


# -- the parser -----------------------------------------------------------------------------

_HELP = """Sides are Image API v2 services (abbild or Glance), given as their root URL; each side
authenticates with --<side>-token, with Keystone credentials (--<side>-auth-url,
-username, -password, -project, -user-domain, -project-domain), or not at all (noauth).
Each of these can come from the environment instead, as ABBILD_<SIDE>_<OPTION>
(ABBILD_SOURCE_TOKEN, ABBILD_TARGET_PASSWORD, ...), which keeps secrets off the command
line. Use an administrator of each side."""


def _resumable(func):
    def run(args) -> int:
        try:
            return func(args)
        except KeyboardInterrupt:
            raise AbbildError("interrupted; the same command continues where this one stopped") from None

    return run


def _side_options(parser: argparse.ArgumentParser, role: str) -> None:
    group = parser.add_argument_group(f"{role} authentication (else $ABBILD_{role.upper()}_<OPTION>)")
    group.add_argument(f"--{role}-token", metavar="TOKEN", help="a token of an administrator")
    group.add_argument(f"--{role}-auth-url", metavar="URL", help="Keystone v3 (password credentials)")
    group.add_argument(f"--{role}-username", metavar="NAME")
    group.add_argument(f"--{role}-password", metavar="PASSWORD")
    group.add_argument(f"--{role}-project", metavar="NAME", help="the project to scope the token to")
    group.add_argument(f"--{role}-user-domain", metavar="NAME", help="default: Default")
    group.add_argument(f"--{role}-project-domain", metavar="NAME", help="default: Default")


def add_parser(sub, with_config, embedded) -> None:
    """``abbild replicate``. It reads no configuration of its own: both sides are
    services it reaches over HTTP, so *with_config* and *embedded* are not used."""
    r = sub.add_parser(
        "replicate",
        help="copy images between two Image API v2 services (abbild or Glance), or through a directory",
        description=_HELP,
    )
    commands = r.add_subparsers(dest="replicate_command", required=True)

    def command(name: str, help: str, func, sides: tuple[str, ...], positionals: tuple[tuple[str, str], ...]):
        sp = commands.add_parser(name, help=help, description=_HELP)
        for dest, text in positionals:
            sp.add_argument(dest, metavar=dest.upper(), help=text)
        sp.add_argument("--owner", help="only images of this owner (project id)")
        sp.add_argument(
            "--visibility", choices=["public", "private", "shared", "community"], help="only images of this visibility"
        )
        sp.add_argument(
            "--property", action="append", metavar="KEY=VALUE", help="only images with this property (repeatable)"
        )
        sp.add_argument("--json", action="store_true", help="print JSON instead of a table")
        sp.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS", help="per read (default 60)")
        if name in ("livecopy", "dump", "load"):
            sp.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
        for role in sides:
            _side_options(sp, role)
        sp.set_defaults(func=_resumable(func))

    url = "root URL of the {} service (for example http://glance.example.org:9292)"
    command(
        "size",
        "the active and deactivated images of SOURCE and their bytes",
        cmd_size,
        ("source",),
        (("source", url.format("source")),),
    )
    command(
        "compare",
        "the images of SOURCE that TARGET lacks or holds otherwise; exit 1 unless identical",
        cmd_compare,
        ("source", "target"),
        (("source", url.format("source")), ("target", url.format("target"))),
    )
    command(
        "livecopy",
        "copy what TARGET lacks or holds otherwise (rerun to resume); exit 1 if any image failed",
        cmd_livecopy,
        ("source", "target"),
        (("source", url.format("source")), ("target", url.format("target"))),
    )
    command(
        "dump",
        "write SOURCE's images into DIR (metadata JSON + data files; rerun to resume)",
        cmd_dump,
        ("source",),
        (("source", url.format("source")), ("dir", "the directory to write")),
    )
    command(
        "load",
        "copy the images of a dump in DIR to TARGET, as livecopy does",
        cmd_load,
        ("target",),
        (("dir", "a directory written by abbild replicate dump"), ("target", url.format("target"))),
    )
