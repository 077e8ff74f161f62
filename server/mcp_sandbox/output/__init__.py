"""PURE: what leaves a sandbox: capture, scrub, neutralise and cut; the result shape.

May import: policy, errors, constants.
"""
