# The in-pod runtime: training worker and model server (modelfleet[runtime], with torch).
#   docker build -f images/runtime.Dockerfile -t ghcr.io/modelfleet/runtime:0.1.0 .
# The default torch wheel supports CUDA GPUs; it also runs on CPU-only nodes.
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN python -m venv /venv && /venv/bin/pip install --no-cache-dir ".[runtime]"

FROM python:3.11.11-slim-bookworm
COPY --from=build /venv /venv
ENV PATH=/venv/bin:$PATH PYTHONUNBUFFERED=1
USER 65532:65532
WORKDIR /home/modelfleet
EXPOSE 8080 29500
CMD ["python", "-m", "modelfleet.runtime.serve"]
