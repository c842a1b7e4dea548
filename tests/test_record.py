"""What the infotext says a pass did (todo_ext.record): counts in, text out."""

from types import SimpleNamespace

import pytest

from todo_ext import PassRecord
from todo_ext.record import ASIDE_CAUSES, BIAS_DROPPED, JobRecord


def test_each_grid_a_depth_received_is_listed_with_its_calls():
    record = PassRecord()
    for _ in range(3):
        record.acted(0, (96, 96), (48, 48), 2.0)
    record.acted(0, (48, 48), (24, 24), 2.0)
    record.acted(1, (24, 24), (24, 24), 1.0)
    assert record.kv_text() == ("d0 96x96->48x48 (2x) in 3 calls; d0 48x48->24x24 (2x) in 1 call; "
                                "d1 24x24 kept in 1 call")
    assert record.downsampled == 4
    assert "," not in record.kv_text() and ":" not in record.kv_text(), "the infotext keeps it unquoted"


def test_many_grids_at_one_depth_are_cut_to_the_most_called():
    record = PassRecord()
    for side in range(10, 16):
        for _ in range(side):
            record.acted(0, (side, side), (side // 2, side // 2), 2.0)
    text = record.kv_text()
    assert text.startswith("d0 15x15->7x7 (2x) in 15 calls") and text.endswith("d0 +2 more grids")


@pytest.mark.parametrize(("acted", "outside", "text"), [
    (0, 0, None),
    (0, 1, "none (1 call outside the step window)"),
    (0, 4, "none (4 calls outside the step window)"),
    (2, 4, "d0 8x8->4x4 (2x) in 2 calls; 4 calls outside the step window"),
])
def test_calls_outside_the_step_window_are_counted(acted, outside, text):
    record = PassRecord(outside_window=outside)
    for _ in range(acted):
        record.acted(0, (8, 8), (4, 4), 2.0)
    assert record.kv_text() == text


def test_stepping_aside_names_each_cause_with_its_count():
    record = PassRecord()
    assert record.aside_text() is None
    record.stepped_aside("projection")
    assert record.aside_text() == f"stepped aside in 1 self-attention call where {ASIDE_CAUSES['projection']}"
    record.stepped_aside("grid")
    record.stepped_aside("grid")
    assert record.aside_text() == (f"stepped aside in 3 self-attention calls: 2 where {ASIDE_CAUSES['grid']}, "
                                   f"1 where {ASIDE_CAUSES['projection']}")


def test_an_unknown_cause_is_refused_with_the_allowed_ones():
    with pytest.raises(ValueError, match="unknown cause 'other'; allowed: projection"):
        PassRecord().stepped_aside("other")


def test_records_of_one_pass_kind_merge():
    first, second = PassRecord(calls=5), PassRecord(calls=5, outside_window=2)
    first.acted(0, (8, 8), (4, 4), 2.0)
    second.acted(0, (8, 8), (4, 4), 2.0)
    second.stepped_aside("hypertile")
    second.compiled = True
    merged = PassRecord.merged([first, second])
    assert (merged.calls, merged.outside_window, merged.downsampled) == (10, 2, 2)
    assert merged.aside == {"hypertile": 1}
    assert merged.compiled, "one attach that ran compiled marks the pass"


def test_a_step_window_that_could_not_be_decided_is_noted_with_its_cause():
    first, second = PassRecord(), PassRecord()
    assert first.window_notes() == []
    first.window_unknown["the sampler told no sigma"] += 1
    second.window_unknown.update({"the sampler told no sigma": 4, "the sampler's schedule raised ValueError": 5})
    assert first.window_notes() == ["step window not applied in 1 self-attention call: the sampler told no sigma"]
    assert PassRecord.merged([first, second]).window_notes() == [
        "step window not applied in 5 self-attention calls: the sampler told no sigma",
        "step window not applied in 5 self-attention calls: the sampler's schedule raised ValueError",
    ]


def test_how_the_dit_bias_travelled_is_in_the_kv_line_and_where_it_was_dropped_in_the_note():
    """A job whose first pass carried the bias in the channel and whose hires pass ran on SageAttention at Flux's
    head of 128: the K/V lines say how it travelled, the note where it was dropped and why."""
    job = JobRecord()
    first, hires = SimpleNamespace(record=PassRecord()), SimpleNamespace(record=PassRecord())
    job.attachments["first"].append(first)
    job.attachments["hires"].append(hires)
    for record, mode in ((first.record, "channel"), (hires.record, "sage-head")):
        for _ in range(3):
            record.calls += 1
            record.acted(None, (64, 64), (32, 32), 2.0, kept=(("text", 512),))
            record.carried_bias(mode)
    assert job.kv_line("first")() == "img 64x64->32x32 (2x) + 512 text kept in 3 calls; bias as channel in 3 calls"
    assert job.kv_line("hires")() == "img 64x64->32x32 (2x) + 512 text kept in 3 calls"
    assert job.note() == f"bias dropped in 3 calls where {BIAS_DROPPED['sage-head']}"
    assert PassRecord.merged([first.record, hires.record]).bias == {"channel": 3, "sage-head": 3}
    with pytest.raises(ValueError, match="unknown bias mode 'other'"):
        first.record.carried_bias("other")


def job_with(**records):
    job = JobRecord()
    for kind, record in records.items():
        job.attachments[kind].append(SimpleNamespace(record=record))
    return job


def test_a_pass_that_ran_compiled_says_so_instead_of_never_called():
    job = job_with(first=PassRecord(compiled=True), hires=PassRecord())
    notes = job.sampling_notes()
    assert notes == ["attached to the hires pass, but the host never called ToDo there; that pass ran without it",
                     "the model ran under torch.compile in the first pass, and ToDo does not act inside compiled "
                     "graphs: that pass ran without it"]
    partly = job_with(first=PassRecord(calls=12, compiled=True))
    assert partly.sampling_notes() == ["the model ran under torch.compile in the first pass, and ToDo does not act "
                                       "inside compiled graphs: ToDo was called only in the 12 attention calls "
                                       "that ran eagerly"]


@pytest.mark.parametrize(("steps", "steps_run", "compiled", "said"), [
    (20, 20, False, False),
    (20, 11, False, True),
    (20, 11, True, False),
    (20, 0, False, False),
])
def test_steps_the_host_answered_without_the_model_are_said_only_where_they_were_seen(steps, steps_run, compiled,
                                                                                        said):
    """Skipped steps are said where the model ran in some steps and not others, eagerly; a pass that never ran
    ToDo has its own note, and under torch.compile the model's calls are not seen."""
    job = job_with(first=PassRecord(calls=steps_run, steps=steps, steps_run=steps_run, compiled=compiled))
    note = ("the host ran the model in 11 of 20 steps of the first pass (a cache such as Spectrum answered the "
            "other 9 without it) and the K/V line counts the calls that ran")
    assert (note in job.sampling_notes()) is said
