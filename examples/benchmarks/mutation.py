"""Mutation testing of the core learning modules with mutmut: how many one-line changes the tests catch.

Each listed module is mutated alone (mutmut 3: arithmetic, comparison, constant, keyword and
argument mutations, one per mutant) in its own copy of the working tree, against only the test
files that guard it (`GUARDS`), so a module's run fits in a session and two modules can run side by
side. mutmut forks one test run per mutant and runs only the tests that executed the mutated function.

A mutant is *killed* when a test fails (or times out); it *survives* when every test passes, or when
no selected test executes it ("no tests"). Survivors listed in
``examples/benchmarks/mutation_equivalent/<module>.json`` (``[{"function", "diff", "reason"}]``,
matched by function and the changed lines, not by mutmut's numbering, which shifts with every edit)
are *explained*: equivalent mutants that no test can kill because behaviour does not change (e.g. a
default argument that every caller overrides). The rest are *unexplained*: missing tests.

Writes ``<out>/<module>.json`` (counts, every survivor's diff) and ``<out>/summary.json``, and prints
one JSON line: kill rate per module (killed / all mutants) and the rate counting explained survivors.

Usage:
    python examples/benchmarks/mutation.py                                   # every module in GUARDS
    python examples/benchmarks/mutation.py --modules agents/gae.py agents/mappo.py --max-children 2
    python examples/benchmarks/mutation.py --modules wmenv/fit.py --out runs/mutation --keep-work
"""

from __future__ import annotations

import ast
import difflib
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import tyro

ROOT = Path(__file__).resolve().parents[2]
EQUIVALENT = Path(__file__).with_name("mutation_equivalent")

GUARDS: dict[str, list[str]] = {
    "agents/gae.py": ["tests/agents/test_gae.py"],
    "agents/mappo.py": ["tests/agents/test_mappo*.py", "tests/agents/test_gae.py"],
    "agents/critic.py": ["tests/agents/test_critic.py", "tests/agents/test_mappo*.py"],
    "agents/storage.py": ["tests/agents/test_storage.py", "tests/agents/test_mappo*.py"],
    "wmenv/models/mamba_wm.py": ["tests/models/test_mamba_wm*.py", "tests/models/test_wm_*.py", "tests/models/test_filter.py"],
    "wmenv/models/twohot.py": ["tests/models/test_twohot.py", "tests/models/test_wm_twohot.py"],
    "wmenv/data/samplers.py": ["tests/data/test_samplers.py", "tests/data/test_replay.py"],
    "wmenv/models/rssm.py": [
        "tests/models/test_rssm*.py",
        "tests/models/test_mamba_wm*.py",
        "tests/models/test_wm_*.py",
        "tests/models/test_filter.py",
    ],
    "wmenv/models/comm.py": ["tests/models/test_comm*.py", "tests/models/test_mamba_wm*.py", "tests/models/test_filter.py"],
    "wmenv/dream/vec.py": ["tests/dream/test_dream_vec*.py", "tests/dream/test_dream_env.py"],
    "wmenv/fit.py": ["tests/test_fit*.py", "tests/models/test_fit*.py", "tests/models/test_mamba_wm*.py"],
}
"""Module -> globs of the test files that guard it (relative to the repository root)."""

KILLED = {"killed", "timeout", "caught by type check", "segfault"}
"""mutmut statuses that count as caught (a mutant that hangs or crashes the tests is detected)."""


@dataclass
class Args:
    """Mutation-testing settings."""

    modules: list[str] = field(default_factory=lambda: list(GUARDS))
    """Modules to mutate (paths relative to the repository root; each must be a key of GUARDS)."""
    out: Path = Path("runs/mutation")
    """Where the per-module JSON files, the summary and the work copies go."""
    max_children: int = 1
    """Mutants tested at once per module (mutmut's --max-children); one torch thread each."""
    keep_work: bool = False
    """Keep each module's work copy (``<out>/work/<module>``) for `mutmut browse` / `mutmut show`."""


def slug(module: str) -> str:
    """``agents/gae.py`` -> ``agents.gae``."""
    return module.removesuffix(".py").replace("/", ".")


def guard_files(module: str) -> list[str]:
    """The existing test files guarding ``module`` (GUARDS' globs expanded in the working tree)."""
    files = sorted({str(Path(p).relative_to(ROOT)) for g in GUARDS[module] for p in glob.glob(str(ROOT / g))})
    if not files:
        raise ValueError(f"module: no test file matches {GUARDS[module]} for {module!r}")
    return files


def make_work_copy(module: str, work: Path) -> None:
    """Copy the working tree's tracked and untracked (not ignored) files to ``work`` and configure mutmut there."""
    if work.exists():
        shutil.rmtree(work)
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.splitlines()
    for rel in listed:
        src = ROOT / rel
        if src.is_file() and rel.split("/")[0] in {"wmenv", "agents", "exports", "tests", "pyproject.toml", "conftest.py"}:
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, work / rel)
    tests = guard_files(module)
    config = (
        "\n[tool.mutmut]\n"
        f"source_paths = [{json.dumps(module)}]\n"
        'also_copy = ["wmenv", "agents", "exports", "conftest.py"]\n'
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-m", "not cuda and not expensive"]\n'
        "use_git_change_detection = false\n"
    )
    with open(work / "pyproject.toml", "a") as f:
        f.write(config)


def function_diffs(mutated_source: str) -> dict[str, tuple[str, str]]:
    """Mutant name (without module) -> (function name, diff of the changed lines) from mutmut's mutated file.

    mutmut 3 writes every mutant as a copy of the function named ``<f>__mutmut_<k>`` beside the
    original ``<f>__mutmut_orig`` (methods as ``xǁClassǁmethod``); the diff is between the two copies.
    """
    lines = mutated_source.splitlines()
    by_name = {}
    for node in ast.walk(ast.parse(mutated_source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            segment = lines[node.lineno - 1 : node.end_lineno]
            segment[0] = segment[0].replace(node.name, "_", 1)  # the copies differ in name only on the def line
            by_name[node.name] = segment
    out = {}
    for name, body in by_name.items():
        m = re.match(r"(\w+)__mutmut_(\d+)$", name)
        orig = by_name.get(f"{m.group(1)}__mutmut_orig") if m else None
        if orig is None:
            continue
        diff = [
            line
            for line in difflib.unified_diff(orig, body, lineterm="", n=0)
            if line[:1] in "+-" and not line.startswith(("+++", "---"))
        ]
        func = re.sub(r"^x[ǁ_]", "", m.group(1)).replace("ǁ", ".")
        out[name] = (func, "\n".join(diff))
    return out


def load_equivalent(module: str) -> list[dict]:
    """The explained survivors of ``module`` (``function``, ``diff``, ``reason`` each)."""
    path = EQUIVALENT / f"{slug(module)}.json"
    return json.loads(path.read_text()) if path.exists() else []


def normalized(diff: str) -> str:
    """A diff with whitespace collapsed, so reformatting does not unexplain a survivor."""
    return "\n".join(line[:1] + " ".join(line[1:].split()) for line in diff.splitlines())


def run_module(module: str, args: Args) -> dict:
    """Mutate one module in its work copy; returns its record (also written to ``<out>/<module>.json``)."""
    name = slug(module)
    work = (args.out / "work" / name).resolve()
    make_work_copy(module, work)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    mutmut = Path(sys.executable).with_name("mutmut")
    t0 = time.time()
    log = args.out / f"{name}.log"
    with open(log, "w") as f:
        proc = subprocess.run(
            [str(mutmut), "run", "--max-children", str(args.max_children)], cwd=work, env=env, stdout=f, stderr=f
        )
    wall = time.time() - t0
    meta_path = work / "mutants" / (module + ".meta")
    if not meta_path.exists():
        raise RuntimeError(f"mutmut wrote no results for {module} (exit {proc.returncode}); see {log}")
    codes = json.loads(meta_path.read_text())["exit_code_by_key"]
    from mutmut.stats import status_by_exit_code

    statuses = {k: status_by_exit_code[v] for k, v in codes.items()}
    diffs = function_diffs((work / "mutants" / module).read_text())
    explained = load_equivalent(module)
    keys = {(e["function"], normalized(e["diff"])) for e in explained}
    survivors = []
    for key, status in sorted(statuses.items(), key=lambda kv: int(kv[0].rsplit("_", 1)[1])):
        if status in KILLED:
            continue
        func, diff = diffs.get(key.split(".")[-1], ("?", "?"))
        survivors.append(
            {"mutant": key, "status": status, "function": func, "diff": diff, "explained": (func, normalized(diff)) in keys}
        )
    total = len(statuses)
    killed = total - len(survivors)
    n_explained = sum(s["explained"] for s in survivors)
    record = {
        "module": module,
        "tests": guard_files(module),
        "mutants": total,
        "killed": killed,
        "survived": len(survivors) - n_explained,
        "explained": n_explained,
        "kill_rate": round(killed / total, 4) if total else None,
        "kill_rate_with_explained": round((killed + n_explained) / total, 4) if total else None,
        "wall_s": round(wall, 1),
        "survivors": survivors,
    }
    (args.out / f"{name}.json").write_text(json.dumps(record, indent=1))
    if not args.keep_work:
        shutil.rmtree(work)
    return record


def main(args: Args) -> dict:
    """Run every module of ``args.modules`` in turn and write the summary."""
    for m in args.modules:
        if m not in GUARDS:
            raise ValueError(f"modules: expected paths among {sorted(GUARDS)}, got {m!r}")
    if args.max_children < 1:
        raise ValueError(f"max_children: expected a positive integer, got {args.max_children}")
    args.out.mkdir(parents=True, exist_ok=True)
    summary_path = args.out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    for m in args.modules:
        r = run_module(m, args)
        summary[m] = {
            k: r[k] for k in ("mutants", "killed", "survived", "explained", "kill_rate", "kill_rate_with_explained", "wall_s")
        }
        tmp = summary_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(summary, indent=1))
        tmp.replace(summary_path)  # atomic: a killed run keeps the modules it finished
        print(
            f"{m}: {r['killed']}/{r['mutants']} killed, {r['explained']} explained, {r['survived']} unexplained",
            file=sys.stderr,
        )
    result = {m: summary[m] for m in args.modules}
    print(json.dumps({"benchmark": "mutation", "tool": "mutmut", "modules": result}))
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
