"""The ToDo script's arguments: one ordered field list that the WebUI controls, API parsing, infotext, settings
and X/Y/Z axes all derive from, and the per-pass ToDoConfig those arguments mean.

Pure python: the WebUI glue in scripts/ turns gradio/API/infotext values into `ToDoArgs` through this module.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .config import (
    DEFAULT_AUTO_TARGET_TOKENS,
    MAX_AUTO_TARGET_TOKENS,
    MAX_DEPTH,
    MAX_RATIO,
    METHODS,
    MIN_AUTO_TARGET_TOKENS,
    ToDoConfig,
    ratio_to_factor,
)

HIRES_MODES = ("same", "own", "auto", "off")
"""Hires-fix pass: the first pass's settings, its own ratio, Auto, or no ToDo."""

INFOTEXT_ENABLED_KEY = "ToDo"
INFOTEXT_NOTE_KEY = "ToDo note"
INFOTEXT_FIRST_PASS_KV_KEY = "ToDo K/V"
INFOTEXT_HIRES_KV_KEY = "ToDo hires K/V"

SAME_AS_RATIO = -1.0
"""Deeper ratio meaning "the ratio at every depth": what args, settings and infotext from before the field mean."""

_TRUE_WORDS = {"true", "1", "yes", "on"}
_FALSE_WORDS = {"false", "0", "no", "off"}


@dataclass(frozen=True)
class FieldSpec:
    """How one argument is shown, validated, written to infotext and offered as a setting."""

    name: str
    kind: str
    """"bool", "float", "int" or "choice"."""
    default: Any
    label: str
    infotext_key: str
    hint: str
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    slider_maximum: float | None = None
    """Upper end of the UI slider where the accepted range is wider than a slider can sensibly show."""
    choices: tuple[str, ...] = ()
    setting: bool = False
    """Whether Settings > ToDo offers a default for it."""
    negative_means: str | None = None
    """For a number that may also follow another field: what a negative value means (stored as -1)."""

    def allowed(self) -> str:
        """The allowed values, in words, for error messages."""
        if self.kind == "bool":
            return "true or false"
        if self.kind == "choice":
            return ", ".join(self.choices)
        number = "a whole number" if self.kind == "int" else "a number"
        if self.negative_means:
            return f"-1 ({self.negative_means}) or {number} from 0 to {self.maximum:g}"
        return f"{number} from {self.minimum:g} to {self.maximum:g}"

    def error(self, value: Any) -> ValueError:
        return ValueError(f"ToDo: invalid {self.name}={value!r}; allowed: {self.allowed()}")

    def coerce(self, value: Any) -> Any:
        """The typed value of a UI, JSON, X/Y/Z or infotext value (strings included); ValueError if invalid."""
        if self.kind == "bool":
            return self._coerce_bool(value)
        if self.kind == "choice":
            if isinstance(value, str) and value.strip().lower() in self.choices:
                return value.strip().lower()
            raise self.error(value)
        number = self._coerce_number(value)
        if self.kind == "int":
            if not number.is_integer():
                raise self.error(value)
            return int(number)
        if self.negative_means and number < 0:
            return SAME_AS_RATIO
        return number

    def _coerce_bool(self, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE_WORDS | _FALSE_WORDS:
            return value.strip().lower() in _TRUE_WORDS
        raise self.error(value)

    def _coerce_number(self, value: Any) -> float:
        if isinstance(value, bool):
            raise self.error(value)
        if isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                raise self.error(value) from None
        elif isinstance(value, (int, float)):
            number = float(value)
        else:
            raise self.error(value)
        if not math.isfinite(number) or not self.minimum <= number <= self.maximum:
            raise self.error(value)
        return number

    def format(self, value: Any) -> str | int | float:
        """The infotext form of a value: exact for floats, plain words for the rest."""
        if self.kind == "float":
            return repr(float(value))
        return str(value) if self.kind in ("bool", "choice") else value


def _arg(default: Any, kind: str, label: str, infotext_key: str, hint: str, **spec: Any) -> Any:
    return field(
        default=default,
        metadata={"spec": dict(kind=kind, label=label, infotext_key=infotext_key, hint=hint, **spec)},
    )


@dataclass(frozen=True)
class ToDoArgs:
    """The script's arguments, in the order of the UI controls (and so of the API's positional `args`)."""

    enabled: bool = _arg(
        False, "bool", "Enable ToDo", INFOTEXT_ENABLED_KEY,
        "Downsample the keys and values of self-attention (U-Nets) or of the image tokens in joint attention "
        "(Flux, Chroma, Z-Image, Qwen-Image, Wan, SD3): faster, especially at high resolutions.",
    )
    ratio: float = _arg(
        0.75, "float", "Ratio", "ToDo ratio",
        "Fraction of K/V tokens removed at depth 0: 0.75 = 2x per side (1024px), 0.89 = 3x (1536px), "
        "0.9375 = 4x (2048px). On a DiT: of the image's keys and values; text tokens are kept.",
        minimum=0.0, maximum=MAX_RATIO, step=0.0025, setting=True,
    )
    max_depth: int = _arg(
        0, "int", "Max depth", "ToDo max depth",
        "U-Net: deepest attention level downsampled; 0 = only the highest-resolution level (the paper's setting). "
        "DiT: how much of the block stack, from the middle out; 0 = the middle half of the blocks, 1 = three "
        "quarters, 2 = all but the first and last block, 3 = every block.",
        minimum=0, maximum=MAX_DEPTH, step=1, setting=True,
    )
    auto: bool = _arg(
        False, "bool", "Auto", "ToDo auto",
        "Choose the factor per pass so that depth 0 keeps about the target number of K/V tokens; "
        "small images are left alone.",
        setting=True,
    )
    auto_target_tokens: int = _arg(
        DEFAULT_AUTO_TARGET_TOKENS, "int", "Auto target tokens", "ToDo auto target",
        "K/V tokens that Auto keeps at depth 0 (on a DiT: image tokens per frame); 4096 = a 512x512 SD1.5 "
        "image's full count, a 1024x1024 Flux image's.",
        minimum=MIN_AUTO_TARGET_TOKENS, maximum=MAX_AUTO_TARGET_TOKENS, slider_maximum=16384, step=64,
        setting=True,
    )
    method: str = _arg(
        "nearest", "choice", "Method", "ToDo method",
        "nearest: strided nearest neighbour (the paper); nearest-exact: centre samples; avg-pool: average pooling.",
        choices=METHODS, setting=True,
    )
    start: float = _arg(
        0.0, "float", "Start", "ToDo start",
        "Progress through the noise schedule at which ToDo starts (0 = pure noise, 1 = clean), read from the "
        "schedule the model samples with.",
        minimum=0.0, maximum=1.0, step=0.01,
    )
    end: float = _arg(
        1.0, "float", "End", "ToDo end",
        "Progress through the noise schedule at which ToDo stops (1 = clean image), read from the schedule the "
        "model samples with.",
        minimum=0.0, maximum=1.0, step=0.01,
    )
    hires_mode: str = _arg(
        "same", "choice", "Hires pass", "ToDo hires",
        "Hires fix pass: same = the settings above; own = its own ratio; auto = Auto for the upscaled size; "
        "off = no ToDo.",
        choices=HIRES_MODES, setting=True,
    )
    hires_ratio: float = _arg(
        0.75, "float", "Hires ratio", "ToDo hires ratio",
        "Ratio of the hires pass when Hires pass is 'own'.",
        minimum=0.0, maximum=MAX_RATIO, step=0.0025, setting=True,
    )
    hires_only: bool = _arg(
        False, "bool", "Hires pass only", "ToDo hires only",
        "Leave the first pass alone and use ToDo only in the (large) hires fix pass.",
    )
    deeper_ratio: float = _arg(
        SAME_AS_RATIO, "float", "Deeper ratio", "ToDo deeper ratio",
        "Ratio at depths 1 to Max depth (U-Net: the next, coarser attention levels; DiT: the blocks outside the "
        "middle half); -1 (any negative value) = the same as Ratio. Under Auto it fixes the factor there while "
        "Auto sizes depth 0.",
        minimum=SAME_AS_RATIO, maximum=MAX_RATIO, step=0.0025, setting=True, negative_means="same as ratio",
    )

    def __post_init__(self) -> None:
        for spec in FIELDS:
            object.__setattr__(self, spec.name, spec.coerce(getattr(self, spec.name)))
        self._pass_config(is_hires=False)
        self._pass_config(is_hires=True)

    def config_for_pass(self, is_hires: bool) -> ToDoConfig | None:
        """The engine config for the first or the hires pass, or None when ToDo leaves that pass alone."""
        if not self.enabled or (self.hires_only and not is_hires) or (is_hires and self.hires_mode == "off"):
            return None
        config = self._pass_config(is_hires)
        touches = config.auto or any(config.ratio_at(depth) > 0 for depth in range(config.max_depth + 1))
        return config if touches else None

    def _pass_config(self, is_hires: bool) -> ToDoConfig:
        """The pass's settings whether or not ToDo is on, so that invalid combinations fail even when off."""
        deeper_ratios = () if self.deeper_ratio < 0 else (self.deeper_ratio,) * self.max_depth
        base = dict(ratio=self.ratio, max_depth=self.max_depth, method=self.method, auto=self.auto,
                    auto_target_tokens=self.auto_target_tokens, start=self.start, end=self.end,
                    deeper_ratios=deeper_ratios)
        if is_hires and self.hires_mode == "own":
            base.update(ratio=self.hires_ratio, auto=False)
        elif is_hires and self.hires_mode == "auto":
            base.update(auto=True)
        return ToDoConfig(**base)

    def to_list(self) -> list[Any]:
        """The positional `args` list of the API, in UI order."""
        return [getattr(self, spec.name) for spec in FIELDS]

    def with_values(self, values: Mapping[str, Any]) -> ToDoArgs:
        """A copy with named fields replaced (X/Y/Z axes, API dicts); unknown names are rejected."""
        unknown = sorted(set(values) - set(FIELDS_BY_NAME))
        if unknown:
            raise ValueError(f"ToDo: invalid field={unknown[0]!r}; allowed: {', '.join(FIELDS_BY_NAME)}")
        return replace(self, **values)


FIELDS: tuple[FieldSpec, ...] = tuple(
    FieldSpec(name=f.name, default=f.default, **f.metadata["spec"]) for f in fields(ToDoArgs)
)
"""Every argument in UI order: the single list the script, API, infotext, settings and X/Y/Z derive from."""

FIELDS_BY_NAME: dict[str, FieldSpec] = {spec.name: spec for spec in FIELDS}


def parse_script_args(args: Sequence[Any], defaults: ToDoArgs | None = None) -> ToDoArgs:
    """ToDoArgs from the script's `*args` or the API's `args` list.

    Either positional values in UI order (a shorter list, or None in a slot, falls back to `defaults`), or a
    single dict of named fields as the first element, which then stands for the whole list.
    """
    defaults = defaults or ToDoArgs()
    if isinstance(args, (str, bytes, Mapping)) or not isinstance(args, Sequence):
        raise ValueError(f"ToDo: invalid args={args!r}; allowed: a list of values in UI order, or [{{named fields}}]")
    if args and isinstance(args[0], Mapping):
        return defaults.with_values({name: value for name, value in args[0].items() if value is not None})
    if len(args) > len(FIELDS):
        raise ValueError(
            f"ToDo: invalid args (got {len(args)} values); allowed: at most {len(FIELDS)}: "
            + ", ".join(FIELDS_BY_NAME)
        )
    given = {spec.name: value for spec, value in zip(FIELDS, args, strict=False) if value is not None}
    return defaults.with_values(given)


def defaults_from_settings(settings: Mapping[str, Any]) -> ToDoArgs:
    """The UI defaults: Settings > ToDo values by field name; a value that does not validate is skipped."""
    defaults = ToDoArgs()
    for name, value in settings.items():
        try:
            defaults = defaults.with_values({name: value})
        except ValueError:
            continue
    return defaults


def setting_key(spec: FieldSpec) -> str:
    """The shared.opts key of a field's default."""
    return f"todo_default_{spec.name}"


SETTING_FIELDS: tuple[FieldSpec, ...] = tuple(spec for spec in FIELDS if spec.setting)


def infotext_params(args: ToDoArgs) -> dict[str, str | int | float]:
    """Every ToDo setting as "ToDo ..." infotext keys, enough to reproduce both passes; write only when active."""
    return {spec.infotext_key: spec.format(getattr(args, spec.name)) for spec in FIELDS}


def paste_value(name: str, params: Mapping[str, Any]) -> Any:
    """The value a pasted infotext gives a field's control, or None to leave the control alone.

    Like the WebUI's own Hires fix and Refiner toggles: parameters without the "ToDo" key (written whenever ToDo
    was active) turn ToDo off, so pasting a plain image's parameters reproduces it, and leave the other controls
    alone. With the key, every field takes its key's value, and a key that an older version did not write takes
    the field's built-in default. A value that does not validate leaves its control alone (the API rejects it).
    """
    spec = FIELDS_BY_NAME[name]
    if INFOTEXT_ENABLED_KEY not in params:
        return False if spec.infotext_key == INFOTEXT_ENABLED_KEY else None
    raw = params.get(spec.infotext_key, spec.default)
    try:
        return spec.coerce(raw)
    except ValueError:
        return None


class PasteTarget:
    """What the script's infotext_fields pair with a control: a function of the parsed parameters, which the
    WebUI calls on paste and on the API's `infotext` path (where it would turn any non-empty string, "False"
    included, into True for a check box), and which compares equal to the field's infotext key, which is how
    the "Send to img2img/inpaint" buttons pick the controls they carry (a name in `paste_field_names`).
    """

    def __init__(self, spec: FieldSpec):
        self.name = spec.name
        self.key = spec.infotext_key

    def __call__(self, params: Mapping[str, Any]) -> Any:
        return paste_value(self.name, params)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PasteTarget):
            return other.key == self.key
        return isinstance(other, str) and other == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"PasteTarget({self.key!r})"


def paste_target(spec: FieldSpec) -> PasteTarget:
    """The paste target of a field's control (see PasteTarget)."""
    return PasteTarget(spec)


def args_from_infotext(params: Mapping[str, Any], current: ToDoArgs | None = None) -> ToDoArgs:
    """`current` with every control that a pasted infotext sets (the paste round trip as one object)."""
    current = current or ToDoArgs()
    values = {spec.name: paste_value(spec.name, params) for spec in FIELDS}
    return current.with_values({name: value for name, value in values.items() if value is not None})


def factor_label(ratio: float) -> str:
    """How the UI shows a ratio with the per-side factor it means, e.g. "0.75 = 2x per side (25% of K/V kept)"."""
    if ratio == 0:
        return "0 = off"
    return f"{ratio:g} = {ratio_to_factor(ratio):.3g}x per side ({(1 - ratio) * 100:.3g}% of K/V kept)"
