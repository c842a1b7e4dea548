"""What ToDo really did in a pass: every token grid its self-attention layers received, how each was downsampled,
and every call it stepped aside in, with the cause. The WebUI writes this into the infotext; nothing here is a plan
computed from the image size."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

ASIDE_CAUSES = {
    "projection": "another extension replaced a K/V projection of the layer (ControlNet-LLLite?)",
    "replaced": "another extension replaces the layer's self-attention (PAG, SAG, reference, StyleAlign?)",
    "later-patch": "another attn1 patch runs after ToDo's and may change its K/V tokens",
    "kv-split": "another patch changed the layer's keys and values apart (ControlLLLite?)",
    "context": "the layer got a context that is not its own token grid",
    "token-merging": "Token merging changed the tokens",
    "hypertile": "Hypertile tiles the layer",
    "grid": "the tokens fit no grid that ToDo could read",
    "radial": "RadialAttention runs the block sparse (its kernel takes every key)",
    "error": "an error inside ToDo (logged once)",
}
"""Why ToDo left a self-attention call exact, in the words the infotext uses."""

BIAS_CARRIED = ("mask", "channel")
"""How a DiT call's proportional bias reached the kernel (see todo_ext/bias.py), in the K/V line as "bias as ..."."""

BIAS_DROPPED = {
    "sage-head": "SageAttention ignores masks and a bias channel would take the head dimension off Sage",
    "flash-head": "flash-attn takes no mask and a bias channel would take the head dimension past its 256",
}
"""Why a DiT call ran without the proportional bias (plain ToDo), in the words the note uses."""

_GRIDS_SHOWN_PER_DEPTH = 4


def _calls(count: int) -> str:
    return f"in {count} call{'s' if count != 1 else ''}"


def _grid_text(grid: tuple[int, ...]) -> str:
    return "x".join(str(side) for side in grid)


@dataclass
class PassRecord:
    """Counts of one pass (or several passes of one kind, merged): self-attention calls seen, calls outside the
    step window, calls in steps whose window could not be decided (by why), calls acted on per (depth, grid, K/V
    grid, factor), and calls stepped aside per cause."""

    calls: int = 0
    outside_window: int = 0
    window_unknown: Counter = field(default_factory=Counter)
    kv: Counter = field(default_factory=Counter)
    aside: Counter = field(default_factory=Counter)
    bias: Counter = field(default_factory=Counter)
    """DiT calls by how their proportional bias travelled: a BIAS_CARRIED way or a BIAS_DROPPED cause."""
    steps: int = 0
    """Sampling steps the host began (its denoiser callback) for this attach."""
    steps_run: int = 0
    """Of those, the steps in which the model ran at least once; the host answered the others without it (a cache:
    Forge Neo's Spectrum Integrated forecasts whole steps), so they ran no attention and no ToDo."""
    compiled: bool = False
    """The model ran under torch.compile: ToDo's code was reached while dynamo traced it, and there passed through
    (`passes.compiling`), so those calls ran the model's own graph. Read as the pass ends; see
    `PassState.take_traced`."""

    def acted(self, depth: int | None, grid: tuple[int, ...], kv_grid: tuple[int, ...], factor: float,
              kept: tuple[tuple[str, int], ...] = ()) -> None:
        """One call acted on: a U-Net layer at `depth`, or a DiT's joint attention (depth None) whose image grid
        was downsampled while the `kept` tokens (text, references, padding) stayed."""
        self.kv[(depth, grid, kv_grid, factor, kept)] += 1

    def stepped_aside(self, cause: str) -> None:
        if cause not in ASIDE_CAUSES:
            raise ValueError(f"ToDo: unknown cause {cause!r}; allowed: {', '.join(ASIDE_CAUSES)}")
        self.aside[cause] += 1

    def carried_bias(self, mode: str) -> None:
        if mode not in BIAS_CARRIED and mode not in BIAS_DROPPED:
            raise ValueError(f"ToDo: unknown bias mode {mode!r}")
        self.bias[mode] += 1

    @property
    def downsampled(self) -> int:
        return sum(count for (_, _, _, factor, _), count in self.kv.items() if factor != 1.0)

    @classmethod
    def merged(cls, records: Iterable[PassRecord]) -> PassRecord:
        total = cls()
        for record in records:
            total.calls += record.calls
            total.outside_window += record.outside_window
            total.window_unknown.update(record.window_unknown)
            total.kv.update(record.kv)
            total.aside.update(record.aside)
            total.bias.update(record.bias)
            total.steps += record.steps
            total.steps_run += record.steps_run
            total.compiled = total.compiled or record.compiled
        return total

    def kv_text(self) -> str | None:
        """Per depth, every grid received and what became of it, e.g. "d0 64x64->32x32 (2x) in 40 calls";
        "d0 32x32 kept in 40 calls" where the factor was 1 (Auto on a small grid); a DiT's joint attention as
        "img 64x64->32x32 (2x) + 512 text kept in 57 calls", and how their bias travelled ("bias as channel in 57
        calls"); then the calls outside the step window, if any
        ("none (...)" where that was every call). Parts are joined with "; " and hold no comma or colon, so the
        infotext keeps the value unquoted. None if nothing was recorded."""
        parts = []
        for depth in sorted({key[0] for key in self.kv}, key=lambda depth: (depth is None, depth or 0)):
            label = "img" if depth is None else f"d{depth}"
            entries = sorted(((key, count) for key, count in self.kv.items() if key[0] == depth),
                             key=lambda item: (-item[1], str(item[0])))
            for (_, grid, kv_grid, factor, kept), count in entries[:_GRIDS_SHOWN_PER_DEPTH]:
                calls = _calls(count)
                others = "".join(f" + {tokens} {name}" for name, tokens in kept)
                if factor == 1.0:
                    parts.append(f"{label} {_grid_text(grid)}{others} kept {calls}")
                else:
                    parts.append(f"{label} {_grid_text(grid)}->{_grid_text(kv_grid)} ({factor:g}x)"
                                 f"{others}{' kept' if kept else ''} {calls}")
            if len(entries) > _GRIDS_SHOWN_PER_DEPTH:
                parts.append(f"{label} +{len(entries) - _GRIDS_SHOWN_PER_DEPTH} more grids")
        parts.extend(f"bias as {mode} {_calls(self.bias[mode])}" for mode in BIAS_CARRIED if self.bias[mode])
        if self.outside_window:
            outside = f"{self.outside_window} call{'s' if self.outside_window != 1 else ''} outside the step window"
            parts.append(outside if parts else f"none ({outside})")
        return "; ".join(parts) or None

    def window_notes(self) -> list[str]:
        """Where Start/End could not be applied, one note per cause, e.g. "step window not applied in 10
        self-attention calls: the sampler's schedule raised ValueError"."""
        return [f"step window not applied in {count} self-attention call{'s' if count != 1 else ''}: {why}"
                for why, count in self.window_unknown.most_common()]

    def aside_text(self) -> str | None:
        """How many calls ToDo left exact and why, e.g. "stepped aside in 5 self-attention calls where another
        extension replaced a K/V projection of the layer (ControlNet-LLLite?)"; None if it never did."""
        total = sum(self.aside.values())
        if not total:
            return None
        calls = f"{total} self-attention call{'s' if total != 1 else ''}"
        if len(self.aside) == 1:
            return f"stepped aside in {calls} where {ASIDE_CAUSES[next(iter(self.aside))]}"
        causes = ", ".join(f"{count} where {ASIDE_CAUSES[cause]}" for cause, count in self.aside.most_common())
        return f"stepped aside in {calls}: {causes}"

    def bias_text(self) -> str | None:
        """The DiT calls that ran without the proportional bias and why, e.g. "bias dropped in 57 calls where
        SageAttention ignores masks and ..."; None where every call carried it."""
        dropped = [(cause, count) for cause, count in self.bias.most_common() if cause in BIAS_DROPPED]
        return "; ".join(f"bias dropped {_calls(count)} where {BIAS_DROPPED[cause]}"
                         for cause, count in dropped) or None


PASS_KINDS = ("first", "hires")


class JobRecord:
    """What ToDo did in one job (a generation, all its batches), for the infotext: every attach, by pass kind, and
    why ToDo could not act where it could not. The WebUI evaluates the infotext entries (`note`, `kv_line`) when
    it writes the infotext, after sampling, so they state what the engine recorded, never a plan."""

    def __init__(self) -> None:
        self.notes: list[str] = []
        """Why ToDo could not act on a pass (unsupported model, invalid arguments, an attach error), each once."""
        self.attachments: dict[str, list] = {kind: [] for kind in PASS_KINDS}
        """What each attach recorded (anything with a `record`), by pass kind, in this batch."""
        self.warned: set[str] = set()
        """Engine warnings already logged in this job: each appears once per generation."""

    def record(self, kind: str | None = None) -> PassRecord:
        kinds = PASS_KINDS if kind is None else (kind,)
        return PassRecord.merged(attachment.record for each in kinds for attachment in self.attachments[each])

    def never_called(self) -> list[str]:
        """Passes ToDo attached to whose hooks or patch the host never ran (an attention path that skips them), nor
        traced into a compiled graph."""
        return [kind for kind in PASS_KINDS
                if self.attachments[kind] and not self.record(kind).calls and not self.record(kind).compiled]

    def ran_compiled(self) -> list[str]:
        """Passes whose model ran under torch.compile, where ToDo passed through."""
        return [kind for kind in PASS_KINDS if self.attachments[kind] and self.record(kind).compiled]

    def sampling_notes(self) -> list[str]:
        """What sampling showed: passes whose hooks or patch the host never ran, passes that ran compiled, steps
        the host answered without the model, steps whose window could not be decided, calls ToDo stepped aside in,
        DiT calls that ran without the proportional bias."""
        notes = [f"attached to the {kind} pass, but the host never called ToDo there; that pass ran without it"
                 for kind in self.never_called()]
        for kind in self.ran_compiled():
            eager = self.record(kind).calls
            notes.append(f"the model ran under torch.compile in the {kind} pass, and ToDo does not act inside "
                         "compiled graphs: " + (f"ToDo was called only in the {eager} attention calls that ran eagerly"
                                                if eager else "that pass ran without it"))
        for kind in PASS_KINDS:
            record = self.record(kind)
            if record.steps_run and record.steps > record.steps_run and not record.compiled:
                notes.append(f"the host ran the model in {record.steps_run} of {record.steps} steps of the {kind} "
                             f"pass (a cache such as Spectrum answered the other {record.steps - record.steps_run} "
                             "without it) and the K/V line counts the calls that ran")
        record = self.record()
        texts = (record.aside_text(), record.bias_text())
        return [*notes, *record.window_notes(), *(text for text in texts if text)]

    def note(self, **_infotext_locals: object) -> str | None:
        return "; ".join([*self.notes, *self.sampling_notes()]) or None

    def new_batch(self) -> None:
        """Each batch's images record that batch's passes (the WebUI writes their infotexts after the batch)."""
        for attachments in self.attachments.values():
            attachments.clear()

    def kv_line(self, kind: str):
        """The infotext entry of a pass kind's K/V line, evaluated when the infotext is written."""

        def line(**_infotext_locals: object) -> str | None:
            return self.record(kind).kv_text()

        return line
