"""The way out of an egress sandbox: the proxy's Docker objects and the link a sandbox gets;
the credentials the proxy injects, and the CA behind the certificates it serves for them.

May import: engine and below.
"""
