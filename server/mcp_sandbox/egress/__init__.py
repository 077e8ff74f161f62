"""The way out of an egress sandbox: the proxy's Docker objects and the link a sandbox gets.

May import: engine and below.
"""
