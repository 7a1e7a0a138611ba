"""One worker process of a data-parallel run: ``python -m workbench.distributed_worker train|resume ...``.

Started N times by :func:`workbench.distributed.launch_local` (``train --nproc N`` / ``resume RUN_ID --nproc N``
through ``torch.distributed.run``'s launcher), never by hand: the launcher has created the run's row (so every
rank knows its id) and reads each worker's exit. A worker's error is written to torchelastic's error file
(the launcher names it with the rank in the run's failure) and printed as one line for user errors.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from workbench.errors import USER_ERRORS, TrainingFailed
from workbench.names import ENDED_OK

PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when its parent dies


def die_with_launcher(launcher_pid: int | None) -> None:
    """Get SIGKILL when the launcher dies (torchrun starts workers in their own sessions, so a killed launcher
    would otherwise leave them training). Linux only; elsewhere a no-op. A launcher already gone: exit now."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return  # best effort: the launcher still stops its workers itself whenever it is alive to
    if launcher_pid is not None and os.getppid() != launcher_pid:
        os._exit(1)  # the launcher died before the line above: nobody waits for this worker


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workbench.distributed_worker",
                                description="one worker of `python -m workbench train|resume --nproc N`")
    p.add_argument("mode", choices=("train", "resume"))
    p.add_argument("--run-id", required=True)
    p.add_argument("--config", help="train: the run's resolved config (YAML)")
    p.add_argument("--store", help="resume: the run store")
    p.add_argument("--progress", action="store_true", help="a progress bar on rank 0")
    return p


def run(args) -> int:
    """Build this rank's Trainer and train (or resume) the run; the exit code (0: finished or stopped)."""
    from workbench.config import Config
    from workbench.distributed import OWNER_PID_ENV, init_from_env, shutdown
    from workbench.store import RunStore
    from workbench.trainer import Trainer, pick_device

    launcher = os.environ.get(OWNER_PID_ENV)
    die_with_launcher(int(launcher) if launcher else None)
    if args.mode == "train":
        cfg = Config.load(args.config)
        store = RunStore(cfg.TRACKING.STORE)
    else:
        store = RunStore(args.store, create=False)
        cfg = Config.from_run(store.run(args.run_id)["config"], source=f"run {args.run_id}")
    ctx = init_from_env(pick_device(cfg.TRAIN.DEVICE).type)
    try:
        trainer = Trainer(cfg, store=store, run_id=args.run_id, progress=args.progress, dist=ctx)
        status = trainer.fit(resume=args.mode == "resume")
    finally:
        shutdown(ctx)
    return 0 if status in ENDED_OK else 1


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import get_error_handler

    args = _parser().parse_args(argv)
    handler = get_error_handler()
    handler.initialize()
    try:
        return run(args)
    except (*USER_ERRORS, TrainingFailed) as e:  # the whole story in one line; the launcher reports it per rank
        handler.record_exception(e)
        print(f"error: {e}", file=sys.stderr)
        return 1
    except BaseException as e:  # recorded for the launcher (it names this rank's error), then the traceback
        handler.record_exception(e)
        raise


if __name__ == "__main__":
    sys.exit(main())
