"""Preloaded by the worker processes of the local Dask cluster (`LocalCluster(preload=[...])`)."""
from __future__ import annotations

import signal


def dask_setup(worker) -> None:
    # Ctrl-C in a terminal signals the whole process group, these workers included: each would
    # print a KeyboardInterrupt traceback from wherever it was. The driver stops on Ctrl-C and
    # closes the cluster itself. (Workers started with the cluster already ignore it, inherited
    # from the driver; this covers the ones Dask starts again after a worker died.)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
