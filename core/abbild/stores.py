"""The store manager: operator-named stores, each a driver loaded by name through the
``abbild.stores`` entry points, with its own option group."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from types import MappingProxyType

from oslo_config import cfg
from stevedore import driver as stevedore_driver
from stevedore.exception import NoMatches

from abbild.driver import Capability, Driver, ListedObject, StoredObject
from abbild.errors import ConfigError, Invalid, NotFound, StoreError, UnsupportedOperation
from abbild.opts import RESERVED_GROUPS, common_store_opts

LOG = logging.getLogger(__name__)
NAMESPACE = "abbild.stores"


class Store:
    """One configured store: a driver instance, its effective capabilities, and the
    capability checks every caller would otherwise repeat."""

    def __init__(self, name: str, driver_name: str, driver: Driver, capabilities: Capability, conf) -> None:
        self.name = name
        self.driver_name = driver_name
        self.driver = driver
        self.capabilities = capabilities
        self.description = conf.description
        self.weight = conf.weight

    @property
    def read_only(self) -> bool:
        return Capability.WRITE not in self.capabilities

    @property
    def takes_user_locations(self) -> bool:
        return Capability.USER_LOCATIONS in self.capabilities

    def _require(self, cap: Capability, operation: str) -> None:
        if cap not in self.capabilities:
            raise UnsupportedOperation(self.name, operation)

    def put(self, key: str, chunks, size: int | None) -> StoredObject:
        self._require(Capability.WRITE, "writing")
        return self.driver.put(key, chunks, size)

    def get(self, uri: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        self._require(Capability.READ, "reading")
        if (offset or length is not None) and Capability.RANGE_READ not in self.capabilities:
            return _window(self.driver.get(uri), offset, length)
        return self.driver.get(uri, offset, length)

    def delete(self, uri: str) -> None:
        self._require(Capability.DELETE, "deleting")
        self.driver.delete(uri)

    def discard(self, key: str) -> None:
        if Capability.WRITE in self.capabilities:
            self.driver.discard(key)

    def delete_orphan(self, uri: str) -> None:
        """Delete data no image points at any more; a failure is logged, not raised
        (the caller's own outcome matters more than this cleanup)."""
        try:
            self.delete(uri)
        except NotFound:
            pass
        except Exception:
            LOG.exception("could not remove orphaned data at %s in store %s", uri, self.name)

    def open_local(self, uri: str):
        self._require(Capability.READ, "reading")
        return self.driver.open_local(uri)

    def size(self, uri: str) -> int:
        return self.driver.size(uri)

    def list_objects(self) -> Iterator[ListedObject]:
        self._require(Capability.LIST, "listing")
        return self.driver.list_objects()

    def key_of(self, uri: str) -> str | None:
        self._require(Capability.LIST, "listing")
        return self.driver.key_of(uri)


def _window(chunks: Iterator[bytes], offset: int, length: int | None) -> Iterator[bytes]:
    """Cut [offset, offset+length) out of a full stream, for stores without RANGE_READ."""
    end = None if length is None else offset + length
    pos = 0
    try:
        for chunk in chunks:
            start, pos = pos, pos + len(chunk)
            if pos <= offset:
                continue
            piece = chunk[max(0, offset - start) : None if end is None else end - start]
            if piece:
                yield piece
            if end is not None and pos >= end:
                return
    finally:
        close = getattr(chunks, "close", None)
        if close:
            close()


class StoreManager:
    """Builds every store named in ``[DEFAULT] enabled_backends``.

    A typo in a driver name, a missing dependency or a bad option stops start-up with
    a :class:`ConfigError` naming the store and the fix; nothing is silently disabled.

    :param drivers: driver classes by name, instead of the installed entry points
        (for tests).
    """

    def __init__(self, conf: cfg.ConfigOpts, drivers: Mapping[str, type[Driver]] | None = None) -> None:
        enabled = conf.enabled_backends or {}
        if not enabled:
            raise ConfigError("enabled_backends is empty: name at least one store, e.g. 'local:filesystem'")
        if conf.default_backend not in enabled:
            raise ConfigError(
                f"default_backend {conf.default_backend!r} is not one of the enabled_backends "
                f"({', '.join(enabled)}); set it to one of them"
            )
        stores = {}
        for name, driver_name in enabled.items():
            stores[name] = self._build(conf, name, (driver_name or "").strip(), drivers)
        self._stores = stores
        self.stores: Mapping[str, Store] = MappingProxyType(stores)
        self.default = stores[conf.default_backend]

    @staticmethod
    def _build(conf, name: str, driver_name: str, drivers) -> Store:
        if name in RESERVED_GROUPS or name.startswith("os_glance"):
            raise ConfigError(f"store name {name!r} is reserved; choose another name in enabled_backends")
        if not driver_name:
            raise ConfigError(f"store {name!r} names no driver in enabled_backends (write {name}:<driver>)")
        return build_store(conf, name, driver_name, drivers)

    def __getitem__(self, name: str) -> Store:
        try:
            return self._stores[name]
        except KeyError:
            raise Invalid(f"Unknown store {name!r}; the stores are: {', '.join(self._stores)}") from None

    def __iter__(self):
        return iter(self._stores.values())

    def for_location(self, store_name: str) -> Store | None:
        return self._stores.get(store_name)

    def discard_everywhere(self, key: str) -> None:
        """Remove the partial data an interrupted upload of *key* may have left in any store."""
        for store in self:
            try:
                store.discard(key)
            except StoreError:
                LOG.exception("image %s: could not discard partial data in store %s", key, store.name)

    def rank(self) -> dict[str, int]:
        """Store name -> download preference, 0 first: higher weights first, then the
        configured order."""
        ordered = sorted(self._stores.values(), key=lambda s: -s.weight)
        return {store.name: i for i, store in enumerate(ordered)}


def build_store(conf, name: str, driver_name: str, drivers=None, defaults: Mapping | None = None, adapt=None) -> Store:
    """One store named *name*, its options in the group *name*: a store of
    enabled_backends, or one of the service's own (the reserved ``os_glance_*`` stores
    of import, which no user sees).

    :param defaults: option defaults of this store that differ from its driver's.
    :param adapt: ``adapt(options) -> options``: the driver's options as this store
        registers them (deprecated names from another group, say).
    :raises abbild.errors.ConfigError: the driver is missing or its options are wrong.
    """
    if drivers is not None:
        if driver_name not in drivers:
            raise ConfigError(f"store {name!r}: unknown driver {driver_name!r}")
        cls = drivers[driver_name]
    else:
        cls = load_driver_class(name, driver_name)
    options = list(cls.options)
    conf.register_opts(common_store_opts + (adapt(options) if adapt else options), group=name)
    for option, value in (defaults or {}).items():
        conf.set_default(option, value, group=name)
    try:
        driver = cls(name, conf[name])
        capabilities = driver.configure()
    except ConfigError:
        raise
    except cfg.Error as exc:
        raise ConfigError(f"store {name!r} ({driver_name}): {exc}") from exc
    return Store(name, driver_name, driver, capabilities, conf[name])


def load_driver_class(store_name: str, driver_name: str) -> type[Driver]:
    try:
        manager = stevedore_driver.DriverManager(NAMESPACE, driver_name, invoke_on_load=False)
    except NoMatches:
        installed = ", ".join(sorted(installed_drivers())) or "none"
        raise ConfigError(
            f"store {store_name!r}: no store driver named {driver_name!r} is installed "
            f"(installed: {installed}); install abbild-{driver_name} or fix enabled_backends"
        ) from None
    except ImportError as exc:
        raise ConfigError(
            f"store {store_name!r}: driver {driver_name!r} cannot be imported ({exc}); "
            f"install its dependencies, e.g. pip install abbild-{driver_name}"
        ) from exc
    return manager.driver


def installed_drivers() -> dict[str, str]:
    """Entry-point name -> ``module:Class`` for every installed store driver."""
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group=NAMESPACE)}
