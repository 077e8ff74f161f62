"""A workspace's project environment: its dependencies, installed once by a hardened build
sandbox into a Docker volume that later calls mount read-only at ``/env``.

PURE: ``manifests`` (what to install, its digest), ``commands`` (the build's script),
``volumes`` (names, labels, state from labels), ``mount`` (a call's spec with it).
Docker: ``project_files`` reads the manifests, ``build`` runs the build, ``store`` finds,
removes and reaps environments.

May import: workspace and below.
"""
