"""The analytics benchmark's data and its naive baselines.

``seed`` writes N uploads over 50 facilities and two years straight into PostgreSQL with
generate_series (minutes for a million rows, where the ORM would take an hour): batches per
facility and day, ten uploads per study, one instance per parsed upload and one delivery per
instance with a realistic latency. ``raw_*`` answer the dashboard's questions from the raw
rows, the way they were answered before materialisation: the baseline the benchmark beats.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.engine import Engine

FACILITIES = 50
USERS_PER_FACILITY = 5
DAYS = 730
MODALITIES = ("CT", "MR", "CR", "US")


def seed(engine: Engine, uploads: int, end: datetime) -> dict:
    """Returns the ids the benchmark needs. ``end``: the newest upload's time (hour-aligned)."""
    start = end - timedelta(days=DAYS)
    span = DAYS * 86400
    params = {"n": uploads, "start": start, "span": span, "f": FACILITIES, "u": USERS_PER_FACILITY,
              "days": DAYS}
    statements = [
        "INSERT INTO facilities (id, name, created_at) SELECT f, 'Bench Facility ' || lpad(f::text, 2, '0'),"
        " :start FROM generate_series(1, :f) f",
        "INSERT INTO users (id, email, role, facility_id, token_hash, created_at)"
        " SELECT (f - 1) * :u + k, 'radiographer' || k || '@facility' || f || '.bench', 'uploader', f,"
        " md5('bench-user-' || f || '-' || k) || md5('salt' || f || '-' || k), :start"
        " FROM generate_series(1, :f) f, generate_series(1, :u) k",
        "INSERT INTO destinations (id, name, kind, options, enabled, created_at)"
        " VALUES (1, 'bench-pacs', 'folder', '{}', true, :start)",
        "INSERT INTO batches (id, facility_id, user_id, state, created_at, last_activity_at)"
        " SELECT (f - 1) * :days + d + 1, f, (f - 1) * :u + 1, 'done',"
        " :start + make_interval(days => d), :start + make_interval(days => d)"
        " FROM generate_series(1, :f) f, generate_series(0, :days - 1) d",
        # Ten consecutive uploads share a study, a facility and a user.
        "CREATE TEMP TABLE seed_uploads ON COMMIT DROP AS SELECT i, i / 10 AS g,"
        " (i / 10) % :f + 1 AS facility_id,"
        " ((i / 10) % :f) * :u + ((i / 10) / :f) % :u + 1 AS user_id,"
        " :start + make_interval(secs => i::double precision * :span / :n) AS created_at,"
        " CASE WHEN i % 100 < 95 THEN 'parsed' WHEN i % 100 < 98 THEN 'quarantined'"
        "      WHEN i % 100 = 98 THEN 'expired' ELSE 'terminated' END AS state"
        " FROM generate_series(0, :n - 1) i",
        "INSERT INTO uploads (id, batch_id, facility_id, user_id, filename, length, \"offset\", state,"
        " quarantine_reason, created_at, updated_at, expires_at, sop_instance_uid)"
        " SELECT md5(i::text),"
        " (facility_id - 1) * :days + LEAST(floor(i::double precision * :days / :n)::int, :days - 1) + 1,"
        " facility_id, user_id, 'f.dcm', 50000 + (i::bigint * 7919) % 950000,"
        " 50000 + (i::bigint * 7919) % 950000, state, CASE WHEN state = 'quarantined' THEN 'not_dicom' END,"
        " created_at, created_at, created_at + interval '1 day',"
        " CASE WHEN state = 'parsed' THEN '2.25.' || i END FROM seed_uploads",
        "INSERT INTO studies (id, facility_id, study_instance_uid, modality, created_at)"
        " SELECT g + 1, min(facility_id), '1.2.826.0.1.' || g,"
        " (ARRAY['CT','MR','CR','US'])[g % 4 + 1], min(created_at) FROM seed_uploads GROUP BY g",
        "INSERT INTO series (id, study_id, series_instance_uid, modality)"
        " SELECT id, id, study_instance_uid || '.1', modality FROM studies",
        "INSERT INTO instances (id, facility_id, series_id, study_id, sop_instance_uid, sop_class_uid,"
        " object_key, size, sha256, batch_id, upload_id, created_at)"
        " SELECT i + 1, facility_id, g + 1, g + 1, '2.25.' || i, '1.2.840.10008.5.1.4.1.1.2',"
        " 'k/' || i, 50000 + (i::bigint * 7919) % 950000, md5(i::text) || md5(i::text),"
        " (facility_id - 1) * :days + LEAST(floor(i::double precision * :days / :n)::int, :days - 1) + 1,"
        " md5(i::text), created_at FROM seed_uploads WHERE state = 'parsed'",
        # One delivery per instance: 0.1 % dead letters, the rest delivered in 0.5 s - 2 min.
        "INSERT INTO deliveries (id, instance_id, destination_id, study_id, batch_id, state, attempts,"
        " created_at, updated_at, delivered_at, latency_ms)"
        " SELECT i.id, i.id, 1, i.study_id, i.batch_id,"
        " CASE WHEN i.id % 1000 = 0 THEN 'failed' ELSE 'delivered' END, 1, i.created_at,"
        " i.created_at + make_interval(secs => (500 + (i.id::bigint * 104729) % 120000) / 1000.0),"
        " CASE WHEN i.id % 1000 <> 0 THEN i.created_at"
        "      + make_interval(secs => (500 + (i.id::bigint * 104729) % 120000) / 1000.0) END,"
        " CASE WHEN i.id % 1000 <> 0 THEN 500 + (i.id::bigint * 104729) % 120000 END"
        " FROM instances i",
    ]
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement), params)
        for table in ("facilities", "users", "destinations", "batches", "studies", "series", "instances",
                      "deliveries"):
            conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"  # noqa: S608 - fixed names
                              f" (SELECT max(id) FROM {table}))"))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
    return {"start": start, "end": end}


def add_hour(engine: Engine, at: datetime, count: int, offset: int) -> None:
    """``count`` new parsed uploads (with instance and delivery) in the hour starting ``at``,
    written now: for an old hour, late rows. Their UIDs use a root the seed never uses."""
    params = {"at": at, "n": count, "o": offset}
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO uploads (id, batch_id, facility_id, user_id, filename, length, \"offset\", state,"
            " created_at, updated_at, expires_at, sop_instance_uid)"
            " SELECT md5('late' || (:o + k)), 1, 1, 1, 'f.dcm', 100000, 100000, 'parsed',"
            " :at + make_interval(secs => k * 3600.0 / :n), now(), :at + interval '1 day',"
            " '2.999.' || (:o + k) FROM generate_series(0, :n - 1) k"), params)
        conn.execute(text(
            "WITH new AS (INSERT INTO instances (facility_id, series_id, study_id, sop_instance_uid,"
            " sop_class_uid, object_key, size, sha256, batch_id, upload_id, created_at)"
            " SELECT 1, 1, 1, '2.999.' || (:o + k), '1.2.840.10008.5.1.4.1.1.2', 'k', 100000,"
            " md5('x'), 1, md5('late' || (:o + k)), now() FROM generate_series(0, :n - 1) k RETURNING id)"
            " INSERT INTO deliveries (instance_id, destination_id, study_id, batch_id, state, attempts,"
            " created_at, updated_at, delivered_at, latency_ms)"
            " SELECT id, 1, 1, 1, 'delivered', 1, now(), now(), now(), 1500 FROM new"), params)


# --------------------------------------------------------------------------- raw baselines

RAW_TOTALS = """
SELECT u.facility_id, count(*) AS uploads, sum(u.length) AS bytes,
       count(DISTINCT i.study_id) AS studies,
       sum(CASE WHEN u.state = 'quarantined' THEN 1 ELSE 0 END) AS quarantined,
       count(d.id) FILTER (WHERE d.state = 'delivered') AS delivered,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY d.latency_ms) AS p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY d.latency_ms) AS p95
FROM uploads u
LEFT JOIN instances i ON i.facility_id = u.facility_id AND i.sop_instance_uid = u.sop_instance_uid
LEFT JOIN deliveries d ON d.instance_id = i.id AND i.upload_id = u.id
WHERE u.created_at >= :start AND u.created_at < :end {scope}
GROUP BY u.facility_id
"""

RAW_SERIES = """
SELECT date_trunc(:unit, u.created_at AT TIME ZONE 'UTC') AS bucket, count(*) AS uploads,
       sum(u.length) AS bytes, count(d.id) FILTER (WHERE d.state = 'delivered') AS delivered,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY d.latency_ms) AS p95
FROM uploads u
LEFT JOIN instances i ON i.facility_id = u.facility_id AND i.sop_instance_uid = u.sop_instance_uid
LEFT JOIN deliveries d ON d.instance_id = i.id AND i.upload_id = u.id
WHERE u.created_at >= :start AND u.created_at < :end {scope}
GROUP BY 1 ORDER BY 1
"""

RAW_USERS = """
SELECT u.user_id, count(*) AS uploads, sum(u.length) AS bytes,
       sum(CASE WHEN u.state = 'quarantined' THEN 1 ELSE 0 END) AS quarantined,
       count(d.id) FILTER (WHERE d.state = 'delivered') AS delivered,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY d.latency_ms) AS p95
FROM uploads u
LEFT JOIN instances i ON i.facility_id = u.facility_id AND i.sop_instance_uid = u.sop_instance_uid
LEFT JOIN deliveries d ON d.instance_id = i.id AND i.upload_id = u.id
WHERE u.created_at >= :start AND u.created_at < :end AND u.facility_id = :facility
GROUP BY u.user_id
"""


def raw_overview(conn, start: datetime, end: datetime, unit: str) -> dict:  # noqa: ANN001
    """The admin overview from raw rows: per-facility totals and the volume series."""
    params = {"start": start, "end": end, "unit": unit}
    totals = conn.execute(text(RAW_TOTALS.format(scope="")), params).all()
    series = conn.execute(text(RAW_SERIES.format(scope="")), params).all()
    return {"facilities": {r.facility_id: r for r in totals}, "series": series}


def raw_facility(conn, start: datetime, end: datetime, unit: str, facility_id: int) -> dict:  # noqa: ANN001
    params = {"start": start, "end": end, "unit": unit, "facility": facility_id}
    scope = "AND u.facility_id = :facility"
    return {
        "totals": conn.execute(text(RAW_TOTALS.format(scope=scope)), params).all(),
        "series": conn.execute(text(RAW_SERIES.format(scope=scope)), params).all(),
        "users": conn.execute(text(RAW_USERS), params).all(),
    }


def hour_start(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
