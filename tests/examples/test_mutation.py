"""Mutation-testing script: mutant diffs read from mutmut's file, explained survivors, and a real run on agents/gae.py."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples" / "benchmarks"))
import mutation  # noqa: E402

sys.path.pop(0)

MUTATED = """
class Storage:
    def __init__(
        self,
        device: str = "cpu",
    ) -> None:
        self.device = device

    def xǁStorageǁ__init____mutmut_orig(
        self,
        device: str = "cpu",
    ) -> None:
        self.device = device

    def xǁStorageǁ__init____mutmut_1(
        self,
        device: str = "XXcpuXX",
    ) -> None:
        self.device = device


def x_gae__mutmut_orig(rewards, gamma):
    deltas = rewards * gamma
    return deltas


def x_gae__mutmut_1(rewards, gamma):
    deltas = rewards / gamma
    return deltas


def x_gae__mutmut_2(rewards, gamma):
    deltas = None
    return deltas

x_gae__mutmut_mutants = {"x_gae__mutmut_1": x_gae__mutmut_1}
"""


def test_function_diffs_pair_each_mutant_with_its_original():
    """Each mutant's diff holds exactly its changed lines, methods named Class.method, signatures included."""
    diffs = mutation.function_diffs(MUTATED)
    assert diffs == {
        "xǁStorageǁ__init____mutmut_1": (
            "Storage.__init__",
            '-        device: str = "cpu",\n+        device: str = "XXcpuXX",',
        ),
        "x_gae__mutmut_1": ("gae", "-    deltas = rewards * gamma\n+    deltas = rewards / gamma"),
        "x_gae__mutmut_2": ("gae", "-    deltas = rewards * gamma\n+    deltas = None"),
    }


def test_normalized_ignores_reformatting_only():
    """A survivor stays explained when its lines are re-indented, not when they change."""
    assert mutation.normalized("-  a  =  b\n+ a = c") == mutation.normalized("-a = b\n+a  =  c")
    assert mutation.normalized("-a = b\n+a = c") != mutation.normalized("-a = b\n+a = d")


def test_bad_arguments_are_refused_before_any_work(tmp_path):
    """Unknown modules and a non-positive child count are ValueErrors naming the argument."""
    with pytest.raises(ValueError, match=r"^modules: "):
        mutation.main(mutation.Args(modules=["agents/nope.py"], out=tmp_path))
    with pytest.raises(ValueError, match=r"^max_children: "):
        mutation.main(mutation.Args(modules=["agents/gae.py"], max_children=0, out=tmp_path))
    assert not any(tmp_path.iterdir())


def test_every_guard_has_tests_and_every_explanation_names_a_module():
    """Each guarded module has existing test files; explanation files belong to guarded modules and give reasons."""
    for module in mutation.GUARDS:
        assert (ROOT / module).is_file(), module
        assert mutation.guard_files(module), module
    slugs = {mutation.slug(m) for m in mutation.GUARDS}
    for path in mutation.EQUIVALENT.glob("*.json"):
        assert path.stem in slugs, path
        for entry in json.loads(path.read_text()):
            assert set(entry) == {"function", "diff", "reason"} and entry["reason"].strip() and entry["diff"].strip()


def test_gae_mutants_are_killed_or_explained(tmp_path):
    """A real mutmut run on agents/gae.py: at least 90 % of its mutants killed, every survivor explained."""
    result = mutation.main(mutation.Args(modules=["agents/gae.py"], out=tmp_path, max_children=2))
    r = result["agents/gae.py"]
    record = json.loads((tmp_path / "agents.gae.json").read_text())
    assert r["mutants"] == record["mutants"] > 50
    assert r["killed"] >= 0.9 * r["mutants"], record["survivors"]
    assert r["survived"] == 0, [s for s in record["survivors"] if not s["explained"]]
    assert json.loads((tmp_path / "summary.json").read_text())["agents/gae.py"] == r
