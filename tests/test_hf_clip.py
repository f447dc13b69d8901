"""Hugging Face CLIP towers through ClipEncoder (unclip_core.hf_clip): tiny random CLIPTextModelWithProjection and
CLIPVisionModelWithProjection saved in diffusers' layout, compared with transformers called directly."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
transformers = pytest.importorskip("transformers")
from benchmarks import karlo as kb  # noqa: E402
from unclip_core.clip import ClipEncoder  # noqa: E402
from unclip_core.hf_clip import is_hf_clip_folder  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = ["a red cube", "a photo of the cat on the left of a small dog"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from transformers import (CLIPImageProcessor, CLIPTextConfig, CLIPTextModelWithProjection, CLIPVisionConfig,
                              CLIPVisionModelWithProjection)
    root = tmp_path_factory.mktemp("hfclip")
    both = root / "both"
    tok = kb.write_tokenizer(both / "tokenizer")
    text = CLIPTextModelWithProjection(CLIPTextConfig(vocab_size=len(tok), hidden_size=32, projection_dim=24,
                                                      intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                                      max_position_embeddings=77, eos_token_id=tok.eos_token_id))
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=32, projection_dim=24, intermediate_size=64,
                                                            num_hidden_layers=2, num_attention_heads=4, image_size=32,
                                                            patch_size=8))
    kb.randomize(text, 1).eval(), kb.randomize(vision, 2).eval()
    text.save_pretrained(both / "text_encoder")
    vision.save_pretrained(both / "image_encoder")
    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    proc.save_pretrained(both / "image_processor")
    only_text = root / "text"
    text.save_pretrained(only_text / "text_encoder")
    tok.save_pretrained(only_text / "tokenizer")
    return {"both": both, "text": only_text, "tok": tok, "text_model": text, "vision": vision, "proc": proc}


def test_text_and_images_match_transformers(folders):
    enc = ClipEncoder.load(str(folders["both"]))
    assert is_hf_clip_folder(folders["both"]) and enc.embed_dim == 24 and enc.image_size == 32
    ids = folders["tok"](PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = folders["text_model"](ids.input_ids)
    torch.testing.assert_close(enc.encode_text(PROMPTS, normalize=False), out.text_embeds, rtol=0, atol=0)
    feats, mask = enc.text_tokens(PROMPTS)
    torch.testing.assert_close(feats, out.last_hidden_state, rtol=0, atol=0)
    assert torch.equal(mask, ids.attention_mask.bool())  # the tokenizer's end-of-text id ends the mask
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)) for _ in range(2)]
    pixels = folders["proc"](images=images, return_tensors="pt").pixel_values
    with torch.no_grad():
        want = folders["vision"](pixel_values=pixels).image_embeds
    got = enc.encode_image(images, normalize=False)
    # PIL (ours, via open_clip's transform) and the processor resize with slightly different bicubic kernels
    assert torch.nn.functional.cosine_similarity(got, want).min() > 0.999
    torch.testing.assert_close(enc.encode_image(images), torch.nn.functional.normalize(got, dim=-1))


def test_a_missing_tower_is_named(folders):
    enc = ClipEncoder.load(str(folders["text"]))
    assert enc.embed_dim == 24 and enc.encode_text(["a red cube"]).shape == (1, 24)
    with pytest.raises(ValueError, match=r"holds no CLIP image tower.*image_encoder/"):
        enc.encode_image([Image.new("RGB", (32, 32))])
    bad = folders["text"].parent / "no_tok"
    folders["text_model"].save_pretrained(bad / "text_encoder")
    with pytest.raises(FileNotFoundError, match=r"tokenizer.*needs its tokenizer folder"):
        ClipEncoder.load(str(bad))


def test_text_condition_is_one_pass_and_equals_the_two_calls(folders):
    enc = ClipEncoder.load(str(folders["both"]))
    z_t, feats, mask = enc.text_condition(PROMPTS)
    torch.testing.assert_close(z_t, enc.encode_text(PROMPTS, normalize=False), rtol=0, atol=0)
    f2, m2 = enc.text_tokens(PROMPTS)
    torch.testing.assert_close(feats, f2, rtol=0, atol=0)
    assert torch.equal(mask, m2)
    calls = []
    hook = enc.model.text.transformer.register_forward_hook(lambda *a: calls.append(1))
    try:
        enc.text_condition(PROMPTS)
    finally:
        hook.remove()
    assert len(calls) == 1
