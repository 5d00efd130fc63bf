"""Moved: the in-pod swap is `meshctl.podswap`, the fleet rollout `meshctl.rollout`, the
Kubernetes client `meshctl.kube`. Only the name a test still imports is kept here, for the
transition; nothing in meshctl imports this package (an import-linter contract)."""
