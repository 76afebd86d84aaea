"""Cost rules: how much serial depth one aten operation adds.

A port of the rules of google-deepmind/serial_depth (which walks a JAX jaxpr) to the aten operations
PyTorch dispatches. The depth of a value is `max(depth of its inputs) + cost(op)`; a rule returns that
cost, either one int for every tensor input or a dict `{argument name: cost}` when inputs enter the op
at different points (e.g. `addmm`'s bias is only added at the end: cost 1, while `mat1`/`mat2` pay the
whole matmul).

Two rule sets:

- ``"reference"`` reproduces the published tool as closely as an aten trace allows, including its gaps:
  primitives the tool does not know are costed 0 there (erf, sort, `le`, floor/ceil/round, grouped MoE
  matmuls, scatter-add, cumprod, ...). Those ops cost 0 here too, and every one met is listed in the
  report's deviations.
- ``"corrected"`` gives those ops the cost their computation really has (erf 1, sort `ceil(log2 n)`,
  grouped matmul `ceil(log2 n) + 1`, ...).

Composite aten ops (softmax, gelu, sdpa, layer norm, ...) are costed as the depth of the decomposition
JAX traces for the same function, so both rule sets agree with the reference on them; the table in
docs/depth.md lists each decomposition.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Any, Callable

import torch

from dgt_interp.errors import DgtInterpError

RULE_SETS = ("reference", "corrected")


class RulesError(DgtInterpError, ValueError):
    """An op a cost rule cannot read."""


def lg(n: int) -> int:
    """ceil(log2 n) for n >= 1 (0 for n <= 1): depth of a balanced tree over n leaves."""
    n = int(n)
    return (n - 1).bit_length() if n > 1 else 0


def matmul_cost(contracted: int) -> int:
    """A contraction over n elements: n products in parallel (1) then a sum tree (ceil(log2 n))."""
    return lg(contracted) + 1 if contracted > 0 else 0


class OpCall:
    """One dispatched aten call, with its arguments bound to schema names (what a rule reads)."""

    __slots__ = ("func", "name", "overload", "bound", "in_experts")

    def __init__(self, func, name: str, bound: dict[str, Any], in_experts: bool):
        self.func = func
        self.name = name
        self.overload = func._overloadname
        self.bound = bound
        self.in_experts = in_experts

    def arg(self, name: str, default=None):
        value = self.bound.get(name, default)
        return default if value is None else value

    @property
    def self_tensor(self) -> torch.Tensor:
        for key in ("self", "input", "query"):
            value = self.bound.get(key)
            if isinstance(value, torch.Tensor):
                return value
        for value in self.bound.values():
            if isinstance(value, torch.Tensor):
                return value
        raise RulesError(f"aten.{self.name} has no tensor input")


RuleFn = Callable[[OpCall], Any]  # returns an int, or {argument name: cost, "*": default}


@dataclass(frozen=True)
class Rule:
    """How an op is costed. `reference` overrides `cost` under the reference rules (None: the same).

    `note` says what the rule approximates or where the reference differs; ops with a note are listed in
    the report's deviations when met.
    """

    cost: RuleFn
    reference: RuleFn | None = None
    note: str = ""


def _const(c: int) -> RuleFn:
    return lambda call: c


def _reduced(call: OpCall, dim_key: str = "dim") -> int:
    """Number of elements reduced into each output element (all of them when dim is None or [])."""
    x = call.self_tensor
    dim = call.bound.get(dim_key)
    if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
        return x.numel()
    dims = [dim] if isinstance(dim, int) else list(dim)
    if x.dim() == 0:
        return 1
    return prod(x.shape[d] for d in dims)


def _axis_length(call: OpCall, dim_key: str = "dim", default: int = -1) -> int:
    x = call.self_tensor
    if x.dim() == 0:
        return 1
    dim = call.bound.get(dim_key)
    return x.shape[default if dim is None else dim]


def _reduce(extra: int = 0) -> RuleFn:
    return lambda call: lg(_reduced(call)) + extra


def _max_min(call: OpCall) -> int:
    """aten.max/min: `.other`/`.out` are elementwise (1); `.dim`/`.default` reduce (ceil(log2 n))."""
    if call.overload in ("other", "out", "binary_out"):
        return 1
    return lg(_reduced(call))


def _to_copy(call: OpCall) -> int:
    """Moving (0) unless the dtype changes: a conversion is elementwise (1), as convert_element_type."""
    dtype = call.bound.get("dtype")
    return int(dtype is not None and dtype != call.self_tensor.dtype)


def _copy(call: OpCall) -> int:
    src, dst = call.bound.get("src"), call.bound.get("self")
    return int(isinstance(src, torch.Tensor) and isinstance(dst, torch.Tensor) and src.dtype != dst.dtype)


def _clamp(call: OpCall) -> int:
    """jnp.clip is maximum then minimum: 1 per bound given."""
    return int(call.bound.get("min") is not None) + int(call.bound.get("max") is not None)


def _softmax(call: OpCall) -> int:
    """max-reduce, subtract, exp, sum-reduce, divide: 2 ceil(log2 n) + 3 (+1 if it upcasts)."""
    n = _axis_length(call)
    upcast = bool(call.bound.get("half_to_float")) or (
        call.bound.get("dtype") is not None and call.bound["dtype"] != call.self_tensor.dtype
    )
    return 2 * lg(n) + 3 + int(upcast)


def _safe_softmax(call: OpCall) -> int:
    """softmax, then `where(row all -inf, 0, softmax)`: one more select."""
    return _softmax(call) + 1


def _log_softmax(call: OpCall) -> int:
    """x - max (ceil(log2 n) + 1), log(sum(exp(.))) (+ 1 + ceil(log2 n) + 1), subtract (1)."""
    return _softmax(call) + 1


def _logsumexp(call: OpCall) -> int:
    return 2 * lg(_reduced(call)) + 4


def _var(call: OpCall, sqrt: int = 0) -> int:
    """mean (ceil(log2 n) + 1), subtract, square, sum (ceil(log2 n)), divide; std adds a sqrt."""
    return 2 * lg(_reduced(call)) + 4 + sqrt


def _norm(call: OpCall) -> int:
    """|x|^p summed then rooted: elementwise power (1) + sum (ceil(log2 n)) + root (1)."""
    return lg(_reduced(call)) + 2


def _cumulative(call: OpCall) -> int:
    return lg(_axis_length(call))


def _mm(call: OpCall) -> int:
    """mm/bmm/mv/dot: contraction over the last dim of the first operand."""
    return matmul_cost(call.self_tensor.shape[-1] if call.self_tensor.dim() else 1)


def _addmm(call: OpCall) -> dict[str, int]:
    """beta*input + alpha*(mat1 @ mat2): the matmul, then one add (the bias only pays the add)."""
    for key in ("mat1", "batch1", "mat", "vec1"):
        if isinstance(call.bound.get(key), torch.Tensor):
            contracted = call.bound[key].shape[-1]
            break
    else:
        contracted = 1
    c = matmul_cost(contracted) + 1
    return {"self": 1, "*": c}


def _grouped_mm(call: OpCall) -> int:
    return matmul_cost(call.self_tensor.shape[-1])


def _moe_matmul(base: RuleFn) -> RuleFn:
    """Under the reference rules, a matmul inside an MoE experts module is a grouped matmul (ragged_dot)."""

    def rule(call: OpCall):
        return 0 if call.in_experts else base(call)

    return rule


def _linear(call: OpCall) -> dict[str, int]:
    c = matmul_cost(call.self_tensor.shape[-1])
    return {"bias": 1, "*": c + (1 if call.bound.get("bias") is not None else 0)}


def _convolution(call: OpCall) -> dict[str, int]:
    weight = call.bound["weight"]
    c = matmul_cost(prod(weight.shape[1:]))
    return {"bias": 1, "*": c + (1 if call.bound.get("bias") is not None else 0)}


def _gelu(erf_cost: int) -> RuleFn:
    """tanh form (jax.nn.gelu approximate): x**3, *c, +x, *k, tanh, 1+, *0.5, x*: 8.

    exact form: x/sqrt2, erf, +1, *0.5, x*: 4 + cost(erf).
    """

    def rule(call: OpCall) -> int:
        return 8 if call.bound.get("approximate") == "tanh" else 4 + erf_cost

    return rule


def _sdpa(call: OpCall) -> dict[str, int]:
    """Fused attention costed as its math decomposition (the path PyTorch takes on the meta device).

    q and k are scaled (1), QK^T contracts head_dim, the mask is added (1), a safe softmax runs over the
    keys (2 ceil(log2 Lk) + 4), and PV contracts the keys (ceil(log2 Lk) + 1). v only pays the PV
    matmul; an explicit mask pays add + softmax + PV.
    """
    q, k = call.bound["query"], call.bound["key"]
    head_dim, keys = q.shape[-1], k.shape[-2]
    has_mask = call.bound.get("attn_mask") is not None or call.bound.get("attn_bias") is not None
    masked = has_mask or bool(call.bound.get("is_causal"))
    pv = matmul_cost(keys)
    softmax = 2 * lg(keys) + 4
    after_scores = int(masked) + softmax + pv
    return {
        "query": 1 + matmul_cost(head_dim) + after_scores,
        "key": 1 + matmul_cost(head_dim) + after_scores,
        "value": pv,
        "attn_mask": 1 + softmax + pv,
        "attn_bias": 1 + softmax + pv,
        "*": 0,
    }


def _native_layer_norm(call: OpCall) -> dict[str, int]:
    """Two-pass: mean (L+1), centre (1), square (1), mean (L+1), +eps, rsqrt, *centred (3); weight *, bias +."""
    shape = call.bound["normalized_shape"]
    n = prod(shape) if shape else 1
    core = 2 * (lg(n) + 1) + 5
    weight = call.bound.get("weight") is not None
    bias = call.bound.get("bias") is not None
    return {"input": core + int(weight) + int(bias), "weight": 1 + int(bias), "bias": 1, "*": 0}


def _rms_norm(call: OpCall) -> dict[str, int]:
    """square (1), mean (L+1), +eps (1), rsqrt (1), multiply (1); times the weight (1)."""
    shape = call.bound.get("normalized_shape")
    n = prod(shape) if shape else call.self_tensor.shape[-1]
    weight = call.bound.get("weight") is not None
    return {"input": lg(n) + 5 + int(weight), "weight": 1, "*": 0}


def _where(call: OpCall) -> int:
    """select_n with 2 choices: ceil(log2 2) = 1."""
    return 1


def _topk(call: OpCall) -> int:
    return lg(_axis_length(call))


def _multinomial(call: OpCall) -> int:
    """Gumbel-max, as jax.random.categorical: log(p) + gumbel noise (1), add (1), argmax (ceil(log2 n))."""
    return lg(call.self_tensor.shape[-1]) + 2


def _nonzero(call: OpCall) -> int:
    """Compaction: a test (1) and a prefix sum over the elements (ceil(log2 n))."""
    return lg(call.self_tensor.numel()) + 1


def _index_put(call: OpCall) -> int:
    return 1 if call.bound.get("accumulate") else 0


def _scatter(call: OpCall) -> int:
    return 1 if call.bound.get("reduce") is not None else 0


MOVE = Rule(_const(0))
ELEMENTWISE = Rule(_const(1))
REF_ZERO_ELEMENTWISE = Rule(_const(1), reference=_const(0), note="unknown to the reference tool (costed 0 there)")

_MOVEMENT = """
view _unsafe_view reshape as_strided transpose t permute expand expand_as slice select unsqueeze squeeze
cat stack split split_with_sizes chunk unbind narrow index _unsafe_index index_select gather take embedding
diagonal unfold repeat tile flip roll constant_pad_nd reflection_pad1d reflection_pad2d replication_pad1d
replication_pad2d movedim pixel_shuffle diag_embed index_copy index_fill masked_scatter slice_scatter
select_scatter diagonal_scatter as_strided_scatter clone alias detach lift_fresh lift_fresh_copy
_reshape_alias view_as_real view_as_complex squeeze_copy unsqueeze_copy permute_copy view_copy
expand_copy t_copy transpose_copy slice_copy select_copy split_copy alias_copy detach_copy
contiguous _unsafe_view_copy
""".split()

_CONSTANTS = """
zeros ones full empty empty_like zeros_like ones_like full_like empty_strided scalar_tensor new_empty
new_zeros new_ones new_full new_empty_strided fill zero_ fill_ _efficientzerotensor
""".split()

_ELEMENTWISE = """
add sub rsub mul div true_divide neg abs exp sqrt rsqrt pow tanh sin cos sigmoid relu maximum minimum
eq ne lt gt ge logical_and logical_or logical_not bitwise_and bitwise_or bitwise_not reciprocal sign sgn
remainder fmod isfinite isnan masked_fill arange log square fmax fmin clamp_min clamp_max
threshold
""".split()

# Elementwise math the reference tool has no rule for: 0 there, 1 here.
_REF_ZERO_ELEMENTWISE = """
le erf erfinv erfc floor ceil round trunc log1p expm1 exp2 tan atan asin acos atan2 sinh cosh asinh
acosh atanh logical_xor bitwise_xor bitwise_left_shift bitwise_right_shift __lshift__ __rshift__ lgamma
digamma
""".split()

_RANDOM = """
rand randn randint randperm rand_like randn_like randint_like normal uniform bernoulli random
exponential geometric cauchy log_normal poisson normal_ uniform_ bernoulli_ random_ exponential_
geometric_ cauchy_ log_normal_
""".split()

RULES: dict[str, Rule] = {}
RULES.update({name: MOVE for name in _MOVEMENT})
RULES.update({name: MOVE for name in _CONSTANTS})
RULES.update({name: ELEMENTWISE for name in _ELEMENTWISE})
RULES.update({name: REF_ZERO_ELEMENTWISE for name in _REF_ZERO_ELEMENTWISE})
RULES.update({name: Rule(_const(1), note="random draw costed 1 (random ops are depth 1 in the reference)")
              for name in _RANDOM})
RULES.update(
    {
        # data movement that writes (scatter without reduction): 0
        "scatter": Rule(_scatter, reference=_const(0),
                        note="scatter with a reduction is an add (1); the reference costs scatter-add 0"),
        "index_put": Rule(_index_put, reference=_const(0),
                          note="index_put with accumulate=True is an add (1); the reference costs scatter-add 0"),
        "_index_put_impl": Rule(_index_put, reference=_const(0),
                                note="index_put with accumulate=True is an add (1); the reference costs scatter-add 0"),
        "index_add": Rule(_const(1), reference=_const(0), note="scatter-add is an add (1); the reference costs it 0"),
        "scatter_add": Rule(_const(1), reference=_const(0), note="scatter-add is an add (1); the reference costs it 0"),
        "scatter_reduce": Rule(_const(1), reference=_const(0),
                               note="scatter-reduce is one combine (1); the reference costs it 0"),
        "copy": Rule(_copy),
        "copy_": Rule(_copy),
        "_to_copy": Rule(_to_copy),
        "_assert_tensor_metadata": MOVE,
        "_assert_async": MOVE,
        "_functional_assert_async": MOVE,
        "linspace": Rule(_const(3), note="linspace = iota, scale, shift (3)"),
        "tril": Rule(_where, note="tril/triu = select against an iota mask (1)"),
        "triu": Rule(_where, note="tril/triu = select against an iota mask (1)"),
        "where": Rule(_where),
        "clamp": Rule(_clamp),
        "clip": Rule(_clamp),
        "hardtanh": Rule(_const(2), note="hardtanh = clip to [min, max]: maximum then minimum (2)"),
        "addcmul": Rule(lambda call: {"self": 1, "*": 2}),
        "addcdiv": Rule(lambda call: {"self": 1, "*": 2}),
        "lerp": Rule(lambda call: {"weight": 2, "*": 3}),
        "log2": Rule(_const(2), note="log2 = log / log 2 (2)"),
        "log10": Rule(_const(2), note="log10 = log / log 10 (2)"),
        "isinf": Rule(_const(2), note="isinf = |x| == inf (2)"),
        "nan_to_num": Rule(_const(3), note="nan_to_num = three selects (3)"),
        "frac": Rule(_const(2), reference=_const(1), note="frac = x - trunc(x); trunc is 0 in the reference"),
        "floor_divide": Rule(_const(2), reference=_const(1), note="floor_divide = div + floor; floor is 0 in the reference"),
        "silu": Rule(_const(2), note="silu = x * sigmoid(x) (2)"),
        "gelu": Rule(_gelu(1), reference=_gelu(0),
                     note="gelu costed as its jax.nn.gelu decomposition (tanh: 8; exact: 4 + erf, erf 0 in the reference)"),
        "softplus": Rule(_const(2), note="softplus = log(1 + exp(x)) (2)"),
        "leaky_relu": Rule(_const(2), note="leaky_relu = where(x > 0, x, a x) (2)"),
        "elu": Rule(_const(3), note="elu = where(x > 0, x, a (exp(x) - 1)) (3)"),
        "hardsigmoid": Rule(_const(2), note="hardsigmoid = clip(x/6 + 1/2) (2)"),
        "hardswish": Rule(_const(3), note="hardswish = x * hardsigmoid(x) (3)"),
        # reductions
        "sum": Rule(_reduce()),
        "nansum": Rule(_reduce(1), note="nansum = select then sum"),
        "amax": Rule(_reduce()),
        "amin": Rule(_reduce()),
        "max": Rule(_max_min),
        "min": Rule(_max_min),
        "argmax": Rule(_reduce()),
        "argmin": Rule(_reduce()),
        "any": Rule(_reduce()),
        "all": Rule(_reduce()),
        "mean": Rule(_reduce(1)),  # jnp.mean = reduce_sum + div
        "prod": Rule(_reduce(), reference=_const(0), note="reduce_prod is unknown to the reference (0 there)"),
        "count_nonzero": Rule(_reduce(1)),
        "var": Rule(_var),  # jnp.var = mean, centre, square, mean
        "var_mean": Rule(_var),
        "std": Rule(lambda call: _var(call, 1), note="std = sqrt(var) (2 ceil(log2 n) + 5)"),
        "std_mean": Rule(lambda call: _var(call, 1), note="std = sqrt(var) (2 ceil(log2 n) + 5)"),
        "norm": Rule(_norm, note="p-norm = power, sum, root (ceil(log2 n) + 2)"),
        "linalg_vector_norm": Rule(_norm, note="p-norm = power, sum, root (ceil(log2 n) + 2)"),
        "logsumexp": Rule(_logsumexp, note="logsumexp = max, subtract, exp, sum, log, add (2 ceil(log2 n) + 4)"),
        "cumsum": Rule(_cumulative),
        "cumprod": Rule(_cumulative, reference=_const(0), note="cumprod is unknown to the reference (0 there)"),
        "cummax": Rule(_cumulative, reference=_const(0), note="cummax is unknown to the reference (0 there)"),
        "cummin": Rule(_cumulative, reference=_const(0), note="cummin is unknown to the reference (0 there)"),
        "logcumsumexp": Rule(lambda call: _cumulative(call) + 2, reference=_const(0),
                             note="logcumsumexp is unknown to the reference (0 there)"),
        "topk": Rule(_topk),
        "sort": Rule(_topk, reference=_const(0),
                     note="sort costed like top-k (ceil(log2 n)); the reference has no rule for sort (0 there)"),
        "kthvalue": Rule(_topk, reference=_const(0), note="selection costed like top-k; unknown to the reference"),
        "median": Rule(_topk, reference=_const(0), note="selection costed like top-k; unknown to the reference"),
        "histc": Rule(lambda call: lg(call.self_tensor.numel()) + 1, reference=_const(0),
                      note="histc = compare (1) + count (ceil(log2 n)); unknown to the reference"),
        "searchsorted": Rule(lambda call: lg(call.bound["sorted_sequence"].shape[-1]), reference=_const(0),
                             note="binary search (ceil(log2 n)); the reference's scan-based version is uncosted"),
        "nonzero": Rule(_nonzero, reference=_const(0),
                        note="nonzero = test + prefix sum; unknown to the reference (and data-dependent)"),
        "multinomial": Rule(_multinomial, note="sampling costed as Gumbel-max (ceil(log2 n) + 2)"),
        # softmax family
        "_softmax": Rule(_softmax, note="softmax = max-reduce, sub, exp, sum-reduce, div (2 ceil(log2 n) + 3)"),
        "_safe_softmax": Rule(_safe_softmax, note="safe softmax = softmax + select for all-masked rows (+1)"),
        "_log_softmax": Rule(_log_softmax, note="log_softmax = 2 ceil(log2 n) + 4"),
        "native_layer_norm": Rule(_native_layer_norm, note="layer norm costed as its two-pass decomposition"),
        "_fused_rms_norm": Rule(_rms_norm, note="rms norm = square, mean, +eps, rsqrt, mul (+ weight)"),
        "rms_norm": Rule(_rms_norm, note="rms norm = square, mean, +eps, rsqrt, mul (+ weight)"),
        # matmuls
        "mm": Rule(_mm, reference=_moe_matmul(_mm)),
        "bmm": Rule(_mm, reference=_moe_matmul(_mm)),
        "mv": Rule(_mm, reference=_moe_matmul(_mm)),
        "dot": Rule(_mm),
        "vdot": Rule(_mm),
        "addmm": Rule(_addmm, reference=_moe_matmul(_addmm)),
        "addmv": Rule(_addmm),
        "baddbmm": Rule(_addmm, reference=_moe_matmul(_addmm)),
        "addbmm": Rule(lambda call: {"self": 1, "*": matmul_cost(call.bound["batch1"].shape[0] * call.bound["batch1"].shape[-1]) + 1}),
        "addr": Rule(lambda call: {"self": 1, "*": 2}),
        "_grouped_mm": Rule(_grouped_mm, reference=_const(0),
                            note="grouped (MoE) matmul costed as a matmul; the reference costs grouped matmuls 0"),
        "_scaled_mm": Rule(_mm),
        "_int_mm": Rule(_mm),
        "linear": Rule(_linear),
        "convolution": Rule(_convolution, note="convolution = matmul over C_in x kernel"),
        "_convolution": Rule(_convolution, note="convolution = matmul over C_in x kernel"),
        # fused attention: costed as the math decomposition
        **{
            name: Rule(_sdpa, note="fused attention costed as its math decomposition (QK^T, mask, softmax, PV)")
            for name in (
                "_scaled_dot_product_flash_attention_for_cpu",
                "_scaled_dot_product_flash_attention",
                "_scaled_dot_product_efficient_attention",
                "_scaled_dot_product_cudnn_attention",
                "_scaled_dot_product_fused_attention_overrideable",
            )
        },
    }
)

# Ops the MoE-experts region re-costs under the reference rules (grouped matmuls are 0 there).
MOE_MATMULS = frozenset({"mm", "bmm", "mv", "addmm", "baddbmm"})
MOE_NOTE = ("grouped MoE expert matmul: 0 under the reference rules (its grouped matmuls are uncosted), "
            "ceil(log2 n) + 1 under the corrected rules")

# Ops that produce no tensor and need no cost.
NO_OUTPUT = frozenset({"record_stream", "_local_scalar_dense", "set_", "resize_", "sym_size", "sym_numel",
                       "sym_stride", "sym_storage_offset", "is_same_size", "_has_compatible_shallow_copy_type",
                       "equal"})


def lookup(name: str) -> Rule | None:
    """The rule for an aten op packet name (`add_` falls back to `add`)."""
    rule = RULES.get(name)
    if rule is None and name.endswith("_") and not name.startswith("__"):
        rule = RULES.get(name[:-1])
    return rule


def cost_of(rule: Rule, call: OpCall, rules: str):
    """Evaluate a rule under a rule set: an int, or {argument name: cost, "*": default}."""
    if rules == "reference" and rule.reference is not None:
        return rule.reference(call)
    return rule.cost(call)
