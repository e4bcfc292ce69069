"""Teaching file tasks (queue ``teaching``, routed by ``teaching.*``): fill a case from its
source study through de-identification, resume the cases that waited for a restore, mask a
held instance. Thin adapters over pipeline/teaching/preparation.py."""

from __future__ import annotations

from pipeline.models import Preparation, TeachingCase, TeachingInstance
from pipeline.teaching import pixels, preparation
from workers import runtime
from workers.app import app


def _secret() -> bytes:
    settings = runtime.settings()
    return preparation.teaching_secret(settings.teaching_secret, settings.var_dir)


@app.task(name="teaching.prepare_case", acks_late=True, autoretry_for=(OSError,),
          retry_backoff=True, retry_jitter=True, max_retries=5, soft_time_limit=3600)
def prepare_case(case_id: int) -> dict:
    """Idempotent and resumable: each copied instance is committed before the next."""
    settings = runtime.settings()
    try:
        with runtime.session_scope() as session:
            outcome = preparation.prepare_case(
                session, runtime.store(), case_id, secret=_secret(),
                uid_root=settings.teaching_uid_root, restore_tier=settings.storage_restore_tier,
                safe_private=frozenset(settings.teaching_safe_private), checkpoint=session.commit)
    except OSError:
        raise  # the store or the database: retried
    except Exception as exc:
        # The file or the data: say so on the case (what was copied stays committed).
        with runtime.session_scope() as session:
            case = session.get(TeachingCase, case_id)
            if case is not None:
                case.preparation = Preparation.FAILED
                case.preparation_note = f"{type(exc).__name__}: the copy stopped; add the case again"
        raise
    return {"case": case_id, "state": outcome.state, "copied": outcome.copied, "waiting": outcome.waiting}


@app.task(name="teaching.resume_waiting", acks_late=False)
def resume_waiting() -> dict:
    """Cases that waited for cold bytes try again (the restore may be done), and queued
    cases whose task was lost start again; a case whose copy is moving is left alone."""
    with runtime.session_scope() as session:
        ids = preparation.cases_to_resume(session)
    for case_id in ids:
        prepare_case.delay(case_id)
    return {"resumed": list(ids)}


@app.task(name="teaching.mask_instance", acks_late=True)
def mask_instance(instance_id: int, regions: list[list[int]]) -> dict:
    with runtime.session_scope() as session:
        row = session.get_one(TeachingInstance, instance_id)
        preparation.mask(session, runtime.store(), row, [pixels.Rect(*r) for r in regions])
    return {"instance": instance_id, "masked": len(regions)}


@app.task(name="teaching.refresh_package", acks_late=True)
def refresh_package(case_id: int) -> dict:
    """After a held instance was confirmed clean: the key image and the zip again."""
    with runtime.session_scope() as session:
        case = session.get_one(TeachingCase, case_id)
        preparation.refresh_package(session, runtime.store(), case)
    return {"case": case_id}
