"""One run's rig: its child processes, the servers it starts and the load generator, opened
together and all stopped when the run ends."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from load_generator import LoadGenerator
from processes import Processes
from real_server_config import server_environment
from servers import Servers


@dataclass(frozen=True, slots=True)
class Rig:
    """The run's processes, the servers it starts and the load generator that measures them."""

    processes: Processes
    servers: Servers
    load: LoadGenerator


@contextlib.contextmanager
def open_rig(
    workdir: Path, *, per_phone_limits: Sequence[str], request_ids: bool, quiet_wait_s: float
) -> Iterator[Rig]:
    """A rig whose processes keep their stderr, logs and configs in `workdir`."""
    processes = Processes(workdir, server_environment(os.environ))
    try:
        load = LoadGenerator(processes, request_ids=request_ids, quiet_wait_s=quiet_wait_s)
        yield Rig(processes, Servers(processes, per_phone_limits), load)
    finally:
        processes.stop_all()
