"""The guard against server-side request forgery: which URLs the http store may fetch.

Image locations come from users, and the service fetches them from inside the
operator's network. Without a guard, a user could make the service read its own
metadata service (169.254.169.254), an internal admin page, or a private host,
and learn the answer through the image data or the error it gets.

:meth:`Guard.check` parses a URL, applies the scheme, host and port rules, resolves
the host and checks every address it resolves to. The caller then connects to one
of those checked addresses (never resolving the name again), so a name cannot
point somewhere else between the check and the connection (DNS rebinding).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import urllib.parse

from abbild.errors import AccessDenied, BackendUnavailable, ConfigError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclasses.dataclass(frozen=True)
class Target:
    """A URL that passed the guard, and the addresses it may be fetched from."""

    scheme: str
    host: str  # lower-case ASCII; an IPv6 literal without brackets
    port: int
    path: str  # path and query, as sent in the request line
    addresses: tuple[str, ...]  # every address the host resolved to, all checked

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    @property
    def display(self) -> str:
        """The URL without its query, for messages and logs (a query may hold a token)."""
        return f"{self.scheme}://{self.host_header}{self.path.split('?', 1)[0]}"


def resolve(host: str, port: int) -> list[str]:
    """:returns: the addresses *host* resolves to, in the resolver's order.
    Module-level so tests can stand in for DNS."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


class Guard:
    """The rules of one store, from its option group (see :mod:`abbild_http.opts`).

    :raises abbild.errors.ConfigError: an option holds something that is not a
        scheme this store speaks, or not a CIDR range.
    """

    def __init__(self, store: str, conf, schemes: tuple[str, ...]) -> None:
        self.store = store
        self.schemes = {s.strip().lower() for s in conf.allowed_schemes}
        unknown = self.schemes - set(schemes)
        if unknown:
            raise ConfigError(
                f"store {store!r}: allowed_schemes has {', '.join(sorted(unknown))}; "
                f"set [{store}] allowed_schemes to some of {', '.join(schemes)}"
            )
        self.allowed_hosts = [_host_rule(h) for h in conf.allowed_hosts]
        self.denied_hosts = [_host_rule(h) for h in conf.denied_hosts]
        self.allowed_ports = set(conf.allowed_ports)
        self.denied_ports = set(conf.denied_ports)
        self.allowed_networks = self._networks(conf.allowed_networks, "allowed_networks")
        self.denied_networks = self._networks(conf.denied_networks, "denied_networks")

    def _networks(self, values: list[str], option: str) -> list[Network]:
        networks = []
        for value in values:
            try:
                networks.append(ipaddress.ip_network(value.strip(), strict=False))
            except ValueError:
                raise ConfigError(
                    f"store {self.store!r}: {option} has {value!r}, which is not a CIDR range; "
                    f"fix [{self.store}] {option}, for example 10.20.0.0/16 or fd00::/8"
                ) from None
        return networks

    def _deny(self, what: str, fix: str) -> AccessDenied:
        return AccessDenied(self.store, f"{what}; {fix}")

    def check(self, url: str) -> Target:
        """Parse *url*, apply every rule and resolve its host.

        :returns: the checked :class:`Target`.
        :raises abbild.errors.AccessDenied: a rule refuses the URL; the message names
            the rule and the option that would change it, never a password.
        :raises abbild.errors.BackendUnavailable: the host name does not resolve.
        """
        store = self.store
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError:
            raise self._deny("the location is not a valid URL", "give a http(s)://host/path URL") from None
        scheme = parts.scheme.lower()
        if "@" in parts.netloc:
            # Never echo the netloc: it holds the password.
            raise self._deny(
                "URLs with a user name or password are refused (they would be stored and shown)",
                "serve the image without credentials, or with a token in the path or query",
            )
        if scheme not in self.schemes:
            raise self._deny(
                f"scheme {scheme or '(none)'!r} is not allowed",
                f"use one of {', '.join(sorted(self.schemes))} ([{store}] allowed_schemes)",
            )
        host = _ascii_host(parts.hostname or "")
        if not host:
            raise self._deny("the URL names no host", "give a http(s)://host/path URL")
        port = port or DEFAULT_PORTS[scheme]
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        shown = Target(scheme, host, port, path, ()).display
        if self.allowed_hosts and not _matches(host, self.allowed_hosts):
            raise self._deny(f"{shown}: host {host} is not in allowed_hosts", f"add it to [{store}] allowed_hosts")
        if _matches(host, self.denied_hosts):
            raise self._deny(f"{shown}: host {host} is in denied_hosts", f"remove it from [{store}] denied_hosts")
        if self.allowed_ports and port not in self.allowed_ports:
            raise self._deny(f"{shown}: port {port} is not in allowed_ports", f"add it to [{store}] allowed_ports")
        if port in self.denied_ports:
            raise self._deny(f"{shown}: port {port} is in denied_ports", f"remove it from [{store}] denied_ports")
        addresses = self._resolve(host, port, shown)
        for address in addresses:
            self._check_address(address, host, shown)
        return Target(scheme, host, port, path, tuple(addresses))

    def _resolve(self, host: str, port: int, shown: str) -> list[str]:
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        try:
            addresses = resolve(host, port)
        except (OSError, UnicodeError) as exc:
            raise BackendUnavailable(self.store, f"{shown}: cannot resolve host {host} ({exc})") from None
        if not addresses:
            raise BackendUnavailable(self.store, f"{shown}: host {host} resolves to no address")
        return addresses

    def _check_address(self, address: str, host: str, shown: str) -> None:
        """Refuse *address* if it, or an IPv4 address it leads to, is denied."""
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 scope (fe80::1%eth0)
        of_host = "" if _is_address(host) else f" of host {host}"
        views = [(ip, f" ({of_host.strip()})" if of_host else "")]
        views += [(v4, f" ({kind} in {ip}{of_host})") for kind, v4 in embedded_ipv4(ip)]
        for view, described in views:
            denied = _most_specific(view, self.denied_networks)
            if denied is None:
                continue
            allowed = _most_specific(view, self.allowed_networks)
            if allowed is not None and allowed.prefixlen > denied.prefixlen:
                continue
            raise self._deny(
                f"{shown}: address {view}{described} is in denied network {denied}",
                f"if the image server is trusted, add its range to [{self.store}] allowed_networks "
                f"(narrower than {denied})",
            )


def embedded_ipv4(ip: Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    """The IPv4 addresses that packets to *ip* are translated or tunnelled to, each
    named by the mechanism: connecting to ``64:ff9b::a9fe:a9fe`` through a NAT64
    gateway reaches 169.254.169.254, so the IPv4 address must pass the checks too.

    The local-use NAT64 prefix 64:ff9b:1::/48 is not decoded: where it holds the
    IPv4 address depends on the prefix length each network picks, so it is in the
    default ``denied_networks`` instead.
    """
    if ip.version == 4:
        return []
    if ip.ipv4_mapped:
        return [("IPv4-mapped", ip.ipv4_mapped)]
    if ip in _NAT64:
        return [("NAT64", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))]
    if ip in _IPV4_COMPATIBLE:
        return [("IPv4-compatible", ipaddress.IPv4Address(int(ip)))]
    if ip.sixtofour:
        return [("6to4", ip.sixtofour)]
    if ip.teredo:
        server, client = ip.teredo
        return [("Teredo server", server), ("Teredo client", client)]
    return []


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _most_specific(ip: Address, networks: list[Network]) -> Network | None:
    matching = [net for net in networks if ip in net]
    return max(matching, key=lambda net: net.prefixlen, default=None)


def _ascii_host(host: str) -> str:
    host = host.lower().rstrip(".")
    try:
        host.encode("ascii")
    except UnicodeError:
        try:
            return host.encode("idna").decode("ascii")
        except UnicodeError:
            return ""
    return host


def _host_rule(value: str) -> str:
    value = value.strip()
    suffix = "." if value.startswith(".") else ""  # ".example.com": every name below it
    return suffix + _ascii_host(value.lstrip("."))


def _matches(host: str, rules: list[str]) -> bool:
    return any(host == rule or (rule.startswith(".") and host.endswith(rule)) for rule in rules)
