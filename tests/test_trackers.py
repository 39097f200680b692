"""``train --log tensorboard`` / ``--log wandb``: the trackers receive exactly what ``metrics.jsonl`` holds
(read back with TensorBoard's event reader and from W&B's offline run files), the sample grids, and a
resumed run continues its W&B run; a missing package is one error naming the extra."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import patchforcing as pf
from patchforcing.errors import ConfigError
from patchforcing.training import resolve_config
from patchforcing.training.trackers import parse_trackers, scalars

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_KW = dict(depth=1, hidden_size=32, num_heads=2, batch_size=16, device="cpu", val_size=32, sample_count=4, sample_steps=2,
               log_every=2, val_every=2, sample_every=2, ckpt_every=2)


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    """A run of 4 steps, then resumed to 6, logging to both trackers (W&B offline, nothing leaves the machine)."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    root = tmp_path_factory.mktemp("tracked")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONFIG_DIR": root / "wandb-config",
                           "WANDB_CACHE_DIR": root / "wandb-cache", "WANDB_DATA_DIR": root / "wandb-data"}.items():
            mp.setenv(key, str(value))
        cfg = resolve_config("digits", out=str(root / "run"), steps=4, log="tensorboard,wandb", **TINY_KW)
        pf.train(cfg)
        first_id = (root / "run" / "wandb-run-id").read_text().strip()
        pf.train(cfg.replace(steps=6))  # rerunning the command with more steps resumes
    lines = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    return root / "run", lines, first_id


def _expected(lines) -> dict[str, dict[int, float]]:
    """Every scalar of metrics.jsonl: key -> {step: value}."""
    out: dict[str, dict[int, float]] = {}
    for line in lines:
        for key, value in scalars(line).items():
            out.setdefault(key, {})[line["step"]] = value
    return out


def test_tensorboard_events_hold_every_metrics_scalar_once(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, lines, _ = tracked_run
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    expected = _expected(lines)
    assert {"loss", "flow_loss", "uncertainty_loss", "grad_norm", "lr", "images_per_sec", "images_seen", "time_s", "val_loss",
            "val_segments/0", "val_segments/7"} <= set(expected)
    assert set(events.Tags()["scalars"]) == set(expected)
    for key, by_step in expected.items():
        got = events.Scalars(key)
        assert [e.step for e in got] == sorted(by_step) == [2, 4, 6], key  # the resumed run logged each step once
        assert [e.value for e in got] == pytest.approx([by_step[s] for s in sorted(by_step)], rel=1e-6), key
    grids = events.Images("samples")
    assert [e.step for e in grids] == [2, 4, 6] and grids[0].width > 0


def _wandb_records(path: Path) -> list[bytes]:
    """The records of a ``.wandb`` file: a ``:W&B`` header, then LevelDB-log chunks in 32 KiB blocks."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, out, chunk = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            out.append(chunk)
            chunk = b""
    return out


def test_wandb_offline_run_holds_the_metrics_and_resumes_the_same_run(tracked_run):
    from wandb.proto import wandb_internal_pb2

    run, lines, first_id = tracked_run
    assert (run / "wandb-run-id").read_text().strip() == first_id
    folders = sorted((run / "wandb").glob("offline-run-*"))
    assert len(folders) == 2 and all(f.name.endswith(f"-{first_id}") for f in folders)  # one run, started twice
    history, ids = {}, set()
    for folder in folders:
        for raw in _wandb_records(folder / f"run-{first_id}.wandb"):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(raw)
            kind = record.WhichOneof("record_type")
            if kind == "run":
                ids.add(record.run.run_id)
            elif kind == "history":
                row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
                history[row["_step"]] = row
    assert ids == {first_id}
    assert sorted(history) == [2, 4, 6]
    for key, by_step in _expected(lines).items():
        for step, value in by_step.items():
            assert history[step][key] == pytest.approx(value, rel=1e-6), (key, step)
    images = sorted(p.name.split("_")[1] for f in folders for p in (f / "files" / "media" / "images").glob("samples_*.png"))
    assert images == ["2", "4", "6"]


def test_a_missing_tracker_package_names_its_extra_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now raises ImportError
    cfg = resolve_config("digits", out=str(tmp_path / "run"), steps=2, log="wandb", **TINY_KW)
    with pytest.raises(ConfigError, match=r"--log wandb needs the wandb package: pip install 'patchforcing\[wandb\]'"):
        pf.train(cfg)
    assert not (tmp_path / "run").exists()


def test_tracker_names_are_checked():
    assert parse_trackers("none") == () and parse_trackers("wandb, tensorboard") == ("wandb", "tensorboard")
    with pytest.raises(ConfigError, match="unknown tracker mlflow"):
        resolve_config("digits", log="mlflow")
