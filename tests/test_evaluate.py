"""explorer.evaluate: end to end on the tiny random pipeline; exact scores with oracle and wrong-colour fakes."""
import json
import math
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import pytest

from analyses.binding_stats import wilson_interval
import torch
from PIL import Image
from tiny_models import write_tiny_pipeline

import explorer.evaluate as ev
from explorer.cli import main
from explorer.evaluate import EvalSettings, evaluate_family
from unclip_core.data.shapes import COLOURS, Scene, get_world, parse, render
from unclip_core.imageio import pil_to_tensor, tensor_to_pil
from unclip_core.sampling import SamplingConfig

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = EvalSettings(sampling={"decoder_steps": 2, "prior_steps": 2, "best_of": 1, "upsampler_steps": (2,)},
                    n_upsample=2, n_variation_images=2, n_variations=2, batch_size=8)


@dataclass
class _Out:
    images: list
    z_i: torch.Tensor
    stages: dict = field(default_factory=dict)


class OraclePipe:
    """Decodes the true render of the scene whose z_i it is given (nearest neighbour among the renders it saw).

    z_i is the centred, unit-norm 16x16 box-downsampled image; `render` in explorer.evaluate is patched to
    report every scene it renders, so the bank holds exactly the scenes the evaluation drew. upsample returns
    the true high-resolution render; with eta > 0 (variations) the decoded scene's jitter is redrawn.
    """

    resolutions = (64, 256)

    def __init__(self) -> None:
        self.scenes: list[Scene] = []
        self.z: list[torch.Tensor] = []

    def remember(self, scene: Scene) -> None:
        self.scenes.append(scene)
        self.z.append(self._embed(render(scene, 64)))

    @staticmethod
    def _embed(image: Image.Image) -> torch.Tensor:
        a = torch.from_numpy(np.asarray(image.convert("RGB").resize((16, 16), Image.BOX), dtype=np.float64)).flatten()
        return torch.nn.functional.normalize(a - a.mean(), dim=0).float()

    def _nearest(self, z: torch.Tensor) -> Scene:
        return self.scenes[int((torch.stack(self.z) @ z).argmax())]

    def draw(self, scene: Scene, size: int) -> Image.Image:
        return render(scene, size)

    def encode_images(self, images):
        return torch.stack([self._embed(im) for im in images])

    def decode(self, z_i, *, sampling=None, x_T=None, prompts=None, upsample=True, seed=None, **kw):
        scenes = [self._nearest(z) for z in z_i]
        if sampling is not None and sampling.eta > 0:
            u = torch.rand(len(scenes), 3, generator=seed)
            shift = [get_world(sc.world).max_shift for sc in scenes]
            scenes = [Scene(tuple(replace(o, dx=m * (2 * float(v[0]) - 1), dy=m * (2 * float(v[1]) - 1),
                                          angle=40 * float(v[2]) - 20) for o in sc.objects), sc.relation, sc.world)
                      for sc, v, m in zip(scenes, u, shift)]
        x = pil_to_tensor([self.draw(sc, 64) for sc in scenes])
        return _Out(tensor_to_pil(x), z_i, {"decoder": x})

    def text_to_image(self, prompts, *, n=1, seed=None, **kw):
        for p in prompts:
            self.remember(parse(p))
        z = torch.stack([self._embed(render(parse(p), 64)) for p in prompts])
        return self.decode(z, seed=seed)

    def upsample(self, low, index, *, sampling=None, seed=None, progress=False):
        return pil_to_tensor([render(self._nearest(self._embed(im)), 256) for im in tensor_to_pil(low)])

    def variations(self, image, *, n=4, sampling=None, seed=None, upsample=True, **kw):
        sampling = SamplingConfig(eta=1.0) if sampling is None else sampling  # UnCLIP.variation_sampling's eta
        return self.decode(self.encode_images([image]).expand(n, -1), sampling=sampling, seed=seed)

    def describe(self):
        return {"model": "oracle"}


class WrongColourPipe(OraclePipe):
    """The oracle, but every object is drawn in the next palette colour."""

    def draw(self, scene, size):
        objs = tuple(replace(o, colour=COLOURS[(COLOURS.index(o.colour) + 1) % len(COLOURS)]) for o in scene.objects)
        return render(Scene(objs, scene.relation), size)


def _patched(monkeypatch, fake):
    def recording_render(scene, size=64):
        fake.remember(scene)
        return render(scene, size)
    monkeypatch.setattr(ev, "render", recording_render)
    return fake


ORACLE_SETTINGS = EvalSettings(n_upsample=3, n_variation_images=3, n_variations=3, n_two_object_t2i=3)


def test_oracle_meets_every_bar_exactly(monkeypatch, tmp_path):
    fake = _patched(monkeypatch, OraclePipe())
    r = evaluate_family(fake, n=4, seed=3, out=tmp_path / "ev", progress=False, settings=ORACLE_SETTINGS)
    m = r.summary["metrics"]
    assert r.summary["passed"] is True
    assert [b["value"] for b in r.summary["bars"]] == [1.0, 1.0, 1.0, 1.0]
    # Wilson intervals with their counts: 4 one-object images, 8 objects of 4 two-object scenes, 4 captions,
    # 3 x 3 variation images
    assert [b["n"] for b in r.summary["bars"]] == [4, 8, 4, 9]
    lo, hi = r.summary["bars"][0]["lo"], r.summary["bars"][0]["hi"]
    assert (lo, hi) == pytest.approx(wilson_interval(4, 4, 0.95))
    assert m["t2i_two_object_per_object_all_said"] == 1.0 and m["t2i_two_object_per_object_all_said_n"] == 6
    for stage in ("recon", "recon_upsampler1"):
        for f in ("shape", "colour", "size", "position"):
            assert m[f"{stage}_{f}"] == 1.0
    for cat in ev.BINDING_CATEGORIES:
        assert m[f"binding_{cat}_prior"] == 1.0 and m[f"binding_{cat}_true_z_i"] == 1.0
    assert m["binding_colour_swap_prior_pair"] == 1.0
    assert math.isinf(m["upsampler1_psnr_model"]) and 15 < m["upsampler1_psnr_bicubic"] < 40
    assert m["variations_agreement"] == 1.0
    assert m["variations_mean_pairwise_l1"] > ORACLE_SETTINGS.min_pairwise_l1 and m["variations_differ"] is True
    assert m["cmmd_generated_vs_real"] >= 0 and m["fd_real_vs_real"] >= 0
    # counts: 4 one-object + 4 two-object scenes decoded, the first n_upsample = 3 (one-object) also upsampled;
    # 3 binding categories x (4 or 8 images) x 2 sources
    rec = r.tables["reconstruction"]
    assert len(rec) == (4 * 1 + 4 * 2) + 3 and rec["image"].nunique() == 8
    assert r.tables["binding"]["image"].nunique() == 2 * (4 + 8 + 8)
    assert json.loads((tmp_path / "ev" / "summary.json").read_text())["metrics"]["upsampler1_psnr_model"] == "inf"


def test_reconstruction_upsamples_only_the_first_n_upsample_scenes(monkeypatch):
    fake = _patched(monkeypatch, OraclePipe())
    s = EvalSettings(n_upsample=3, batch_size=4)
    rec = ev.measure_reconstruction(fake, n=5, seed=0, settings=s)  # 10 scenes in batches of 4
    assert sorted(rec.loc[rec["stage"] == "upsampler1", "image"].unique()) == [0, 1, 2]
    assert rec.loc[rec["stage"] == "decoder", "image"].nunique() == 10


def test_wrong_colour_fake_scores_zero_colour_and_fails(monkeypatch):
    fake = _patched(monkeypatch, WrongColourPipe())
    r = evaluate_family(fake, n=3, seed=1, progress=False, settings=ORACLE_SETTINGS,
                        measures=["reconstruction", "text_to_image", "binding", "variations"])
    m = r.summary["metrics"]
    assert m["recon_colour"] == 0.0 and m["recon_shape"] == 1.0 and m["recon_position"] == 1.0
    assert [b["value"] for b in r.summary["bars"]] == [0.0, 0.0, 0.0, 0.0]
    assert r.summary["passed"] is False and not any(b["pass"] for b in r.summary["bars"])
    assert m["binding_colour_swap_true_z_i"] == 0.0 and m["variations_agreement"] == 0.0
    lo, hi = wilson_interval(0, 3, 0.95)
    assert f"| recon_one_object_all | 0.000 [{lo:.3f}, {hi:.3f}] | 3 | >= 0.95 | no |" in r.markdown


def test_binding_cases_are_seeded_pairs_of_training_compositions():
    cases = ev.binding_cases(3, seed=5)
    assert [c for c, _ in cases] == ["held_out"] * 3 + ["colour_swap"] * 6 + ["relation_order"] * 6
    assert cases == ev.binding_cases(3, seed=5) and cases != ev.binding_cases(3, seed=6)
    a, b = cases[3][1], cases[4][1]
    assert [o.colour for o in a.objects] == [o.colour for o in b.objects][::-1]
    assert [o.shape for o in a.objects] == [o.shape for o in b.objects]
    a, b = cases[9][1], cases[10][1]
    assert [o.shape for o in a.objects] == [o.shape for o in b.objects][::-1]
    held_out = get_world(2).held_out_pairs
    for cat, sc in cases[3:]:
        assert sc.world == 2 and all((o.colour, o.shape) not in held_out for o in sc.objects)
    assert all(any((o.colour, o.shape) in held_out for o in sc.objects) for _, sc in cases[:3])
    v1 = ev.binding_cases(3, seed=5, world=1)
    assert {sc.world for _, sc in v1} == {1}
    assert all(any((o.colour, o.shape) in get_world(1).held_out_pairs for o in sc.objects) for _, sc in v1[:3])


def test_psnr_closed_form_and_render_at():
    x = np.zeros((4, 4, 3), np.uint8)
    y = x.copy()
    y[0, 0, 0] = 255                                     # MSE = 1 / 48
    assert ev.psnr(x, x) == math.inf
    assert ev.psnr(x, y) == pytest.approx(10 * math.log10(48))
    with pytest.raises(ValueError, match="psnr compares images of one shape"):
        ev.psnr(x, np.zeros((2, 2, 3), np.uint8))
    sc = parse("a large red circle in the centre")
    assert ev.render_at(sc, 16).size == (16, 16)
    assert np.array_equal(np.asarray(ev.render_at(sc, 64)), np.asarray(render(sc, 64)))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_pipeline(tmp_path_factory.mktemp("evalpipe"))


def test_tiny_pipeline_end_to_end_writes_files(tiny_dir, tmp_path):
    from unclip_core.pipeline import UnCLIP
    pipe = UnCLIP.load(tiny_dir)
    out = tmp_path / "ev"
    r = evaluate_family(pipe, n=2, seed=0, out=out, progress=False, settings=FAST)
    names = {"per_image.csv", "summary.json", "evaluation.md", "reconstruction.csv", "text_to_image.csv",
             "binding.csv", "distribution.csv", "distribution_metrics.csv", "upsamplers.csv", "variations.csv"}
    assert {p.name for p in out.iterdir()} == names             # no temporary files left behind
    per = pd.read_csv(out / "per_image.csv")
    assert set(per["measure"]) == set(ev.MEASURES)
    assert len(per) == sum(len(df) for k, df in r.tables.items() if k != "distribution_metrics")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seed"] == 0 and summary["n"] == 2 and summary["model"]["model"] == "tiny-unclip"
    assert [b["name"] for b in summary["bars"]] == [k for _, k, _ in ev.BARS]
    # the resolved settings: the overrides over the pipeline's own (the tiny pipeline's: SamplingConfig's defaults)
    assert summary["sampling"] == pipe.sampling.replace(decoder_steps=2, prior_steps=2, best_of=1,
                                                        upsampler_steps=(2,)).to_dict()
    assert summary["settings"]["sampling"] == {"decoder_steps": 2, "prior_steps": 2, "best_of": 1,
                                               "upsampler_steps": [2]}
    assert summary["sampling"]["decoder_guidance"] == 3.0 and summary["sampling"]["prior_guidance"] == 4.0
    # every generated image comes from fresh noise under the one clip_denoised rule (clamped), as its output
    # records: text -> image is no longer measured unclamped beside a clamped reconstruction
    for name in ("reconstruction", "text_to_image", "binding", "distribution", "variations"):
        assert r.tables[name]["clip_denoised"].tolist() == [True] * len(r.tables[name]), name
    ups = r.tables["upsamplers"]
    assert list(ups[["low_res", "out_res"]].iloc[0]) == [16, 32] and np.isfinite(ups["psnr_bicubic"]).all()
    assert (out / "evaluation.md").read_text().startswith("## Evaluation")
    # seeded: the same call gives the same numbers
    again = evaluate_family(pipe, n=2, seed=0, progress=False, settings=FAST, measures=["upsamplers"])
    pd.testing.assert_frame_equal(again.tables["upsamplers"], ups)


def test_cli_evaluate(tiny_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["evaluate", str(tiny_dir), "--out", str(out), "--n", "2", "--seed", "1", "--steps", "2",
               "--prior-steps", "2", "--best-of", "1", "--upsampler-steps", "2", "--n-variations", "2",
               "--measures", "reconstruction", "upsamplers", "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "recon_one_object_all" in text and "t2i_one_object_all_said" not in text
    assert set(pd.read_csv(out / "per_image.csv")["measure"]) == {"reconstruction", "upsamplers"}
    sampling = json.loads((out / "summary.json").read_text())["sampling"]
    assert (sampling["decoder_steps"], sampling["prior_steps"], sampling["best_of"]) == (2, 2, 1)
    assert sampling["upsampler_steps"] == [2] and sampling["decoder_guidance"] == 3.0  # not given: the pipeline's
    rc = main(["evaluate", str(tiny_dir), "--out", str(out), "--measures", "everything"])
    assert rc == 2 and "accepted: 'reconstruction'" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs, err, match", [
    ({"sampling": {"decoder_steps": 0}}, ValueError, "decoder_steps must be >= 1"),
    ({"n_variations": 1}, ValueError, "n_variations must be >= 2"),
    ({"sampling": {"upsampler_steps": ()}}, ValueError, "upsampler_steps must name at least one step count"),
    ({"sampling": {"decoder_guidance": -1.0}}, ValueError, r"guidance must lie in \[0, 100\]"),
    ({"sampling": {"eta": 0.5, "decoder_sampler": "dpmpp_2m"}}, ValueError, "'dpmpp_2m' does not take eta"),
    ({"sampling": {"variation_eta": 1.0}}, ValueError, r"unknown sampling settings \['variation_eta'\]"),
    ({"steps": 2}, TypeError, "unexpected keyword argument 'steps'"),
    ({"caption_style": "fancy"}, ValueError, "caption_style='fancy' is not known; accepted: 'plain'"),
    ({"batch_size": 2.5}, TypeError, "batch_size must be an integer"),
])
def test_settings_errors(kwargs, err, match):
    with pytest.raises(err, match=match):
        EvalSettings(**kwargs)


def test_evaluate_errors(monkeypatch, tmp_path):
    fake = _patched(monkeypatch, OraclePipe())
    with pytest.raises(TypeError, match="pipe must be an unclip_core.pipeline.UnCLIP .* without encode_images"):
        evaluate_family(object(), n=2)
    with pytest.raises(ValueError, match="n must be >= 1"):
        evaluate_family(fake, n=0)
    with pytest.raises(ValueError, match=r"seed must lie in \[0, 2\*\*63 - 1\], got -1"):
        evaluate_family(fake, n=2, seed=-1)
    with pytest.raises(TypeError, match="seed must be an int >= 0, got float"):
        evaluate_family(fake, n=2, seed=1.5)
    with pytest.raises(ValueError, match="measures entry='fid' is not known; accepted: 'reconstruction'"):
        evaluate_family(fake, n=2, measures=["fid"])
    with pytest.raises(ValueError, match="n must be >= 2 for the distribution measure"):
        evaluate_family(fake, n=1, measures=["distribution"])
    with pytest.raises(TypeError, match="settings must be an EvalSettings"):
        evaluate_family(fake, n=2, settings={"steps": 2})
    (tmp_path / "file").write_text("x")
    r = evaluate_family(fake, n=1, progress=False, measures=["upsamplers"])
    with pytest.raises(NotADirectoryError, match="is a file; pass a folder"):
        ev.write_results(r, tmp_path / "file")
