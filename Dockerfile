# dspex image for docker-compose.yml: the worker, the optimizer service and,
# with the `lm` target, the local LM server (llama-cpp-python built from source).
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY dspex ./dspex
COPY infra ./infra
COPY examples ./examples
RUN pip install --no-cache-dir --constraint constraints.txt .
ENV DSPEX_INFRA_DIR=/app/infra
USER nobody
ENTRYPOINT ["dspex"]

FROM base AS lm
USER root
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && CMAKE_BUILD_PARALLEL_LEVEL=4 pip install --no-cache-dir --constraint constraints.txt '.[local-lm]' \
    && apt-get purge -y build-essential cmake && apt-get autoremove -y \
    && rm -rf /var/lib/apt/lists/*
USER nobody
ENV DSPEX_LM_HOST=0.0.0.0 DSPEX_STATE_DIR=/tmp/dspex
EXPOSE 8080
CMD ["lm", "serve"]
