"""The only code that talks to Docker: the API adapter, bounded steps, owners of our objects.

May import: output, config, policy, errors, constants.
"""
