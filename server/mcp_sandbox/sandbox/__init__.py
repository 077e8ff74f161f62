"""One container's life: the spec (PURE), the runner, the warm pool and its stub, the work
after the reply, host admission and the slot queue, the seccomp profile.

May import: egress, engine and below.
"""
