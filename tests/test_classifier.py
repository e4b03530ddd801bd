"""The fine-tuning model: shapes, gradients, VideoMAE's init and layer ids, and its encoder taken from our
pretraining checkpoint giving the pretraining encoder's outputs."""

from __future__ import annotations

import pytest
import torch
from _fakes import CLIP, FRAMES, SIZE, tiny_model

from mgm.checkpoint import CheckpointMismatch
from mgm.classifier import VideoMAEClassifier, classifier_from_pretrain
from mgm.config import DataConfig, ModelConfig
from mgm.model import MODEL_SIZES

TINY = MODEL_SIZES["tiny"]


def _video(b: int = 2, frames: int = FRAMES, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, frames, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def test_forward_shapes_logits_and_features() -> None:
    clf = VideoMAEClassifier(ModelConfig(size="tiny", num_classes=7), CLIP).eval()
    assert clf(_video(3)).shape == (3, 7)
    assert clf.forward_tokens(_video(3)).shape == (3, clf.num_tokens, TINY.dim)
    feats = VideoMAEClassifier(ModelConfig(size="tiny", num_classes=0), CLIP).eval()
    assert feats(_video(3)).shape == (3, TINY.dim)  # no head: pooled, fc_norm'ed features
    with pytest.raises(ValueError, match="8 frames x 64x64 does not match"):
        clf(_video(1, frames=8))


def test_state_dict_keys_are_videomae_finetune_layout() -> None:
    keys = set(VideoMAEClassifier(ModelConfig(size="tiny", num_classes=7), CLIP).state_dict())
    block0 = {k.removeprefix("blocks.0.") for k in keys if k.startswith("blocks.0.")}
    assert block0 == {"norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.q_bias", "attn.v_bias",
                      "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight",
                      "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"}  # fmt: skip
    rest = {k for k in keys if not k.startswith("blocks.")}
    assert rest == {"patch_embed.proj.weight", "patch_embed.proj.bias", "fc_norm.weight", "fc_norm.bias",
                    "head.weight", "head.bias"}  # fmt: skip
    assert not any(k.startswith("norm.") or "pos_embed" in k for k in keys)  # mean pooling: no final norm


def test_every_parameter_gets_a_finite_gradient() -> None:
    torch.manual_seed(0)
    model = ModelConfig(size="tiny", num_classes=5, drop_path=0.1, head_dropout=0.5, head_init_scale=1.0)
    clf = VideoMAEClassifier(model, CLIP).train()
    loss = torch.nn.functional.cross_entropy(clf(_video(4)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    bad = [n for n, p in clf.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not bad, f"no finite grad for {bad}"
    assert all(p.grad.abs().sum() > 0 for p in clf.parameters())


def test_head_init_is_scaled_trunc_normal_and_layer_ids_follow_videomae() -> None:
    from timm.optim import param_groups_layer_decay

    torch.manual_seed(0)
    clf = VideoMAEClassifier(ModelConfig(size="tiny", num_classes=400, head_init_scale=0.001), CLIP)
    w = clf.head.weight
    assert 0.9 * 0.02e-3 < w.std() < 1.1 * 0.02e-3  # std 0.02, times init_scale
    assert not clf.head.bias.any()
    groups = param_groups_layer_decay(clf, 0.05, layer_decay=0.75)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    depth = TINY.depth
    assert scale[id(clf.head.weight)] == scale[id(clf.fc_norm.weight)] == 1.0
    assert scale[id(clf.blocks[depth - 1].mlp.fc1.weight)] == pytest.approx(0.75)
    assert scale[id(clf.blocks[0].attn.qkv.weight)] == pytest.approx(0.75**depth)
    assert scale[id(clf.patch_embed.proj.weight)] == pytest.approx(0.75 ** (depth + 1))


def test_from_pretrain_gives_the_pretraining_encoder_outputs() -> None:
    pre = tiny_model(seed=3).eval()
    clf, report = classifier_from_pretrain(pre.state_dict(), ModelConfig(size="tiny", num_classes=5), CLIP)
    clf.eval()
    video = _video(2, seed=1)
    all_ids = torch.arange(pre.num_tokens).expand(2, -1)  # every token visible, in order
    with torch.no_grad():
        ref = pre.forward_encoder(pre.patch_tokens(video), all_ids)  # (B, N, D), with the final norm
        ours = pre.norm(clf.forward_tokens(video))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    for name, t in clf.state_dict().items():
        if name.startswith(("patch_embed.", "blocks.")):
            assert torch.equal(t, pre.state_dict()[name]), name
    assert {k.split(".")[0] for k in report.fresh} == {"fc_norm", "head"}
    assert {"norm.weight", "mask_token", "encoder_to_decoder.weight", "head.weight"} <= set(report.dropped)


def test_other_frame_count_loads_positions_are_not_weights() -> None:
    pre = tiny_model()
    clf, _ = classifier_from_pretrain(pre.state_dict(), ModelConfig(size="tiny", num_classes=3),
                                      DataConfig(num_frames=2 * FRAMES, input_size=SIZE))  # fmt: skip
    assert clf(_video(1, frames=2 * FRAMES)).shape == (1, 3)


@pytest.mark.parametrize(
    ("model", "expect"),
    [
        (ModelConfig(size="small"), r"patch_embed.proj.weight: checkpoint \(192, 3, 2, 16, 16\), model \(384, 3, 2"),
        (ModelConfig(size="small"), r"fit model.size=tiny"),
        (ModelConfig(size="tiny", tubelet=4), r"checkpoint \(192, 3, 2, 16, 16\), model \(192, 3, 4, 16, 16\)"),
        (ModelConfig(size="tiny", tubelet=4), r"fit model.tubelet=2"),
        (ModelConfig(size="tiny", patch=8), r"fit model.patch=16"),
    ],
)
def test_mismatched_pretrain_checkpoint_names_tensor_shapes_and_config_key(model: ModelConfig, expect: str) -> None:
    pre = tiny_model()
    with pytest.raises(CheckpointMismatch, match=expect) as e:
        classifier_from_pretrain(pre.state_dict(), model, CLIP, source="runs/x/step_00000010.pt")
    assert str(e.value).startswith("runs/x/step_00000010.pt does not fit")


def test_missing_block_is_named() -> None:
    state = {k: v for k, v in tiny_model().state_dict().items() if not k.startswith("blocks.3.")}
    with pytest.raises(CheckpointMismatch, match=r"missing from the checkpoint: blocks\.3\.\*"):
        classifier_from_pretrain(state, ModelConfig(size="tiny"), CLIP)
