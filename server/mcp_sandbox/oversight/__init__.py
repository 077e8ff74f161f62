"""The human in the loop and the record: approvals, the call wrapper, audit, anomaly flags.

May import: service and below.
"""
