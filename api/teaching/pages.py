"""The teaching file's pages at /teaching: search, a case, a quiz (a random published case
with its diagnosis hidden until asked), on the same sign-in as the dashboard (/login).

Server-rendered from the same reads as /api/v1/teaching (pipeline/teaching/cases.py), with
the same roles and visibility; the key image comes from the API route (session cookie).
"""

from __future__ import annotations

import secrets

from flask import Blueprint, Response, redirect, render_template, request, url_for
from sqlalchemy import func, select

from api.http.auth import signed_in_user
from api.http.context import db
from api.http.errors import ApiError
from pipeline.models import CaseState, TeachingCase, User
from pipeline.teaching import cases

blueprint = Blueprint("teaching_pages", __name__, template_folder="templates")


def _reader() -> User | Response:
    user = signed_in_user()
    if user is None:
        return redirect(url_for("accounts.login_form", next=request.full_path))
    if not cases.roles_of(user) & cases.READER_ROLES:
        raise ApiError(403, "the teaching file is for teaching users, radiologists and publishers")
    return user


def _int(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name, "")
    return max(low, min(high, int(raw))) if raw.isdigit() else default


@blueprint.route("/", methods=["GET"])
def search():  # noqa: ANN201
    user = _reader()
    if isinstance(user, Response):
        return user
    args = request.args
    difficulty = args.get("difficulty") or None
    if difficulty not in (None, "primary", "intermediate", "advanced"):
        raise ApiError(400, "difficulty is one of primary, intermediate, advanced")
    query = cases.SearchQuery(
        text=(args.get("q") or "")[:200] or None, modality=(args.get("modality") or "")[:16] or None,
        body_part=(args.get("body_part") or "")[:64] or None, difficulty=difficulty,
        diagnosis=(args.get("diagnosis") or "")[:300] or None, page=_int("page", 1, 1, 10000),
        per_page=20, unknown=args.get("unknown") == "1")
    result = cases.search(db(), user, query)
    return render_template("teaching/search.html", user=user, result=result, query=query)


@blueprint.route("/cases/<id:case_id>", methods=["GET"])
def case(case_id: int):  # noqa: ANN201
    user = _reader()
    if isinstance(user, Response):
        return user
    try:
        found = cases.get_visible(db(), user, case_id)
    except cases.CaseError as exc:
        raise ApiError(exc.status, str(exc)) from exc
    unknown = request.args.get("unknown") == "1"
    return render_template("teaching/case.html", user=user,
                           case=cases.describe(db(), user, found, unknown=unknown), unknown=unknown)


@blueprint.route("/quiz", methods=["GET"])
def quiz():  # noqa: ANN201
    user = _reader()
    if isinstance(user, Response):
        return user
    session = db()
    ids = session.scalars(select(TeachingCase.id).where(TeachingCase.state == CaseState.PUBLISHED)
                          .order_by(TeachingCase.id)).all()
    if not ids:
        return render_template("teaching/quiz.html", user=user, case=None, count=0)
    chosen = cases.get_visible(session, user, ids[secrets.randbelow(len(ids))])
    total = session.scalar(select(func.count()).select_from(TeachingCase)
                           .where(TeachingCase.state == CaseState.PUBLISHED))
    return render_template("teaching/quiz.html", user=user, count=total,
                           case=cases.describe(session, user, chosen))
