# The standby image: what a proxy slot runs while it stands by. Its ENTRYPOINT is
# `meshctl standby`: the health port only (/healthz/ready 200), exit 0 on SIGTERM; it accepts
# and ignores the slot arguments of `meshctl run`. Build from the repository root:
#   docker build -f deploy/images/standby.Dockerfile -t ghcr.io/meshctl/standby:0.1.0 .
FROM python:3.11-slim

WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# No Envoy and no Kubernetes client: only what `meshctl standby` imports. The last command
# fails the build if a dependency it needs is missing.
RUN pip install --no-cache-dir --no-deps . \
 && pip install --no-cache-dir "typer>=0.12" "prometheus-client>=0.20" "psutil>=6.0" "PyYAML>=6.0" \
 && rm -rf /src \
 && meshctl standby --help > /dev/null

RUN groupadd --gid 1337 meshctl \
 && useradd --uid 1337 --gid 1337 --no-create-home --shell /usr/sbin/nologin meshctl

WORKDIR /
USER 1337:1337
ENTRYPOINT ["meshctl", "standby"]
