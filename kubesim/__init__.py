"""A Kubernetes cluster without Kubernetes, for the tests (`tests/k8s/`) and the rollout
benchmark (`bench/rollout_scale.py`): kmock's API server on a real HTTP port (`apiserver`)
and a fake kubelet that plays the node through the real `kubernetes` client (`kubelet`).

Neither `meshctl` (src/) nor anything it ships imports this package: it stands beside the
tests and the benchmarks, both of which put the repository root on `sys.path`.
"""
