"""Run by tests/test_train_diffusion.py under torchrun: a few DDP steps, then each rank saves its weights."""
import sys
from pathlib import Path

import torch.distributed as dist
from safetensors.torch import save_file

from unclip_core.train.diffusion import recipe, train_stage

out = Path(sys.argv[1])
cfg = recipe("tiny", "upsampler1", n_steps=3, batch_size=2)


def save(model):
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / f"rank{dist.get_rank()}.safetensors")


train_stage(cfg, out, progress=False, on_end=save)
dist.destroy_process_group()
