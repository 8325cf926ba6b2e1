"""RRConfig: every algorithmic setting of RRAttention, validated on construction.

Field meanings follow ``spec.md``; the defaults reproduce the authors' model behaviour (spec §7.3).
"""

from __future__ import annotations

import dataclasses
import json
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Mapping

HEAD_SHIFTS = ("round_robin", "fixed", "random", "group_round_robin")
SELECTORS = ("top_tau", "forced_first")
ESTIMATOR_PRECISIONS = ("exact", "fast")

# Fields a layer override may not change: they describe the whole model, not one layer.
_MODEL_WIDE_FIELDS = ("dense_layers", "seed", "layer_overrides")


def _check_int(name: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _check_fraction(name: str, value: Any) -> float:
    """A float in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float in (0, 1], got {type(value).__name__} {value!r}")
    if not (0.0 < float(value) <= 1.0):  # also rejects NaN
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    return float(value)


def _layer_index(name: str, key: Any) -> int:
    # JSON turns integer keys into strings; accept those back.
    if isinstance(key, str) and key.strip().isdigit():
        key = int(key)
    return _check_int(name, key, minimum=0)


class AttentionConfig:
    """Shared behaviour of the frozen, validated settings dataclasses of every method.

    A concrete config declares ``method`` (its registry name) and the fields ``block_size``,
    ``min_sparse_len`` (an int, or None for the measured crossover), ``dense_layers`` and ``layer_overrides``; its ``__post_init__`` checks its
    own fields, then calls :meth:`_validate_common`.
    """

    method: ClassVar[str]

    def _validate_common(self) -> None:
        set_ = object.__setattr__.__get__(self)
        set_("block_size", _check_int("block_size", self.block_size, minimum=1))
        if self.min_sparse_len is not None:
            set_("min_sparse_len", _check_int("min_sparse_len", self.min_sparse_len, minimum=0))
        if hasattr(self, "seed"):
            set_("seed", _check_int("seed", self.seed, minimum=0))
        if isinstance(self.dense_layers, (str, bytes)) or not hasattr(self.dense_layers, "__iter__"):
            raise TypeError(f"dense_layers must be a sequence of layer indices, got {self.dense_layers!r}")
        layers = {_check_int(f"dense_layers[{i}]", x, minimum=0) for i, x in enumerate(self.dense_layers)}
        set_("dense_layers", tuple(sorted(layers)))
        set_("layer_overrides", self._validated_overrides(self.layer_overrides))

    def _validated_overrides(self, overrides: Any) -> Mapping[int, Mapping[str, Any]]:
        if not isinstance(overrides, Mapping):
            raise TypeError(f"layer_overrides must be a mapping {{layer: {{field: value}}}}, got {overrides!r}")
        names = {f.name for f in dataclasses.fields(self)}
        base = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _MODEL_WIDE_FIELDS}
        resolved = {}
        for key, update in overrides.items():
            layer = _layer_index(f"layer_overrides key {key!r}", key)
            where = f"layer_overrides[{layer}]"
            if not isinstance(update, Mapping):
                raise TypeError(f"{where} must be a mapping {{field: value}}, got {update!r}")
            for name in update:
                if name in _MODEL_WIDE_FIELDS:
                    raise ValueError(f"{where} may not set {name!r}: it applies to the whole model")
                if name not in names:
                    raise ValueError(f"{where} sets unknown field {name!r}; expected one of {sorted(base)}")
            try:
                type(self)(**{**base, **update})
            except (TypeError, ValueError) as err:
                raise type(err)(f"{where}: {err}") from None
            resolved[layer] = MappingProxyType(dict(update))
        return MappingProxyType(dict(sorted(resolved.items())))

    def __hash__(self) -> int:
        return hash((type(self).__name__, json.dumps(self.to_dict(), sort_keys=True)))

    def for_layer(self, layer: int):
        """The configuration layer ``layer`` runs with: its overrides applied, none left pending.

        ``dense_layers`` (and ``seed``) are kept, so the result still answers :meth:`is_dense_layer`.
        """
        layer = _check_int("layer", layer, minimum=0)
        update = dict(self.layer_overrides.get(layer, {}))
        return dataclasses.replace(self, layer_overrides={}, **update)

    def layer_config(self, layer: int | None):
        """What :meth:`for_layer` returns, but ``self`` (no copy) for a layer without overrides: the
        form the per-call paths use."""
        return self.for_layer(layer) if layer in self.layer_overrides else self

    def is_dense_layer(self, layer: int | None) -> bool:
        return layer is not None and layer in self.dense_layers

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON/YAML-serialisable dict; ``type(cfg).from_dict(cfg.to_dict()) == cfg``."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["dense_layers"] = list(self.dense_layers)
        out["layer_overrides"] = {int(k): dict(v) for k, v in self.layer_overrides.items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        if not isinstance(data, Mapping):
            raise TypeError(f"{cls.__name__}.from_dict expects a mapping, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; expected a subset of {names}")
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path, key: str | None = None):
        """Load from a YAML file holding the fields (or holding them under ``key``)."""
        import yaml

        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
        if key is not None:
            if not isinstance(data, Mapping) or key not in data:
                raise ValueError(f"{path}: no top-level key {key!r}")
            data = data[key]
        if data is None:
            data = {}
        return cls.from_dict(data)


@dataclass(frozen=True)
class RRConfig(AttentionConfig):
    """Settings of RRAttention (spec.md §1–§6).

    Args:
        stride: ``S``, tokens per query/key stride; must divide ``block_size``.
        block_size: ``Bk``, tokens per square block of the sparse mask (kernels support 64 and 128).
        tau: ``τ`` in (0, 1], fraction of each block row's estimated mass to keep (§4).
        head_shift: sampling offset policy of §2: ``round_robin`` (the paper), ``fixed``,
            ``random`` or ``group_round_robin``.
        selector: ``top_tau`` (§4 steps 1–5) or ``forced_first`` (§4 step 6, the older rule).
        force_sink: always keep key block 0.
        force_diagonal: always keep the block holding each row's last query position.
        dense_last_query_block: keep every visible block of the last query-block row.
        exact_stride_causal: in the estimator, drop the keys of the diagonal stride that lie after
            the sampled query (they count as zero, the divisor stays ``S``); an ablation.
        estimator_precision: how the Triton estimator holds the fp32 stride-mean keys for 16-bit
            inputs: ``exact`` (two fp16 terms after a power-of-two scaling per tile of strides,
            22 bits of each fp32 mean down to 2^−17 of its tile's largest, and the sampled rows
            scaled into fp16 exactly) or ``fast`` (the mean
            rounded once to the input's dtype, as the paper's code does: one tensor-core product
            instead of two). fp32 inputs are exact either way; the reference backend rounds
            the fast mode's means the same way.
        min_sparse_len: calls with key length below this run dense attention (§6). ``None`` (the
            default): the dense/sparse crossover measured on the target GPU for the call's head dim
            and query/KV heads (:mod:`rrattention.crossover`, written by tools/measure_crossover.py).
        dense_layers: layer indices that always run dense attention.
        seed: seeds ``head_shift="random"``.
        layer_overrides: ``{layer: {field: value}}``; any field except ``dense_layers``, ``seed``
            and ``layer_overrides`` may differ per layer. Resolve with :meth:`for_layer`.
    """

    stride: int = 8
    block_size: int = 128
    tau: float = 0.95
    head_shift: str = "round_robin"
    selector: str = "top_tau"
    force_sink: bool = True
    force_diagonal: bool = True
    dense_last_query_block: bool = True
    exact_stride_causal: bool = False
    estimator_precision: str = "exact"
    min_sparse_len: int | None = None
    dense_layers: tuple[int, ...] = ()
    seed: int = 0
    layer_overrides: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)

    method: ClassVar[str] = "rrattention"
    __hash__ = AttentionConfig.__hash__

    def __post_init__(self) -> None:
        set_ = object.__setattr__.__get__(self)
        set_("stride", _check_int("stride", self.stride, minimum=1))
        set_("block_size", _check_int("block_size", self.block_size, minimum=1))
        if self.block_size % self.stride != 0:
            raise ValueError(
                f"block_size must be a multiple of stride (block_size % stride == 0), "
                f"got block_size={self.block_size}, stride={self.stride}"
            )
        set_("tau", _check_fraction("tau", self.tau))
        _check_choice("head_shift", self.head_shift, HEAD_SHIFTS)
        _check_choice("selector", self.selector, SELECTORS)
        _check_choice("estimator_precision", self.estimator_precision, ESTIMATOR_PRECISIONS)
        for name in ("force_sink", "force_diagonal", "dense_last_query_block", "exact_stride_causal"):
            _check_bool(name, getattr(self, name))
        self._validate_common()

    @property
    def strides_per_block(self) -> int:
        """``R = Bk / S``."""
        return self.block_size // self.stride
