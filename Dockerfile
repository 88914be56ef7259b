# One image for every robmon service (scheduler, worker, ingester, dashboard) and for the MLflow
# tracking server of the compose stack. CPU build of PyTorch by default (no CUDA libraries).
#
# GPU workers: build a second image with PyTorch's CUDA wheels and run `robmon worker --device cuda`
# on a host with the NVIDIA container toolkit:
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 -t robmon:cuda .
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OMP_NUM_THREADS=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    ROBMON_HOME=/var/lib/robmon

# torch first, from the chosen index: installing robmon afterwards must not pull another build
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"

WORKDIR /app
COPY pyproject.toml README.md ./
COPY monitor ./monitor
COPY migrations ./migrations
COPY dashboards ./dashboards
RUN pip install ".[postgres]"

RUN useradd --system --create-home --uid 10001 robmon \
    && mkdir -p /var/lib/robmon /mlartifacts \
    && chown robmon /var/lib/robmon /mlartifacts
USER robmon

# 8050: dashboard; 9100: /healthz and /metrics of the other services
EXPOSE 8050 9100
ENTRYPOINT ["robmon"]
CMD ["--help"]
