"""DINM beside EasyEdit's own DINM: the real EasyEdit code (the snapshot in ../shared/hosts/EasyEdit-14cea82,
or ``$EASYEDIT_PATH``) next to our compat mode (hparams DINM/smollm2-135m-compat) and our improved mode
(DINM/smollm2-135m), on the same shipped SafeEdit cases and the same model weights, in one process.

    python benchmarks/easyedit_dinm.py --cases 6 --threads 1

Per case: the layer each one edits, whether compat's ΔW equals EasyEdit's (max absolute difference,
bit-equal or not) and the edit time of each. The configurations alternate case by case (the order
rotates, so none always runs first); medians and the ratios compat / EasyEdit and improved / EasyEdit
are printed as a markdown table and written to ``--json`` and ``--md``.

EasyEdit's side is its own code, called the way its ``SafetyEditor.edit`` runs DINM: the request without
the suffix goes to ``SafetyEditor._locate_toxic_layer`` (which writes ``hparams.layers``), the request
with the suffix (``prompt + " " + suffix_system_prompt``, for the edit and the knowledge constraint, as
EasyEdit's SafeEdit example builds it) to its ``ALG_DICT["DINM"]`` (``apply_dinm_to_model``, checked to be
EasyEdit's own), then the original weights are copied back from ``weights_copy``. Its edit time is that
span, the one ``SafetyEditor`` logs as "editing took"; its answer generation is never run. EasyEdit's
hparams are its ``DINMHyperParams.from_hparams`` of the compat file's EasyEdit fields. ``SafetyEditor``
keeps the first located layer for later cases; here every case starts from ``layers: []`` (a fresh
editor per case on both sides). EasyEdit prints progress; it goes to stderr.

ΔW is ``W_after - W0`` of every edited tensor, computed the same way for both. When compat and
EasyEdit locate different layers, compat is run again (untimed) at EasyEdit's layer, to tell the
localization from the update apart.

Environment: EasyEdit pins transformers 5.5.4, so this runs in ``.venv-hosts`` (``bash scripts/setup_hosts.sh``).
Started from another environment (the main ``.venv``), the script resolves the model folder there
(the embedded model converted by that environment's transformers: 5.5.4 converts the embedded GGUF's
tokenizer without its byte-level decoder) and runs itself again with ``--hosts-python``. Both sides get
the same preloaded (model, tokenizer) pair, so EasyEdit never picks a tokenizer class by a substring of
the model path. In ``.venv-hosts`` ``--model FOLDER`` is required.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import importlib.util
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger("easyedit_dinm")

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = ROOT.parent / "shared" / "hosts" / "EasyEdit-14cea82"
COMPAT_HPARAMS = "DINM/smollm2-135m-compat"
IMPROVED_HPARAMS = "DINM/smollm2-135m"
CONFIGS = ("easyedit", "compat", "improved")
#: The one transformers release EasyEdit (the snapshot) imports under.
HOST_TRANSFORMERS = "5.5.4"
ROUNDTRIP_TEXT = "Sure, here is how: I can't help with that."


# ---------------------------------------------------------------------- comparison (pure, tested)
@dataclasses.dataclass
class DeltaComparison:
    """Two edits' ΔW side by side: the same tensors, how far apart, bit for bit equal."""

    same_tensors: bool
    max_abs_difference: Optional[float]  # None when the tensors differ
    bit_equal: bool

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def compare_deltas(ours: dict[str, "torch.Tensor"], theirs: dict[str, "torch.Tensor"]) -> DeltaComparison:
    """Compare two ``{tensor name: ΔW}`` maps: the same names and shapes, then the largest absolute
    difference over all of them and whether every tensor is bit-identical (NaN never equals)."""
    import torch

    if set(ours) != set(theirs) or not ours or any(ours[n].shape != theirs[n].shape for n in ours):
        return DeltaComparison(False, None, False)
    largest = 0.0
    equal = True
    for name in sorted(ours):
        a, b = ours[name].detach().float(), theirs[name].detach().float()
        largest = max(largest, float((a - b).abs().max()) if a.numel() else 0.0)
        equal = equal and torch.equal(ours[name], theirs[name])
    return DeltaComparison(True, largest, equal)


def case_orders(configs: Sequence[str], cases: int) -> list[list[str]]:
    """The configurations' order for each case: rotated by one every case, so each runs first, second
    and third equally often and load from other processes falls on all of them alike."""
    return [list(configs[i % len(configs):]) + list(configs[:i % len(configs)]) for i in range(cases)]


def summarize(rows: Sequence[dict[str, Any]], configs: Sequence[str] = CONFIGS) -> dict[str, Any]:
    """Medians of each configuration's edit seconds, their ratios to EasyEdit's, and the agreement counts."""
    medians = {name: statistics.median(r["seconds"][name] for r in rows) for name in configs}
    ratios = {f"{name} / easyedit": medians[name] / medians["easyedit"] for name in configs if name != "easyedit"}
    per_case = {f"{name} / easyedit": statistics.median(r["seconds"][name] / r["seconds"]["easyedit"] for r in rows)
                for name in configs if name != "easyedit"}
    return {
        "cases": len(rows),
        "median_seconds": medians,
        "ratios_of_medians": ratios,
        "median_per_case_ratios": per_case,
        "compat_layer_agrees": sum(r["layers"]["compat"] == r["layers"]["easyedit"] for r in rows),
        "compat_delta_bit_equal": sum(bool(r["compat_vs_easyedit"]["bit_equal"]) for r in rows),
        "improved_layer_agrees": sum(r["layers"]["improved"] == r["layers"]["easyedit"] for r in rows),
    }


def _difference(comparison: dict[str, Any]) -> str:
    if not comparison["same_tensors"]:
        return "other tensor"
    return "0" if comparison["max_abs_difference"] == 0 else f"{comparison['max_abs_difference']:.3g}"


def markdown(result: dict[str, Any]) -> str:
    """The per-case table, the medians and the ratios."""
    rows, summary = result["rows"], result["summary"]
    n = summary["cases"]
    lines = [
        f"DINM beside EasyEdit's own DINM ({result['easyedit']}): {n} shipped SafeEdit case(s), round-robin over "
        f"categories; {result['model_name']}; transformers {result['transformers']}, torch {result['torch']}, "
        f"{result['torch_threads']} torch thread(s); configurations alternate case by case.",
        "",
        "| case | category | layer EasyEdit | layer compat | layer improved | compat ΔW = EasyEdit | max abs ΔW diff "
        "| EasyEdit s | compat s | improved s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        comparison = r["compat_vs_easyedit"]
        lines.append(
            f"| {r['case_id']} | {r['category']} | {r['layers']['easyedit']} | {r['layers']['compat']} | "
            f"{r['layers']['improved']} | {'yes' if comparison['bit_equal'] else 'no'} | {_difference(comparison)} | "
            f"{r['seconds']['easyedit']:.2f} | {r['seconds']['compat']:.2f} | {r['seconds']['improved']:.2f} |")
    medians = summary["median_seconds"]
    lines += [
        f"| median | | | | | {summary['compat_delta_bit_equal']}/{n} | | {medians['easyedit']:.2f} | "
        f"{medians['compat']:.2f} | {medians['improved']:.2f} |",
        "",
        f"- compat locates EasyEdit's layer on {summary['compat_layer_agrees']}/{n} cases; its ΔW is bit-equal "
        f"to EasyEdit's on {summary['compat_delta_bit_equal']}/{n}.",
        f"- improved edits EasyEdit's layer on {summary['improved_layer_agrees']}/{n} cases (its own localization).",
    ]
    for label, value in summary["ratios_of_medians"].items():
        lines.append(f"- edit time {label} (medians): {value:.2f}× (median of per-case ratios "
                     f"{summary['median_per_case_ratios'][label]:.2f}×)")
    differing = [r for r in rows if "compat_at_easyedit_layer" in r]
    for r in differing:
        c = r["compat_at_easyedit_layer"]
        lines.append(f"- case {r['case_id']}: compat forced to EasyEdit's layer {r['layers']['easyedit']}: ΔW "
                     f"{'bit-equal' if c['bit_equal'] else 'max abs diff ' + _difference(c)}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- environment
def _in_hosts() -> bool:
    return importlib.util.find_spec("easyedit_host") is not None


def _default_hosts_python() -> Path:
    venv = os.environ.get("VENV_HOSTS") or ".venv-hosts"
    folder = Path(venv) if Path(venv).is_absolute() else ROOT / venv
    return folder / "bin" / "python"


def hosts_problem(python: Path) -> Optional[str]:
    """Why the EasyEdit side cannot run with ``python`` (None when it can)."""
    if not python.is_file():
        return (f"{python} does not exist: EasyEdit pins transformers=={HOST_TRANSFORMERS}, so this benchmark runs in "
                f".venv-hosts; create it with `bash scripts/setup_hosts.sh` (make setup-hosts) or pass --hosts-python")
    return None


def relaunch_in_hosts(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """From the main environment: resolve the model folder here, then run this script in .venv-hosts."""
    python = Path(args.hosts_python)
    problem = hosts_problem(python)
    if problem:
        logger.error("%s", problem)
        return 2
    if args.model:
        folder = Path(args.model).expanduser().resolve()
    else:
        from registry.models import embedded_model_dir

        folder = embedded_model_dir()  # converted by this environment's transformers, if not already
    env = {**os.environ, "EASYEDIT_PATH": os.environ.get("EASYEDIT_PATH", str(SNAPSHOT)),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(args.threads)),
           "TOKENIZERS_PARALLELISM": "false"}
    command = [str(python), str(Path(__file__).resolve()), *without_model(argv), "--model", str(folder)]
    logger.info("running the benchmark in %s with the model folder %s", python, folder)
    return subprocess.run(command, env=env).returncode


def without_model(argv: Sequence[str]) -> list[str]:
    """``argv`` without its ``--model FOLDER`` (or ``--model=FOLDER``)."""
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--model":
            skip = True
        elif not arg.startswith("--model="):
            rest.append(arg)
    return rest


def check_tokenizer(tokenizer: Any) -> None:
    """Refuse a tokenizer that does not give text back (the byte-level decoder missing: ``Ġ`` in the text)."""
    ids = tokenizer(ROUNDTRIP_TEXT, add_special_tokens=False)["input_ids"]
    back = tokenizer.decode(ids)
    if back != ROUNDTRIP_TEXT:
        raise SystemExit(f"the tokenizer does not round-trip text ({back!r} for {ROUNDTRIP_TEXT!r}): the model folder "
                         "was converted by transformers 5.5.4, which drops the byte-level decoder; pass --model with a "
                         "folder the main environment converted (run this script with .venv/bin/python)")


# ---------------------------------------------------------------------- the three configurations
def easyedit_request(request: Any, suffix: Optional[str]) -> dict[str, Any]:
    """EasyEdit's request dict for one case; with ``suffix``, its prompts carry it (``prompt + " " + suffix``)."""
    def add(text: str) -> str:
        return f"{text} {suffix}" if suffix else text

    return {"prompt": add(request.prompt), "target_new": request.target_new, "ground_truth": request.ground_truth,
            "locality": {"general knowledge constraint": {"prompt": add(request.locality_prompt),
                                                           "ground_truth": request.locality_answer}}}


class EasyEditDINM:
    """EasyEdit's own SafetyEditor localization and DINM, on a preloaded (model, tokenizer)."""

    def __init__(self, model: Any, tokenizer: Any, compat: Any, work: Path) -> None:
        """``compat``: our compat hparams; EasyEdit reads its own fields of them from a YAML file, with its
        own ``DINMHyperParams.from_hparams``."""
        import yaml
        from easyeditor import DINMHyperParams, SafetyEditor

        names = {f.name for f in dataclasses.fields(DINMHyperParams)}
        path = work / "easyedit-dinm.yaml"
        path.write_text(yaml.safe_dump({k: v for k, v in compat.to_dict().items() if k in names}), encoding="utf-8")
        self.hparams = DINMHyperParams.from_hparams(str(path))
        self.hparams.model_name = (model, tokenizer)
        self.hparams.layers = []
        self.model, self.tokenizer = model, tokenizer
        with contextlib.redirect_stdout(sys.stderr):
            self.editor = SafetyEditor.from_hparams(self.hparams)
        module = getattr(self.editor.apply_algo, "__module__", "")
        if module != "easyeditor.models.dinm.dinm_main":
            raise SystemExit(f"EasyEdit's ALG_DICT['DINM'] is {module}.{self.editor.apply_algo.__name__}, not EasyEdit's "
                             "own DINM; run without our bridge installed")

    def edit(self, request: Any) -> tuple[float, int, dict[str, "torch.Tensor"]]:
        """(edit seconds, located layer, ΔW): SafetyEditor's DINM span, then its restore loop."""
        import torch

        plain, with_suffix = easyedit_request(request, None), easyedit_request(request, self.hparams.suffix_system_prompt)
        self.hparams.layers = []
        previous = self.model.config.output_hidden_states
        self.model.config.output_hidden_states = True  # as SafetyEditor loads its models; its localization reads them
        try:
            with contextlib.redirect_stdout(sys.stderr):
                start = time.perf_counter()
                self.hparams.layers = self.editor._locate_toxic_layer(self.model, self.tokenizer, [plain])
                _, weights_copy = self.editor.apply_algo(self.model, self.tokenizer, [with_suffix], self.hparams,
                                                         copy=False, return_orig_weights=True, keep_original_weight=True)
                seconds = time.perf_counter() - start
        finally:
            self.model.config.output_hidden_states = previous
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            deltas = {name: params[name].detach() - w0 for name, w0 in weights_copy.items()}
            for name, w0 in weights_copy.items():  # SafetyEditor's restore loop
                params[name].copy_(w0)
        (layer,) = self.hparams.layers
        return seconds, int(layer), deltas


def run_ours(hparams: Any, model: Any, tokenizer: Any, request: Any, originals: dict[str, "torch.Tensor"]
             ) -> tuple[float, int, dict[str, "torch.Tensor"], dict[str, Any]]:
    """(edit seconds, layer, ΔW, the case record) of one edit with a fresh DINMEditor, then reverted."""
    import torch

    from detox_plugins.dinm.editor import DINMEditor

    editor = DINMEditor(hparams, progress=False)
    start = time.perf_counter()
    edit = editor.edit(model, tokenizer, [request])
    seconds = time.perf_counter() - start
    params = dict(model.named_parameters())
    record = edit.metadata["cases"][0]
    with torch.no_grad():
        deltas = {name: params[name].detach() - originals[name] for name in edit.metadata["edited_tensors"]}
    edit.revert()
    return seconds, int(record["layers"][0]), deltas, record


def check_restored(model: Any, originals: dict[str, "torch.Tensor"], after: str) -> None:
    import torch

    params = dict(model.named_parameters())
    changed = [name for name, w0 in originals.items() if not torch.equal(params[name], w0)]
    if changed:
        raise SystemExit(f"after {after} the model was not restored: {', '.join(changed[:3])} differ from W0")


# ---------------------------------------------------------------------- main
def _git_commit() -> Optional[str]:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every case through the three configurations (EasyEdit's, compat, improved), alternating."""
    import easyedit_host

    easyedit_host.import_easyeditor()  # first: its torchvision patch must precede transformers' model imports
    import torch
    import transformers
    from tqdm.auto import tqdm

    from detox_plugins.dinm.cases import as_request, load_cases
    from detox_plugins.dinm.editor import DINMEditor
    from detox_plugins.evaluation.datasets import interleave_by_category
    from registry import from_hparams
    from registry.fingerprint import model_fingerprint
    from registry.models import load_model

    torch.set_num_threads(args.threads)
    commit = _git_commit()  # the code that runs, before anything is committed meanwhile
    model, tokenizer = load_model(args.model)
    check_tokenizer(tokenizer)
    compat_hp, improved_hp = from_hparams(COMPAT_HPARAMS), from_hparams(IMPROVED_HPARAMS)
    requests = [as_request(c) for c in interleave_by_category(load_cases(args.source))[:args.cases]]
    fingerprint = model_fingerprint(model)
    template = compat_hp.rewrite_module_tmp
    originals = {name: p.detach().clone() for name, p in model.named_parameters()
                 if any(name == template.format(i) for i in range(model.config.num_hidden_layers))}
    with tempfile.TemporaryDirectory(prefix="easyedit-dinm-") as work:
        easyedit = EasyEditDINM(model, tokenizer, compat_hp, Path(work))
        for request in requests:  # the prompts EasyEdit gets are the ones compat edits with
            suffixed = easyedit_request(request, easyedit.hparams.suffix_system_prompt)["prompt"]
            planned = DINMEditor(compat_hp, progress=False).plan(model, tokenizer, [request]).cases[0].prompt_text
            if planned != suffixed:
                raise SystemExit(f"case {request.case_id}: compat edits {planned!r}, EasyEdit gets {suffixed!r}")

        def run(name: str, request: Any) -> tuple[float, int, dict[str, torch.Tensor], dict[str, Any]]:
            if name == "easyedit":
                seconds, layer, deltas = easyedit.edit(request)
                outcome: tuple[float, int, dict[str, torch.Tensor], dict[str, Any]] = (seconds, layer, deltas, {})
            else:
                outcome = run_ours(compat_hp if name == "compat" else improved_hp, model, tokenizer, request, originals)
            check_restored(model, originals, f"{name} on case {request.case_id}")
            return outcome

        if args.warmup:  # first-call allocations and kernel choices, untimed
            for name in tqdm(CONFIGS, desc="warm-up", file=sys.stderr):
                run(name, requests[0])
        rows = []
        orders = case_orders(CONFIGS, len(requests))
        bar = tqdm(total=len(requests) * len(CONFIGS), desc="edits", unit="edit", file=sys.stderr)
        for request, order in zip(requests, orders):
            row: dict[str, Any] = {"case_id": request.case_id, "category": request.category, "order": order,
                                   "seconds": {}, "layers": {}, "steps": {}}
            deltas: dict[str, dict[str, torch.Tensor]] = {}
            for name in order:
                bar.set_postfix_str(f"case {request.case_id}: {name}")
                seconds, layer, deltas[name], record = run(name, request)
                row["seconds"][name], row["layers"][name] = round(seconds, 4), layer
                if record:
                    row["steps"][name] = record["steps"]
                    if name == "compat":
                        row["compat_scores"] = record.get("localization", {}).get("scores")
                bar.update()
            row["compat_vs_easyedit"] = compare_deltas(deltas["compat"], deltas["easyedit"]).to_dict()
            if row["layers"]["compat"] != row["layers"]["easyedit"]:  # the update alone, at EasyEdit's layer
                _, _, forced, _ = run_ours(compat_hp.replace(layers=[row["layers"]["easyedit"]]), model, tokenizer,
                                           request, originals)
                row["compat_at_easyedit_layer"] = compare_deltas(forced, deltas["easyedit"]).to_dict()
            logger.info("case %s: layers %s, compat ΔW bit-equal %s, seconds %s", request.case_id, row["layers"],
                        row["compat_vs_easyedit"]["bit_equal"], row["seconds"])
            rows.append(row)
        bar.close()
    if model_fingerprint(model) != fingerprint:
        raise SystemExit("the model's fingerprint changed during the benchmark: some edit was not undone")
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit,
        "command": "python benchmarks/easyedit_dinm.py " + " ".join(args.shown_argv),
        "easyedit": f"EasyEdit at {Path(os.environ.get('EASYEDIT_PATH', SNAPSHOT)).name}",
        "model_name": Path(args.model).name, "model_fingerprint": fingerprint,
        "hparams": {"compat": COMPAT_HPARAMS, "improved": IMPROVED_HPARAMS, "easyedit": f"{COMPAT_HPARAMS} (EasyEdit's fields)"},
        "padding_side": tokenizer.padding_side,
        "transformers": transformers.__version__, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "rows": rows, "summary": summarize(rows),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=6, help="shipped cases, round-robin over categories (default 6)")
    parser.add_argument("--source", default="safeedit-sample", help="SafeEdit JSON file or safeedit-sample")
    parser.add_argument("--model", help="model folder (default: the embedded model as the main environment converts it)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "easyedit_dinm.json"))
    parser.add_argument("--md", default=str(ROOT / "benchmarks" / "results" / "easyedit_dinm.md"),
                        help="markdown table; '-' prints it only")
    parser.add_argument("--hosts-python", default=str(_default_hosts_python()),
                        help="python of the EasyEdit environment (default .venv-hosts/bin/python)")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the untimed warm-up edits")
    args = parser.parse_args(argv)
    if args.cases < 1:
        parser.error(f"--cases must be >= 1, got {args.cases}")
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    if not _in_hosts():
        return relaunch_in_hosts(args, argv)
    if not args.model:
        parser.error("in .venv-hosts --model FOLDER is required (transformers 5.5.4 converts the embedded model's "
                     "tokenizer without its byte-level decoder); run this script with the main environment's python")
    args.shown_argv = without_model(argv)
    from registry.writer import write_file

    result = measure(args)
    table = result["table"] = markdown(result)
    print(table, end="")
    write_file(args.json, json.dumps(result, indent=1) + "\n", overwrite=True)
    if args.md != "-":
        write_file(args.md, table, overwrite=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
