# syntax=docker/dockerfile:1
# The crawler image: `crawler` is the entrypoint, a Celery worker the default command.
#   docker build -t crawler .
#   docker run --rm -e CRAWLER_REDIS_URL=redis://host:6379/0 crawler worker --concurrency 100
# Used by docker-compose.yml for the workers, Flower and the one-shot tools.

# --- build: a virtualenv with the project and its dependencies -------------------------------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, from pyproject.toml alone (empty package stubs stand in for the source),
# so editing the code does not reinstall them. Every dependency ships a manylinux wheel for
# CPython 3.11: no compiler is needed.
COPY pyproject.toml README.md ./
RUN mkdir crawler workers \
 && touch crawler/__init__.py workers/__init__.py \
 && pip install . \
 && rm -rf crawler workers build *.egg-info

# Then the project itself (a regular, non-editable install into the venv), and a check that
# the installed copy (not the source in /src) imports.
COPY crawler ./crawler
COPY workers ./workers
RUN pip install --no-deps --force-reinstall . \
 && cd / && python -c "import crawler, workers.tasks"

# --- runtime: the venv, the default settings file and an unprivileged user ------------------
FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 crawler \
 && useradd --system --uid 10001 --gid crawler --create-home --home-dir /home/crawler \
      --shell /usr/sbin/nologin crawler
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# Settings read from ./config/crawler.toml (the CRAWLER_* environment overrides it).
COPY config/crawler.toml ./config/crawler.toml
USER crawler:crawler

ENTRYPOINT ["crawler"]
CMD ["worker"]
