"""Labelled file lists for fine-tuning and evaluation: every row's label must be a class of the head.

Kept free of torch so finetune.py checks its lists before the heavy imports.
"""

from __future__ import annotations

import csv
from pathlib import Path

from mgm.prep.filelist import FileListError, VideoEntry, read_list

SHOWN = 5  # bad rows named in the message (all are counted)


def read_labelled_list(csv_path: str | Path, num_classes: int, key: str = "model.num_classes") -> list[VideoEntry]:
    """The entries of a file list whose every label is an integer in [0, num_classes).

    Raises FileListError naming the file, the line of each bad row (the first few) and its value, with the count,
    when a label is missing, not an integer or out of range; `key` names the setting that gave num_classes.
    """
    csv_path = Path(csv_path)
    if num_classes < 1:
        raise FileListError(f"{key}={num_classes}: set the number of classes of {csv_path} (e.g. {key}=174)")
    if not csv_path.is_file():
        return read_list(csv_path)  # its message: the list does not exist, and how to make one
    bad: list[str] = []
    with csv_path.open(newline="") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            if lineno == 1 or len(row) != 3:  # the header, blank and malformed rows: read_list names those
                continue
            text = row[1].strip()
            if not text:
                bad.append(f"line {lineno}: label missing ({','.join(row)})")
            elif not text.lstrip("-").isdigit():
                bad.append(f"line {lineno}: label {text!r} is not a class number ({row[0]})")
            elif not 0 <= int(text) < num_classes:
                bad.append(f"line {lineno}: label {text} not in 0..{num_classes - 1} ({row[0]})")
    if bad:
        more = f"; and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
        raise FileListError(f"{csv_path}: {len(bad)} row(s) without a valid label for {key}={num_classes}: "
                            + "; ".join(bad[:SHOWN]) + more)  # fmt: skip
    return read_list(csv_path)
