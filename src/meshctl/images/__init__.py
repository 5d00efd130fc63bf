"""The image swap in a pod: two proxy slots, the new image started in the standby slot, a hot
restart across the two containers, the old slot returned to standby. (Filled by the pod image
swap issue.)"""
