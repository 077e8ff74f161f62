"""Building the images offline: the Debian base, the runtime, the egress proxy, the server.

May import: engine, config and below.
"""
