"""Data-parallel runs on many processes (DESIGN.md 3.9): the process context and the few collectives the
:class:`~workbench.trainer.Trainer` needs.

One run on ``world`` processes (``python -m workbench train --nproc N`` through ``torch.distributed.run``;
or Ray Train's TorchTrainer, which sets the same variables and creates the process group itself):

- every rank draws the same seeded permutation per epoch and trains on its rows ``perm[rank::world]``
  (:func:`shard`); the null-mask and augmentation generators are seeded per rank (:func:`rank_seed`);
- gradients are averaged over the ranks with one ``all_reduce`` of the flattened gradients per optimizer step
  (:func:`average_gradients`; no DDP wrapper: the model, its state dict and ``TRAIN.ACCUMULATE`` stay as they are);
- train metrics come from all-reduced counts and loss sums; val/test outputs are gathered to every rank and put
  back in row order before scoring, so every metric equals a single-process evaluation of the same weights;
- rank 0 alone writes the store, W&B, checkpoints and ``best.pt``; the stop flag it reads is broadcast.

With ``world == 1`` every helper here is the identity and calls nothing in ``torch.distributed``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch

# torchrun's (and Ray Train's) variables for this process's place in the job
RANK_ENV, WORLD_ENV, LOCAL_RANK_ENV = "RANK", "WORLD_SIZE", "LOCAL_RANK"
# the pid of the process that launched the workers (``train --nproc``): recorded as the run's pid, so the app's
# liveness check and Stop button act on the launcher, which owns (and stops) every worker
OWNER_PID_ENV = "WORKBENCH_RUN_PID"
# per-rank generators are seeded ``base + RANK_SEED_STRIDE * rank``: rank 0 keeps the single-process seed,
# and no rank's seed meets another generator's (the trainer's bases are SEED + 1, + 2, + 3)
RANK_SEED_STRIDE = 1000


@dataclass(frozen=True)
class DistContext:
    """This process's place in a data-parallel run: ``rank`` of ``world`` processes, ``local_rank`` on its host
    (its GPU index)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run's record, W&B and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process: the collectives below talk to the others."""
        return self.world > 1

    @classmethod
    def single(cls) -> DistContext:
        """One process: today's trainer, no ``torch.distributed`` at all."""
        return cls()

    def __post_init__(self):
        if self.world < 1 or not 0 <= self.rank < self.world or self.local_rank < 0:
            raise ValueError(f"DistContext: rank must be in [0, world) and world >= 1, got rank {self.rank}, "
                             f"world {self.world}, local_rank {self.local_rank}")


# the context init_from_env made last: what the helpers use when no context is passed
_current = DistContext.single()


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {text!r}") from None


def init_from_env(device_type: str) -> DistContext:
    """The context of this process from torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (also what Ray
    Train's TorchTrainer sets). With ``WORLD_SIZE > 1`` and no process group yet, one is created: backend
    ``nccl`` for ``device_type == "cuda"`` (this process's GPU made current first), else ``gloo``; an existing
    group (Ray Train creates it) is only read. Without the variables: :meth:`DistContext.single`."""
    global _current
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        ctx = DistContext(dist.get_rank(), dist.get_world_size(), _env_int(LOCAL_RANK_ENV, 0))
    else:
        world = _env_int(WORLD_ENV, 1)
        ctx = DistContext(_env_int(RANK_ENV, 0), world, _env_int(LOCAL_RANK_ENV, 0))
        if world > 1:
            if device_type == "cuda":
                torch.cuda.set_device(local_device(ctx, "cuda"))
            dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    if ctx.distributed and device_type == "cuda" and dist.get_backend() == "nccl":
        torch.cuda.set_device(local_device(ctx, "cuda"))  # NCCL's object collectives use the current device
    _current = ctx
    return ctx


def local_device(ctx: DistContext, device_type: str) -> torch.device:
    """This rank's device: ``cuda:<local_rank>`` (modulo the GPUs this process sees: a Ray worker may see just
    its own), else ``device_type`` as is."""
    if device_type != "cuda" or not ctx.distributed:
        return torch.device(device_type)
    return torch.device("cuda", ctx.local_rank % max(1, torch.cuda.device_count()))


def shutdown(ctx: DistContext) -> None:
    """Destroy the process group :func:`init_from_env` created (a no-op for one process)."""
    import torch.distributed as dist

    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def _ctx(ctx: DistContext | None) -> DistContext:
    return _current if ctx is None else ctx


def _comm_device(t: torch.Tensor | None = None) -> torch.device:
    """Where a collective's helper tensors live: NCCL needs the current CUDA device, gloo takes CPU tensors."""
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return t.device if t is not None else torch.device("cpu")


# ---------------------------------------------------------------------- collectives (identity for one process)
def all_reduce_sum(t: torch.Tensor, ctx: DistContext | None = None) -> torch.Tensor:
    """The element-wise sum of ``t`` over the ranks (a new tensor; ``t`` itself is not changed)."""
    if not _ctx(ctx).distributed:
        return t
    import torch.distributed as dist

    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_gather_rows(t: torch.Tensor, ctx: DistContext | None = None) -> torch.Tensor:
    """Every rank's ``t`` (rows may differ per rank; the other dimensions may not), concatenated along dim 0 in
    rank order, on every rank."""
    c = _ctx(ctx)
    if not c.distributed:
        return t
    import torch.distributed as dist

    t = t.detach().contiguous()
    rows = torch.tensor([t.shape[0]], dtype=torch.long, device=t.device)
    counts = [torch.zeros_like(rows) for _ in range(c.world)]
    dist.all_gather(counts, rows)
    counts = [int(n) for n in counts]
    most = max(counts)
    padded = t if t.shape[0] == most else torch.cat([t, t.new_zeros((most - t.shape[0], *t.shape[1:]))])
    parts = [torch.empty_like(padded) for _ in range(c.world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, counts)])


def broadcast_flag(b: bool, ctx: DistContext | None = None) -> bool:
    """Rank 0's ``b`` on every rank (a stop request, an early stop)."""
    if not _ctx(ctx).distributed:
        return bool(b)
    import torch.distributed as dist

    flag = torch.tensor([1 if b else 0], dtype=torch.uint8, device=_comm_device())
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def broadcast_object(obj, ctx: DistContext | None = None):
    """Rank 0's ``obj`` (anything picklable: a checkpoint's state dict, a run id) on every rank; the other
    ranks' ``obj`` is ignored."""
    if not _ctx(ctx).distributed:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(obj, ctx: DistContext | None = None) -> list:
    """``[rank 0's obj, rank 1's obj, ...]`` on every rank (the per-rank random states for a checkpoint)."""
    c = _ctx(ctx)
    if not c.distributed:
        return [obj]
    import torch.distributed as dist

    out = [None] * c.world
    dist.all_gather_object(out, obj)
    return out


def average_gradients(params, ctx: DistContext | None = None) -> None:
    """Replace each parameter's gradient by its mean over the ranks: one ``all_reduce`` of all of them flattened.
    A parameter without a gradient on this rank counts as a zero gradient (every rank must send the same
    layout; the trainer's models give every trainable parameter a gradient on every step)."""
    c = _ctx(ctx)
    if not c.distributed:
        return
    import torch.distributed as dist

    params = list(params)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= c.world
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p).to(g.dtype)
        offset += n


def broadcast_module(module: torch.nn.Module, ctx: DistContext | None = None) -> None:
    """Rank 0's parameters and buffers into ``module`` on every rank (in place), so every rank starts from the
    very same weights (what DDP does at construction)."""
    if not _ctx(ctx).distributed:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for t in module.state_dict().values():
            if t.is_contiguous():
                dist.broadcast(t, src=0)
            else:  # a channels-last weight: collectives take contiguous tensors
                tmp = t.contiguous()
                dist.broadcast(tmp, src=0)
                t.copy_(tmp)


# ---------------------------------------------------------------------- sharding
def shard(index: torch.Tensor, ctx: DistContext | None = None) -> torch.Tensor:
    """This rank's rows of ``index`` (a permutation or ``arange``): ``index[rank::world]``. Over the ranks the
    shards cover every entry exactly once, and their sizes differ by at most one."""
    c = _ctx(ctx)
    return index if not c.distributed else index[c.rank :: c.world]


def unshard_order(n: int, ctx: DistContext | None = None) -> torch.Tensor:
    """``LongTensor (n,)``: the positions that put :func:`all_gather_rows` of the ranks' shards of ``arange(n)``
    (rank 0's rows, then rank 1's, ...) back in row order: ``gathered[unshard_order(n)]`` is row 0, 1, ..."""
    c = _ctx(ctx)
    if not c.distributed:
        return torch.arange(n)
    gathered = torch.cat([torch.arange(n)[r :: c.world] for r in range(c.world)])
    return torch.argsort(gathered)


def rank_seed(base: int, ctx: DistContext | None = None) -> int:
    """The seed of a per-rank generator: ``base`` on rank 0 (the single-process seed), ``base +
    RANK_SEED_STRIDE * rank`` elsewhere."""
    return base + RANK_SEED_STRIDE * _ctx(ctx).rank


def owner_pid() -> int:
    """The pid recorded as the run's: the launcher's (``WORKBENCH_RUN_PID``) when ``train --nproc`` started this
    worker, else this process's."""
    return _env_int(OWNER_PID_ENV, os.getpid())


# ---------------------------------------------------------------------- launching N local processes
WORKER_MODULE = "workbench.distributed_worker"


def check_devices(cfg, nproc: int) -> None:
    """``--nproc N`` on a CUDA device (``TRAIN.DEVICE`` cuda, or auto with a GPU) needs N GPUs: NCCL gives each
    process its own. Raises :class:`~workbench.errors.ConfigError` saying how many are visible."""
    from workbench.errors import ConfigError
    from workbench.trainer import pick_device

    device = pick_device(cfg.TRAIN.DEVICE)
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise ConfigError(f"--nproc {nproc} with `TRAIN.DEVICE` {cfg.TRAIN.DEVICE!r} needs {nproc} GPUs (one per "
                          f"process), {torch.cuda.device_count()} visible; use --nproc {torch.cuda.device_count()} "
                          f"or `TRAIN.DEVICE` 'cpu'")


def checkpoint_world(store, run_id: str) -> int:
    """How many processes wrote run ``run_id``'s checkpoint (1 without one: a fresh start takes any number;
    then the world its last session recorded in the run's environment, else 1)."""
    from workbench.trainer import RESUME_KEYS, load_checkpoint

    path = store.checkpoint_path(run_id)
    if path.is_file():  # read as resume reads it: a damaged file is refused here with the same words
        return int(load_checkpoint(path, RESUME_KEYS).get("world", 1))
    environment = store.run(run_id).get("environment") or {}
    return int(environment.get("world_size", 1))


def resume_world_error(run_id: str, checkpoint, written: int, asked: int):
    """The :class:`~workbench.errors.StoreError` refusing to resume on ``asked`` processes a run whose checkpoint
    ``written`` processes wrote: it holds each one's random states, so only as many continue it exactly."""
    from workbench.errors import StoreError

    def procs(n):
        return f"{n} process{'es' if n != 1 else ''}"

    return StoreError(f"cannot resume run {run_id} on {procs(asked)}: its checkpoint {checkpoint} was written by a "
                      f"run on {procs(written)} (it holds each process's random states, so the run continues exactly "
                      f"only on as many); resume it with `--nproc {written}`")


def launcher_holds_lock() -> bool:
    """Whether this process is a worker :func:`launch_local` started: the launcher (its parent) then holds the
    run's lock for all its workers, and rank 0 does not take it again."""
    owner = os.environ.get(OWNER_PID_ENV)
    return bool(owner) and owner == str(os.getppid())


def launch_local(nproc: int, worker_args: list[str], store_path, run_id: str, resume: bool = False) -> None:
    """Run ``python -m workbench.distributed_worker *worker_args`` on ``nproc`` local processes with
    ``torch.distributed.run``'s launcher (standalone rendezvous on localhost, no restarts) and wait for them.

    The run's row must exist (``queued``): every rank reads its id. The workers get ``WORKBENCH_RUN_PID`` (this
    process: recorded as the run's pid, it owns the workers and they die with it) and, unless set,
    ``OMP_NUM_THREADS`` = cores / ``nproc``. When a worker fails (an error, or killed: say SIGKILL) the launcher
    stops the others; the run is then marked ``failed`` with a message naming each failed rank, its pid and
    exit code or signal (unless rank 0 already recorded the failure and no worker was killed), and
    :class:`~workbench.errors.TrainingFailed` carries that message. A signal to this process (the app's Stop,
    Ctrl-C) stops the workers and ends the run ``stopped`` when a stop was requested, else ``failed``.
    """
    import tempfile
    import uuid

    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from workbench.errors import TrainingFailed
    from workbench.names import ACTIVE
    from workbench.store import RunStore
    from workbench.trainer import path_lock

    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {
        OWNER_PID_ENV: str(os.getpid()),
        "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p),
    }
    if "OMP_NUM_THREADS" not in os.environ:  # N processes share the cores (torchrun itself would set 1)
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    store = RunStore(store_path)
    saved = {k: os.environ.get(k) for k in env}
    # the run's lock, held here for every worker: a second trainer of the run is refused before any worker starts
    with path_lock(store.lock_path(run_id), run_id, where=str(store.path)), \
            tempfile.TemporaryDirectory(prefix="workbench-workers-") as logs:
        if resume:  # queued under this pid until rank 0 reports running: a worker dying first is then this run's story
            store.update_run(run_id, status="queued", pid=os.getpid(), error=None)
        else:
            store.update_run(run_id, pid=os.getpid())
        os.environ.update(env)  # the launcher hands its own environment to the workers
        try:
            config = LaunchConfig(
                min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"workbench-{run_id}-{uuid.uuid4().hex[:8]}",
                rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1,
                logs_specs=DefaultLogsSpecs(log_dir=logs))
            elastic_launch(config, sys.executable)("-m", WORKER_MODULE, *worker_args)
        except ChildFailedError as e:
            message = describe_failures(run_id, e.failures, nproc)
            _record_failure(store, run_id, message, killed=any(f.exitcode < 0 for f in e.failures.values()),
                            active=ACTIVE)
            raise TrainingFailed(message) from None
        except SignalException as e:
            status = "stopped" if store.stop_requested(run_id) else "failed"
            message = (f"run {run_id}: the launcher (pid {os.getpid()}) got {signal_name(e.sigval)}; its "
                       f"{nproc} worker processes were stopped")
            if store.run(run_id)["status"] in ACTIVE:
                store.update_run(run_id, status=status, error=message)
            raise TrainingFailed(message) from None
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        run = store.run(run_id)
        if run["status"] in ACTIVE:  # every worker exited 0 yet none recorded an end: never leave it "running"
            store.update_run(run_id, status="failed", error=f"run {run_id}: its {nproc} workers exited without "
                             "recording how the run ended")


def signal_name(sig) -> str:
    import signal

    try:
        return signal.Signals(int(sig)).name
    except ValueError:
        return f"signal {int(sig)}"


def describe_failures(run_id: str, failures: dict, nproc: int) -> str:
    """The failed workers (torchelastic's ``{rank: ProcessFailure}``) in words: rank, pid, the signal that killed it
    or its exit code, and the error it wrote; ranks that failed alike are named together."""
    alike: dict[tuple[str, str | None], list] = {}
    for rank, f in sorted(failures.items()):
        if f.exitcode < 0:
            what = f"killed by {signal_name(-f.exitcode)} (exit code {f.exitcode})"
        else:
            what = f"exited with code {f.exitcode}"
        error = f.message.get("message") if isinstance(f.message, dict) else None
        alike.setdefault((what, error), []).append((rank, f.pid))
    parts = []  # a killed worker first: the others' errors (a peer gone mid-collective) follow from it
    for (what, error), who in sorted(alike.items(), key=lambda item: not item[0][0].startswith("killed")):
        ranks, pids = ", ".join(str(r) for r, _ in who), ", ".join(str(p) for _, p in who)
        verb = what if what.startswith("exited") else f"was {what}" if len(who) == 1 else f"were {what}"
        parts.append(f"worker rank{'s' if len(who) > 1 else ''} {ranks} (pid{'s' if len(who) > 1 else ''} {pids}) "
                     f"{verb}" + (f": {error}" if error else ""))
    rest = "; the other workers were stopped" if len(failures) < nproc else ""
    return f"run {run_id} failed on {nproc} processes: " + "; ".join(parts) + rest


def _record_failure(store, run_id: str, message: str, killed: bool, active) -> None:
    """Mark the run failed with ``message`` unless rank 0 already recorded a failure of its own and no worker
    was killed (its message is then the story; a killed worker is named before it)."""
    run = store.run(run_id)
    if run["status"] in active:
        store.update_run(run_id, status="failed", error=message)
    elif run["status"] == "failed" and killed:
        store.update_run(run_id, error=f"{message}\n\nrank 0 recorded: {run['error']}")


__all__ = [
    "DistContext", "OWNER_PID_ENV", "RANK_SEED_STRIDE", "all_gather_objects", "all_gather_rows", "all_reduce_sum",
    "average_gradients", "broadcast_flag", "broadcast_module", "broadcast_object", "check_devices",
    "checkpoint_world", "describe_failures", "init_from_env", "launch_local", "launcher_holds_lock", "local_device",
    "owner_pid", "rank_seed", "resume_world_error", "shard", "shutdown", "unshard_order",
]
