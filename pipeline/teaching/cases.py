"""Teaching cases: who may add, see, edit, publish and withdraw them; full-text search with
facets; warnings when a free-text field looks like it holds a name, an ID or a date.

Access (one gateway serves one institution):
- published cases: every teaching user, whichever facility the case came from;
- drafts and withdrawn cases: their author, publishers and admins;
- a case never names its source study; the author's facility shows on a published case
  only when the author chose so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, Select, and_, func, literal_column, or_, select, text
from sqlalchemy.orm import Session

from pipeline.accounts.scoping import may_read
from pipeline.models import (
    CaseState,
    Difficulty,
    Facility,
    Preparation,
    RadiologyReport,
    ReportStatus,
    Role,
    Study,
    TeachingCase,
    TeachingCaseSource,
    TeachingInstance,
    TeachingInstanceState,
    User,
    utcnow,
)
from pipeline.teaching.preparation import require_delivered
from pipeline.teaching.profile import DeidOptions

TEXT_FIELDS = ("title", "history", "findings", "diagnosis", "differential", "discussion")
FACETS = ("modality", "body_part", "difficulty", "diagnosis")


class CaseError(ValueError):
    """A request the rules refuse: ``status`` is the HTTP answer the API gives."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def roles_of(user: User) -> set[str]:
    """Every role the user holds (``users.roles``; ``users.role`` for a row without them)."""
    return {str(r) for r in (user.roles or [user.role])}


# Radiologists add cases from the studies they may read; publishers and admins too.
AUTHOR_ROLES = frozenset({Role.ADMIN.value, Role.TEACHING_PUBLISHER.value, Role.RADIOLOGIST.value})
READER_ROLES = frozenset({Role.TEACHING.value, *AUTHOR_ROLES})


def is_publisher(user: User) -> bool:
    return bool(roles_of(user) & {Role.ADMIN.value, Role.TEACHING_PUBLISHER.value})


def may_add(user: User) -> bool:
    return bool(roles_of(user) & AUTHOR_ROLES)


def visible_clause(user: User) -> ColumnElement[bool]:
    """The cases this user may see."""
    if is_publisher(user):
        return text("1 = 1")
    return or_(TeachingCase.state == CaseState.PUBLISHED, TeachingCase.author_id == user.id)


def get_visible(session: Session, user: User, case_id: int) -> TeachingCase:
    case = session.scalar(select(TeachingCase).where(TeachingCase.id == case_id, visible_clause(user)))
    if case is None:
        raise CaseError(f"no teaching case {case_id}", 404)
    return case


# --- free-text warnings ------------------------------------------------------------------

_DATE = re.compile(
    r"\b(\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}|\d{8})\b"
    r"|\b\d{1,2}\s+(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?\s+\d{2,4}\b",
    re.IGNORECASE,
)
_ID = re.compile(r"\b(?=[A-Z0-9-]*\d)[A-Z]{0,4}-?\d{5,}[A-Z0-9-]*\b|\b(mrn|patient id|accession)\b[:#]?",
                 re.IGNORECASE)
_NAME = re.compile(
    r"\b(?i:mr|mrs|ms|miss|dr)\.?\s+[A-Z][a-z]+|\b[A-Z][a-z]+\^[A-Z][a-z]+"
    r"|\b(?i:patient|pt)\s+[A-Z][a-z]{2,}\b"
)


def free_text_warnings(fields: dict[str, str]) -> list[dict[str, str]]:
    """Fields whose text looks like it holds a name, an ID or a date (a warning, not a block:
    'follow-up at 6 weeks' is fine, '12/03/2024' probably is not)."""
    warnings = []
    for name, value in fields.items():
        if not value:
            continue
        for kind, pattern in (("date", _DATE), ("identifier", _ID), ("name", _NAME)):
            match = pattern.search(value)
            if match:
                warnings.append({
                    "field": name,
                    "looks_like": kind,
                    "text": match.group(0)[:40],
                })
    return warnings


# --- changes -----------------------------------------------------------------------------

@dataclass
class CaseFields:
    title: str
    history: str = ""
    findings: str = ""
    diagnosis: str = ""
    differential: str = ""
    discussion: str = ""
    difficulty: str = Difficulty.INTERMEDIATE
    modality: str = ""
    body_part: str = ""
    keywords: list[str] | None = None
    show_author_facility: bool = False


def _apply(case: TeachingCase, fields: dict) -> None:
    for name, value in fields.items():
        if name == "difficulty" and value not in {d.value for d in Difficulty}:
            raise CaseError("difficulty is one of primary, intermediate, advanced")
        if name == "keywords":
            keywords = sorted({str(k).strip().lower() for k in (value or []) if str(k).strip()})
            case.keywords = keywords
            case.keywords_text = " ".join(keywords)
            continue
        if name in ("modality", "body_part") and isinstance(value, str):
            value = value.strip().upper()
        setattr(case, name, value)


def readable_study(session: Session, user: User, study_id: int) -> Study:
    """A study the user may make a case from: one of the facilities they may read (their
    own; a radiologist's assigned ones too; admins any)."""
    study = session.get(Study, study_id)
    if study is None:
        raise CaseError(f"no study {study_id}", 404)
    if not may_read(session, user, study.facility_id):
        raise CaseError("this study belongs to a facility you do not read", 403)
    return study


def add_from_study(session: Session, user: User, study_id: int, fields: dict,
                   options: DeidOptions, *, report_id: int | None = None) -> TeachingCase:
    """A new draft case from a delivered study; its instances are copied by the job."""
    if not may_add(user):
        raise CaseError(f"role {user.role} may not add teaching cases", 403)
    study = readable_study(session, user, study_id)
    try:
        require_delivered(session, study.id)
    except ValueError as exc:
        raise CaseError(str(exc), 409) from exc
    if not fields.get("modality") and study.modality:
        fields = {**fields, "modality": study.modality}
    case = TeachingCase(
        author_id=user.id,
        author_facility_id=user.facility_id,
        state=CaseState.DRAFT,
        preparation=Preparation.QUEUED,
        options={
            "retain_modified_dates": options.retain_modified_dates,
            "retain_patient_characteristics": options.retain_patient_characteristics,
            "clean_descriptors": options.clean_descriptors,
            "retain_safe_private": options.retain_safe_private,
        },
        keywords=[],
        keywords_text="",
    )
    for name in TEXT_FIELDS:
        setattr(case, name, "")
    case.difficulty = Difficulty.INTERMEDIATE
    case.modality = ""
    case.body_part = ""
    _apply(case, fields)
    session.add(case)
    session.flush()
    session.add(TeachingCaseSource(case_id=case.id, facility_id=study.facility_id, study_id=study.id,
                                   report_id=report_id))
    session.flush()
    return case


def add_from_report(session: Session, user: User, report_id: int, fields: dict,
                    options: DeidOptions) -> TeachingCase:
    """A new draft case from a radiology report: its study (as delivered), the report's text
    as the findings unless given. Report text often names the patient: the free-text
    warnings say where, and the author edits before a publisher approves."""
    report = session.get(RadiologyReport, report_id)
    if report is None or not may_read(session, user, report.facility_id):
        raise CaseError(f"no radiology report {report_id}", 404)
    if report.status == ReportStatus.CANCELLED:
        raise CaseError("this report was cancelled", 409)
    if not fields.get("findings") and report.text:
        fields = {**fields, "findings": report.text[:20000]}
    return add_from_study(session, user, report.study_id, fields, options, report_id=report.id)


def edit(session: Session, user: User, case: TeachingCase, fields: dict) -> None:
    if case.author_id != user.id and not is_publisher(user):
        raise CaseError("only the author or a publisher edits a case", 403)
    _apply(case, fields)
    case.updated_at = utcnow()
    if case.state == CaseState.PUBLISHED and not is_publisher(user):
        # A published case changed by its author goes back to a publisher for approval.
        case.state = CaseState.DRAFT


def publish(session: Session, user: User, case: TeachingCase) -> None:
    if not is_publisher(user):
        raise CaseError("only a publisher publishes a case", 403)
    if case.preparation != Preparation.READY:
        raise CaseError("the case's instances are not ready yet", 409)
    if not case.title.strip():
        raise CaseError("a published case needs a title", 409)
    case.state = CaseState.PUBLISHED
    case.published_at = utcnow()
    case.published_by = user.id
    case.updated_at = case.published_at


def withdraw(session: Session, user: User, case: TeachingCase) -> None:
    if not is_publisher(user):
        raise CaseError("only a publisher withdraws a case", 403)
    case.state = CaseState.WITHDRAWN
    case.updated_at = utcnow()


# --- reading -----------------------------------------------------------------------------

def ready_instances(session: Session, case_id: int) -> list[TeachingInstance]:
    return list(session.scalars(
        select(TeachingInstance).where(
            TeachingInstance.case_id == case_id,
            TeachingInstance.state == TeachingInstanceState.READY,
        ).order_by(TeachingInstance.series_instance_uid, TeachingInstance.id)
    ))


def describe(session: Session, user: User, case: TeachingCase, *, unknown: bool = False) -> dict:
    """A case as a teaching user sees it: never its source study or original identifiers."""
    instances = list(session.scalars(
        select(TeachingInstance).where(TeachingInstance.case_id == case.id)
        .order_by(TeachingInstance.series_instance_uid, TeachingInstance.id)
    ))
    may_review = case.author_id == user.id or is_publisher(user)
    body = {
        "id": case.id,
        "title": case.title,
        "history": case.history,
        "findings": case.findings,
        "difficulty": case.difficulty,
        "modality": case.modality,
        "body_part": case.body_part,
        "keywords": case.keywords or [],
        "state": case.state,
        "preparation": case.preparation,
        "preparation_note": case.preparation_note,
        "key_image": case.key_image_key is not None,
        "author_is_you": case.author_id == user.id,
        "published_at": _iso(case.published_at),
        "instances": [
            {"id": i.id, "sop_instance_uid": i.sop_instance_uid,
             "series_instance_uid": i.series_instance_uid, "modality": i.modality,
             "state": i.state, **({"hold_reason": i.hold_reason} if may_review else {})}
            for i in instances
            if i.state == TeachingInstanceState.READY or may_review
        ],
    }
    if not unknown:
        body.update(diagnosis=case.diagnosis, differential=case.differential,
                    discussion=case.discussion)
    if case.show_author_facility or may_review:
        facility = session.get(Facility, case.author_facility_id)
        body["author_facility"] = facility.name if facility else None
    if may_review:
        body["warnings"] = free_text_warnings({f: getattr(case, f) for f in TEXT_FIELDS})
    return body


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


@dataclass(frozen=True)
class SearchQuery:
    text: str | None = None
    modality: str | None = None
    body_part: str | None = None
    difficulty: str | None = None
    diagnosis: str | None = None
    state: str | None = None
    page: int = 1
    per_page: int = 20
    unknown: bool = False


def _filtered(session: Session, user: User, query: SearchQuery) -> tuple[Select, ColumnElement | None]:
    conditions: list[ColumnElement[bool]] = [visible_clause(user)]
    rank = None
    if query.modality:
        conditions.append(TeachingCase.modality == query.modality.upper())
    if query.body_part:
        conditions.append(TeachingCase.body_part == query.body_part.upper())
    if query.difficulty:
        conditions.append(TeachingCase.difficulty == query.difficulty)
    if query.diagnosis:
        conditions.append(func.lower(TeachingCase.diagnosis) == query.diagnosis.lower())
    if query.state:
        conditions.append(TeachingCase.state == query.state)
    if query.text:
        if session.get_bind().dialect.name == "postgresql":
            tsquery = func.websearch_to_tsquery("english", query.text)
            vector = literal_column("teaching_cases.search_vector")
            conditions.append(vector.op("@@")(tsquery))
            rank = func.ts_rank(vector, tsquery)
        else:
            # The embedded SQLite demo: every word somewhere in the case's text.
            for word in query.text.split():
                like = f"%{word.lower()}%"
                conditions.append(or_(*[func.lower(getattr(TeachingCase, f)).like(like)
                                        for f in (*TEXT_FIELDS, "keywords_text")]))
    return select(TeachingCase).where(and_(*conditions)), rank


def search(session: Session, user: User, query: SearchQuery) -> dict:
    """One page of matching cases, the total, and facet counts over every match."""
    statement, rank = _filtered(session, user, query)
    total = session.scalar(select(func.count()).select_from(statement.subquery())) or 0
    order = [rank.desc(), TeachingCase.id.desc()] if rank is not None else [TeachingCase.id.desc()]
    rows = session.scalars(
        statement.order_by(*order).offset((query.page - 1) * query.per_page).limit(query.per_page)
    ).all()
    matched = statement.subquery()
    facets = {}
    for facet in FACETS:
        if facet == "diagnosis" and query.unknown:
            continue
        column = matched.c[facet]
        counts = session.execute(
            select(column, func.count()).group_by(column).order_by(func.count().desc(), column)
        ).all()
        facets[facet] = [{"value": value, "count": count} for value, count in counts if value]
    return {
        "total": total,
        "page": query.page,
        "per_page": query.per_page,
        "cases": [_summary(c, unknown=query.unknown) for c in rows],
        "facets": facets,
    }


def _summary(case: TeachingCase, *, unknown: bool) -> dict:
    body = {
        "id": case.id,
        "title": case.title,
        "modality": case.modality,
        "body_part": case.body_part,
        "difficulty": case.difficulty,
        "state": case.state,
        "keywords": case.keywords or [],
        "key_image": case.key_image_key is not None,
    }
    if not unknown:
        body["diagnosis"] = case.diagnosis
    return body


def mapping(session: Session, case_id: int) -> dict:
    """Governance: the source study and every original -> new identifier (admins only; the
    caller audits the read)."""
    from pipeline.models import TeachingIdentityMap

    source = session.get(TeachingCaseSource, case_id)
    if source is None:
        raise CaseError(f"no teaching case {case_id}", 404)
    rows = session.scalars(
        select(TeachingIdentityMap).where(TeachingIdentityMap.case_id == case_id)
        .order_by(TeachingIdentityMap.id)
    ).all()
    return {
        "case_id": case_id,
        "facility_id": source.facility_id,
        "study_id": source.study_id,
        "report_id": source.report_id,
        "date_shift_days": source.shift_days,
        "instances": [
            {"source_instance_id": r.source_instance_id, "teaching_instance_id": r.teaching_instance_id,
             "original_patient_id": r.original_patient_id, "original_accession": r.original_accession,
             "original_study_uid": r.original_study_uid, "original_series_uid": r.original_series_uid,
             "original_sop_uid": r.original_sop_uid, "new_sop_uid": r.new_sop_uid}
            for r in rows
        ],
    }
