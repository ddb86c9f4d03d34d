"""``abbild db load-metadefs``, ``export-metadefs`` and ``unload-metadefs``: metadata
definitions from and to a directory of JSON files, one namespace per file (the form of
:func:`abbild.metadefs.namespace_document`), straight on the registry, as Glance's
``glance-manage db load_metadefs|export_metadefs|unload_metadefs``.

Loading a namespace the database has already leaves it alone, unless ``--merge``: then
what it lacks is added (``--prefer-new``: and what both have is taken from the file), or
``--overwrite`` makes it what the file says. Unlike Glance, every file is read and
checked before anything is written, so a malformed file loads nothing and names itself
and the field.

``abbild serve`` loads the definitions shipped with abbild on the first start of its
embedded database (:func:`load_on_first_start`), never again.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import pathlib
import re
import sys
from collections.abc import Iterator

from abbild.errors import AbbildError, Conflict, Invalid, MetadefNotFound
from abbild.metadef_service import PROPERTY_FIELDS, check_name, check_property_definition
from abbild.metadefs import (
    Namespace,
    NamespaceFilters,
    namespace_document,
    namespace_from_document,
)

LOG = logging.getLogger(__name__)

#: Who owns a namespace whose file names no owner (Glance's choice: it is nobody's project).
DEFAULT_OWNER = "admin"

#: The first schema revision with the metadefs tables: a database older than this (or
#: without any) has never had definitions, so ``abbild serve`` loads the shipped ones.
#: Revisions are numbered in order.
METADEFS_REVISION = "0007"

# The longest values the registry stores (Glance's column sizes; names: check_name).
DISPLAY_NAME_LENGTH = 80
DESCRIPTION_LENGTH = 500
OWNER_LENGTH = 255
PREFIX_LENGTH = 80


def shipped_path() -> pathlib.Path:
    """The definitions that come with abbild: package data of an installed abbild
    (``abbild_cmd/metadefs_files``, built from etc/metadefs), else etc/metadefs of the
    checkout this module runs from."""
    here = pathlib.Path(__file__).resolve().parent
    for candidate in (here / "metadefs_files", here.parent.parent / "etc" / "metadefs"):
        if candidate.is_dir():
            return candidate
    raise Invalid(f"the metadefs shipped with abbild are missing (not in {here / 'metadefs_files'}): reinstall abbild")


# -- reading and checking files ------------------------------------------------------------


def definition_problems(name: str, definition: dict) -> list[str]:
    """What makes the property definition *definition* unfit: the API's rules
    (:func:`abbild.metadef_service.check_property_definition`), and for a file, which a
    person wrote, also keys the API would drop (a misspelt ``minimun``), an empty title,
    an empty or repetitive enum and ``items`` on a type that is no array. [] when fine."""
    problems = []
    unknown = sorted(set(definition) - set(PROPERTY_FIELDS))
    if unknown:
        problems.append(f"Property '{name}': unknown key(s) {', '.join(map(repr, unknown))}.")
    try:
        check_property_definition(name, definition)
    except Invalid as exc:
        return [*problems, str(exc)]
    if not definition["title"].strip():
        problems.append(f"Property '{name}': 'title' is empty.")
    if "items" in definition and definition["type"] != "array":
        problems.append(f"Property '{name}': 'items' is for the type array only, not {definition['type']}.")
    for where, enum in (("enum", definition.get("enum")), ("items.enum", (definition.get("items") or {}).get("enum"))):
        if enum is None:
            continue
        if not enum:
            problems.append(f"Property '{name}': '{where}' is empty: no value could be valid.")
        repeated = sorted({repr(v) for i, v in enumerate(enum) if v in enum[:i]})
        if repeated:
            problems.append(f"Property '{name}': '{where}' has {', '.join(repeated)} more than once.")
    return problems


def _namespace_problems(namespace: Namespace) -> list[str]:
    """Values the registry cannot store or the API would refuse, each naming its field;
    the namespace's definitions become what the API keeps of them."""
    problems = []

    def name(kind: str, value: str, field: str) -> None:
        try:
            check_name(kind, value)
        except Invalid as exc:
            problems.append(f"{field}: {exc}")

    def length(value, limit: int, field: str) -> None:
        if value is not None and len(value) > limit:
            problems.append(f"{field} is longer than {limit} characters")

    def unique(names, field: str) -> None:
        seen = set()
        for item in names:
            if item in seen:
                problems.append(f"{field}: {item!r} appears twice")
            seen.add(item)

    def definitions(properties: dict, where: str) -> dict:
        for prop, definition in properties.items():
            found = definition_problems(prop, definition)
            problems.extend(f"{where}: {p}" for p in found)
            if not found:
                properties[prop] = check_property_definition(prop, definition)
        return properties

    name("namespace", namespace.namespace, "'namespace'")
    length(namespace.display_name, DISPLAY_NAME_LENGTH, "'display_name'")
    length(namespace.description, DESCRIPTION_LENGTH, "'description'")
    length(namespace.owner, OWNER_LENGTH, "'owner'")
    unique([a.name for a in namespace.associations], "resource_type_associations")
    for i, a in enumerate(namespace.associations):
        name("resource type", a.name, f"resource_type_associations[{i}].name")
        length(a.prefix, PREFIX_LENGTH, f"resource_type_associations[{i}].prefix")
        length(a.properties_target, PREFIX_LENGTH, f"resource_type_associations[{i}].properties_target")
    definitions(namespace.properties, "properties")
    unique([o.name for o in namespace.objects], "objects")
    for i, obj in enumerate(namespace.objects):
        name("object", obj.name, f"objects[{i}].name")
        definitions(obj.properties, f"objects[{i}].properties")
        for required in obj.required:
            if required not in obj.properties:
                problems.append(f"objects[{i}].required: {required!r} is not one of the object's properties")
    unique([t.name for t in namespace.tags], "tags")
    for i, tag in enumerate(namespace.tags):
        name("tag", tag.name, f"tags[{i}].name")
    return problems


@dataclasses.dataclass
class Source:
    """A namespace as a file describes it."""

    file: pathlib.Path
    namespace: Namespace


def read(path: pathlib.Path | str) -> list[Source]:
    """The namespaces of *path*: a JSON file, or a directory's ``*.json`` files (not
    its subdirectories), by file name; every problem of every file at once.

    :raises abbild.errors.Invalid: what is wrong, each line naming the file and the field.
    """
    path = pathlib.Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".json" and p.is_file())
        if not files:
            raise Invalid(f"{path}: no metadefs files (*.json) in this directory")
    elif path.is_file():
        files = [path]
    else:
        raise Invalid(f"{path}: no such file or directory")
    sources, problems, first_file = [], [], {}
    for file in files:
        try:
            doc = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{file}: cannot be read: {exc}")
            continue
        except json.JSONDecodeError as exc:
            problems.append(f"{file}: not valid JSON: {exc}")
            continue
        try:
            namespace = namespace_from_document(doc, where=str(file))
        except Invalid as exc:
            problems.append(str(exc))
            continue
        found = _namespace_problems(namespace)
        problems.extend(f"{file}: {p}" for p in found)
        if namespace.namespace in first_file:
            problems.append(f"{file}: namespace {namespace.namespace!r} is in {first_file[namespace.namespace]} too")
            continue
        first_file[namespace.namespace] = file
        if not found:
            if namespace.owner is None:
                namespace.owner = DEFAULT_OWNER
            sources.append(Source(file, namespace))
    if problems:
        raise Invalid(
            f"{len(problems)} problem(s) in the metadefs files; nothing was loaded:\n  " + "\n  ".join(problems)
        )
    return sources


# -- loading ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    namespace: str
    file: pathlib.Path
    result: str  # created, merged, updated, replaced, unchanged, skipped, failed
    detail: str = ""


def load(registry, sources: list[Source], *, merge=False, prefer_new=False, overwrite=False) -> list[Outcome]:
    """Write *sources* into *registry*: a namespace it lacks is created; one it has is
    skipped, unless *merge*: then the file's children it lacks are added (*prefer_new*:
    the file's namespace fields, and children both have, win too), or with *overwrite*
    it becomes what the file says. Each namespace is one atomic write; a namespace that
    fails is reported and the others still load.

    :raises abbild.errors.Invalid: *prefer_new* or *overwrite* without *merge*, or both.
    """
    check_options(merge, prefer_new, overwrite)
    outcomes = []
    for source in sources:
        try:
            result, detail = _load_one(registry, source.namespace, merge, prefer_new, overwrite)
        except AbbildError as exc:
            result, detail = "failed", str(exc)
        LOG.debug("metadefs: %s %s (%s) %s", result, source.namespace.namespace, source.file, detail)
        outcomes.append(Outcome(source.namespace.namespace, source.file, result, detail))
    return outcomes


def check_options(merge: bool, prefer_new: bool, overwrite: bool) -> None:
    if (prefer_new or overwrite) and not merge:
        raise Invalid("--prefer-new and --overwrite change namespaces that exist: give them with --merge")
    if prefer_new and overwrite:
        raise Invalid("give --prefer-new or --overwrite, not both")


def _load_one(registry, new: Namespace, merge: bool, prefer_new: bool, overwrite: bool) -> tuple[str, str]:
    try:
        registry.get_namespace(new.namespace)
    except MetadefNotFound:
        try:
            registry.create_namespace(copy.deepcopy(new))
            return "created", ""
        except Conflict:
            pass  # created by someone else meanwhile: as if it had been there
    if not merge:
        return "skipped", "it exists (--merge adds what it lacks)"
    changed = []

    def change(current: Namespace) -> None:
        before = namespace_document(current)
        # A copy each time: a retried change must not find children a registry altered.
        _combine(current, copy.deepcopy(new), prefer_new=prefer_new, overwrite=overwrite)
        changed[:] = [namespace_document(current) != before]

    registry.update_namespace(new.namespace, change)
    if not changed[0]:
        return "unchanged", "it has everything the file says"
    return ("replaced" if overwrite else "updated" if prefer_new else "merged"), ""


def _combine(current: Namespace, new: Namespace, *, prefer_new: bool, overwrite: bool) -> None:
    """Bring the file's *new* into *current* (in place)."""
    if prefer_new or overwrite:
        for field in ("display_name", "description", "visibility", "protected", "owner"):
            setattr(current, field, getattr(new, field))
    if overwrite:
        current.properties = dict(new.properties)
        current.objects = list(new.objects)
        current.tags = list(new.tags)
        current.associations = list(new.associations)
        return
    for name, definition in new.properties.items():
        if prefer_new or name not in current.properties:
            current.properties[name] = definition
    for kind in ("objects", "tags", "associations"):
        kept = getattr(current, kind)
        names = [item.name for item in kept]
        for item in getattr(new, kind):
            if item.name not in names:
                kept.append(item)
            elif prefer_new:
                kept[names.index(item.name)] = dataclasses.replace(
                    item, created_at=kept[names.index(item.name)].created_at
                )


# -- exporting and unloading -------------------------------------------------------------------


def all_namespaces(registry, page: int = 100) -> Iterator[Namespace]:
    """Every namespace, by name, a page at a time."""
    marker = None
    while True:
        batch = registry.list_namespaces(
            NamespaceFilters(), sort_key="namespace", sort_dir="asc", limit=page, marker=marker
        )
        yield from batch
        if len(batch) < page:
            return
        marker = batch[-1].namespace


_NOT_IN_FILE_NAMES = re.compile(r"[\W_]+")


def file_name(namespace: Namespace, taken: set[str]) -> str:
    """The name Glance gives *namespace*'s file: its display name (else its name) less
    everything but letters and digits, ``.json``; ``-2``, ``-3``, ... when *taken* has it."""
    stem = _NOT_IN_FILE_NAMES.sub("", namespace.display_name or "") or _NOT_IN_FILE_NAMES.sub("", namespace.namespace)
    stem = stem or "namespace"
    name, n = f"{stem}.json", 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}.json"
    return name


def export(registry, path: pathlib.Path | str) -> list[tuple[str, pathlib.Path]]:
    """Write every namespace to its own file in *path* (created if missing); returns
    (namespace, file) pairs. Files of the same names are overwritten."""
    path = pathlib.Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise Invalid(f"{path}: cannot make the directory: {exc}") from exc
    written, taken = [], set()
    for namespace in all_namespaces(registry):
        name = file_name(namespace, taken)
        taken.add(name)
        file = path / name
        text = json.dumps(namespace_document(namespace), indent=4, ensure_ascii=False) + "\n"
        try:
            file.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise Invalid(f"{file}: cannot write namespace {namespace.namespace}: {exc}") from exc
        written.append((namespace.namespace, file))
    return written


def unload(registry) -> tuple[list[str], list[str]]:
    """Remove every namespace, then every resource type but the protected ones;
    returns the names of the namespaces and of the resource types removed."""
    namespaces = [n.namespace for n in all_namespaces(registry)]
    for name in namespaces:
        try:
            registry.delete_namespace(name)
        except MetadefNotFound:
            pass  # removed meanwhile
    resource_types = []
    for resource_type in registry.list_resource_types():
        if resource_type.protected:
            continue
        try:
            registry.delete_resource_type(resource_type.name)
            resource_types.append(resource_type.name)
        except MetadefNotFound:
            pass
        except Conflict as exc:  # a namespace made meanwhile names it
            LOG.warning("metadefs: kept resource type %s: %s", resource_type.name, exc)
    return namespaces, resource_types


# -- the first start of abbild serve ---------------------------------------------------------


def database_without_metadefs(conf) -> bool:
    """Whether the SQL database of *conf* has never had the metadefs tables: none at all
    yet, or its schema older than :data:`METADEFS_REVISION` (before ``prepare`` upgrades it)."""
    if conf.registry != "sql":
        return False
    from abbild.db import migrate
    from abbild.db.registry import SQLRegistry

    registry = SQLRegistry(conf)
    try:
        current = migrate.current(registry.engine)
    finally:
        registry.close()
    return current is None or current < METADEFS_REVISION


def load_on_first_start(registry) -> list[Outcome]:
    """Load the shipped definitions into a database that never had any (its first
    start): an operator who later removes or changes them keeps that choice."""
    path = shipped_path()
    outcomes = load(registry, read(path))
    created = sum(o.result == "created" for o in outcomes)
    LOG.info(
        "first start of this database: loaded %d metadata definition namespace(s) from %s "
        "(never again; abbild db unload-metadefs removes them)",
        created,
        path,
    )
    for outcome in outcomes:
        if outcome.result == "failed":
            LOG.error("metadefs: %s (%s) failed to load: %s", outcome.namespace, outcome.file, outcome.detail)
    return outcomes


# -- the commands ---------------------------------------------------------------------------------


def add_parsers(sub, with_config, embedded) -> None:
    """``load-metadefs``, ``export-metadefs`` and ``unload-metadefs`` under *sub*, the
    subcommands of ``abbild db``."""

    def command(name: str, what: str):
        return with_config(sub.add_parser(name, help=what, description=what), data_dir=embedded)

    p = command(
        "load-metadefs",
        "load metadata definitions (namespaces) from JSON files, one namespace each; a namespace the "
        "database has is skipped unless --merge",
    )
    p.add_argument(
        "--path",
        metavar="DIR",
        help="a directory of metadefs JSON files, or one file (default: the definitions shipped with abbild)",
    )
    p.add_argument(
        "--merge",
        action="store_true",
        help="add to a namespace the database has what it lacks (its properties, objects, tags and resource "
        "type associations stay as they are)",
    )
    p.add_argument(
        "--prefer-new",
        action="store_true",
        help="with --merge: the file's namespace fields and the children both have are taken from the file too",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="with --merge: a namespace the database has becomes exactly what the file says",
    )
    p.set_defaults(func=cmd_load)
    e = command("export-metadefs", "write every namespace to a JSON file of its own, named as Glance names it")
    e.add_argument(
        "--path",
        metavar="DIR",
        default="metadefs",
        help="the directory to write to, made if missing; files of the same names are overwritten "
        "(default: ./metadefs)",
    )
    e.set_defaults(func=cmd_export)
    u = command(
        "unload-metadefs",
        "remove every namespace (protected ones too) and every resource type but the protected ones",
    )
    u.set_defaults(func=cmd_unload)


def _run(args, program: str, work):
    from abbild.service import load_registry
    from abbild_cmd.cli import _safe_url, command_config

    conf = command_config(args, program)
    registry = load_registry(conf)  # registers [registry_client] for registry = http
    try:
        where = conf.registry_client.url if conf.registry == "http" else _safe_url(conf.database.connection)
        return where, work(registry)
    finally:
        registry.close()


def cmd_load(args) -> int:
    path = pathlib.Path(args.path) if args.path else shipped_path()
    check_options(args.merge, args.prefer_new, args.overwrite)
    sources = read(path)  # before connecting: a bad file needs no database
    where, outcomes = _run(
        args,
        "abbild-load-metadefs",
        lambda registry: load(
            registry, sources, merge=args.merge, prefer_new=args.prefer_new, overwrite=args.overwrite
        ),
    )
    width = max(len(o.namespace) for o in outcomes)
    for o in outcomes:
        detail = f": {o.detail}" if o.detail else ""
        print(f"{o.result:9}  {o.namespace.ljust(width)}  {o.file.name}{detail}")
    counts = {}
    for o in outcomes:
        counts[o.result] = counts.get(o.result, 0) + 1
    summary = ", ".join(f"{n} {result}" for result, n in counts.items())
    print(f"{where}: {len(outcomes)} namespace(s) from {path}: {summary}")
    if counts.get("failed"):
        print(f"abbild: {counts['failed']} namespace(s) failed to load (above)", file=sys.stderr)
        return 1
    return 0


def cmd_export(args) -> int:
    where, written = _run(args, "abbild-export-metadefs", lambda registry: export(registry, args.path))
    for namespace, file in written:
        print(f"{namespace}  ->  {file}")
    print(f"{where}: {len(written)} namespace(s) written to {args.path}")
    return 0


def cmd_unload(args) -> int:
    where, (namespaces, resource_types) = _run(args, "abbild-unload-metadefs", unload)
    print(
        f"{where}: removed {len(namespaces)} namespace(s) and {len(resource_types)} resource type(s)"
        f"{': ' + ', '.join(resource_types) if resource_types else ''}; the protected resource types stay"
    )
    return 0
