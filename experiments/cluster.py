"""Dask as the runner's engine: a local cluster of worker processes, or an existing cluster by its address.

``deeplimits run NAME --jobs N`` computes the points on a ``dask.distributed.LocalCluster`` of ``N`` worker
*processes* (one thread each; processes, not threads: JAX releases the GIL unevenly, and the workers are started
by ``spawn``, never forked from a process that has imported JAX). ``--scheduler ADDRESS`` connects to a running
Dask scheduler (``dask scheduler`` / ``dask worker``, or ``dask-jobqueue`` on SLURM / PBS); its workers need the
same deeplimits checkout and libraries installed, which the runner checks on every point (a worker whose code
version differs is an error). Either way the runner sees a ``concurrent.futures`` executor
(``Client.get_executor``), and only the calling process touches the results store.

The local workers share one JAX compilation cache on disk (a temporary folder, removed with the cluster): a
program one worker compiled is loaded, not compiled again, by the others. Many sweeps spend most of their time
compiling one program per shape (``relu-kurtosis``: 15 shapes x 16 seeds), and the runner hands the points out
seed-major on a cluster (``runner._spread``), so the workers first compile different shapes, then share them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import tempfile
from collections.abc import Iterator
from typing import Any

from experiments.registry import UsageError

CONNECT_TIMEOUT_S = 5.0
"""How long to try to reach a scheduler before giving up with :class:`ClusterError`."""


class ClusterError(ConnectionError):
    """The Dask scheduler cannot be reached (or the local cluster cannot be started)."""


@dataclasses.dataclass(frozen=True)
class DaskEngine:
    """A connected Dask client, its ``concurrent.futures`` executor and a description for messages."""

    client: Any
    executor: Any
    description: str

    def capacity(self) -> int:
        """Tasks that can run at once now: the workers' threads (0 while the cluster has no workers)."""
        return int(sum(self.client.nthreads().values()))


def executor_capacity(executor: Any) -> int | None:
    """Tasks a Dask ``Client.get_executor()`` can run at once now (its cluster's worker threads), ``None`` for
    any other executor. Read each time: a cluster can grow (``dask-jobqueue``'s ``scale``) or lose workers."""
    client = getattr(executor, "_client", None)  # ClientExecutor keeps its client there
    if client is None or not callable(getattr(client, "nthreads", None)):
        return None
    return int(sum(client.nthreads().values()))


def check_engine_args(jobs: Any = None, scheduler: Any = None) -> None:
    """``UsageError`` for ``jobs`` that is not a positive int, a ``scheduler`` that is not an address, or both."""
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise UsageError(f"--jobs must be a positive number of worker processes, got {jobs!r}")
    if scheduler is not None and (not isinstance(scheduler, str) or not scheduler.strip()):
        raise UsageError(f"--scheduler must be a Dask scheduler address such as tcp://host:8786, got {scheduler!r}")
    if jobs is not None and scheduler is not None:
        raise UsageError("give --jobs (start a local cluster of that many worker processes) or --scheduler (use a "
                         "running Dask cluster), not both: the cluster's workers decide how many points run at once")
    if scheduler is not None:
        _checked_address(scheduler)


def dask_setup(worker: Any) -> None:
    """Dask's preload hook, run in each local worker process as it starts (restarts included): Ctrl-C, which a
    terminal sends to every process of the run, is the main process's to handle (it keeps the finished points
    and stops the workers), so the workers ignore it instead of printing their own tracebacks."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _checked_address(scheduler: str) -> str:
    from distributed.comm import parse_address
    from distributed.comm.registry import get_backend

    address = scheduler.strip()
    try:
        scheme, location = parse_address(address)
        get_backend(scheme)
        if not location or any(c.isspace() for c in location):
            raise ValueError("no host:port after the scheme")
    except ValueError as err:
        raise UsageError(f"--scheduler {address!r} is not a Dask scheduler address ({err}); expected e.g. "
                         "tcp://host:8786") from None
    return address


@contextlib.contextmanager
def dask_engine(jobs: int | None = None, scheduler: str | None = None, *,
                timeout: float = CONNECT_TIMEOUT_S) -> Iterator[DaskEngine]:
    """A :class:`DaskEngine` on a new local cluster of ``jobs`` worker processes, or on the scheduler at
    ``scheduler``; closed (local workers stopped) on exit.

    Raises:
        UsageError: bad ``jobs`` / ``scheduler`` (see :func:`check_engine_args`), or neither given.
        ClusterError: the scheduler does not answer within ``timeout`` seconds.
    """
    check_engine_args(jobs, scheduler)
    if jobs is None and scheduler is None:
        raise UsageError("dask_engine needs jobs or scheduler")
    from distributed import Client, LocalCluster

    with contextlib.ExitStack() as stack:
        if jobs is not None:
            cache = stack.enter_context(tempfile.TemporaryDirectory(prefix="deeplimits-xla-cache-"))
            cluster = stack.enter_context(LocalCluster(
                n_workers=jobs, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
                memory_limit=0, silence_logs=logging.CRITICAL, preload=[__name__],
                env={"JAX_COMPILATION_CACHE_DIR": cache, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5"}))
            address, description = cluster.scheduler_address, f"a local Dask cluster of {jobs} worker processes"
        else:
            address = _checked_address(scheduler)
            description = f"the Dask scheduler at {address}"
        try:
            client = stack.enter_context(Client(address, timeout=timeout, set_as_default=False))
        except (OSError, TimeoutError) as err:
            raise ClusterError(f"cannot reach a Dask scheduler at {address} within {timeout:g} s ({err}); start one "
                               "with `dask scheduler` and workers with `dask worker ADDRESS`") from None
        yield DaskEngine(client, client.get_executor(pure=False), description)


__all__ = ["CONNECT_TIMEOUT_S", "ClusterError", "DaskEngine", "check_engine_args", "dask_engine", "executor_capacity"]
