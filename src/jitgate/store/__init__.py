"""The storage adapter: SQLAlchemy (asyncio) on SQLite or PostgreSQL.

Typical use::

    db = Database.open(config.database_url, config.data_dir)
    await migrate(db)
    async with db.transaction() as session:
        ok = await RequestRepository(session).update(row, expected_version=3)
        if ok:
            await append_event(session, "request.approved", "alice", row.id, {...}, now)

Repositories take the session of one transaction and hold no state of their
own; they enforce data integrity (uniqueness, single use, optimistic
versions), never business rules.
"""

from jitgate.store.database import (
    DEFAULT_SQLITE_FILENAME,
    Database,
    backend_name,
    create_engine,
    database_url,
    display_url,
)
from jitgate.store.errors import (
    DatabaseURLError,
    DuplicateError,
    InvalidValueError,
    NotFoundError,
    StoreError,
)
from jitgate.store.events import (
    EventRow,
    NewEvent,
    append_event,
    append_events,
    last_seq,
    list_events,
)
from jitgate.store.grants import SCOPE_ACTION, SCOPE_RULE, GrantRepository, GrantRow, new_grant_id
from jitgate.store.identity import (
    TOKEN_PREFIX,
    Identity,
    MfaRecord,
    TokenRecord,
    UserRecord,
    hash_token,
)
from jitgate.store.migrate import current_revision, downgrade, head_revision, migrate
from jitgate.store.requests import RequestRepository, RequestRow, new_request_id
from jitgate.store.tables import metadata

__all__ = [
    "DEFAULT_SQLITE_FILENAME",
    "SCOPE_ACTION",
    "SCOPE_RULE",
    "TOKEN_PREFIX",
    "Database",
    "DatabaseURLError",
    "DuplicateError",
    "EventRow",
    "GrantRepository",
    "GrantRow",
    "Identity",
    "InvalidValueError",
    "MfaRecord",
    "NewEvent",
    "NotFoundError",
    "RequestRepository",
    "RequestRow",
    "StoreError",
    "TokenRecord",
    "UserRecord",
    "append_event",
    "append_events",
    "backend_name",
    "create_engine",
    "current_revision",
    "database_url",
    "display_url",
    "downgrade",
    "hash_token",
    "head_revision",
    "last_seq",
    "list_events",
    "metadata",
    "migrate",
    "new_grant_id",
    "new_request_id",
]
