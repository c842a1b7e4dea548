"""Deeper ratio: the ratio at depths 1..max depth, through args, API, infotext, settings, X/Y/Z and the UI; args
and infotext from before it existed keep meaning the ratio at every depth."""

import copy
import json
import types

import pytest

from todo_ext.api_validation import validation_error
from todo_ext.args import (
    FIELDS,
    FIELDS_BY_NAME,
    SAME_AS_RATIO,
    SETTING_FIELDS,
    ToDoArgs,
    args_from_infotext,
    infotext_params,
    parse_script_args,
)
from todo_ext.config import ToDoConfig

OLD_POSITIONAL = [True, 0.89, 2, False, 4096, "avg-pool", 0.1, 0.9, "own", 0.9375, False]
"""A full positional args list as API clients sent it before Deeper ratio existed."""


def test_it_is_appended_after_the_older_fields():
    assert [spec.name for spec in FIELDS][-2:] == ["hires_only", "deeper_ratio"]
    assert FIELDS_BY_NAME["deeper_ratio"].infotext_key == "ToDo deeper ratio"
    assert FIELDS_BY_NAME["deeper_ratio"] in SETTING_FIELDS
    assert ToDoArgs().deeper_ratio == SAME_AS_RATIO


def test_old_positional_args_keep_the_ratio_at_every_depth():
    args = parse_script_args(OLD_POSITIONAL)
    assert args.deeper_ratio == SAME_AS_RATIO
    expected = ToDoConfig(ratio=0.89, max_depth=2, method="avg-pool", start=0.1, end=0.9)
    assert args.config_for_pass(is_hires=False) == expected
    assert [expected.factor_at(depth) for depth in range(3)] == [3.0, 3.0, 3.0]
    assert args.config_for_pass(is_hires=True) == ToDoConfig(ratio=0.9375, max_depth=2, method="avg-pool",
                                                             start=0.1, end=0.9)


@pytest.mark.parametrize("hires_mode", ["same", "own"])
def test_a_deeper_ratio_sets_depths_1_to_max_depth_in_both_passes(hires_mode):
    args = parse_script_args([*OLD_POSITIONAL[:8], hires_mode, 0.9375, False, 0.75])
    for is_hires in (False, True):
        config = args.config_for_pass(is_hires)
        assert config.deeper_ratios == (0.75, 0.75)
        assert [config.factor_at(depth) for depth in range(4)] == [
            3.0 if hires_mode == "same" or not is_hires else 4.0, 2.0, 2.0, 1.0]


def test_dict_args_name_it():
    args = parse_script_args([{"enabled": True, "max_depth": 1, "deeper_ratio": 0.5}])
    assert args.config_for_pass(is_hires=False).deeper_ratios == (0.5,)
    assert parse_script_args([{"enabled": True}]).deeper_ratio == SAME_AS_RATIO


def test_any_negative_value_means_same_as_ratio():
    assert ToDoArgs(deeper_ratio=-0.25).deeper_ratio == SAME_AS_RATIO
    assert ToDoArgs(deeper_ratio="-1").deeper_ratio == SAME_AS_RATIO
    assert ToDoArgs(enabled=True, max_depth=3, deeper_ratio=-1).config_for_pass(False).deeper_ratios == ()


def test_a_deeper_ratio_alone_turns_todo_on_for_the_deeper_levels():
    assert ToDoArgs(enabled=True, ratio=0.0, max_depth=1).config_for_pass(False) is None
    config = ToDoArgs(enabled=True, ratio=0.0, max_depth=1, deeper_ratio=0.75).config_for_pass(False)
    assert (config.factor_at(0), config.factor_at(1)) == (1.0, 2.0)
    assert ToDoArgs(enabled=True, ratio=0.0, max_depth=0, deeper_ratio=0.75).config_for_pass(False) is None


def test_auto_sizes_depth_0_and_a_deeper_ratio_pins_depth_1():
    """Auto's factor follows the image at depth 0; with a deeper ratio depth 1 keeps that fixed factor, without
    one it takes Auto's factor as before."""
    pinned = ToDoArgs(enabled=True, auto=True, max_depth=1, deeper_ratio=0.75).config_for_pass(False)
    same = ToDoArgs(enabled=True, auto=True, max_depth=1).config_for_pass(False)
    for depth0_tokens, auto_factor in [(64 * 64, 1.0), (128 * 128, 2.0), (256 * 256, 4.0)]:
        assert pinned.factor_at(0, depth0_tokens) == auto_factor
        assert pinned.factor_at(1, depth0_tokens) == 2.0
        assert same.factor_at(1, depth0_tokens) == auto_factor


@pytest.mark.parametrize("value", [-1.5, 1.0, "much", True, float("nan")])
def test_invalid_values_name_the_field(value):
    with pytest.raises(ValueError, match=r"invalid deeper_ratio=.*allowed: -1 \(same as ratio\) or a number from 0"):
        ToDoArgs(deeper_ratio=value)
    body = json.dumps({"alwayson_scripts": {"ToDo": {"args": [{"enabled": True, "deeper_ratio": value}]}}})
    error = validation_error(body.encode())
    assert error["field"] == "deeper_ratio"
    assert "same as ratio" in error["allowed"]


def test_infotext_writes_it_and_pasting_restores_it():
    args = ToDoArgs(enabled=True, max_depth=2, deeper_ratio=0.5)
    params = {key: str(value) for key, value in infotext_params(args).items()}
    assert params["ToDo deeper ratio"] == "0.5"
    assert args_from_infotext(params) == args
    same = ToDoArgs(enabled=True, max_depth=1)
    assert args_from_infotext({k: str(v) for k, v in infotext_params(same).items()}, ToDoArgs(deeper_ratio=0.3)) == same


def test_pasting_older_todo_infotext_sets_same_as_ratio():
    """Infotext written before the field existed reproduces the image: the ratio at every depth, whatever the
    control showed before the paste. Parameters without any ToDo key leave the control alone."""
    old = {"ToDo": "True", "ToDo ratio": "0.89", "ToDo max depth": "2"}
    pasted = args_from_infotext(old, ToDoArgs(deeper_ratio=0.5))
    assert pasted.deeper_ratio == SAME_AS_RATIO
    assert pasted.config_for_pass(False) == ToDoConfig(ratio=0.89, max_depth=2)
    assert args_from_infotext({"Steps": "20"}, ToDoArgs(deeper_ratio=0.5)).deeper_ratio == 0.5


def test_webui_paste_of_older_infotext_sets_the_control_to_same(webui):
    from modules.infotext_utils import paste

    script = webui.ToDoScript()
    script.ui(is_img2img=False)
    slot = [spec.name for spec in FIELDS].index("deeper_ratio")
    old_line = "Steps: 20, Seed: 1, ToDo: True, ToDo ratio: 0.89, ToDo max depth: 2"
    assert paste(script.infotext_fields, old_line)[slot] == SAME_AS_RATIO
    assert paste(script.infotext_fields, old_line + ", ToDo deeper ratio: 0.5")[slot] == 0.5
    assert paste(script.infotext_fields, "Steps: 20, Seed: 1")[slot] is None
    assert "ToDo deeper ratio" in script.paste_field_names


def test_ui_control_comes_last_in_args_with_its_settings_default(webui):
    from modules import shared

    shared.opts.data["todo_default_deeper_ratio"] = 0.5
    controls = webui.ToDoScript().ui(is_img2img=False)
    assert controls[-1].label == "Deeper ratio" and controls[-1].value == 0.5
    slider_range = (controls[-1].kwargs["minimum"], controls[-1].kwargs["maximum"])
    assert slider_range == (SAME_AS_RATIO, FIELDS_BY_NAME["deeper_ratio"].maximum)
    assert "same as Ratio" in FIELDS_BY_NAME["deeper_ratio"].hint


def test_xyz_axis_sets_it_per_cell(webui):
    from modules import processing, script_callbacks, scripts

    class AxisOption:
        def __init__(self, label, type, apply, format_value=None, confirm=None, cost=0.0, choices=None,
                     prepare=None):
            self.label, self.type, self.apply, self.confirm = label, type, apply, confirm

    xyz_grid = types.SimpleNamespace(axis_options=[], AxisOption=AxisOption,
                                     boolean_choice=lambda reverse=False: lambda: ["False", "True"])
    xyz_class = type("Script", (), {"__module__": "xyz_grid.py"})
    scripts.scripts_data.append(scripts.ScriptClassData(xyz_class, "xyz_grid.py", ".", xyz_grid))
    try:
        script_callbacks.before_ui_callback()
    finally:
        scripts.scripts_data.clear()
    axis = next(opt for opt in xyz_grid.axis_options if opt.label == "[ToDo] Deeper ratio")
    assert axis.type is float
    with pytest.raises(ValueError, match="invalid deeper_ratio"):
        axis.confirm(None, [0.5, 1.5])
    p = processing.StableDiffusionProcessingTxt2Img(None, None, ToDoArgs().to_list())
    cell = copy.copy(p)
    axis.apply(cell, 0.75, [])
    assert cell.todo_overrides == {"deeper_ratio": 0.75}
