"""The ShapesWorld CLIP trainer: loss closed forms, shared training helpers, checkpoint/kill/resume, export."""
import math
import os

import pytest
import torch

from unclip_core.clip import ClipEncoder
from unclip_core.train.clip import (ClipTrainConfig, build_model, contrastive_loss, evaluate_retrieval, export_clip,
                                    shapes_tokenizer, train_clip)
from unclip_core.train.common import EMA, CsvLog, cosine_lr, load_state, save_state


def test_contrastive_loss_closed_forms():
    B, s = 4, 2.0
    z = torch.eye(B)  # orthonormal: logits are s on the diagonal, 0 elsewhere
    loss, acc = contrastive_loss(z, z, torch.tensor(s))
    assert loss.item() == pytest.approx(-math.log(math.exp(s) / (math.exp(s) + B - 1)), rel=1e-6)
    assert acc.item() == 1.0
    # two captions of one scene: both are positives of both images (targets 1/2, 1/2)
    z2 = torch.eye(2)
    loss, _ = contrastive_loss(z2, z2, torch.tensor(s), keys=["a red circle", "a red circle"])
    assert loss.item() == pytest.approx(math.log(math.exp(s) + 1) - s / 2, rel=1e-6)


def test_cosine_lr_and_ema_closed_forms():
    assert cosine_lr(0, 1.0, 100, warmup_steps=10) == pytest.approx(0.1)
    assert cosine_lr(10, 1.0, 110, warmup_steps=10, min_lr_ratio=0.2) == pytest.approx(1.0)
    assert cosine_lr(60, 1.0, 110, warmup_steps=10, min_lr_ratio=0.2) == pytest.approx(0.6)
    assert cosine_lr(110, 1.0, 110, warmup_steps=10, min_lr_ratio=0.2) == pytest.approx(0.2)
    m = torch.nn.Linear(2, 1)
    with torch.no_grad():
        m.weight.fill_(1.0)
    ema = EMA(m, decay=0.9, warmup=False)
    with torch.no_grad():
        m.weight.fill_(3.0)
    ema.update(m)
    ema.copy_to(m)
    torch.testing.assert_close(m.weight, torch.full((1, 2), 0.9 * 1.0 + 0.1 * 3.0))
    warm = EMA(torch.nn.Linear(2, 1), decay=0.9)  # warm-up: decays 1/10, 2/11, ... capped at 0.9
    assert [warm.current_decay()] == [0.1]
    with torch.no_grad():
        m.weight.fill_(1.0)
        warm.shadow["weight"].fill_(1.0)
        m.weight.fill_(3.0)
    warm.update(m)
    assert warm.shadow["weight"][0, 0].item() == pytest.approx(0.1 * 1.0 + 0.9 * 3.0)
    assert warm.current_decay() == pytest.approx(2 / 11)
    warm.updates = 1000
    assert warm.current_decay() == 0.9
    back = EMA(torch.nn.Linear(2, 1), decay=0.5)
    back.load_state_dict(warm.state_dict())
    assert (back.decay, back.warmup, back.updates) == (0.9, True, 1000)
    with pytest.raises(ValueError, match=r"decay must be in \(0, 1\), e.g. 0.999, got 1.5"):
        EMA(m, decay=1.5)


def test_state_and_csv_log_round_trip(tmp_path):
    state = {"step": 3, "w": torch.arange(4.0), "nested": {"a": [1, 2]}}
    save_state(tmp_path / "s.pt", state)
    back = load_state(tmp_path / "s.pt")
    assert back["step"] == 3 and back["nested"] == {"a": [1, 2]} and torch.equal(back["w"], state["w"])
    assert not list(tmp_path.glob(".*tmp"))
    log = CsvLog(tmp_path / "loss.csv", ["step", "loss"])
    for k in range(1, 5):
        log.write(step=k, loss=1.0 / k)
    resumed = CsvLog(tmp_path / "loss.csv", ["step", "loss"], resume_step=2)
    resumed.write(step=3, loss=0.5)
    assert [(r["step"], r["loss"]) for r in resumed.read()] == [("1", "1"), ("2", "0.5"), ("3", "0.5")]
    with pytest.raises(ValueError, match=r"unknown CSV fields \['lr'\]; accepted: \['step', 'loss'\]"):
        log.write(step=5, lr=0.1)
    with pytest.raises(FileNotFoundError, match="training state not found"):
        load_state(tmp_path / "missing.pt")


def test_config_errors():
    with pytest.raises(ValueError, match=r"precision='fp16' is not known; accepted: 'auto', 'bf16', 'fp32'"):
        ClipTrainConfig(precision="fp16")
    with pytest.raises(ValueError, match="image_size=64 is not divisible by patch_size=10"):
        ClipTrainConfig(patch_size=10)
    with pytest.raises(ValueError, match="batch_size must be >= 2 for a contrastive loss, got 1"):
        ClipTrainConfig(batch_size=1)
    with pytest.raises(ValueError, match=r"recipe='big' is not known; accepted: 'shapes', 'shapes-v2', 'shapes-v2-binding', 'shapes-v2-slots', 'tiny'"):
        ClipTrainConfig.recipe("big")
    with pytest.raises(ValueError, match=r"unknown ClipTrainConfig fields \['depth'\]"):
        ClipTrainConfig.from_dict({"depth": 3})
    with pytest.raises(ValueError, match="ema_decay must be None or in"):
        ClipTrainConfig(ema_decay=1.0)
    with pytest.raises(TypeError, match="config must be a ClipTrainConfig"):
        train_clip({"n_steps": 3}, "/tmp/x")
    assert ClipTrainConfig.from_dict(ClipTrainConfig.recipe("tiny").__dict__) == ClipTrainConfig.recipe("tiny")


def test_train_kill_resume_matches_an_uninterrupted_run(tmp_path, one_thread):
    config = ClipTrainConfig.recipe("tiny", n_steps=4, batch_size=4, ema_decay=0.5)
    full = train_clip(config, tmp_path / "full", progress=False)

    class Killed(Exception):
        pass

    def kill_at_3(step, metrics):
        if step == 3:
            raise Killed

    with pytest.raises(Killed):
        train_clip(config, tmp_path / "run", progress=False, callback=kill_at_3)
    assert load_state(tmp_path / "run" / "state.pt")["step"] == 2  # the last checkpoint before the kill
    seen = []
    resumed = train_clip(config, tmp_path / "run", progress=False, callback=lambda s, m: seen.append(s))
    assert seen == [3, 4]
    a, b = ClipEncoder.load(full), ClipEncoder.load(resumed)
    assert a.model_id == b.model_id  # bit-identical weights
    rows = CsvLog(tmp_path / "run" / "loss.csv", ["step"], resume_step=10**9).read()
    assert [r["step"] for r in rows] == ["1", "2", "3", "4"]
    other = ClipTrainConfig.recipe("tiny", n_steps=5, batch_size=4, ema_decay=0.5)
    with pytest.raises(ValueError, match=r"holds a run with another config \(differs in \['n_steps'\]\)"):
        train_clip(other, tmp_path / "run", progress=False)


def test_export_loads_with_clip_encoder_and_evaluates(tmp_path, one_thread):
    config = ClipTrainConfig.recipe("tiny")
    tok = shapes_tokenizer(config.context_length)
    model = build_model(config, tok.vocab_size).eval()
    folder = export_clip(model, tok, config, tmp_path / "m", card="# card\n")
    enc = ClipEncoder.load(folder)
    prompts = ["a small red circle at the top", "a large blue square left of a small green star"]
    with torch.no_grad():
        ref = model.encode_text(tok(prompts), normalize=True)
    torch.testing.assert_close(enc.encode_text(prompts), ref, rtol=1e-5, atol=1e-6)
    assert (folder / "README.md").read_text() == "# card\n"
    umask = os.umask(0)
    os.umask(umask)
    for f in ("model.safetensors", "vocab.json", "open_clip_config.json"):  # not mkstemp's 0600
        assert (folder / f).stat().st_mode & 0o777 == 0o666 & ~umask
    assert folder.stat().st_mode & 0o777 == 0o777 & ~umask
    rows = evaluate_retrieval(enc, n=8, splits=("held_out",))
    assert [(r["group"], r["n"]) for r in rows] == [("1 object", 8), ("2-3 objects", 8), ("mixed", 8)]
    assert all(0.0 <= r["t2i_top1"] <= 1.0 and 0.0 <= r["i2t_top1"] <= 1.0 for r in rows)
    with pytest.raises(ValueError, match=r"split='test' is not known; accepted: 'held_out', 'train', 'all'"):
        evaluate_retrieval(enc, n=8, splits=("test",))


def test_twins_change_one_attribute_of_one_object_and_keep_the_pose():
    import numpy as np

    from unclip_core.data.shapes import ShapesConfig, get_world, sample_scene
    from unclip_core.train.clip import _batch, twin_scene
    w = get_world(2)
    for i in range(200):
        scene = sample_scene(np.random.default_rng([1, i]), world=2)
        for attribute in ("shape", "size", "colour"):
            twin = twin_scene(scene, np.random.default_rng([2, i]), attribute)
            if twin is None:
                continue
            changed = [(a, b) for a, b in zip(scene.objects, twin.objects) if a != b]
            assert len(changed) == 1 and twin.world == 2 and twin.relation == scene.relation
            a, b = changed[0]
            assert getattr(a, attribute) != getattr(b, attribute)
            for f in ("shape", "colour", "size", "position", "dx", "dy", "angle"):
                assert f == attribute or getattr(a, f) == getattr(b, f)
            assert not any((o.colour, o.shape) in w.held_out_pairs for o in twin.objects)
    config = ClipTrainConfig.recipe("tiny", batch_size=8, twin_fraction=0.5, image_size=32)
    assert ClipTrainConfig.recipe("shapes-v2").world == 2 and ClipTrainConfig.recipe("shapes").world == 1
    data = ShapesConfig(0, 32, "train", world=2)
    x, texts, keys, _ = _batch(data, 3, config)
    x2, texts2, _, _ = _batch(data, 3, config)
    assert torch.equal(x, x2) and texts == texts2 and x.shape == (8, 3, 32, 32)
    assert len(set(keys[:4])) == 4  # two (scene, twin) pairs, four different descriptions
    assert sum(k1.split() != k2.split() for k1, k2 in zip(keys[0:4:2], keys[1:4:2])) == 2
    with pytest.raises(ValueError, match=r"twin_fraction must be a share of the batch in \[0, 1\], got 1.5"):
        ClipTrainConfig(twin_fraction=1.5)
    with pytest.raises(ValueError, match=r"twin_weights must be 3 non-negative numbers"):
        ClipTrainConfig(twin_weights=(1.0,))
    with pytest.raises(ValueError, match=r"twin_attributes entry='label' is not known"):
        ClipTrainConfig(twin_attributes=("label",), twin_weights=(1.0,))


def test_shape_gates_on_a_tiny_model(tmp_path, one_thread):
    from unclip_core.train.clip import minimal_pair_cosines, shape_probes
    config = ClipTrainConfig.recipe("tiny", world=2)
    tok = shapes_tokenizer(config.context_length, 2)
    folder = export_clip(build_model(config, tok.vocab_size).eval(), tok, config, tmp_path / "m")
    enc = ClipEncoder.load(folder)
    assert enc.world == 2
    rows = minimal_pair_cosines(enc, n_poses=6)
    assert len(rows) == 10 and {r["n"] for r in rows} == {6}
    assert all(-1.0 <= r["mean_cosine"] <= r["max_cosine"] <= 1.0 + 1e-6 for r in rows)
    assert {(r["a"], r["b"]) for r in rows} >= {("circle", "cross"), ("triangle", "star")}
    probes = shape_probes(enc, n=60)
    assert probes["n"] == 60 and 0.0 <= probes["linear"] <= 1.0 and 0.0 <= probes["mlp"] <= 1.0
    assert 0.2 <= probes["majority"] < 0.5  # five shapes drawn uniformly
    with pytest.raises(TypeError, match="encoder must be a ClipEncoder"):
        shape_probes("shapes-clip")


def test_warm_start_and_two_object_probes(tmp_path, one_thread):
    """init_from loads a CLIP folder of the same architecture at step 0 (a fresh optimiser); another architecture
    is refused naming the tensors; two_object_probes reads the first object of two-object z_i."""
    from unclip_core.train.clip import two_object_probes
    base = train_clip(ClipTrainConfig.recipe("tiny", n_steps=2, batch_size=4), tmp_path / "base", progress=False)
    seen = {}
    warm = ClipTrainConfig.recipe("tiny", n_steps=1, batch_size=4, lr=0.0, warmup_steps=0, init_from=str(base))
    out = train_clip(warm, tmp_path / "warm", progress=False,
                     callback=lambda step, m: seen.setdefault("loss", m["loss"]))
    # lr 0: the warm-started model is the base model (weights unchanged by the step)
    a, b = ClipEncoder.load(base), ClipEncoder.load(out)
    assert torch.allclose(a.encode_text(["a red circle"]), b.encode_text(["a red circle"]), atol=1e-6)
    with pytest.raises(ValueError, match=r"init_from=.* does not fit this config's architecture \(\d+ tensors "
                                         r"differ"):
        train_clip(ClipTrainConfig.recipe("tiny", n_steps=1, batch_size=4, embed_dim=24, init_from=str(base)),
                   tmp_path / "bad", progress=False)
    probes = two_object_probes(b, n=90, seed=0, world=2)
    assert probes["n"] == 90 and all(0.0 <= probes[k] <= 1.0 for k in ("shape", "size", "colour"))


def test_slot_read_out_labels_loss_and_resume(tmp_path, one_thread):
    """slot_labels puts each object's shape / colour / size (index + 1) at its position and 0 elsewhere; the heads'
    loss is log(n_classes) averaged at zero weights; a run with slot_weight resumes bit-identically, logs the slot
    metrics and exports a plain open_clip folder (no head tensors)."""
    from unclip_core.data.shapes_scene import COLOURS, POSITIONS, SIZES, Obj, Relation, Scene, get_world
    from unclip_core.train.clip import SlotHeads, slot_labels
    shapes = get_world(2).shapes
    scene = Scene((Obj("star", "blue", "large", "left"), Obj("circle", "red", "small", "right")),
                  Relation("left of", 0, 1), world=2)
    one = Scene((Obj("cross", "purple", "small", "centre"),), world=2)
    y = slot_labels([scene, one])
    assert y.shape == (2, 5, 3)
    assert y[0, POSITIONS.index("left")].tolist() == [shapes.index("star") + 1, COLOURS.index("blue") + 1,
                                                       SIZES.index("large") + 1]
    assert y[0, POSITIONS.index("right")].tolist() == [shapes.index("circle") + 1, 1, 1]
    assert y[0].sum() == y[0, [0, 1]].sum() and y[1].sum() == y[1, POSITIONS.index("centre")].sum()
    heads = SlotHeads(16, len(shapes))
    torch.nn.init.zeros_(heads.linear.weight), torch.nn.init.zeros_(heads.linear.bias)
    loss, acc = heads.loss(torch.randn(2, 16), y)
    expected = (math.log(len(shapes) + 1) + math.log(len(COLOURS) + 1) + math.log(len(SIZES) + 1)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match=r"slot_weight must be a finite weight >= 0"):
        ClipTrainConfig(slot_weight=-1.0)

    config = ClipTrainConfig.recipe("tiny", n_steps=4, batch_size=6, slot_weight=1.0, world=2)
    full = train_clip(config, tmp_path / "full", progress=False)

    class Killed(Exception):
        pass

    def kill_at_3(step, metrics):
        assert 0.0 <= metrics["slot_acc"] <= 1.0 and metrics["slot_loss"] > 0
        if step == 3:
            raise Killed

    with pytest.raises(Killed):
        train_clip(config, tmp_path / "run", progress=False, callback=kill_at_3)
    resumed = train_clip(config, tmp_path / "run", progress=False)
    assert ClipEncoder.load(full).model_id == ClipEncoder.load(resumed).model_id
    assert torch.equal(load_state(tmp_path / "full" / "state.pt")["slot_heads"]["linear.weight"],
                       load_state(tmp_path / "run" / "state.pt")["slot_heads"]["linear.weight"])
    header = (tmp_path / "run" / "loss.csv").read_text().splitlines()[0]
    assert header.endswith("slot_loss,slot_acc")
    from safetensors.torch import load_file
    assert not any("linear" in k and "slot" in k for k in load_file(resumed / "model.safetensors"))


@pytest.mark.slow
def test_bundled_clip_carries_every_object_of_two_object_scenes(one_thread):
    """The bundled shapes-clip (slot read-out) lets linear probes read the first object of a two-object z_i: the
    card measures 0.997 / 0.995 / 1.000 at n 3000; fresh seed, n 900 here (the contrastive CLIP read 0.938 / 0.871)."""
    from unclip_core.train.clip import two_object_probes
    probes = two_object_probes(ClipEncoder.load("shapes-clip"), n=900, seed=777)
    assert probes["shape"] >= 0.97 and probes["size"] >= 0.97 and probes["colour"] >= 0.97, probes
