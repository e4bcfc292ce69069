"""Application factory: settings in, Flask app out; one database session per request."""

from __future__ import annotations

import logging

from flask import Flask, g, request
from werkzeug.middleware.proxy_fix import ProxyFix

from api.accounts import audit_log, reader_assignments, sign_in
from api.analytics import drilldown as analytics
from api.dashboard import forecast as dashboard_forecast
from api.dashboard import pages as dashboard
from api.delivery import deliveries
from api.editing import study_organisation, templates
from api.events import history as event_history
from api.exports import definitions as exports
from api.forecasting import forecasts
from api.graphql import view as graphql_view
from api.http import errors, health, observability, routing
from api.http.context import Resources
from api.http.limits import RateLimiter
from api.http.shedding import LoadShedder
from api.intake import batches, conflicts, files
from api.intake import studies as study_list
from api.lifecycle import storage as storage_api
from api.reports import comments as report_comments
from api.reports import consults as report_consults
from api.reports import notifications as report_notifications
from api.reports import pages as report_pages
from api.reports import reports as radiology_reports
from api.teaching import cases as teaching_cases
from api.teaching import pages as teaching_pages
from api.web import assets as web_assets
from api.web import pages as web_pages
from config import Settings, load_settings
from config.logging import configure_logging
from pipeline.db.engine import make_autocommit_engine, make_engine, make_session_factory
from pipeline.db.migrate import SchemaGuard
from pipeline.ops import outbox
from pipeline.ops.telemetry import Telemetry
from pipeline.storage import ObjectStore, open_store
from pipeline.storage.byte_cache import ByteCache, CachedStore
from workers import chains


class MethodOverride:
    """tus clients behind proxies that only pass GET/POST send X-HTTP-Method-Override."""

    def __init__(self, wsgi_app) -> None:  # noqa: ANN001
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):  # noqa: ANN001, ANN204
        override = environ.get("HTTP_X_HTTP_METHOD_OVERRIDE", "").upper()
        if environ.get("REQUEST_METHOD") == "POST" and override in {"PATCH", "DELETE", "HEAD"}:
            environ["REQUEST_METHOD"] = override
        return self.wsgi_app(environ, start_response)


def _open_store(settings: Settings) -> ObjectStore:
    """The object store, with the host's byte cache in front as in the workers: an original
    the API stores whole (pipeline/intake/uploads.py) is then read by the parse step from the local
    copy instead of an S3 GET whenever that worker runs on this host (single-host installs,
    the benchmarks); elsewhere the copy only serves this host's own reads of it."""
    store = open_store(settings.storage_url)
    if settings.byte_cache_mb > 0 and settings.storage_url.startswith("s3://"):
        cache = ByteCache(settings.var_dir / "byte-cache", settings.byte_cache_mb * 1024**2)
        return CachedStore(store, cache)  # type: ignore[return-value]
    return store


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or load_settings()
    configure_logging()
    app = Flask(__name__)
    app.url_map.converters.update(routing.CONVERTERS)  # before any blueprint's rules
    app.wsgi_app = MethodOverride(app.wsgi_app)  # type: ignore[method-assign]
    if settings.trusted_proxies > 0:
        # The client's address (audit trail, sign-in limit), scheme (the cookie's Secure flag)
        # and host as the trusted proxies saw them; headers beyond that many hops are ignored,
        # so a client cannot forge its address by sending X-Forwarded-For itself.
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n,  # type: ignore[method-assign]
                                x_port=n, x_prefix=0)
    # Outermost: a refused request costs nothing of what follows (api/http/shedding.py).
    app.wsgi_app = LoadShedder(app.wsgi_app, settings.max_in_flight,  # type: ignore[method-assign]
                               settings.shed_queue_ms)
    engine = make_engine(settings.database_url)
    app.extensions["relaypacs"] = Resources(
        settings=settings,
        session_factory=make_session_factory(engine),
        store=_open_store(settings),
        limiter=RateLimiter(dict(settings.rate_limits), settings.redis_url),
        telemetry=Telemetry(settings.redis_url),
    )
    # Reads outside a transaction (api.http.context.snapshot_db) borrow from their own pool.
    app.extensions["relaypacs.autocommit"] = make_autocommit_engine(engine)
    # Events a request wrote into its transaction go out right after its commit (the outbox).
    relay = outbox.process_relay(engine, settings.redis_url, settings.events_amqp_url,
                                 settings.events_amqp_exchange, chains.after_events)
    outbox.relay_after_commit(app.extensions["relaypacs"].session_factory, relay.kick)
    # For a request that commits outside a session (a one-statement creation on autocommit).
    app.extensions["relaypacs.relay"] = relay

    @app.teardown_request
    def _close_session(_exc: BaseException | None) -> None:
        for name in ("session", "snapshot_session"):
            session = g.pop(name, None)
            if session is not None:
                session.close()

    observability.register(app)
    errors.register(app)
    # Checked now and, until at head, again at most every few seconds: a process started
    # before or during `relaypacs db upgrade` serves 503s (not 500s), then works without a
    # restart. /healthz stays up: it is liveness, and a restart would not help.
    schema = app.extensions["relaypacs.schema"] = SchemaGuard(engine)
    if problem := schema.problem():
        logging.getLogger(__name__).warning("answering 503 until the schema is at head: %s", problem)

    @app.before_request
    def _require_schema():  # noqa: ANN202
        if request.endpoint == "health.healthz":
            return None
        problem = schema.problem()
        if problem is None:
            return None
        response = errors.error_response(503, problem)
        response.headers["Retry-After"] = str(int(schema.recheck_seconds))
        return response

    app.register_blueprint(health.blueprint)
    app.register_blueprint(files.blueprint, url_prefix="/api/v1/files")
    app.register_blueprint(batches.blueprint, url_prefix="/api/v1/batches")
    app.register_blueprint(study_list.blueprint, url_prefix="/api/v1/studies")
    app.register_blueprint(study_organisation.blueprint, url_prefix="/api/v1/batches")
    app.register_blueprint(conflicts.blueprint, url_prefix="/api/v1/batches")
    app.register_blueprint(templates.blueprint, url_prefix="/api/v1/templates")
    app.register_blueprint(deliveries.blueprint, url_prefix="/api/v1/deliveries")
    app.register_blueprint(storage_api.blueprint, url_prefix="/api/v1/storage")
    app.register_blueprint(audit_log.blueprint, url_prefix="/api/v1/audit")
    app.register_blueprint(reader_assignments.blueprint, url_prefix="/api/v1/reader-assignments")
    app.register_blueprint(sign_in.api_blueprint, url_prefix="/api/v1/auth")
    app.register_blueprint(sign_in.blueprint)
    app.register_blueprint(analytics.blueprint, url_prefix="/api/v1/analytics")
    app.register_blueprint(forecasts.blueprint, url_prefix="/api/v1/forecasts")
    app.register_blueprint(exports.blueprint, url_prefix="/api/v1/exports")
    app.register_blueprint(radiology_reports.blueprint, url_prefix="/api/v1/reports")
    app.register_blueprint(report_pages.blueprint, url_prefix="/reports")
    app.register_blueprint(report_comments.blueprint, url_prefix="/api/v1/reports")
    app.register_blueprint(report_consults.blueprint, url_prefix="/api/v1/reports")
    app.register_blueprint(report_notifications.blueprint, url_prefix="/api/v1/notifications")
    app.register_blueprint(dashboard.blueprint, url_prefix="/dashboard")
    app.register_blueprint(event_history.blueprint, url_prefix="/api/v1/events")
    app.register_blueprint(graphql_view.blueprint, url_prefix="/api/v1/graphql")
    app.register_blueprint(teaching_cases.blueprint, url_prefix="/api/v1/teaching")
    app.register_blueprint(teaching_pages.blueprint, url_prefix="/teaching")
    app.add_template_global(dashboard_forecast.facility_forecast, "facility_forecast")
    app.register_blueprint(web_pages.blueprint)
    web_assets.serve(app)
    return app
