"""Errors shown to the user as one line, without a traceback (unless --debug)."""


class HpsearchError(Exception):
    """A problem the user can fix; str() is the whole message."""


class ConfigError(HpsearchError, ValueError):
    """Bad configuration: a study file, a --set value, a URL, an option."""
