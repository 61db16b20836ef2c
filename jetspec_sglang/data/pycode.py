"""HumanEval-style code prompts cut from the running interpreter's own standard library (a train-only dataset).

HumanEval has 100 train prompts; a head trained for code needs more of the target's answers to code requests than
that. Every Python install carries a few thousand documented functions: each public top-level function, and each
public method of a public class, whose docstring is 60-1,500 characters becomes one prompt shaped like HumanEval's
(signature plus docstring, body removed; a method keeps its class line), e.g.

    def commonprefix(m):
        \"\"\"Given a list of pathnames, returns the longest common leading component\"\"\"

The prompt is then sent in HumanEval's request format (`prompts.format_humaneval`); the target writes the body.
Tests, site-packages, idlelib, lib2to3 and turtledemo are skipped. Ids are "pycode/<path>:<qualname>" in sorted file
order, so the set depends only on the Python version (3.11: 2,906 prompts). The
stdlib's own body is kept as the record's reference answer (`train natural` can use it). Imports no sglang.
"""
from __future__ import annotations

import ast
import copy
import functools
import pathlib
import sysconfig

MIN_DOC, MAX_DOC = 60, 1_500  # docstring length bounds (characters): shorter says too little, longer is a manual
_SKIP_PARTS = ("site-packages", "idlelib", "lib2to3", "turtledemo", "__phello__")


def _public(name: str) -> bool:
    return not name.startswith("_")


def _bare(node: ast.FunctionDef | ast.AsyncFunctionDef, stub: bool) -> ast.AST:
    """The function without decorators; with `stub` its body is cut to the docstring."""
    out = copy.deepcopy(node)
    out.decorator_list = []
    if stub:
        out.body = out.body[:1]  # the docstring expression (callers checked it exists)
    return out


def _prompts_of(tree: ast.Module):
    """(qualname, prompt, solution) of each documented public function and method of a module, in file order."""
    def documented(node):
        doc = ast.get_docstring(node, clean=False)
        return doc is not None and MIN_DOC <= len(doc.strip()) <= MAX_DOC

    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    for node in tree.body:
        if isinstance(node, functions) and _public(node.name) and documented(node):
            yield node.name, ast.unparse(_bare(node, True)) + "\n", ast.unparse(_bare(node, False)) + "\n"
        elif isinstance(node, ast.ClassDef) and _public(node.name):
            for member in node.body:
                if isinstance(member, functions) and _public(member.name) and documented(member):
                    yield (f"{node.name}.{member.name}", _in_class(node, _bare(member, True)),
                           _in_class(node, _bare(member, False)))


def _in_class(cls: ast.ClassDef, member: ast.AST) -> str:
    """Source of `member` inside a bare copy of its class line ("class C(Base):\\n    def m(self): ...")."""
    shell = ast.ClassDef(name=cls.name, bases=cls.bases, keywords=cls.keywords, body=[member], decorator_list=[],
                         type_params=[])
    return ast.unparse(shell) + "\n"


def stdlib_root() -> pathlib.Path:
    return pathlib.Path(sysconfig.get_paths()["stdlib"])


@functools.lru_cache(maxsize=None)
def read_pycode(root: str | None = None) -> tuple[dict, ...]:
    """Every stdlib code prompt: {"index", "id", "prompt", "solution"} (solution = the stdlib's own source of it,
    decorators dropped); `root` defaults to this interpreter's stdlib folder."""
    base = pathlib.Path(root) if root else stdlib_root()
    rows = []
    for path in sorted(base.rglob("*.py")):
        rel = path.relative_to(base)
        if any(part in _SKIP_PARTS or part.startswith("test") for part in rel.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(rel))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a few stdlib files are deliberately invalid or not UTF-8 (bad_coding tests, lib2to3 data)
        for qualname, prompt, solution in _prompts_of(tree):
            rows.append({"index": len(rows), "id": f"pycode/{rel.as_posix()}:{qualname}", "prompt": prompt,
                         "solution": solution})
    if not rows:
        raise ValueError(f"no documented public functions under {base}; pass the standard library folder "
                         f"(sysconfig.get_paths()['stdlib'])")
    return tuple(rows)
