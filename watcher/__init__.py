"""k8s-watcher: a live, on-disk inventory of Kubernetes clusters for CloudQuery."""

__version__ = "0.1.0"
