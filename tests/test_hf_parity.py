"""Our ViT-B equals Hugging Face `VideoMAEForPreTraining` (VideoMAE-B config): parameter count and, with its
weights copied over, the loss on the same input and mask. transformers is a test dependency only."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from mgm.model import create_model, load_hf_state_dict  # noqa: E402


def test_vit_b_matches_hf_videomae_for_pretraining() -> None:
    torch.manual_seed(0)
    # The pretraining checkpoints' layout (MCG-NJU/videomae-base): final encoder LayerNorm, eps 1e-6 as VideoMAE.
    cfg = transformers.VideoMAEConfig(use_mean_pooling=False, layer_norm_eps=1e-6, norm_pix_loss=True)
    hf = transformers.VideoMAEForPreTraining(cfg).eval()
    ours = create_model("base").eval()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())

    load_hf_state_dict(ours, hf.state_dict())
    ours.decoder_norm.eps = hf.decoder.norm.eps  # HF hard-codes 1e-5 for the decoder's last norm

    gen = torch.Generator().manual_seed(1)
    video = torch.randn(1, 3, 16, 224, 224, generator=gen)  # (B, C, T, H, W), ImageNet-normalized
    mask = torch.zeros(1, ours.num_tokens, dtype=torch.bool)
    mask[0, torch.randperm(ours.num_tokens, generator=gen)[:1408]] = True  # ratio 0.9, True = masked
    with torch.no_grad():
        ref = hf(video.transpose(1, 2), bool_masked_pos=mask)  # HF takes (B, T, C, H, W)
        loss, pred = ours(video, mask)
    assert abs(loss.item() - ref.loss.item()) <= 1e-4 * abs(ref.loss.item())
    torch.testing.assert_close(pred, ref.logits, rtol=1e-4, atol=1e-4)
