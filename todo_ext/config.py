"""ToDo settings: one validated, immutable object that the engine, the WebUI glue and the benchmark share."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

METHODS = ("nearest", "nearest-exact", "avg-pool")
"""K/V downsampling methods: strided nearest neighbour (the paper's), centre-sampled nearest, average pooling."""

MAX_FACTOR = 8.0
MAX_RATIO = 1.0 - 1.0 / MAX_FACTOR**2
MAX_DEPTH = 3
MIN_AUTO_TARGET_TOKENS = 64
MAX_AUTO_TARGET_TOKENS = 1 << 20
DEFAULT_AUTO_TARGET_TOKENS = 64 * 64
_INTEGER_SNAP = 0.02


def ratio_to_factor(ratio: float) -> float:
    """Per-side downsample factor that removes `ratio` of the tokens (0.75 -> 2, 0.89 -> 3, 0.9375 -> 4).
    Factors within 2% of a whole number are snapped to it.
    """
    return _snap(1.0 / math.sqrt(1.0 - ratio))


def factor_to_ratio(factor: float) -> float:
    """Fraction of tokens removed by a per-side downsample `factor`."""
    return 1.0 - 1.0 / (factor * factor)


def _fail(name: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"ToDo: invalid {name}={value!r}; allowed: {allowed}")


def _check_number(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(name, value, f"a number from {low:g} to {high:g}")
    if not low <= value <= high:
        raise _fail(name, value, f"{low:g} to {high:g}")
    return float(value)


def _check_int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(name, value, f"a whole number from {low} to {high}")
    if not low <= value <= high:
        raise _fail(name, value, f"{low} to {high}")
    return value


@dataclass(frozen=True)
class ToDoConfig:
    """How ToDo downsamples keys and values.

    ratio: fraction of K/V tokens removed at depth 0 (0 = off, 0.75 = 2x per side, 0.89 = 3x, 0.9375 = 4x).
    max_depth: deepest attention level touched; depth 0 is the highest-resolution level with self-attention.
    method: one of METHODS.
    deeper_ratios: ratios for depth 1, 2, ...; a depth up to max_depth that has none here uses `ratio` (or, in
        auto mode, Auto's factor).
    auto: choose the factor per pass so that depth 0 keeps about `auto_target_tokens` K/V tokens; never upsamples.
        Deeper depths take the same factor, except those with a ratio in `deeper_ratios`, which keep that fixed
        factor: Auto sizes depth 0 to the image, a deeper ratio pins its depth.
    start, end: sampling progress window (0 = pure noise, 1 = done), read from the U-Net's timestep.
    """

    ratio: float = 0.75
    max_depth: int = 0
    method: str = "nearest"
    deeper_ratios: tuple[float, ...] = ()
    auto: bool = False
    auto_target_tokens: int = DEFAULT_AUTO_TARGET_TOKENS
    start: float = 0.0
    end: float = 1.0

    def __post_init__(self) -> None:
        set_field = object.__setattr__.__get__(self)
        set_field("ratio", _check_number("ratio", self.ratio, 0.0, MAX_RATIO))
        set_field("max_depth", _check_int("max_depth", self.max_depth, 0, MAX_DEPTH))
        if self.method not in METHODS:
            raise _fail("method", self.method, ", ".join(METHODS))
        if isinstance(self.deeper_ratios, (str, bytes)) or not isinstance(self.deeper_ratios, (list, tuple)):
            raise _fail("deeper_ratios", self.deeper_ratios, f"a list of up to {MAX_DEPTH} ratios")
        if len(self.deeper_ratios) > MAX_DEPTH:
            raise _fail("deeper_ratios", self.deeper_ratios, f"at most {MAX_DEPTH} entries (depths 1 to {MAX_DEPTH})")
        set_field(
            "deeper_ratios",
            tuple(
                _check_number(f"deeper_ratios[{i}]", r, 0.0, MAX_RATIO) for i, r in enumerate(self.deeper_ratios)
            ),
        )
        if not isinstance(self.auto, bool):
            raise _fail("auto", self.auto, "true or false")
        set_field(
            "auto_target_tokens",
            _check_int("auto_target_tokens", self.auto_target_tokens, MIN_AUTO_TARGET_TOKENS, MAX_AUTO_TARGET_TOKENS),
        )
        set_field("start", _check_number("start", self.start, 0.0, 1.0))
        set_field("end", _check_number("end", self.end, 0.0, 1.0))
        if self.start >= self.end:
            raise _fail("start", self.start, f"less than end={self.end:g}")

    @classmethod
    def from_factor(cls, factor: float, **kwargs: Any) -> ToDoConfig:
        """Build a config from a per-side factor at depth 0 (2 = the paper's 0.75) instead of a ratio."""
        return cls(ratio=factor_to_ratio(_check_number("factor", factor, 1.0, MAX_FACTOR)), **kwargs)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> ToDoConfig:
        """Build a config from named fields (JSON, settings); `factor` may stand in for `ratio`."""
        if not isinstance(values, Mapping):
            raise _fail("config", values, "an object of named fields")
        known = {f.name for f in fields(cls)} | {"factor"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise _fail("field", unknown[0], ", ".join(sorted(known)))
        kwargs = dict(values)
        if "factor" in kwargs:
            if "ratio" in kwargs:
                raise _fail("factor", kwargs["factor"], "either factor or ratio, not both")
            return cls.from_factor(kwargs.pop("factor"), **kwargs)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["deeper_ratios"] = list(self.deeper_ratios)
        return values

    @property
    def factor(self) -> float:
        """Per-side downsample factor at depth 0 (ignores auto mode, which depends on the image size)."""
        return ratio_to_factor(self.ratio)

    def ratio_at(self, depth: int) -> float:
        """Configured ratio at an attention depth; 0 beyond max_depth."""
        if depth > self.max_depth:
            return 0.0
        if depth == 0:
            return self.ratio
        return self.deeper_ratios[depth - 1] if depth - 1 < len(self.deeper_ratios) else self.ratio

    def factor_at(self, depth: int, depth0_tokens: int | None = None) -> float:
        """Per-side factor at `depth`; in auto mode it follows from the depth-0 token count of the current pass,
        except at a deeper depth with its own entry in `deeper_ratios`."""
        if depth > self.max_depth:
            return 1.0
        if self.auto and not 0 < depth <= len(self.deeper_ratios):
            if depth0_tokens is None:
                raise ValueError("ToDo: auto mode needs the depth-0 token count of the current pass")
            return min(MAX_FACTOR, max(1.0, _snap(math.sqrt(depth0_tokens / self.auto_target_tokens))))
        return ratio_to_factor(self.ratio_at(depth))

    def covers(self, progress: float) -> bool:
        """Whether sampling progress (0 = noise, 1 = done) lies inside the step window."""
        return self.start <= progress <= self.end

    @property
    def has_step_window(self) -> bool:
        return self.start > 0.0 or self.end < 1.0


def _snap(factor: float) -> float:
    """Round factors within 2% of a whole number to it, so nominal ratios and auto sizes give a regular stride."""
    nearest_whole = round(factor)
    return float(nearest_whole) if abs(factor - nearest_whole) <= _INTEGER_SNAP * factor else factor
