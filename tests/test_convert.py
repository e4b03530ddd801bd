"""Checkpoints in and out: random weights converted both ways between Hugging Face `transformers` and ours give
the same loss / predictions (pretraining) and logits (classification), fp32, eval mode; VideoMAE's .pth layouts
(pretraining, fine-tuning, encoder alone, "module" wrapping) round-trip; bad checkpoints get clear messages.

Hugging Face hard-codes LayerNorm eps 1e-5 for fc_norm and the decoder's last norm, where VideoMAE and we use
1e-6; the tests set the one side's eps to the other's so equality is exact math, not a tolerance for that.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from _fakes import CLIP, FRAMES, SIZE, tiny_model

from mgm import convert
from mgm.checkpoint import CheckpointError, CheckpointMismatch, load_state
from mgm.classifier import VideoMAEClassifier, encoder_state
from mgm.config import DataConfig, ModelConfig
from mgm.model import MODEL_SIZES, VideoMAEPretrain, sinusoid_table

transformers = pytest.importorskip("transformers")

TINY = MODEL_SIZES["tiny"]
NUM_CLASSES = 5
BLOCK = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.q_bias", "attn.v_bias", "attn.proj.weight",
         "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
         "mlp.fc2.bias"]  # fmt: skip  # VideoMAE's Block (modeling_pretrain / modeling_finetune)


def _hf_config(classifier: bool) -> transformers.VideoMAEConfig:
    return transformers.VideoMAEConfig(
        image_size=SIZE, num_frames=FRAMES, hidden_size=TINY.dim, num_hidden_layers=TINY.depth,
        num_attention_heads=TINY.heads, intermediate_size=4 * TINY.dim, decoder_hidden_size=TINY.decoder_dim,
        decoder_num_hidden_layers=TINY.decoder_depth, decoder_num_attention_heads=TINY.decoder_heads,
        decoder_intermediate_size=4 * TINY.decoder_dim, layer_norm_eps=1e-6, use_mean_pooling=classifier,
        num_labels=NUM_CLASSES,
    )  # fmt: skip


def _jitter(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter moved off its init (biases, norms, head included), so no tensor is checked at a default."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return module.eval()


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    video = torch.randn(2, 3, FRAMES, SIZE, SIZE, generator=gen)  # (B, C, T, H, W)
    n = (FRAMES // 2) * (SIZE // 16) ** 2
    mask = torch.zeros(2, n, dtype=torch.bool)
    mask[:, torch.randperm(n, generator=gen)[: 3 * n // 4]] = True  # the same count per row, True = masked
    return video, mask


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5), (a - b).abs().max()


def test_hf_pretraining_to_ours_same_loss_and_predictions(tmp_path: Path) -> None:
    hf = _jitter(transformers.VideoMAEForPreTraining(_hf_config(classifier=False)), 0)
    hf.save_pretrained(tmp_path / "hf")
    assert convert.main([str(tmp_path / "hf"), str(tmp_path / "ours.pt"), "--to", "mgm"]) == 0
    w = convert.read_weights(tmp_path / "ours.pt")
    assert (w.kind, w.clip) == ("pretrain", {"num_frames": FRAMES, "input_size": SIZE})
    ours, _ = convert.build(w, convert.model_config_for(w), CLIP)
    ours.decoder_norm.eps = hf.decoder.norm.eps
    video, mask = _inputs()
    with torch.no_grad():
        ref = hf(video.transpose(1, 2), bool_masked_pos=mask)  # HF takes (B, T, C, H, W)
        loss, pred = ours(video, mask)
    _close(loss, ref.loss)
    _close(pred, ref.logits)


def test_ours_pretraining_to_hf_same_loss_and_predictions(tmp_path: Path) -> None:
    ours = _jitter(tiny_model(seed=1), 1)
    convert.export_mgm(ours, ModelConfig(size="tiny"), CLIP, tmp_path / "ours.pt")
    assert convert.main([str(tmp_path / "ours.pt"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert {p.name for p in (tmp_path / "hf").iterdir()} >= {"config.json", "model.safetensors"}
    hf = transformers.VideoMAEForPreTraining.from_pretrained(tmp_path / "hf").eval()
    hf.decoder.norm.eps = ours.decoder_norm.eps
    video, mask = _inputs(1)
    with torch.no_grad():
        ref = hf(video.transpose(1, 2), bool_masked_pos=mask)
        loss, pred = ours(video, mask)
    _close(loss, ref.loss)
    _close(pred, ref.logits)


def test_hf_classifier_to_ours_same_logits(tmp_path: Path) -> None:
    hf = _jitter(transformers.VideoMAEForVideoClassification(_hf_config(classifier=True)), 2)
    hf.save_pretrained(tmp_path / "hf")
    clf, report = convert.classifier_from_file(tmp_path / "hf", ModelConfig(size="tiny", num_classes=NUM_CLASSES),
                                               CLIP, strict=True)  # fmt: skip
    assert not report.fresh and not report.dropped
    clf.eval().fc_norm.eps = hf.fc_norm.eps
    video, _ = _inputs(2)
    with torch.no_grad():
        _close(clf(video), hf(video.transpose(1, 2)).logits)


def test_ours_classifier_to_hf_and_to_videomae_same_logits(tmp_path: Path) -> None:
    torch.manual_seed(3)
    clf = _jitter(VideoMAEClassifier(ModelConfig(size="tiny", num_classes=NUM_CLASSES), CLIP), 3)
    convert.export_mgm(clf, ModelConfig(size="tiny", num_classes=NUM_CLASSES), CLIP, tmp_path / "clf.pt")
    assert convert.main([str(tmp_path / "clf.pt"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    hf = transformers.VideoMAEForVideoClassification.from_pretrained(tmp_path / "hf").eval()
    hf.fc_norm.eps = clf.fc_norm.eps
    video, _ = _inputs(3)
    with torch.no_grad():
        _close(hf(video.transpose(1, 2)).logits, clf(video))
    # VideoMAE's fine-tuning .pth is our classifier's names under "model"; back in, the same logits
    assert convert.main([str(tmp_path / "hf"), str(tmp_path / "ft.pth"), "--to", "videomae"]) == 0
    saved = torch.load(tmp_path / "ft.pth", weights_only=True)["model"]
    assert set(saved) == set(clf.state_dict())
    again, _ = convert.classifier_from_file(tmp_path / "ft.pth", ModelConfig(size="tiny", num_classes=NUM_CLASSES),
                                            CLIP, strict=True)  # fmt: skip
    with torch.no_grad():
        _close(again.eval()(video), clf(video))


def _videomae_pretrain_keys(depth: int, decoder_depth: int) -> set[str]:
    """VideoMAE's PretrainVisionTransformer state dict names (sin-cos positions are not in it)."""
    keys = {"encoder.patch_embed.proj.weight", "encoder.patch_embed.proj.bias", "encoder.norm.weight",
            "encoder.norm.bias", "decoder.norm.weight", "decoder.norm.bias", "decoder.head.weight",
            "decoder.head.bias", "encoder_to_decoder.weight", "mask_token"}  # fmt: skip
    keys |= {f"encoder.blocks.{i}.{n}" for i in range(depth) for n in BLOCK}
    return keys | {f"decoder.blocks.{i}.{n}" for i in range(decoder_depth) for n in BLOCK}


def test_videomae_pretraining_layout_round_trip_and_module_wrapping(tmp_path: Path) -> None:
    ours = _jitter(tiny_model(seed=4), 4)
    convert.export_mgm(ours, ModelConfig(size="tiny"), CLIP, tmp_path / "ours.pt")
    assert convert.main([str(tmp_path / "ours.pt"), str(tmp_path / "vm.pth"), "--to", "videomae"]) == 0
    saved = torch.load(tmp_path / "vm.pth", weights_only=True)["model"]
    assert set(saved) == _videomae_pretrain_keys(TINY.depth, TINY.decoder_depth)
    # DDP-saved: {"module": {"module.encoder...": ...}}, plus the extras VideoMAE's save_model writes (its args as
    # an argparse.Namespace, allowed: it rebuilds plain data only)
    extras = {"epoch": 799, "args": argparse.Namespace(model="pretrain_videomae_tiny", lr=1.5e-4), "scaler": {}}
    torch.save({"module": {f"module.{k}": v for k, v in saved.items()}, **extras}, tmp_path / "ddp.pth")
    w = convert.read_weights(tmp_path / "ddp.pth")
    assert (w.layout, w.kind) == ("videomae-pretrain", "pretrain")
    assert w.state.keys() == ours.state_dict().keys()
    assert all(torch.equal(w.state[k], v) for k, v in ours.state_dict().items())


def test_encoder_only_export_is_videomae_finetune_start(tmp_path: Path) -> None:
    ours = _jitter(tiny_model(seed=5), 5)
    convert.export_mgm(ours, ModelConfig(size="tiny"), CLIP, tmp_path / "ours.pt")
    assert convert.main([str(tmp_path / "ours.pt"), str(tmp_path / "enc.pth"), "--to", "videomae",
                         "--encoder-only"]) == 0  # fmt: skip
    saved = torch.load(tmp_path / "enc.pth", weights_only=True)["model"]
    assert set(saved) == {"patch_embed.proj.weight", "patch_embed.proj.bias"} | {
        f"blocks.{i}.{n}" for i in range(TINY.depth) for n in BLOCK
    }
    clf, report = convert.classifier_from_file(tmp_path / "enc.pth", ModelConfig(size="tiny", num_classes=3), CLIP)
    assert {k.split(".")[0] for k in report.fresh} == {"fc_norm", "head"}
    assert torch.equal(clf.blocks[2].mlp.fc1.weight, ours.blocks[2].mlp.fc1.weight)


def test_model_init_from_pretraining_checkpoint_of_each_origin(tmp_path: Path) -> None:
    """model.init takes our training checkpoint, a VideoMAE pretraining .pth and a Hugging Face folder alike."""
    ours = _jitter(tiny_model(seed=6), 6)
    torch.save({"model": ours.state_dict(), "optimizer": {}, "step": 3}, tmp_path / "step.pt")
    convert.export_videomae(ours, tmp_path / "vm.pth")
    convert.export_hf(ours, ModelConfig(size="tiny"), CLIP, tmp_path / "hf")
    feats = []
    for src in ("step.pt", "vm.pth", "hf"):
        clf, report = convert.classifier_from_file(tmp_path / src, ModelConfig(size="tiny", num_classes=2), CLIP)
        assert any("decoder tensors not used" in n for n in report.notes)
        with torch.no_grad():
            feats.append(clf.eval().forward_tokens(_inputs()[0]))
    assert torch.equal(feats[0], feats[1]) and torch.equal(feats[0], feats[2])


def test_head_size_mismatch_named_or_reset(tmp_path: Path) -> None:
    clf = VideoMAEClassifier(ModelConfig(size="tiny", num_classes=NUM_CLASSES), CLIP)
    convert.export_videomae(clf, tmp_path / "ft.pth")
    model = ModelConfig(size="tiny", num_classes=174)
    with pytest.raises(CheckpointMismatch, match=r"head.weight: checkpoint \(5, 192\), model \(174, 192\)") as e:
        convert.classifier_from_file(tmp_path / "ft.pth", model, CLIP, strict=True)
    assert "model.num_classes=5" in str(e.value) and str(tmp_path / "ft.pth") in str(e.value)
    _, report = convert.classifier_from_file(tmp_path / "ft.pth", model, CLIP)  # fine-tuning start: a new head
    assert "head" in {k.split(".")[0] for k in report.fresh} and any("starts fresh" in n for n in report.notes)


def test_wider_checkpoint_names_tensor_shapes_and_size(tmp_path: Path) -> None:
    """A VideoMAE V2-style complaint: released weights of another size than the config."""
    small = VideoMAEPretrain(ModelConfig(size="small"), CLIP)
    convert.export_videomae(small, tmp_path / "vit_s.pth")
    with pytest.raises(CheckpointMismatch) as e:
        convert.classifier_from_file(tmp_path / "vit_s.pth", ModelConfig(size="tiny", num_classes=3), CLIP)
    msg = str(e.value)
    assert str(tmp_path / "vit_s.pth") in msg and "model.size=small" in msg
    assert "patch_embed.proj.weight: checkpoint (384, 3, 2, 16, 16), model (192, 3, 2, 16, 16)" in msg
    assert "missing from the checkpoint" not in msg  # tiny has 4 blocks, small 12: extra ones, none missing
    assert "in the checkpoint but not in the model: blocks.4.*" in msg


def test_learned_positions_refused_fixed_ones_dropped_and_v2_options_named(tmp_path: Path) -> None:
    state = {f"encoder.{k}": v for k, v in tiny_model().state_dict().items() if k.startswith(("patch_embed", "blocks"))}
    n = (FRAMES // 2) * (SIZE // 16) ** 2
    torch.save({"model": {**state, "encoder.pos_embed": sinusoid_table(n, TINY.dim)}}, tmp_path / "fixed.pth")
    w = convert.read_weights(tmp_path / "fixed.pth")
    assert "pos_embed" not in w.state and any("sin-cos" in note for note in w.notes)
    torch.save({"model": {**state, "encoder.pos_embed": torch.randn(1, n, TINY.dim)}}, tmp_path / "learned.pth")
    with pytest.raises(CheckpointError, match=r"learned.pth: pos_embed \(1, 32, 192\) is a learned position"):
        convert.read_weights(tmp_path / "learned.pth")
    torch.save({"model": {**state, "encoder.blocks.0.gamma_1": torch.ones(TINY.dim)}}, tmp_path / "ls.pth")
    with pytest.raises(CheckpointError, match=r"ls.pth: uses layer scale"):
        convert.read_weights(tmp_path / "ls.pth")


def test_cli_reports_errors_with_the_file_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    assert convert.main([str(tmp_path / "junk.pth"), str(tmp_path / "out.pt"), "--to", "mgm"]) == 2
    assert f"mgm-convert: {tmp_path / 'junk.pth'}: not a readable checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out.pt").exists()


def test_encoder_only_hf_folder_starts_hf_fine_tuning_with_our_encoder(tmp_path: Path) -> None:
    ours = _jitter(tiny_model(seed=7), 7)
    convert.export_mgm(ours, ModelConfig(size="tiny"), CLIP, tmp_path / "ours.pt")
    assert convert.main([str(tmp_path / "ours.pt"), str(tmp_path / "hf"), "--to", "hf", "--encoder-only"]) == 0
    hf = transformers.VideoMAEForVideoClassification.from_pretrained(tmp_path / "hf", num_labels=3).eval()
    assert hf.config.use_mean_pooling and hf.classifier.out_features == 3  # a new head, VideoMAE's pooling
    video, _ = _inputs(7)
    with torch.no_grad():
        tokens = hf.videomae(video.transpose(1, 2)).last_hidden_state  # (B, N, D), no final norm
        ref = ours.forward_encoder(ours.patch_tokens(video), torch.arange(tokens.shape[1]).expand(2, -1))
    _close(ours.norm(tokens), ref)


def test_videomae_v2_giant_recognised_by_shape_and_named_when_config_differs() -> None:
    """V2's ViT-g (width 1408, 40 blocks, MLP 6144, 14x14 patches): the size comes from the tensors' shapes
    (meta tensors: shapes without the 4 GB of weights)."""
    with torch.device("meta"):
        giant = VideoMAEPretrain(ModelConfig(size="giant", patch=14), DataConfig(num_frames=16, input_size=224))
    released = convert.mgm_to_videomae(giant.state_dict(), "pretrain")  # its .pth names
    assert released["encoder.blocks.39.mlp.fc1.weight"].shape == (6144, 1408)
    w = convert.Weights(convert.videomae_to_mgm(released), "pretrain", "vit_g_hybrid_pt_1200e.pth", "videomae-pretrain")
    model = convert.model_config_for(w)
    assert (model.size, model.patch, model.tubelet, model.decoder_dim, model.decoder_depth) == ("giant", 14, 2, 512, 4)
    enc, _ = encoder_state(w.state)
    with torch.device("meta"):
        base = VideoMAEClassifier(ModelConfig(size="base", num_classes=174), DataConfig())
    with pytest.raises(CheckpointMismatch) as e:
        load_state(base, enc, source=w.source, fresh=("fc_norm.", "head."))
    msg = str(e.value)
    assert "patch_embed.proj.weight: checkpoint (1408, 3, 2, 14, 14), model (768, 3, 2, 16, 16)" in msg
    assert "model.size=giant" in msg and "model.patch=14" in msg
