"""Errors shown to the user as one line, without a traceback (unless --debug)."""

import re

from hpsearch.masking import one_line


class HpsearchError(Exception):
    """A problem the user can fix; str() is the whole message."""


class ConfigError(HpsearchError, ValueError):
    """Bad configuration: a study file, a --set value, a URL, an option."""


class TrainingDiverged(RuntimeError):
    """Training stopped early because it cannot produce a useful model; str() is the reason."""


class CheckpointError(HpsearchError):
    """A checkpoint that cannot be written (full disk, no permission) or read back (corrupt)."""


_OOM_SIGNS = ("can't allocate memory", "not enough memory", "out of memory")


def out_of_memory(exc: BaseException) -> str | None:
    """"out of memory: ..." with the allocator's own words (the size it was asked for) when
    `exc` is running out of memory, else None. Torch reports it as a RuntimeError from its
    allocator; one rule for a trial's reason and for a command's error line."""
    text = one_line(exc)
    if not (isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and any(
            sign in text for sign in _OOM_SIGNS))):
        return None
    # "[enforce fail at alloc_cpu.cpp:117] err == 0. DefaultCPUAllocator: can't allocate ..."
    allocator = re.search(r"\w*Allocator: .*", text)
    return f"out of memory: {allocator.group(0) if allocator else text or 'MemoryError'}"


class TrialLost(BaseException):
    """This worker's trial is no longer its own: the heartbeat check failed it (its worker was
    frozen, or cut off from the database, longer than the grace period) and queued a retry
    that resumes from its checkpoint. The worker drops it without writing anything more about
    it. A BaseException, as KeyboardInterrupt is, so that Optuna's trial loop (which records
    every Exception of an objective as the trial's failure) lets it pass untold."""


class TrialInterrupted(BaseException):
    """A fault that is not the trial's own ended it: a stop, or a database error (`cause`); its
    reason is recorded where the database allowed. A BaseException, so that Optuna leaves the
    trial running: the worker then fails it and queues its copy in one compare-and-set step,
    as the heartbeat check does, so that of the two only one ever queues a copy."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause
