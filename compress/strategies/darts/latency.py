"""The expected latency of a DARTS supernet under ``softmax(alpha)``: the hardware-aware term of
the architecture objective (issue 18, part 4).

ProxylessNAS (Cai, Zhu, Han, ICLR 2019, §3.3, Eq. 4-5) and FBNet (Wu et al., CVPR 2019, §3.2)
make latency differentiable through its expectation over the mixed op: for one edge,
``E[lat] = sum_o softmax(alpha)_o * lat(o)``, and for the network the sum over every edge of every
cell. The architecture objective becomes ``L_val + lambda_lat * E[lat] / E_uniform[lat]``.

* :func:`op_latency_matrix` -- ``lat(o)`` per edge and op, read from a per-layer latency table
  (:class:`~compress.profiling.latency_model.LayerLatencyTable` on the target, or any object with
  ``latency(config) -> ms``): each candidate op of each ``MixedOp`` is broken into its convs
  (:func:`~compress.profiling.latency_model.layer_configs` at the op's input size), and their
  table latencies are summed. Since every normal cell shares ``alphas_normal`` (and every
  reduction cell ``alphas_reduce``), the matrix of a cell type sums its cells: ``(E, |O|)`` ms each.
* :func:`expected_latency` -- the differentiable ``sum softmax(alpha) * lat`` (ms).
* :class:`LatencyTerm` -- the term as the searches use it: ``weight * E[lat](alpha) / E[lat](uniform)``.
* :func:`op_params_matrix` and :class:`ParamsTerm` -- the same expectation with the parameter count
  of each candidate op in place of its latency (the mechanism of ProxylessNAS/FBNet with a
  parameter budget's own metric; not in DARTS, opt-in: darts-gal's ``search.arch_params_weight``).
* :func:`sum_terms` -- several terms as one (what the architect adds to ``L_val``).

Documented choices:

* The table times convs and linears only; an op without a conv (pools, ``skip_connect``,
  ``none``) is charged 0 ms. Its real cost on onnxruntime is small beside a conv's, and the budget
  check at the end of a run stays a real measurement of the whole network (never this sum).
* The term is divided by the expected latency under uniform weights (the supernet at
  initialisation), so ``lambda_lat`` is dimensionless and does not depend on how fast the target
  is; ProxylessNAS tunes its lambda per device instead (§3.3).
* The table lookups happen once per search (``E * |O| * cells`` convs at most, each a cached
  table entry); after that the term is a tensor product, so the search loop never calls the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from compress.errors import ConfigError
from compress.profiling.latency_model import layer_configs
from compress.strategies.darts.search import MixedOp, SearchNetwork

__all__ = ["LatencyLookup", "op_latency_matrix", "expected_latency", "LatencyTerm", "op_params_matrix", "ParamsTerm",
           "SumOfTerms", "sum_terms"]


class LatencyLookup(Protocol):
    """What :func:`op_latency_matrix` needs of a table: ms of one layer configuration
    (:class:`~compress.profiling.latency_model.ConvConfig` / ``LinearConfig``)."""

    def latency(self, cfg: Any) -> float: ...


def _op_configs(op: nn.Module, shape: tuple[int, ...]) -> list[Any]:
    return [cfg for _, cfg in layer_configs(op, torch.zeros(1, *shape))]


@torch.no_grad()
def op_latency_matrix(model: SearchNetwork, example_inputs: torch.Tensor,
                      table: LatencyLookup) -> tuple[torch.Tensor, torch.Tensor]:
    """Per edge and op, the table latency (ms) of the candidate op, summed over the cells of each type.

    Args:
        model: the supernet (read only; its mode is restored).
        example_inputs: ``(B, C, H, W)`` at the search's input size (one sample is used).
        table: ``table.latency(config) -> ms`` (the target's ``LayerLatencyTable``; a dict-backed
            stand-in in tests). Identical configurations are looked up once.

    Returns:
        ``(lat_normal, lat_reduce)``, float64 ``(E, |O|)`` ms each (all zero for a cell type the
        supernet does not have).

    Raises:
        ConfigError: ``example_inputs`` is not 4-D.
        ProfilingError: the table cannot time a layer (onnxruntime failure).
    """
    if example_inputs.dim() != 4:
        raise ConfigError(f"op_latency_matrix needs (B, C, H, W) example inputs, got shape {tuple(example_inputs.shape)}.")
    shapes: dict[int, tuple[int, ...]] = {}
    hooks = []
    for m in model.modules():
        if isinstance(m, MixedOp):
            def hook(mod, inp, _out, key=id(m)):
                x = inp[0]
                c = x.shape[1] // mod.k
                shapes[key] = (int(c), int(x.shape[2]), int(x.shape[3]))
            hooks.append(m.register_forward_hook(hook))
    was = model.training
    model.eval()
    try:
        model(example_inputs[:1].to(next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    E, O = model.alphas_normal.shape
    out = {True: np.zeros((E, O)), False: np.zeros((E, O))}
    cache: dict[str, float] = {}
    for cell in model.cells:
        for e, mixed in enumerate(cell.edges):
            shape = shapes[id(mixed)]
            for o, op in enumerate(mixed.ops):
                ms = 0.0
                for cfg in _op_configs(op, shape):
                    key = cfg.key()
                    if key not in cache:
                        cache[key] = float(table.latency(cfg))
                    ms += cache[key]
                out[cell.reduction][e, o] += ms
    return torch.from_numpy(out[False]), torch.from_numpy(out[True])


def expected_latency(alphas_normal: torch.Tensor, alphas_reduce: torch.Tensor, lat_normal: torch.Tensor,
                     lat_reduce: torch.Tensor) -> torch.Tensor:
    """``sum_e sum_o softmax(alpha_e)_o * lat[e, o]`` over both cell types (ms), differentiable in alpha
    (ProxylessNAS §3.3 Eq. 5; FBNet §3.2).

    Args:
        alphas_normal, alphas_reduce: logits ``(E, |O|)``.
        lat_normal, lat_reduce: ms ``(E, |O|)`` (:func:`op_latency_matrix`).

    Returns:
        A 0-dim tensor in alpha's dtype and device.

    Raises:
        ConfigError: a latency matrix's shape differs from its alpha's.
    """
    total = None
    for a, lat in ((alphas_normal, lat_normal), (alphas_reduce, lat_reduce)):
        if tuple(a.shape) != tuple(lat.shape):
            raise ConfigError(f"expected_latency: alpha {tuple(a.shape)} and latency {tuple(lat.shape)} shapes differ.")
        term = (torch.softmax(a, dim=-1) * lat.to(device=a.device, dtype=a.dtype)).sum()
        total = term if total is None else total + term
    return total  # type: ignore[return-value]


@dataclass
class LatencyTerm:
    """``weight * E[lat](alpha) / E[lat](uniform alpha)``: the latency term added to the
    architecture objective (DARTS' ``L_val``; EG-NAS' L1 of Eq. 7). Picklable (tensors and floats),
    so an executor's workers can evaluate it.

    Attributes:
        lat_normal, lat_reduce: ms per edge and op ``(E, |O|)`` (:func:`op_latency_matrix`).
        weight: lambda_lat (>= 0; dimensionless).
        reference_ms: E[lat] under uniform op weights (the normaliser; > 0 unless every op costs 0 ms,
            then the term is 0).
    """

    lat_normal: torch.Tensor
    lat_reduce: torch.Tensor
    weight: float

    def __post_init__(self) -> None:
        if not self.weight >= 0:
            raise ConfigError(f"{type(self).__name__}: the weight must be >= 0, got {self.weight}.")
        self.reference_ms = float(self.lat_normal.double().mean(-1).sum() + self.lat_reduce.double().mean(-1).sum())

    def expected_ms(self, alphas_normal: torch.Tensor, alphas_reduce: torch.Tensor) -> torch.Tensor:
        """E[lat] in ms (0-dim, differentiable)."""
        return expected_latency(alphas_normal, alphas_reduce, self.lat_normal, self.lat_reduce)

    def __call__(self, alphas_normal: torch.Tensor, alphas_reduce: torch.Tensor) -> torch.Tensor:
        """The term (0-dim tensor, differentiable in alpha)."""
        if self.reference_ms <= 0:
            return alphas_normal.sum() * 0.0
        return self.weight * self.expected_ms(alphas_normal, alphas_reduce) / self.reference_ms

    def of_vector(self, z: np.ndarray | torch.Tensor) -> float:
        """The term for a flat architecture vector ``(2 * E * |O|,)`` (the
        :meth:`SearchNetwork.arch_vector` layout: normal, then reduce)."""
        E, O = self.lat_normal.shape
        v = torch.as_tensor(np.asarray(z), dtype=torch.float64).reshape(-1)
        return float(self(v[: E * O].view(E, O), v[E * O:].view(E, O)))


@torch.no_grad()
def op_params_matrix(model: SearchNetwork) -> tuple[torch.Tensor, torch.Tensor]:
    """Per edge and op, the parameter count of the candidate op, summed over the cells of each type.

    Counted exactly (``numel`` of the op's parameters; a pool's BatchNorm counts, ``skip_connect`` at
    stride 1 and ``none`` count 0), at the supernet's width. Only ratios enter :class:`ParamsTerm`
    (it divides by the uniform expectation), and an op's count scales with the square of the width
    for every parametric op, so the width of the final network does not change them much.

    Args:
        model: the supernet (read only).

    Returns:
        ``(params_normal, params_reduce)``, float64 ``(E, |O|)`` counts each (all zero for a cell type
        the supernet does not have).
    """
    E, O = model.alphas_normal.shape
    out = {True: np.zeros((E, O)), False: np.zeros((E, O))}
    for cell in model.cells:
        for e, mixed in enumerate(cell.edges):
            for o, op in enumerate(mixed.ops):
                out[cell.reduction][e, o] += sum(p.numel() for p in op.parameters())
    return torch.from_numpy(out[False]), torch.from_numpy(out[True])


class ParamsTerm(LatencyTerm):
    """``weight * E[params](alpha) / E[params](uniform alpha)``: :class:`LatencyTerm`'s expectation
    (ProxylessNAS §3.3 Eq. 5, FBNet §3.2) over per-op parameter counts
    (:func:`op_params_matrix`) instead of milliseconds. ``lat_normal``/``lat_reduce`` hold counts
    ``(E, |O|)`` here, ``reference_ms`` the uniform expectation in parameters, and
    :meth:`expected_params` (= ``expected_ms``) the expectation in parameters."""

    def expected_params(self, alphas_normal: torch.Tensor, alphas_reduce: torch.Tensor) -> torch.Tensor:
        """E[params] (0-dim, differentiable)."""
        return self.expected_ms(alphas_normal, alphas_reduce)


@dataclass
class SumOfTerms:
    """Terms of the architecture objective added together: ``sum_i term_i(alphas_normal, alphas_reduce)``
    (picklable, as the terms)."""

    terms: tuple

    def __call__(self, alphas_normal: torch.Tensor, alphas_reduce: torch.Tensor) -> torch.Tensor:
        total = None
        for t in self.terms:
            v = t(alphas_normal, alphas_reduce)
            total = v if total is None else total + v
        return total  # type: ignore[return-value]


def sum_terms(*terms: Any) -> Any:
    """The terms that are not None as one callable: None for none, the term itself for one,
    :class:`SumOfTerms` for more."""
    live = tuple(t for t in terms if t is not None)
    if not live:
        return None
    return live[0] if len(live) == 1 else SumOfTerms(live)
