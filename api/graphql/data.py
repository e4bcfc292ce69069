"""What the GraphQL resolvers may read, batched by key and scoped to the caller's facility.

Every query here takes the ``Scope`` and filters on the facility in SQL (admins: every
facility), so a resolver cannot reach another facility's rows whatever the query asks for:
a foreign id simply finds nothing, like a missing one. Each function answers a whole batch
of keys in one statement (the DataLoaders in loaders.py call them), which keeps a screen's
query at a constant number of statements whatever its page size.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from pipeline.models import (
    Batch,
    ConsultRequest,
    Delivery,
    Destination,
    Facility,
    Instance,
    Notification,
    RadiologyReport,
    ReportComment,
    Study,
    Upload,
    User,
)


@dataclass(frozen=True)
class Scope:
    user_id: int
    # pipeline.accounts.scoping.readable_facility_ids: the user's facility (and, for readers,
    # the facilities they serve); None for admins, every facility.
    facility_ids: frozenset[int] | None


def _scoped(query: Select, column, scope: Scope) -> Select:  # noqa: ANN001
    return query if scope.facility_ids is None else query.where(column.in_(sorted(scope.facility_ids)))


def by_ids(session: Session, scope: Scope, model, ids: Sequence) -> list:  # noqa: ANN001
    """Rows of ``model`` (a facility-owned table) by id, in the order of ``ids``; None where
    there is none the caller may see."""
    facility_column = model.id if model is Facility else model.facility_id
    rows = session.scalars(_scoped(select(model).where(model.id.in_(list(set(ids)))), facility_column, scope))
    found = {row.id: row for row in rows}
    return [found.get(i) for i in ids]


def latest_uploads(session: Session, scope: Scope, user_id: int, limit: int) -> list[Upload]:
    query = select(Upload).where(Upload.user_id == user_id).order_by(Upload.created_at.desc(),
                                                                     Upload.id.desc()).limit(limit)
    return list(session.scalars(_scoped(query, Upload.facility_id, scope)))


def latest_batches(session: Session, scope: Scope, limit: int, user_id: int | None = None) -> list[Batch]:
    query = select(Batch).order_by(Batch.id.desc()).limit(limit)
    if user_id is not None:
        query = query.where(Batch.user_id == user_id)
    return list(session.scalars(_scoped(query, Batch.facility_id, scope)))


def uploads_of_batches(session: Session, scope: Scope, keys: Sequence[tuple[int, int]]) -> list[list[Upload]]:
    """(batch id, limit) -> the batch's first ``limit`` uploads, one windowed statement."""
    limit = max(k[1] for k in keys)
    ranked = _scoped(select(Upload.id.label("upload_id"), func.row_number().over(
        partition_by=Upload.batch_id, order_by=(Upload.created_at, Upload.id)).label("n"))
        .where(Upload.batch_id.in_({k[0] for k in keys})), Upload.facility_id, scope).subquery()
    rows = session.scalars(select(Upload).join(ranked, ranked.c.upload_id == Upload.id)
                           .where(ranked.c.n <= limit).order_by(Upload.batch_id, ranked.c.n))
    grouped: dict[int, list[Upload]] = defaultdict(list)
    for row in rows:
        grouped[row.batch_id].append(row)
    return [grouped[batch_id][:n] for batch_id, n in keys]


def study_of_uploads(session: Session, scope: Scope, upload_ids: Sequence[str]) -> list[Study | None]:
    """The study an upload's instance was grouped into (None before parsing)."""
    query = (select(Instance.upload_id, Study).join(Study, Study.id == Instance.study_id)
             .where(Instance.upload_id.in_(list(set(upload_ids)))))
    found = {row[0]: row[1] for row in session.execute(_scoped(query, Study.facility_id, scope))}
    return [found.get(i) for i in upload_ids]


def studies_of_batches(session: Session, scope: Scope, batch_ids: Sequence[int]) -> list[list[Study]]:
    pairs = _scoped(select(Instance.batch_id, Instance.study_id).where(
        Instance.batch_id.in_(list(set(batch_ids)))).distinct(), Instance.facility_id, scope).subquery()
    rows = session.execute(select(pairs.c.batch_id, Study).join(Study, Study.id == pairs.c.study_id)
                           .order_by(Study.id))
    grouped: dict[int, list[Study]] = defaultdict(list)
    for batch_id, study in rows:
        grouped[batch_id].append(study)
    return [grouped[b] for b in batch_ids]


@dataclass(frozen=True)
class DeliveryCount:
    destination: str
    state: str
    count: int


def delivery_status_of_studies(session: Session, scope: Scope,
                               study_ids: Sequence[int]) -> list[list[DeliveryCount]]:
    """Per study: how many of its instances are in each state at each destination."""
    query = (select(Delivery.study_id, Destination.name, Delivery.state, func.count())
             .join(Destination, Destination.id == Delivery.destination_id)
             .join(Study, Study.id == Delivery.study_id)
             .where(Delivery.study_id.in_(list(set(study_ids))))
             .group_by(Delivery.study_id, Destination.name, Delivery.state)
             .order_by(Delivery.study_id, Destination.name, Delivery.state))
    grouped: dict[int, list[DeliveryCount]] = defaultdict(list)
    for study_id, destination, state, count in session.execute(_scoped(query, Study.facility_id, scope)):
        grouped[study_id].append(DeliveryCount(destination, state, count))
    return [grouped[s] for s in study_ids]


def deliveries_of_studies(session: Session, scope: Scope,
                          keys: Sequence[tuple[int, int]]) -> list[list[tuple[Delivery, str]]]:
    """(study id, limit) -> its first ``limit`` deliveries with their destination's name."""
    limit = max(k[1] for k in keys)
    ranked = (select(Delivery.id.label("delivery_id"), func.row_number().over(
        partition_by=Delivery.study_id, order_by=Delivery.id).label("n"))
        .join(Study, Study.id == Delivery.study_id)
        .where(Delivery.study_id.in_({k[0] for k in keys})))
    ranked = _scoped(ranked, Study.facility_id, scope).subquery()
    rows = session.execute(select(Delivery, Destination.name)
                           .join(ranked, ranked.c.delivery_id == Delivery.id)
                           .join(Destination, Destination.id == Delivery.destination_id)
                           .where(ranked.c.n <= limit).order_by(Delivery.study_id, ranked.c.n))
    grouped: dict[int, list[tuple[Delivery, str]]] = defaultdict(list)
    for delivery, name in rows:
        grouped[delivery.study_id].append((delivery, name))
    return [grouped[study_id][:n] for study_id, n in keys]


def users_by_id(session: Session, scope: Scope, ids: Sequence[int]) -> list[User | None]:
    return by_ids(session, scope, User, ids)


def reports_of_studies(session: Session, scope: Scope,
                       study_ids: Sequence[int]) -> list[list[RadiologyReport]]:
    """Per study: its current radiology reports (superseded versions left out), newest first."""
    query = (select(RadiologyReport).where(RadiologyReport.study_id.in_(list(set(study_ids))),
                                           RadiologyReport.superseded_by_id.is_(None))
             .order_by(RadiologyReport.study_id, RadiologyReport.id.desc()))
    grouped: dict[int, list[RadiologyReport]] = defaultdict(list)
    for report in session.scalars(_scoped(query, RadiologyReport.facility_id, scope)):
        grouped[report.study_id].append(report)
    return [grouped[s] for s in study_ids]


def _children_of_reports(session: Session, scope: Scope, model, report_ids: Sequence[int]) -> list[list]:  # noqa: ANN001
    query = (select(model).where(model.report_id.in_(list(set(report_ids))))
             .order_by(model.report_id, model.id))
    grouped: dict[int, list] = defaultdict(list)
    for row in session.scalars(_scoped(query, model.facility_id, scope)):
        grouped[row.report_id].append(row)
    return [grouped[r] for r in report_ids]


def comments_of_reports(session: Session, scope: Scope,
                        report_ids: Sequence[int]) -> list[list[ReportComment]]:
    return _children_of_reports(session, scope, ReportComment, report_ids)


def consults_of_reports(session: Session, scope: Scope,
                        report_ids: Sequence[int]) -> list[list[ConsultRequest]]:
    return _children_of_reports(session, scope, ConsultRequest, report_ids)


def notifications_of(session: Session, scope: Scope, user_id: int, limit: int,
                     unread: bool) -> list[Notification]:
    """The user's own notices (never anyone else's, whatever their role), newest first."""
    query = (select(Notification).where(Notification.user_id == user_id)
             .order_by(Notification.id.desc()).limit(limit))
    if unread:
        query = query.where(Notification.read_at.is_(None))
    return list(session.scalars(query))


def unread_count(session: Session, user_id: int) -> int:
    return session.scalar(select(func.count()).select_from(Notification).where(
        Notification.user_id == user_id, Notification.read_at.is_(None))) or 0
