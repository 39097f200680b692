"""``patchforcing export`` and ``patchforcing app``: the Hugging Face side of the command line.

    patchforcing export --checkpoint runs/digits --out exported/digits [--eval eval/la] [--schedule shift:3]
    patchforcing app    --checkpoint runs/digits [--port 7860] [--host 127.0.0.1]

diffusers (extra ``[vae]``) and Gradio (extra ``[app]``) are imported when these commands run, so
the other commands start without them.
"""

from __future__ import annotations

import argparse

from patchforcing.app_settings import HOST, PORT, SessionLimits, check_port
from patchforcing.commands.plan_flags import add_schedule_flag
from patchforcing.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a Hub-ready diffusers pipeline folder with a model card",
                       description="Write the diffusers pipeline folder of a run or checkpoint (model_index.json, transformer/, "
                       "vae/ for latent networks) and its model card README.md. Publish it with "
                       "`hf upload OWNER/NAME FOLDER .` (huggingface_hub's command line)")
    p.add_argument("--checkpoint", required=True, help="a run folder, a checkpoint file, or an exported folder")
    p.add_argument("--out", required=True, help="the folder to write (model_index.json, transformer/, vae/, README.md)")
    p.add_argument("--eval", action="append", default=[], metavar="DIR",
                   help="an output folder of `patchforcing evaluate` whose metrics.json goes into the card (repeatable)")
    p.add_argument("--vae", default=None, help="latent networks: the AutoencoderKL (folder or cached id) when the run records none")
    p.add_argument("--repo-id", default=None, help="the Hub id the card's snippet loads (default: the --out folder)")
    p.add_argument("--sampler", default=None, help="the pipeline's default sampler (default: look-ahead; euler for a SiT network)")
    p.add_argument("--nfe", type=int, default=32, help="the pipeline's default budget of network evaluations")
    add_schedule_flag(p, default=None, default_help="uniform (re-exporting a folder: its saved grid); saved as the pipeline's default")
    p.set_defaults(func=run_export)

    limits = SessionLimits()
    a = sub.add_parser("app", help="an interactive page: sample, then scrub through the sampler's steps",
                       description="A local Gradio page (extra [app]): pick a class or type a prompt, a sampler, the NFE, "
                       "the time grid, guidance and a seed; see the image, then scrub through its frames, one per outer step "
                       "and per inner evaluation (image, prediction, difficulty map, per-patch time map). "
                       f"It is served on http://{HOST}:{PORT} (--port changes the port; --host another address, with a "
                       f"warning), never through a share link, and keeps {limits.describe()}.")
    a.add_argument("--checkpoint", required=True, help="a run folder, a checkpoint file, an exported folder or a cached Hub id")
    a.add_argument("--vae", default=None, help="latent networks: the AutoencoderKL (folder or cached id) when the run records none")
    a.add_argument("--port", type=int, default=PORT, help=f"the port the page is served on [default: {PORT}]")
    a.add_argument("--host", default=HOST, metavar="ADDRESS",
                   help=f"the address the page listens on [default: {HOST}, this machine only]; another one (0.0.0.0: every "
                        "network of this machine) lets anyone who reaches it use the page, and prints a warning")
    a.add_argument("--max-sessions", type=int, default=limits.sessions,
                   help=f"browser sessions whose frames are kept, the least recently used dropped first [default: {limits.sessions}]")
    a.add_argument("--session-minutes", type=float, default=limits.minutes,
                   help=f"a session's frames are dropped this long after its last Generate [default: {limits.minutes:g}]")
    a.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:K")
    a.set_defaults(func=run_app)


def _require(module: str, extra: str):
    try:
        return __import__(module)
    except ImportError:
        raise ConfigError(f"this command needs {module}: pip install 'patchforcing[{extra}]'") from None


def run_export(args: argparse.Namespace) -> int:
    _require("diffusers", "vae")
    from patchforcing.hub.export import export_pipeline  # diffusers: optional extra [vae]

    out = export_pipeline(args.checkpoint, args.out, eval_dirs=args.eval, vae=args.vae, repo_id=args.repo_id,
                          sampler=args.sampler, nfe=args.nfe, schedule=args.schedule)
    print(f"wrote {out} (model_index.json, transformer/{', vae/' if (out / 'vae').is_dir() else ''}, README.md); "
          f"publish it with `hf upload OWNER/NAME {out} .`")
    return 0


def run_app(args: argparse.Namespace) -> int:
    _require("diffusers", "vae")
    _require("gradio", "app")
    from patchforcing.app import launch  # gradio and diffusers: optional extras [app], [vae]

    limits = SessionLimits(sessions=args.max_sessions, minutes=args.session_minutes)  # checked before the network loads
    check_port(args.port)
    launch(args.checkpoint, vae=args.vae, host=args.host, port=args.port, device=args.device, limits=limits)
    return 0
