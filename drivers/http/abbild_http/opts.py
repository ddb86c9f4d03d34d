"""Options of the http store. Imports only oslo.config, so that oslo-config-generator
can list them without loading the driver."""

from __future__ import annotations

from oslo_config import cfg

#: Address ranges no image URL may reach unless an operator allows them: every
#: range of IANA's IPv4 and IPv6 special-purpose address registries that is not
#: globally reachable (the service's own host, private and carrier networks,
#: link-local with the cloud metadata service at 169.254.169.254, documentation
#: and benchmarking space, reserved space), and multicast.
#: IPv6 addresses that lead to an IPv4 address (IPv4-mapped ``::ffff:10.0.0.1``,
#: NAT64 ``64:ff9b::10.0.0.1``, 6to4, Teredo, IPv4-compatible) are checked both as
#: themselves and as that IPv4 address (see :func:`abbild_http.guard.embedded_ipv4`).
DEFAULT_DENIED_NETWORKS = [
    "0.0.0.0/8",  # "this network", includes the unspecified 0.0.0.0
    "10.0.0.0/8",  # RFC 1918
    "100.64.0.0/10",  # carrier-grade NAT, RFC 6598
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local, cloud metadata services
    "172.16.0.0/12",  # RFC 1918
    "192.0.0.0/24",  # IETF protocol assignments (DS-Lite, NAT64 discovery, ...)
    "192.0.2.0/24",  # documentation (TEST-NET-1)
    "192.88.99.0/24",  # 6to4 relay anycast (deprecated)
    "192.168.0.0/16",  # RFC 1918
    "198.18.0.0/15",  # benchmarking
    "198.51.100.0/24",  # documentation (TEST-NET-2)
    "203.0.113.0/24",  # documentation (TEST-NET-3)
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, includes broadcast 255.255.255.255
    "::/96",  # unspecified, loopback and the deprecated IPv4-compatible form
    "64:ff9b:1::/48",  # local-use NAT64: the IPv4 address inside cannot be located
    "100::/64",  # discard-only
    "100:0:0:1::/64",  # dummy prefix
    "2001::/23",  # IETF protocol assignments: Teredo, benchmarking, ORCHID, ...
    "2001:db8::/32",  # documentation
    "3fff::/20",  # documentation
    "5f00::/16",  # segment routing (SRv6) SIDs
    "fc00::/7",  # unique local addresses
    "fe80::/10",  # link-local
    "fec0::/10",  # site-local (deprecated)
    "ff00::/8",  # multicast
]

OPTS = [
    cfg.FloatOpt(
        "connect_timeout",
        default=10.0,
        min=0.1,
        help="""
Seconds to wait for a connection to the image server.

Possible values:
    * A positive number (default 10)

Related options:
    * read_timeout
""",
    ),
    cfg.FloatOpt(
        "read_timeout",
        default=60.0,
        min=0.1,
        help="""
Seconds to wait for the image server between two pieces of a response.

A download that stalls longer than this fails, and the client sees the
download end early.

Possible values:
    * A positive number (default 60)

Related options:
    * connect_timeout
""",
    ),
    cfg.IntOpt(
        "max_redirects",
        default=5,
        min=0,
        help="""
Most redirects followed for one request.

Every redirect target passes the same checks as the URL itself (schemes,
hosts, ports, networks).

Possible values:
    * 0: follow no redirects
    * A positive integer (default 5)

Related options:
    * allowed_networks, denied_networks
""",
    ),
    cfg.IntOpt(
        "chunk_size",
        default=1 << 20,
        min=4096,
        help="""
Size, in bytes, of the pieces a download is read in.

Possible values:
    * An integer of at least 4096 (default 1048576, 1 MiB)

Related options:
    * None
""",
    ),
    cfg.StrOpt(
        "ca_file",
        help="""
File of PEM certificates that https image servers must chain to.

Unset, the system's trusted certificates are used.

Possible values:
    * A path, for example ``/etc/ssl/certs/internal-ca.pem``

Related options:
    * insecure
""",
    ),
    cfg.BoolOpt(
        "insecure",
        default=False,
        help="""
Skip verifying the certificates of https image servers.

Anyone on the path can then change image data in flight. Prefer ``ca_file``.

Possible values:
    * False: verify certificates and host names (default)
    * True: do not verify

Related options:
    * ca_file
""",
    ),
    cfg.ListOpt(
        "allowed_schemes",
        default=["http", "https"],
        help="""
URL schemes an image location may use.

Possible values:
    * A list of ``http`` and ``https`` (default both); ``https`` alone refuses
      plain-text downloads, redirects included

Related options:
    * None
""",
    ),
    cfg.ListOpt(
        "allowed_hosts",
        default=[],
        help="""
Host names an image location may name; empty means any host.

An entry starting with a dot matches every name below it: ``.example.com``
matches ``images.example.com``. IP literals in URLs are compared as written.
The addresses a name resolves to must still pass the network checks.

Possible values:
    * A list of host names and ``.domain`` suffixes (default: empty, any host)

Related options:
    * denied_hosts, allowed_networks
""",
    ),
    cfg.ListOpt(
        "denied_hosts",
        default=[],
        help="""
Host names an image location may not name, in the form of ``allowed_hosts``.

Possible values:
    * A list of host names and ``.domain`` suffixes (default: empty)

Related options:
    * allowed_hosts
""",
    ),
    cfg.ListOpt(
        "allowed_ports",
        default=[],
        item_type=cfg.types.Integer(min=1, max=65535),
        help="""
TCP ports an image location may use; empty means any port.

Possible values:
    * A list of port numbers, for example ``80, 443`` (default: empty, any)

Related options:
    * denied_ports
""",
    ),
    cfg.ListOpt(
        "denied_ports",
        default=[],
        item_type=cfg.types.Integer(min=1, max=65535),
        help="""
TCP ports an image location may not use.

Possible values:
    * A list of port numbers (default: empty)

Related options:
    * allowed_ports
""",
    ),
    cfg.ListOpt(
        "denied_networks",
        default=DEFAULT_DENIED_NETWORKS,
        help=f"""
Address ranges image servers may not be in.

The host of every URL (and of every redirect) is resolved and EVERY address
it resolves to is checked; the download then connects to a checked address,
so a name cannot resolve to something else a moment later. When an address
lies in ranges of both lists, the most specific range decides (on a tie,
denied wins). The default protects the service's host and networks:
{", ".join(DEFAULT_DENIED_NETWORKS)}.

An IPv6 address that leads to an IPv4 address passes only if that IPv4
address passes too: IPv4-mapped (::ffff:0:0/96), NAT64 (64:ff9b::/96),
6to4 (2002::/16), Teredo (2001::/32, its server and its client) and
IPv4-compatible (::/96). Where DNS64 answers with NAT64 addresses, an
allow-list needs ``64:ff9b::/96`` in ``allowed_networks`` next to the IPv4
ranges.

Possible values:
    * A list of CIDR ranges; ``0.0.0.0/0, ::/0`` together with
      ``allowed_networks`` makes an allow-list

Related options:
    * allowed_networks
""",
    ),
    cfg.ListOpt(
        "allowed_networks",
        default=[],
        help="""
Address ranges image servers may be in even though a wider range of
``denied_networks`` contains them.

For example ``10.20.0.0/16`` lets images come from an internal mirror network
while the rest of 10.0.0.0/8 stays refused.

Possible values:
    * A list of CIDR ranges (default: empty)

Related options:
    * denied_networks
""",
    ),
]


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """:returns: the options for oslo-config-generator, under the template group
    ``http`` (operators copy them into the group named after their store)."""
    return [("http", OPTS)]
