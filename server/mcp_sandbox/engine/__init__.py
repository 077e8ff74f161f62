"""The only code that talks to Docker: what the sandbox needs of a backend (``Engine``), the
docker-py adapter, the attach protocol, bounded steps, owners of our objects.

May import: output, config, policy, errors, constants.
"""
