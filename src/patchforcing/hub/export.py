"""``patchforcing export``: a run or checkpoint -> a Hub-ready pipeline folder with a model card.

    patchforcing export --checkpoint runs/digits --out exported/digits --eval eval/la [--schedule shift:3]
    hf upload OWNER/NAME exported/digits .                  # publishing is an upload of that folder

The folder holds ``model_index.json`` (components and sampler settings: sampler, NFE, time grid),
``transformer/`` (the network's config and safetensors weights), ``vae/`` when the run records a
VAE, and ``README.md``.
``pf.load_model``, ``pf.PatchForcingPipeline.from_pretrained`` and every ``--checkpoint`` flag
read it, also by its Hub id once it is in the local Hugging Face cache.
"""

from __future__ import annotations

import os
from pathlib import Path

from patchforcing.errors import ConfigError
from patchforcing.hub.folder import PIPELINE_INDEX
from patchforcing.hub.model_card import model_card, read_run
from patchforcing.hub.pipeline import PatchForcingPipeline
from patchforcing.runs import atomic_write_text, ensure_writable_folder, file_mode
from patchforcing.sampling.schedules import canonical_schedule


def export_pipeline(source: str | os.PathLike, out: str | os.PathLike, *, eval_dirs: list[str | os.PathLike] = (),
                    vae: str | None = None, repo_id: str | None = None, sampler: str | None = None, nfe: int = 32,
                    schedule: str | None = None) -> Path:
    """Write the pipeline folder of ``source`` and its model card to ``out``.

    Args:
        source: a run folder, a checkpoint file, or an exported folder / cached Hub id.
        out: the folder to write (created; an earlier export there is replaced).
        eval_dirs: ``--out`` folders of ``patchforcing evaluate`` whose ``metrics.json`` the card shows.
        vae: the VAE of a latent network when the run records none (a folder or a cached id).
        repo_id: the Hub id the card's snippet loads (default: ``out`` as given).
        sampler, nfe: the pipeline's default sampler (None: ``look-ahead``, ``euler`` for a global-time
            network) and budget.
        schedule: the pipeline's default time grid (``uniform``, ``shift:ALPHA``, ``edm:RHO``; None:
            ``uniform``, or the saved one of an exported folder).

    Returns:
        The folder.

    Raises:
        ConfigError: ``out`` holds files that are not an earlier export, a bad ``--eval`` folder or
            ``--schedule``, or a default plan that does not fit the network.
    """
    out = Path(out)
    if out.is_dir() and any(out.iterdir()) and not (out / PIPELINE_INDEX).is_file():
        raise ConfigError(f"--out {str(out)!r} is a folder with other files; choose a new or empty folder (an earlier export is replaced)")
    record = read_run(source, eval_dirs)  # before the network loads: a bad --eval or --schedule costs nothing
    settings = {"nfe": nfe}
    if sampler is not None:
        settings["sampler"] = sampler
    if schedule is not None:
        settings["schedule"] = canonical_schedule(schedule)
    pipe = PatchForcingPipeline.from_checkpoint(source, vae=vae, **settings)
    pipe.plan()  # the default sampler, budget and time grid must fit the network
    if pipe.network.config.is_text and pipe.config.text_encoder is None:
        pipe.register_to_config(text_encoder=pipe.network.config.text_encoder)  # the encoder's id in model_index.json
    ensure_writable_folder(out)
    pipe.save_pretrained(out)
    _give_files_the_usual_mode(out)
    network = pipe.network
    card = model_card(
        name=f"Patch Forcing: {Path(repo_id or out.resolve()).name}", repo=repo_id or str(out), source=str(source),
        network=network.config, parameters=sum(p.numel() for p in network.parameters()), record=record,
        sampler=pipe.config.sampler, nfe=nfe, schedule=pipe.config.schedule, vae=vae or (record.config.get("data_info") or {}).get("vae"),
        text_encoder=pipe.config.text_encoder or getattr(network.config, "text_encoder", None))
    atomic_write_text(out / "README.md", card)
    return out


def _give_files_the_usual_mode(folder: Path) -> None:
    """Every file under ``folder`` gets the mode of a normally created file (``0644`` under umask 022):
    the safetensors writer creates the weights ``0600``, unlike every other file of the export."""
    mode = file_mode()
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.chmod(path, mode)


__all__ = ["export_pipeline"]
