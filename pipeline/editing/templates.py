"""Upload templates: a facility's named sets of DICOM attribute values (for example the
InstitutionName, ReferringPhysicianName and StudyDescription of a common exam), validated
against the DICOM dictionary, applied to a batch when the batch names one.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pipeline.dicom.attributes import MetadataError, normalise_attributes
from pipeline.models import UploadTemplate, User, utcnow

NAME_LIMIT = 200
DESCRIPTION_LIMIT = 2000


class TemplateNameTaken(ValueError):
    """The facility already has a template of that name."""


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def describe(template: UploadTemplate) -> dict:
    return {
        "id": template.id,
        "facility_id": template.facility_id,
        "name": template.name,
        "description": template.description,
        "attributes": template.attributes,
        "created_by": template.created_by,
        "updated_by": template.updated_by,
        "created_at": _iso(template.created_at),
        "updated_at": _iso(template.updated_at),
    }


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > NAME_LIMIT:
        raise MetadataError(f"name must be a non-empty string of at most {NAME_LIMIT} characters")
    return name.strip()


def _check_description(description: object) -> str | None:
    if description is not None and (
        not isinstance(description, str) or len(description) > DESCRIPTION_LIMIT
    ):
        raise MetadataError(f"description must be a string of at most {DESCRIPTION_LIMIT} characters")
    return description


def by_name(session: Session, facility_id: int, name: str) -> UploadTemplate | None:
    return session.scalar(
        select(UploadTemplate).where(
            UploadTemplate.facility_id == facility_id, UploadTemplate.name == name
        )
    )


def list_templates(session: Session, facility_id: int | None) -> list[UploadTemplate]:
    """A facility's templates by name; every facility's when ``facility_id`` is None."""
    query = select(UploadTemplate).order_by(UploadTemplate.facility_id, UploadTemplate.name)
    if facility_id is not None:
        query = query.where(UploadTemplate.facility_id == facility_id)
    return list(session.scalars(query))


def _flush_unique(session: Session, template: UploadTemplate) -> None:
    try:
        with session.begin_nested():
            session.add(template)
    except IntegrityError as exc:
        raise TemplateNameTaken(f"a template named {template.name!r} already exists") from exc


def create_template(session: Session, user: User, facility_id: int, body: dict) -> UploadTemplate:
    unknown = set(body) - {"name", "description", "attributes"}
    if unknown:
        raise MetadataError(f"unknown fields: {', '.join(sorted(unknown))}")
    name = _check_name(body.get("name"))
    attributes = normalise_attributes(body.get("attributes"), template=True)
    if not attributes:
        raise MetadataError("a template needs at least one attribute")
    if by_name(session, facility_id, name) is not None:
        raise TemplateNameTaken(f"a template named {name!r} already exists")
    template = UploadTemplate(
        facility_id=facility_id, name=name, description=_check_description(body.get("description")),
        attributes=attributes, created_by=user.id, updated_by=user.id,
    )
    _flush_unique(session, template)
    return template


def update_template(session: Session, user: User, template: UploadTemplate, body: dict) -> None:
    """Change name, description or attributes; ``attributes`` replaces the whole set.
    Batches that already applied the template keep the values they applied."""
    unknown = set(body) - {"name", "description", "attributes"}
    if unknown:
        raise MetadataError(f"unknown fields: {', '.join(sorted(unknown))}")
    if "name" in body:
        name = _check_name(body["name"])
        other = by_name(session, template.facility_id, name)
        if other is not None and other.id != template.id:
            raise TemplateNameTaken(f"a template named {name!r} already exists")
        template.name = name
    if "description" in body:
        template.description = _check_description(body["description"])
    if "attributes" in body:
        attributes = normalise_attributes(body["attributes"], template=True)
        if not attributes:
            raise MetadataError("a template needs at least one attribute")
        template.attributes = attributes
    template.updated_by = user.id
    template.updated_at = utcnow()
    _flush_unique(session, template)
