# The worker image for docker-compose.yml: worker, beat, flower, migrate and serve-metrics all run from it.
FROM python:3.11.10-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md alembic.ini beat_schedule.py ./
COPY app ./app
COPY workers ./workers
COPY alembic ./alembic
COPY client ./client
# Editable: `panic-metrics migrate` finds alembic.ini beside the app package.
# The client in the same command: the worker depends on it, and it is not on PyPI.
RUN pip install -e ./client -e . \
    && useradd --system --uid 10001 --home-dir /var/lib/panic-metrics panic \
    && mkdir -p /var/lib/panic-metrics \
    && chown panic /var/lib/panic-metrics
USER panic
