"""What the interactive page keeps as sessions come and go: its resident memory and its frames.

Serves the page (``patchforcing.app``) of a digits-shaped network (PF-XS/2: 16x16 grey, difficulty
head; seeded random weights, which cost what trained ones cost) in a child process, then sends
``--clients`` Gradio clients one after the other, each a new browser session that presses Generate
at ``--nfe`` with look-ahead. After each client it prints the child's resident memory (``VmRSS``)
and what the page holds: the sessions with frames and the bytes of their frames.

    OMP_NUM_THREADS=1 python benchmarks/app_memory.py                       # 24 clients at NFE 512
    OMP_NUM_THREADS=1 python benchmarks/app_memory.py --clients 10 --max-sessions 4
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys
import torch
torch.set_num_threads(1)
import patchforcing as pf
from patchforcing.app import SessionLimits, build_app, frames_nbytes, serve
from patchforcing.hub.transformer import PatchForcingTransformerModel

port, sessions, nfe = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
net = pf.create_model("PF-XS/2").eval()
with torch.no_grad():
    for p in net.parameters():
        p.add_(0.05 * torch.randn_like(p))  # no zero output layers: every map has structure
pipe = pf.PatchForcingPipeline(PatchForcingTransformerModel.from_network(net), nfe=nfe)
pipe.set_progress_bar_config(disable=True)
limits = SessionLimits(sessions=sessions)
page = build_app(pipe, limits=limits)
serve(page, limits=limits, port=port, block=False)
for line in sys.stdin:  # one report per line the parent sends: the frames of every tab of every session
    held = [[v for v in s.state_data.values() if isinstance(v, list)] for s in page.state_holder.session_data.values()]
    held = [sum(map(frames_nbytes, lists)) for lists in held if lists]
    rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:"))
    print(json.dumps({"rss_kib": rss, "sessions": len(held), "frame_bytes": sum(held)}), flush=True)
page.close()  # the parent is gone (its pipe closed): stop serving
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=24, help="browser sessions, one after the other")
    ap.add_argument("--nfe", type=int, default=512, help="the NFE each session generates at (the page's largest)")
    ap.add_argument("--max-sessions", type=int, default=16, help="the page's session cap (--max-sessions of `app`)")
    args = ap.parse_args()
    from gradio_client import Client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(port), str(args.max_sessions), str(args.nfe)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent)
    try:
        assert child.stdout.readline().startswith("serving the page on")

        def report() -> dict:
            child.stdin.write("report\n")
            child.stdin.flush()
            return json.loads(child.stdout.readline())

        first = report()
        print(f"page of PF-XS/2 (16x16 grey), look-ahead at NFE {args.nfe}, --max-sessions {args.max_sessions}")
        print(f"{'clients':>7}  {'RSS MiB':>8}  {'sessions held':>13}  {'frames KiB':>10}")
        print(f"{0:>7}  {first['rss_kib'] / 1024:>8.0f}  {first['sessions']:>13}  {first['frame_bytes'] / 1024:>10.1f}")
        for k in range(1, args.clients + 1):
            Client(f"http://127.0.0.1:{port}", verbose=False).predict(
                "3", "look-ahead", args.nfe, 1.0, 0.0, 1.0, str(k), "uniform", api_name="/generate")
            r = report()
            print(f"{k:>7}  {r['rss_kib'] / 1024:>8.0f}  {r['sessions']:>13}  {r['frame_bytes'] / 1024:>10.1f}")
    finally:
        child.kill()


if __name__ == "__main__":
    main()
