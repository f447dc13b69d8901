"""The latent decoder's autoencoder: shapes, scaling, save/load, trainer kill/resume, config errors."""
import pytest
import torch

from unclip_core.autoencoder import Autoencoder, AutoencoderConfig
from unclip_core.checkpoint import load_checkpoint, save_checkpoint
from unclip_core.train.autoencoder import (AutoencoderTrainConfig, reconstruction_psnr, recipe, train_autoencoder,
                                           _renders)
from unclip_core.data.shapes import ShapesConfig


def test_shapes_scaling_and_round_trip(tmp_path):
    torch.manual_seed(0)
    m = Autoencoder(AutoencoderConfig(image_size=32, channels=8, channel_mult=(1, 2, 4), norm_groups=4,
                                      scaling_factor=2.0)).eval()
    assert (m.config.factor, m.config.latent_size) == (4, 8)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    z = m.encode(x)
    assert z.shape == (2, 4, 8, 8)
    torch.testing.assert_close(z, m.moments(x)[0] * 2.0)
    assert m.decode(z).shape == (2, 3, 32, 32)
    torch.testing.assert_close(m.decode(z), m.decoder(z / 2.0))  # decode undoes the scaling
    back = load_checkpoint(save_checkpoint(tmp_path / "ae", m))
    torch.testing.assert_close(back.decode(z), m.decode(z))
    assert back.config == m.config
    with pytest.raises(ValueError, match=r"x"):
        m.encode(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"image_size=30 must be divisible by the downsampling factor 4"):
        AutoencoderConfig(image_size=30, channel_mult=(1, 2, 4))
    with pytest.raises(ValueError, match=r"norm_groups=8 must divide every level's channels"):
        AutoencoderConfig(channels=4)
    with pytest.raises(ValueError, match=r"scaling_factor must be a number > 0, got 0"):
        AutoencoderConfig(scaling_factor=0)


def test_trainer_kill_resume_equals_one_run_and_calibrates(tmp_path):
    torch.set_num_threads(1)
    config = recipe("tiny", n_steps=4)  # checkpoints every 2 steps
    whole = load_checkpoint(train_autoencoder(config, tmp_path / "a", progress=False))

    def kill(step, metrics):
        if step == 3:  # after the checkpoint at step 2: step 3 is lost and redone
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_autoencoder(config, tmp_path / "b", progress=False, callback=kill)
    assert not (tmp_path / "b" / "model").exists()
    resumed = load_checkpoint(train_autoencoder(config, tmp_path / "b", progress=False))
    for (k, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k  # bit-identical after the kill
    assert resumed.config == whole.config and whole.config.scaling_factor not in (0.0, 1.0)
    with pytest.raises(ValueError, match=r"holds a run with another config \(differs in \['lr'\]\)"):
        train_autoencoder(recipe("tiny", n_steps=4, lr=0.5), tmp_path / "b", progress=False)
    psnr = reconstruction_psnr(whole, _renders(ShapesConfig(1, 32, "all", world=2), range(3)))
    assert psnr.shape == (3,) and torch.isfinite(psnr).all()


def test_config_errors():
    with pytest.raises(ValueError, match=r"unknown AutoencoderConfig keys \['width'\]; accepted keys"):
        AutoencoderTrainConfig(model={"width": 3})
    with pytest.raises(ValueError, match=r"world must be a ShapesWorld version in \[1, 2\], got 5"):
        recipe("tiny", world=5)
    with pytest.raises(ValueError, match=r"recipe='big' is not known"):
        recipe("big")
    with pytest.raises(TypeError, match="config must be an AutoencoderTrainConfig"):
        train_autoencoder({"model": {}}, "/tmp/x")
