"""Preloaded by the worker processes of the local Dask cluster (`LocalCluster(preload=[...])`)."""
from __future__ import annotations

import logging
import signal

# Loggers whose records are no news to a user of `lookalike ingest`: what goes wrong reaches the
# run as an exception or a failed batch, and a cluster's shutdown logs tracebacks that are not
# errors (a worker's heartbeat to a scheduler that has just closed, a worker told to stop while
# it computes; tornado and asyncio report the same from their callbacks).
QUIET_LOGGERS = ("distributed", "tornado", "asyncio")


def quiet_logs(roots=QUIET_LOGGERS) -> None:
    """Those loggers (and their children that set a level of their own, as Dask's logging
    config does for some) down to critical in this process, for good."""
    for name in [n for n in list(logging.root.manager.loggerDict) if n.split(".")[0] in roots] + list(roots):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def dask_setup(worker) -> None:
    # Dask's `silence_logs` raises the level of the worker's log handlers only while the worker
    # runs and restores it as it closes, when the heartbeat tracebacks come: logger levels stay.
    quiet_logs()
    # Ctrl-C in a terminal signals the whole process group, these workers included: each would
    # print a KeyboardInterrupt traceback from wherever it was. The driver stops on Ctrl-C and
    # closes the cluster itself. (Workers started with the cluster already ignore it, inherited
    # from the driver; this covers the ones Dask starts again after a worker died.)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
