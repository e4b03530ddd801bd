"""VideoMAE model: patch layout, visible-only embedding, gradients, fixed visible count, the loss formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _fakes import CLIP, FRAMES, RATIO, SIZE, tiny_model, tube_mask

from mgm.config import IMAGENET_MEAN, IMAGENET_STD, load_config
from mgm.model import MODEL_SIZES, create_model, model_from_config, patchify, unpatchify


def _batch(b: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    video = torch.randn(b, 3, FRAMES, SIZE, SIZE, generator=gen)
    mask = torch.stack([tube_mask((FRAMES // 2, SIZE // 16, SIZE // 16), RATIO, gen) for _ in range(b)])
    return video, mask


def test_unpatchify_inverts_patchify() -> None:
    x = torch.randn(2, 3, 6, 48, 32)
    p = patchify(x, 2, 16)
    assert p.shape == (2, 3 * 3 * 2, 2 * 16 * 16 * 3)
    assert torch.equal(unpatchify(p, (3, 3, 2), 2, 16), x)


def test_patch_vector_layout_is_t_h_w_then_ts_p_p_c() -> None:
    x = torch.randn(1, 3, 4, 32, 48)
    p = patchify(x, 2, 16)  # grid (2, 2, 3)
    t, h, w = 1, 0, 2
    expect = x[0, :, 2 * t : 2 * t + 2, 16 * h : 16 * h + 16, 16 * w : 16 * w + 16].permute(1, 2, 3, 0)
    assert torch.equal(p[0, t * 6 + h * 3 + w], expect.reshape(-1))


def test_visible_only_embedding_equals_conv3d() -> None:
    model = tiny_model().eval()
    video, mask = _batch()
    ids, v = model.split_ids(mask)
    conv = model.patch_embed.proj(video).flatten(2).transpose(1, 2)  # (B, N, D), what HF computes
    patches = model.patch_tokens(video)
    vis = torch.gather(patches, 1, ids[:, :v, None].expand(-1, -1, patches.shape[-1]))
    ours = F.linear(vis, model.patch_embed.proj.weight.flatten(1), model.patch_embed.proj.bias)
    ref = torch.gather(conv, 1, ids[:, :v, None].expand(-1, -1, conv.shape[-1]))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert not mask.gather(1, ids[:, :v]).any() and mask.gather(1, ids[:, v:]).all()


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_forward_backward_finite_every_param_has_grad(size: str) -> None:
    torch.manual_seed(0)
    model = create_model(size, CLIP, drop_path=0.1)
    video, mask = _batch()
    loss, pred = model(video, mask)
    loss.backward()
    assert torch.isfinite(loss) and pred.shape == (2, int(mask[0].sum()), 2 * 16 * 16 * 3)
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no finite grad for {missing}"
    assert all(p.grad.abs().sum() > 0 for p in model.parameters())


def test_encoder_sees_fixed_visible_count_and_rejects_ragged_masks() -> None:
    model = tiny_model()
    video, mask = _batch(3)
    seen = []
    model.blocks[0].register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
    model(video, mask)
    n = model.num_tokens
    assert seen == [(3, n - int(mask[0].sum()), MODEL_SIZES["tiny"].dim)]
    mask[1, mask[1].nonzero()[0]] = False  # one row masks one token fewer
    with pytest.raises(ValueError, match="same number"):
        model(video, mask)


def _direct_loss(video: torch.Tensor, mask: torch.Tensor, pred: torch.Tensor, norm_pix: bool,
                 mean: list[float], std: list[float]) -> torch.Tensor:  # fmt: skip
    """The loss written out: masked patches of the un-normalized video (optionally standardised) vs `pred`."""
    pixels = video * torch.tensor(std)[:, None, None, None] + torch.tensor(mean)[:, None, None, None]  # [0, 1]
    expect = []
    for b in range(video.shape[0]):
        rows = patchify(pixels[b : b + 1], 2, 16)[0][mask[b]]  # (M, ts*p*p*C) masked patches in token order
        rows = rows.reshape(rows.shape[0], -1, 3)  # (M, ts*p*p, C)
        if norm_pix:
            mu, sd = rows.mean(1, keepdim=True), rows.var(1, unbiased=True, keepdim=True).sqrt()
            rows = (rows - mu) / (sd + 1e-6)
        expect.append(((pred[b] - rows.reshape(rows.shape[0], -1)) ** 2).mean())
    return torch.stack(expect).mean()


@pytest.mark.parametrize("norm_pix", [True, False])
def test_loss_equals_direct_formula(norm_pix: bool) -> None:
    model = tiny_model(norm_pix_loss=norm_pix)
    video, mask = _batch()
    with torch.no_grad():
        loss, pred = model(video, mask)
    expect = _direct_loss(video, mask, pred, norm_pix, IMAGENET_MEAN, IMAGENET_STD)
    torch.testing.assert_close(loss, expect, rtol=1e-5, atol=1e-6)


def test_data_mean_and_std_reach_the_pixel_targets() -> None:
    # Without norm_pix_loss the target is the video un-normalized with the statistics the loader normalized it
    # with (data.mean / data.std), not ImageNet's.
    cfg = load_config(None, ["model.size=tiny", f"data.num_frames={FRAMES}", f"data.input_size={SIZE}",
                             f"mask.ratio={RATIO}", "model.norm_pix_loss=false", "data.mean=[0.45,0.5,0.55]",
                             "data.std=[0.3,0.2,0.1]"])  # fmt: skip
    torch.manual_seed(0)
    model = model_from_config(cfg)
    video, mask = _batch()
    with torch.no_grad():
        loss, pred = model(video, mask)
    expect = _direct_loss(video, mask, pred, False, cfg.data.mean, cfg.data.std)
    torch.testing.assert_close(loss, expect, rtol=1e-5, atol=1e-6)


def _targets(mask: torch.Tensor, keep: int, seed: int = 1) -> torch.Tensor:
    """(B, N) bool decoder mask, True = reconstructed: `keep` random masked tokens of each row."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.zeros_like(mask)
    for b in range(mask.shape[0]):
        masked = mask[b].nonzero()[:, 0]
        out[b, masked[torch.randperm(len(masked), generator=gen)[:keep]]] = True
    return out


@pytest.mark.parametrize("decoder", [False, True])
def test_grad_checkpointing_gives_the_same_loss_and_gradients(decoder: bool) -> None:
    video, mask = _batch()
    dec = _targets(mask, 8) if decoder else None
    losses, grads = [], []
    for ckpt in (False, True):
        model = tiny_model(grad_checkpointing=ckpt, drop_path=0.1)  # drop path: the recomputation replays its RNG
        torch.manual_seed(3)
        loss = model(video, mask, dec)[0]
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(losses[0], losses[1])
    torch.testing.assert_close(grads[0], grads[1])


def test_decoder_mask_equal_to_the_mask_is_the_plain_loss_bit_for_bit() -> None:
    # Decoder masking off (None) is VideoMAE's loss; marking every masked token as a target takes the other code
    # path and must give the very same numbers: the two paths differ only in which tokens they drop.
    model = tiny_model()
    video, mask = _batch()
    loss, pred = model(video, mask)
    loss_all, pred_all = model(video, mask, mask.clone())
    assert torch.equal(loss, loss_all) and torch.equal(pred, pred_all)


@pytest.mark.parametrize("norm_pix", [True, False])
def test_decoder_masking_loss_covers_only_the_targets(norm_pix: bool) -> None:
    model = tiny_model(norm_pix_loss=norm_pix)
    video, mask = _batch()
    dec = _targets(mask, 10)
    seen = []
    model.decoder_blocks[0].register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
    with torch.no_grad():
        loss, pred = model(video, mask, dec)
    v = model.num_tokens - int(mask[0].sum())
    assert pred.shape == (2, 10, 2 * 16 * 16 * 3) and seen == [(2, v + 10, MODEL_SIZES["tiny"].decoder_dim)]
    expect = _direct_loss(video, dec, pred, norm_pix, IMAGENET_MEAN, IMAGENET_STD)  # targets, in token order
    torch.testing.assert_close(loss, expect, rtol=1e-5, atol=1e-6)
    model(video, mask, dec)[0].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_decoder_mask_must_be_masked_tokens_in_fixed_counts() -> None:
    model = tiny_model()
    video, mask = _batch()
    dec = _targets(mask, 6)
    bad = dec.clone()
    bad[0, (~mask[0]).nonzero()[0]] = True  # a visible token as a target
    bad[0, dec[0].nonzero()[0]] = False  # (same count, so only the visibility is wrong)
    with pytest.raises(ValueError, match="visible tokens as targets"):
        model(video, mask, bad)
    ragged = dec.clone()
    ragged[1, dec[1].nonzero()[0]] = False
    with pytest.raises(ValueError, match="same number"):
        model(video, mask, ragged)
    with pytest.raises(ValueError, match="bool"):
        model(video, mask, dec.float())


def test_huge_and_giant_are_videomae_v2_sizes() -> None:
    # Built on the meta device: shapes without allocating ~1B parameters.
    def encoder_params(d: int, depth: int, hidden: int, patch: int) -> int:
        block = 4 * d * d + 3 * d + 2 * d * hidden + hidden + d + 4 * d  # qkv+proj, q/v/proj biases, MLP, 2 norms
        return 3 * 2 * patch * patch * d + d + depth * block + 2 * d  # tubelet embedding, blocks, final norm

    for size, patch, (d, depth, heads, hidden) in (("huge", 16, (1280, 32, 16, 5120)),
                                                    ("giant", 14, (1408, 40, 16, 6144))):  # fmt: skip
        with torch.device("meta"):
            model = create_model(size, patch=patch)
        enc = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("patch_embed.", "blocks.", "norm.")))
        assert enc == encoder_params(d, depth, hidden, patch)  # ViT-H ~632M, ViT-g ~1011M
        blk = model.blocks[0]
        assert (len(model.blocks), blk.attn.heads, blk.mlp.fc1.out_features) == (depth, heads, hidden)
        dec = model.decoder_blocks
        assert (len(dec), dec[0].attn.heads, model.mask_token.shape[-1]) == (4, 8, 512)
        assert dec[0].mlp.fc1.out_features == int(512 * hidden / d)  # V2's decoder uses the encoder's MLP ratio
    assert model.head.out_features == 2 * 14 * 14 * 3 and model.grid == (8, 16, 16)


def test_unknown_size_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="model.size=.colossal."):
        create_model("colossal")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU side of model.compile=auto")
def test_compile_auto_is_off_on_the_cpu() -> None:
    assert tiny_model(compile="auto")._compiled_call_impl is None


@pytest.mark.slow  # ~50 s on 2 cores: inductor generates and builds C++ for the forward and backward graphs
def test_compiled_and_eager_losses_agree_on_the_cpu() -> None:
    video, mask = _batch()
    dec = _targets(mask, 8)
    eager, compiled = tiny_model(), tiny_model(compile=True)
    for model in (eager, compiled):
        loss, _ = model(video, mask, dec)
        loss.backward()
        model.loss = loss.detach()
    torch.testing.assert_close(compiled.loss, eager.loss, rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_model_compile_key_compiles_in_place_keeping_state_dict_keys() -> None:
    plain, compiled = tiny_model(), tiny_model(compile=True)
    assert plain._compiled_call_impl is None and compiled._compiled_call_impl is not None  # nothing traced yet
    assert list(compiled.state_dict()) == list(plain.state_dict())  # no "_orig_mod." prefix: checkpoints load
