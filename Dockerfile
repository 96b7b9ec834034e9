# syntax=docker/dockerfile:1
# One image for api, worker and migrate. Build stage installs into a venv; the final stage has no compilers.
ARG PYTHON=python:3.11-slim-bookworm

FROM ${PYTHON} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# PyPI's Linux x86_64 torch wheels are CUDA builds: the same image runs on GPU and CPU workers.
RUN pip install torch==2.14.1 torchvision==0.29.1
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY worker ./worker
COPY migrations ./migrations
# Editable, so Alembic finds /app/migrations beside the package.
RUN pip install -e '.[prod]'

FROM ${PYTHON}
RUN useradd --create-home --uid 10001 finetune \
    && mkdir -p /var/lib/finetune /models \
    && chown finetune:finetune /var/lib/finetune /models
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=finetune:finetune /app /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    FINETUNE_VAR_DIR=/var/lib/finetune \
    FINETUNE_MODELS_DIR=/models
WORKDIR /app
USER finetune
EXPOSE 8000
CMD ["finetune", "api", "--host", "0.0.0.0", "--port", "8000"]
