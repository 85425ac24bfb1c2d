"""The job this worker trains: the one its configuration names, or the one the first Reconfigure names once the
worker is placed (``serve``). Read by every part that speaks for the job (checkpoints, heartbeats, failure
reports); only the runtime's ``serve`` changes it."""

from __future__ import annotations

__all__ = ["Job"]


class Job:
    """The job served, or None before placement."""

    def __init__(self, job_id: str | None) -> None:
        self._id = job_id

    @property
    def id(self) -> str | None:
        return self._id

    def require(self) -> str:
        """The job's id; an error before the worker is placed."""
        if self._id is None:
            raise RuntimeError("no job yet: the worker has not been placed")
        return self._id

    def serve(self, job_id: str) -> None:
        """From now on this worker trains ``job_id``."""
        self._id = job_id
