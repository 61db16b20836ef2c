"""House rule 1 as a test: only jetspec_sglang/glue imports sglang; only kernels/ and ops.py import triton."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _imported_roots(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def _python_files(*dirs: str) -> list[pathlib.Path]:
    return [p for d in dirs for p in (ROOT / d).rglob("*.py")]


def test_sglang_only_in_glue():
    offenders = [
        str(p.relative_to(ROOT))
        for p in _python_files("jetspec_sglang", "kernels")
        if "sglang" in _imported_roots(p) and "glue" not in p.relative_to(ROOT).parts
    ]
    assert offenders == [], f"only jetspec_sglang/glue/ may import sglang: {offenders}"


def test_triton_only_in_kernels_and_ops():
    allowed = {ROOT / "jetspec_sglang" / "ops.py"}
    offenders = [
        str(p.relative_to(ROOT))
        for p in _python_files("jetspec_sglang")
        if "triton" in _imported_roots(p) and p not in allowed
    ]
    assert offenders == [], f"only kernels/ and jetspec_sglang/ops.py may import triton: {offenders}"


def test_kernels_is_not_a_top_level_package():
    import importlib.util

    import jetspec_sglang.kernels  # noqa: F401  (installed under the package name)

    spec = importlib.util.find_spec("kernels")
    assert spec is None or "jetspec" not in str(spec.origin or ""), "kernels/ must not be importable as `kernels`"


def test_layering_detects_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import sglang.srt\nfrom triton import language\n")
    assert {"sglang", "triton"} <= _imported_roots(bad)
