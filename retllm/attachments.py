"""Images attached to chat messages: kept per conversation, bounded, and never mixed with the blobs items use.

Items keep their uploaded images in the blob folder for as long as they exist. An attachment only serves the
conversation it was attached to, so it lives in that conversation's own folder under ``DATA_DIR/chat_attachments``
and is collected: past a conversation's bound or the total bound the oldest go first, past the age limit every
one goes, and deleting a conversation deletes its folder. Nothing here ever touches the blob folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from retllm.images import keep_bytes
from retllm.settings import Settings

log = logging.getLogger(__name__)

ONE_OFF = "one-off"
"""The folder of attachments kept outside any conversation (a graph run without a thread id)."""


@dataclass(frozen=True)
class AttachmentStore:
    """Attached images under ``root``, one folder per conversation (named by a hash of its id).

    Bounds: ``thread_bytes`` per conversation and ``total_bytes`` in all (the oldest go first; the image just
    kept always stays), ``max_age_s`` since an image was last attached."""

    root: Path
    thread_bytes: int
    total_bytes: int
    max_age_s: float

    @classmethod
    def of(cls, settings: Settings) -> AttachmentStore:
        """The store the settings describe (``RETLLM_CHAT_ATTACHMENTS_*``)."""
        return cls(
            settings.data_dir / "chat_attachments",
            int(settings.chat_attachments_thread_mb * 2**20),
            int(settings.chat_attachments_total_mb * 2**20),
            settings.chat_attachments_days * 86400,
        )

    def folder(self, thread: str | None) -> Path:
        """The folder of ``thread``'s attachments (any id is safe: the name is a hash of it)."""
        if thread is None:
            return self.root / ONE_OFF
        return self.root / hashlib.sha256(thread.encode()).hexdigest()[:32]

    def keep(self, thread: str | None, data: bytes) -> str:
        """Keep ``data`` (checked image bytes) for ``thread``, then apply the bounds; the file's path."""
        path = Path(keep_bytes(self.folder(thread), data))
        os.utime(path)  # attached again: the newest, whatever its first time was
        self.collect(keep=path)
        return str(path)

    def owns(self, ref: object) -> bool:
        """Whether ``ref`` names a file of this store (what a conversation's references point at)."""
        if not isinstance(ref, str) or "://" in ref or ref[:5].lower() == "data:":
            return False
        try:
            return Path(ref).resolve().is_relative_to(self.root.resolve())
        except (OSError, RuntimeError, ValueError):
            return False

    def delete(self, thread: str | None) -> int:
        """Delete ``thread``'s attachments; how many files there were."""
        folder = self.folder(thread)
        n = sum(1 for p in folder.iterdir() if p.is_file()) if folder.is_dir() else 0
        shutil.rmtree(folder, ignore_errors=True)
        return n

    def collect(self, keep: Path | None = None) -> None:
        """Delete what is past the age limit, then the oldest past each conversation's bound and the total."""
        now = time.time()
        files: list[tuple[float, int, Path]] = []
        for folder in _dirs(self.root):
            for entry in _files(folder):
                try:
                    st = entry.stat()
                except FileNotFoundError:  # collected by another thread meanwhile
                    continue
                path = Path(entry.path)
                if now - st.st_mtime > self.max_age_s and path != keep:
                    _unlink(path)
                elif not entry.name.endswith(".tmp"):  # one being written: counted once it is in place
                    files.append((st.st_mtime, st.st_size, path))
        files.sort(key=lambda f: f[0], reverse=True)  # newest first
        per_thread: dict[Path, int] = {}
        total = 0
        for _, size, path in files:
            if path == keep:
                total += size
                per_thread[path.parent] = per_thread.get(path.parent, 0) + size
        full: set[Path] = set()  # conversations past their bound: everything older goes too
        for _, size, path in files:
            if path == keep:
                continue
            used = per_thread.get(path.parent, 0)
            if path.parent in full or used + size > self.thread_bytes or total + size > self.total_bytes:
                full.add(path.parent)
                if total + size > self.total_bytes:
                    total = self.total_bytes + 1  # past the total: every older one goes
                _unlink(path)
                continue
            per_thread[path.parent] = used + size
            total += size


def _dirs(root: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(root) if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []


def _files(folder: Path) -> list[os.DirEntry[str]]:
    try:
        return [e for e in os.scandir(folder) if e.is_file(follow_symlinks=False)]
    except FileNotFoundError:
        return []


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as e:  # another process holds it, permissions: the next collection tries again
        log.warning("could not delete the attachment %s: %s", path.name, e)
