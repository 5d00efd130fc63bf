"""The image swap in a pod: two proxy slots, the new image started in the standby slot, a hot
restart across the two containers, the old slot returned to standby.

  layout     the pod layout contract: slot names, args, ports, volumes, annotations
  reference  image references: validation and comparison (pure)
  inject     `meshctl inject`: manifests in, the two slots added (pure)
  plan       which slot is live, pre-flight, progress, the JSON patches (pure)
  swap       `meshctl upgrade --pod`: the steps, the Events, the rollback (Kubernetes through
             `meshctl.kube`)
  budget     PodDisruptionBudgets: may this pod start its swap now, and why not (pure)
  disruption the fresh reads a budget check needs; `upgrade --pod`'s wait for its budgets
  standby    `meshctl standby`: what a slot runs while it stands by
"""
