"""The project a sandbox sees: workdir, mask scan, the copy out, read back, changes,
write-back, and the per-call session that holds them.

May import: sandbox and below.
"""
