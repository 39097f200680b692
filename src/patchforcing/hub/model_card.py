"""The model card (``README.md``) of an exported pipeline folder, from what the run recorded.

The Hub reads the YAML header (library, tags; the license is left for the owner); the body names
the network, the training data and steps (the run's ``config.json``), the metrics the run has
(its ``metrics.jsonl`` and ``metrics.json`` of ``patchforcing evaluate``) and a sampling snippet
with the pipeline's default plan (sampler, NFE and, when it is not uniform, the time grid).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from patchforcing.errors import ConfigError
from patchforcing.json_files import read_json, read_text_capped
from patchforcing.runs import METRICS_LIMIT, RunFolder
from patchforcing.sampling.schedules import UNIFORM

PAPER = ("Schusterbauer, Gui, Li, Ma, Krause, Ommer, \"Denoising, Fast and Slow: Difficulty-Aware Adaptive Sampling for "
         "Image Generation\", CVPR 2026, arXiv 2604.19141")
# The training settings shown in the card, in this order (fields of the run's config.json).
TRAINING_FIELDS = ("preset", "data", "model", "steps", "batch_size", "lr", "warmup_steps", "ema_decay", "timesteps_resolved",
                   "uncertainty_weight", "class_dropout_prob", "repa_encoder", "precision", "seed")
EVAL_FIELDS = ("sampler", "nfe", "steps", "cfg_scale", "num_samples", "fid", "precision", "recall", "accuracy", "feature_network")


@dataclass
class RunRecord:
    """What a run folder recorded: ``config`` (config.json), ``train`` and ``val`` (the last
    training and validation lines of metrics.jsonl) and ``evaluations`` (metrics.json files)."""

    folder: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] | None = None
    val: dict[str, Any] | None = None
    evaluations: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def read_run(source: str | Path, eval_dirs: list[str | Path] = ()) -> RunRecord:
    """The record of the run ``source`` belongs to (a run folder, or a checkpoint inside one), plus
    the ``metrics.json`` of each evaluation folder in ``eval_dirs``.

    Raises:
        ConfigError: an ``eval_dirs`` entry without a readable ``metrics.json``.
    """
    record = RunRecord()
    path = Path(source)
    for folder in RunFolder.around(path):
        if folder.is_run():
            record.folder = folder.path
            record.config = _read_json(folder.config) or {}
            lines = _read_jsonl(folder.metrics)
            record.train = next((m for m in reversed(lines) if "loss" in m), None)
            record.val = next((m for m in reversed(lines) if "val_loss" in m), None)
            break
    for eval_dir in eval_dirs:
        metrics = _read_json(Path(eval_dir) / "metrics.json")
        if not isinstance(metrics, dict):
            raise ConfigError(f"--eval {str(eval_dir)!r} has no readable metrics.json: pass the --out folder of `patchforcing evaluate`")
        record.evaluations.append((str(eval_dir), metrics))
    return record


def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path`` (a regular file of at most 1 MB), or None when it is missing,
    unreadable or not an object."""
    try:
        value = read_json(path)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The readable lines of ``metrics.jsonl`` (a half-written last line is skipped; a file that is
    not a regular one or holds more than ``METRICS_LIMIT`` bytes reads as none)."""
    try:
        text = read_text_capped(path, limit=METRICS_LIMIT)
    except (OSError, ValueError):
        return []
    out = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out


def _value(v: Any, none: str = "none") -> str:
    if v is None:
        return none
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_value(x, none) for x in v)
    return str(v)


def _table(rows: list[tuple[str, Any]]) -> str:
    return "\n".join(["| field | value |", "| --- | --- |", *[f"| {k} | {_value(v)} |" for k, v in rows]])


def sampling_snippet(repo: str, network_config: Any, sampler: str, nfe: int, schedule: str = UNIFORM) -> str:
    """Python that loads the folder (or its Hub id) and samples four images (a non-uniform
    ``schedule`` is spelled out, so the snippet shows the setting the saved default uses)."""
    if network_config.is_text:
        condition = 'prompt=["a bold seven, upright", "the digit 2, thin"]'
    elif network_config.num_classes > 0:
        labels = [i % network_config.num_classes for i in range(4)]
        condition = f"class_labels={labels}"
    else:
        condition = "num_images_per_prompt=4"
    grid = "" if schedule == UNIFORM else f', schedule="{schedule}"'
    return "\n".join([
        "import torch, patchforcing as pf",
        "",
        f'pipe = pf.PatchForcingPipeline.from_pretrained("{repo}")',
        f'images = pipe({condition}, sampler="{sampler}", nfe={nfe}{grid}, generator=torch.Generator().manual_seed(0)).images',
        'images[0].save("sample.png")',
    ])


def hub_task(network: Any) -> tuple[str | None, list[str]]:
    """The Hub's ``pipeline_tag`` and the card's tags for what the network does: ``text-to-image``;
    ``unconditional-image-generation``; a class-conditional network has no Hub task of its own (None)
    and says so in its tags (``class-conditional``, ``class-conditional-image-generation``)."""
    tags = ["patch-forcing", "diffusion", "diffusers", "image-generation"]
    if network.is_text:
        return "text-to-image", [*tags, "text-to-image"]
    if network.num_classes > 0:
        return None, [*tags, "class-conditional", "class-conditional-image-generation"]
    return "unconditional-image-generation", [*tags, "unconditional-image-generation"]


def model_card(*, name: str, repo: str, source: str, network: Any, parameters: int, record: RunRecord, sampler: str, nfe: int,
               vae: str | None, text_encoder: str | None, schedule: str = UNIFORM) -> str:
    """The text of ``README.md``.

    Args:
        name: the title. repo: the id or folder the snippet loads. source: what was exported.
        network: the network's config. parameters: its parameter count.
        record: what the run recorded (``read_run``). sampler, nfe, schedule: the pipeline's default plan.
        vae: the VAE the run recorded (latent networks). text_encoder: a text network's encoder.
    """
    cfg = network.to_dict()
    task, tags = hub_task(network)
    header = ["---", "library_name: patchforcing",
              "# license: left for the owner to set before publishing (for example mit, apache-2.0 or other)",
              f"pipeline_tag: {task}" if task else "# pipeline_tag: none; the Hub has no class-conditional task (the tags say it)",
              "tags:", *[f"- {t}" for t in tags], "---"]
    grid = ("`t_k = k / S`, the paper's" if schedule == UNIFORM else
            "a non-uniform grid of the outer steps, docs/method.md section 5.10; `schedule=\"uniform\"` is the paper's `t_k = k / S`")
    parts = ["\n".join(header), f"# {name}",
             (f"A Patch Forcing network: every image patch has its own diffusion time, a small head predicts how hard each "
              f"patch is, and adaptive samplers let easy patches run ahead ({PAPER}). Exported with `patchforcing export` "
              f"from `{source}`."),
             "## Sampling", "```python\n" + sampling_snippet(repo, network, sampler, nfe, schedule) + "\n```",
             (f"The pipeline's saved defaults: sampler `{sampler}`, NFE {nfe}, time grid `{schedule}` ({grid}); "
              "a call's `sampler=`, `nfe=` and `schedule=` override them."),
             ("`pip install 'patchforcing[vae]'` gives the pipeline (diffusers). The network alone: "
              f'`net = pf.load_model("{repo}")`, then `pf.sample(net, noise, sampler=..., steps=...)`. A Hub id is read '
              "from the local Hugging Face cache (`hf download ID` first)."),
             "## Network", _table([("parameters", f"{parameters:,}"), *cfg.items()])]
    extra = [("VAE", vae)] if vae else []
    extra += [("text encoder", text_encoder)] if text_encoder else []
    if extra:
        parts.append(_table(extra))
    parts.append("## Training")
    if record.folder is None:
        parts.append("No run folder was found beside the checkpoint, so its training data and steps are not known here.")
    else:
        data = record.config.get("data_info") or {}
        rows = [(k, record.config[k]) for k in TRAINING_FIELDS if record.config.get(k) is not None]
        rows += [(f"data: {k}", v) for k, v in data.items() if k in ("name", "num_images", "resolution", "channels", "num_classes", "vae")]
        if record.train:
            rows += [("steps trained", record.train.get("step")), ("images seen", record.train.get("images_seen"))]
        parts.append(_table(rows))
    parts.append("## Metrics")
    metric_rows = []
    if record.train:
        metric_rows += [(f"training loss (step {record.train.get('step')})", record.train.get("loss"))]
    if record.val:
        metric_rows += [(f"validation loss, EMA network (step {record.val.get('step')})", record.val.get("val_loss"))]
    parts.append(_table(metric_rows) if metric_rows else "The run recorded no training metrics.")
    if record.evaluations:
        head = "| " + " | ".join(EVAL_FIELDS) + " |"
        rows = ["| " + " | ".join(_value(m.get(k), "not computed") for k in EVAL_FIELDS) + " |" for _, m in record.evaluations]
        parts.append("`patchforcing evaluate` (lower FID is better):\n\n" + "\n".join([head, "| " + " | ".join("---" for _ in EVAL_FIELDS) + " |", *rows]))
        notes = sorted({f"{k}: {why}" for _, m in record.evaluations for k, why in (m.get("not_computed") or {}).items()})
        if notes:
            parts.append("Not computed: " + "; ".join(notes) + ".")
    parts.append("## Publishing\n\n```bash\nhf upload OWNER/NAME THIS_FOLDER .\n```\n\nSet the license in the header first.")
    return "\n\n".join(parts) + "\n"
