"""Run every benchmark, one process at a time, with a progress bar over the scripts.

    python benchmarks/run_all.py                 # the full run (about 85 minutes on a 2-core CPU)
    python benchmarks/run_all.py --quick         # the quick run (a few minutes): --limit 5
    python benchmarks/run_all.py --limit 10      # item counts capped at 10, quick speed settings
    make bench [LIMIT=5]                         # the same through make (installs the bench extra)

Each script's markdown table goes to ``OUT/<name>.md``, its log to ``OUT/logs/<name>.log`` and its
JSON (and PNG) to ``OUT/<name>.json``; ``OUT/run_all.json`` records the commands, exit codes and
wall times, which ``benchmarks/make_readme_results.py`` turns into the README's Results section.
Every child runs with ``OMP_NUM_THREADS=1`` (unless set) and torch threads 1: on this shared
2-core machine multi-threaded runs were slower, and one thread makes the runs comparable.

``--limit N`` caps the item counts of quality.py and localization.py at N and switches the speed
and probe benchmarks to their small settings; a failing script is reported and the others still
run (the exit status is then 1). A script whose environment is missing (easyedit_dinm without
``.venv-hosts``) is skipped with the reason and the command that creates it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from registry.writer import write_file

ROOT = Path(__file__).resolve().parents[1]
QUICK_LIMIT = 5


def plan(out: Path, work: Path, limit: int | None, threads: int = 1) -> dict[str, list[str]]:
    """Script name -> arguments (after ``python benchmarks/<name>.py``)."""
    quick = limit is not None
    t = str(threads)
    scripts: dict[str, list[str]] = {
        "quality": ["--make-default-edits", str(work), "--json", str(out / "quality.json"), "--threads", t],
        "localization": ["--cases", "18", "--json", str(out / "localization.json"), "--threads", t],
        "localization_outcome": ["--cases", "18", "--json", str(out / "localization_outcome.json"), "--threads", t],
        "destein_probes": ["--json", str(out / "destein_probes.json"), "--threads", t],
        "dinm_speed": ["--limit", "3", "--threads", t, "--json", str(out / "dinm_speed.json")],
        "destein_speed": ["--limit", "8", "--max-new-tokens", "32", "--repeats", "8", "--threads", t,
                          "--json", str(out / "destein_speed.json")],
        "sv_speed": ["--steps", "4", "--rounds", "3", "--threads", t, "--json", str(out / "sv_speed.json")],
        "robustness": ["--edits", str(work), "--work", str(work / "robustness"), "--threads", t,
                       "--json", str(out / "robustness.json")],
        # EasyEdit's own DINM beside ours; it reruns itself in .venv-hosts (its stdout is the table).
        "easyedit_dinm": ["--cases", "6", "--threads", t, "--json", str(out / "easyedit_dinm.json"), "--md", "-"],
    }
    if quick:
        scripts["quality"] += ["--limit", str(limit), "--rtp-samples", "5"]
        scripts["localization"] += ["--limit", str(min(limit, 18))]
        scripts["localization_outcome"] += ["--limit", str(min(limit, 2)), "--harmbench", "5", "--benign-stride", "15"]
        scripts["destein_probes"] += ["--limit", "1"]
        scripts["dinm_speed"] = ["--limit", "1", "--configs", "improved", "compat", "--threads", t,
                                 "--json", str(out / "dinm_speed.json")]
        scripts["destein_speed"] = ["--limit", "4", "--max-new-tokens", "8", "--repeats", "2", "--step-blocks", "4",
                                    "--step-reps", "5", "--threads", t, "--json", str(out / "destein_speed.json")]
        scripts["sv_speed"] = ["--steps", "2", "--rounds", "1", "--threads", t, "--json", str(out / "sv_speed.json")]
        scripts["robustness"] += ["--quick", "--limit", str(limit)]
        scripts["easyedit_dinm"][1] = str(min(limit, 2))
    return scripts


def missing_requirement(name: str) -> str | None:
    """Why script ``name`` cannot run on this machine (it is then skipped, not failed), or None."""
    if name == "easyedit_dinm":
        venv = Path(os.environ.get("VENV_HOSTS") or ".venv-hosts")
        python = (venv if venv.is_absolute() else ROOT / venv) / "bin" / "python"
        if not python.is_file():
            return (f"needs EasyEdit's environment {_short(python.parent.parent)} (transformers 5.5.4); "
                    f"create it with `bash scripts/setup_hosts.sh` (make setup-hosts)")
    return None


def _short(path: Path) -> Path:
    """``path`` relative to the repository (the scripts run there) when it is inside, for readable commands."""
    try:
        return path.relative_to(ROOT)
    except ValueError:
        return path


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _run_script(command: list[str], env: dict[str, str], table: Path, log: Path) -> tuple[int, float]:
    """Run one benchmark (stdout to its markdown file, stderr to its log): (exit status, seconds)."""
    start = time.perf_counter()
    with table.open("w", encoding="utf-8") as stdout, log.open("w", encoding="utf-8") as stderr:
        rc = subprocess.run(command, cwd=ROOT, env=env, stdout=stdout, stderr=stderr).returncode
    return rc, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"the quick run: --limit {QUICK_LIMIT}")
    parser.add_argument("--limit", type=int, help="cap item counts at N and use the small speed settings")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="results folder")
    parser.add_argument("--work", help="where the default edits are saved (default OUT/edits, not committed)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per script (default 1; 2 only on an otherwise idle 2-core machine)")
    parser.add_argument("--only", nargs="+", help="run only these scripts")
    parser.add_argument("--skip", nargs="+", default=[], help="leave these scripts out")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be >= 1, got {args.limit}")
    limit = args.limit if args.limit is not None else (QUICK_LIMIT if args.quick else None)

    from tqdm.auto import tqdm

    out = _short(Path(args.out).resolve())
    work = _short(Path(args.work).resolve()) if args.work else out / "edits"
    (ROOT / out / "logs").mkdir(parents=True, exist_ok=True)
    scripts = plan(out, work, limit, args.threads)
    unknown = sorted((set(args.only or []) | set(args.skip)) - set(scripts))
    if unknown:
        parser.error(f"unknown script(s) {', '.join(unknown)}; the scripts are {', '.join(scripts)}")
    names = [n for n in scripts if (not args.only or n in args.only) and n not in args.skip]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(args.threads)),
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": os.pathsep.join(
               [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
    record: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if limit is not None else "full", "limit": limit, "commit": _git_commit(),
        "command": " ".join(["python", "benchmarks/run_all.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "OMP_NUM_THREADS": env["OMP_NUM_THREADS"]},
        "scripts": [],
    }
    start = time.perf_counter()
    failed: list[str] = []
    skipped: list[str] = []
    bar = tqdm(names, desc="benchmarks", unit="script", file=sys.stderr)
    for name in bar:
        bar.set_postfix_str(name)
        command = [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *scripts[name]]
        shown = " ".join(["python", f"benchmarks/{name}.py",
                          *[a.replace(str(ROOT) + os.sep, "") for a in scripts[name]]])
        log = ROOT / out / "logs" / f"{name}.log"
        reason = missing_requirement(name)
        if reason:
            skipped.append(name)
            record["scripts"].append({"name": name, "command": shown, "rc": None, "seconds": 0.0, "skipped": reason})
            tqdm.write(f"{name} skipped: {reason}", file=sys.stderr)
        else:
            rc, seconds = _run_script(command, env, ROOT / out / f"{name}.md", log)
            record["scripts"].append({"name": name, "command": shown, "rc": rc, "seconds": round(seconds, 1)})
            if rc:
                failed.append(name)
                tqdm.write(f"{name} failed (exit {rc}) after {seconds:.0f} s; last lines of {log}:\n{_tail(log)}",
                           file=sys.stderr)
            else:
                tqdm.write(f"{name}: {seconds:.0f} s", file=sys.stderr)
        record["total_s"] = round(time.perf_counter() - start, 1)
        write_file(ROOT / out / "run_all.json", json.dumps(record, indent=2) + "\n", overwrite=True)
    bar.close()
    total = time.perf_counter() - start
    print(f"\n{record['mode']} benchmark run{' (limit ' + str(limit) + ')' if limit else ''}: "
          f"{len(names) - len(failed) - len(skipped)}/{len(names)} scripts ok"
          f"{f', {len(skipped)} skipped' if skipped else ''} in {total / 60:.1f} min; results in {out}\n")
    print("| script | exit | seconds |\n|---|---|---|")
    for entry in record["scripts"]:
        status = "skipped: " + entry["skipped"] if entry.get("skipped") else entry["rc"]
        print(f"| {entry['name']} | {status} | {entry['seconds']:.0f} |")
    print("\nNext: python benchmarks/make_readme_results.py   # the README's Results section from these files")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
