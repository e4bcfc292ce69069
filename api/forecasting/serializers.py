"""How a stored forecast answers over HTTP and in the CLI: dates as ISO strings (days for
daily forecasts, instants in UTC for hourly ones), the model, its backtest and its points."""

from __future__ import annotations

from datetime import UTC, datetime

from pipeline.models import UploadForecast


def _iso(value: datetime | None, granularity: str) -> str | None:
    if value is None:
        return None
    if granularity == "day":
        return value.date().isoformat()
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


def forecast_json(row: UploadForecast) -> dict:
    granularity = row.granularity or "day"
    backtest = row.backtest or {}
    return {
        "id": row.id, "facility_id": row.facility_id, "metric": row.metric, "granularity": granularity,
        "created_at": row.created_at.isoformat(), "horizon": row.horizon, "model": row.model,
        "order": row.model_order, "aic": row.aic,
        "train_start": _iso(row.train_start, granularity), "train_end": _iso(row.train_end, granularity),
        "fallback_reason": row.fallback_reason, "regressors": row.regressors,
        "candidates": row.candidates, "backtest": row.backtest, "points": row.points,
        # Daily forecasts (issue 20): why the model won, what it was compared with, how the
        # intervals were made, and a short history's note; also inside ``backtest``.
        "reason": backtest.get("reason"), "compared": backtest.get("compared", []),
        "intervals": backtest.get("intervals"), "history_note": backtest.get("history_note"),
    }
