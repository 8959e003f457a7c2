# k8s-watcher daemon: informers + gRPC plugin server (registry: grpc) + /healthz, /metrics.
#
#   docker build -t k8s-watcher:0.1.0 .
#   docker run -d --name k8s-watcher --read-only --tmpfs /tmp \
#     -p 127.0.0.1:7777:7777 -p 127.0.0.1:9464:9464 \
#     -v k8s-watcher-cache:/var/lib/k8s-watcher \
#     -v "$HOME/.kube/config:/home/watcher/.kube/config:ro" k8s-watcher:0.1.0
#
# The root filesystem may be read-only: the cache volume is the one place written
# (and /tmp, which Python may use). The kubeconfig is read inside the container: file
# paths it names must be mounted too, 127.0.0.1 servers are the container's own, and
# exec credential plugins (aws, gcloud, kubelogin...) are not in the image. In a pod
# with no kubeconfig mounted, it watches the pod's own cluster (deploy/kubernetes).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# README.md* : optional (pyproject names it as readme; the build only warns if absent).
COPY pyproject.toml README.md* ./
COPY watcher ./watcher
RUN pip install --no-cache-dir . && cd / && rm -rf /src
WORKDIR /

RUN groupadd --system --gid 10001 watcher \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/watcher --create-home --shell /usr/sbin/nologin watcher \
 && mkdir -p /var/lib/k8s-watcher \
 && chown 10001:10001 /var/lib/k8s-watcher

# The SQLite cache (plus its -wal and -shm files) lives here; one writer at a time.
VOLUME ["/var/lib/k8s-watcher"]
WORKDIR /home/watcher
# Numeric so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001

# 7777: gRPC plugin server (registry: grpc). 9464: /healthz and /metrics.
EXPOSE 7777 9464

# Healthy while the cache writer runs. Assumes --http-address port 9464 as in CMD.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["k8s-watcher"]
# The defaults (127.0.0.1) would only be reachable from inside the container itself:
# listen on 0.0.0.0 and restrict exposure with the published ports or a NetworkPolicy.
# --cache is explicit so the path does not depend on HOME or XDG_STATE_HOME.
CMD ["serve", "--grpc-address", "0.0.0.0:7777", "--http-address", "0.0.0.0:9464", "--cache", "/var/lib/k8s-watcher/cache.db", "--log-format", "json"]
