"""Every flag of ``evaluate`` and ``sample``, for a class-conditional and a text-to-image network:
each is honoured (the output changes or records it, or provably does not depend on it) or refused
with one error line -- never silently ignored. The flags are read from the parser, so a new flag
fails this test until it is given a case here."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

import patchforcing as pf
from conftest import make_vae
from patchforcing.commands import build_parser, main
from patchforcing.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")

CHANGES, SAME, REFUSED = "changes", "same", "refused"
VOLATILE = ("seconds", "seconds_sampling", "checkpoint", "samples_npz")  # wall times and paths


def _perturb(net, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return net.eval()


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    root = tmp_path_factory.mktemp("walk")
    out = {}
    for seed, tag in ((0, ""), (1, "-weak")):
        torch.manual_seed(seed)
        cls = _perturb(pf.create_model("PF-XS/2", depth=1, hidden_size=32, num_heads=2), seed)  # 1x16x16 digits
        txt = _perturb(create_model("T2I-XS/2", depth=1, hidden_dim=32, head_dim=16, mapping_dim=16, txt_refiner_dim=32,
                                    txt_refiner_head_dim=16), seed)
        out["class" + tag] = pf.save_model(cls, root / f"class{tag}.safetensors")
        out["text" + tag] = pf.save_model(txt, root / f"text{tag}.safetensors")
    pytest.importorskip("diffusers")
    make_vae(root / "vae")
    out["vae"] = root / "vae"
    prompts = root / "prompts.txt"
    prompts.write_text("a bold one\nthe digit 5, thin, slanted left\n")
    out["prompts"] = prompts
    out["root"] = root
    return out


def _flags(command: str) -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if hasattr(a, "choices") and isinstance(a.choices, dict)).choices[command]
    return {s for a in sub._actions for s in a.option_strings if s not in ("-h", "--help")}


def _fingerprint(out: Path) -> dict:
    """What an evaluation or sampling run produced, without wall times and paths."""
    files = {}
    for f in sorted(out.rglob("*")) if out.is_dir() else [out]:
        if f.is_file() and f.name != "run.lock":
            if f.name == "metrics.json":
                m = json.loads(f.read_text())
                files[f.name] = {k: v for k, v in m.items() if k not in VOLATILE}
            else:
                files[f.name if out.is_dir() else "out"] = hashlib.sha256(f.read_bytes()).hexdigest()
    return files


def _run(argv: list[str], out: Path, capsys) -> tuple[int, dict, str]:
    rc = main([*argv, "--out", str(out)])
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    fingerprint = _fingerprint(out) if rc == 0 else {}
    if rc == 0 and not out.is_dir():  # sample: its summary line records the plan
        fingerprint["summary"] = captured.out.replace(str(out), "OUT")
    return rc, fingerprint, (err[-1] if err else "")


# flag -> (base flags, flag's own argv, {network kind: expectation}); {NET}/{WEAK}/{VAE}/{PROMPTS} are filled in.
EVALUATE = {
    "--checkpoint": ([], ["--checkpoint", "{WEAK}"], {"class": CHANGES, "text": CHANGES}),
    "--sampler": ([], ["--sampler", "euler-pf"], {"class": CHANGES, "text": CHANGES}),
    "--nfe": ([], ["--nfe", "3"], {"class": CHANGES, "text": CHANGES}),
    "--p-frac": (["--sampler", "look-ahead", "--nfe", "4"], ["--p-frac", "0.2"], {"class": CHANGES, "text": CHANGES}),
    "--p": (["--sampler", "look-ahead", "--nfe", "4"], ["--p", "0.2"], {"class": CHANGES, "text": CHANGES}),
    "--n-inner": (["--sampler", "dual-loop", "--nfe", "4"], ["--n-inner", "2"], {"class": CHANGES, "text": CHANGES}),
    "--context-ratio": (["--sampler", "look-ahead", "--nfe", "4"], ["--context-ratio", "2"], {"class": CHANGES, "text": CHANGES}),
    "--correct-last": (["--sampler", "look-ahead-heun", "--nfe", "7"], ["--correct-last", "1"], {"class": CHANGES, "text": CHANGES}),
    "--schedule": (["--nfe", "4"], ["--schedule", "edm:7"], {"class": CHANGES, "text": CHANGES}),  # 2 steps either way
    "--cfg-scale": ([], ["--cfg-scale", "3"], {"class": CHANGES, "text": CHANGES}),
    "--guidance-interval": (["--cfg-scale", "3"], ["--guidance-interval", "sigma:0.5,2"], {"class": CHANGES, "text": CHANGES}),
    "--guide-checkpoint": (["--cfg-scale", "3"], ["--guide-checkpoint", "{WEAK}"], {"class": CHANGES, "text": CHANGES}),
    "--num-samples": ([], ["--num-samples", "7"], {"class": CHANGES, "text": CHANGES}),
    "--seed": ([], ["--seed", "1"], {"class": CHANGES, "text": CHANGES}),
    "--data": ([], ["--data", "photos"], {"class": CHANGES, "text": REFUSED}),  # class: recorded, metrics named missing
    "--stats": ([], ["--stats", "ref.npz"], {"class": REFUSED, "text": REFUSED}),
    "--vae": ([], ["--vae", "{VAE}"], {"class": REFUSED, "text": REFUSED}),
    "--inception-weights": ([], ["--inception-weights", "w.pth"], {"class": REFUSED, "text": REFUSED}),
    "--batch-size": ([], ["--batch-size", "2"], {"class": SAME, "text": SAME}),
    "--save-npz": ([], ["--save-npz"], {"class": CHANGES, "text": CHANGES}),
    "--calibration": ([], ["--calibration"], {"class": CHANGES, "text": CHANGES}),
    "--val-loss": ([], ["--val-loss"], {"class": CHANGES, "text": CHANGES}),
    "--device": ([], ["--device", "cpu"], {"class": SAME, "text": SAME}),
    "--dist-timeout": ([], ["--dist-timeout", "60"], {"class": SAME, "text": SAME}),
    "--out": ([], [], {"class": SAME, "text": SAME}),  # another folder, the same contents
}
EVALUATE_BASE = ["evaluate", "--checkpoint", "{NET}", "--sampler", "look-ahead", "--nfe", "2", "--num-samples", "6"]

SAMPLE = {
    "--checkpoint": ([], ["--checkpoint", "{WEAK}"], {"class": CHANGES, "text": CHANGES}),
    "--sampler": ([], ["--sampler", "dual-loop"], {"class": CHANGES, "text": CHANGES}),
    "--steps": ([], ["--steps", "3"], {"class": CHANGES, "text": CHANGES}),
    "--nfe": ([], ["--nfe", "3"], {"class": CHANGES, "text": CHANGES}),
    "--p-frac": (["--sampler", "look-ahead"], ["--p-frac", "0.2"], {"class": CHANGES, "text": CHANGES}),
    "--p": (["--sampler", "look-ahead"], ["--p", "0.2"], {"class": CHANGES, "text": CHANGES}),
    "--n-inner": (["--sampler", "dual-loop"], ["--n-inner", "2"], {"class": CHANGES, "text": CHANGES}),
    "--context-ratio": (["--sampler", "look-ahead"], ["--context-ratio", "2"], {"class": CHANGES, "text": CHANGES}),
    "--correct-last": (["--sampler", "look-ahead-heun"], ["--correct-last", "1"], {"class": CHANGES, "text": CHANGES}),
    "--schedule": ([], ["--schedule", "shift:3"], {"class": CHANGES, "text": CHANGES}),
    "--cfg-scale": ([], ["--cfg-scale", "3"], {"class": CHANGES, "text": CHANGES}),
    "--guidance-interval": (["--cfg-scale", "3"], ["--guidance-interval", "0.5,1"], {"class": CHANGES, "text": CHANGES}),
    "--guide-checkpoint": (["--cfg-scale", "3"], ["--guide-checkpoint", "{WEAK}"], {"class": CHANGES, "text": CHANGES}),
    "--labels": ([], ["--labels", "3,4"], {"class": CHANGES, "text": REFUSED}),
    "--prompt": ([], ["--prompt", "a bold one"], {"class": REFUSED, "text": CHANGES}),
    "--prompts-file": ([], ["--prompts-file", "{PROMPTS}"], {"class": REFUSED, "text": CHANGES}),
    "--text-encoder": ([], ["--text-encoder", "byte-toy"], {"class": REFUSED, "text": SAME}),
    "--num-samples": ([], ["--num-samples", "3"], {"class": CHANGES, "text": CHANGES}),
    "--seed": ([], ["--seed", "1"], {"class": CHANGES, "text": CHANGES}),
    "--vae": ([], ["--vae", "{VAE}"], {"class": REFUSED, "text": REFUSED}),
    "--vae-scale": ([], ["--vae-scale", "0.5"], {"class": REFUSED, "text": REFUSED}),
    "--show-difficulty": ([], ["--show-difficulty"], {"class": CHANGES, "text": CHANGES}),
    "--device": ([], ["--device", "cpu"], {"class": SAME, "text": SAME}),
    "--batch-size": ([], ["--batch-size", "1"], {"class": SAME, "text": SAME}),  # per-image seeds and mask streams
    "--out": ([], [], {"class": SAME, "text": SAME}),
}
SAMPLE_BASE = {"class": ["sample", "--checkpoint", "{NET}", "--sampler", "euler-pf", "--steps", "2", "--num-samples", "2",
                         "--labels", "1"],
               "text": ["sample", "--checkpoint", "{NET}", "--sampler", "euler-pf", "--steps", "2", "--num-samples", "2",
                        "--prompt", "a thin seven", "--prompt", "the digit 2, bold"]}


def _fill(argv, nets, kind):
    names = {"{NET}": nets[kind], "{WEAK}": nets[kind + "-weak"], "{VAE}": nets["vae"], "{PROMPTS}": nets["prompts"]}
    return [str(names.get(a, a)) for a in argv]


def _without(base: list[str], flags: list[str]) -> list[str]:
    """``base`` with the flags (and their values) that ``flags`` sets again removed."""
    out, skip = [], False
    given = {f for f in flags if f.startswith("--")}
    for i, a in enumerate(base):
        if skip:
            skip = False
            continue
        if a in given and a not in ("--prompt",):
            skip = i + 1 < len(base) and not base[i + 1].startswith("--")
            continue
        out.append(a)
    return out


def _walk(command, cases, base_for, nets, kind, tmp_path, capsys):
    assert _flags(command) == set(cases), "give every flag of the parser a case here"
    checked = 0
    for flag, (extra, own, expect) in cases.items():
        base = _fill(base_for(kind), nets, kind)
        a_argv = _without(base, extra) + _fill(extra, nets, kind)
        if command == "sample" and flag in ("--prompt", "--prompts-file") and kind == "text":
            b_argv = [x for i, x in enumerate(a_argv) if x != "--prompt" and (i == 0 or a_argv[i - 1] != "--prompt")]
            b_argv += _fill(own, nets, kind)
        elif command == "sample" and flag == "--nfe":
            b_argv = _without(a_argv, ["--steps"]) + _fill(own, nets, kind)
        else:
            b_argv = _without(a_argv, own) + _fill(own, nets, kind)
        suffix = ".png" if command == "sample" else ""
        rc_a, fp_a, err_a = _run(a_argv, tmp_path / f"{kind}-{flag[2:]}-a{suffix}", capsys)
        assert rc_a == 0, f"{flag}: the base run failed: {err_a}"
        rc_b, fp_b, err_b = _run(b_argv, tmp_path / f"{kind}-{flag[2:]}-b{suffix}", capsys)
        want = expect[kind]
        if want == REFUSED:
            assert rc_b == 1 and err_b.startswith("error: ") and "Traceback" not in err_b, f"{flag} on {kind}: {err_b}"
        else:
            assert rc_b == 0, f"{flag} on {kind} failed: {err_b}"
            assert (fp_a == fp_b) == (want == SAME), f"{flag} on {kind}: expected the output to be {want}"
        checked += 1
    return checked


@pytest.mark.parametrize("kind", ["class", "text"])
def test_every_evaluate_flag_is_honoured_or_refused(nets, kind, tmp_path, capsys):
    assert _walk("evaluate", EVALUATE, lambda k: EVALUATE_BASE, nets, kind, tmp_path, capsys) == len(EVALUATE)


@pytest.mark.parametrize("kind", ["class", "text"])
def test_every_sample_flag_is_honoured_or_refused(nets, kind, tmp_path, capsys):
    assert _walk("sample", SAMPLE, lambda k: SAMPLE_BASE[k], nets, kind, tmp_path, capsys) == len(SAMPLE)


def test_an_option_of_another_sampler_is_refused(nets, tmp_path, capsys):
    rc, _, err = _run(_fill(EVALUATE_BASE, nets, "class") + ["--n-inner", "2"], tmp_path / "x", capsys)
    assert rc == 1 and "--n-inner" in err and "look-ahead" in err


def test_a_bad_schedule_is_one_error_line(nets, tmp_path, capsys):
    for bad in ("cosine", "edm:0", "shift:1e-12"):  # unknown, out of range, a grid that collapses in float32
        rc, _, err = _run(_fill(EVALUATE_BASE, nets, "class") + ["--nfe", "16", "--schedule", bad], tmp_path / "x", capsys)
        assert rc == 1 and err.startswith("error: ") and ("shift:ALPHA" in err or "milder schedule" in err), err
