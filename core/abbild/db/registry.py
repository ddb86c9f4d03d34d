"""The ``sql`` registry: image metadata in SQLite (default), MariaDB/MySQL or PostgreSQL."""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import datetime
import json
import logging
import operator
import sqlite3
import threading
import time
from collections.abc import Callable

import orjson
from sqlalchemy import (
    Boolean,
    Integer,
    and_,
    bindparam,
    case,
    create_engine,
    delete,
    event,
    exists,
    false,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DataError, DBAPIError, DisconnectionError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, selectinload, sessionmaker

from abbild.db.models import (
    SHORT_VALUE,
    CacheEntryRow,
    ChildrenRow,
    ImageRow,
    LeaseRow,
    LocationRow,
    MemberRow,
    MetadefAssociationRow,
    MetadefNamespaceRow,
    MetadefObjectRow,
    MetadefPropertyRow,
    MetadefResourceTypeRow,
    MetadefTagRow,
    OwnerLockRow,
    PropertyRow,
    TagRow,
    TaskRow,
    TombstoneRow,
)
from abbild.errors import (
    ConcurrentUpdate,
    Conflict,
    DuplicateImage,
    Forbidden,
    ImageNotFound,
    Invalid,
    MemberNotFound,
    MetadefNotFound,
    QuotaExceeded,
    RegistryUnavailable,
    TaskNotFound,
)
from abbild.image import Image, Location, Status, utcnow
from abbild.metadefs import (
    NAMESPACE_SORT_KEYS,
    VISIBILITIES,
    Association,
    MetadefObject,
    MetadefTag,
    Namespace,
    NamespaceFilters,
    ResourceType,
)
from abbild.registry import (
    CACHE_STATES,
    IN_FILTERS,
    NUMBER_FILTERS,
    PURGE_TABLES,
    SORT_KEYS,
    TASK_SORT_KEYS,
    TIME_OPERATORS,
    CacheEntry,
    ImageFilters,
    Member,
    Registry,
    Usage,
    Viewer,
)
from abbild.tasks import TASK_TYPES, Task, TaskFilters, TaskStatus

LOG = logging.getLogger(__name__)

_SCALARS = (
    "name",
    "status",
    "visibility",
    "protected",
    "os_hidden",
    "owner",
    "disk_format",
    "container_format",
    "size",
    "virtual_size",
    "checksum",
    "os_hash_algo",
    "os_hash_value",
    "min_disk",
    "min_ram",
    "created_at",
    "updated_at",
    "deleted_at",
    "upload_worker",
    "upload_lease",
)
_TIMES = ("created_at", "updated_at", "deleted_at", "upload_lease")
_NULLABLE_SORT_KEYS = {"name", "container_format", "disk_format", "size"}
# Never listed: deleted for every caller (pending_delete: only its data is still going).
_HIDDEN_STATUSES = (Status.DELETED.value, Status.KILLED.value, Status.PENDING_DELETE.value)
_TIME_FILTER_COLUMNS = ("created_at", "updated_at")


# How often (seconds) a process lets SQLite look for tables to analyze.
SQLITE_OPTIMIZE_EVERY = 60.0
# A pooled server connection idle this many seconds is checked before use (_ping_when_idle).
PING_AFTER_IDLE = 1.0
# How long a SQLite write waits for the write lock (another process's) or for the
# process's write connection.
SQLITE_BUSY_SECONDS = 60
# A tag or property filter that matches at most this many images drives a list page
# (SQLRegistry._rare_filter_drives): at 100,000 images, reading 2,000 images by id and
# sorting them costs on SQLite what finding 100 of them in sort order does (2.5 ms).
FEW_TO_DRIVE = 2000


def _sqlite_file(url: str) -> bool:
    """Whether *url* is a SQLite database in a file (each connection to an in-memory
    one would open a database of its own)."""
    parsed = make_url(url)
    return (
        parsed.get_backend_name() == "sqlite"
        and parsed.database not in (None, "", ":memory:")
        and (parsed.query.get("mode") != "memory")
    )


def make_engine(url: str, pool_size: int = 10, *, writer: bool = False):
    """An engine tuned per database: SQLite gets WAL (synced at checkpoints), a busy timeout and write
    transactions that take the write lock up front (BEGIN IMMEDIATE), so concurrent
    writers queue instead of failing with "database is locked".

    *writer*: the engine of a SQLite file's writes, one connection that a process's
    writers take in turn (see SQLRegistry)."""
    if url.startswith("sqlite"):
        busy_timeout = f"PRAGMA busy_timeout={int(SQLITE_BUSY_SECONDS * 1000)}"
        pool = {"pool_size": 1, "max_overflow": 0, "pool_timeout": SQLITE_BUSY_SECONDS} if writer else {}
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_SECONDS, "check_same_thread": False}, **pool)

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn, _record):
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, below
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # In WAL mode NORMAL syncs the log at checkpoints, not at every commit: a
            # committed transaction survives the process crashing; only an operating
            # system crash or power loss may lose the last ones before a checkpoint
            # (never corrupting the database). That about doubles the creates a second.
            cur.execute("PRAGMA synchronous=NORMAL")
            # Reads map the file instead of copying each page out of the OS cache: a
            # list page's rows lie all over a large database.
            cur.execute("PRAGMA mmap_size=1073741824")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(busy_timeout)
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("abbild_write") else "BEGIN")

        last_optimized = [None]

        @event.listens_for(engine, "checkin")
        def _sqlite_optimize(dbapi_conn, _record):
            # SQLite gathers no statistics by itself, and without them it reads a
            # project's list pages from the wrong indexes (62 ms instead of 6 at
            # 100,000 images). PRAGMA optimize analyzes the tables this connection
            # used that were never analyzed or have grown 25-fold since, so most times
            # it does nothing. Mask 2: a full ANALYZE (0.6 s at 100,000 images), as the
            # sampled one of newer SQLite versions misjudged the indexes fourfold.
            if dbapi_conn is None:  # invalidated
                return
            now = time.monotonic()
            if last_optimized[0] is not None and now - last_optimized[0] < SQLITE_OPTIMIZE_EVERY:
                return
            last_optimized[0] = now
            try:
                dbapi_conn.execute("PRAGMA busy_timeout=0")  # not worth a wait: next time
                try:
                    dbapi_conn.execute("PRAGMA optimize=2")
                finally:
                    dbapi_conn.execute(busy_timeout)
            except sqlite3.Error as exc:
                LOG.debug("PRAGMA optimize: %s", exc)

        return engine
    kwargs = {"pool_size": pool_size, "max_overflow": pool_size, "pool_recycle": 3600}
    if url.startswith("mysql") or url.startswith("mariadb"):
        kwargs["isolation_level"] = "READ COMMITTED"
    if url.startswith("postgresql"):
        # No parallel plans: a list page reads a few thousand index entries at most,
        # and starting the workers took longer than that (a property-filtered page:
        # 41 ms with two workers, 8 ms without, measured at 100,000 images). And
        # always a plan for the values at hand: psycopg prepares a statement run five
        # times on a connection, and PostgreSQL's generic plan for it, chosen after
        # five runs more, made some list pages 2-5 times slower. And no hash joins:
        # a page reads at most a few thousand rows in order, and where PostgreSQL
        # underestimated how many images a common property has, it hashed them all
        # instead of merging them with the images in order (40 ms instead of 1, after
        # some thousand images were created and deleted since the last ANALYZE).
        options = "-c max_parallel_workers_per_gather=0 -c plan_cache_mode=force_custom_plan -c enable_hashjoin=off"
        kwargs["connect_args"] = {"options": options}
    engine = create_engine(url, **kwargs)
    _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine) -> None:
    """Check a pooled connection before use if it lay idle PING_AFTER_IDLE seconds or
    more: the database server may have restarted or closed it meanwhile, and one that
    fails is replaced before the request uses it. A connection in use moments ago
    goes straight to work; a ping on every use (SQLAlchemy's pre_ping) cost each
    request a round trip (0.1 ms of a 0.27 ms get_image on PostgreSQL). The first
    request on a connection that the server closed in between fails; the pool then
    replaces every connection it had made before."""

    @event.listens_for(engine, "connect")
    @event.listens_for(engine, "checkin")
    def _last_used(dbapi_conn, record):
        record.info["last_used"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_conn, record, _proxy):
        if time.monotonic() - record.info.get("last_used", 0.0) < PING_AFTER_IDLE:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)  # as pre_ping does: no transaction left open
        except engine.dialect.loaded_dbapi.Error as exc:
            raise DisconnectionError(f"a pooled connection failed its check: {exc}") from exc


class _Raw:
    """A statement compiled once for a database, to run on a DBAPI cursor: its
    parameters pass through their types' bind processors, as in SQLAlchemy's own
    execution. That execution (events, contexts, result objects) costs several times
    what SQLite takes for a read of one image or the inserts of a new one: 0.30 ms of
    CPU against 0.08 for reading an image this way.

    :param column_keys: for an INSERT, the columns it sets (the others keep their
        server defaults: an autoincrement key must not be sent a NULL)."""

    def __init__(self, dialect, statement, column_keys: list[str] | None = None) -> None:
        compiled = statement.compile(dialect=_native_placeholders(dialect), column_keys=column_keys)
        self.sql = str(compiled)
        self._names = compiled.positiontup  # None where the placeholders carry names
        self._literals = compiled.params  # values the statement holds; the rest come with each run
        self._processors = [
            (name, process)
            for name, bind in compiled.binds.items()
            if (process := bind.type.dialect_impl(dialect).bind_processor(dialect))
        ]

    def args(self, params: dict):
        """The DBAPI parameters of a run with *params*."""
        values = {**self._literals, **params}
        for name, process in self._processors:
            values[name] = process(values[name])
        return [values[name] for name in self._names] if self._names else values


def _native_placeholders(dialect):
    """*dialect*, writing psycopg's statements with PostgreSQL's own placeholders
    ($1), which a :func:`_cursor` sends as they are: psycopg rewrites ``%s`` ones into
    those on every run of a statement longer than 4 KiB (it keeps only shorter ones),
    0.1-0.16 ms of a project's deep or filtered list page."""
    if dialect.driver != "psycopg":
        return dialect
    native = copy.copy(dialect)
    native.paramstyle, native.positional = "numeric_dollar", True
    return native


def _cursor(connection, dialect):
    """A cursor of a pooled *connection* for :class:`_Raw` statements."""
    if dialect.driver == "psycopg":
        return dialect.loaded_dbapi.RawCursor(connection.dbapi_connection)
    return connection.cursor()


def _lost(engine, connection, exc) -> None:
    """*connection* to the database server was lost: drop it, and the connections
    made with it, which the same restart most likely ended too (as SQLAlchemy does
    on a disconnect in its own statements)."""
    connection.invalidate(exc)
    engine.dispose(close=False)


@contextlib.contextmanager
def _raw_cursor(engine):
    """A DBAPI cursor on a pooled connection, for reads with :class:`_Raw` statements.

    :raises RegistryUnavailable: the database cannot be reached."""
    connection = None
    try:
        connection = engine.raw_connection()
        dbapi_connection = connection.dbapi_connection
        # On PostgreSQL a read outside a transaction spares the BEGIN and the
        # ROLLBACK, two round trips (a GET's read: 0.30 -> 0.20 ms); each statement
        # sees its own snapshot, as in a READ COMMITTED transaction.
        autocommit = engine.dialect.name == "postgresql"
        if autocommit:
            dbapi_connection.autocommit = True
        cursor = _cursor(connection, engine.dialect)
        try:
            yield cursor
        finally:
            cursor.close()
            if autocommit and not dbapi_connection.closed:
                dbapi_connection.autocommit = False
    except engine.dialect.loaded_dbapi.OperationalError as exc:
        if connection is not None and engine.dialect.is_disconnect(exc, connection.dbapi_connection, None):
            _lost(engine, connection, exc)
        raise RegistryUnavailable(str(exc)) from exc
    finally:
        if connection is not None:
            connection.close()


def _result_processors(dialect, statement) -> list:
    """``(position, convert)`` for the columns *statement* selects whose values the
    DBAPI returns in another form than SQLAlchemy would (SQLite's datetimes, booleans)."""
    return [
        (i, p)
        for i, c in enumerate(statement.selected_columns)
        if (p := c.type.dialect_impl(dialect).result_processor(dialect, None))
    ]


def _converted(row, processors: list) -> list:
    row = list(row)
    for i, process in processors:
        row[i] = process(row[i])
    return row


class _OneRow:
    """A read of one row on a pooled DBAPI connection (see :class:`_Raw`); the row's
    values pass through their columns' own result processors, as SQLAlchemy would
    convert them."""

    def __init__(self, engine, statement) -> None:
        self._engine = engine
        self._statement = _Raw(engine.dialect, statement)
        self._processors = _result_processors(engine.dialect, statement)
        self._row = collections.namedtuple("Row", [column.key for column in statement.selected_columns])

    def first(self, **params):
        """:returns: the first row, or None. :raises RegistryUnavailable: the
        database cannot be reached."""
        with _raw_cursor(self._engine) as cursor:
            cursor.execute(self._statement.sql, self._statement.args(params))
            row = cursor.fetchone()
        return None if row is None else self._row(*_converted(row, self._processors))


def _retryable(exc: DBAPIError) -> bool:
    """Deadlocks and lock timeouts: the whole transaction may simply run again."""
    code = getattr(exc.orig, "args", [None])[0]
    if code in (1205, 1213):  # MySQL lock wait timeout, deadlock
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None)
    return sqlstate in ("40001", "40P01")  # PostgreSQL serialization failure, deadlock


#: Hours an ended task stays, when no configuration says (Glance's default).
TASK_TIME_TO_LIVE = 48


class SQLRegistry(Registry):
    """:param task_time_to_live: hours a task stays once it ended (``[task]
    task_time_to_live`` when *conf* is given)."""

    def __init__(
        self,
        conf=None,
        *,
        url: str | None = None,
        pool_size: int = 10,
        task_time_to_live: float = TASK_TIME_TO_LIVE,
    ) -> None:
        if url is None:
            url, pool_size = conf.database.connection, conf.database.pool_size
        if conf is not None:
            task_time_to_live = conf.task.task_time_to_live
        self.task_time_to_live = datetime.timedelta(hours=task_time_to_live)
        self.url = url
        self.engine = make_engine(url, pool_size)
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        # Reads of a whole aggregate in several queries see one moment (SQLite's read
        # transaction does anyway; the servers' READ COMMITTED would not).
        self._snapshot = (
            self._read
            if url.startswith("sqlite")
            else sessionmaker(self.engine.execution_options(isolation_level="REPEATABLE READ"), expire_on_commit=False)
        )
        # SQLite lets one transaction write at a time. A process's writers share one
        # connection and take turns in its pool's queue, not in SQLite's busy handler,
        # which sleeps 1-100 ms between tries; and that connection's page cache stays
        # good from one write to the next. On connections taken from a pool in turn,
        # each write first read again the pages the others had changed: 37 reads and a
        # new mapping of the file a create, against 4 reads now.
        self.write_engine = make_engine(url, writer=True) if _sqlite_file(url) else self.engine
        self._write = sessionmaker(self.write_engine.execution_options(abbild_write=True), expire_on_commit=False)
        self._in_change = threading.local()  # set while an update_image/update_namespace change runs
        self._get_image_query = _OneRow(
            self.engine, _with_document(_IMAGES).where(_IMAGES.c.id == bindparam("image_id"))
        )
        dialect = self.engine.dialect
        self._create_statements = _CreateStatements(
            image=_Raw(dialect, _INSERT_IMAGE, [column.key for column in _IMAGES.c]),
            tombstone=_Raw(dialect, _TOMBSTONE),
            properties=_Raw(dialect, _INSERT_PROPERTIES, ["image_id", "name", "value", "image_created_at"]),
            tags=_Raw(dialect, _INSERT_TAGS, ["image_id", "value", "image_created_at"]),
            locations=_Raw(dialect, _INSERT_LOCATIONS, ["image_id", *_LOCATION_FIELDS]),
            document=_Raw(dialect, _INSERT_DOCUMENT),
        )
        # List statements by shape (see list_images): building one costs more CPU
        # than running it.
        self._list_statements: dict[tuple, _Raw] = {}
        self._image_processors = _result_processors(dialect, _SELECT_IMAGES)
        self._page_processors = _result_processors(dialect, _with_document(_IMAGES))

    def prepare(self) -> None:
        """Make sure the database schema is current before serving.

        The embedded SQLite database is upgraded in place; a server database must be
        upgraded by the operator (``abbild db sync``), who may want a backup first.
        """
        from abbild.db import migrate
        from abbild.errors import ConfigError

        current, head = migrate.current(self.engine), migrate.head()
        if current == head:
            return
        if self.url.startswith("sqlite"):
            migrate.sync(self.engine)
            return
        raise ConfigError(
            f"the database schema is at revision {current or 'none'}, this abbild needs {head}: "
            f"run 'abbild db sync' (with the same config file) first"
        )

    def close(self) -> None:
        if self.write_engine is not self.engine:
            self.write_engine.dispose()
        self.engine.dispose()

    # -- sessions ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _reading(self, *, snapshot: bool = False):
        try:
            with (self._snapshot if snapshot else self._read)() as session:
                yield session
        except OperationalError as exc:
            raise RegistryUnavailable(str(exc.orig)) from exc

    @contextlib.contextmanager
    def _connection(self):
        """A plain connection in a read transaction: reads of images skip the ORM."""
        try:
            with self.engine.connect() as conn:
                yield conn
        except OperationalError as exc:
            raise RegistryUnavailable(str(exc.orig)) from exc

    def _writing(self, work, *, raw: bool = False):
        """Run ``work(session)`` in a write transaction, again if the database chose
        it as a deadlock victim; *raw*: ``work(cursor)`` on a DBAPI cursor, for
        :class:`_Raw` statements."""
        if getattr(self._in_change, "label", None) is not None:
            # It would wait for the lock update_image holds: forever on PostgreSQL.
            raise RuntimeError(f"an {self._in_change.label} must not write through the registry")
        for attempt in range(5):
            try:
                if raw:
                    return self._raw_transaction(work)
                with self._write() as session, session.begin():
                    return work(session)
            except PoolTimeout as exc:  # the SQLite write connection stayed busy
                raise RegistryUnavailable(f"the database's writes are busy: {exc}") from exc
            except DataError as exc:  # a value its column cannot hold: MariaDB's TEXT keeps 65,535 bytes
                raise Invalid(f"The database cannot store a value of this request: {exc.orig}") from exc
            except DBAPIError as exc:
                if isinstance(exc, IntegrityError) or not _retryable(exc) or attempt == 4:
                    if isinstance(exc, OperationalError) and not _retryable(exc):
                        raise RegistryUnavailable(str(exc.orig)) from exc
                    raise
                time.sleep(0.01 * (attempt + 1))

    def _raw_transaction(self, work):
        """``work(cursor)`` in a write transaction on a pooled DBAPI connection; the
        database's errors come as SQLAlchemy's (IntegrityError, OperationalError, ...),
        as from any other write."""
        dialect = self.engine.dialect
        connection = cursor = None
        try:
            connection = self.write_engine.raw_connection()
            cursor = _cursor(connection, dialect)
            if dialect.name == "sqlite":  # the connection is in autocommit mode: see make_engine
                cursor.execute("BEGIN IMMEDIATE")
            result = work(cursor)
            connection.commit()
            return result
        except dialect.loaded_dbapi.Error as exc:
            invalidated = connection is not None and dialect.is_disconnect(exc, connection.dbapi_connection, cursor)
            if invalidated:
                _lost(self.write_engine, connection, exc)
            error = DBAPIError.instance(
                None, None, exc, dialect.loaded_dbapi.Error, connection_invalidated=invalidated, dialect=dialect
            )
            raise error from exc
        finally:
            if cursor is not None:
                cursor.close()
            if connection is not None:
                connection.close()  # back to the pool, which rolls back what is still open

    # -- images -----------------------------------------------------------------------

    def create_image(self, image: Image) -> Image:
        image = _normalized(image)
        image.created_at = image.updated_at = utcnow()
        image.version = 1

        statements = self._create_statements

        def work(cursor):
            run = statements.image
            cursor.execute(run.sql, run.args({"id": image.id, "deleted": False, "version": 1, **_columns(image)}))
            # Looked up after the insert: an insert that meets the row of a purge in
            # progress waits for it, and then sees its tombstone.
            cursor.execute(statements.tombstone.sql, statements.tombstone.args({"id": image.id}))
            if cursor.fetchone() is not None:
                raise DuplicateImage(image.id)
            children = (
                (statements.properties, property_rows(image, image.properties)),
                (statements.tags, tag_rows(image, image.tags)),
                (statements.locations, location_rows(image)),
                (statements.document, [document_row(image)]),
            )
            for run, rows in children:
                if rows:
                    cursor.executemany(run.sql, [run.args(row) for row in rows])

        try:
            self._writing(work, raw=True)
        except IntegrityError as exc:
            with self._reading() as session:
                if session.get(ImageRow, image.id) is not None:
                    raise DuplicateImage(image.id) from exc
            raise
        return image

    def get_image(self, image_id: str, *, include_deleted: bool = False) -> Image:
        row = self._get_image_query.first(image_id=image_id)
        if row is None or (row.deleted and not include_deleted):
            raise ImageNotFound(image_id)
        return _images_of([row], self._children_apart)[0]

    def _children_apart(self, ids: list[str]) -> dict:
        with self._connection() as conn:
            return children_from_tables(conn, ids)

    def save_image(self, image: Image, *, storage_limit: int | None = None) -> Image:
        def work(session: Session):
            # Our UPDATE holds the row lock until commit, so the children are ours too.
            return _save(session, image, lambda: _load_children(session, image.id), storage_limit)

        return self._writing(work)

    def update_image(
        self, image_id: str, change: Callable[[Image], None], *, storage_limit: int | None = None, within: float = 30.0
    ) -> Image:
        """Apply *change* to the current image and save it, in one write transaction.

        The image row is locked before it is read (``SELECT ... FOR UPDATE``; on SQLite
        ``BEGIN IMMEDIATE`` holds the database write lock), so no writer can come between
        the read and the write, and *change* runs once, on the latest state. (Retrying on
        conflicts, as the base class does, starves under contention: a writer that waits
        for the lock finds its version stale again and again.) *change* runs with the
        lock held: it must be quick, and writing through the registry from it raises
        ``RuntimeError`` instead of deadlocking. *within* is not needed here.
        """

        def work(session: Session):
            row = session.scalars(
                _with_children(
                    select(ImageRow).where(ImageRow.id == image_id, ImageRow.deleted == false())
                ).with_for_update()
            ).first()
            if row is None:
                raise ImageNotFound(image_id)
            current = _to_image(row)
            image = current.copy()
            self._in_change.label = f"update_image change (image {image_id})"
            try:
                change(image)
            finally:
                self._in_change.label = None
            return _save(session, image, lambda: (current.properties, current.tags, current.locations), storage_limit)

        return self._writing(work)

    def images_in_status(self, status: str) -> list[Image]:
        with self._reading() as session:
            rows = session.scalars(
                _with_children(select(ImageRow).where(ImageRow.status == status, ImageRow.deleted == false()))
            )
            return [_to_image(r) for r in rows]

    def usage(self, owner: str) -> Usage:
        uploading = case((ImageRow.status == Status.SAVING.value, 1), else_=0)
        query = select(func.coalesce(func.sum(ImageRow.size), 0), func.count(), func.coalesce(func.sum(uploading), 0))
        with self._reading() as session:
            size, images, saving = session.execute(
                query.where(ImageRow.owner == owner, ImageRow.deleted == false())
            ).one()
        return Usage(size=int(size), images=int(images), uploading=int(saving))

    def list_images(self, filters: ImageFilters, sort, limit, marker=None, viewer: Viewer | None = None):
        """One page, in one query that indexes serve: keyset paging (the marker's sort
        key values bound the index range, so a deep page costs what the first does),
        and for a project the images it may see as disjoint parts (public, community,
        its own, nobody's, shared with it), each read in sort order from its own
        index, their first pages merged, and the children documents of the page's
        rows.

        The statement depends only on the request's shape (which filters, sorts and
        visibility parts, how many values an IN filter has, whether a marker and which
        of its keys are NULL); the values are its parameters, so a shape is built and
        compiled once, and runs on the DBAPI: SQLAlchemy's execution and rows cost
        0.3 ms a page on SQLite, 0.5 on PostgreSQL (see :class:`_Raw`)."""
        viewer = viewer or Viewer(is_admin=True)
        keys = _sort_keys(sort)
        tests, params = _filter_params(filters)
        params.update(limit=limit, project=viewer.project_id, visibility=filters.visibility)
        params["member_status"] = filters.member_status
        with _raw_cursor(self.engine) as cursor:
            tests = self._rare_filter_drives(cursor, tests, params)
            marker_nulls = None
            if marker is not None:
                # The marker must be an image the viewer may read (GLANCE-API 4.3: an
                # unknown or invisible marker is a 400), else paging would leak ids.
                query = self._statement(("marker", viewer.is_admin, viewer.project_id is None), _marker_query, viewer)
                cursor.execute(query.sql, query.args({"marker": marker, "project": viewer.project_id}))
                marker_row = cursor.fetchone()
                if marker_row is None:
                    raise Invalid(f"Invalid marker {marker}: no image with that ID")
                marker_row = _converted(marker_row, self._image_processors)
                for column, _ in keys:
                    params[f"marker_{column.key}"] = marker_row[_POSITIONS[column.key]]
                marker_nulls = tuple(params[f"marker_{column.key}"] is None for column, _ in keys)
            visibility = filters.visibility if filters.visibility in (None, "all") else "one"
            if not viewer.is_admin:
                visibility = filters.visibility  # it decides which parts there are
            shape = (
                "list",
                viewer.is_admin,
                viewer.project_id is None,
                visibility,
                filters.member_status == "all",
                filters.owner is not None and filters.owner == viewer.project_id,
                tuple((column.key, direction) for column, direction in keys),
                tests,
                marker_nulls,
            )
            dialect = self.engine.dialect.name
            query = self._statement(shape, _list_query, keys, tests, viewer, filters, marker_nulls, dialect)
            cursor.execute(query.sql, query.args(params))
            rows = cursor.fetchall()
        rows = [_converted(row, self._page_processors) for row in rows]
        return _images_of(rows, self._children_apart)

    def _rare_filter_drives(self, cursor, tests: tuple, params: dict) -> tuple:
        """*tests* with the rarest tag or property filter marked to drive the page, if it
        matches at most FEW_TO_DRIVE images.

        A tag or property filter is tested on each image the page reads in sort order,
        until the page is full: 1,350 images for a tag one image in thirteen has, at
        100,000 images; all of them for a rare one (50 ms). Read from its own rows
        instead, a rare one costs what it matches (a tag of 20 images: 0.02 ms), but a
        common one costs all its images, sorted (9 ms). SQLite keeps no statistics of
        values to tell the two apart, and PostgreSQL and MariaDB, which do, read a
        common value's rows whole for deep pages; so the registry writes the statement
        either way. It counts the filter's rows (at most FEW_TO_DRIVE + 1 index
        entries); on PostgreSQL it asks the planner's estimate instead, as a count of a
        common property value reads a table row for each (5 ms for 2,000)."""
        postgres = self.engine.dialect.name == "postgresql"
        rarest = None
        for i, test in enumerate(tests):
            if test[0] not in ("tag", "property"):
                continue
            values = {"name": params[f"filter_{i}"], "value": params.get(f"filter_{i}_value")}
            if postgres:
                query = self._statement(("rows", test[0]), _rows_query, test[0])
                cursor.execute("EXPLAIN (FORMAT JSON) " + query.sql, query.args(values))
                count = cursor.fetchone()[0][0]["Plan"]["Plan Rows"]
            else:
                query = self._statement(("count", test[0]), _count_query, test[0], FEW_TO_DRIVE + 1)
                cursor.execute(query.sql, query.args(values))
                count = cursor.fetchone()[0]
            if count <= FEW_TO_DRIVE and (rarest is None or count < rarest[1]):
                rarest = (i, count)
        if rarest is None:
            return tests
        i = rarest[0]
        return (*tests[:i], (tests[i][0], "drives"), *tests[i + 1 :])

    def _statement(self, shape: tuple, build, *args) -> _Raw:
        """The statement of *shape*, built by ``build(*args)`` and compiled the first time."""
        statement = self._list_statements.get(shape)
        if statement is None:
            if len(self._list_statements) > 1000:  # odd requests must not grow it forever
                self._list_statements.clear()
            statement = self._list_statements[shape] = _Raw(self.engine.dialect, build(*args))
        return statement

    # -- the cache index ----------------------------------------------------------------

    def cache_entries(self, node: str | None = None, image_id: str | None = None) -> list[CacheEntry]:
        query = select(CacheEntryRow).order_by(CacheEntryRow.last_modified, CacheEntryRow.id)
        if node is not None:
            query = query.where(CacheEntryRow.node == node)
        if image_id is not None:
            query = query.where(CacheEntryRow.image_id == image_id)
        with self._reading() as session:
            return [_to_cache_entry(row) for row in session.scalars(query)]

    def cache_put(self, entry: CacheEntry) -> CacheEntry:
        stored = _checked_cache_entry(entry)
        stored.last_modified = utcnow()
        values = dataclasses.asdict(stored)
        key = (CacheEntryRow.node == stored.node, CacheEntryRow.image_id == stored.image_id)

        def work(session: Session):
            if session.execute(update(CacheEntryRow).where(*key).values(**values)).rowcount == 0:
                session.execute(insert(CacheEntryRow).values(**values))

        try:
            self._writing(work)
        except IntegrityError:
            # A concurrent put inserted the entry between our UPDATE and INSERT: the
            # UPDATE finds it now.
            self._writing(work)
        return stored

    def cache_hit(self, node: str, image_id: str) -> None:
        # One UPDATE: the database adds concurrent hits up, none is lost to a read-modify-write.
        self._writing(
            lambda session: session.execute(
                update(CacheEntryRow)
                .where(CacheEntryRow.node == node, CacheEntryRow.image_id == image_id)
                .values(hits=CacheEntryRow.hits + 1, last_accessed=utcnow())
            )
        )

    def cache_remove(self, node: str, image_id: str) -> bool:
        def work(session: Session) -> bool:
            result = session.execute(
                delete(CacheEntryRow).where(CacheEntryRow.node == node, CacheEntryRow.image_id == image_id)
            )
            return result.rowcount > 0

        return self._writing(work)

    # -- leases ---------------------------------------------------------------------

    def acquire_lease(self, name: str, holder: str, seconds: float) -> bool:
        _checked_lease(name, holder, seconds)
        now = utcnow()
        values = {"holder": holder, "expires_at": now + datetime.timedelta(seconds=seconds)}

        def work(session: Session) -> bool:
            taken = session.execute(
                update(LeaseRow)
                .where(LeaseRow.name == name, or_(LeaseRow.holder == holder, LeaseRow.expires_at < now))
                .values(**values)
            )
            if taken.rowcount:
                return True
            if session.get(LeaseRow, name) is not None:
                return False  # somebody else's, and current
            session.execute(insert(LeaseRow).values(name=name, **values))
            return True

        try:
            return self._writing(work)
        except IntegrityError:
            return False  # another process inserted it first

    def release_lease(self, name: str, holder: str) -> None:
        self._writing(
            lambda session: session.execute(delete(LeaseRow).where(LeaseRow.name == name, LeaseRow.holder == holder))
        )

    # -- purge ----------------------------------------------------------------------

    #: Rows (deleted images, or removed memberships) per transaction of :meth:`purge`:
    #: each batch holds its locks briefly and needs little memory, however much goes.
    purge_batch = 500

    def purge(self, older_than: datetime.datetime, max_rows: int | None = None) -> dict[str, int]:
        if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 0):
            raise Invalid(f"max_rows is a whole number of at least 0, or None for all, not {max_rows!r}")
        if not isinstance(older_than, datetime.datetime):
            raise Invalid(f"older_than is a point in time, not {older_than!r}")
        cutoff = _naive_utc(older_than)
        removed = dict.fromkeys(PURGE_TABLES, 0)
        batches = ((_purge_images, "images"), (_purge_memberships, "image_members"), (_purge_tasks, "tasks"))
        for batch, selected in batches:
            left = max_rows
            while left is None or left > 0:
                limit = self.purge_batch if left is None else min(self.purge_batch, left)
                counts = self._writing(lambda session, batch=batch, limit=limit: batch(session, cutoff, limit))
                for table, count in counts.items():
                    removed[table] += count
                if left is not None:
                    left -= counts[selected]
                if counts[selected] < limit:
                    break
        return removed

    # -- tasks ----------------------------------------------------------------------

    def create_task(self, task: Task) -> Task:
        stored = self._task_for_write(task)
        stored.created_at = stored.updated_at = utcnow()
        stored.version = 1
        stored.expires_at = self._expiry(stored)

        def work(session: Session):
            session.execute(insert(TaskRow).values(**_task_columns(stored)))

        try:
            self._writing(work)
        except IntegrityError as exc:
            raise Conflict(f"A task with identifier {task.id} already exists") from exc
        return stored

    def get_task(self, task_id: str) -> Task:
        with self._reading() as session:
            row = session.scalars(select(TaskRow).where(TaskRow.id == task_id, _task_alive())).first()
            if row is None:
                raise TaskNotFound(task_id)
            return _to_task(row)

    def list_tasks(
        self,
        filters: TaskFilters,
        sort_key: str = "created_at",
        sort_dir: str = "desc",
        limit: int | None = None,
        marker: str | None = None,
    ) -> list[Task]:
        if sort_key not in TASK_SORT_KEYS:
            raise Invalid(f"Invalid sort key: {sort_key}. It must be one of the following: {', '.join(TASK_SORT_KEYS)}")
        if sort_dir not in ("asc", "desc"):
            raise Invalid(f"Invalid sort direction: {sort_dir}. It must be one of the following: asc, desc")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise Invalid(f"Invalid limit {limit!r}: a whole number of at least 0")
        keys = [(getattr(TaskRow, sort_key), sort_dir)] + ([(TaskRow.id, sort_dir)] if sort_key != "id" else [])
        conditions = [_task_alive()]
        for name in ("type", "status", "owner"):
            value = getattr(filters, name)
            if value is not None:
                conditions.append(getattr(TaskRow, name) == value)
        with self._reading() as session:
            query = select(TaskRow).where(*conditions)
            if marker is not None:
                # Only a task of this very list marks a page: another would tell its
                # owner's tasks apart from missing ids.
                marker_row = session.scalars(select(TaskRow).where(TaskRow.id == marker, *conditions)).first()
                if marker_row is None:
                    raise Invalid(f"Invalid marker {marker}: no task with that ID")
                query = query.where(_after(keys, marker_row))
            for column, direction in keys:
                query = query.order_by(column.asc() if direction == "asc" else column.desc())
            if limit is not None:
                query = query.limit(limit)
            return [_to_task(row) for row in session.scalars(query)]

    def save_task(self, task: Task) -> Task:
        saved = self._task_for_write(task)
        now = utcnow()
        saved.updated_at = now if saved.updated_at is None else max(now, saved.updated_at)
        saved.version = task.version + 1
        saved.expires_at = self._expiry(saved)
        values = _task_columns(saved)
        del values["id"], values["created_at"]

        def work(session: Session):
            result = session.execute(
                update(TaskRow)
                .where(TaskRow.id == task.id, TaskRow.version == task.version, _task_alive())
                .values(**values)
            )
            if result.rowcount != 1:
                if session.scalar(select(TaskRow.id).where(TaskRow.id == task.id, _task_alive())) is None:
                    raise TaskNotFound(task.id)
                raise ConcurrentUpdate(task.id)

        self._writing(work)
        return saved

    def tasks_of_image(self, image_id: str) -> list[Task]:
        with self._reading() as session:
            rows = session.scalars(
                select(TaskRow)
                .where(TaskRow.image_id == image_id, _task_alive())
                .order_by(TaskRow.created_at.desc(), TaskRow.id.desc())
            )
            return [_to_task(row) for row in rows]

    # -- metadata definitions ------------------------------------------------------------

    def create_namespace(self, namespace: Namespace) -> Namespace:
        stored = _namespace_for_write(namespace)
        now = utcnow()
        stored.created_at = stored.updated_at = now
        stored.version = 1
        for child in (*stored.objects, *stored.tags, *stored.associations):
            child.created_at = child.updated_at = now

        def work(session: Session):
            try:
                with session.begin_nested():
                    result = session.execute(insert(MetadefNamespaceRow).values(**_namespace_columns(stored)))
                    namespace_id = result.inserted_primary_key[0]
            except IntegrityError:
                raise _namespace_taken(stored.namespace) from None
            _write_namespace_children(session, namespace_id, stored, None)

        self._writing(work)
        return stored

    def get_namespace(self, name: str) -> Namespace:
        with self._reading(snapshot=True) as session:
            row = session.scalars(select(MetadefNamespaceRow).where(MetadefNamespaceRow.namespace == name)).first()
            if row is None or row.namespace != name:
                raise _namespace_not_found(name)
            return _to_namespaces(session, [row])[0]

    def list_namespaces(
        self,
        filters: NamespaceFilters,
        sort_key: str = "created_at",
        sort_dir: str = "desc",
        limit: int | None = None,
        marker: str | None = None,
        viewer: Viewer | None = None,
    ) -> list[Namespace]:
        if sort_key not in NAMESPACE_SORT_KEYS:
            raise Invalid(
                f"Invalid sort key: {sort_key}. It must be one of the following: {', '.join(NAMESPACE_SORT_KEYS)}"
            )
        if sort_dir not in ("asc", "desc"):
            raise Invalid(f"Invalid sort direction: {sort_dir}. It must be one of the following: asc, desc")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise Invalid(f"Invalid limit {limit!r}: a whole number of at least 0")
        row = MetadefNamespaceRow
        keys = [(getattr(row, sort_key), sort_dir)] + ([(row.namespace, sort_dir)] if sort_key != "namespace" else [])
        conditions = [*_namespace_scope(viewer), *_namespace_filters(filters)]
        with self._reading(snapshot=True) as session:
            query = select(row).where(*conditions)
            if marker is not None:
                marker_row = session.scalars(select(row).where(row.namespace == marker, *conditions)).first()
                if marker_row is None or marker_row.namespace != marker:
                    raise Invalid(f"Invalid marker {marker}: no namespace with that name")
                query = query.where(_after(keys, marker_row))
            for column, direction in keys:
                if column.key in _NULLABLE_NAMESPACE_KEYS:
                    # NULL sorts as the smallest value, on every database (as _after assumes).
                    query = query.order_by(column.is_(None).desc() if direction == "asc" else column.is_(None).asc())
                query = query.order_by(column.asc() if direction == "asc" else column.desc())
            if limit is not None:
                query = query.limit(limit)
            return _to_namespaces(session, list(session.scalars(query)))

    def save_namespace(self, name: str, namespace: Namespace) -> Namespace:
        def work(session: Session):
            row, current = _locked_namespace(session, name)
            if row.version != namespace.version:
                raise ConcurrentUpdate(name)
            return _save_namespace(session, row.id, current, namespace)

        return self._writing(work)

    def update_namespace(self, name: str, change: Callable[[Namespace], None], *, within: float = 30.0) -> Namespace:
        """Apply *change* to the current namespace *name* and save it, in one write
        transaction with the namespace's row locked (as :meth:`update_image`, and with
        its rules for *change*); *within* is not needed here."""

        def work(session: Session):
            row, current = _locked_namespace(session, name)
            namespace = copy.deepcopy(current)
            self._in_change.label = f"update_namespace change (namespace {name})"
            try:
                change(namespace)
            finally:
                self._in_change.label = None
            namespace.version = row.version
            return _save_namespace(session, row.id, current, namespace)

        return self._writing(work)

    def delete_namespace(self, name: str) -> None:
        def work(session: Session):
            found = session.execute(
                select(MetadefNamespaceRow.id, MetadefNamespaceRow.namespace)
                .where(MetadefNamespaceRow.namespace == name)
                .with_for_update()
            ).first()
            if found is None or found.namespace != name:
                raise _namespace_not_found(name)
            namespace_id = found.id
            for child in _NAMESPACE_CHILDREN:
                session.execute(delete(child).where(child.namespace_id == namespace_id))
            session.execute(delete(MetadefNamespaceRow).where(MetadefNamespaceRow.id == namespace_id))

        self._writing(work)

    def list_resource_types(self) -> list[ResourceType]:
        with self._reading() as session:
            rows = session.scalars(select(MetadefResourceTypeRow))
            types = [ResourceType(r.name, r.protected, r.created_at, r.updated_at) for r in rows]
        return sorted(types, key=lambda t: t.name)

    def delete_resource_type(self, name: str) -> None:
        def work(session: Session):
            row = session.scalars(
                select(MetadefResourceTypeRow).where(MetadefResourceTypeRow.name == name).with_for_update()
            ).first()
            if row is None or row.name != name:
                raise MetadefNotFound(f"The metadata definition resource-type with name={name}, was not found.")
            if row.protected:
                raise Forbidden(
                    f"Metadata definition resource-type {name} is a seeded-system type and cannot be deleted."
                )
            if session.scalar(select(exists().where(MetadefAssociationRow.resource_type_id == row.id))):
                raise _resource_type_in_use(name)
            session.execute(delete(MetadefResourceTypeRow).where(MetadefResourceTypeRow.id == row.id))

        try:
            self._writing(work)
        except IntegrityError:
            # An association that names it came in after our check (the foreign key).
            raise _resource_type_in_use(name) from None

    def _task_for_write(self, task: Task) -> Task:
        """A copy of *task* as it will read back (naive UTC in whole seconds, a
        :class:`TaskStatus`).

        :raises abbild.errors.Invalid: a value the table cannot hold.
        """
        if task.type not in TASK_TYPES:
            raise Invalid(f"Invalid task type {task.type!r}: one of {', '.join(TASK_TYPES)}")
        if not task.id or len(task.id) > 36 or (task.image_id is not None and len(task.image_id) > 36):
            raise Invalid("A task's id and image id are 1 to 36 characters.")
        for name in ("owner", "request_id", "user_id"):
            if len(getattr(task, name) or "") > 255:
                raise Invalid(f"A task's {name} is at most 255 characters.")
        stored = dataclasses.replace(task, status=TaskStatus(task.status))
        stored.input = dict(task.input or {})
        stored.result = None if task.result is None else dict(task.result)
        stored.message = task.message or ""
        for name in ("created_at", "updated_at", "expires_at"):
            value = _naive_utc(getattr(task, name))
            setattr(stored, name, None if value is None else value.replace(microsecond=0))
        return stored

    def _expiry(self, task: Task) -> datetime.datetime | None:
        """When an ended task goes: ``task_time_to_live`` after it ended (as Glance)."""
        if task.expires_at is None and task.status in (TaskStatus.SUCCESS, TaskStatus.FAILURE):
            return task.updated_at + self.task_time_to_live
        return task.expires_at

    # -- members --------------------------------------------------------------------

    def list_members(self, image_id: str) -> list[Member]:
        with self._reading() as session:
            rows = session.scalars(
                select(MemberRow)
                .where(MemberRow.image_id == image_id, MemberRow.deleted == false())
                .order_by(MemberRow.created_at, MemberRow.id)
            )
            return [_to_member(r) for r in rows]

    def get_member(self, image_id: str, member_id: str) -> Member | None:
        with self._reading() as session:
            row = session.scalars(_member_query(image_id, member_id)).first()
            return _to_member(row) if row is not None else None

    def add_member(self, image_id: str, member_id: str, *, limit: int | None = None) -> Member:
        now = utcnow()

        def work(session: Session):
            if limit is not None:
                # The image row's lock makes the count and the insert one step: two
                # members added side by side cannot both take the last place.
                session.execute(select(ImageRow.id).where(ImageRow.id == image_id).with_for_update())
                count = session.scalar(
                    select(func.count()).where(MemberRow.image_id == image_id, MemberRow.deleted == false())
                )
                if count >= limit:
                    raise QuotaExceeded(f"Image {image_id} already has the maximum of {limit} members.")
            # A removed member keeps its row (the unique key); adding it again revives it.
            row = session.scalars(
                select(MemberRow).where(MemberRow.image_id == image_id, MemberRow.member == member_id).with_for_update()
            ).first()
            if row is not None and not row.deleted:
                raise Conflict(f"Project {member_id} is already a member of image {image_id}.")
            if row is None:
                image_created_at = session.scalar(select(ImageRow.created_at).where(ImageRow.id == image_id))
                if image_created_at is None:
                    raise ImageNotFound(image_id)
                row = MemberRow(image_id=image_id, member=member_id, can_share=False, image_created_at=image_created_at)
                session.add(row)
            row.deleted, row.status, row.created_at, row.updated_at = False, "pending", now, now
            session.flush()
            return _to_member(row)

        try:
            return self._writing(work)
        except IntegrityError:
            raise Conflict(f"Project {member_id} is already a member of image {image_id}.") from None

    def set_member_status(self, image_id: str, member_id: str, status: str) -> Member:
        def work(session: Session):
            row = session.scalars(_member_query(image_id, member_id).with_for_update()).first()
            if row is None:
                raise MemberNotFound(image_id, member_id)
            row.status, row.updated_at = status, utcnow()
            session.flush()
            return _to_member(row)

        return self._writing(work)

    def delete_member(self, image_id: str, member_id: str) -> None:
        def work(session: Session):
            result = session.execute(
                update(MemberRow)
                .where(MemberRow.image_id == image_id, MemberRow.member == member_id, MemberRow.deleted == false())
                .values(deleted=True, updated_at=utcnow())
            )
            if result.rowcount != 1:
                raise MemberNotFound(image_id, member_id)

        self._writing(work)


def _purge_images(session: Session, cutoff: datetime.datetime, limit: int) -> dict[str, int]:
    """One batch of :meth:`SQLRegistry.purge`: up to *limit* images deleted before
    *cutoff*, oldest first, each replaced by its tombstone."""
    ids = list(
        session.scalars(
            select(ImageRow.id)
            .where(ImageRow.status == Status.DELETED.value, ImageRow.deleted == true(), ImageRow.deleted_at < cutoff)
            .order_by(ImageRow.deleted_at, ImageRow.id)
            .limit(limit)
            .with_for_update()  # a second purger waits, then finds these gone
        )
    )
    if not ids:
        return {"images": 0}
    now = utcnow().replace(microsecond=0)
    session.execute(insert(TombstoneRow), [{"id": image_id, "purged_at": now} for image_id in ids])
    counts = {
        table: session.execute(delete(row).where(row.image_id.in_(ids))).rowcount
        for table, row in (
            ("image_properties", PropertyRow),
            ("image_tags", TagRow),
            ("image_locations", LocationRow),
            ("image_members", MemberRow),
            ("cache_entries", CacheEntryRow),
        )
    }
    session.execute(delete(ChildrenRow).where(ChildrenRow.image_id.in_(ids)))
    counts["images"] = session.execute(delete(ImageRow).where(ImageRow.id.in_(ids))).rowcount
    return counts


def _purge_memberships(session: Session, cutoff: datetime.datetime, limit: int) -> dict[str, int]:
    """One batch of :meth:`SQLRegistry.purge`: up to *limit* memberships removed before
    *cutoff* (a removed membership's ``updated_at`` is when it was removed)."""
    removed = (MemberRow.deleted == true(), MemberRow.updated_at < cutoff)
    ids = list(
        session.scalars(
            select(MemberRow.id)
            .where(*removed)
            .order_by(MemberRow.updated_at, MemberRow.id)
            .limit(limit)
            .with_for_update()
        )
    )
    if not ids:
        return {"image_members": 0}
    # The condition again: a membership added back in the meantime stays.
    return {"image_members": session.execute(delete(MemberRow).where(MemberRow.id.in_(ids), *removed)).rowcount}


def _purge_tasks(session: Session, cutoff: datetime.datetime, limit: int) -> dict[str, int]:
    """One batch of :meth:`SQLRegistry.purge`: up to *limit* tasks that expired before
    *cutoff* (an expired task is gone for its readers; its expiry is its deletion)."""
    expired = (TaskRow.expires_at.is_not(None), TaskRow.expires_at < cutoff)
    ids = list(
        session.scalars(
            select(TaskRow.id).where(*expired).order_by(TaskRow.expires_at, TaskRow.id).limit(limit).with_for_update()
        )
    )
    if not ids:
        return {"tasks": 0}
    return {"tasks": session.execute(delete(TaskRow).where(TaskRow.id.in_(ids), *expired)).rowcount}


def _task_alive():
    """Tasks that have not expired: an expired one is gone for every reader (Glance
    soft-deletes it), and the purge removes its row."""
    return or_(TaskRow.expires_at.is_(None), TaskRow.expires_at > utcnow())


def _task_columns(task: Task) -> dict:
    return {
        "id": task.id,
        "type": task.type,
        "status": TaskStatus(task.status).value,
        "owner": task.owner,
        "input": json.dumps(task.input),
        "result": None if task.result is None else json.dumps(task.result),
        "message": task.message,
        "image_id": task.image_id,
        "request_id": task.request_id,
        "user_id": task.user_id,
        "created_at": task.created_at,
        "updated_at": task.updated_at,
        "expires_at": task.expires_at,
        "version": task.version,
    }


def _to_task(row: TaskRow) -> Task:
    return Task(
        id=row.id,
        type=row.type,
        owner=row.owner,
        status=TaskStatus(row.status),
        input=json.loads(row.input) if row.input else {},
        result=None if row.result is None else json.loads(row.result),
        message=row.message,
        image_id=row.image_id,
        request_id=row.request_id,
        user_id=row.user_id,
        created_at=row.created_at,
        updated_at=row.updated_at,
        expires_at=row.expires_at,
        version=row.version,
    )


def _member_query(image_id: str, member_id: str):
    return select(MemberRow).where(
        MemberRow.image_id == image_id, MemberRow.member == member_id, MemberRow.deleted == false()
    )


def _to_member(row: MemberRow) -> Member:
    return Member(row.image_id, row.member, row.status, row.created_at, row.updated_at)


def _checked_lease(name: str, holder: str, seconds: float) -> None:
    if not 0 < len(name) <= 255 or not 0 < len(holder) <= 255:
        raise Invalid("A lease's name and holder are 1 to 255 characters.")
    if not 0 < seconds <= 86400:
        raise Invalid(f"A lease lasts more than 0 and at most 86400 seconds, not {seconds}.")


def _checked_cache_entry(entry: CacheEntry) -> CacheEntry:
    """A copy of *entry* as it will be stored (naive UTC in whole seconds).

    :raises abbild.errors.Invalid: a value the index cannot hold (SQLite would store
        an over-long one, the other databases refuse it).
    """
    if entry.state not in CACHE_STATES:
        raise Invalid(f"Invalid cache entry state {entry.state!r}: one of {', '.join(CACHE_STATES)}")
    if not entry.node or len(entry.node) > 255:
        raise Invalid(f"Invalid cache node {entry.node!r}: 1 to 255 characters")
    if not entry.image_id or len(entry.image_id) > 36:
        raise Invalid(f"Invalid image id {entry.image_id!r} for the cache index: 1 to 36 characters")
    if entry.checksum is not None and len(entry.checksum) > 32:
        raise Invalid(f"Invalid cache entry checksum {entry.checksum!r}: an MD5 has 32 hex digits")
    for name in ("size", "hits"):
        value = getattr(entry, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise Invalid(f"Invalid cache entry {name} {value!r}: a whole number of at least 0")
    stored = dataclasses.replace(entry)
    stored.last_accessed = _naive_utc(entry.last_accessed)
    if stored.last_accessed is not None:
        stored.last_accessed = stored.last_accessed.replace(microsecond=0)
    return stored


def _to_cache_entry(row: CacheEntryRow) -> CacheEntry:
    return CacheEntry(
        node=row.node,
        image_id=row.image_id,
        state=row.state,
        size=row.size,
        checksum=row.checksum,
        hits=row.hits,
        last_accessed=row.last_accessed,
        last_modified=row.last_modified,
    )


# -- row <-> image ------------------------------------------------------------------------


def _save(session: Session, image: Image, old_children: Callable[[], tuple], storage_limit: int | None) -> Image:
    """Compare-and-swap *image* at its ``version``; returns it as stored."""
    saved = _normalized(image)
    saved.updated_at = max(utcnow(), saved.updated_at)
    saved.version = image.version + 1
    if saved.status is Status.DELETED and saved.deleted_at is None:
        saved.deleted_at = saved.updated_at
    result = session.execute(
        update(ImageRow)
        .where(ImageRow.id == image.id, ImageRow.version == image.version, ImageRow.deleted == false())
        .values(version=saved.version, deleted=saved.status is Status.DELETED, **_columns(saved, changing=True))
    )
    if result.rowcount != 1:
        current = session.get(ImageRow, image.id)
        if current is None or current.deleted:
            raise ImageNotFound(image.id)
        raise ConcurrentUpdate(image.id)
    if storage_limit is not None and saved.owner is not None:
        _check_storage(session, saved.owner, storage_limit)
    # The stored created_at, whatever the caller's said: new children copy it.
    saved.created_at = session.scalar(select(ImageRow.created_at).where(ImageRow.id == image.id))
    _write_children(session, saved, old_children())
    return saved


def _check_storage(session: Session, owner: str, limit: int) -> None:
    """:raises abbild.errors.QuotaExceeded: *owner*'s images, as this transaction
    leaves them, hold more than *limit* bytes.

    The owner's lock row is taken after the image row (every writer does it in that
    order, so none waits for another in a circle), and the sum is read once it is
    held: it then includes whatever another upload of the owner committed before.
    """
    lock = select(OwnerLockRow.owner).where(OwnerLockRow.owner == owner).with_for_update()
    if session.execute(lock).first() is None:
        try:
            with session.begin_nested():
                session.execute(insert(OwnerLockRow).values(owner=owner))
        except IntegrityError:
            pass  # a concurrent writer made it; the select below waits for that writer
        session.execute(lock)
    used = session.scalar(
        select(func.coalesce(func.sum(ImageRow.size), 0)).where(ImageRow.owner == owner, ImageRow.deleted == false())
    )
    if used > limit:
        raise QuotaExceeded(
            f"Project {owner} would store {used} bytes of image data; user_storage_quota allows {limit}."
        )


def _naive_utc(value: datetime.datetime | None) -> datetime.datetime | None:
    """The registry's time representation: naive UTC. The columns have no time zone,
    and the drivers disagree on what an aware value means (PostgreSQL converts it,
    SQLite and PyMySQL drop the offset)."""
    if value is not None and value.tzinfo is not None:
        value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return value


def _normalized(image: Image) -> Image:
    """A copy of *image* as it will read back from every database: naive UTC times in
    whole seconds (MariaDB's DATETIME keeps no fractions) and a :class:`Status`."""
    image = image.copy()
    for name in _TIMES:
        value = _naive_utc(getattr(image, name))
        setattr(image, name, None if value is None else value.replace(microsecond=0))
    image.status = Status(image.status)
    return image


def _columns(image: Image, *, changing: bool = False) -> dict:
    """*image*'s column values; *changing* a stored image, without created_at, which never
    changes (its tags, properties and memberships hold copies of it)."""
    values = {name: getattr(image, name) for name in _SCALARS}
    values["status"] = Status(image.status).value
    if changing:
        del values["created_at"]
    return values


def document_row(image: Image) -> dict:
    """The ``image_children`` row of *image* at ``image.version`` (see
    :class:`abbild.db.models.ChildrenRow`; read by :func:`_images_of`)."""
    return {"image_id": image.id, "document": children_document(image)}


def children_document(image: Image) -> str:
    """*image*'s properties, tags and locations as one JSON document, at ``image.version``."""
    document = {
        "v": image.version,
        "p": image.properties,
        "t": sorted(image.tags),
        "l": [[loc.store, loc.uri, loc.size, loc.status, loc.metadata] for loc in image.locations],
    }
    # Sorted: the same image always gives the same document, whichever way it was read.
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _with_children(query):
    return query.options(
        selectinload(ImageRow.properties), selectinload(ImageRow.tags), selectinload(ImageRow.locations)
    )


_IMAGES = ImageRow.__table__
_SELECT_IMAGES = select(_IMAGES)
# Statements built once: their values come as parameters, so each run reuses the
# compiled statement.
_INSERT_IMAGE = insert(_IMAGES)
_TOMBSTONE = select(TombstoneRow.id).where(TombstoneRow.id == bindparam("id"))
_INSERT_PROPERTIES = insert(PropertyRow)
_INSERT_TAGS = insert(TagRow)
_INSERT_LOCATIONS = insert(LocationRow)
_INSERT_DOCUMENT = insert(ChildrenRow)
_CreateStatements = collections.namedtuple("_CreateStatements", "image tombstone properties tags locations document")
_LOCATION_FIELDS = ("position", "store", "uri", "size", "status", "meta")


_DOCUMENTS = ChildrenRow.__table__


def _with_document(images):
    """A select of the *images* table with each image's children document, NULL
    where there is none (a list page joins its cut page the same way: _list_query)."""
    return select(images, _DOCUMENTS.c.document).select_from(
        images.outerjoin(_DOCUMENTS, _DOCUMENTS.c.image_id == images.c.id)
    )


_POSITIONS = {column.key: i for i, column in enumerate(_IMAGES.c)}
_SCALAR_VALUES = operator.itemgetter(*(_POSITIONS[name] for name in _SCALARS))
# The document comes after the image's columns.
_ROW_KEYS = operator.itemgetter(_POSITIONS["id"], _POSITIONS["version"], _POSITIONS["status"], len(_IMAGES.c))
_STATUSES = {status.value: status for status in Status}


def _images_of(rows, read_children: Callable[[list[str]], dict]) -> list[Image]:
    """Images of image *rows* (in order, each with its document: :func:`_with_document`,
    :func:`_list_query`),
    with the children their documents hold; ``read_children(ids)`` reads those of rows
    whose document is missing or of another version (written before migration 0010, or
    by a writer that did not keep it) from their own tables."""
    images, stale = [], []
    for row in rows:
        image_id, version, status, document = _ROW_KEYS(row)
        children = orjson.loads(document) if document is not None else None
        if children is None or children["v"] != version:
            stale.append(len(images))
            properties, tags, locations = {}, set(), []
        else:
            properties, tags = children["p"], set(children["t"])
            locations = [Location(store, uri, size, state, meta) for store, uri, size, state, meta in children["l"]]
        values = dict(zip(_SCALARS, _SCALAR_VALUES(row)))
        values["status"] = _STATUSES[status]
        images.append(
            Image(id=image_id, version=version, properties=properties, tags=tags, locations=locations, **values)
        )
    if stale:
        found = read_children([images[i].id for i in stale])
        for i in stale:
            images[i].properties, images[i].tags, images[i].locations = found[images[i].id]
    return images


def children_from_tables(conn, ids: list[str]) -> dict:
    """The properties, tags and locations of images *ids*, from their own tables:
    ``{id: (properties, tags, locations)}``. Names its columns, so that migration 0010
    can backfill documents with it whatever columns later revisions add."""
    children = {i: ({}, set(), []) for i in ids}
    for image_id, name, value in conn.execute(
        select(PropertyRow.image_id, PropertyRow.name, PropertyRow.value).where(PropertyRow.image_id.in_(ids))
    ):
        children[image_id][0][name] = value
    for image_id, value in conn.execute(select(TagRow.image_id, TagRow.value).where(TagRow.image_id.in_(ids))):
        children[image_id][1].add(value)
    for loc in conn.execute(
        select(
            LocationRow.image_id,
            LocationRow.store,
            LocationRow.uri,
            LocationRow.size,
            LocationRow.status,
            LocationRow.meta,
        )
        .where(LocationRow.image_id.in_(ids))
        .order_by(LocationRow.image_id, LocationRow.position)
    ):
        children[loc.image_id][2].append(Location(loc.store, loc.uri, loc.size, loc.status, dict(loc.meta or {})))
    return children


def _to_image(row: ImageRow) -> Image:
    values = {name: getattr(row, name) for name in _SCALARS}
    values["status"] = Status(row.status)
    return Image(
        id=row.id,
        version=row.version,
        properties={p.name: p.value for p in row.properties},
        tags={t.value for t in row.tags},
        locations=[Location(loc.store, loc.uri, loc.size, loc.status, dict(loc.meta or {})) for loc in row.locations],
        **values,
    )


def _load_children(session: Session, image_id: str):
    props = {
        n: v
        for n, v in session.execute(select(PropertyRow.name, PropertyRow.value).where(PropertyRow.image_id == image_id))
    }
    tags = set(session.scalars(select(TagRow.value).where(TagRow.image_id == image_id)))
    locations = [
        Location(loc.store, loc.uri, loc.size, loc.status, dict(loc.meta or {}))
        for loc in session.scalars(
            select(LocationRow).where(LocationRow.image_id == image_id).order_by(LocationRow.position)
        )
    ]
    return props, tags, locations


def property_rows(image: Image, properties: dict) -> list[dict]:
    """The ``image_properties`` rows of *properties*, *image*'s (or some of them)."""
    return [
        {"image_id": image.id, "name": n, "value": v, "image_created_at": image.created_at}
        for n, v in properties.items()
    ]


def tag_rows(image: Image, tags) -> list[dict]:
    """The ``image_tags`` rows of *tags*, *image*'s (or some of them)."""
    return [{"image_id": image.id, "value": t, "image_created_at": image.created_at} for t in tags]


def location_rows(image: Image) -> list[dict]:
    """The rows of *image*'s locations, in their order."""
    return [
        {
            "image_id": image.id,
            "position": i,
            "store": loc.store,
            "uri": loc.uri,
            "size": loc.size,
            "status": loc.status,
            "meta": loc.metadata,
        }
        for i, loc in enumerate(image.locations)
    ]


def _write_children(session: Session, image: Image, old) -> None:
    """Write the difference between *old* children and the image's; None = all new."""
    old_props, old_tags, old_locations = old or ({}, set(), [])
    gone = [name for name in old_props if name not in image.properties]
    if gone:
        session.execute(delete(PropertyRow).where(PropertyRow.image_id == image.id, PropertyRow.name.in_(gone)))
    for name, value in image.properties.items():
        if name in old_props and old_props[name] != value:
            session.execute(
                update(PropertyRow)
                .where(PropertyRow.image_id == image.id, PropertyRow.name == name)
                .values(value=value)
            )
    new_props = property_rows(image, {n: v for n, v in image.properties.items() if n not in old_props})
    if new_props:
        session.execute(_INSERT_PROPERTIES, new_props)

    if old_tags - image.tags:
        session.execute(delete(TagRow).where(TagRow.image_id == image.id, TagRow.value.in_(old_tags - image.tags)))
    if image.tags - old_tags:
        session.execute(_INSERT_TAGS, tag_rows(image, image.tags - old_tags))

    if image.locations != old_locations:
        session.execute(delete(LocationRow).where(LocationRow.image_id == image.id))
        if image.locations:
            session.execute(
                insert(LocationRow),
                location_rows(image),
            )

    document = document_row(image)
    updated = session.execute(
        update(ChildrenRow).where(ChildrenRow.image_id == image.id).values(document=document["document"])
    )
    if updated.rowcount == 0:  # an image from before migration 0010
        session.execute(_INSERT_DOCUMENT, [document])


# -- list queries -------------------------------------------------------------------------


def _fixed(values) -> list:
    """*values* for an IN list that a statement holds, a bound parameter each: an IN
    list of plain values is a parameter SQLAlchemy expands at every run, which a
    statement compiled once and run on the DBAPI (:class:`_Raw`) cannot."""
    return [literal(value) for value in values]


def _owned_by(project: str | None):
    # A viewer without a project owns nothing (``owner == None`` would mean IS NULL).
    return false() if project is None else ImageRow.owner == bindparam("project")


def _scope(viewer: Viewer):
    """Images *viewer* may read by id (GLANCE-API 7.4): public and community ones,
    their own, those without an owner, and shared ones they are a member of (in any
    status)."""
    conditions = [
        ImageRow.visibility.in_(_fixed(("public", "community"))),
        _owned_by(viewer.project_id),
        ImageRow.owner.is_(None),
    ]
    if viewer.project_id is not None:
        member = exists().where(
            MemberRow.image_id == ImageRow.id,
            MemberRow.member == bindparam("project"),
            MemberRow.deleted == false(),
        )
        conditions.append(and_(ImageRow.visibility == "shared", member))
    return or_(*conditions)


def _marker_query(viewer: Viewer):
    """The marker's row, if *viewer* may read it and it is not being deleted
    (parameters: marker, project)."""
    readable = [] if viewer.is_admin else [_scope(viewer)]
    return _SELECT_IMAGES.where(
        _IMAGES.c.id == bindparam("marker"),
        _IMAGES.c.deleted == false(),
        _IMAGES.c.status != Status.PENDING_DELETE.value,
        *readable,
    )


# What a page's part reads (see _scope_parts): any number of images, in sort order;
# one owner's (or nobody's); a project's memberships.
WIDE, OWNED, SHARED = "wide", "owned", "shared"


def _list_query(keys, tests, viewer: Viewer, filters: ImageFilters, marker_nulls, dialect: str):
    """A page's statement for its shape (see :meth:`SQLRegistry.list_images`); its
    parameters: limit, project, visibility, member_status, the marker's sort key values
    (``marker_<key>``) and the filters' (:func:`_filter_params`)."""
    postgres = dialect == "postgresql"
    first, direction = keys[0]
    bound = None
    if marker_nulls is not None and not marker_nulls[0]:
        bound = bindparam(f"marker_{first.key}", type_=first.type)
    along = None
    if postgres and [(column.key, way) for column, way in keys] == [("created_at", direction), ("id", direction)]:

        def along(child) -> list:
            # A tag's, a property's or a membership's rows (which hold their image's
            # created_at, migration 0015) in the page's range, read from its index in
            # the page's order and merged with the images.
            if bound is None:
                return []
            return [child.image_created_at <= bound if direction == "desc" else child.image_created_at >= bound]

    conditions = [
        _IMAGES.c.deleted == false(),
        _IMAGES.c.status.not_in(_fixed(_HIDDEN_STATUSES)),
        *_visibility_conditions(filters, viewer),
    ]
    if marker_nulls is not None:
        conditions.append(_after_marker(keys, marker_nulls))
    # A nullable first key's NULLs (the smallest values) and its values are read as
    # two parts where one index range cannot hold the rows after the marker: those of
    # a descending page past a value are the values below it and every NULL. On
    # PostgreSQL, whose list indexes put NULLs first (migration 0014), that is the only
    # case. SQLite and MySQL, whose indexes do so anyway, read them apart on every
    # page: on SQLite that rule (with a project's own images split too) made a big
    # project's descending deep pages slower (19 -> 36 ms) and its first ones no faster.
    splits = []
    if first.expression.nullable and (not postgres or (bound is not None and direction == "desc")):
        splits = [("nulls", first.is_(None)), ("values", first.is_not(None))]
    # A wide part merges its tag and property filters' rows with the images in the
    # page's order (along); a narrow part's few images are each tested (merged,
    # PostgreSQL read nobody's 137 images' tag, all 7,400 rows, into a hash: 0.9 -> 5.9 ms).
    narrow_tests = _filter_conditions(tests)
    wide_tests = _filter_conditions(tests, along) if along is not None else narrow_tests
    if viewer.is_admin:
        parts = [(conditions + wide_tests, WIDE)]
    else:
        parts = [
            (conditions + (wide_tests if kind == WIDE else narrow_tests) + part, kind)
            for part, kind in _scope_parts(viewer, filters)
        ]
    limit = bindparam("limit", type_=Integer)
    # The parts carry only the sort keys: the rows they read but the page cuts are
    # never built or sorted whole.
    key_columns = [_IMAGES.c[column.key] for column, _ in keys]
    queries = []
    for part, part_kind in parts:
        # A project's own images (or nobody's) are one range of the owner index,
        # cheap to read twice, and split on PostgreSQL like a wide part: for a
        # project that owns 30,000 images a descending deep page by size then reads
        # each half in order (20 -> 12 ms). The images shared with a project are
        # looked up one membership at a time, which a split would do twice (a
        # project with 300 memberships: +2 ms), so they are never split.
        apart = part_kind == WIDE or (postgres and part_kind == OWNED)
        for kind, split in (splits if apart else []) or [("all", None)]:
            where = part if split is None else [*part, split]
            # The marker's value of the first key bounds the index range, so a
            # deep page costs what the first does (NULLs, the smallest, come
            # after every value when descending).
            if bound is not None and direction == "asc":
                where = [*where, first >= bound]
            elif bound is not None and kind != "nulls" and (split is not None or not first.expression.nullable):
                where = [*where, first <= bound]
            order = _ordering(keys, _IMAGES.c, postgres)
            if kind == "nulls" and dialect in ("mysql", "mariadb"):
                # MySQL and MariaDB read `key IS NULL` from the index but not as
                # one value: ordered by it too, they sorted every NULL row (17,000
                # images of unknown size at 100,000: 7.9 ms, 0.6 ms without).
                del order[0]
            if part_kind == SHARED and along is not None and not _few(tests):
                queries.append(_shared_from_memberships(keys, where, filters, along).limit(limit))
                continue
            if part_kind == SHARED:
                where = [*where, ImageRow.id.in_(select(MemberRow.image_id).where(*_memberships(filters)))]
            queries.append(select(*key_columns).where(*where).order_by(*order).limit(limit))
    if len(queries) == 1:
        page = queries[0].subquery()
    else:
        merged = union_all(*(select(q.subquery()) for q in queries)).subquery()
        page = select(merged).order_by(*_ordering(keys, merged.c, postgres)).limit(limit).subquery()
    # The rows and their documents are read for the page only, once it is cut.
    rows = page.join(_IMAGES, _IMAGES.c.id == page.c.id).outerjoin(_DOCUMENTS, _DOCUMENTS.c.image_id == page.c.id)
    return select(_IMAGES, _DOCUMENTS.c.document).select_from(rows).order_by(*_ordering(keys, page.c, postgres))


def _visibility_conditions(filters: ImageFilters, viewer: Viewer) -> list:
    """The visibility filter, and for an administrator the rule that keeps community
    images out of a default list (a project's parts, :func:`_scope_parts`, say that
    themselves)."""
    conditions = []
    if filters.visibility not in (None, "all"):
        conditions.append(ImageRow.visibility == bindparam("visibility"))
    if filters.visibility is None and viewer.is_admin:
        # Community images stay out of every default list, an administrator's too,
        # unless they are the caller's own (as Glance).
        conditions.append(or_(ImageRow.visibility != "community", _owned_by(viewer.project_id)))
    return conditions


def _scope_parts(viewer: Viewer, filters: ImageFilters) -> list[tuple[list, str]]:
    """The images a project may see (and the default list's community rule) as
    disjoint parts, each a plain condition an index serves (an OR of them would make
    the database read every image the viewer may see, then sort): public images,
    community ones, the viewer's own, nobody's, and shared ones of others that the
    viewer is a member of. Each comes with what it reads: WIDE (any number of images:
    read in sort order), OWNED or SHARED (mostly a project's few: read and sorted)."""
    wanted = filters.visibility
    project = viewer.project_id
    parts = []
    elsewhere = ["public"]  # visibilities a part of their own lists
    if wanted in (None, "all", "public"):
        parts.append(([ImageRow.visibility == "public"], WIDE))
    if wanted in ("all", "community"):
        parts.append(([ImageRow.visibility == "community"], WIDE))
        elsewhere.append("community")
    # A filter of an owner leaves out the parts of others: a project's page of its
    # own images (Horizon's) read every shared image of the others for none (a big
    # project: 6 ms).
    mine = project is not None and filters.owner == project
    if project is not None and filters.owner in (None, project):
        # In a default list the viewer's community images are among its own.
        parts.append(([ImageRow.owner == bindparam("project"), ImageRow.visibility.not_in(_fixed(elsewhere))], OWNED))
    if filters.owner is None:
        # Nobody's community images are in the community part, or in no default list.
        parts.append(([ImageRow.owner.is_(None), ImageRow.visibility.not_in(_fixed(("public", "community")))], OWNED))
    if project is not None and wanted in (None, "all", "shared") and not mine:
        # Of their images, those of the viewer's _memberships: see _list_query.
        parts.append(([ImageRow.visibility == "shared", ImageRow.owner != bindparam("project")], SHARED))
    return parts or [([false()], OWNED)]  # none: a part that reads nothing


def _shared_from_memberships(keys, images: list, filters: ImageFilters, along):
    """The shared part of a page in the default order (PostgreSQL): the viewer's
    memberships in that order (they hold their image's created_at), each one's image
    tested for *images* (the part's conditions) until the part is full, rather than
    every image of them read, then sorted.

    The image is tested by a subquery of one value, as a narrow part's filters are:
    joined, PostgreSQL expected a membership's image to be shared one time in twenty,
    and read a big project's 2,000 memberships and 10,000 shared images whole (7 ms).
    Where a filter picks few images (:func:`_few`) the caller reads those first and
    then their memberships: from the memberships, all 4,000 of a big project's would be
    tested for a rare tag (1.4 -> 19 ms)."""
    columns = {"created_at": MemberRow.image_created_at, "id": MemberRow.image_id}
    image = select(literal(1)).where(ImageRow.id == MemberRow.image_id, *images).limit(1)
    return (
        select(*(columns[column.key].label(column.key) for column, _ in keys))
        .where(*_memberships(filters), *along(MemberRow), image.scalar_subquery().is_not(None))
        .order_by(*_ordering(keys, columns, True))
    )


#: Columns whose filters most images pass: they have few values.
_FEW_VALUES = ("status", "container_format", "disk_format", "protected", "os_hidden")


def _few(tests: tuple) -> bool:
    """Whether a filter of *tests* may pick few images: a rare tag or property
    (which drives the page), or a test of a column of many values (name, owner, a
    size, a time, ...). A common tag or property does not."""
    return any(test[1] == "drives" if test[0] in ("tag", "property") else test[1] not in _FEW_VALUES for test in tests)


def _memberships(filters: ImageFilters) -> list:
    """The viewer's memberships (parameters: project, member_status)."""
    return [
        MemberRow.member == bindparam("project"),
        MemberRow.deleted == false(),
        *([] if filters.member_status == "all" else [MemberRow.status == bindparam("member_status")]),
    ]


def _ordering(keys, columns, postgres: bool) -> list:
    """ORDER BY terms for *keys*, over *columns* (a table's or a subquery's), NULL
    as the smallest value: so SQLite and MySQL sort it anyway; PostgreSQL is told."""
    terms = []
    for column, direction in keys:
        column = columns[column.key]
        term = column.asc() if direction == "asc" else column.desc()
        if postgres and column.key in _NULLABLE_SORT_KEYS:
            term = term.nulls_first() if direction == "asc" else term.nulls_last()
        terms.append(term)
    return terms


_TESTS = {
    "eq": lambda c, v: c == v,
    "gt": lambda c, v: c > v,
    "gte": lambda c, v: c >= v,
    "neq": lambda c, v: c != v,
    "lt": lambda c, v: c < v,
    "lte": lambda c, v: c <= v,
}


def _filter_params(filters: ImageFilters) -> tuple[tuple, dict]:
    """The filters as tests ``(operator, column)`` (the statement's shape; an IN's
    ``("in", column, number of values)``) and their values, the parameters
    ``filter_<i>`` (an IN's ``filter_<i>_<j>``; for a property ``filter_<i>`` is its
    name, ``filter_<i>_value`` its value).

    :raises abbild.errors.Invalid: a filter names a column it cannot apply to."""
    tests, values = [], []
    for name, allowed in filters.values.items():
        if name not in IN_FILTERS:
            raise Invalid(f"Invalid filter: {name}")
        # One parameter per value, their number part of the shape: a statement is
        # compiled once, IN lists and all, and run on the DBAPI (see _Raw).
        tests.append(("in", name, len(allowed)))
        values.append(list(allowed))
    for name, number in filters.numbers.items():
        if name not in NUMBER_FILTERS:
            raise Invalid(f"Invalid filter: {name}")
        tests.append(("eq", name))
        values.append(number)
    for test, name, value in (
        ("eq", "owner", filters.owner),
        ("gte", "size", filters.size_min),
        ("lte", "size", filters.size_max),
        ("eq", "checksum", filters.checksum),
        ("eq", "os_hash_value", filters.os_hash_value),
        ("eq", "protected", filters.protected),
        ("eq", "os_hidden", filters.os_hidden),
    ):
        if value is not None:
            tests.append((test, name))
            values.append(value)
    for name, op, value in filters.times:
        if name not in _TIME_FILTER_COLUMNS or op not in TIME_OPERATORS:
            raise Invalid(f"Invalid time filter: {name} {op}")
        tests.append((op, name))
        values.append(_naive_utc(value))
    for tag in filters.tags:
        tests.append(("tag", None))
        values.append(tag)
    params = {}
    for name, value in filters.properties.items():
        params[f"filter_{len(tests)}_value"] = value
        # A short value's rows are also held in image order (on PostgreSQL, SHORT_VALUE).
        tests.append(("property", "short" if len(value) <= SHORT_VALUE else None))
        values.append(name)
    for i, (test, value) in enumerate(zip(tests, values, strict=True)):
        if test[0] == "in":
            params.update((f"filter_{i}_{j}", one) for j, one in enumerate(value))
        else:
            params[f"filter_{i}"] = value
    return tuple(tests), params


def _matching(kind: str, name: str, value: str) -> tuple[type, list]:
    """The table of a ``tag`` or a ``property`` filter, and the conditions on its rows:
    parameter *name* holds the tag (or the property's name), *value* the property's value."""
    if kind == "tag":
        return TagRow, [TagRow.value == bindparam(name, type_=TagRow.value.type)]
    return PropertyRow, [
        PropertyRow.name == bindparam(name, type_=PropertyRow.name.type),
        PropertyRow.value == bindparam(value, type_=PropertyRow.value.type),
    ]


def _rows_query(kind: str):
    """The rows of a tag (parameter ``name``) or of a property (``name``, ``value``)."""
    _, matches = _matching(kind, "name", "value")
    return select(literal(1)).where(*matches)


def _count_query(kind: str, bound: int):
    """How many rows :func:`_rows_query` finds, counting no further than *bound*."""
    return select(func.count()).select_from(_rows_query(kind).limit(bound).subquery())


def _filter_conditions(tests: tuple, along=None) -> list:
    """The conditions of :func:`_filter_params`'s *tests*, on its parameters."""
    conditions = []
    for i, test in enumerate(tests):
        operator, name = test[:2]
        if operator in ("tag", "property"):
            row, matches = _matching(operator, f"filter_{i}", f"filter_{i}_value")
            if name == "drives":  # the images of an IN list's rows are read, then sorted
                conditions.append(ImageRow.id.in_(select(row.image_id).where(*matches)))
            elif along is not None and (operator == "tag" or name == "short"):
                # A merge of the filter's rows with the images, both in the page's
                # order. The image's id is compared as an expression, not a join key:
                # with two join keys PostgreSQL expects one match in all and reads
                # every image.
                if operator == "property":  # the condition of the index's values
                    matches.append(func.length(PropertyRow.value) <= literal_column(str(SHORT_VALUE)))
                same = [row.image_created_at == ImageRow.created_at, (row.image_id == ImageRow.id).is_(true())]
                conditions.append(exists().where(*matches, *same, *along(row)))
            else:
                # ... else each image read in sort order is tested for its row. Not as
                # EXISTS, which PostgreSQL and MariaDB turn into a join that reads a
                # common value's every row (a deep page filtered by os_distro=debian:
                # 23 ms on PostgreSQL, 338 on MariaDB): a subquery of one value is
                # evaluated for each image, as written.
                found = select(literal(1)).where(row.image_id == ImageRow.id, *matches).limit(1)
                conditions.append(found.scalar_subquery().is_not(None))
        elif operator == "in":
            column = getattr(ImageRow, name)
            conditions.append(column.in_([bindparam(f"filter_{i}_{j}", type_=column.type) for j in range(test[2])]))
        else:
            column = getattr(ImageRow, name)
            conditions.append(_TESTS[operator](column, bindparam(f"filter_{i}", type_=column.type)))
    return conditions


def _sort_keys(sort: list[tuple[str, str]]):
    """:raises abbild.errors.Invalid: an unknown sort key or direction."""
    for key, direction in sort:
        if key not in SORT_KEYS or direction not in ("asc", "desc"):
            raise Invalid(f"Invalid sort: {key}:{direction}")
    keys = [(getattr(ImageRow, key), direction) for key, direction in sort]
    default_dir = sort[0][1] if sort else "desc"
    names = {key for key, _ in sort}
    for tiebreak in ("created_at", "id"):
        if tiebreak not in names:
            keys.append((getattr(ImageRow, tiebreak), default_dir))
    return keys


def _after(keys, marker):
    """Rows that sort strictly after *marker* (a row), for keyset paging, with NULL as
    the smallest value of a column."""
    clauses = []
    equal_so_far = []
    for column, direction in keys:
        value = getattr(marker, column.key)
        if isinstance(value, bool):
            value = literal(value, Boolean)  # SQLAlchemy compares a bare True only with = and !=
        if value is None:
            after = column.is_not(None) if direction == "asc" else false()
            same = column.is_(None)
        else:
            after = column > value if direction == "asc" else or_(column < value, column.is_(None))
            same = column == value
        clauses.append(and_(*equal_so_far, after))
        equal_so_far.append(same)
    return or_(*clauses)


def _after_marker(keys, marker_nulls: tuple):
    """Rows that sort strictly after the marker, for keyset paging, with NULL as the
    smallest value of a column: on the parameters ``marker_<key>``, *marker_nulls*
    saying which of them are NULL."""
    clauses = []
    equal_so_far = []
    for (column, direction), null in zip(keys, marker_nulls, strict=True):
        if null:
            after = column.is_not(None) if direction == "asc" else false()
            same = column.is_(None)
        else:
            value = bindparam(f"marker_{column.key}", type_=column.type)
            after = column > value
            if direction == "desc":  # NULLs come last, where the column can hold any
                after = or_(column < value, column.is_(None)) if column.expression.nullable else column < value
            same = column == value
        clauses.append(and_(*equal_so_far, after))
        equal_so_far.append(same)
    return or_(*clauses)


# -- metadata definitions -----------------------------------------------------------------

_NAMESPACE_OWN_FIELDS = ("namespace", "display_name", "description", "visibility", "protected", "owner")
_NULLABLE_NAMESPACE_KEYS = {"display_name", "owner"}
_NAMESPACE_CHILDREN = (MetadefPropertyRow, MetadefObjectRow, MetadefTagRow, MetadefAssociationRow)
_NAME_LENGTH = 80
# What MariaDB's TEXT holds; every database is held to it, so a namespace stored on one
# can be loaded into another.
_TEXT_BYTES = 65535


def _locked_namespace(session: Session, name: str) -> tuple[MetadefNamespaceRow, Namespace]:
    """The row of namespace *name*, locked until commit (on SQLite, BEGIN IMMEDIATE
    holds the database), and the namespace it holds: nobody changes it or its children
    before we write. (Every lookup by name compares the name found too: MariaDB's
    ``WHERE namespace = 'a '`` finds "a".)"""
    row = session.scalars(
        select(MetadefNamespaceRow).where(MetadefNamespaceRow.namespace == name).with_for_update()
    ).first()
    if row is None or row.namespace != name:
        raise _namespace_not_found(name)
    return row, _to_namespaces(session, [row])[0]


def _save_namespace(session: Session, namespace_id: int, current: Namespace, namespace: Namespace) -> Namespace:
    """Write *namespace* over *current*, whose row we hold locked; returns it as stored."""
    saved = _namespace_for_write(namespace)
    saved.version = current.version + 1
    now = utcnow()
    saved.created_at = current.created_at
    own_fields_changed = any(getattr(saved, field) != getattr(current, field) for field in _NAMESPACE_OWN_FIELDS)
    saved.updated_at = now if own_fields_changed else current.updated_at
    _stamp_children(saved, current, now)
    values = _namespace_columns(saved)
    del values["created_at"]
    try:
        with session.begin_nested():
            session.execute(update(MetadefNamespaceRow).where(MetadefNamespaceRow.id == namespace_id).values(**values))
    except IntegrityError:
        raise _namespace_taken(saved.namespace) from None
    _write_namespace_children(session, namespace_id, saved, current)
    return saved


def _namespace_not_found(name: str) -> MetadefNotFound:
    return MetadefNotFound(f"Metadata definition namespace={name} was not found.")


def _namespace_taken(name: str) -> Conflict:
    return Conflict(f"The metadata definition namespace={name} already exists.")


def _resource_type_in_use(name: str) -> Conflict:
    return Conflict(
        f"The metadata definition resource-type with name={name} not deleted. Other records still refer to it."
    )


def _namespace_for_write(namespace: Namespace) -> Namespace:
    """A copy of *namespace* as it will read back: children sorted by name, times naive
    UTC in whole seconds.

    :raises abbild.errors.Invalid: a value the tables cannot hold, or two children of
        one kind with the same name.
    """
    where = f"namespace={namespace.namespace}"
    _check_text(namespace.namespace, "namespace", _NAME_LENGTH, where, name=True)
    _check_text(namespace.display_name, "display_name", 80, where)
    _check_text(namespace.description, "description", 500, where)
    _check_text(namespace.owner, "owner", 255, where)
    if namespace.visibility not in VISIBILITIES:
        raise Invalid(f"Invalid visibility {namespace.visibility!r} of {where}: one of {', '.join(VISIBILITIES)}.")
    if not isinstance(namespace.protected, bool):
        raise Invalid(f"Invalid protected {namespace.protected!r} of {where}: true or false.")
    for name, definition in namespace.properties.items():
        _check_text(name, "property name", _NAME_LENGTH, where, name=True)
        _check_document(definition, f"property {name}", where, dict)
    for kind, children in (("object", namespace.objects), ("tag", namespace.tags)):
        _check_unique([c.name for c in children], kind, where)
        for child in children:
            _check_text(child.name, f"{kind} name", _NAME_LENGTH, where, name=True)
    for obj in namespace.objects:
        _check_text(obj.description, f"description of object {obj.name}", None, where)
        _check_document(obj.required, f"required of object {obj.name}", where, list)
        _check_document(obj.properties, f"properties of object {obj.name}", where, dict)
    _check_unique([a.name for a in namespace.associations], "resource type association", where)
    for a in namespace.associations:
        _check_text(a.name, "resource type name", _NAME_LENGTH, where, name=True)
        _check_text(a.prefix, f"prefix of the association with {a.name}", _NAME_LENGTH, where)
        _check_text(a.properties_target, f"properties_target of the association with {a.name}", _NAME_LENGTH, where)

    def stamped(child):
        return dataclasses.replace(child, created_at=_whole_seconds(child.created_at), updated_at=None)

    stored = dataclasses.replace(
        namespace,
        created_at=None,
        updated_at=None,
        properties={name: json.loads(json.dumps(namespace.properties[name])) for name in sorted(namespace.properties)},
        objects=[
            dataclasses.replace(stamped(o), required=list(o.required), properties=json.loads(json.dumps(o.properties)))
            for o in sorted(namespace.objects, key=lambda o: o.name)
        ],
        tags=[stamped(t) for t in sorted(namespace.tags, key=lambda t: t.name)],
        associations=[stamped(a) for a in sorted(namespace.associations, key=lambda a: a.name)],
    )
    return stored


def _check_text(value, what: str, length: int | None, where: str, *, name: bool = False) -> None:
    """:param name: *value* is a name: required, not empty, and without a trailing space
    (MariaDB ignores trailing spaces when it compares, so "a" and "a " would be one
    name there and two elsewhere)."""
    if value is None and not name:
        return
    if not isinstance(value, str) or (name and not value):
        raise Invalid(f"Invalid {what} {value!r} of {where}: a {'non-empty ' if name else ''}string.")
    if name and value.endswith(" "):
        raise Invalid(f"Invalid {what} {value!r} of {where}: a name cannot end with a space.")
    if "\x00" in value:
        raise Invalid(f"Invalid {what} of {where}: it contains a NUL character.")
    if length is not None and len(value) > length:
        raise Invalid(f"The {what} of {where} is {len(value)} characters long; at most {length} can be stored.")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise Invalid(f"Invalid {what} of {where}: it is not valid Unicode text.") from None
    if size > _TEXT_BYTES:
        raise Invalid(f"The {what} of {where} is longer than the {_TEXT_BYTES} bytes that can be stored.")


def _check_document(value, what: str, where: str, kind: type) -> None:
    if not isinstance(value, kind):
        raise Invalid(f"Invalid {what} of {where}: {'an object' if kind is dict else 'an array'}.")
    try:
        text = _json(value)
    except (TypeError, ValueError) as exc:
        raise Invalid(f"Invalid {what} of {where}: not a JSON document ({exc}).") from None
    if len(text.encode()) > _TEXT_BYTES:
        raise Invalid(f"The {what} of {where} takes more than the {_TEXT_BYTES} bytes that can be stored.")


def _check_unique(names: list[str], kind: str, where: str) -> None:
    seen = set()
    for name in names:
        if name in seen:
            raise Invalid(f"A metadata definition {kind} with name={name} appears twice in {where}.")
        seen.add(name)


def _whole_seconds(value: datetime.datetime | None) -> datetime.datetime | None:
    value = _naive_utc(value)
    return None if value is None else value.replace(microsecond=0)


def _stamp_children(saved: Namespace, current: Namespace, now: datetime.datetime) -> None:
    """Children's times as the save leaves them: a stored one keeps its ``created_at``
    and moves its ``updated_at`` only when its content changed; a new one gets
    ``created_at`` now unless it carries its own, and ``updated_at`` now."""
    for new_children, old_children, content in (
        (saved.objects, current.objects, lambda o: (o.description, o.required, o.properties)),
        (saved.tags, current.tags, lambda t: ()),
        (saved.associations, current.associations, lambda a: (a.prefix, a.properties_target)),
    ):
        old = {c.name: c for c in old_children}
        for child in new_children:
            before = old.get(child.name)
            if before is None:
                child.created_at = child.created_at or now
                child.updated_at = now
            else:
                child.created_at = before.created_at
                child.updated_at = now if content(child) != content(before) else before.updated_at


def _namespace_columns(namespace: Namespace) -> dict:
    values = {field: getattr(namespace, field) for field in _NAMESPACE_OWN_FIELDS}
    values.update(created_at=namespace.created_at, updated_at=namespace.updated_at, version=namespace.version)
    return values


def _resource_type_ids(session: Session, names: list[str]) -> dict[str, int]:
    """The ids of the resource types *names*, made (unprotected) where missing. The rows
    are share-locked: a concurrent delete_resource_type waits, then sees our association."""
    if not names:
        return {}
    query = (
        select(MetadefResourceTypeRow.name, MetadefResourceTypeRow.id)
        .where(MetadefResourceTypeRow.name.in_(names))
        .with_for_update(read=True)
    )
    ids = dict(session.execute(query).all())
    now = utcnow()
    for name in names:
        if name in ids:
            continue
        try:
            with session.begin_nested():
                session.execute(
                    insert(MetadefResourceTypeRow).values(name=name, protected=False, created_at=now, updated_at=now)
                )
        except IntegrityError:
            pass  # a concurrent writer made it: read below, once it committed
        ids[name] = session.execute(query.where(MetadefResourceTypeRow.name == name)).one()[1]
    return ids


def _write_namespace_children(session: Session, namespace_id: int, new: Namespace, old: Namespace | None) -> None:
    """Write the difference between the *old* children and the *new* ones (None: all new).

    :raises abbild.errors.Invalid: two children the database takes for one (the
        checks before should leave none).
    """
    try:
        _write_children_rows(session, namespace_id, new, old)
    except IntegrityError as exc:
        raise Invalid(
            f"Two children of one kind in namespace={new.namespace} have names the database takes for one: {exc.orig}"
        ) from None


def _write_children_rows(session: Session, namespace_id: int, new: Namespace, old: Namespace | None) -> None:
    old = old or Namespace(namespace=new.namespace)

    def sync(row, keyed_new: dict, keyed_old: dict, key_column):
        gone = [key for key in keyed_old if key not in keyed_new]
        if gone:
            session.execute(delete(row).where(row.namespace_id == namespace_id, key_column.in_(gone)))
        for key, values in keyed_new.items():
            if key in keyed_old and keyed_old[key] != values:
                session.execute(update(row).where(row.namespace_id == namespace_id, key_column == key).values(**values))
        added = [{"namespace_id": namespace_id, **values} for key, values in keyed_new.items() if key not in keyed_old]
        if added:
            session.execute(insert(row), added)

    def properties(ns: Namespace) -> dict:
        return {name: {"name": name, "definition": _json(d)} for name, d in ns.properties.items()}

    def objects(ns: Namespace) -> dict:
        return {
            o.name: {
                "name": o.name,
                "description": o.description,
                "required": _json(o.required),
                "properties": _json(o.properties),
                "created_at": o.created_at,
                "updated_at": o.updated_at,
            }
            for o in ns.objects
        }

    def tags(ns: Namespace) -> dict:
        return {t.name: {"name": t.name, "created_at": t.created_at, "updated_at": t.updated_at} for t in ns.tags}

    rt_ids = _resource_type_ids(
        session, sorted({a.name for a in new.associations} | {a.name for a in old.associations})
    )

    def associations(ns: Namespace) -> dict:
        return {
            rt_ids[a.name]: {
                "resource_type_id": rt_ids[a.name],
                "prefix": a.prefix,
                "properties_target": a.properties_target,
                "created_at": a.created_at,
                "updated_at": a.updated_at,
            }
            for a in ns.associations
        }

    sync(MetadefPropertyRow, properties(new), properties(old), MetadefPropertyRow.name)
    sync(MetadefObjectRow, objects(new), objects(old), MetadefObjectRow.name)
    sync(MetadefTagRow, tags(new), tags(old), MetadefTagRow.name)
    sync(MetadefAssociationRow, associations(new), associations(old), MetadefAssociationRow.resource_type_id)


def _json(value) -> str:
    return json.dumps(value, ensure_ascii=False)


def _to_namespaces(session: Session, rows: list[MetadefNamespaceRow]) -> list[Namespace]:
    """The namespaces of *rows*, whole: one query per kind of child for all of them."""
    ids = [row.id for row in rows]
    properties = {i: {} for i in ids}
    objects = {i: [] for i in ids}
    tags = {i: [] for i in ids}
    associations = {i: [] for i in ids}
    if ids:
        for p in session.scalars(select(MetadefPropertyRow).where(MetadefPropertyRow.namespace_id.in_(ids))):
            properties[p.namespace_id][p.name] = json.loads(p.definition)
        for o in session.scalars(select(MetadefObjectRow).where(MetadefObjectRow.namespace_id.in_(ids))):
            objects[o.namespace_id].append(
                MetadefObject(
                    name=o.name,
                    description=o.description,
                    required=json.loads(o.required),
                    properties=json.loads(o.properties),
                    created_at=o.created_at,
                    updated_at=o.updated_at,
                )
            )
        for t in session.scalars(select(MetadefTagRow).where(MetadefTagRow.namespace_id.in_(ids))):
            tags[t.namespace_id].append(MetadefTag(t.name, t.created_at, t.updated_at))
        query = (
            select(MetadefAssociationRow, MetadefResourceTypeRow.name)
            .join(MetadefResourceTypeRow, MetadefResourceTypeRow.id == MetadefAssociationRow.resource_type_id)
            .where(MetadefAssociationRow.namespace_id.in_(ids))
        )
        for a, name in session.execute(query):
            associations[a.namespace_id].append(
                Association(name, a.prefix, a.properties_target, a.created_at, a.updated_at)
            )
    by_name = lambda child: child.name  # noqa: E731 - code point order: the same on every database
    return [
        Namespace(
            **{field: getattr(row, field) for field in _NAMESPACE_OWN_FIELDS},
            created_at=row.created_at,
            updated_at=row.updated_at,
            version=row.version,
            properties={name: properties[row.id][name] for name in sorted(properties[row.id])},
            objects=sorted(objects[row.id], key=by_name),
            tags=sorted(tags[row.id], key=by_name),
            associations=sorted(associations[row.id], key=by_name),
        )
        for row in rows
    ]


def _namespace_scope(viewer: Viewer | None) -> list:
    """The list's visibility rule, :func:`abbild.metadefs.namespace_visible` in SQL (a
    test checks that the two agree)."""
    if viewer is None or viewer.is_admin:
        return []
    row = MetadefNamespaceRow
    mine = false() if viewer.project_id is None else row.owner == viewer.project_id
    return [or_(row.visibility == "public", row.owner.is_(None), mine)]


def _namespace_filters(filters: NamespaceFilters) -> list:
    row = MetadefNamespaceRow
    conditions = []
    if filters.visibility is not None:
        if filters.visibility not in VISIBILITIES:
            raise Invalid(f"Invalid visibility {filters.visibility!r}: one of {', '.join(VISIBILITIES)}")
        conditions.append(row.visibility == filters.visibility)
    if filters.resource_types:
        conditions.append(
            exists().where(
                MetadefAssociationRow.namespace_id == row.id,
                MetadefAssociationRow.resource_type_id == MetadefResourceTypeRow.id,
                MetadefResourceTypeRow.name.in_(list(filters.resource_types)),
            )
        )
    return conditions
