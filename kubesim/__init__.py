"""A Kubernetes cluster without Kubernetes, for the tests (`tests/k8s/`) and the benchmarks
(`bench/rollout_scale.py`, `bench/pod_readiness.py`):

  apiserver  kmock's API server on a real HTTP port
  kubelet    a fake kubelet that plays the node through the real `kubernetes` client
  readiness  the real kubelet's readiness rules, pure (probes, started/ready, the conditions)
  runtime    what runs the containers: the `Runtime` protocol and `FakeRuntime`

Neither `meshctl` (src/) nor anything it ships imports this package: it stands beside the
tests and the benchmarks, both of which put the repository root on `sys.path`.
"""
