# The operator image: modelfleet without torch. Build from the repository root:
#   docker build -f images/operator.Dockerfile -t ghcr.io/modelfleet/operator:0.1.0 .
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN python -m venv /venv && /venv/bin/pip install --no-cache-dir .

FROM python:3.11.11-slim-bookworm
COPY --from=build /venv /venv
ENV PATH=/venv/bin:$PATH PYTHONUNBUFFERED=1
USER 65532:65532
ENTRYPOINT ["modelfleet"]
CMD ["operator"]
