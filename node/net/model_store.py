"""Models a node holds, by hash: in memory within a budget, then on disk (``<home>/models``),
so memory holds a round's working set while every received model stays downloadable for audits.
Also which peer already holds which model, so a model crosses the wire once per peer, and which
uploads a round expects (``UploadWindow``)."""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from google.protobuf.message import DecodeError

from base_package import data_pb2 as pb
from node.net.errors import refuse
from node.net.streams import ReceivedModel

log = logging.getLogger(__name__)


class Deliveries:
    """The model each peer last received from us, so a model crosses the wire once per peer.
    A peer that registers again (a restart) is forgotten: it holds no model yet."""

    def __init__(self) -> None:
        self._last: dict[str, str] = {}
        self._lock = threading.Lock()

    def has(self, peer: str, model_hash: str) -> bool:
        with self._lock:
            return self._last.get(peer) == model_hash

    def record(self, peer: str, model_hash: str) -> None:
        with self._lock:
            self._last[peer] = model_hash

    def forget(self, peer: str) -> None:
        with self._lock:
            self._last.pop(peer, None)


class UploadWindow:
    """Which senders may upload, and for what: a supernode opens a window for each round in
    progress naming its edge nodes in the job, and each may upload one update for it. Anything
    else is refused before its bytes are read, so what a sender can park on a supernode is one
    model per round it takes part in (memory and disk bounded by the job, not by the sender)."""

    def __init__(self) -> None:
        # (job, round) -> one (asked, taken) per attempt in progress (a retried round may overlap
        # the attempt it replaces, on a supernode that has not given up on it yet)
        self._rounds: dict[tuple[str, int], list[tuple[set[str], set[str]]]] = {}
        self._lock = threading.Lock()

    @contextmanager
    def open(self, job_id: str, round_number: int, senders: list[str]) -> Iterator[None]:
        key, window = (job_id, round_number), (set(senders), set())
        with self._lock:
            self._rounds.setdefault(key, []).append(window)
        try:
            yield
        finally:
            with self._lock:
                self._rounds[key].remove(window)
                if not self._rounds[key]:
                    del self._rounds[key]

    def admit(self, sender: str, job_id: str, round_number: int) -> None:
        """Take ``sender``'s one upload for the round (per attempt); refuse it otherwise, saying why."""
        with self._lock:
            windows = self._rounds.get((job_id, round_number))
            if not windows:
                raise refuse(grpc.StatusCode.FAILED_PRECONDITION,
                             f"no round {round_number} of job {job_id!r} is in progress on this supernode; "
                             f"updates are taken only during their round")
            asking = [taken for asked, taken in reversed(windows) if sender in asked]  # the newest attempt first
            if not asking:
                raise refuse(grpc.StatusCode.PERMISSION_DENIED,
                             f"{sender} was not asked to train round {round_number} of {job_id} here")
            free = next((taken for taken in asking if sender not in taken), None)
            if free is None:
                raise refuse(grpc.StatusCode.ALREADY_EXISTS,
                             f"{sender}'s update for round {round_number} of {job_id} is already here (one per round)")
            free.add(sender)

    def release(self, sender: str, job_id: str, round_number: int) -> None:
        """An admitted upload failed on the way: the sender may try again within the round."""
        with self._lock:
            for _, taken in self._rounds.get((job_id, round_number), []):
                if sender in taken:
                    taken.discard(sender)
                    return


class ModelCache:
    """Models by hash: in memory within ``max_bytes`` (the oldest leave first) and, given a
    ``directory``, on disk too, so that memory holds only what rounds are working on while every
    model a supernode received stays downloadable for audits.

    A model leaves memory for disk when it is evicted or ``spill``ed (a supernode spills each
    update once its round has summed it, and each global model once the next one exists). Kept
    in memory, every update is a fresh buffer the process must page in; once they go to disk,
    the next round's transfers reuse the memory the last round's held. The directory keeps the
    newest ``disk_bytes`` (the oldest files are deleted first). Without a directory, an evicted
    model is dropped and ``spill`` keeps it in memory."""

    def __init__(self, max_bytes: int, directory: Path | None = None, disk_bytes: int = 10 << 30) -> None:
        self.max_bytes = max_bytes
        self.directory = directory
        self.disk_bytes = disk_bytes
        self._models: OrderedDict[str, ReceivedModel] = OrderedDict()
        self._writing: dict[str, ReceivedModel] = {}  # on their way to disk: still served from memory
        self._on_disk: OrderedDict[str, int] = OrderedDict()  # hash -> file size, oldest first
        self._size = 0  # bytes held in memory, those waiting to be written included
        self._disk_size = 0
        self._lock = threading.Lock()
        self._stored = threading.Condition(self._lock)  # notified as each write finishes
        self._writer: ThreadPoolExecutor | None = None
        self._queued: list[ReceivedModel] = []  # for the writer's next batch
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            for leftover in directory.glob("*.tmp"):  # a write cut short by a crash
                leftover.unlink(missing_ok=True)
            for path in sorted(directory.glob("*.model"), key=lambda p: p.stat().st_mtime):
                self._on_disk[path.stem] = path.stat().st_size
            self._disk_size = sum(self._on_disk.values())
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-store",
                                              initializer=_in_idle_time)

    def put(self, model: ReceivedModel) -> None:
        with self._lock:
            old = self._models.pop(model.header.model_hash, None)
            if old is not None:
                self._size -= old.size
            self._models[model.header.model_hash] = model
            self._size += model.size
            while self._size > self.max_bytes and len(self._models) > 1:
                self._evict(next(iter(self._models)), overflow=True)

    def get(self, model_hash: str) -> ReceivedModel | None:
        with self._lock:
            model = self._models.get(model_hash) or self._writing.get(model_hash)
            if model is not None or model_hash not in self._on_disk:
                return model
        return self._read(model_hash)

    def keep(self, model: ReceivedModel) -> None:
        """``model`` in memory and, before this returns, on disk: a model a restart needs (a job's
        global model) must not wait for the writer's queue."""
        model_hash = model.header.model_hash
        with self._lock:
            write = self._writer is not None and model_hash not in self._on_disk
            if write:
                self._writing[model_hash] = model
                self._size += model.size
        if write:
            self._store([model])  # (here, not on the writer: durable when this returns)
        self.put(model)

    def spill(self, model_hash: str) -> None:
        """Move a model out of memory to disk (without a directory, or once closed, it stays)."""
        with self._lock:
            if self._writer is not None and model_hash in self._models:
                self._evict(model_hash, overflow=False)

    def wait_stored(self, hashes: list[str], timeout: float) -> list[str]:
        """Spill ``hashes`` and wait until they are on disk: a supernode reports updates for the
        chain only once they survive its crash (an auditor recomputing the round fetches them).
        Returns those not on disk when ``timeout`` passed (all of them without a directory)."""
        for model_hash in hashes:
            self.spill(model_hash)
        deadline = time.monotonic() + timeout
        with self._stored:
            while True:
                pending = [h for h in hashes if h not in self._on_disk]
                left = deadline - time.monotonic()
                if not pending or self._writer is None or left <= 0:
                    return pending
                self._stored.wait(left)

    def close(self) -> None:
        """Finish the writes under way; later spills keep their models in memory."""
        with self._lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            writer.shutdown(wait=True)

    # --- under the lock ------------------------------------------------------------------------------
    def _evict(self, model_hash: str, overflow: bool) -> None:
        """To disk, or, when memory is over budget and the disk has not kept up with the writes
        already queued (or there is no disk), dropped."""
        model = self._models.pop(model_hash)
        if model_hash in self._on_disk:  # stored before: just let go of it here
            self._on_disk.move_to_end(model_hash)
            self._size -= model.size
            return
        if self._writer is None or (overflow and self._size > 2 * self.max_bytes):
            self._size -= model.size
            if self._writer is not None:
                log.warning("model %s dropped: the disk is not keeping up with the models to store", model_hash[:16])
            return
        self._writing[model_hash] = model
        self._queued.append(model)
        if len(self._queued) == 1:  # the first of a batch: the writer takes every model queued by then
            self._writer.submit(self._drain)

    # --- the disk ------------------------------------------------------------------------------------
    def _path(self, model_hash: str) -> Path:
        assert self.directory is not None
        return self.directory / f"{model_hash}.model"

    def _drain(self) -> None:
        """Store every model queued, a batch at a time (the writer thread)."""
        while True:
            with self._lock:
                batch, self._queued = self._queued, []
            if not batch:
                return
            self._store(batch)

    def _store(self, models: list[ReceivedModel]) -> None:
        """One file per model (the header's length in 4 bytes, the signed header, the bytes), made
        durable together: all written, one sync, all renamed into place, one more sync. A round
        stores an update per edge node, and a sync per file (fdatasync: a journal commit each,
        ~10 ms on these disks) cost more than the round itself at a thousand edge nodes. A model
        that cannot be written goes back to memory."""
        written: list[ReceivedModel] = []
        for model in models:
            tmp = self._path(model.header.model_hash).with_suffix(".tmp")
            try:
                header = model.header.SerializeToString()
                with tmp.open("wb") as f:
                    f.write(len(header).to_bytes(4, "big"))
                    f.write(header)
                    for piece in model.pieces:
                        f.write(piece)
                written.append(model)
            except Exception:  # noqa: BLE001 - a full or read-only disk must not lose the model
                log.exception("could not store model %s in %s; keeping it in memory", model.header.model_hash[:16],
                              self.directory)
                tmp.unlink(missing_ok=True)
        stored: list[ReceivedModel] = []
        try:
            self._sync([self._path(m.header.model_hash).with_suffix(".tmp") for m in written])  # the bytes
            for model in written:
                path = self._path(model.header.model_hash)
                _out_of_page_cache(path.with_suffix(".tmp"))
                os.replace(path.with_suffix(".tmp"), path)
                stored.append(model)
            self._sync([])  # the names
        except Exception:  # noqa: BLE001 - as above
            log.exception("could not store %d models in %s; keeping them in memory", len(written), self.directory)
            stored = []
        on_disk = {id(model) for model in stored}
        for model in models:
            self._stored_or_kept(model, id(model) in on_disk)

    def _sync(self, files: list[Path]) -> None:
        """Everything written to this store's file system on disk: one ``syncfs`` where the C
        library has it, else ``fdatasync`` of each of ``files`` and of the directory."""
        assert self.directory is not None
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            if _SYNCFS is not None and _SYNCFS(fd) == 0:
                return
            for path in files:
                with path.open("rb") as f:
                    getattr(os, "fdatasync", os.fsync)(f.fileno())
            os.fsync(fd)
        finally:
            os.close(fd)

    def _stored_or_kept(self, model: ReceivedModel, stored: bool) -> None:
        model_hash = model.header.model_hash
        path = self._path(model_hash)
        if not stored:
            path.with_suffix(".tmp").unlink(missing_ok=True)
        doomed = []
        with self._lock:
            self._stored.notify_all()
            self._writing.pop(model_hash, None)
            if not stored:
                self._models[model_hash] = model
                return
            self._size -= model.size
            self._on_disk[model_hash] = size = path.stat().st_size
            self._disk_size += size
            while self._disk_size > self.disk_bytes and len(self._on_disk) > 1:
                old, old_size = self._on_disk.popitem(last=False)
                doomed.append(old)
                self._disk_size -= old_size
        for old in doomed:
            self._path(old).unlink(missing_ok=True)

    def _read(self, model_hash: str) -> ReceivedModel | None:
        return read_stored(self._path(model_hash), model_hash)


def read_stored(path: Path, model_hash: str) -> ReceivedModel | None:
    """A model file of a store (``<home>/models/<hash>.model``), checked against its hash; None
    when it is missing, unreadable or damaged (a damaged model is never served)."""
    try:
        raw = path.read_bytes()
        length = int.from_bytes(raw[:4], "big")
        header = pb.ModelHeader.FromString(raw[4:4 + length])
    except FileNotFoundError:  # deleted meanwhile, to keep within disk_bytes
        return None
    except (OSError, DecodeError) as exc:
        log.error("stored model %s cannot be read (%s); it is not served", model_hash[:16], exc)
        return None
    data = raw[4 + length:]
    if header.model_hash != model_hash or hashlib.sha256(data).hexdigest() != model_hash:
        log.error("stored model %s is damaged; it is not served", model_hash[:16])
        return None
    return ReceivedModel.of(header, data)


def _syncfs() -> Callable[[int], int] | None:
    """Linux's ``syncfs(fd)`` from the C library, or None."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syncfs if hasattr(libc, "syncfs") else None
    except OSError:
        return None


_SYNCFS = _syncfs()


def _out_of_page_cache(path: Path) -> None:
    """An archive, seldom read: out of the page cache once on disk, whose pages the next write
    then reuses (fresh ones cost ~8× the copy on these VMs)."""
    if hasattr(os, "posix_fadvise"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _in_idle_time() -> None:
    """Run this thread at the lowest priority (nice 19; Linux applies it to the calling thread
    only): storing models can wait for a core that no round is using, so on a host whose
    cores also train, the writes fill the idle moments instead of slowing the round."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):  # not Linux, or not allowed: the writes just run at normal priority
        pass
