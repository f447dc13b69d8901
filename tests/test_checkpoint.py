"""Checkpoint folders: round trips, strict loading with named errors, atomic writes, bundled names, pipelines."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import unclip_core.checkpoint as ckpt
from unclip_core.checkpoint import (list_bundled, load_checkpoint, load_stages, read_checkpoint_config,
                                    read_pipeline, resolve, save_checkpoint, save_pipeline)
from unclip_core.decoder import Decoder, DecoderConfig
from unclip_core.prior import DiffusionPrior, PriorConfig
from unclip_core.upsampler import Upsampler, UpsamplerConfig

PRIOR = PriorConfig(clip_dim=16, text_width=8, width=32, n_layers=1, n_heads=4, n_text_tokens=4)
DEC = DecoderConfig(image_size=16, model_channels=16, channel_mult=(1, 2), n_res_blocks=1, attention_resolutions=(8,),
                    head_channels=8, clip_dim=16, text_width=8, norm_groups=8, dropout=0.0)
UPS = UpsamplerConfig(low_res=8, out_res=16, model_channels=8, channel_mult=(1, 2), n_res_blocks=1, norm_groups=4)


def perturbed(model):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def outputs(model):
    g = torch.Generator().manual_seed(1)
    if isinstance(model, DiffusionPrior):
        return model(torch.randn(2, 16, generator=g), torch.tensor([3, 9]), torch.randn(2, 16, generator=g),
                     torch.randn(2, 3, 8, generator=g))
    if isinstance(model, Decoder):
        return model(torch.randn(2, 3, 16, 16, generator=g), torch.tensor([3, 9]), torch.randn(2, 16, generator=g),
                     torch.randn(2, 3, 8, generator=g))
    return model(torch.randn(2, 3, 16, 16, generator=g), torch.tensor([3, 9]), torch.randn(2, 3, 8, 8, generator=g))


@pytest.mark.parametrize("model", [DiffusionPrior(PRIOR), Decoder(DEC), Upsampler(UPS)],
                         ids=["prior", "decoder", "upsampler"])
def test_round_trip_identical_outputs(tmp_path, model):
    model = perturbed(model)
    with torch.no_grad():
        if isinstance(model, DiffusionPrior):
            model.clip_mean.fill_(0.5)  # buffers travel too
    path = save_checkpoint(tmp_path / "m", model, card="# tiny model\n", metadata={"seed": 3, "steps": [1, 2]})
    assert sorted(p.name for p in path.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary folder left behind
    info = json.loads((path / "config.json").read_text())
    assert info["class"] == type(model).__name__ and info["format"] == 1
    assert info["metadata"] == {"seed": 3, "steps": [1, 2]}
    assert info["n_params"] == sum(p.numel() for p in model.parameters())
    loaded = load_checkpoint(path)
    assert type(loaded) is type(model) and loaded.config == model.config and not loaded.training
    with torch.no_grad():
        assert torch.equal(outputs(loaded), outputs(model))
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_config_tuples_survive_json(tmp_path):
    save_checkpoint(tmp_path / "d", Decoder(DEC))
    cls, config, info = read_checkpoint_config(tmp_path / "d")
    assert cls is Decoder and config == DEC and isinstance(config.channel_mult, tuple)
    assert info["config"]["channel_mult"] == [1, 2]


def test_unknown_config_keys_rejected(tmp_path):
    path = save_checkpoint(tmp_path / "p", DiffusionPrior(PRIOR))
    info = json.loads((path / "config.json").read_text())
    info["config"].update(n_experts=4, rope=True)
    (path / "config.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"unknown PriorConfig keys \['n_experts', 'rope'\]; accepted keys: "
                                         r"\['clip_dim', "):
        load_checkpoint(path)


def test_strict_weights_listed(tmp_path):
    path = save_checkpoint(tmp_path / "p", DiffusionPrior(PRIOR))
    weights = path / "model.safetensors"
    state = load_file(str(weights))
    del state["norm_out.weight"], state["null_z_t"]
    state["extra.bias"] = torch.zeros(3)
    state["proj_in.weight"] = torch.zeros(32, 15)
    save_file(state, str(weights))
    with pytest.raises(ValueError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert "missing (2): ['norm_out.weight', 'null_z_t']" in msg
    assert "unexpected (1): ['extra.bias']" in msg
    assert "shape-mismatched (1): ['proj_in.weight: checkpoint (32, 15) vs model (32, 16)']" in msg
    with pytest.raises(ValueError, match=r"does not match DiffusionPrior\(config\): missing \(2\)"):
        load_checkpoint(path)


def test_load_errors(tmp_path):
    path = save_checkpoint(tmp_path / "u", Upsampler(UPS))
    info = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(dict(info, **{"class": "GAN"})))
    with pytest.raises(ValueError, match=r"names class 'GAN', which is not known here; a module that defines it registers it with register_model_class when imported; known classes: "
                                         r"\['Autoencoder', 'Decoder', "):
        load_checkpoint(path)
    (path / "config.json").write_text(json.dumps(dict(info, format=2)))
    with pytest.raises(ValueError, match="has format 2; this library reads format 1"):
        load_checkpoint(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        load_checkpoint(path)
    (path / "config.json").write_text(json.dumps(info))
    (path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="is not a readable safetensors file"):
        load_checkpoint(path)
    (path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="has config.json but no weights"):
        load_checkpoint(path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty is not a checkpoint folder"):
        load_checkpoint(tmp_path / "empty")


def test_save_errors_and_overwrite(tmp_path):
    m = Upsampler(UPS)
    path = save_checkpoint(tmp_path / "u", m)
    with pytest.raises(FileExistsError, match="already exists; pass overwrite=True"):
        save_checkpoint(path, m)
    other = Upsampler(UPS)
    with torch.no_grad():
        other.time_embedding.linear_1.bias.fill_(7.0)
    save_checkpoint(path, other, overwrite=True)
    assert float(load_checkpoint(path).time_embedding.linear_1.bias.detach()[0]) == 7.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u"]
    with pytest.raises(TypeError, match="metadata must hold only JSON values"):
        save_checkpoint(tmp_path / "x", m, metadata={"t": torch.zeros(1)})
    with pytest.raises(TypeError, match=r"model is a Linear, which is not a registered model class"):
        save_checkpoint(tmp_path / "y", torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"dtype must be one of \[torch.float32, torch.float16, torch.bfloat16\] \(or None to keep the "
                                         r"model's\), got torch.int8"):
        save_checkpoint(tmp_path / "z", m, dtype=torch.int8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u"]  # failed writes leave nothing behind


def test_resolve_and_bundled(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt, "BUNDLED_DIR", tmp_path / "bundled")
    assert list_bundled() == []
    save_checkpoint(tmp_path / "bundled" / "shapes-decoder", Decoder(DEC))
    (tmp_path / "bundled" / "not-a-model").mkdir()
    assert list_bundled() == ["shapes-decoder"]
    assert resolve("shapes-decoder") == tmp_path / "bundled" / "shapes-decoder"
    assert load_checkpoint("shapes-decoder").config == DEC
    assert resolve(tmp_path / "bundled" / "shapes-decoder") == tmp_path / "bundled" / "shapes-decoder"
    with pytest.raises(ValueError, match=r"'shapes-unclip' is neither a bundled model nor an existing path; "
                                         r"bundled: \['shapes-decoder'\]"):
        resolve("shapes-unclip")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve(str(tmp_path / "nowhere"))
    with pytest.raises(TypeError, match="spec must be a bundled name or a path, got int"):
        resolve(3)


def test_pipeline_layout(tmp_path):
    prior, dec = perturbed(DiffusionPrior(PRIOR)), perturbed(Decoder(DEC))
    up_dir = save_checkpoint(tmp_path / "up", perturbed(Upsampler(UPS)))
    path = save_pipeline(tmp_path / "pipe", {"prior": prior, "decoder": dec, "upsampler1": up_dir},
                         card="# pipeline\n", metadata={"clip": "shapes-clip"})
    dirs, meta = read_pipeline(path)
    assert list(dirs) == ["prior", "decoder", "upsampler1"] and meta == {"clip": "shapes-clip"}
    assert (path / "README.md").read_text() == "# pipeline\n"
    models = load_stages(path)
    with torch.no_grad():
        assert torch.equal(outputs(models["prior"]), outputs(prior))
        assert torch.equal(outputs(models["decoder"]), outputs(dec))
        assert torch.equal(outputs(models["upsampler1"]), outputs(load_checkpoint(up_dir)))
    assert list(load_stages(path, stages=["decoder"])) == ["decoder"]
    with pytest.raises(ValueError, match=r"stages \['upsampler2'\] are not in .*; its stages: \['prior', "):
        load_stages(path, stages=["upsampler2"])
    with pytest.raises(ValueError, match="stage name 'a/b' must be a simple folder name"):
        save_pipeline(tmp_path / "bad", {"a/b": dec})
    with pytest.raises(TypeError, match="stage 'x' must be an nn.Module or a checkpoint folder, got int"):
        save_pipeline(tmp_path / "bad", {"x": 3})
    assert not (tmp_path / "bad").exists()
    (path / "pipeline.json").write_text(json.dumps({"format": 1, "stages": {"prior": "gone"}}))
    with pytest.raises(FileNotFoundError, match="stage 'prior' of .* points to .*gone, which does not exist"):
        read_pipeline(path)


def test_no_hidden_import_loops():
    """checkpoint does not import the read-out and pipeline imports no family importer (nor the HF CLIP adapter);
    nothing in unclip_core or explorer imports modules by string."""
    import subprocess
    import sys
    code = ("import sys, unclip_core.pipeline, unclip_core.checkpoint; "
            "print('unclip_core.families.karlo' in sys.modules, 'unclip_core.data.readout' in sys.modules, "
            "'unclip_core.hf_clip' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "False", "False"], out.stderr
    root = Path(__file__).resolve().parents[1]
    for folder in ("unclip_core", "explorer", "analyses", "dashboards"):
        for f in (root / folder).rglob("*.py"):
            assert "importlib.import_module" not in f.read_text(encoding="utf-8"), f


def test_a_family_name_alone_gives_its_conventions_and_a_bad_entry_is_named(tmp_path):
    """A folder written before pipeline.json carried "conventions" reads them from its family; an unknown family
    gets the defaults; a bad "conventions" entry names the file."""
    from unclip_core.conventions import KARLO_CONVENTIONS, Conventions
    from unclip_core.pipeline import UnCLIP
    from tiny_models import write_tiny_pipeline
    folder = write_tiny_pipeline(tmp_path)
    manifest = json.loads((folder / "pipeline.json").read_text())
    manifest["metadata"]["family"] = "karlo"
    (folder / "pipeline.json").write_text(json.dumps(manifest))
    assert UnCLIP.load(folder).conventions == KARLO_CONVENTIONS
    manifest["metadata"]["family"] = "someone-else"
    (folder / "pipeline.json").write_text(json.dumps(manifest))
    assert UnCLIP.load(folder).conventions == Conventions()
    manifest["metadata"]["conventions"] = {"text": "learned_null", "normalise": True}
    (folder / "pipeline.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"pipeline.json: 'conventions': unknown conventions \['normalise'\]"):
        UnCLIP.load(folder)