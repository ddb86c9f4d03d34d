"""The vmware store: image data as files on vSphere datastores.

Data moves through the datastore file interface of ESXi and vCenter Server
(``GET/HEAD/PUT/DELETE https://<host>/folder/<path>?dcPath=<dc>&dsName=<ds>``,
"Datastore Access (/folder)" in the vSphere Web Services SDK Programming Guide).
That interface takes the session cookie of the SOAP API, so the driver logs in the
way every vSphere SOAP client does: ``RetrieveServiceContent`` on the
``ServiceInstance`` to learn the session manager's name (``SessionManager`` on
vCenter, ``ha-sessionmgr`` on ESXi), then ``SessionManager.Login`` with user name
and password, both POSTed to ``/sdk``; the answer sets the ``vmware_soap_session``
cookie. A 401 later means the session expired: the driver logs in again once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable, Iterator
from xml.sax.saxutils import escape

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import SSLError

from abbild.driver import Capability, Driver, StoredObject
from abbild.errors import (
    AccessDenied,
    AlreadyExists,
    BackendError,
    BackendUnavailable,
    ConfigError,
    NotFound,
    StoreFull,
)
from abbild.streams import ChunkReader
from abbild_vmware import opts

LOG = logging.getLogger(__name__)

SESSION_COOKIE = "vmware_soap_session"
# Any API version since 2.5 has RetrieveServiceContent and Login; 6.5 is the oldest
# release still seen in the field, and newer servers answer it unchanged.
SOAP_ACTION = '"urn:vim25/6.5"'
_SOAP = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
    '<soapenv:Body xmlns="urn:vim25">{}</soapenv:Body></soapenv:Envelope>'
)
_VIM = "{urn:vim25}"
_KEY_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/\d+")
# 507 Insufficient Storage is what the test server answers when a datastore is full;
# what a real ESXi answers is not verified (see README), 413 is taken to mean the same.
FULL = {507, 413}


@dataclasses.dataclass(frozen=True)
class Datastore:
    dc_path: str
    name: str
    weight: int = 0

    @classmethod
    def parse(cls, store: str, value: str) -> Datastore:
        dc_path, _, rest = value.strip().partition(":")
        name, _, weight = rest.partition(":")
        if not dc_path or not name or not (weight == "" or weight.lstrip("-").isdigit()):
            raise ConfigError(
                f"store {store!r}: datastores entry {value!r} is not <datacenter path>:<datastore name>"
                f"[:<weight>]; fix [{store}] datastores, for example dc1:datastore1:100"
            )
        return cls(dc_path, name, int(weight or 0))


class VMwareDriver(Driver):
    """Stores each object as ``<image_dir>/<key>`` on one of the configured datastores.

    URIs are ``vsphere://<host>/folder/<image_dir>/<key>?dcPath=<dc>&dsName=<ds>``,
    as Glance writes them; no credentials, no port (they live in the config).
    """

    schemes = ("vsphere",)
    capabilities = Capability.READ | Capability.WRITE | Capability.DELETE | Capability.RANGE_READ
    options = opts.OPTS

    def configure(self) -> Capability:
        """:raises abbild.errors.ConfigError: a required option is missing or malformed,
        or the TLS options contradict each other or name a missing file."""
        store, conf = self.store_name, self.conf
        for name in ("host", "user", "password"):
            if not getattr(conf, name):
                raise ConfigError(f"store {store!r}: option {name!r} is not set; set [{store}] {name}")
        if not conf.datastores:
            raise ConfigError(
                f"store {store!r}: option 'datastores' is empty; set [{store}] datastores to "
                "<datacenter path>:<datastore name>:<weight> entries"
            )
        parsed = [Datastore.parse(store, value) for value in conf.datastores]
        self._datastores = sorted(parsed, key=lambda ds: -ds.weight)  # stable: ties keep their order
        self._full_until: dict[Datastore, float] = {}
        if conf.ca_file and conf.insecure:
            raise ConfigError(
                f"store {store!r}: both ca_file and insecure are set; unset [{store}] insecure "
                "to verify the server against ca_file"
            )
        if conf.ca_file and not os.path.isfile(conf.ca_file):
            raise ConfigError(f"store {store!r}: ca_file {conf.ca_file!r} is not a file; fix [{store}] ca_file")
        if conf.insecure:
            LOG.warning("store %r: insecure is set; the certificate of %s is not verified", store, conf.host)
        self._host = conf.host.lower()
        self._image_dir = conf.image_dir.strip("/")
        self._pool = urllib3.HTTPSConnectionPool(
            conf.host,
            conf.port,
            timeout=urllib3.Timeout(connect=conf.connect_timeout, read=conf.read_timeout),
            maxsize=8,
            block=False,
            cert_reqs="CERT_NONE" if conf.insecure else "CERT_REQUIRED",
            ca_certs=conf.ca_file or None,
            assert_hostname=False if conf.insecure else None,
            retries=False,
        )
        self._cookie: str | None = None
        self._login_lock = threading.Lock()
        return type(self).capabilities

    def check(self) -> str:
        self._relogin(self._cookie)
        return f"ok: logged in to {self.conf.host} as {self.conf.user}"

    def properties(self) -> dict[str, object]:
        return {"datastores": [f"{ds.dc_path}:{ds.name}:{ds.weight}" for ds in self._datastores]}

    # -- reading ----------------------------------------------------------------------

    def size(self, uri: str) -> int:
        with contextlib.closing(self._call("HEAD", self._target(uri))) as response:
            self._raise_for_status(response, uri)
            length = response.headers.get("Content-Length", "")
            if not length.isdigit():
                raise BackendError(self.store_name, f"{uri}: the server tells no Content-Length")
            return int(length)

    def get(self, uri: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        headers = {}
        if offset or length is not None:
            last = "" if length is None else str(offset + length - 1)
            headers["Range"] = f"bytes={offset}-{last}"
        if length == 0:  # no byte wanted, but a missing object must still raise
            self.size(uri)
            return ChunkReader(None)
        response = self._call("GET", self._target(uri), headers)
        try:
            if response.status == 416:  # the range starts at or past the end
                response.close()
                return ChunkReader(None)
            self._raise_for_status(response, uri)
            skip = offset  # a 200 answer to a Range request is the whole file
            if response.status == 206:
                match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
                skip = offset - int(match[1]) if match else -1
                if skip < 0:
                    raise BackendError(self.store_name, f"{uri}: the server sent the wrong range")
        except BaseException:
            response.close()
            raise

        def read(size: int) -> bytes:
            try:
                return response.read(size)
            except Urllib3Error as exc:
                raise BackendUnavailable(self.store_name, f"download failed ({exc})") from None

        return ChunkReader(read, response.close, skip=skip, length=length, chunk_size=self.conf.chunk_size)

    # -- writing ----------------------------------------------------------------------

    def put(self, key: str, chunks: Iterable[bytes], size: int | None) -> StoredObject:
        datastore = self._choose_datastore()
        target = self._path(datastore, self._checked_key(key))
        uri = f"vsphere://{self._uri_host()}{target}"
        # PUT on /folder overwrites silently, so look first. Keys are unique image ids;
        # two puts of one key racing between HEAD and PUT is not a case to design for.
        with contextlib.closing(self._call("HEAD", target)) as response:
            if response.status == 200:
                raise AlreadyExists(key)
            if response.status != 404:
                self._raise_for_status(response, uri)
        counted = _Counted(chunks)
        headers = {"Content-Type": "application/octet-stream"}
        if size is not None:
            headers["Content-Length"] = str(size)
        try:
            # Unknown size: urllib3 sends Transfer-Encoding: chunked. The body streams
            # from the iterator; nothing holds a whole image in memory.
            with contextlib.closing(self._call("PUT", target, headers, body=counted, chunked=size is None)) as response:
                if response.status in FULL:
                    self._full_until[datastore] = time.monotonic() + self.conf.full_retry_interval
                    raise StoreFull(self.store_name, f"datastore {datastore.name} answered {response.status}")
                if response.status == 404:  # no such datacenter or datastore
                    raise BackendError(
                        self.store_name,
                        f"{self.conf.host} has no datastore {datastore.name!r} in datacenter "
                        f"{datastore.dc_path!r}; fix [{self.store_name}] datastores",
                    )
                self._raise_for_status(response, uri)
        except BaseException:
            self._remove_quietly(target)  # whatever part of the file the server kept
            raise
        return StoredObject(uri=uri, size=counted.count)

    def delete(self, uri: str) -> None:
        with contextlib.suppress(NotFound):  # gone already, or not a location of this server
            with contextlib.closing(self._call("DELETE", self._target(uri))) as response:
                self._raise_for_status(response, uri)

    def discard(self, key: str) -> None:
        for datastore in self._datastores:
            self._remove_quietly(self._path(datastore, self._checked_key(key)))

    # -- locations --------------------------------------------------------------------

    def _choose_datastore(self) -> Datastore:
        """The heaviest datastore not recently full; the heaviest of all if every one is."""
        now = time.monotonic()
        fits = [ds for ds in self._datastores if self._full_until.get(ds, 0) <= now]
        return (fits or self._datastores)[0]

    def _checked_key(self, key: str) -> str:
        if not _KEY_RE.fullmatch(key):
            raise AccessDenied(
                self.store_name,
                f"invalid key {key!r}: use up to 255 letters, digits, '.', '_' and '-', not starting with '.'",
            )
        return key

    def _path(self, datastore: Datastore, key: str) -> str:
        """The request target of *key* on *datastore*: ``/folder/...?dcPath=..&dsName=..``."""
        path = "/".join(p for p in (self._image_dir, key) if p)
        # %20 rather than "+" for spaces: every server decodes it the same way.
        query = urllib.parse.urlencode(
            {"dcPath": datastore.dc_path, "dsName": datastore.name}, quote_via=urllib.parse.quote
        )
        return f"/folder/{urllib.parse.quote(path)}?{query}"

    def _uri_host(self) -> str:
        return f"[{self._host}]" if ":" in self._host else self._host

    def _target(self, uri: str) -> str:
        """:returns: the request target *uri* names.
        :raises NotFound: *uri* is not a location on this store's server."""
        parts = urllib.parse.urlsplit(uri)
        query = urllib.parse.parse_qs(parts.query)
        if (
            parts.scheme != "vsphere"
            or (parts.hostname or "") != self._host.strip("[]")
            or parts.port is not None
            or parts.username is not None
            or not parts.path.startswith("/folder/")
            or "/../" in f"{urllib.parse.unquote(parts.path)}/"
            or len(query.get("dcPath", ())) != 1
            or len(query.get("dsName", ())) != 1
            or set(query) != {"dcPath", "dsName"}
        ):
            raise NotFound(uri)
        return f"{parts.path}?{parts.query}"

    # -- HTTP and the session ---------------------------------------------------------

    def _call(self, method: str, target: str, headers=None, body=None, chunked=False) -> urllib3.BaseHTTPResponse:
        """Send a /folder request with the session cookie, logging in first if needed.

        A request without a body is sent again after one new login if the session
        expired (401); an upload cannot be replayed, so its 401 is an error.
        :returns: the response, body unread; the caller closes it.
        """
        cookie = self._cookie or self._relogin(None)
        response = self._send(method, target, headers, body, chunked, cookie)
        if response.status == 401 and body is None:
            response.close()
            response = self._send(method, target, headers, body, chunked, self._relogin(cookie))
        if response.status == 401:
            response.close()
            raise AccessDenied(self.store_name, f"{self.conf.host} refused the session for {method} {target}")
        return response

    def _send(self, method, target, headers, body, chunked, cookie) -> urllib3.BaseHTTPResponse:
        all_headers = {"Cookie": cookie, "Accept-Encoding": "identity", **(headers or {})}
        with self._errors():
            return self._pool.urlopen(
                method,
                target,
                headers=all_headers,
                body=body,
                chunked=chunked,
                redirect=False,
                preload_content=False,
                decode_content=False,
            )

    def _relogin(self, stale: str | None) -> str:
        """Log in unless another thread already replaced the *stale* cookie.
        :returns: the current session cookie (``name=value``)."""
        with self._login_lock:
            if self._cookie is None or self._cookie == stale:
                self._cookie = self._login()
            return self._cookie

    def _login(self) -> str:
        content = self._soap(
            '<RetrieveServiceContent><_this type="ServiceInstance">ServiceInstance</_this></RetrieveServiceContent>'
        )
        manager = content.find(f".//{_VIM}sessionManager")
        if manager is None or not manager.text:
            raise BackendError(self.store_name, f"{self.conf.host}/sdk named no session manager")
        login = (
            f'<Login><_this type="SessionManager">{escape(manager.text)}</_this>'
            f"<userName>{escape(self.conf.user)}</userName><password>{escape(self.conf.password)}</password></Login>"
        )
        cookie = self._soap(login, want_cookie=True)
        LOG.info("store %r: logged in to %s as %s", self.store_name, self.conf.host, self.conf.user)
        return cookie

    def _soap(self, call: str, want_cookie: bool = False):
        """POST one SOAP call to /sdk.

        :returns: the parsed envelope, or with *want_cookie* the session cookie it set.
        :raises AccessDenied: the server refused the user name or password.
        """
        headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": SOAP_ACTION}
        with self._errors():
            response = self._pool.urlopen("POST", "/sdk", body=_SOAP.format(call).encode(), headers=headers)
        text = response.data.decode("utf-8", "replace")
        if response.status != 200:
            if "InvalidLogin" in text:
                raise AccessDenied(
                    self.store_name,
                    f"{self.conf.host} refused the login of {self.conf.user!r} (wrong user name or password); "
                    f"fix [{self.store_name}] user and password",
                )
            fault = re.search(r"<faultstring>(.*?)</faultstring>", text, re.S)
            reason = fault[1] if fault else f"HTTP {response.status}"
            raise BackendError(self.store_name, f"{self.conf.host}/sdk: {reason}")
        if want_cookie:
            for header in response.headers.getlist("Set-Cookie"):
                if header.startswith(f"{SESSION_COOKIE}="):
                    return header.split(";", 1)[0]  # sent back verbatim, quotes and all
            raise BackendError(self.store_name, f"{self.conf.host}/sdk: the login set no {SESSION_COOKIE} cookie")
        try:
            return ElementTree.fromstring(text)
        except ElementTree.ParseError as exc:
            raise BackendError(self.store_name, f"{self.conf.host}/sdk answered no XML ({exc})") from None

    @contextlib.contextmanager
    def _errors(self):
        try:
            yield
        except SSLError as exc:
            raise AccessDenied(
                self.store_name,
                f"TLS with {self.conf.host} failed ({exc}); set [{self.store_name}] ca_file to the CA "
                "that signed its certificate",
            ) from None
        except Urllib3Error as exc:
            raise BackendUnavailable(self.store_name, f"{self.conf.host}: {exc}") from None

    def _raise_for_status(self, response, uri: str) -> None:
        status = response.status
        if 200 <= status < 300:
            return
        if status == 404:
            raise NotFound(uri)
        if status == 403:
            raise AccessDenied(self.store_name, f"{uri}: the server answered 403 (missing datastore privileges?)")
        if status >= 500:
            raise BackendUnavailable(self.store_name, f"{uri}: the server answered {status}")
        raise BackendError(self.store_name, f"{uri}: the server answered {status}")

    def _remove_quietly(self, target: str) -> None:
        with contextlib.suppress(NotFound, BackendUnavailable, BackendError, AccessDenied):
            with contextlib.closing(self._call("DELETE", target)) as response:
                if response.status not in (200, 204, 404):
                    LOG.warning("store %r: could not remove %s (HTTP %s)", self.store_name, target, response.status)


class _Counted:
    """Passes chunks through, counting their bytes."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = chunks
        self.count = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            self.count += len(chunk)
            yield chunk
