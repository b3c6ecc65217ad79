"""One error base class; the CLI maps every QdeployError to exit code 2 and one line."""


class QdeployError(Exception):
    """A problem the user can fix: bad input, bad configuration, an unsupported combination."""


class ConfigError(QdeployError):
    """A plan, flag or option that is malformed, unknown or of the wrong type."""


class InputError(QdeployError):
    """A model, data file or artifact that is missing, empty or corrupt."""


class UnsupportedError(QdeployError):
    """A task, architecture, method or runtime that cannot handle the request (here, or at all)."""


class BusyMachineError(QdeployError):
    """Timing that other work on the machine disturbed, where the run was asked to be strict about it."""


class ExportValidationError(QdeployError):
    """An exported graph whose outputs differ from PyTorch beyond the tolerance."""


class ExportError(QdeployError):
    """An export that a library could not do for this architecture: tracing, conversion, or loading the graph."""


DISK_FULL_ERRNOS = (28, 122, 27)  # ENOSPC, EDQUOT, EFBIG


def disk_full(exc: BaseException) -> bool:
    """A full disk or a file-size limit, however the library that hit it wrapped the OSError."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return True
        if "No space left on device" in str(exc) or "File too large" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
