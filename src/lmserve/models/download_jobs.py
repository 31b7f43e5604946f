"""Downloads the server runs for its clients (LM Studio's ``/api/v1/models/download``).

Each job runs :func:`lmserve.models.download.download` in a thread and keeps figures for the
status endpoint.  Jobs live as long as the server; the files they fetch are resumable by the
next job (or ``lmserve get``) for the same model if the server stops mid-way.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from lmserve.models.download import download
from lmserve.models.hub import DownloadPlan
from lmserve.models.references import DownloadError

JobStatus = Literal["downloading", "paused", "completed", "failed"]


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class DownloadJob:
    job_id: str
    plan: DownloadPlan
    status: JobStatus = "downloading"
    downloaded_bytes: int = 0
    started_at: float = field(default_factory=time.time)
    completed_at: float | None = None
    error: str | None = None
    bytes_per_second: float = 0.0
    cancel: threading.Event = field(default_factory=threading.Event)
    _last: tuple[float, int] = (0.0, 0)

    def progress(self, done: int, total: int) -> None:
        now = time.monotonic()
        last_time, last_done = self._last
        if last_time and now > last_time and done >= last_done:
            rate = (done - last_done) / (now - last_time)
            # Smoothed, so that one slow read does not swing the estimate.
            self.bytes_per_second = (
                rate if not self.bytes_per_second else (0.8 * self.bytes_per_second + 0.2 * rate)
            )
        self._last = (now, done)
        self.downloaded_bytes = done

    def describe(self) -> dict[str, Any]:
        """The job in LM Studio's shape (plus ``model``, ``files`` and any ``error``)."""
        item: dict[str, Any] = {
            "job_id": self.job_id,
            "status": self.status,
            "model": self.plan.repo_id,
            "quantization": self.plan.quantization,
            "total_size_bytes": self.plan.total_bytes,
            "downloaded_bytes": self.downloaded_bytes,
            "started_at": _iso(self.started_at),
            "files": [str(path) for path in self.plan.targets],
        }
        if self.status == "downloading":
            item["bytes_per_second"] = self.bytes_per_second
            remaining = self.plan.total_bytes - self.downloaded_bytes
            if self.bytes_per_second > 0:
                item["estimated_completion"] = _iso(time.time() + remaining / self.bytes_per_second)
        if self.status == "completed":
            item["completed_at"] = _iso(self.completed_at)
        if self.error:
            item["error"] = self.error
        return item


class DownloadJobs:
    """The server's download jobs, by id; one at a time per model file set."""

    def __init__(self, staging_root: Path, on_complete: Callable[[], None]) -> None:
        self._staging_root = staging_root
        self._on_complete = on_complete
        self._jobs: dict[str, DownloadJob] = {}
        self._lock = threading.Lock()

    def start(self, plan: DownloadPlan) -> DownloadJob:
        """Start (or return the running job for) ``plan``'s files."""
        with self._lock:
            for job in self._jobs.values():
                if job.status == "downloading" and job.plan.targets == plan.targets:
                    return job
            job = DownloadJob(job_id=f"job_{secrets.token_hex(5)}", plan=plan)
            self._jobs[job.job_id] = job
        threading.Thread(target=self._run, args=(job,), name=job.job_id, daemon=True).start()
        return job

    def _run(self, job: DownloadJob) -> None:
        try:
            download(
                job.plan,
                staging_root=self._staging_root,
                progress=job.progress,
                cancel=job.cancel,
            )
        except DownloadError as exc:
            job.status = "paused" if job.cancel.is_set() else "failed"
            job.error = str(exc)
        except Exception as exc:  # a bug must not leave the job "downloading" forever
            job.status = "failed"
            job.error = f"unexpected error: {exc}"
        else:
            job.status = "completed"
            job.downloaded_bytes = job.plan.total_bytes
            job.completed_at = time.time()
            self._on_complete()

    def get(self, job_id: str) -> DownloadJob | None:
        return self._jobs.get(job_id)

    def by_status(self) -> dict[str, list[dict[str, Any]]]:
        groups: dict[str, list[dict[str, Any]]] = {
            "downloading": [],
            "completed": [],
            "failed": [],
            "paused": [],
        }
        for job in list(self._jobs.values()):
            groups[job.status].append(job.describe())
        return groups

    def cancel_all(self) -> None:
        for job in self._jobs.values():
            job.cancel.set()
