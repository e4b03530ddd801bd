"""Multi-view evaluation: averaging per video, accuracy and CSV, unreadable videos excluded and named, determinism,
and DDP with 2 gloo ranks counting every video once when the set does not divide by the world size."""

from __future__ import annotations

import csv
import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from _ft_data import labelled_clips, tiny_config

from mgm.evaluate import ViewMeans, class_scores, evaluate_views, gather, report, view_means


def _batch(planned: list[int], loaded: list[int] | None = None, real: list[bool] | None = None) -> dict:
    """A fake evaluation batch whose 'video' (B, 1, 1, 1, 1) holds the planned sample id (the fn reads it back)."""
    n = len(planned)
    return {
        "video": torch.tensor(planned, dtype=torch.float32).view(n, 1, 1, 1, 1),
        "planned": torch.tensor(planned),
        "index": torch.tensor(loaded if loaded is not None else planned),
        "real": torch.tensor(real if real is not None else [True] * n),
    }


def _onehot(video: torch.Tensor) -> torch.Tensor:
    """Per view: one-hot of (sample id % 3) over 3 classes, so a video's mean says which views were counted."""
    return torch.nn.functional.one_hot(video.view(-1).long() % 3, 3).float()


def test_view_means_counts_real_planned_views_once() -> None:
    # 3 videos x 2 views; video 1's second view was replaced (index 9 loaded for planned 3); two padding rows.
    batches = [_batch([0, 1, 2, 3], loaded=[0, 1, 2, 9]), _batch([4, 5, 5, 5], real=[True, True, False, False])]
    out = view_means(_onehot, batches, views=2, expected=[0, 1, 2], device=torch.device("cpu"))
    assert out.excluded == {1}
    assert sorted(out.means) == [0, 2]
    np.testing.assert_allclose(out.means[0], [0.5, 0.5, 0.0])  # samples 0 and 1
    np.testing.assert_allclose(out.means[2], [0.0, 0.5, 0.5])  # samples 4 and 5, padding ignored
    lost = view_means(_onehot, batches[:1], views=2, expected=[0, 1, 2], device=torch.device("cpu"))
    assert lost.excluded == {1, 2}  # video 2's batch never arrived (DALI lost it): excluded, not half-counted
    with pytest.raises(RuntimeError, match="more than once"):
        view_means(_onehot, [_batch([0, 1, 1])], views=2, expected=[0], device=torch.device("cpu"))


def test_report_accuracy_per_class_and_csv(tmp_path: Path) -> None:
    probs = ViewMeans({0: np.array([0.7, 0.2, 0.1]), 1: np.array([0.2, 0.3, 0.5]), 2: np.array([0.1, 0.6, 0.3])}, {3})
    paths, labels = ["a.mp4", "b.mp4", "c.mp4", "d.mp4"], [0, 1, 1, 2]
    out = report(probs, paths=paths, labels=labels, num_classes=3, missing=["gone.mp4"], csv_path=tmp_path / "p.csv")
    assert out["videos"] == 3 and out["top1"] == pytest.approx(2 / 3) and out["top3"] == 1.0
    assert out["per_class"] == {0: 1.0, 1: 0.5} and out["mean_class_accuracy"] == pytest.approx(0.75)
    assert out["excluded"] == 2 and out["excluded_videos"] == ["d.mp4", "gone.mp4"]
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert [(r["path"], r["pred"], r["correct"], r["status"]) for r in rows] == [
        ("a.mp4", "0", "1", "ok"), ("b.mp4", "2", "0", "ok"), ("c.mp4", "1", "1", "ok"),
        ("d.mp4", "", "", "unreadable"), ("gone.mp4", "", "", "missing"),
    ]  # fmt: skip
    assert rows[1]["top5"] == "2 1 0" and float(rows[0]["prob"]) == pytest.approx(0.7)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return labelled_clips(tmp_path_factory.mktemp("evalclips"), num=5, seed=3)


def _model(cfg: Any) -> torch.nn.Module:
    from mgm.classifier import VideoMAEClassifier

    torch.manual_seed(0)
    model = VideoMAEClassifier(cfg.model, cfg.data)
    with torch.no_grad():
        model.head.weight.normal_(0, 1.0)  # spread the logits: predictions then depend on every view
    return model.eval()


def test_unreadable_and_missing_videos_are_excluded_and_named(clips: Path, tmp_path: Path) -> None:
    from dali_pipes import build_loader

    rows = clips.read_text().splitlines()
    (clips.parent / "videos" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    (clips.parent / "bad.csv").write_text("\n".join([*rows, "videos/broken.mp4,1,16", "videos/nowhere.mp4,2,16", ""]))
    cfg = tiny_config(clips, clips.parent / "bad.csv", tmp_path)
    with pytest.warns(UserWarning):  # the loader warns about each; the evaluation counts and names them
        loader = build_loader(cfg, task="eval")
        out = evaluate_views(_model(cfg), loader, num_classes=4, device=torch.device("cpu"),
                             csv_path=tmp_path / "pred.csv")  # fmt: skip
    assert out["videos"] == 5 and out["excluded"] == 2
    assert [Path(p).name for p in out["excluded_videos"]] == ["broken.mp4", "nowhere.mp4"]
    statuses = [r["status"] for r in csv.DictReader((tmp_path / "pred.csv").open())]
    assert statuses == ["ok"] * 5 + ["unreadable", "missing"]


def _means(cfg: Any, rank: int = 0, world: int = 1) -> ViewMeans:
    from dali_pipes import build_loader

    loader = build_loader(cfg, task="eval", rank=rank, world_size=world)
    local = view_means(class_scores(_model(cfg)), loader, views=loader.views, expected=loader.expected,
                       device=torch.device("cpu"))  # fmt: skip
    return gather(local, world)


def test_evaluation_is_deterministic(clips: Path, tmp_path: Path) -> None:
    cfg = tiny_config(clips, clips, tmp_path)
    a, b = _means(cfg), _means(cfg)
    assert sorted(a.means) == list(range(5)) and not a.excluded
    for v in a.means:
        assert np.array_equal(a.means[v], b.means[v])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, clips: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    import torch.distributed as tdist

    from mgm.engine import setup_distributed

    dist = setup_distributed("gloo")
    cfg = tiny_config(Path(clips), Path(clips), Path(out), "data.batch_size=3")
    joined = _means(cfg, dist.rank, dist.world_size)
    torch.save({"means": {k: torch.from_numpy(v) for k, v in joined.means.items()}}, Path(out) / f"rank{rank}.pt")
    tdist.destroy_process_group()


def test_two_gloo_ranks_count_every_video_once(clips: Path, tmp_path: Path) -> None:
    # 5 videos x 2 views over 2 ranks in batches of 3: rank 0 has 6 samples, rank 1 has 4 (+2 padding).
    single = _means(tiny_config(clips, clips, tmp_path, "data.batch_size=3"))
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(clips), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")["means"]
        assert sorted(got) == sorted(single.means) == list(range(5))  # every video, once, on every rank
        for v, m in got.items():
            np.testing.assert_allclose(m.numpy(), single.means[v], rtol=1e-5, atol=1e-6)
