# One image for every RelayPACS process: the API (gunicorn), each Celery worker pool, beat and
# the one-shot migration. docker-compose.yml picks the process with `command:`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RELAYPACS_VAR_DIR=/var/lib/relaypacs

WORKDIR /app

# Dependencies first, so a code change does not reinstall them: the runtime lock (`make lock`),
# the same versions `make demo` and CI install; gunicorn is one of them.
COPY requirements/runtime.txt requirements/runtime.txt
RUN pip install -r requirements/runtime.txt

COPY . .
RUN pip install --no-deps . \
    && useradd --system --uid 10001 --home-dir /var/lib/relaypacs --create-home relaypacs

USER relaypacs
EXPOSE 8000
CMD ["gunicorn", "-w", "4", "-b", "0.0.0.0:8000", "api:create_app()"]
