"""Property protections: who may create, read, update and delete which extra properties.

An INI file in Glance's format (``property_protection_file``). Each section name is a
regular expression searched in the property name; the FIRST matching section, in file
order, decides; a property no section matches is denied to everyone. Each section sets
``create``, ``read``, ``update`` and ``delete``:

- ``roles`` format: a comma-separated list of roles; ``@`` is everyone, ``!`` (or an
  empty value) nobody.
- ``policies`` format: the name of one policy rule (from the policy file) to check.
"""

from __future__ import annotations

import configparser
import re

from abbild.errors import ConfigError, Forbidden
from abbild.policy import roles_of

OPERATIONS = ("create", "read", "update", "delete")
EVERYONE, NOBODY = "@", "!"
# Property names whose deciding section is remembered (a list reads every property of
# every image it shows, and each look searched every section's pattern).
NAMES_KEPT = 4096


class PropertyProtections:
    def __init__(self, rules: list[tuple[re.Pattern, dict]], fmt: str, policy) -> None:
        self.rules, self.format, self.policy = rules, fmt, policy
        self._sections: dict[str, dict | None] = {}

    @classmethod
    def from_config(cls, conf, policy) -> PropertyProtections | None:
        """The protections of ``property_protection_file``, or None when there is none.

        :raises abbild.errors.ConfigError: the file is missing or not valid, named.
        """
        path = conf.property_protection_file
        if not path:
            return None
        path = conf.find_file(path) or path
        fmt = conf.property_protection_rule_format
        parser = configparser.ConfigParser(interpolation=None, default_section="\0none")
        parser.optionxform = str  # keep the case of keys, as written
        try:
            with open(path) as f:
                parser.read_file(f)
        except (OSError, configparser.Error) as exc:
            raise ConfigError(f"property_protection_file {path}: {exc}") from exc
        rules = []
        for section in parser.sections():
            try:
                pattern = re.compile(section)
            except re.error as exc:
                raise ConfigError(f"{path}: section [{section}] is not a valid regular expression: {exc}") from None
            values = dict(parser.items(section))
            missing = [op for op in OPERATIONS if op not in values]
            if missing:
                raise ConfigError(
                    f"{path}: section [{section}] must set {', '.join(missing)}"
                    f" (each of {', '.join(OPERATIONS)} is required)"
                )
            if fmt == "roles":
                allowed = {op: _roles(path, section, op, values[op]) for op in OPERATIONS}
            else:
                allowed = {}
                for op in OPERATIONS:
                    name = values[op].strip()
                    if not name:
                        raise ConfigError(f"{path}: [{section}] {op} names no policy rule")
                    allowed[op] = f"{section}:{op}"
                    policy.add_rule(allowed[op], f"rule:{name}")
            rules.append((pattern, allowed))
        return cls(rules, fmt, policy)

    def _section(self, name: str) -> dict | None:
        """What the first section matching *name* allows (None: no section matches)."""
        try:
            return self._sections[name]
        except KeyError:
            pass
        allowed = next((allowed for pattern, allowed in self.rules if pattern.search(name)), None)
        if len(self._sections) >= NAMES_KEPT:
            self._sections = {}
        self._sections[name] = allowed
        return allowed

    def allows(self, name: str, operation: str, viewer) -> bool:
        allowed = self._section(name)
        if allowed is None:
            return False
        rule = allowed[operation]
        if self.format == "policies":
            return self.policy.allows(rule, viewer)
        return rule == EVERYONE or bool(rule & roles_of(viewer))

    def authorize(self, name: str, operation: str, viewer) -> None:
        """:raises abbild.errors.Forbidden: *viewer* may not *operation* property *name*."""
        if not self.allows(name, operation, viewer):
            raise Forbidden(f"Property '{name}' is protected: you may not {operation} it.")


def _roles(path: str, section: str, op: str, value: str):
    roles = {r.strip().lower() for r in value.split(",") if r.strip()}
    if len(roles) > 1 and roles & {EVERYONE, NOBODY}:
        raise ConfigError(f"{path}: [{section}] {op} = {value}: '@' and '!' stand alone, without other roles")
    if roles == {EVERYONE}:
        return EVERYONE
    return frozenset(roles - {NOBODY})
