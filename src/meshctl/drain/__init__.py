"""The drain window: when an old Envoy generation has finished its work.

- `policy`:      the settings (minimum, maximum, Envoy's drain strategy, stop grace)
- `window`:      the pure decision: keep waiting, idle (end early), or deadline (force)
- `connections`: how many client connections a generation still holds, from the kernel

Envoy drains on fixed timers only; meshctl ends the window as soon as the old generation is idle
and never later than `drain_max_s`. Ending a parent early is safe only with the stand-in in
`meshctl.envoy.standin`; the supervisor sets that up before it acts on a verdict from here.
"""
