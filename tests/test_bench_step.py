"""profiling/bench_step.py on a toy size: its rows (HF, ours, decoder masking, checkpointing), FLOP counts that
include the CPU's attention, and the memory probe. Runs the code paths; the timings themselves are not checked."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from profiling import bench_step  # noqa: E402

TOY = ["--size", "tiny", "--frames", "4", "--input-size", "64", "--ratio", "0.75", "--rounds", "1", "--warmup", "1"]


def test_rows_for_hf_ours_decoder_masking_and_checkpointing() -> None:
    res = bench_step.main(TOY)
    rows = {r["model"]: r for r in res["rows"]}
    assert list(rows) == ["ours", "hf_transformers", "ours_dec0.5", "ours_dec0.25", "ours_ckpt"]
    assert rows["ours"]["first_loss"] == pytest.approx(rows["hf_transformers"]["first_loss"], rel=1e-4)  # same math
    assert rows["ours_ckpt"]["first_loss"] == pytest.approx(rows["ours"]["first_loss"], rel=1e-6)
    g = {name: r["gflop_per_step"] for name, r in rows.items()}
    # fewer decoder tokens, less work; checkpointing recomputes the forward
    assert g["ours_dec0.25"] < g["ours_dec0.5"] < g["ours"] < g["ours_ckpt"]
    assert rows["ours_dec0.5"]["decoder_targets"] == 0.5 and len(res["meta"]["loadavg_before"]) == 3


def test_attention_flops_are_counted_on_the_cpu() -> None:
    q = torch.randn(1, 2, 32, 8, requires_grad=True)

    def step() -> None:
        torch.nn.functional.scaled_dot_product_attention(q, q, q).sum().backward()

    # forward QK^T and AV: 2 matmuls of 2 * 2 heads * 32 * 32 * 8 FLOPs; the backward 5 (it recomputes QK^T)
    assert bench_step.step_gflops(step) * 1e9 == pytest.approx(7 * 2 * 2 * 32 * 32 * 8)


def test_memory_probe_reports_peak_and_rest() -> None:
    a = bench_step.parse_args([*TOY, "--memory-probe", "--ckpt", "--target", "0.5", "--steps", "1"])
    res = bench_step.memory_probe(a)
    assert res["peak_mb"] >= res["rest_mb"] > 0 and res["step_mb"] == pytest.approx(res["peak_mb"] - res["rest_mb"])
    assert res["measure"].startswith("peak RSS") or res["measure"].startswith("torch.cuda")
