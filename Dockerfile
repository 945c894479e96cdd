# The edge: `dicom-adapter edge ...` on GKE (see terraform/kubernetes.tf for its flags).
# Build: docker build -t REGION-docker.pkg.dev/PROJECT/REPO/edge:TAG .

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY edge_listener/ edge_listener/
COPY functions/ functions/
RUN python -m venv /opt/dicom-adapter \
    && /opt/dicom-adapter/bin/pip install --no-cache-dir . \
    && find /opt/dicom-adapter -name '__pycache__' -prune -exec rm -rf {} +

FROM python:3.11-slim-bookworm
ENV PATH=/opt/dicom-adapter/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DICOM_ADAPTER_LOG_FORMAT=json \
    DICOM_ADAPTER_HEALTH_PORT=8080
RUN groupadd --system --gid 10001 adapter \
    && useradd --system --uid 10001 --gid adapter --no-create-home --shell /usr/sbin/nologin adapter
COPY --from=build /opt/dicom-adapter /opt/dicom-adapter
USER 10001:10001
# DIMSE, health (GET /healthz, /readyz)
EXPOSE 2575 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('DICOM_ADAPTER_HEALTH_PORT', '8080'), timeout=4)"]
ENTRYPOINT ["dicom-adapter"]
CMD ["edge"]
