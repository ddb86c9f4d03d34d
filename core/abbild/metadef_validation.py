"""Image properties checked against the metadata definitions (beyond Glance).

With ``[DEFAULT] validate_image_properties = true``, an image property whose name a
namespace associated with ``OS::Glance::Image`` defines (the association's prefix and
the property's name: ``hw_`` + ``cpu_policy``; the namespace's objects' properties
too) must satisfy that definition: its type, ``enum``, ``minimum``/``maximum``,
``minLength``/``maxLength``, ``pattern``, and for arrays ``items``, ``minItems``,
``maxItems``, ``uniqueItems`` and ``operators``. The namespaces that count are the ones
the image's owner may see: public ones, their project's, and those nobody owns.

Image properties are strings on the wire, so a value is read as the definition's type
the way Nova and Horizon read it: ``"4"`` is an integer, ``"true"``/``"no"`` booleans
(oslo's ``bool_from_string`` words), an array is Horizon's ``"<in> a,b"``, Nova's
``"<or> a <or> b"``, a comma list or a JSON array. Where a definition says nothing we
can check (type ``object`` or ``null``, a pattern Python cannot compile, a limit that
is no number) the value passes. Where several namespaces define one name, a value
that satisfies any of them passes: definitions loaded from different sources may
overlap, and the operator did not mean them to forbid every value together.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from abbild.errors import Invalid
from abbild.metadefs import IMAGE_RESOURCE_TYPE, Namespace, NamespaceFilters
from abbild.registry import Registry, Viewer

PAGE = 100
TRUE_WORDS = frozenset({"1", "t", "true", "on", "y", "yes"})  # oslo.utils strutils, as Nova reads hw_* flags
FALSE_WORDS = frozenset({"0", "f", "false", "off", "n", "no"})
SHOWN_VALUE = 64  # characters of a value a message repeats
_OPERATOR = re.compile(r"<[^<>\s]+>")
_INTEGER = re.compile(r"[+-]?\d+")


class Definition(NamedTuple):
    """One property definition that applies to images, under its image property name."""

    namespace: str
    schema: dict[str, Any]


def image_definitions(namespaces: Iterable[Namespace]) -> dict[str, list[Definition]]:
    """Image property name -> the definitions of it in *namespaces* (those associated
    with ``OS::Glance::Image``; others are left out)."""
    found: dict[str, list[Definition]] = {}
    for namespace in namespaces:
        association = namespace.association(IMAGE_RESOURCE_TYPE)
        if association is None:
            continue
        prefix = association.prefix or ""
        properties = [namespace.properties, *(o.properties for o in namespace.objects)]
        for group in properties:
            for name, schema in group.items():
                found.setdefault(prefix + name, []).append(Definition(namespace.namespace, schema))
    return found


def namespaces_for_owner(registry: Registry, owner: str | None) -> list[Namespace]:
    """Every namespace associated with ``OS::Glance::Image`` that *owner*'s project may
    see, all pages."""
    viewer = Viewer(project_id=owner)  # never an administrator: another project's private ones do not count
    filters = NamespaceFilters(resource_types=(IMAGE_RESOURCE_TYPE,))
    namespaces: list[Namespace] = []
    marker = None
    while True:
        page = registry.list_namespaces(filters, "namespace", "asc", PAGE, marker, viewer)
        namespaces.extend(page)
        if len(page) < PAGE:
            return namespaces
        marker = page[-1].namespace


def check_image_properties(registry: Registry, owner: str | None, properties: Mapping[str, Any]) -> None:
    """Check *properties* (new or changed ones of an image of *owner*) against the
    definitions *owner* may see. Reads the registry only when there is something to check.

    :raises abbild.errors.Invalid: a value breaks its definition; the message names the
        property, the rule and the namespace.
    """
    if not properties:
        return
    check(properties, image_definitions(namespaces_for_owner(registry, owner)))


def check(properties: Mapping[str, Any], definitions: Mapping[str, list[Definition]]) -> None:
    """:raises abbild.errors.Invalid: as :func:`check_image_properties`."""
    for name in sorted(properties):
        if name not in definitions:
            continue
        text = _text(properties[name])
        failures = []
        for definition in definitions[name]:
            broken = rule_broken(text, definition.schema)
            if broken is None:
                break
            failures.append(f"Property {name}={_shown(text)} {broken} (namespace {definition.namespace}).")
        else:
            raise Invalid(" ".join(failures))


def rule_broken(text: str, schema: Mapping[str, Any]) -> str | None:
    """The rule of *schema* that *text* breaks, in words (``is not one of [...]``), or
    ``None`` when it satisfies every rule that can be checked."""
    kinds = schema.get("type") or "string"  # Horizon's default type, too
    if isinstance(kinds, str):
        kinds = [kinds]
    problems = []
    for kind in kinds:
        problem = _broken_as(kind, text, schema)
        if problem is None:
            return None
        problems.append(problem)
    return problems[0]


def _broken_as(kind: str, text: str, schema: Mapping[str, Any]) -> str | None:
    if kind == "array":
        return _array_broken(text, schema)
    if kind == "string":
        return _string_broken(text, schema)
    if kind == "integer":
        value = int(text) if _INTEGER.fullmatch(text.strip()) else None
        if value is None:
            return "is not an integer"
        return _enum_broken(text, value, schema) or _range_broken(value, schema)
    if kind == "number":
        value = _number(text)
        if value is None:
            return "is not a number"
        return _enum_broken(text, value, schema) or _range_broken(value, schema)
    if kind == "boolean":
        word = text.strip().lower()
        if word not in TRUE_WORDS | FALSE_WORDS:
            return "is not a boolean (true or false)"
        return _enum_broken(text, word in TRUE_WORDS, schema)
    return None  # object, null or a type we do not know: nothing a string could be checked for


def _string_broken(text: str, schema: Mapping[str, Any]) -> str | None:
    broken = _enum_broken(text, text, schema)
    if broken:
        return broken
    least, most = _number(schema.get("minLength")), _number(schema.get("maxLength"))
    if least is not None and len(text) < least:
        return f"is shorter than its minLength {_plain(least)}"
    if most is not None and len(text) > most:
        return f"is longer than its maxLength {_plain(most)}"
    pattern = schema.get("pattern")
    if isinstance(pattern, str):
        try:
            matched = re.search(pattern, text) is not None
        except re.error:
            return None  # a pattern Python cannot read (JSON schema's are ECMA 262): not ours to refuse on
        if not matched:
            return f"does not match its pattern {pattern!r}"
    return None


def _enum_broken(text: str, value: Any, schema: Mapping[str, Any]) -> str | None:
    enum = schema.get("enum")
    if not isinstance(enum, list) or not enum:
        return None
    for allowed in enum:
        if isinstance(value, bool) or isinstance(allowed, bool):
            if isinstance(allowed, str) and allowed.strip().lower() in TRUE_WORDS | FALSE_WORDS:
                allowed = allowed.strip().lower() in TRUE_WORDS
            if isinstance(value, bool) and isinstance(allowed, bool) and value is allowed:
                return None
        elif value == allowed or text == str(allowed):
            return None
    return f"is not one of {enum!r}"


def _range_broken(value: float, schema: Mapping[str, Any]) -> str | None:
    least, most = _number(schema.get("minimum")), _number(schema.get("maximum"))
    if least is not None and value < least:
        return f"is less than its minimum {_plain(least)}"
    if most is not None and value > most:
        return f"is greater than its maximum {_plain(most)}"
    return None


def array_items(text: str) -> tuple[list[str], list[str]]:
    """The operators and the items of an array property's value: Horizon writes
    ``"<in> a,b"`` (the first of the definition's ``operators``), Nova's extra specs
    ``"<or> a <or> b"``; a plain comma list and a JSON array are read too."""
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            parsed = json.loads(stripped)
        except ValueError:
            parsed = None
        if isinstance(parsed, list):
            return [], [item if isinstance(item, str) else json.dumps(item) for item in parsed]
    operators = _OPERATOR.findall(stripped)
    items = [item.strip() for item in re.split(r",|" + _OPERATOR.pattern, stripped)]
    return operators, [item for item in items if item]


def _array_broken(text: str, schema: Mapping[str, Any]) -> str | None:
    operators, items = array_items(text)
    allowed = schema.get("operators")
    if isinstance(allowed, list) and allowed:
        for operator in operators:
            if operator not in allowed:
                return f"uses the operator {operator!r}, not one of its operators {allowed!r}"
    least, most = _number(schema.get("minItems")), _number(schema.get("maxItems"))
    if least is not None and len(items) < least:
        return f"has fewer items than its minItems {_plain(least)}"
    if most is not None and len(items) > most:
        return f"has more items than its maxItems {_plain(most)}"
    if schema.get("uniqueItems") is True and len(set(items)) < len(items):
        return "repeats an item (uniqueItems)"
    item_schema = schema.get("items")
    if isinstance(item_schema, Mapping):
        for item in items:
            broken = rule_broken(item, item_schema)
            if broken is not None:
                return f"has the item {_shown(item)}, which {broken}"
    return None


def _number(value: Any) -> float | None:
    """*value* as a finite number, or ``None`` (a definition's limit that is no number
    is no limit)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _plain(number: float) -> str:
    return str(int(number)) if number.is_integer() else str(number)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


def _shown(text: str) -> str:
    return repr(text if len(text) <= SHOWN_VALUE else text[: SHOWN_VALUE - 3] + "...")
