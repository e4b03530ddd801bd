r"""GPU validation (issue 9): NVDEC decode correctness, loader clips/s, training-step clips/s, data wait, one run.

    python3 profiling/gpu_check.py --out DIR [--only 1,3] [--clips N --batch B --steps S --workers W]
    python3 profiling/gpu_check.py --cpu-smoke --out DIR      # same code paths on the CPU, tiny sizes (< 1 min)

Steps (each in its own process, with a time limit, so a crash or hang in one is recorded and the rest run):
  0 env     versions, CUDA, DALI import, libnvcuvid, NVML decoder counter; synthetic H.264 clips + motion cache
  1 decode  DALI mixed (NVDEC) vs PyAV on the same frame indices after the same crop/resize/flip (PSNR), plus
            the mask alignment checks of tests/test_alignment.py (same plan, same masks, MGM covers the object)
  2 loader  clips/s, 16x224x224 from 320x240 H.264 GOP 16: DALI GPU vs CPU fallback vs VideoMAE-style baseline
            (vs torchcodec when importable), same worker count; NVDEC utilization from NVML
  3 step    training-step clips/s, ViT-B, bf16, batch 32, mask ratio 0.9: ours vs HF VideoMAEForPreTraining
  4 train   50+ steps of ViT-B fed by the DALI loader through mgm.engine.fit + ProfileHook: data-wait share
Every result is a row of DIR/gpu_check.json (written after each step); the results table and the goals table
(loader >= 3x baseline, data wait < 5%, our step >= 1.3x HF) are printed last. Exit code 1 when a step failed
or a correctness check failed; a missed performance goal is reported, and fails the run only with --strict-goals.
--cpu-smoke swaps the mixed decoder for DALI's CPU decoder on VP9 twins and uses a tiny model; goals are n/a.

Device commands (H100 machine: Python 3.12 as python3, torch 2.11+cu130, transformers, timm, tqdm, tensorboard,
pytest; no DALI, no PyAV, no internet). Here, once, from the repo root (checked: the bundle installs and DALI
imports on Python 3.12 with these five wheels; without the last three `import nvidia.dali` fails):
    bash ../shared/hooks/stage_wheels.sh       # .devwheels/p1..p5: DALI 2.4.0 cu130 + av 19.0.2, 50 MB parts
    grep -qx /.whl/ .git/info/exclude || echo /.whl/ >> .git/info/exclude
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
      astunparse==1.6.3 gast==0.7.0 optree==0.20.0
Then these device calls back to back (the machine goes back after ~30 s idle, /tmp with it: after a fresh
start, begin again at p1). Calls 1-4, for k = 1, 2, 3, 4:
    run carry=[".devwheels/pk"] command: mkdir -p /tmp/w && cp .devwheels/pk/* /tmp/w/ && ls /tmp/w
Call 5, carry=[".devwheels/p5", ".whl"], timeout_s=600, command (one line as far as bash is concerned):
    mkdir -p /tmp/w && cp .devwheels/p5/* .whl/*.whl /tmp/w/ && cd /tmp/w && cat part.* > b.tar \
    && echo "$(cat bundle.sha256)  b.tar" | sha256sum -c - && tar xf b.tar \
    && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site ./*.whl && cd - \
    && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 \
    && { timeout 170 python3 -m pytest -m gpu -q -rs -p no:cacheprovider 2>&1 | tee $OUT/pytest_gpu.log; \
    python3 profiling/gpu_check.py --out $OUT --budget 330 2>&1 | tee $OUT/gpu_check.log; }
It returns pytest_gpu.log, gpu_check.log and gpu_check.json. pytest must show the 5 GPU tests passed, not
skipped (-rs prints why one was skipped, e.g. DALI not importable); the last lines of gpu_check.log are the
tables for the closing note and the README (name the card: the env rows give it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from the repo root, no install needed

from profiling.gpu_check_steps import STEPS, Row, env_rows, prepare_data, row  # noqa: E402
from profiling.report_format import format_table, write_json  # noqa: E402

# goal name -> (metric key in the rows, target, "min" = at least the target / "max" = below the target)
GOALS: dict[str, tuple[str, float, str]] = {
    "loader >= 3x VideoMAE-style baseline": ("loader_x_baseline", 3.0, "min"),
    "data wait < 5% of wall time": ("data_wait_share", 0.05, "max"),
    "our step >= 1.3x HF VideoMAEForPreTraining": ("step_x_hf", 1.3, "min"),
}
BAD = ("FAIL", "ERROR")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for gpu_check.json")
    ap.add_argument("--only", default="1,2,3,4", help="steps to run, e.g. 1,3 (step 0, the set-up, always runs)")
    ap.add_argument("--cpu-smoke", action="store_true", help="the same code paths on the CPU with tiny sizes")
    ap.add_argument("--clips", type=int, default=None, help="synthetic clips (GPU 128, smoke 4)")
    ap.add_argument("--batch", type=int, default=None, help="clips per batch in steps 2-4 (GPU 32, smoke 2)")
    ap.add_argument("--steps", type=int, default=None, help="training steps in step 4 (GPU 60, smoke 3)")
    ap.add_argument("--workers", type=int, default=None, help="CPU loader workers, every loader (GPU 8, smoke 2)")
    ap.add_argument("--batches", type=int, default=None, help="timed batches per loader in step 2 (GPU 8, smoke 2)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds of step 3 (GPU 6, smoke 1)")
    ap.add_argument("--model", default=None, help="model size for steps 3-4 (GPU base, smoke tiny)")
    ap.add_argument("--motion", default="cache", choices=["cache", "online"], help="MGM motion source, steps 2+4")
    ap.add_argument("--work", default="/tmp/mgm_gpu_check", help="scratch folder (clips, motion cache, run dirs)")
    ap.add_argument("--step-timeout", type=float, default=240.0, help="seconds one step may run")
    ap.add_argument("--budget", type=float, default=345.0, help="seconds for the whole script; later steps skip")
    ap.add_argument("--strict-goals", action="store_true", help="a missed goal also makes the exit code 1")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)  # internal: run one step here
    a = ap.parse_args(argv)
    smoke = a.cpu_smoke
    defaults = {"clips": (128, 4), "batch": (32, 2), "steps": (60, 3), "workers": (8, 2), "batches": (8, 2),
                "rounds": (6, 1), "model": ("base", "tiny")}  # fmt: skip
    for k, (gpu, cpu) in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, cpu if smoke else gpu)
    a.only = sorted({int(s) for s in a.only.split(",") if s.strip()})
    if unknown := [s for s in a.only if s not in STEPS]:
        ap.error(f"--only: no step {unknown}; steps are {sorted(STEPS)}")
    return a


def run_child(n: int, argv: list[str], work: Path, timeout: float) -> list[Row]:
    """Run step `n` in a fresh process (its own process group, so DALI/DataLoader workers die with it)."""
    out = work / f"step{n}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-u", str(Path(__file__).resolve()), *argv, "--child", str(n)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
    why = ""
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        rc = proc.wait()
        why = f"timed out after {timeout:.0f} s (killed)"
    rows = json.loads(out.read_text()) if out.is_file() else []
    if rc != 0 and not any(r["status"] == "ERROR" for r in rows):
        why = why or f"step process exited with code {rc} (crash? see its output above)"
        rows.append(row(n, "(step)", None, "", "ERROR", error=why))
    return rows


def child_main(a: argparse.Namespace) -> int:
    """Run one step in this process and leave its rows in <work>/step<n>.json; exit 1 when it raised."""
    n, work = a.child, Path(a.work)
    name, fn = STEPS[n]
    rows: list[Row] = []
    rc = 0
    try:
        rows = fn(a, work)
    except BaseException as e:  # noqa: BLE001 - any failure becomes a row; the parent goes on with the next step
        traceback.print_exc()
        rows.append(row(n, "(step)", None, "", "ERROR", error=f"{type(e).__name__}: {e}"[:500]))
        rc = 1
    (work / f"step{n}.json").write_text(json.dumps(rows, default=str))
    return rc


def goal_rows(rows: list[Row], smoke: bool) -> list[Row]:
    """One row per goal: the measured value, its ratio to the target and PASS / MISS (n/a when unmeasured)."""
    out = []
    for goal, (metric, target, kind) in GOALS.items():
        found = [r for r in rows if r.get("metric") == metric and isinstance(r.get("value"), (int, float))]
        value = float(found[-1]["value"]) if found else float("nan")
        if not math.isfinite(value):
            status, of_target = "n/a", float("nan")
        else:
            ok = value >= target if kind == "min" else value < target
            status = "PASS" if ok else "MISS"
            of_target = value / target if kind == "min" else target / max(value, 1e-12)
        if smoke and status != "n/a":
            status = f"({status}, smoke)"  # tiny CPU sizes: the number is not the goal's
        out.append({"step": "goal", "name": goal, "item": metric, "value": value, "unit": "", "status": status,
                    "target": target, "of_target": of_target})  # fmt: skip
    return out


def summary_table(rows: list[Row]) -> str:
    cols = ("step", "name", "item", "value", "unit", "status", "error")
    short = [{c: str(r[c])[:70] if c == "error" else r[c] for c in cols if c in r} for r in rows]  # JSON: in full
    return format_table(short, title="== gpu_check results")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    if a.child is not None:
        return child_main(a)

    t_start = time.perf_counter()
    deadline = t_start + a.budget
    out = Path(a.out)
    meta = {"argv": argv, "cpu_smoke": a.cpu_smoke, "only": a.only, "clips": a.clips, "batch": a.batch,
            "steps": a.steps, "workers": a.workers, "model": a.model, "motion": a.motion}  # fmt: skip
    rows: list[Row] = []

    def save() -> None:
        write_json("gpu_check", rows, out / "gpu_check.json", meta)

    def timed(n: int, fn: Callable[[], list[Row]]) -> None:
        t0 = time.perf_counter()
        try:
            got = fn()
        except Exception as e:  # the set-up step runs here, in the parent: record and go on
            traceback.print_exc()
            got = [row(n, "(step)", None, "", "ERROR", error=f"{type(e).__name__}: {e}"[:500])]
        rows.extend(got)
        status = "ERROR" if any(r["status"] == "ERROR" for r in got) else "ok"
        rows.append(row(n, "(step wall time)", time.perf_counter() - t0, "s", status))
        save()

    print(f"[gpu_check] steps {a.only}, {'CPU smoke' if a.cpu_smoke else 'GPU'}, work {work}", flush=True)
    timed(0, lambda: env_rows(a) + prepare_data(a, work))
    for n in a.only:
        left = deadline - time.perf_counter()
        if left < 15:
            rows.append(row(n, "(step)", None, "", "SKIP", error=f"--budget {a.budget:.0f} s spent"))
            save()
            continue
        print(f"\n[gpu_check] step {n} ({STEPS[n][0]}), limit {min(a.step_timeout, left):.0f} s", flush=True)
        timed(n, lambda n=n, left=left: run_child(n, argv, work, min(a.step_timeout, left)))

    goals = goal_rows(rows, a.cpu_smoke)
    rows.extend(goals)
    meta["wall_s"] = time.perf_counter() - t_start
    save()
    failed = [r for r in rows if r["status"] in BAD and r["item"] != "(step wall time)"]  # that one repeats
    missed = [g for g in goals if g["status"] == "MISS"]
    print("\n" + summary_table([r for r in rows if r["step"] != "goal"]))
    print(format_table(goals, title="== goals (of_target > 1 = goal met with room)"))
    rc = 1 if failed or (a.strict_goals and missed) else 0
    print(f"gpu_check: {len(failed)} failed check(s), {len(missed)} missed goal(s), {meta['wall_s']:.0f} s; "
          f"wrote {out / 'gpu_check.json'}; exit {rc}", flush=True)  # fmt: skip
    return rc


if __name__ == "__main__":
    sys.exit(main())
