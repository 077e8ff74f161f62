"""Settings and every section model: read once at start-up, then frozen.

May import: policy, errors, constants.
"""
