"""The fleet rollout: one image to every pod of a label selector, in batches, with canaries,
a failure budget and a record on each pod, resumable by running the same command again.

  selector   label selectors: parsed, canonical, matched (pure)
  record     the per-pod record (`meshctl.io/rollout`) and each pod's phase in a run (pure)
  plan       the rollout's pure decisions: eligibility, batches, patches, when to stop
  report     each selected pod's state in a run, and the run's summary (its JSON)
  gate       which pods of a batch may start now, by their disruption budgets; the tallies
  ephemeral  `--handover ephemeral`: its record, its patches, each state's next step (pure)
  ephemeral_run  `--handover ephemeral`: each pod's handover started, followed and ended
  dry_run    the plan `--dry-run` prints (pure)
  run        `meshctl rollout`: the list, the watch, the loop
  status     `meshctl rollout status`: what the pods' records say

Importing this package stays cheap: only `run`, `ephemeral_run` and `status` talk to
Kubernetes (through `meshctl.kube`).
"""
