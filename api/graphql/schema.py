"""The read-only GraphQL schema (strawberry): facilities, users, batches, uploads, studies and
their deliveries, and the dashboard screen in one query.

Field names are the REST ones (snake_case, ``auto_camel_case`` off). No patient names and
no file names (a file name can be a patient's name): ids, states, counts and DICOM UIDs.
Every relation resolves through the request's DataLoaders (``Loaders``), made per request
so no cache outlives it or crosses users, and every loader reads through data.py, which
filters on the caller's readable facilities in SQL. Radiology reports hang off ``Study``,
their comments and consults off the report; the dashboard has the user's own notices.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import strawberry
from sqlalchemy.orm import Session
from strawberry.dataloader import DataLoader
from strawberry.extensions import (
    DisableIntrospection,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    QueryDepthLimiter,
)
from strawberry.schema.config import StrawberryConfig
from strawberry.types import Info

from api.graphql import data
from pipeline import models

MAX_PAGE = 50  # every list field: at most this many items (a bound on a query's cost)
MAX_DEPTH = 8
MAX_ALIASES = 30
MAX_TOKENS = 2000


def _page(limit: int) -> int:
    return max(1, min(int(limit), MAX_PAGE))


class Loaders:
    """One request's DataLoaders: each batches the keys its resolvers ask for in one tick
    into one statement of data.py."""

    def __init__(self, session: Session, scope: data.Scope) -> None:
        def batched(fn):  # noqa: ANN001, ANN202
            async def load(keys: list) -> list:
                return fn(session, scope, keys)
            return DataLoader(load_fn=load)

        def rows_of(model):  # noqa: ANN001, ANN202
            return lambda s, sc, keys: data.by_ids(s, sc, model, keys)

        self.facility = batched(rows_of(models.Facility))
        self.user = batched(data.users_by_id)
        self.batch = batched(rows_of(models.Batch))
        self.upload = batched(rows_of(models.Upload))
        self.study = batched(rows_of(models.Study))
        self.uploads_of_batch = batched(data.uploads_of_batches)
        self.study_of_upload = batched(data.study_of_uploads)
        self.studies_of_batch = batched(data.studies_of_batches)
        self.delivery_status = batched(data.delivery_status_of_studies)
        self.deliveries = batched(data.deliveries_of_studies)
        self.reports = batched(data.reports_of_studies)
        self.comments = batched(data.comments_of_reports)
        self.consults = batched(data.consults_of_reports)


@dataclass
class Context:
    session: Session
    scope: data.Scope
    user: models.User
    loaders: Loaders


def _ctx(info: Info) -> Context:
    return info.context


@strawberry.type
class Facility:
    id: int
    name: str


@strawberry.type
class User:
    id: int
    email: str
    role: str
    facility_id: int

    @strawberry.field
    async def facility(self, info: Info) -> Facility | None:
        return _facility(await _ctx(info).loaders.facility.load(self.facility_id))


@strawberry.type
class DeliveryStatus:
    """How many of a study's instances are in ``state`` at ``destination``."""

    destination: str
    state: str
    count: int


@strawberry.type
class Delivery:
    id: int
    destination: str
    state: str
    attempts: int
    status_code: str | None
    reason: str | None
    delivered_at: datetime | None


@strawberry.type
class Comment:
    """One version of a comment on a report (its text is left out here: free text can name
    the patient; REST /api/v1/reports/ID/comments has it)."""

    id: int
    report_id: int
    thread_key: str
    version: int
    author_id: int
    created_at: datetime


@strawberry.type
class Consult:
    id: int
    report_id: int
    state: str
    requester_id: int
    consultant_id: int | None
    subspecialty: str | None
    due_at: datetime
    created_at: datetime
    updated_at: datetime


@strawberry.type
class Notification:
    id: int
    kind: str
    report_id: int | None
    comment_id: int | None
    consult_id: int | None
    created_at: datetime
    read_at: datetime | None


@strawberry.type
class RadiologyReport:
    """A radiology report of a study (REST: /api/v1/reports/ID). Its text is not here: it is
    free text that can name the patient; ``original_url`` is the document (PDF or DICOM)."""

    id: int
    study_id: int
    facility_id: int
    status: str
    source: str
    content_type: str
    has_original: bool
    predecessor_id: int | None
    document_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @strawberry.field
    async def comments(self, info: Info) -> list[Comment]:
        return [Comment(id=c.id, report_id=c.report_id, thread_key=c.thread_key, version=c.version,
                        author_id=c.author_id, created_at=c.created_at)
                for c in await _ctx(info).loaders.comments.load(self.id)]

    @strawberry.field
    async def consults(self, info: Info) -> list[Consult]:
        return [Consult(id=c.id, report_id=c.report_id, state=str(c.state), requester_id=c.requester_id,
                        consultant_id=c.consultant_id, subspecialty=c.subspecialty, due_at=c.due_at,
                        created_at=c.created_at, updated_at=c.updated_at)
                for c in await _ctx(info).loaders.consults.load(self.id)]

    @strawberry.field(description="the original document (GET, audited); null when there is none")
    def original_url(self) -> str | None:
        return f"/api/v1/reports/{self.id}/original" if self.has_original else None


@strawberry.type
class Study:
    id: int
    facility_id: int
    study_instance_uid: str
    patient_id: str | None
    modality: str | None
    study_date: str | None
    description: str | None
    created_at: datetime

    @strawberry.field(description="counts of this study's instances by destination and state")
    async def delivery_status(self, info: Info) -> list[DeliveryStatus]:
        counts = await _ctx(info).loaders.delivery_status.load(self.id)
        return [DeliveryStatus(destination=c.destination, state=c.state, count=c.count) for c in counts]

    @strawberry.field(description="the study's current radiology reports, newest first")
    async def reports(self, info: Info) -> list[RadiologyReport]:
        return [RadiologyReport(id=r.id, study_id=r.study_id, facility_id=r.facility_id, status=str(r.status),
                                source=str(r.source), content_type=r.content_type,
                                has_original=r.object_key is not None, predecessor_id=r.predecessor_id,
                                document_at=r.document_at, created_at=r.created_at, updated_at=r.updated_at)
                for r in await _ctx(info).loaders.reports.load(self.id)]

    @strawberry.field
    async def deliveries(self, info: Info, limit: int = 20) -> list[Delivery]:
        rows = await _ctx(info).loaders.deliveries.load((self.id, _page(limit)))
        return [Delivery(id=d.id, destination=name, state=d.state, attempts=d.attempts,
                         status_code=d.status_code, reason=d.reason, delivered_at=d.delivered_at)
                for d, name in rows]


@strawberry.type
class Upload:
    id: str
    batch_id: int
    facility_id: int
    user_id: int
    state: str
    offset: int
    length: int
    quarantine_reason: str | None
    sop_instance_uid: str | None
    created_at: datetime
    updated_at: datetime

    @strawberry.field
    async def batch(self, info: Info) -> Batch | None:
        return _batch(await _ctx(info).loaders.batch.load(self.batch_id))

    @strawberry.field(description="the study this file was grouped into (null until parsed)")
    async def study(self, info: Info) -> Study | None:
        return _study(await _ctx(info).loaders.study_of_upload.load(self.id))


@strawberry.type
class Batch:
    id: int
    label: str | None
    state: str
    facility_id: int
    user_id: int
    template: str | None
    created_at: datetime
    completed_at: datetime | None
    forwarding_started_at: datetime | None

    @strawberry.field
    async def facility(self, info: Info) -> Facility | None:
        return _facility(await _ctx(info).loaders.facility.load(self.facility_id))

    @strawberry.field
    async def uploads(self, info: Info, limit: int = 20) -> list[Upload]:
        return [_upload(u) for u in await _ctx(info).loaders.uploads_of_batch.load((self.id, _page(limit)))]

    @strawberry.field
    async def studies(self, info: Info) -> list[Study]:
        return [_study(s) for s in await _ctx(info).loaders.studies_of_batch.load(self.id)]


@strawberry.type
class Dashboard:
    """The signed-in user's screen: their latest uploads (each with its study, delivery status
    and reports), their latest batches (with their studies) and their unread notices."""

    user: User
    uploads: list[Upload]
    batches: list[Batch]

    @strawberry.field(description="how many of the user's notices are unread")
    def unread_notifications(self, info: Info) -> int:
        ctx = _ctx(info)
        return data.unread_count(ctx.session, ctx.user.id)

    @strawberry.field(description="the user's notices, newest first (unread only by default)")
    def notifications(self, info: Info, limit: int = 20, unread: bool = True) -> list[Notification]:
        ctx = _ctx(info)
        return [Notification(id=n.id, kind=n.kind, report_id=n.report_id, comment_id=n.comment_id,
                             consult_id=n.consult_id, created_at=n.created_at, read_at=n.read_at)
                for n in data.notifications_of(ctx.session, ctx.scope, ctx.user.id, _page(limit), unread)]


def _facility(row: models.Facility | None) -> Facility | None:
    return Facility(id=row.id, name=row.name) if row else None


def _user(row: models.User) -> User:
    return User(id=row.id, email=row.email, role=str(row.role), facility_id=row.facility_id)


def _batch(row: models.Batch | None) -> Batch | None:
    if row is None:
        return None
    return Batch(id=row.id, label=row.label, state=str(row.state), facility_id=row.facility_id,
                 user_id=row.user_id, template=row.template, created_at=row.created_at,
                 completed_at=row.completed_at, forwarding_started_at=row.forwarding_started_at)


def _upload(row: models.Upload) -> Upload:
    return Upload(id=row.id, batch_id=row.batch_id, facility_id=row.facility_id, user_id=row.user_id,
                  state=str(row.state), offset=row.offset, length=row.length,
                  quarantine_reason=row.quarantine_reason, sop_instance_uid=row.sop_instance_uid,
                  created_at=row.created_at, updated_at=row.updated_at)


def _study(row: models.Study | None) -> Study | None:
    if row is None:
        return None
    return Study(id=row.id, facility_id=row.facility_id, study_instance_uid=row.study_instance_uid,
                 patient_id=row.patient_id, modality=row.modality, study_date=row.study_date,
                 description=row.description, created_at=row.created_at)


class NotFound(Exception):
    """Raised for an id the caller cannot see: the same answer whether it does not exist or
    belongs to another facility."""

    def __init__(self, kind: str, key: object) -> None:
        super().__init__(f"{kind} {key} not found")
        self.extensions = {"code": "NOT_FOUND", "status": 404}


@strawberry.type
class Query:
    @strawberry.field(description="the signed-in user")
    def me(self, info: Info) -> User:
        return _user(_ctx(info).user)

    @strawberry.field
    async def facility(self, info: Info, id: int) -> Facility | None:  # noqa: A002
        found = _facility(await _ctx(info).loaders.facility.load(id))
        if found is None:
            raise NotFound("facility", id)
        return found

    @strawberry.field
    async def batch(self, info: Info, id: int) -> Batch | None:  # noqa: A002
        found = _batch(await _ctx(info).loaders.batch.load(id))
        if found is None:
            raise NotFound("batch", id)
        return found

    @strawberry.field
    async def upload(self, info: Info, id: str) -> Upload | None:  # noqa: A002
        row = await _ctx(info).loaders.upload.load(id[:64])
        if row is None:
            raise NotFound("upload", id[:64])
        return _upload(row)

    @strawberry.field
    async def study(self, info: Info, id: int) -> Study | None:  # noqa: A002
        found = _study(await _ctx(info).loaders.study.load(id))
        if found is None:
            raise NotFound("study", id)
        return found

    @strawberry.field(description="batches, newest first (admins: every facility's)")
    def batches(self, info: Info, limit: int = 20) -> list[Batch]:
        ctx = _ctx(info)
        return [_batch(b) for b in data.latest_batches(ctx.session, ctx.scope, _page(limit))]  # type: ignore[misc]

    @strawberry.field(description="the signed-in user's latest uploads and batches")
    def dashboard(self, info: Info, limit: int = 10) -> Dashboard:
        ctx = _ctx(info)
        n = _page(limit)
        uploads = data.latest_uploads(ctx.session, ctx.scope, ctx.user.id, n)
        batches = data.latest_batches(ctx.session, ctx.scope, n, user_id=ctx.user.id)
        return Dashboard(user=_user(ctx.user), uploads=[_upload(u) for u in uploads],
                         batches=[_batch(b) for b in batches])  # type: ignore[misc]


def make_schema(*, introspection: bool) -> strawberry.Schema:
    """The schema with its limits: depth, aliases and tokens are checked before execution
    (a refused query is a GraphQL error, never a 500); every list is capped at MAX_PAGE."""
    # Factories, not instances: each request gets its own extension objects (the API serves
    # requests on several threads at once).
    extensions: list = [
        lambda: QueryDepthLimiter(max_depth=MAX_DEPTH),
        lambda: MaxAliasesLimiter(max_alias_count=MAX_ALIASES),
        lambda: MaxTokensLimiter(max_token_count=MAX_TOKENS),
    ]
    if not introspection:
        extensions.append(DisableIntrospection)
    return strawberry.Schema(query=Query, extensions=extensions,
                             config=StrawberryConfig(auto_camel_case=False))
