"""Trace aten operations and keep a serial depth per tensor.

`DepthTracer` is a `TorchDispatchMode`: every aten op the traced code runs passes through it with
concrete shapes (on any device, the meta device included, where a full-size model needs no weights).
Each storage carries a `Depth`; an op's outputs get `max(input depth + cost)` (see `rules.py`).

Depths are *max-plus linear* in the depths of the inputs, so the tracer keeps, per tensor, the longest
path weight from each named *source* (a symbolic input such as "the previous step's logits") as well as
from constants: `paths = {"sc": 120, CONST: 95}` means depth = max(depth(sc) + 120, 95). One trace
therefore answers "what is the depth for any depth of sc", which is how `compose.py` chains passes
without retracing.

Granularity is the storage, like the reference's per-array granularity: views share their base's depth,
an in-place op updates the depth of what it mutates, and a partial write (a slice of a buffer) can only
raise the buffer's depth.
"""

from __future__ import annotations

import contextlib
import warnings
from collections import Counter
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Callable, Iterator, Mapping

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode

from dgt_interp.errors import DgtInterpError

from . import rules as _rules

CONST = "const"
ON_UNKNOWN = ("error", "warn")

# Ops that overwrite their mutated argument without reading it.
_OVERWRITES = frozenset(
    {"copy_", "fill_", "zero_", "normal_", "uniform_", "random_", "bernoulli_", "exponential_",
     "geometric_", "cauchy_", "log_normal_"}
)


class DepthError(DgtInterpError, ValueError):
    """Bad serial-depth input (one-line message that says what to do)."""


class UnknownOpError(RuntimeError):
    """An aten op with no cost rule was traced with on_unknown='error'."""


class Depth:
    """Longest-path weights of one value from each source: depth = max(depth(source) + weight)."""

    __slots__ = ("paths", "value", "record")

    def __init__(self, paths: dict[str, int], value: int, record: int = -1):
        self.paths = paths
        self.value = value  # depth with the tracer's source depths (for the critical path)
        self.record = record  # index of the op record that set `value` (-1: a source)

    def __repr__(self) -> str:
        return f"Depth({self.value}, paths={self.paths})"


@dataclass
class DepthReport:
    """What `serial_depth(..., return_report=True)` returns.

    depth: the serial depth of the outputs (max over output tensors).
    outputs: depth per named output (the keys of a dict/ModelOutput, or indices of a tuple).
    paths: longest path from each source to the outputs (CONST = from constants and depth-0 inputs);
        the depth for other source depths is max(source depth + path).
    op_counts: aten op -> number of calls.
    critical_path: aten op -> depth it contributes along the deepest path (sums to `depth` minus the
        depth the path starts from).
    deviations: one line per op costed with a documented approximation or a gap of the reference rules.
    unknown_ops: ops with no rule (costed 0 with on_unknown='warn').
    warnings: other things the trace could not follow (e.g. a Python scalar read from an opaque value).
    """

    depth: int
    rules: str
    outputs: dict[str, int] = field(default_factory=dict)
    paths: dict[str, int] = field(default_factory=dict)
    op_counts: dict[str, int] = field(default_factory=dict)
    critical_path: dict[str, int] = field(default_factory=dict)
    deviations: list[str] = field(default_factory=list)
    unknown_ops: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    num_ops: int = 0

    def summary(self, top: int = 12) -> str:
        """A short text table: depth, the ops that build the deepest path, deviations."""
        lines = [f"serial depth {self.depth} ({self.rules} rules, {self.num_ops} aten ops traced)"]
        if self.outputs and len(self.outputs) > 1:
            lines.append("  outputs: " + ", ".join(f"{k}={v}" for k, v in self.outputs.items()))
        if len(self.paths) > 1:
            lines.append("  paths: " + ", ".join(f"{k}: +{v}" for k, v in self.paths.items()))
        lines.append("  deepest path by op:")
        for op, d in sorted(self.critical_path.items(), key=lambda kv: -kv[1])[:top]:
            lines.append(f"    {op:40s} {d:6d}")
        for d in self.deviations:
            lines.append(f"  deviation: {d}")
        for u in self.unknown_ops:
            lines.append(f"  UNKNOWN (costed 0): {u}")
        for w in self.warnings:
            lines.append(f"  warning: {w}")
        return "\n".join(lines)


def iter_tensors(obj: Any, _depth: int = 0) -> Iterator[torch.Tensor]:
    """Tensors inside nested lists/tuples/dicts/ModelOutputs/dataclasses and transformers Caches."""
    if _depth > 8:
        return
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from iter_tensors(v, _depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from iter_tensors(v, _depth + 1)
    elif hasattr(obj, "layers") and isinstance(getattr(obj, "layers"), (list, tuple)):  # transformers Cache
        for layer in obj.layers:
            for name in ("keys", "values"):
                t = getattr(layer, name, None)
                if isinstance(t, torch.Tensor):
                    yield t
    elif is_dataclass(obj) and not isinstance(obj, type):
        for f in fields(obj):
            yield from iter_tensors(getattr(obj, f.name), _depth + 1)


def named_outputs(obj: Any) -> dict[str, Any]:
    """Top-level named parts of an output (dict keys, tuple indices), for per-output depths."""
    if isinstance(obj, Mapping):
        return {str(k): v for k, v in obj.items() if v is not None}
    if isinstance(obj, (list, tuple)):
        return {str(i): v for i, v in enumerate(obj)}
    return {}


def _is_experts_module(module: torch.nn.Module) -> bool:
    """transformers MoE experts modules (decorated with `use_experts_implementation`)."""
    return hasattr(type(module), "_apply_gate") and hasattr(module, "gate_up_proj")


_ACTIVE: list["DepthTracer"] = []


class DepthTracer(TorchDispatchMode):
    """Context manager that traces aten ops and keeps a serial depth per tensor.

    >>> with DepthTracer(rules="reference") as tracer:
    ...     y = model(x)
    >>> tracer.depth(y), tracer.report(y).summary()

    rules: "reference" (the published tool, gaps included) or "corrected" (see `rules.py`).
    on_unknown: "error" raises on an op with no rule; "warn" costs it 0, warns once and lists it.
    models: modules whose MoE experts are switched to transformers' "batched_mm" implementation while
        tracing (no data-dependent shapes, so it runs on meta; same math and depth as the routed
        experts) and whose expert matmuls count as grouped matmuls under the reference rules.
    extra_rules: {aten op name: cost int or callable(OpCall) -> int | {arg: cost}} to add or override.
    """

    def __init__(
        self,
        rules: str = "reference",
        on_unknown: str = "error",
        models: torch.nn.Module | list[torch.nn.Module] | None = None,
        extra_rules: dict[str, int | Callable] | None = None,
    ):
        super().__init__()
        if rules not in _rules.RULE_SETS:
            raise DepthError(f"unknown rules {rules!r}; choose one of: {', '.join(_rules.RULE_SETS)}")
        if on_unknown not in ON_UNKNOWN:
            raise DepthError(f"unknown on_unknown {on_unknown!r}; choose one of: {', '.join(ON_UNKNOWN)}")
        self.rules = rules
        self.on_unknown = on_unknown
        self.models = [models] if isinstance(models, torch.nn.Module) else list(models or [])
        self.extra_rules = {
            name: (_rules.Rule(_rules._const(c)) if isinstance(c, int) else _rules.Rule(c))
            for name, c in (extra_rules or {}).items()
        }
        self.source_depths: dict[str, int] = {CONST: 0}
        self._values: dict[int, tuple[StorageWeakRef, Depth]] = {}
        self._records: list[tuple[str, int, int]] = []  # (op, depth added, parent record)
        self.op_counts: Counter[str] = Counter()
        self._deviations: Counter[str] = Counter()
        self._unknown: Counter[str] = Counter()
        self.warnings: list[str] = []
        self._in_experts = 0
        self._exit_stack: contextlib.ExitStack | None = None

    # ---- entering / leaving -------------------------------------------------------------------
    def __enter__(self):
        self._exit_stack = contextlib.ExitStack()
        for model in self.models:
            self._exit_stack.enter_context(dense_experts(model, self))
        _ACTIVE.append(self)
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            _ACTIVE.remove(self)
            if self._exit_stack is not None:
                self._exit_stack.close()

    # ---- depth per tensor -----------------------------------------------------------------------
    @staticmethod
    def _key(t: torch.Tensor) -> StorageWeakRef | None:
        try:
            return StorageWeakRef(t.untyped_storage())
        except (RuntimeError, NotImplementedError, TypeError):
            return None

    def _get(self, t: torch.Tensor) -> Depth | None:
        ref = self._key(t)
        if ref is None:
            return None
        entry = self._values.get(ref.cdata)
        if entry is None:
            return None
        if entry[0].expired():  # the storage died and its address was reused
            del self._values[ref.cdata]
            return None
        return entry[1]

    def _put(self, t: torch.Tensor, value: Depth, *, partial_ok: bool = True) -> None:
        ref = self._key(t)
        if ref is None:
            return
        if partial_ok and not _covers_storage(t):
            old = self._get(t)
            if old is not None:
                value = _merge([(old, 0), (value, 0)], record=value.record if value.value >= old.value else old.record)
        self._values[ref.cdata] = (ref, value)

    def value_of(self, t: torch.Tensor) -> Depth:
        """The `Depth` of a tensor (constants and unseen tensors: depth 0 from CONST)."""
        v = self._get(t)
        return v if v is not None else Depth({CONST: 0}, 0)

    def depth(self, obj: Any) -> int:
        """Serial depth of a tensor or of the deepest tensor inside a nested output."""
        return max((self.value_of(t).value for t in iter_tensors(obj)), default=0)

    def paths(self, obj: Any) -> dict[str, int]:
        """Longest path from each source to (the deepest of) the tensors in `obj`."""
        out: dict[str, int] = {}
        for t in iter_tensors(obj):
            for s, w in self.value_of(t).paths.items():
                if w > out.get(s, -1):
                    out[s] = w
        return out

    def set_depth(self, obj: Any, depth: int | str = 0) -> None:
        """Give every tensor in `obj` a depth: an int (e.g. 0 for an interpretable input) or a source name.

        A source name makes the depth symbolic: later `paths()` report the longest path from it, and its
        concrete depth is `tracer.source_depths[name]` (0 unless set).
        """
        for t in iter_tensors(obj):
            if isinstance(depth, str):
                base = self.source_depths.setdefault(depth, 0)
                self._put(t, Depth({depth: 0}, base), partial_ok=False)
            else:
                self._put(t, Depth({CONST: int(depth)}, int(depth)), partial_ok=False)

    # ---- the dispatch hook ----------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self._trace(func, args, kwargs, out)
        return out

    def _trace(self, func, args, kwargs, out) -> None:
        name = func._overloadpacket.__name__
        namespace = getattr(func, "namespace", "aten")
        label = f"{namespace}.{name}"
        self.op_counts[label] += 1
        if name in _rules.NO_OUTPUT:
            if name == "_local_scalar_dense":
                d = self.value_of(args[0]).value
                if d > 0:
                    self._warn(f"aten._local_scalar_dense: a Python scalar was read from a value of depth {d}; "
                               "control flow on it is not tracked")
            return

        schema = func._schema
        bound: dict[str, Any] = {}
        written: list[torch.Tensor] = []
        read: list[tuple[str, torch.Tensor]] = []
        overwrite = name in _OVERWRITES
        for i, a in enumerate(schema.arguments):
            if i < len(args) and not a.kwarg_only:
                value = args[i]
            else:
                value = kwargs.get(a.name, None)
            bound[a.name] = value
            is_write = a.alias_info is not None and a.alias_info.is_write
            tensors = [value] if isinstance(value, torch.Tensor) else (
                [v for v in value if isinstance(v, torch.Tensor)] if isinstance(value, (list, tuple)) else [])
            if is_write:
                written.extend(tensors)
                if a.name == "out" or a.name.startswith("out") or overwrite:
                    continue  # written, not read
            read.extend((a.name, t) for t in tensors)

        rule = self.extra_rules.get(name) or (_rules.lookup(name) if namespace == "aten" else None)
        call = _rules.OpCall(func, name, bound, self._in_experts > 0)
        if rule is None:
            self._unknown[label] += 1
            if self.on_unknown == "error":
                raise UnknownOpError(
                    f"serial_depth has no cost rule for {label} ({func}); pass on_unknown='warn' to cost it 0 "
                    f"and list it, or extra_rules={{'{name}': <cost>}} to cost it"
                )
            if self._unknown[label] == 1:
                warnings.warn(f"serial_depth: no cost rule for {label}; costed 0 (listed in the report)",
                              stacklevel=2)
            cost = 0
        else:
            cost = _rules.cost_of(rule, call, self.rules)
            if call.in_experts and name in _rules.MOE_MATMULS:
                self._deviations[f"{label}: {_rules.MOE_NOTE}"] += 1
            elif rule.note:
                self._deviations[f"{label}: {rule.note}"] += 1

        inputs = [(self.value_of(t), _offset(cost, arg)) for arg, t in read]
        if not inputs:
            c = cost if isinstance(cost, int) else cost.get("*", 0)
            new = Depth({CONST: c}, c, self._record(label, c, -1))
        else:
            new = _merge(inputs, tracer=self, label=label)

        outs = [t for t in iter_tensors(out)] if not isinstance(out, torch.Tensor) else [out]
        written_ids = {id(t) for t in written}
        for t in written:
            self._put(t, new)
        for t in outs:
            if id(t) not in written_ids:
                self._put(t, new, partial_ok=False)

    def _record(self, label: str, added: int, parent: int) -> int:
        self._records.append((label, added, parent))
        return len(self._records) - 1

    def _warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)
            warnings.warn(f"serial_depth: {message}", stacklevel=3)

    # ---- marks ----------------------------------------------------------------------------------
    def reset(self, t: torch.Tensor, depth: int = 0) -> torch.Tensor:
        """A copy of `t` that starts a new opaque stretch at `depth` (see `interpretable`)."""
        fresh = t.clone()
        self._put(fresh, Depth({CONST: depth}, depth, self._record("interpretable (reset)", 0, -1)),
                  partial_ok=False)
        return fresh

    # ---- the report -----------------------------------------------------------------------------
    def critical_path(self, obj: Any) -> dict[str, int]:
        """aten op -> depth it adds along the deepest path into `obj`."""
        deepest = None
        for t in iter_tensors(obj):
            v = self.value_of(t)
            if deepest is None or v.value > deepest.value:
                deepest = v
        contributions: Counter[str] = Counter()
        rec = deepest.record if deepest is not None else -1
        while rec >= 0:
            label, added, parent = self._records[rec]
            if added:
                contributions[label] += added
            rec = parent
        return dict(contributions)

    def report(self, obj: Any) -> DepthReport:
        """A `DepthReport` for the tensors in `obj` (typically the traced function's output)."""
        outputs = {k: self.depth(v) for k, v in named_outputs(obj).items() if any(True for _ in iter_tensors(v))}
        return DepthReport(
            depth=self.depth(obj),
            rules=self.rules,
            outputs=outputs,
            paths=self.paths(obj),
            op_counts=dict(self.op_counts),
            critical_path=self.critical_path(obj),
            deviations=[f"{k} (x{n})" for k, n in self._deviations.items()],
            unknown_ops=[f"{k} (x{n})" for k, n in self._unknown.items()],
            warnings=list(self.warnings),
            num_ops=sum(self.op_counts.values()),
        )


def _offset(cost, arg: str) -> int:
    if isinstance(cost, int):
        return cost
    return cost.get(arg, cost.get("*", 0))


def _merge(inputs: list[tuple[Depth, int]], tracer: DepthTracer | None = None, label: str = "",
           record: int = -1) -> Depth:
    """max-plus combination: paths[s] = max_i(paths_i[s] + offset_i); value likewise."""
    paths: dict[str, int] = {}
    best_value, best_rec, best_in, best_off = -1, -1, -1, 0
    for d, off in inputs:
        for s, w in d.paths.items():
            w += off
            if w > paths.get(s, -1):
                paths[s] = w
        if d.value + off > best_value:
            best_value, best_rec, best_in, best_off = d.value + off, d.record, d.value, off
    if tracer is not None:
        record = tracer._record(label, best_off, best_rec)
    return Depth(paths, best_value, record)


def _covers_storage(t: torch.Tensor) -> bool:
    """Whether writing `t` overwrites its whole storage (so the old depth is gone)."""
    try:
        return t.is_contiguous() and t.numel() * t.element_size() >= t.untyped_storage().nbytes()
    except (RuntimeError, NotImplementedError):
        return True


@contextlib.contextmanager
def dense_experts(model: torch.nn.Module, tracer: DepthTracer | None = None):
    """Switch MoE experts to 'batched_mm' and flag their region, restoring both afterwards.

    transformers' default experts forward loops over the experts that were hit (`nonzero`, data-dependent
    shapes: impossible on meta). 'batched_mm' gathers each token's top-k expert weights and runs one bmm:
    the same products, no data-dependent shape, and the same depth as the routed computation (the
    gathered weights carry the router's depth, the top-k sum is a reduction over k).
    """
    saved = None
    if hasattr(model, "get_experts_implementation") and hasattr(model, "set_experts_implementation"):
        try:
            saved = model.get_experts_implementation()
            model.set_experts_implementation("batched_mm")
        except (ValueError, KeyError, AttributeError):
            saved = None
    handles = []

    def enter(module, args):
        tracer._in_experts += 1

    def leave(module, args, output):
        tracer._in_experts -= 1

    for module in model.modules() if tracer is not None else ():
        if _is_experts_module(module):
            handles.append(module.register_forward_pre_hook(enter))
            handles.append(module.register_forward_hook(leave))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        if saved is not None:
            try:
                model.set_experts_implementation(saved)
            except (ValueError, KeyError, AttributeError):
                pass


def interpretable(t: torch.Tensor, depth: int = 0) -> torch.Tensor:
    """Mark `t` as an interpretable state (a token a person can read): depth restarts at `depth`.

    Call it inside a traced function on the value a human reads (sampled or argmax tokens, a bottlenecked
    self-conditioning distribution). It returns a copy whose depth is `depth`; the original keeps its
    depth. Outside a trace it returns `t` unchanged, so model code can call it freely.
    """
    if not _ACTIVE:
        return t
    return _ACTIVE[-1].reset(t, depth)


def current_tracer() -> DepthTracer | None:
    """The innermost active `DepthTracer` (None outside a trace)."""
    return _ACTIVE[-1] if _ACTIVE else None


def serial_depth(
    module_or_fn: torch.nn.Module | Callable,
    *inputs: Any,
    rules: str = "reference",
    on_unknown: str = "error",
    input_depths: dict[int | str, int | str] | None = None,
    extra_rules: dict[str, int | Callable] | None = None,
    return_report: bool = False,
    **kwargs: Any,
) -> int | DepthReport:
    """Opaque serial depth of `module_or_fn(*inputs, **kwargs)`: the longest chain of dependent ops.

    Every input is interpretable (depth 0) unless `input_depths` says otherwise: {positional index or
    keyword name: int depth or source name}. A source name makes the input symbolic; the report's
    `paths[name]` is then the longest path from it (depth for any input depth d = max(d + path, ...)).
    Mark interpretable states inside the function with `interpretable(t)`.

    Runs the function once under a `DepthTracer` (no gradients). Use meta tensors and a meta model to
    analyse a full-size model without weights.

    >>> mlp = nn.Sequential(nn.Linear(1, 8, bias=False), nn.ReLU(), nn.Linear(8, 8, bias=False),
    ...                     nn.ReLU(), nn.Linear(8, 1, bias=False))
    >>> serial_depth(mlp, torch.zeros(1))   # 2 + 5 + 4, as in google-deepmind/serial_depth
    11
    """
    models = [module_or_fn] if isinstance(module_or_fn, torch.nn.Module) else []
    models += [v for v in (*inputs, *kwargs.values()) if isinstance(v, torch.nn.Module)]
    tracer = DepthTracer(rules=rules, on_unknown=on_unknown, models=models, extra_rules=extra_rules)
    for key, depth in (input_depths or {}).items():
        if isinstance(key, int):
            if not 0 <= key < len(inputs):
                raise DepthError(f"input_depths names input {key} but only {len(inputs)} positional inputs were given")
            tracer.set_depth(inputs[key], depth)
        else:
            if key not in kwargs:
                raise DepthError(f"input_depths names {key!r}, which is not a keyword input; "
                                 f"pass it as {key}=... or use its position")
            tracer.set_depth(kwargs[key], depth)
    with torch.no_grad(), tracer:
        out = module_or_fn(*inputs, **kwargs)
    report = tracer.report(out)
    return report if return_report else report.depth
