"""MACs and parameters of an ONNX file, counted from its graph with shape inference.

Used where only the exported artifact exists (the CI gate). The rules match fvcore's for the
ops that matter, so a student's figure is the same whether counted from torch or from ONNX:

* ``Conv``: ``numel(output) * C_in/groups * kh * kw`` MACs;
* ``Gemm`` / ``MatMul``: ``M * K * N`` per batch;
* ``BatchNormalization`` (inference): ``2 * numel(input)``;
* ``GlobalAveragePool`` / ``ReduceMean`` over spatial dims: ``numel(input)``;
* everything else (Relu, Add, pooling, reshapes ...) is 0 and listed in ``uncounted_ops``.

Counts are per sample: the symbolic batch dimension is set to 1. The counts describe the
exported graph: torch's ONNX exporter folds eval-mode BatchNorm into the preceding conv, so an
exported model's MACs and params are lower than fvcore's count of the torch module by exactly
the BN terms (``2 * numel`` MACs and ``2 * C`` affine parameters per BN). Compare ONNX counts
with ONNX counts (as the CI gate does).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from compress.budgets.cost import Cost
from compress.budgets.errors import CostError

__all__ = ["onnx_cost"]

_ZERO_COST = {"Relu", "Add", "Flatten", "Reshape", "Identity", "Constant", "Shape", "Gather", "Unsqueeze",
              "Concat", "Squeeze", "Transpose", "Cast", "Sigmoid", "HardSigmoid", "Mul", "Clip", "HardSwish",
              "MaxPool", "AveragePool", "Pad", "Slice", "Split", "Sub", "Div"}


def onnx_cost(path: str | Path) -> Cost:
    """Count MACs (per sample) and parameters (initializer elements) of an ONNX model.

    Raises:
        CostError: the file cannot be read or its shapes cannot be inferred.
    """
    import onnx
    from onnx import numpy_helper, shape_inference

    try:
        model = onnx.load(str(path))
        for inp in model.graph.input:
            dims = inp.type.tensor_type.shape.dim
            if dims and (dims[0].dim_param or dims[0].dim_value == 0):
                dims[0].ClearField("dim_param")
                dims[0].dim_value = 1
        model = shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as exc:
        raise CostError(f"cannot read or shape-infer {path}: {exc}") from exc
    g = model.graph
    shapes: dict[str, list[int]] = {}
    for v in list(g.value_info) + list(g.input) + list(g.output):
        shapes[v.name] = [d.dim_value for d in v.type.tensor_type.shape.dim]
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    for name, arr in inits.items():
        shapes[name] = list(arr.shape)

    def numel(name: str) -> int:
        n = 1
        for d in shapes.get(name, [0]):
            n *= max(int(d), 0)
        return n

    macs = 0
    uncounted: Counter[str] = Counter()
    for node in g.node:
        op = node.op_type
        if op == "Conv":
            w = shapes[node.input[1]]  # (C_out, C_in/groups, kh, kw)
            k = 1
            for d in w[1:]:
                k *= d
            macs += numel(node.output[0]) * k
        elif op in ("Gemm", "MatMul"):
            a = shapes.get(node.input[0], [])
            b = shapes.get(node.input[1], [])
            if not a or not b:
                uncounted[op] += 1
                continue
            kdim = a[-1] if not (op == "Gemm" and any(at.name == "transA" and at.i for at in node.attribute)) else a[0]
            macs += numel(node.output[0]) * kdim
        elif op == "BatchNormalization":
            macs += 2 * numel(node.input[0])
        elif op in ("GlobalAveragePool",):
            macs += numel(node.input[0])
        elif op == "ReduceMean":
            macs += numel(node.input[0])
        elif op not in _ZERO_COST:
            uncounted[f"onnx::{op}"] += 1
    params = int(sum(a.size for a in inits.values() if a.dtype.kind == "f"))
    in_shape = tuple(shapes[g.input[0].name][1:]) if g.input else ()
    return Cost(macs=int(macs), params=params, uncounted_ops=dict(uncounted), input_shape=in_shape)
