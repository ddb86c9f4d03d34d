"""The http store: read-only image data at http(s) URLs, fetched through the guard."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import urllib.parse
from collections.abc import Iterator

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import SSLError

from abbild.driver import Capability, Driver
from abbild.errors import AccessDenied, BackendError, BackendUnavailable, ConfigError, NotFound
from abbild.streams import ChunkReader
from abbild_http import opts
from abbild_http.guard import Guard, Target

LOG = logging.getLogger(__name__)

REDIRECTS = {301, 302, 303, 307, 308}
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class HTTPDriver(Driver):
    """Reads objects from the http(s) URLs they were registered under.

    Every request, and every redirect it leads to, passes :class:`Guard`: by default
    nothing on the service's own host or private networks can be fetched. The
    connection goes to the address the guard checked, with the URL's host name in
    the ``Host`` header and in TLS (SNI and certificate check).
    """

    schemes = ("http", "https")
    # Users register their own URLs here; the guard keeps them off internal hosts.
    capabilities = Capability.READ | Capability.RANGE_READ | Capability.USER_LOCATIONS
    options = opts.OPTS

    def configure(self) -> Capability:
        """:raises abbild.errors.ConfigError: a guard option is malformed, or the TLS
        options contradict each other or name a missing file."""
        store, conf = self.store_name, self.conf
        self._guard = Guard(store, conf, self.schemes)
        if conf.ca_file and conf.insecure:
            raise ConfigError(
                f"store {store!r}: both ca_file and insecure are set; "
                f"unset [{store}] insecure to verify certificates against ca_file"
            )
        if conf.ca_file and not os.path.isfile(conf.ca_file):
            raise ConfigError(f"store {store!r}: ca_file {conf.ca_file!r} is not a file; fix [{store}] ca_file")
        if conf.insecure:
            LOG.warning("store %r: insecure is set; https certificates are not verified", store)
        self._timeout = urllib3.Timeout(connect=conf.connect_timeout, read=conf.read_timeout)
        return type(self).capabilities

    def check(self) -> str:
        return "ok (read-only: images are registered by URL)"

    def validate_location(self, uri: str) -> None:
        """Check a user-supplied location before it is stored.

        The same checks run again on every download (DNS answers change), so this
        only spares the user a location that could never be read.

        :raises abbild.errors.AccessDenied: a rule refuses *uri*; the message says
            which rule and which option changes it.
        :raises abbild.errors.BackendUnavailable: the host name does not resolve.
        """
        self._guard.check(uri)

    # -- reading ----------------------------------------------------------------------

    def size(self, uri: str) -> int:
        response, target = self._open(uri, "HEAD")
        with contextlib.closing(response):
            if response.status not in (405, 501):  # servers without HEAD: ask with GET
                self._raise_for_status(response, uri, target)
                length = _int_header(response, "Content-Length")
                if length is not None:
                    return length
        # No length in the HEAD answer (dynamic content): ask for the first byte; the
        # total is in Content-Range, or in Content-Length if the server ignores Range.
        response, target = self._open(uri, "GET", {"Range": "bytes=0-0"})
        with contextlib.closing(response):
            self._raise_for_status(response, uri, target)
            if response.status == 206:
                match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
                if match and match[3] != "*":
                    return int(match[3])
            else:
                length = _int_header(response, "Content-Length")
                if length is not None:
                    return length
        raise BackendError(self.store_name, f"{target.display}: the server does not tell the size")

    def get(self, uri: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        headers = {}
        if offset or length is not None:
            if length == 0:
                self.size(uri)  # nothing to read, but a missing object is still NotFound
                return ChunkReader(None)
            last = "" if length is None else str(offset + length - 1)
            headers["Range"] = f"bytes={offset}-{last}"
        response, target = self._open(uri, "GET", headers)
        try:
            if response.status == 416:  # the range starts at or past the end
                response.close()
                return ChunkReader(None)
            self._raise_for_status(response, uri, target)
            skip = offset
            if response.status == 206:
                match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
                if not match or int(match[1]) > offset:
                    raise BackendError(self.store_name, f"{target.display}: the server sent the wrong range")
                skip = offset - int(match[1])
        except BaseException:
            response.close()
            raise

        def read(size: int) -> bytes:
            try:
                return response.read(size)
            except Urllib3Error as exc:  # the server stalled or cut the body short
                raise BackendUnavailable(self.store_name, f"{target.display}: download failed ({exc})") from None

        # A 200 answer to a Range request is the whole object: skip and cut here. Closing
        # early drops the connection instead of reading the rest of an image.
        return ChunkReader(read, response.close, skip=skip, length=length, chunk_size=self.conf.chunk_size)

    # -- HTTP -------------------------------------------------------------------------

    def _open(self, uri: str, method: str, headers: dict[str, str] | None = None):
        """Send *method* for *uri*, following redirects through the guard.

        :returns: ``(response, target)``; the response body is not read yet and the
            caller closes the response.
        """
        url = uri
        for _ in range(self.conf.max_redirects + 1):
            target = self._guard.check(url)
            response = self._request(target, method, headers or {})
            location = response.headers.get("Location")
            if response.status not in REDIRECTS or not location:
                return response, target
            response.close()
            url = urllib.parse.urljoin(url, location)
            LOG.debug("store %r: %s redirects to %s", self.store_name, target.display, url.split("?", 1)[0])
        raise BackendError(
            self.store_name,
            f"{target.display}: more than {self.conf.max_redirects} redirects; "
            f"raise [{self.store_name}] max_redirects if that is expected",
        )

    def _request(self, target: Target, method: str, headers: dict[str, str]) -> urllib3.BaseHTTPResponse:
        """One request to the first of the target's checked addresses that answers."""
        headers = {"Host": target.host_header, "Accept-Encoding": "identity", **headers}
        failure = None
        for address in target.addresses:
            pool = self._pool(target, address)
            try:
                with self._errors(target):
                    return pool.urlopen(
                        method,
                        target.path,
                        headers=headers,
                        redirect=False,
                        retries=False,
                        preload_content=False,
                        decode_content=False,
                        release_conn=False,
                    )
            except BackendUnavailable as exc:  # try the next address of the name
                failure = exc
            finally:
                # The response keeps its own connection; nothing else uses the pool.
                pool.close()
        raise failure

    def _pool(self, target: Target, address: str) -> urllib3.HTTPConnectionPool:
        """A connection pool for *address*, presenting the URL's host name over TLS.

        Connecting to the checked address, rather than to the name, is what keeps a
        second DNS answer from taking the request elsewhere."""
        if target.scheme == "http":
            return urllib3.HTTPConnectionPool(address, target.port, timeout=self._timeout, maxsize=1)
        insecure = self.conf.insecure
        return urllib3.HTTPSConnectionPool(
            address,
            target.port,
            timeout=self._timeout,
            maxsize=1,
            cert_reqs="CERT_NONE" if insecure else "CERT_REQUIRED",
            ca_certs=self.conf.ca_file or None,
            assert_hostname=False if insecure else target.host,
            server_hostname=target.host,
        )

    @contextlib.contextmanager
    def _errors(self, target: Target):
        """Translate urllib3's errors for *target* into store errors."""
        try:
            yield
        except SSLError as exc:
            raise AccessDenied(
                self.store_name,
                f"{target.display}: TLS failed ({exc}); if the server's certificate is signed by a "
                f"private CA, set [{self.store_name}] ca_file to it",
            ) from None
        except Urllib3Error as exc:
            raise BackendUnavailable(self.store_name, f"{target.display}: {exc}") from None

    def _raise_for_status(self, response, uri: str, target: Target) -> None:
        status = response.status
        if 200 <= status < 300:
            return
        if status in (404, 410):
            raise NotFound(uri)
        if status in (401, 403):
            raise AccessDenied(self.store_name, f"{target.display}: the server answered {status}")
        if status >= 500:
            raise BackendUnavailable(self.store_name, f"{target.display}: the server answered {status}")
        raise BackendError(self.store_name, f"{target.display}: the server answered {status}")


def _int_header(response, name: str) -> int | None:
    value = response.headers.get(name, "")
    # isdigit() alone takes "²", which int() refuses
    return int(value) if value.isascii() and value.isdigit() else None
