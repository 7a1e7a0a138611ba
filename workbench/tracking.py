"""Sinks (store, W&B) and the W&B pull (online API or offline run files) -> pandas.

W&B is an extra sink and source, never a requirement: ``wandb`` is imported lazily, a W&B failure
is logged and disables the sink for the rest of the run, and training goes on (the store has
everything).
"""

from __future__ import annotations

import json
import logging
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from workbench.events import BaseSink, EpochResult, RunFinished, RunStarted, TestResult
from workbench.store import RunStore, metric_split

log = logging.getLogger(__name__)
SELECTED_EPOCH = "selected_epoch"  # the W&B summary key of the epoch the test metrics beside it belong to


class StoreSink(BaseSink):
    """The one writer of a run's record in the :class:`RunStore` (DESIGN.md section 1, data flow).

    ``on_start``: status ``running``, pid, ordered ranks, resolved config and reproducibility record;
    ``on_epoch``: metrics, curves and health in one transaction; ``on_test``: the test metrics and curves
    at the selected epoch (split ``test``, replacing any earlier ones); ``on_finish``: status and error. The
    trainer of a single run and a sweep's driver (for each trial's reported events) use this same
    class, so a trial's record has the same shape as a single run's. The run row must exist (created
    ``queued`` by the trainer, a launcher or the sweep driver).
    """

    name = "store"

    def __init__(self, store: RunStore):
        self.store = store

    def on_start(self, event: RunStarted) -> None:
        self.store.update_run(
            event.run_id, status="running", pid=event.pid, error=None, config=dict(event.config),
            ranks=list(event.ranks), environment=dict(event.environment) or None,
        )

    def on_epoch(self, event: EpochResult) -> None:
        self.store.write_epoch(event.run_id, event.epoch, event.metrics, event.curves, health=dict(event.health))

    def on_test(self, event: TestResult) -> None:
        self.store.write_once(event.run_id, "test", event.epoch, event.metrics, event.curves)

    def on_finish(self, event: RunFinished) -> None:
        self.store.update_run(event.run_id, status=event.status, error=event.error)


class WandbSink(BaseSink):
    """Logs config, per-epoch metrics (``step = epoch``) and the final threshold curves to W&B; the test
    metrics (one evaluation, at the selected epoch) go to the run's summary, with ``selected_epoch``."""

    name = "wandb"

    def __init__(self, project: str, mode: str = "offline", group: str | None = None, directory: str | None = None):
        self.project, self.mode, self.group = project, mode, group
        self.directory = directory
        self.run = None
        self.failed: str | None = None
        self._last: EpochResult | None = None

    def _guard(self, action, *args) -> None:
        if self.failed is not None:
            return
        try:
            action(*args)
        except Exception as e:  # W&B must never stop training: the store has everything
            self.failed = f"{type(e).__name__}: {e}"
            log.warning("W&B logging disabled for the rest of this run: %s", self.failed)
            self._close_quietly()

    def _close_quietly(self) -> None:
        """After a failure, still close the W&B run (best effort) so it does not stay open."""
        if self.run is not None:
            try:
                self.run.finish(exit_code=1)
            except Exception as e:
                log.warning("W&B run could not be closed: %s", e)
            self.run = None

    def on_start(self, event: RunStarted) -> None:
        self._guard(self._init, event)

    def _init(self, event: RunStarted) -> None:
        import wandb

        from workbench.config import flatten

        os.environ.setdefault("WANDB_SILENT", "true")
        if self.directory:
            Path(self.directory).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=self.project, mode=self.mode, group=self.group, dir=self.directory, id=event.run_id,
            name=event.run_id, config=flatten(dict(event.config)), resume="allow", reinit="create_new",
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
        )

    def on_epoch(self, event: EpochResult) -> None:
        self._last = event
        self._guard(lambda: self.run.log({**event.metrics, "epoch": event.epoch}, step=event.epoch))

    def on_test(self, event: TestResult) -> None:
        if self.run is not None:
            self._guard(lambda: self.run.summary.update({**event.metrics, SELECTED_EPOCH: event.epoch}))

    def on_finish(self, event: RunFinished) -> None:
        def finish():
            if self._last is not None and len(self._last.curves):
                import wandb

                self.run.log({"curves/val": wandb.Table(dataframe=self._last.curves)}, step=self._last.epoch)
            self.run.summary["status"] = event.status
            if event.reason:
                self.run.summary["stop_reason"] = event.reason
            sync_file = Path(self.run.settings.sync_file)
            self.run.finish(exit_code=0 if event.status != "failed" else 1)
            if self.mode == "offline" and not wait_for_exit_record(sync_file):
                log.warning("W&B offline file %s is still incomplete after finish()", sync_file)

        if self.run is not None:
            self._guard(finish)


def wandb_dir(config, store: RunStore | None) -> str:
    """``TRACKING.WANDB.DIR`` or, by default, the store's folder (``TRACKING.STORE``'s without a store)."""
    from workbench.names import wandb_dir_for

    return wandb_dir_for(store.path if store is not None else config.TRACKING.STORE, config.TRACKING.WANDB.DIR)


def default_sinks(config, store: RunStore | None) -> list[BaseSink]:
    """The sinks a config asks for besides the store (W&B when enabled)."""
    w = config.TRACKING.WANDB
    if not w.ENABLED or w.MODE == "disabled":
        return []
    return [WandbSink(w.PROJECT, w.MODE, w.GROUP, wandb_dir(config, store))]


# ---------------------------------------------------------------------- offline W&B files
_HEADER = 7  # ":W&B" + 2-byte magic + 1-byte version
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _wandb_records(path: Path) -> Iterator[bytes]:
    """Raw protobuf records of a ``.wandb`` file (LevelDB log format: 32 KiB blocks, 7-byte headers)."""
    data = path.read_bytes()
    if not data.startswith(b":W&B"):
        raise ValueError(f"{path}: not a W&B transaction log (bad header)")
    pos, pending = _HEADER, b""
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            break
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk
            pending = b""


def wait_for_exit_record(path: Path, timeout: float = 30.0) -> bool:
    """Wait until the ``.wandb`` file at ``path`` holds its run's exit record; False on timeout.

    ``run.finish()`` returns before wandb's service has flushed an offline run to disk (the file
    can still be only its 7-byte header), so a reader right after training would see no run.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    deadline = time.monotonic() + timeout
    while True:
        try:
            for raw in _wandb_records(path):
                rec = pb.Record()
                rec.ParseFromString(raw)
                if rec.WhichOneof("record_type") == "exit":
                    return True
        except Exception:  # missing or half-written file: look again
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def read_wandb_offline_run(run_dir: str | Path) -> dict:
    """``{"run_id", "project", "group", "config": {...}, "summary": {...}, "history": DataFrame}`` from an
    offline run folder.

    ``history`` has one row per logged step and one column per metric; ``summary`` the run summary's
    explicit updates (``run.summary[...] = ...``: the test metrics, the status), the last value per key.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("*.wandb")) if run_dir.is_dir() else [run_dir]
    if not files:
        raise FileNotFoundError(f"{run_dir}: no .wandb file")
    info: dict = {"run_id": None, "project": None, "group": None, "config": {}, "summary": {}}
    rows = []
    for raw in _wandb_records(files[0]):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            info.update(run_id=rec.run.run_id, project=rec.run.project, group=rec.run.run_group or None)
            _apply_config(info["config"], rec.run.config.update)
        elif kind == "config":
            _apply_config(info["config"], rec.config.update)
        elif kind == "summary":
            _apply_config(info["summary"], rec.summary.update)
        elif kind == "history":
            rows.append({_item_key(it): json.loads(it.value_json) for it in rec.history.item})
    info["config"].pop("_wandb", None)
    info["history"] = pd.DataFrame(rows)
    return info


def _item_key(item) -> str:
    return item.key or "/".join(item.nested_key)


def _apply_config(config: dict, updates) -> None:
    for item in updates:
        config[_item_key(item)] = json.loads(item.value_json)


def offline_run_dirs(root: str | Path) -> list[Path]:
    """Every ``offline-run-*`` folder under ``root`` (a ``wandb`` folder or its parent), oldest first."""
    root = Path(root)
    return sorted(p for p in root.rglob("offline-run-*") if p.is_dir())


def pull_wandb(
    offline_root: str | Path | None = None, project: str | None = None, group: str | None = None,
    entity: str | None = None, api=None,
) -> pd.DataFrame:
    """Tidy ``run, group, config (dict), epoch, metric, value`` from W&B.

    Offline (``offline_root`` given): read the ``.wandb`` files, no server needed. Online: the W&B
    public API (``wandb.Api()``, or ``api`` for a test double) for ``entity/project``, filtered by group.
    The per-epoch history, plus the test metrics of the run's summary at its ``selected_epoch`` (where
    the store keeps them too).
    """
    runs = _offline_runs(offline_root, project, group) if offline_root is not None else _online_runs(project, group, entity, api)
    frames = []
    for run in runs:
        h = run["history"]
        if h.empty:
            continue
        step = h["epoch"] if "epoch" in h else h["_step"]
        # a logged table or other media object is flattened into "<key>/_type", "<key>/nrows", ...: not metrics
        media = tuple(c[: -len("_type")] for c in h.columns if c.endswith("/_type"))
        metric_cols = [c for c in h.columns if not c.startswith("_") and c != "epoch"
                       and not (media and c.startswith(media)) and pd.api.types.is_numeric_dtype(h[c])]
        long = h.assign(epoch=step)[["epoch", *metric_cols]].melt(id_vars="epoch", var_name="metric").dropna()
        test = _summary_test_rows(run.get("summary") or {})
        if len(test):
            long = pd.concat([long, test], ignore_index=True)
        long.insert(0, "run", run["run_id"])
        long.insert(1, "group", run["group"])
        long.insert(2, "config", [run["config"]] * len(long))
        frames.append(long)
    cols = ["run", "group", "config", "epoch", "metric", "value"]
    if not frames:
        return pd.DataFrame(columns=cols)
    out = pd.concat(frames, ignore_index=True)[cols]
    out["epoch"] = out["epoch"].astype(int)
    out["value"] = out["value"].astype(float)
    return out


def _summary_test_rows(summary: dict) -> pd.DataFrame:
    """``epoch, metric, value`` of a W&B summary's test metrics (:meth:`WandbSink.on_test`), at its selected epoch."""
    epoch = summary.get(SELECTED_EPOCH)
    rows = [(epoch, k, float(v)) for k, v in summary.items()
            if metric_split(k) == "test" and isinstance(v, (int, float)) and not isinstance(v, bool)]
    return pd.DataFrame(rows if isinstance(epoch, int) else [], columns=["epoch", "metric", "value"]).dropna()


def _offline_runs(root, project, group) -> list[dict]:
    runs = [read_wandb_offline_run(d) for d in offline_run_dirs(root)]
    latest: dict[str, dict] = {}
    for r in runs:  # a resumed run writes a second folder with the same id: the later one wins per step
        if (project and r["project"] != project) or (group and r["group"] != group):
            continue
        if r["run_id"] in latest:
            prev = latest[r["run_id"]]
            merged = pd.concat([prev["history"], r["history"]], ignore_index=True)
            key = "epoch" if "epoch" in merged else "_step"
            r = {**r, "history": merged.drop_duplicates(subset=[key], keep="last"),
                 "summary": {**prev.get("summary", {}), **r.get("summary", {})}}
        latest[r["run_id"]] = r
    return list(latest.values())


def _online_runs(project, group, entity, api) -> list[dict]:
    if project is None:
        raise ValueError("pull_wandb needs `project` (online) or `offline_root` (offline files)")
    if api is None:
        import wandb

        api = wandb.Api()
    path = f"{entity}/{project}" if entity else project
    filters = {"group": group} if group else None
    out = []
    for run in api.runs(path, filters=filters):
        history = pd.DataFrame(list(run.scan_history()))
        summary = getattr(run, "summary", None)  # the test metrics (WandbSink.on_test)
        out.append({"run_id": run.id, "group": run.group, "config": dict(run.config), "history": history,
                    "summary": dict(summary) if summary is not None else {}})
    return out


def import_wandb_runs(tidy: pd.DataFrame, store: RunStore, sweep_id: str | None = None) -> list[str]:
    """Write pulled runs into the store (status ``finished``) so the dashboard shows them; returns ids."""
    from workbench.config import Config, apply_overrides

    ids = []
    for run_id, runs in tidy.groupby("run"):
        if store.has_run(run_id):
            ids.append(run_id)
            continue
        flat = runs["config"].iloc[0]
        config = apply_overrides({}, {k: v for k, v in flat.items() if k.isupper() or "." in k})
        try:
            config = Config.from_dict(config).to_dict()
        except ValueError:
            pass  # a run from another tool: keep its raw config
        store.create_run(config, name=run_id, run_id=run_id, sweep_id=sweep_id or runs["group"].iloc[0], status="finished")
        for epoch, rows in runs.groupby("epoch"):
            store.write_epoch(run_id, int(epoch), dict(zip(rows["metric"], rows["value"])))
        ids.append(run_id)
    return ids

