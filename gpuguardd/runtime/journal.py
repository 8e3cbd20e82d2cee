"""The action journal: what the daemon changed on the host, so that it can always be undone.

One JSON document (``journal.json`` in the state dir) holds every *active* change: the action,
the original value it replaced, its expiry and whether the write is only intended or done.
It is rewritten atomically (write a temp file, fsync, rename, fsync the directory), so a crash
leaves either the old or the new document, never a torn one. A document that does not parse
is quarantined (renamed ``journal.json.corrupt-<time>``) with a clear log line, and the daemon
starts with an empty journal rather than refusing to start.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import structlog

from gpuguardd.model.actions import Action
from gpuguardd.runtime import codec

log = structlog.get_logger("gpuguardd.journal")

VERSION = 1
Status = Literal["intent", "applied"]


@dataclass(frozen=True, slots=True)
class Entry:
    """One active change. ``original`` is the lever's value before our first write
    (lever-specific JSON), ``step`` the next step of a multi-step plan."""

    key: str
    action: Action
    status: Status
    original: Any
    applied_at: float
    expires_at: float | None
    step: int = 0


class JournalError(Exception):
    pass


class Journal:
    def __init__(self, state_dir: str | Path, *, wall_clock_now: float, durable: bool = True):
        """``durable=False`` skips fsync (simulations, whose journal is thrown away)."""
        self.dir = Path(state_dir)
        self.durable = durable
        self.path = self.dir / "journal.json"
        self._entries: dict[str, Entry] = {}
        self._prepare_dir()
        self._load(wall_clock_now)
        # temp files of a write-then-rename interrupted by a crash: never renamed, never read
        for stale in self.dir.glob(".journal.*"):
            stale.unlink(missing_ok=True)

    # -- queries ---------------------------------------------------------------------------
    def entries(self) -> list[Entry]:
        return list(self._entries.values())

    def get(self, key: str) -> Entry | None:
        return self._entries.get(key)

    def __len__(self) -> int:
        return len(self._entries)

    # -- updates (each is durable when it returns) ------------------------------------------
    def put(self, entry: Entry) -> None:
        self._entries[entry.key] = entry
        self._flush()

    def mark(self, key: str, **changes: Any) -> None:
        self._entries[key] = replace(self._entries[key], **changes)
        self._flush()

    def remove(self, key: str) -> None:
        if self._entries.pop(key, None) is not None:
            self._flush()

    # -- internals --------------------------------------------------------------------------
    def _prepare_dir(self) -> None:
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = self.dir.stat()
        except OSError as e:
            raise JournalError(f"state_dir {self.dir}: {e.strerror or e}") from None
        if st.st_mode & stat.S_IWOTH:
            raise JournalError(
                f"state_dir {self.dir} is world-writable; refusing to keep the journal there"
            )

    def _load(self, now: float) -> None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as e:
            raise JournalError(f"{self.path}: {e.strerror or e}") from None
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict):
                raise ValueError(f"not a journal document (a JSON {type(doc).__name__})")
            if doc.get("version") != VERSION:
                raise ValueError(f"unsupported journal version {doc.get('version')!r}")
            if not isinstance(doc["entries"], list):
                raise ValueError("entries is not a list")
            for item in doc["entries"]:
                if item.get("status") not in ("intent", "applied"):
                    raise ValueError(f"entry status {item.get('status')!r}")
                entry = Entry(
                    key=str(item["key"]),
                    action=codec.decode(item["action"]),
                    status=item["status"],
                    original=item.get("original"),
                    applied_at=float(item["applied_at"]),
                    expires_at=None if item.get("expires_at") is None
                    else float(item["expires_at"]),
                    step=int(item.get("step", 0)),
                )
                self._entries[entry.key] = entry
        except (ValueError, KeyError, TypeError, AttributeError, codec.CodecError) as e:
            quarantine = self.path.with_name(f"journal.json.corrupt-{int(now)}")
            os.replace(self.path, quarantine)
            self._entries.clear()
            log.error("journal_corrupt", path=str(self.path), quarantined=str(quarantine),
                      error=str(e))

    def _flush(self) -> None:
        doc = {
            "version": VERSION,
            "entries": [
                {
                    "key": e.key,
                    "action": codec.encode(e.action),
                    "status": e.status,
                    "original": e.original,
                    "applied_at": e.applied_at,
                    "expires_at": e.expires_at,
                    "step": e.step,
                }
                for e in self._entries.values()
            ],
        }
        data = json.dumps(doc, indent=1, sort_keys=True).encode()
        fd, tmp = tempfile.mkstemp(prefix=".journal.", dir=self.dir)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                if self.durable:
                    os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if not self.durable:
            return
        dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
