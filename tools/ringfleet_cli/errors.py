"""The exit codes `ringfleet --help` documents, and the error a command raises for a mistake or a refusal."""

from __future__ import annotations

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_UNREACHABLE", "EXIT_USAGE", "CliError"]

#: Exit codes, as `ringfleet --help` lists them.
EXIT_OK = 0
#: What was asked was refused or failed: a job rejected, a handler that failed, no answer in time.
EXIT_FAILED = 1
#: The command line or a file it names is wrong: unknown option, missing or malformed file, bad --set, invalid job.
EXIT_USAGE = 2
#: Nothing to talk to: no local cloud is running and RINGFLEET_BROKER_URL is unset, or the broker / AWS endpoint
#: does not answer.
EXIT_UNREACHABLE = 3
#: Ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A mistake or refusal the user can act on: printed as one line on stderr, the process exits with ``code``."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code
