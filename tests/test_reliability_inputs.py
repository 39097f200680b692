"""Bad inputs, as a hostile or a careless user hands them in: one table of inputs -> exit code, exactly
one ``error:`` line naming the fix, no traceback; then what each kind must leave untouched (a
hard-linked lock's target, a payload's marker, the export's file modes) and what a refused network
costs (peak memory of the whole command, measured in a child process)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import patchforcing as pf
from conftest import make_model, make_vae
from patchforcing import checkpoints, runs
from patchforcing.cli import main
from patchforcing.errors import CheckpointError, ConfigError
from patchforcing.models import t2i_preset_config

pytest.importorskip("diffusers")
pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN = ["--depth", "2", "--hidden-size", "32", "--num-heads", "2", "--batch-size", "8", "--device", "cpu",
         "--val-every", "0", "--sample-every", "0", "--steps", "1"]
EVALUATE = ["--sampler", "euler-pf", "--nfe", "2", "--num-samples", "8", "--device", "cpu"]
PAYLOAD = "PAYLOAD_RAN"  # a file the hostile custom component would write: it must never exist
REEXPORT = "export the network again with `patchforcing export`"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """``pf.safetensors`` (the digits size, depth 2, width 32), ``exported/``, its export, and
    ``latent/``, the saved pipeline of a latent network with its tiny VAE."""
    from patchforcing.hub.export import export_pipeline
    from patchforcing.hub.transformer import PatchForcingTransformerModel

    root = tmp_path_factory.mktemp("inputs")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    pf.save_model(pf.create_model("PF-XS/2", depth=2, hidden_size=32, num_heads=2), root / "pf.safetensors")
    export_pipeline(root / "pf.safetensors", root / "exported")
    latent = PatchForcingTransformerModel.from_network(make_model(dtype=torch.float32, in_channels=4))
    pf.PatchForcingPipeline(latent, vae=make_vae(), latent_scale=0.5).save_pretrained(root / "latent")
    return root


# --- builders of bad inputs: (tmp, base) -> a path ---------------------------------------------------------
def _claiming(tmp: Path, base: Path, name: str = "claims.safetensors", **config) -> Path:
    """The base network's weights under a config that claims other sizes."""
    claimed = {**pf.load_model(base / "pf.safetensors").config.to_dict(), **config}
    save_file(load_file(base / "pf.safetensors"), tmp / name,
              metadata={"format": checkpoints.FORMAT, "version": "1", "config": json.dumps(claimed)})
    return tmp / name


def _claiming_t2i(tmp: Path, base: Path, **config) -> Path:
    """The base network's weights under a text-to-image config that claims other sizes."""
    claimed = {**t2i_preset_config("T2I-XS/2").to_dict(), **config}
    save_file(load_file(base / "pf.safetensors"), tmp / "t2i.safetensors",
              metadata={"format": checkpoints.FORMAT, "version": "1", "config": json.dumps(claimed)})
    return tmp / "t2i.safetensors"


def _released(tmp: Path, base: Path, **params) -> Path:
    """A file in the reference's released format whose params claim other sizes."""
    cfg = pf.load_model(base / "pf.safetensors").config
    sizes = {k: getattr(cfg, k) for k in ("in_channels", "input_size", "depth", "hidden_size", "patch_size", "num_heads", "num_classes")}
    target = "patch_flow.models.pf_transformer.PatchForcingDiT"
    torch.save({"config": {"target": target, "params": {**sizes, **params}}, "state_dict": load_file(base / "pf.safetensors")},
               tmp / "released.pt")
    return tmp / "released.pt"


def _run_folder(tmp: Path, base: Path, **config) -> Path:
    """A run folder whose newest training checkpoint claims other sizes."""
    run = tmp / "run"
    claimed = {**pf.load_model(base / "pf.safetensors").config.to_dict(), **config}
    run.joinpath("checkpoints").mkdir(parents=True)
    torch.save({"format": checkpoints.TRAIN_FORMAT, "model_config": claimed, "ema": load_file(base / "pf.safetensors")},
               runs.checkpoint_path(run, 1))
    return run


def _exported(tmp: Path, base: Path) -> Path:
    folder = tmp / "exported"
    shutil.copytree(base / "exported", folder)
    return folder


def _latent(tmp: Path, base: Path, damage: Callable[[Path], None]) -> Path:
    """The latent pipeline with ``damage(vae_weights)`` done to its VAE's weights file."""
    folder = tmp / "latent"
    shutil.copytree(base / "latent", folder)
    damage(folder / "vae" / "diffusion_pytorch_model.safetensors")
    return folder


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:3000])


def _half_as_bin(path: Path) -> None:
    """Half the tensors, as a pickled ``.bin`` in place of the safetensors file (diffusers reads it)."""
    state = load_file(path)
    torch.save(dict(list(state.items())[: len(state) // 2]), path.with_suffix(".bin"))
    path.unlink()


def _with_index(tmp: Path, base: Path, **changes) -> Path:
    """The export with ``model_index.json`` changed (a value None removes its key)."""
    folder = _exported(tmp, base)
    index = json.loads((folder / "model_index.json").read_text())
    index.update(changes)
    (folder / "model_index.json").write_text(json.dumps({k: v for k, v in index.items() if v is not None}))
    return folder


def _custom_component(tmp: Path, base: Path) -> Path:
    """An index naming a component module shipped in the folder, which writes ``PAYLOAD`` on import."""
    folder = _with_index(tmp, base, transformer=["evil", "Evil"])
    code = f"open({str(tmp / PAYLOAD)!r}, 'w').write('ran')\nclass Evil: pass\n"
    for place in (folder, folder / "transformer"):
        (place / "evil.py").write_text(code)
    return folder


def _network_config(tmp: Path, base: Path, **config) -> Path:
    """The export with ``transformer/config.json`` claiming other sizes."""
    folder = _exported(tmp, base)
    path = folder / "transformer" / "config.json"
    saved = json.loads(path.read_text())
    saved["network_config"].update(config)
    path.write_text(json.dumps(saved))
    return folder


def _replaced(tmp: Path, base: Path, name: str, make: Callable[[Path], None]) -> Path:
    """The export with file ``name`` replaced by what ``make(path)`` puts there."""
    folder = _exported(tmp, base)
    (folder / name).unlink()
    make(folder / name)
    return folder


def _truncated_weights(tmp: Path, base: Path) -> Path:
    folder = _exported(tmp, base)
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    return folder


def _pickled_weights(tmp: Path, base: Path) -> Path:
    folder = _exported(tmp, base)
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), weights.with_suffix(".bin"))
    weights.unlink()
    return folder


def _hard_linked_lock(tmp: Path) -> Path:
    """``tmp/o`` whose ``run.lock`` is a hard link of ``tmp/victim.txt``."""
    (tmp / "o").mkdir()
    (tmp / "victim.txt").write_text("precious\n")
    os.link(tmp / "victim.txt", tmp / "o" / runs.LOCK_FILE)
    return tmp / "o"


def _plan_on_dev_zero(tmp: Path) -> Path:
    (tmp / "e" / "parts").mkdir(parents=True)
    (tmp / "e" / "parts" / "plan.json").symlink_to("/dev/zero")
    return tmp / "e"


def _trained_with_metrics_on_dev_zero(tmp: Path) -> Path:
    """A one-step run whose ``metrics.jsonl`` was then replaced by a link to ``/dev/zero``."""
    assert main(["train", *TRAIN, "--out", str(tmp / "run")]) == 0
    _replace_with(tmp / "run" / runs.METRICS_FILE, _link_to_dev_zero)
    return tmp / "run"


def _metrics_on_dev_zero(tmp: Path) -> Path:
    (tmp / "eval").mkdir()
    (tmp / "eval" / "metrics.json").symlink_to("/dev/zero")
    return tmp / "eval"


def _toml_on_dev_zero(tmp: Path) -> Path:
    (tmp / "c.toml").symlink_to("/dev/zero")
    return tmp / "c.toml"


def _replace_with(path: Path, make: Callable[[Path], None]) -> None:
    path.unlink()
    make(path)


def _link_to_dev_zero(path: Path) -> None:
    path.symlink_to("/dev/zero")


def _too_large(path: Path) -> None:
    path.write_text('{"network_config": {}}' + " " * (1 << 20))


def _too_deep(path: Path) -> None:
    path.write_text("[" * 100_000 + "]" * 100_000)


# --- the table -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """A bad input: ``argv(tmp, base)``, the words its one error line holds, words it must not hold."""

    argv: Callable[[Path, Path], list[str]]
    words: str
    absent: tuple[str, ...] = ()
    code: int = 1


def _sample(source: Callable[[Path, Path], Path], *flags: str) -> Callable[[Path, Path], list[str]]:
    return lambda tmp, b: ["sample", "--checkpoint", str(source(tmp, b)), *flags, "--out", str(tmp / "o.png")]


def _export(source: Callable[[Path, Path], Path], *flags: str) -> Callable[[Path, Path], list[str]]:
    """``export`` of ``source``; an ``EVAL`` among the flags becomes an evaluation folder whose metrics.json is /dev/zero."""
    return lambda tmp, b: ["export", "--checkpoint", str(source(tmp, b)),
                           *[str(_metrics_on_dev_zero(tmp)) if f == "EVAL" else f for f in flags], "--out", str(tmp / "out")]


def _evaluate(source: Callable[[Path, Path], Path]) -> Callable[[Path, Path], list[str]]:
    return lambda tmp, b: ["evaluate", "--checkpoint", str(source(tmp, b)), *EVALUATE, "--out", str(tmp / "e")]


TOKENS = "input_size 2048 with patch_size 1 makes 4194304 tokens per image, above the limit of 65536"
DISK = ("the disk", "--batch-size")  # advice that never fits these inputs
HOSTILE_INDEX = {  # model_index.json changes -> the words of the refusal
    "class os.system": (dict(_class_name=["os", "system"]), "names the pipeline class ['os', 'system']"),
    "class builtins.eval": (dict(_class_name="eval"), "names the pipeline class 'eval'"),
    "transformer builtins.eval": (dict(transformer=["builtins", "eval"]), "names component 'transformer' as ['builtins', 'eval']"),
    "vae subprocess.Popen": (dict(vae=["subprocess", "Popen"]), "names component 'vae' as ['subprocess', 'Popen']"),
    "unknown library": (dict(transformer=["no_such_library", "Model"]), "names component 'transformer' as ['no_such_library'"),
    "extra component os.system": (dict(scheduler=["os", "system"]), "names component 'scheduler' as ['os', 'system']"),
}
CASES: dict[str, Case] = {
    # 1. a hard-linked run.lock is never written through
    "train into a hard-linked run.lock": Case(lambda tmp, b: ["train", *TRAIN, "--out", str(_hard_linked_lock(tmp))],
                                              "run.lock has 2 hard links, so writing the lock would change another file"),
    "evaluate into a hard-linked run.lock": Case(lambda tmp, b: ["evaluate", "--checkpoint", str(b / "pf.safetensors"), *EVALUATE,
                                                                 "--out", str(_hard_linked_lock(tmp))], "run.lock has 2 hard links"),
    # 2. sizes are checked before anything is built
    "tokens 2048^2 (safetensors)": Case(_sample(lambda t, b: _claiming(t, b, input_size=2048, patch_size=1, hidden_size=256)), TOKENS),
    "tokens 2048^2 (exported folder)": Case(_sample(lambda t, b: _network_config(t, b, input_size=2048, patch_size=1, hidden_size=256)),
                                            TOKENS),
    "tokens 2048^2 (export of it)": Case(_export(lambda t, b: _network_config(t, b, input_size=2048, patch_size=1, hidden_size=256)),
                                         TOKENS, DISK),
    "tokens 2048^2 (run folder)": Case(_sample(lambda t, b: _run_folder(t, b, input_size=2048, patch_size=1)), TOKENS),
    "depth 10^7 (safetensors)": Case(_sample(lambda t, b: _claiming(t, b, depth=10**7)), "depth must be an integer in [1, 512], got 10000000"),
    "depth 10^7 (released .pt)": Case(_sample(lambda t, b: _released(t, b, depth=10**7)), "depth must be an integer in [1, 512], got 10000000"),
    "width 2^20 (safetensors)": Case(_sample(lambda t, b: _claiming(t, b, hidden_size=2**20)),
                                     "hidden_size must be an integer in [1, 16384], got 1048576", DISK),
    "mlp ratio 1e12": Case(_sample(lambda t, b: _claiming(t, b, mlp_ratio=1e12)), "mlp_ratio must give an MLP of 1 to 65536 units"),
    "text network width 2^20": Case(_sample(lambda t, b: _claiming_t2i(t, b, hidden_dim=2**20)),
                                    "text-to-image hidden_dim must be an integer in [1, 16384], got 1048576"),
    "depth 48 on 2 blocks": Case(_sample(lambda t, b: _claiming(t, b, depth=48)), "the config's depth is 48 but the weights hold 2 blocks"),
    # 4. an exported folder is read only as this project writes it
    **{f"sample: index {name}": Case(_sample(lambda t, b, c=change: _with_index(t, b, **c)), words)
       for name, (change, words) in HOSTILE_INDEX.items()},
    **{f"export: index {name}": Case(_export(lambda t, b, c=change: _with_index(t, b, **c)), words, DISK)
       for name, (change, words) in HOSTILE_INDEX.items()},
    **{f"evaluate: index {name}": Case(_evaluate(lambda t, b, c=change: _with_index(t, b, **c)), words)
       for name, (change, words) in list(HOSTILE_INDEX.items())[:3]},
    "sample: a custom component file": Case(_sample(_custom_component), "names component 'transformer' as ['evil', 'Evil']"),
    "export: a custom component file": Case(_export(_custom_component), "names component 'transformer' as ['evil', 'Evil']", DISK),
    "sample: truncated weights": Case(_sample(_truncated_weights), "(SafetensorError: "),
    "sample: truncated VAE weights": Case(_sample(lambda t, b: _latent(t, b, _truncate)), "could not load an AutoencoderKL from"),
    "sample: VAE weights half of them": Case(_sample(lambda t, b: _latent(t, b, _half_as_bin)),
                                             "the weights file is incomplete or of another network"),
    "sample: VAE config.json on /dev/zero": Case(_sample(lambda t, b: _latent(t, b, lambda w: _replace_with(w.parent / "config.json",
                                                                                                            _link_to_dev_zero))),
                                                 "vae/config.json' is a character device"),
    "export: truncated VAE weights": Case(_export(lambda t, b: _latent(t, b, _truncate)), "could not load an AutoencoderKL from", DISK),
    "export: truncated weights": Case(_export(_truncated_weights), "the file is truncated or of another kind", DISK),
    "export: weights pickled as .bin": Case(_export(_pickled_weights), "pickles this project never reads", DISK),
    "export: model_index.json not JSON": Case(_export(lambda t, b: _replaced(t, b, "model_index.json", lambda p: p.write_text("{nope"))),
                                              "model_index.json' is not valid JSON", DISK),
    "sample --schedule edm:0.005": Case(_sample(lambda t, b: b / "pf.safetensors", "--schedule", "edm:0.005"), "edm needs RHO in [0.1, 100]"),
    "sample --schedule edm:1e-300": Case(_sample(lambda t, b: b / "pf.safetensors", "--schedule", "edm:1e-300"), "edm needs RHO in [0.1, 100]"),
    "export --schedule edm:0.005": Case(_export(lambda t, b: b / "pf.safetensors", "--schedule", "edm:0.005"), "edm needs RHO in [0.1, 100]"),
    # 5. files that never end, and files that are not files
    "sample: config.json on /dev/zero": Case(_sample(lambda t, b: _replaced(t, b, "transformer/config.json", _link_to_dev_zero)),
                                             "config.json' is a character device, not a regular file"),
    "export: config.json on /dev/zero": Case(_export(lambda t, b: _replaced(t, b, "transformer/config.json", _link_to_dev_zero)),
                                             "config.json' is a character device, not a regular file", DISK),
    "sample: model_index.json on /dev/zero": Case(_sample(lambda t, b: _replaced(t, b, "model_index.json", _link_to_dev_zero)),
                                                  "model_index.json' is a character device"),
    "sample: model_index.json a FIFO": Case(_sample(lambda t, b: _replaced(t, b, "model_index.json", os.mkfifo)),
                                            "model_index.json' is a FIFO (named pipe), not a regular file"),
    "sample: config.json of 1 MB": Case(_sample(lambda t, b: _replaced(t, b, "transformer/config.json", _too_large)),
                                        "config.json' holds more than 1 MB"),
    "sample: config.json nested 10^5 deep": Case(_sample(lambda t, b: _replaced(t, b, "transformer/config.json", _too_deep)),
                                                 "config.json' is JSON nested too deeply to read"),
    "sample: checkpoint /dev/zero": Case(lambda t, b: ["sample", "--checkpoint", "/dev/zero", "--out", str(t / "o.png")],
                                         "'/dev/zero' is not a regular file"),
    "evaluate: plan.json on /dev/zero": Case(lambda t, b: ["evaluate", "--checkpoint", str(b / "pf.safetensors"), *EVALUATE,
                                                           "--out", str(_plan_on_dev_zero(t))], "plan.json is unreadable or not a JSON object"),
    "train resumed with metrics.jsonl on /dev/zero": Case(
        lambda t, b: ["train", *TRAIN[:-1], "2", "--out", str(_trained_with_metrics_on_dev_zero(t))],
        "metrics.jsonl' is a character device, not a regular file; move it away (a resumed run rewrites it)"),
    "export --eval with metrics.json on /dev/zero": Case(_export(lambda t, b: b / "pf.safetensors", "--eval", "EVAL"),
                                                         "has no readable metrics.json", DISK),
    "train --config on /dev/zero": Case(lambda t, b: ["train", *TRAIN, "--config", str(_toml_on_dev_zero(t)), "--out", str(t / "run")],
                                        "c.toml' is a character device, not a regular file"),
}


def _error_lines(capsys) -> list[str]:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    return [line for line in captured.err.splitlines() if line.startswith("error: ")]


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_error_line_naming_the_fix(tmp_path, capsys, base, name):
    case = CASES[name]
    argv = case.argv(tmp_path, base)
    capsys.readouterr()
    assert main(argv) == case.code
    lines = _error_lines(capsys)
    assert len(lines) == 1 and case.words in lines[0], lines
    assert not any(word in lines[0] for word in case.absent), lines
    assert not (tmp_path / PAYLOAD).exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # export wrote nothing


# --- 1. the lock: the target of a hard link is untouched; a lock of another user is refused -------------------
@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_a_hard_linked_lock_leaves_its_target_untouched(tmp_path, capsys, base, command):
    argv = CASES[f"{command} into a hard-linked run.lock"].argv(tmp_path, base)
    assert main(argv) == 1
    [line] = _error_lines(capsys)
    assert "remove it (`rm` removes only this name" in line
    assert (tmp_path / "victim.txt").read_text() == "precious\n"
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [runs.LOCK_FILE]  # nothing else was written


def test_a_lock_file_of_another_user_is_refused_unwritten(tmp_path, capsys, monkeypatch):
    out = tmp_path / "o"
    out.mkdir()
    (out / runs.LOCK_FILE).write_text("theirs\n")
    me = os.geteuid()
    monkeypatch.setattr(runs.os, "geteuid", lambda: me + 1)  # the file now belongs to "another user"
    assert main(["train", *TRAIN, "--out", str(out)]) == 1
    [line] = _error_lines(capsys)
    assert f"run.lock belongs to another user (uid {me}); remove it" in line
    assert (out / runs.LOCK_FILE).read_text() == "theirs\n"


def test_the_own_lock_file_is_still_taken_and_names_its_holder(tmp_path):
    with runs.lock_run_folder(tmp_path / "run"):
        info = os.stat(tmp_path / "run" / runs.LOCK_FILE)
        assert info.st_nlink == 1 and info.st_uid == os.geteuid()
        assert json.loads((tmp_path / "run" / runs.LOCK_FILE).read_text())["pid"] == os.getpid()


# --- 4. every loader of exported folders: nothing the folder names is imported ------------------------------
@pytest.mark.parametrize("loader", ["load_model", "from_pretrained", "from_checkpoint"])
@pytest.mark.parametrize("name", [*HOSTILE_INDEX, "custom component file"])
def test_library_loaders_refuse_a_hostile_index(tmp_path, base, loader, name):
    folder = _custom_component(tmp_path, base) if name == "custom component file" else _with_index(tmp_path, base, **HOSTILE_INDEX[name][0])
    words = "as ['evil', 'Evil']" if name == "custom component file" else HOSTILE_INDEX[name][1]
    load = {"load_model": pf.load_model, "from_pretrained": pf.PatchForcingPipeline.from_pretrained,
            "from_checkpoint": pf.PatchForcingPipeline.from_checkpoint}[loader]
    with pytest.raises(CheckpointError, match=r"^'.*model_index.json' names .*" + REEXPORT.replace("`", ".")) as info:
        load(folder)
    assert words in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / PAYLOAD).exists()


def test_the_app_refuses_a_hostile_folder_before_it_serves(tmp_path, capsys, base, monkeypatch):
    gradio = pytest.importorskip("gradio")
    monkeypatch.setattr(gradio.Blocks, "launch", lambda *a, **k: pytest.fail("the app started on a hostile folder"))
    folder = _with_index(tmp_path, base, vae=["subprocess", "Popen"])
    assert main(["app", "--checkpoint", str(folder)]) == 1
    [line] = _error_lines(capsys)
    assert "names component 'vae' as ['subprocess', 'Popen']" in line


def test_an_export_loads_back_through_the_own_reader_with_its_settings(tmp_path, base):
    pipe = pf.PatchForcingPipeline.from_pretrained(base / "exported", nfe=6)
    assert type(pipe.transformer).__name__ == "PatchForcingTransformerModel" and pipe.vae is None
    assert pipe.config.nfe == 6 and pipe.config.sampler == "look-ahead"  # a setting overrides the saved one
    net = pf.load_model(base / "pf.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(pipe.network.state_dict().values(), net.state_dict().values(), strict=True))
    with pytest.raises(ConfigError, match=r"from_pretrained holds settings this pipeline does not take \(\['steps'\]\)"):
        pf.PatchForcingPipeline.from_pretrained(base / "exported", steps=4)
    for loader in (pf.load_model, pf.PatchForcingPipeline.from_pretrained):  # saved settings of the wrong JSON type
        with pytest.raises(CheckpointError, match=r"model_index.json' holds nfe = 'many', not an integer; export the network again"):
            loader(_with_index(tmp_path / loader.__name__, base, nfe="many"))
    with pytest.raises(ConfigError, match=r"guidance_interval must be two numbers \(lo, hi\), got \(0.1, 0.2, 0.3\)"):
        pf.PatchForcingPipeline.from_pretrained(_with_index(tmp_path, base, guidance_interval=[0.1, 0.2, 0.3]))


# --- 8. messages and modes ------------------------------------------------------------------------------------
def test_a_plan_json_mismatch_names_the_nested_fields_with_both_values(tmp_path):
    from patchforcing.evaluation.evaluate import evaluate_model

    torch.manual_seed(0)
    net = pf.create_model("PF-XS/2", depth=2, hidden_size=32, num_heads=2).eval()
    settings = dict(nfe=2, num_samples=8, batch_size=8)
    evaluate_model(net, parts_dir=tmp_path / "parts", sampler="euler-pf", **settings)
    with pytest.raises(ConfigError) as info:
        evaluate_model(net, parts_dir=tmp_path / "parts", sampler="euler-pf", schedule="shift:3", **settings)
    assert "(sampling.schedule: absent there, 'shift:3' now);" in str(info.value)
    with pytest.raises(ConfigError) as info:
        evaluate_model(net, parts_dir=tmp_path / "parts", sampler="euler", **settings)
    assert "sampling.sampler: 'euler-pf' there, 'euler' now" in str(info.value)


def test_every_exported_file_has_the_mode_of_a_normally_created_file(base):
    modes = {p.relative_to(base / "exported"): p.stat().st_mode & 0o777 for p in (base / "exported").rglob("*") if p.is_file()}
    assert Path("transformer/diffusion_pytorch_model.safetensors") in modes
    assert set(modes.values()) == {runs.file_mode()}, modes


# --- 2. a refused network costs milliseconds and megabytes ----------------------------------------------------
REFUSED = {  # the four configs of issue 24
    "tokens 2048^2 in a safetensors file": lambda t, b: _claiming(t, b, input_size=2048, patch_size=1, hidden_size=256),
    "tokens 2048^2 in an exported folder": lambda t, b: _network_config(t, b, input_size=2048, patch_size=1, hidden_size=256),
    "depth 10^7": lambda t, b: _claiming(t, b, depth=10**7),
    "width 2^20": lambda t, b: _claiming(t, b, hidden_size=2**20),
}
PEAK_LIMIT_MB = 400
# Runs the command in a child and prints the child's peak resident memory (kB on Linux) and exit code.
_MEASURE = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "sys.stderr.write(r.stderr); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode)")


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in kB on Linux")
@pytest.mark.parametrize("name", list(REFUSED))
def test_a_refused_network_costs_megabytes(tmp_path, base, name):
    source = REFUSED[name](tmp_path, base)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _MEASURE, sys.executable, "-m", "patchforcing", "sample", "--checkpoint", str(source),
                           "--out", str(tmp_path / "o.png")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    seconds = time.perf_counter() - start
    peak_kb, code = map(int, done.stdout.split())
    lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert code == 1 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "invalid model config" in lines[0]
    print(f"{name}: peak {peak_kb / 1024:.0f} MB, {seconds:.1f} s")
    assert peak_kb < PEAK_LIMIT_MB * 1024, f"{name}: peak {peak_kb / 1024:.0f} MB"


@pytest.mark.parametrize("name", list(REFUSED))
def test_a_refused_network_is_refused_before_anything_is_built(tmp_path, base, monkeypatch, name):
    source = REFUSED[name](tmp_path, base)
    monkeypatch.setattr(checkpoints, "build_model", lambda cfg: pytest.fail("a network was built from a refused config"))
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="invalid model config"):
        pf.load_model(source)
    assert time.perf_counter() - start < 5  # milliseconds on an idle machine; seconds would mean a build
