"""Errors shown to the user as one line, without a traceback (unless --debug)."""


class HpsearchError(Exception):
    """A problem the user can fix; str() is the whole message."""


class ConfigError(HpsearchError, ValueError):
    """Bad configuration: a study file, a --set value, a URL, an option."""


class TrainingDiverged(RuntimeError):
    """Training stopped early because it cannot produce a useful model; str() is the reason."""


class CheckpointError(HpsearchError):
    """A checkpoint that cannot be written (full disk, no permission) or read back (corrupt)."""
