"""PURE: an environment as Docker volumes: their names, their labels, and the state that
labels alone tell.

Docker cannot change a volume's labels, so readiness is a second, empty volume, the seal,
made only after a build finished within its bounds and a trusted look measured it:

    mcp-sandbox-env-<key>-<build>        the data (mounted at /env), labelled who built it
    mcp-sandbox-env-<key>-<build>-ready  the seal: when it was built, its digest and size

A data volume without its seal is never mounted; the reaper removes it once its builder is
gone. ``key`` hashes the workspace path and the image; the digest (manifests and commands)
is on both volumes, so a changed manifest makes the environment ``stale``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol

from mcp_sandbox.constants import ENVIRONMENT_LABEL, LABEL

VOLUME_PREFIX = f"{LABEL}-env-"
SEAL_SUFFIX = "-ready"
KEY_LABEL = f"{ENVIRONMENT_LABEL}.key"
DIGEST_LABEL = f"{ENVIRONMENT_LABEL}.digest"
WORKSPACE_LABEL = f"{ENVIRONMENT_LABEL}.workspace"
IMAGE_LABEL = f"{ENVIRONMENT_LABEL}.image"
DATA_LABEL = f"{ENVIRONMENT_LABEL}.data"  # on a seal: the data volume it vouches for
BUILT_LABEL = f"{ENVIRONMENT_LABEL}.built_unix"
SIZE_LABEL = f"{ENVIRONMENT_LABEL}.size_mib"
PACKAGES_LABEL = f"{ENVIRONMENT_LABEL}.packages"
# Not ``mcp-sandbox.owner``: an environment outlives the process that built it, and every
# per-owner reaper would take it once that process is gone.
BUILDER_LABEL = f"{ENVIRONMENT_LABEL}.builder"
DATA, SEAL = "data", "seal"
# A build longer than this, or of a server that is gone, left its data volume for good.
BUILD_GRACE_S = 600.0

State = Literal["ready", "stale", "none"]


class VolumeRow(Protocol):
    """A volume as the engine lists it (``ContainerInfo``)."""

    @property
    def name(self) -> str: ...
    @property
    def labels(self) -> dict[str, str]: ...
    @property
    def created_unix(self) -> float: ...


def environment_key(workspace: str, image: str) -> str:
    return hashlib.sha256(f"{workspace}\0{image}".encode()).hexdigest()[:12]


def data_volume(key: str, build_id: str) -> str:
    return f"{VOLUME_PREFIX}{key}-{build_id}"


def seal_volume(data: str) -> str:
    return data + SEAL_SUFFIX


def data_labels(
    *, key: str, digest: str, workspace: str, image: str, owner: str, extra: Mapping[str, str]
) -> dict[str, str]:
    labels = {k: v for k, v in extra.items() if not k.startswith(LABEL)}
    labels.update(
        {
            LABEL: "1",
            BUILDER_LABEL: owner,
            ENVIRONMENT_LABEL: DATA,
            KEY_LABEL: key,
            DIGEST_LABEL: digest,
            WORKSPACE_LABEL: workspace,
            IMAGE_LABEL: image,
        }
    )
    return labels


def seal_labels(
    data_labels: Mapping[str, str], *, data: str, built_unix: float, size_mib: int, packages: int
) -> dict[str, str]:
    labels = dict(data_labels)
    labels.update(
        {
            ENVIRONMENT_LABEL: SEAL,
            DATA_LABEL: data,
            BUILT_LABEL: str(int(built_unix)),
            SIZE_LABEL: str(size_mib),
            PACKAGES_LABEL: str(packages),
        }
    )
    return labels


@dataclass(frozen=True)
class Environment:
    """A sealed environment: its data volume is ``id``."""

    id: str
    key: str
    digest: str
    workspace: str
    image: str
    built_unix: int
    size_mib: int
    packages: int

    @property
    def built_at(self) -> str:
        return datetime.fromtimestamp(self.built_unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def state(self, digest: str | None) -> State:
        """``ready`` if built from these manifests; ``stale`` if they changed since."""
        return "ready" if digest == self.digest else "stale"


def sealed(rows: Iterable[VolumeRow]) -> list[Environment]:
    """Every sealed environment whose data volume exists, newest first."""
    rows = list(rows)
    names = {r.name for r in rows if r.labels.get(ENVIRONMENT_LABEL) == DATA}
    found = []
    for r in rows:
        lb = r.labels
        if lb.get(ENVIRONMENT_LABEL) != SEAL or lb.get(DATA_LABEL) not in names:
            continue
        if r.name != seal_volume(lb[DATA_LABEL]):
            continue
        try:
            env = Environment(
                id=lb[DATA_LABEL],
                key=lb.get(KEY_LABEL, ""),
                digest=lb.get(DIGEST_LABEL, ""),
                workspace=lb.get(WORKSPACE_LABEL, ""),
                image=lb.get(IMAGE_LABEL, ""),
                built_unix=int(lb.get(BUILT_LABEL, "0")),
                size_mib=int(lb.get(SIZE_LABEL, "0")),
                packages=int(lb.get(PACKAGES_LABEL, "0")),
            )
        except ValueError:
            continue
        found.append(env)
    return sorted(found, key=lambda e: (e.built_unix, e.id), reverse=True)


def current(rows: Iterable[VolumeRow], key: str) -> Environment | None:
    """The newest sealed environment of this workspace and image, if any."""
    return next((e for e in sealed(rows) if e.key == key), None)


def doomed(
    rows: Sequence[VolumeRow],
    *,
    now: float,
    owner_alive: Callable[[str], bool | None],
    max_age_s: float,
) -> list[str]:
    """Volumes the reaper removes, seals before their data: a half-built data volume whose
    builder is gone, a seal without data, an environment superseded by a newer one of the
    same key, and one built more than ``max_age_s`` ago."""
    keep = sealed(rows)
    newest: dict[str, Environment] = {}
    for e in keep:
        newest.setdefault(e.key, e)
    live = {e.id for e in keep if newest[e.key] is e and now - e.built_unix <= max_age_s}
    seals, data = [], []
    for r in rows:
        role = r.labels.get(ENVIRONMENT_LABEL)
        if role == SEAL:
            if r.labels.get(DATA_LABEL) not in live:
                seals.append(r.name)
        elif role == DATA and r.name not in live:
            if any(e.id == r.name for e in keep):
                data.append(r.name)  # sealed but superseded or old
                continue
            alive = owner_alive(r.labels.get(BUILDER_LABEL, ""))
            if alive is False or now - r.created_unix > BUILD_GRACE_S:
                data.append(r.name)
    return seals + data
