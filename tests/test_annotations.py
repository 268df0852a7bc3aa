"""Every exercise's tensor arguments and tensor returns carry a jaxtyping shape annotation.

An exercise is a function or class (with its methods) defined in a cell tagged `exercise` of a
section source. A tensor annotation must name its shape: `Float[Tensor, "n d_model"]`, not
`torch.Tensor` (nor `np.ndarray`, which takes `Float[np.ndarray, "n 2"]`). Arguments left without
an annotation whose name says they hold a tensor (`axis`, `vector`, `activations`, ...) count as
missing too. One test per section, so each section's gaps show on their own.
"""

from __future__ import annotations

import ast
import typing

import jupytext
import numpy as np
import pytest
import torch
from jaxtyping import AbstractArray

from utils.config import REPO_ROOT as ROOT
from utils.reference import _source_path, load, sections
from utils.sources import solution_code

BARE_ARRAYS = {"Tensor", "ndarray"}  # as a Name or the last part of an Attribute (torch.Tensor, np.ndarray)
# Argument names that hold a tensor wherever the course uses them: unannotated, they lack a shape.
TENSOR_NAMES = {"axis", "vector", "vectors", "direction", "hidden", "hidden_states", "activations", "acts", "h", "x", "v",
                "v_hat", "unit", "logits", "input_ids", "attention_mask", "coords"}


def _name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _bare_arrays(node: ast.AST | None) -> list[str]:
    """The bare Tensor/ndarray mentions in an annotation, outside a jaxtyping subscript's first slot."""
    if node is None:
        return []
    if isinstance(node, ast.Constant) and isinstance(node.value, str):  # a quoted annotation
        try:
            return _bare_arrays(ast.parse(node.value, mode="eval").body)
        except SyntaxError:
            return []
    if isinstance(node, ast.Subscript):
        outer = _name(node.value)
        inner = node.slice
        if outer in {"Float", "Int", "Bool", "Shaped", "Num", "Integer", "Real", "Inexact", "UInt", "Complex",
                     "Float32", "Float64", "Int64", "BFloat16", "Float16"}:
            return []  # Float[Tensor, "n d"]: the array type is what the shape qualifies
        parts = inner.elts if isinstance(inner, ast.Tuple) else [inner]
        return [b for p in parts for b in _bare_arrays(p)]
    if isinstance(node, ast.BinOp):  # X | None
        return _bare_arrays(node.left) + _bare_arrays(node.right)
    if _name(node) in BARE_ARRAYS:
        return [ast.unparse(node)]
    return []


def _resolved_bare(hint) -> bool:
    """Whether a resolved type hint holds torch.Tensor or np.ndarray itself (e.g. through an alias)."""
    if hint in (torch.Tensor, np.ndarray):
        return True
    if isinstance(hint, type) and issubclass(hint, AbstractArray):
        return False
    return any(_resolved_bare(a) for a in typing.get_args(hint))


def _exercise_functions(section: str):
    """(qualified name, ast function node, live object or None) of every exercise function and method."""
    nb = jupytext.read(_source_path(section))
    namespace = load(section)
    for cell in nb.cells:
        if cell.cell_type != "code" or "exercise" not in cell.metadata.get("tags", []):
            continue
        tree = ast.parse(solution_code(cell.source))
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield node.name, node, getattr(namespace, node.name, None)
            elif isinstance(node, ast.ClassDef):
                cls = getattr(namespace, node.name, None)
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        yield f"{node.name}.{item.name}", item, getattr(cls, item.name, None)


def _missing(section: str) -> list[str]:
    problems = []
    for qualname, node, obj in _exercise_functions(section):
        args = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
        if node.args.vararg:
            args.append(node.args.vararg)
        if node.args.kwarg:
            args.append(node.args.kwarg)
        hints = {}
        if obj is not None:
            try:
                hints = typing.get_type_hints(obj)
            except Exception:  # an annotation that does not resolve: the syntactic check still runs
                hints = {}
        for arg in args:
            if arg.arg in ("self", "cls"):
                continue
            bare = _bare_arrays(arg.annotation)
            if bare:
                problems.append(f"{qualname}: argument `{arg.arg}: {ast.unparse(arg.annotation)}` has no shape "
                                f"(write e.g. Float[Tensor, \"n d_model\"] instead of {bare[0]})")
            elif arg.annotation is None and arg.arg in TENSOR_NAMES:
                problems.append(f"{qualname}: argument `{arg.arg}` holds a tensor but has no jaxtyping annotation")
            elif arg.arg in hints and _resolved_bare(hints[arg.arg]):
                problems.append(f"{qualname}: argument `{arg.arg}` is annotated with a bare tensor type (through an alias?)")
        bare = _bare_arrays(node.returns)
        if bare:
            problems.append(f"{qualname}: return `{ast.unparse(node.returns)}` has no shape "
                            f"(write e.g. Float[Tensor, \"n d_model\"] instead of {bare[0]})")
        elif "return" in hints and _resolved_bare(hints["return"]):
            problems.append(f"{qualname}: the return is annotated with a bare tensor type (through an alias?)")
    return problems


def test_detector_catches_bare_annotations():
    """The checker itself: bare tensor types are caught, jaxtyping ones pass."""
    def ann(src):
        return ast.parse(src, mode="eval").body

    for bare in ("torch.Tensor", "Tensor", "np.ndarray", "dict[str, torch.Tensor]", "tuple[Tensor, list[str]]",
                 "torch.Tensor | None", "'torch.Tensor'"):
        assert _bare_arrays(ann(bare)), bare
    for ok in ('Float[Tensor, "n d_model"]', 'dict[str, Float[Tensor, "d_model"]]', 'Float[np.ndarray, "n 2"]',
               'tuple[Float[Tensor, "d_model"], Float[np.ndarray, "n 2"], PCA]', "int", "list[str]",
               'Int[Tensor, "batch seq"] | None'):
        assert not _bare_arrays(ann(ok)), ok
    assert _resolved_bare(dict[str, torch.Tensor]) and not _resolved_bare(dict[str, int])


@pytest.mark.parametrize("section", sections())
def test_exercise_tensors_are_annotated(section):
    problems = _missing(section)
    assert not problems, f"{section}: tensor arguments/returns without a jaxtyping shape:\n  " + "\n  ".join(problems)


# ---------------------------------------------------------------------------------------------
# utils: every public function that takes or returns tensors says their shapes

JAX_TYPES = ("Float[", "Int[", "Bool[", "Shaped[", "Num[", "Integer[", "Real[")


def _bare_tensor(annotation: str) -> bool:
    """An annotation that names a tensor without a jaxtyping shape (`torch.Tensor`, `list[Tensor]`)."""
    import re

    if not re.search(r"\b(torch\.)?Tensor\b", annotation):
        return False
    stripped = annotation
    for jt in JAX_TYPES:  # drop every jaxtyping type, then see whether a bare Tensor is left
        stripped = re.sub(re.escape(jt) + r"[^\[\]]*(\[[^\]]*\])?[^\]]*\]", "", stripped)
    # a mapping of named tensors of different shapes (a state dict) has no one shape to state
    stripped = re.sub(r"(Mapping|dict)\[str, (torch\.)?Tensor\]", "", stripped)
    return bool(re.search(r"\b(torch\.)?Tensor\b", stripped))


def _utils_missing() -> list[str]:
    import ast

    missing = []
    for path in sorted((ROOT / "utils").glob("*.py")):
        tree = ast.parse(path.read_text())
        scopes = [(None, n) for n in tree.body]
        scopes += [(c.name, n) for c in tree.body if isinstance(c, ast.ClassDef) and not c.name.startswith("_") for n in c.body]
        for owner, node in scopes:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.name.startswith("_") and node.name != "__init__":
                continue
            where = f"{path.name}: {owner + '.' if owner else ''}{node.name}"
            args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            for a in args:
                if a.annotation is not None and _bare_tensor(ast.unparse(a.annotation)):
                    missing.append(f"{where}: argument `{a.arg}: {ast.unparse(a.annotation)}`")
            if node.returns is not None and _bare_tensor(ast.unparse(node.returns)):
                missing.append(f"{where}: returns `{ast.unparse(node.returns)}`")
    return missing


def test_bare_tensor_detector():
    assert _bare_tensor("torch.Tensor") and _bare_tensor("list[Tensor]") and _bare_tensor("tuple[Float[Tensor, 'n d'], Tensor]")
    assert not _bare_tensor("Float[Tensor, 'n d_model']") and not _bare_tensor("tuple[Float[Tensor, 'n n'], list[str]]")
    assert not _bare_tensor("Mapping[str, torch.Tensor]") and not _bare_tensor("int")


def test_utils_tensor_functions_are_annotated():
    missing = _utils_missing()
    assert not missing, "public utils functions with a tensor but no jaxtyping shape:\n" + "\n".join(missing)
