"""Errors that reach the model. ``str(exc)`` is shown to the caller: keep it one safe line."""


class SandboxError(Exception):
    """Base class: we could not run the request. A program that fails is not an error."""


class RequestRejected(SandboxError):
    """The caller can fix it: unknown language, code too big, timeout above the maximum."""


class ApprovalRefused(SandboxError):
    """An escalation was not granted: config denies it, or no human accepted it."""


class HostBusy(SandboxError):
    """Retry later: every sandbox slot stayed busy past the call's deadline."""


class SandboxUnavailable(SandboxError):
    """The operator must fix it: Docker down, image missing, profile unreadable."""


class ConfigError(Exception):
    """The configuration is invalid; start-up stops with this message."""
