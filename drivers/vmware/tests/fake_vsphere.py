"""A stand-in for the two parts of ESXi/vCenter that the vmware store uses, for tests.

No vCenter can run here, so this implements, from VMware's documentation, only:

- ``POST /sdk`` with the SOAP calls ``RetrieveServiceContent`` (answers a session
  manager named ``ha-sessionmgr``, as ESXi does) and ``SessionManager.Login``
  (sets ``vmware_soap_session``; a wrong password gets the ``InvalidLogin`` fault,
  HTTP 500, as SOAP faults do);
- the datastore file interface ``/folder/<path>?dcPath=<dc>&dsName=<ds>``: GET (with
  Range: 206/416), HEAD, PUT (Content-Length or chunked; 201 new, 200 replaced; 507
  when the datastore's capacity would be exceeded) and DELETE (204); 404 for unknown
  files, datacenters or datastores; 401 without a valid session cookie.

What a real server answers on a full datastore was not verified; 507 is a guess.

Run it by hand for functional tests::

    python3 fake_vsphere.py --port 8443 --ca-out /tmp/vsphere-ca.pem \\
        --user abbild --password secret --datastore dc1:ds1:10000000000
"""

from __future__ import annotations

import argparse
import http.server
import os
import re
import secrets
import ssl
import threading
import urllib.parse
from xml.sax.saxutils import unescape

SOAP_ENVELOPE = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>{}</soapenv:Body></soapenv:Envelope>'
)
SERVICE_CONTENT = (
    '<RetrieveServiceContentResponse xmlns="urn:vim25"><returnval>'
    '<rootFolder type="Folder">ha-folder-root</rootFolder>'
    '<sessionManager type="SessionManager">ha-sessionmgr</sessionManager>'
    "</returnval></RetrieveServiceContentResponse>"
)
LOGIN_OK = '<LoginResponse xmlns="urn:vim25"><returnval><userName>{}</userName></returnval></LoginResponse>'
INVALID_LOGIN = (
    "<soapenv:Fault><faultcode>ServerFaultCode</faultcode>"
    "<faultstring>Cannot complete login due to an incorrect user name or password.</faultstring>"
    '<detail><InvalidLoginFault xmlns="urn:vim25" xsi:type="InvalidLogin"></InvalidLoginFault></detail>'
    "</soapenv:Fault>"
)


class Handler(http.server.BaseHTTPRequestHandler):
    timeout = 10  # an idle or silent client must not keep a handler (or the test) waiting

    def setup(self):
        super().setup()
        # Here, on the request's own thread: a client that connects and never speaks TLS
        # (another test probing what it took for a free port) holds up nobody else.
        self.request.do_handshake()

    def log_message(self, format, *args):
        pass

    # -- /sdk ---------------------------------------------------------------------------

    def do_POST(self):
        if self.path != "/sdk":
            return self._send(404)
        body = self._read_body().decode()
        server = self.server
        if "<RetrieveServiceContent" in body:
            return self._send(200, SOAP_ENVELOPE.format(SERVICE_CONTENT).encode(), {"Content-Type": "text/xml"})
        login = re.search(
            r'<Login>.*?<_this type="SessionManager">ha-sessionmgr</_this>'
            r"<userName>(.*?)</userName><password>(.*?)</password>",
            body,
            re.S,
        )
        if login is None:
            return self._send(
                500,
                SOAP_ENVELOPE.format("<soapenv:Fault><faultstring>unknown call</faultstring></soapenv:Fault>").encode(),
            )
        server.logins += 1
        if (unescape(login[1]), unescape(login[2])) != (server.user, server.password):
            return self._send(500, SOAP_ENVELOPE.format(INVALID_LOGIN).encode(), {"Content-Type": "text/xml"})
        session = secrets.token_hex(16)
        server.sessions.add(session)
        cookie = f'vmware_soap_session="{session}"; Path=/; HttpOnly; Secure;'
        answer = SOAP_ENVELOPE.format(LOGIN_OK.format(login[1])).encode()
        return self._send(200, answer, {"Content-Type": "text/xml", "Set-Cookie": cookie})

    # -- /folder ------------------------------------------------------------------------

    def do_HEAD(self):
        self._file(lambda key, data: self._send(200, b"", {"Content-Length": str(len(data))}, length=False))

    def do_GET(self):
        self._file(self._get)

    def do_DELETE(self):
        def delete(key, data):
            with self.server.lock:
                del self.server.files[key]
            self._send(204)

        self._file(delete)

    def do_PUT(self):
        self._file(self._put, must_exist=False)

    def _file(self, action, must_exist=True):
        """Check the session and the datastore, then run *action(key, data)*."""
        server = self.server
        server.requests.append((self.command, self.path))
        cookie = re.search(r'vmware_soap_session="?([0-9a-f]+)"?', self.headers.get("Cookie", ""))
        if cookie is None or cookie[1] not in server.sessions:
            if self.command == "PUT":
                self._read_body()
            return self._send(401, b"", {"WWW-Authenticate": 'Basic realm="VMware HTTP server"'})
        parts = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(parts.query))
        datastore = (query.get("dcPath", "ha-datacenter"), query.get("dsName"))
        if not parts.path.startswith("/folder/") or datastore not in server.capacity:
            return self._send(404)
        key = (*datastore, urllib.parse.unquote(parts.path[len("/folder/") :]))
        data = server.files.get(key)
        if data is None and must_exist:
            return self._send(404)
        action(key, data)

    def _get(self, key, data):
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if not match:
            return self._send(200, data)
        start = int(match[1])
        end = min(int(match[2]) if match[2] else len(data) - 1, len(data) - 1)
        if start >= len(data):
            return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
        self._send(206, data[start : end + 1], {"Content-Range": f"bytes {start}-{end}/{len(data)}"})

    def _put(self, key, old):
        try:
            data = self._read_body()
        except (ConnectionError, ValueError):
            return  # the client went away mid-upload: keep nothing, as a real datastore discards it
        server = self.server
        with server.lock:
            used = sum(len(v) for k, v in server.files.items() if k[:2] == key[:2] and k != key)
            if used + len(data) > server.capacity[key[:2]]:
                return self._send(507, b"Insufficient Storage")
            server.files[key] = data
        self._send(200 if old is not None else 201)

    # -- plumbing -----------------------------------------------------------------------

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            pieces = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"x", 16)  # ValueError on EOF
                if size == 0:
                    self.rfile.readline()
                    return b"".join(pieces)
                piece = self.rfile.read(size + 2)
                if len(piece) != size + 2:
                    raise ConnectionError("chunk cut short")
                pieces.append(piece[:-2])
        length = int(self.headers.get("Content-Length", 0))
        data = self.rfile.read(length)
        if len(data) != length:
            raise ConnectionError("body cut short")
        return data

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, length: bool = True) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()  # HTTP/1.0: one request per connection
        if self.command != "HEAD":
            self.wfile.write(body)


class FakeVSphere(http.server.ThreadingHTTPServer):
    """The server. *datastores* maps ``(dc_path, ds_name)`` to a capacity in bytes."""

    daemon_threads = True

    def __init__(self, tls: ssl.SSLContext, user: str, password: str, datastores: dict, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.socket = tls.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)
        self.user, self.password = user, password
        self.capacity = dict(datastores)
        self.files: dict[tuple[str, str, str], bytes] = {}
        self.sessions: set[str] = set()
        self.logins = 0
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def expire_sessions(self) -> None:
        self.sessions.clear()

    def handle_error(self, request, client_address):
        pass  # clients hanging up mid-transfer are part of the tests


def main() -> None:
    import trustme  # noqa: PLC0415  (test dependency, only needed when run by hand)

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8443, help="0: any free port (the line printed names it)")
    parser.add_argument("--user", default="abbild")
    parser.add_argument("--password", default="secret")
    parser.add_argument("--datastore", action="append", default=[], help="dc:ds:capacity_bytes (repeatable)")
    parser.add_argument("--ca-out", required=True, help="where to write the CA certificate (PEM) for ca_file")
    args = parser.parse_args()
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    datastores = {}
    for spec in args.datastore or ["dc1:ds1:10000000000"]:
        dc, ds, capacity = spec.rsplit(":", 2)
        datastores[(dc, ds)] = int(capacity)
    server = FakeVSphere(context, args.user, args.password, datastores, args.port)
    # Only once the port is ours: whoever waits for the CA file (or this line) then
    # talks to this server, never to another one that held the port first.
    ca.cert_pem.write_to_path(args.ca_out + ".tmp")
    os.replace(args.ca_out + ".tmp", args.ca_out)
    print(f"fake vSphere on https://127.0.0.1:{server.port} (CA in {args.ca_out})", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
