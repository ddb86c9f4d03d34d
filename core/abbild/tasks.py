"""Tasks: the record of one piece of asynchronous work (an import), as Glance's Tasks
API shows it. A plain value object and its one status-transition table."""

from __future__ import annotations

import dataclasses
import datetime
import enum
from typing import Any

from abbild.errors import InvalidTransition


class TaskStatus(str, enum.Enum):
    PENDING = "pending"
    PROCESSING = "processing"
    SUCCESS = "success"
    FAILURE = "failure"

    def __str__(self) -> str:
        return self.value


TASK_TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.PENDING: frozenset({TaskStatus.PROCESSING, TaskStatus.FAILURE}),
    TaskStatus.PROCESSING: frozenset({TaskStatus.SUCCESS, TaskStatus.FAILURE}),
    TaskStatus.SUCCESS: frozenset(),
    TaskStatus.FAILURE: frozenset(),
}
#: ``import``: the legacy ``POST /v2/tasks``; ``api_image_import``: ``POST .../import``;
#: ``location_import``: API 2.17's ``POST .../locations``.
TASK_TYPES = ("import", "api_image_import", "location_import")


@dataclasses.dataclass
class Task:
    id: str
    type: str
    owner: str | None = None
    status: TaskStatus = TaskStatus.PENDING
    input: dict[str, Any] = dataclasses.field(default_factory=dict)
    result: dict[str, Any] | None = None
    message: str = ""
    image_id: str | None = None
    request_id: str | None = None
    user_id: str | None = None
    created_at: datetime.datetime | None = None
    updated_at: datetime.datetime | None = None
    expires_at: datetime.datetime | None = None  # set when it ends: then + task_time_to_live
    version: int = 0  # for compare-and-swap, as Image.version

    def transition(self, target: TaskStatus) -> None:
        """:raises abbild.errors.InvalidTransition:"""
        if target not in TASK_TRANSITIONS[self.status]:
            raise InvalidTransition(self.id, self.status.value, target.value)
        self.status = target


@dataclasses.dataclass(frozen=True)
class TaskFilters:
    type: str | None = None
    status: str | None = None
    owner: str | None = None  # None: every project's (admins)
