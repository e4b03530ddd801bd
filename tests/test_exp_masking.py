"""The masking experiment's script end to end, as a smoke run (--quick: 1 seed, 1 epoch each, 32 + 16 clips): every
row of the table is filled, every accuracy is a fraction of the held-out clips, and the note says what ran."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from profiling import exp_masking


@pytest.mark.slow  # ~15 s alone on 2 cores
def test_quick_run_writes_the_table_and_every_number(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    try:
        assert exp_masking.main(["--out", str(tmp_path), "--quick"]) == 0
    finally:
        torch.set_num_threads(threads)  # the script pins one thread; leave the other tests as they were
    result = json.loads((tmp_path / "results.json").read_text())
    rows = result["rows"]
    assert list(rows) == ["none (random encoder)", "mgm masking", "tube masking", "random masking",
                          "one frame (control, no pretraining)"]  # fmt: skip
    for name, row in rows.items():
        assert len(row["finetune"]) == 1
        assert len(row["probe"]) == (0 if name.startswith("one frame") else 1)
        for x in row["finetune"] + row["probe"]:
            assert 0.0 <= x <= 1.0 and (16 * x) == round(16 * x)  # a share of the 16 held-out clips
    table = (tmp_path / "table.md").read_text()
    assert table.count("\n| ") == 6 and "mgm masking" in table  # header rule and five rows after the header
    assert "32 training / 16 held-out clips" in table and "load average" in table
    for mask in exp_masking.MASKS:
        assert list((tmp_path / f"pre_{mask}_0" / "checkpoints").glob("step_*.pt"))  # each pretraining ran
