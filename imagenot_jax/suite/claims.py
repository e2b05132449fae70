"""Claims: which machine trains which run, when machines share nothing but the suite directory.

A claim is a numbered marker in the run's directory, `suite_claim.<generation>.json`, holding the
claimer's host, pid, a random token, when it started and when it last beat (`time`). The highest
generation is the current claim. Every state change is an exclusive create of the next
generation, the one atomic step the protocol needs:

- claim a run: its current claim is absent, released or stale (`time` older than the timeout) ->
  create generation g+1 (0 if none); of several machines trying, exactly one creates it;
- heartbeat: the owner rewrites its own generation's `time` (atomic replace) while it trains;
  if a higher generation exists, another machine took the run over and the owner has lost it;
- release: the owner marks its generation `released` (a failed run is claimable at once).

Nothing is ever deleted, so a crashed owner can never make two machines believe they hold the
same generation. Staleness compares the claimer's clock with the reader's: machines need
synchronized clocks (NTP), far within the timeout.

Local and network file systems (NFS included): the marker is written to a temporary file and
hard-linked to its name (`link` fails if the name exists: an exclusive create whose content is
complete the moment it appears). gs:// with google-cloud-storage installed (the `gcs` extra):
an upload with `if_generation_match=0`, Cloud Storage's atomic create-if-absent (not exercised
by the tests: they have no network). Other remote paths (and gs:// without that library) go
through etils.epath, which has no create-if-absent: check, write, read back and compare tokens,
so two machines claiming the same run within the same second can both win; the launch scripts
stagger their starts.
"""

from __future__ import annotations

import _thread
import contextlib
import dataclasses
import functools
import json
import os
import re
import socket
import threading
import time
import uuid
from typing import Any

from absl import logging
from etils import epath

DEFAULT_TIMEOUT_S = 2 * 3600.0
_NAME = re.compile(r"suite_claim\.(\d+)\.json")


@dataclasses.dataclass(frozen=True)
class ClaimInfo:
    """One claim marker's content."""

    generation: int
    host: str
    pid: int
    token: str
    started: float  # seconds since the epoch
    time: float  # the last heartbeat
    released: bool = False

    def age(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.time

    def is_fresh(self, timeout_s: float, now: float | None = None) -> bool:
        """Held: not released, and beat within the timeout."""
        return not self.released and self.age(now) <= timeout_s

    def describe(self) -> str:
        return f"{self.host} pid {self.pid}, last beat {self.age():.0f} s ago"


def _is_local(path: epath.Path) -> bool:
    return "://" not in str(path)


def _marker(directory: epath.Path, generation: int) -> epath.Path:
    return directory / f"suite_claim.{generation}.json"


def generations(directory: epath.Path) -> list[int]:
    """The claim generations in `directory`, ascending."""
    if not directory.exists():
        return []
    found = (_NAME.fullmatch(p.name) for p in directory.iterdir())
    return sorted(int(m.group(1)) for m in found if m)


def _parse(generation: int, text: str) -> ClaimInfo:
    fields = json.loads(text)
    return ClaimInfo(generation=generation, **fields)


def current(directory: epath.Path) -> ClaimInfo | None:
    """The highest-generation claim of `directory`, or None if it was never claimed."""
    found = generations(directory)
    if not found:
        return None
    return _parse(found[-1], _marker(directory, found[-1]).read_text())


def _payload(info: ClaimInfo) -> str:
    fields = dataclasses.asdict(info)
    del fields["generation"]  # the file name carries it
    return json.dumps(fields) + "\n"


def _create_exclusive(path: epath.Path, text: str, token: str) -> bool:
    """Creates `path` holding `text` unless it exists; True if this call created it."""
    if _is_local(path):
        tmp = f"{path}.{token}.tmp"
        with open(tmp, "w") as f:
            f.write(text)
        try:
            os.link(tmp, str(path))  # atomic, fails if the name exists (also on NFS)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
    if str(path).startswith("gs://"):
        created = _gcs_create(str(path), text)
        if created is not None:
            return created
    if path.exists():  # remote without a precondition: not atomic, see the module docstring
        return False
    path.write_text(text)
    return json.loads(path.read_text())["token"] == token


@functools.cache
def _gcs_client() -> Any:
    from google.cloud import storage

    return storage.Client()


def _gcs_create(uri: str, text: str) -> bool | None:
    """Creates the gs:// object unless it exists (`if_generation_match=0`: Cloud Storage's
    atomic create-if-absent); None without google-cloud-storage (the `gcs` extra)."""
    try:
        from google.api_core import exceptions
    except ImportError:
        return None
    bucket, _, name = uri.removeprefix("gs://").partition("/")
    blob = _gcs_client().bucket(bucket).blob(name)
    try:
        blob.upload_from_string(text, if_generation_match=0)
    except exceptions.PreconditionFailed:
        return False
    return True


def replace_file(path: epath.Path, text: str) -> None:
    """Overwrites `path` so that readers see the old or the new content, never a mix (nor a
    torn file after a kill)."""
    if _is_local(path):
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, str(path))
    else:
        path.write_text(text)  # an object store replaces objects whole


class Claim:
    """A claim this process holds; a context manager that beats while the run trains."""

    def __init__(self, directory: epath.Path, info: ClaimInfo, heartbeat_s: float) -> None:
        self.directory = directory
        self.info = info
        self.heartbeat_s = heartbeat_s
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def path(self) -> epath.Path:
        return _marker(self.directory, self.info.generation)

    def still_ours(self) -> bool:
        """No later generation: nobody took the run over."""
        found = generations(self.directory)
        return bool(found) and found[-1] == self.info.generation

    def refresh(self) -> bool:
        """One heartbeat; False (and nothing written) once the claim was taken over."""
        if not self.still_ours():
            self.lost = True
            return False
        self.info = dataclasses.replace(self.info, time=time.time())
        replace_file(self.path, _payload(self.info))
        return True

    def release(self) -> None:
        """Marks the claim released (claimable at once), unless it was taken over."""
        if self.still_ours():
            self.info = dataclasses.replace(self.info, time=time.time(), released=True)
            replace_file(self.path, _payload(self.info))

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if not self.refresh():
                # Another machine now trains this run in the same directory: stop rather than
                # write checkpoints next to it.
                logging.error("suite: claim %s was taken over; stopping", self.path)
                _thread.interrupt_main()
                return

    def __enter__(self) -> Claim:
        self._thread = threading.Thread(target=self._beat, name="suite-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with contextlib.suppress(FileNotFoundError):
            self.release()


def try_acquire(
    directory: epath.Path, timeout_s: float = DEFAULT_TIMEOUT_S, heartbeat_s: float | None = None
) -> Claim | None:
    """Claims `directory` if nobody holds it (absent, released or stale claim); else None.
    `heartbeat_s` defaults to a quarter of the timeout."""
    directory.mkdir(parents=True, exist_ok=True)
    held = current(directory)
    if held is not None and held.is_fresh(timeout_s):
        return None
    if held is not None:
        logging.info("suite: taking over %s (%s)", directory, held.describe())
    now = time.time()
    info = ClaimInfo(
        generation=0 if held is None else held.generation + 1,
        host=socket.gethostname(),
        pid=os.getpid(),
        token=uuid.uuid4().hex,
        started=now,
        time=now,
    )
    if not _create_exclusive(_marker(directory, info.generation), _payload(info), info.token):
        return None
    return Claim(directory, info, heartbeat_s or timeout_s / 4)
