"""Run by tests/test_train_data.py under torchrun: a decoder trained a few DDP steps on an image folder (rank 0 fills
the z_i cache, the others wait for it), then each rank saves its weights."""
import json
import sys
from pathlib import Path

import torch.distributed as dist
from safetensors.torch import save_file

from explorer.training import train_run
from unclip_core.train.diffusion import load_run_config

out, run_file = Path(sys.argv[1]), Path(sys.argv[2])
cfg = load_run_config(run_file)


def save(model):
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / f"rank{dist.get_rank()}.safetensors")


train_run(cfg, out, progress=False, on_end=save)
dist.destroy_process_group()
