"""todo_ext.args: the script's arguments as the UI, the API, infotext and X/Y/Z hand them over."""

import dataclasses

import pytest

from todo_ext.args import (
    FIELDS,
    INFOTEXT_ENABLED_KEY,
    SETTING_FIELDS,
    ToDoArgs,
    args_from_infotext,
    defaults_from_settings,
    factor_label,
    infotext_params,
    parse_script_args,
    paste_target,
)
from todo_ext.config import MAX_RATIO, METHODS, ToDoConfig


def test_field_list_is_the_dataclass_in_ui_order():
    assert [spec.name for spec in FIELDS] == [f.name for f in dataclasses.fields(ToDoArgs)]
    assert [spec.default for spec in FIELDS] == ToDoArgs().to_list()
    assert len({spec.infotext_key for spec in FIELDS}) == len(FIELDS)
    assert all(spec.hint and spec.label for spec in FIELDS)


def test_positional_args_in_ui_order():
    values = [True, 0.89, 1, True, 2048, "avg-pool", 0.1, 0.9, "own", 0.9375, True, 0.5]
    parsed = parse_script_args(values)
    assert parsed.to_list() == values


def test_short_list_and_none_slots_fall_back_to_defaults():
    defaults = ToDoArgs(method="avg-pool", hires_mode="auto")
    parsed = parse_script_args([True, 0.5, None], defaults)
    assert parsed == dataclasses.replace(defaults, enabled=True, ratio=0.5)
    assert parse_script_args([]) == ToDoArgs()


def test_dict_as_first_element_names_fields_over_defaults():
    defaults = ToDoArgs(max_depth=2)
    parsed = parse_script_args([{"enabled": True, "ratio": 0.9375, "hires_mode": "off"}, False, 0.1], defaults)
    assert parsed == dataclasses.replace(defaults, enabled=True, ratio=0.9375, hires_mode="off")


def test_strings_from_json_xyz_and_infotext_are_converted():
    parsed = parse_script_args(["True", "0.75", "2", "false", "4096.0", "Nearest-Exact", "0", "1", "AUTO"])
    assert parsed.enabled is True and parsed.auto is False
    assert parsed.ratio == 0.75 and parsed.max_depth == 2 and parsed.auto_target_tokens == 4096
    assert parsed.method == "nearest-exact" and parsed.hires_mode == "auto"
    assert isinstance(parsed.max_depth, int) and isinstance(parsed.ratio, float)


@pytest.mark.parametrize(
    ("args", "field", "allowed"),
    [
        ([True, 1.5], "ratio", f"{MAX_RATIO:g}"),
        ([True, "fast"], "ratio", "a number"),
        ([True, 0.5, 4], "max_depth", "0 to 3"),
        ([True, 0.5, 1.5], "max_depth", "whole number"),
        (["maybe"], "enabled", "true or false"),
        ([True, 0.5, 0, False, 4096, "bilinear"], "method", ", ".join(METHODS)),
        ([True, 0.5, 0, False, 10], "auto_target_tokens", "64"),
        ([True, 0.5, 0, False, 4096, "nearest", 0.8, 0.2], "start", "less than end"),
        ([{"enabled": True, "speed": 2}], "field", "hires_only"),
        ([{"hires_mode": "double"}], "hires_mode", "same, own, auto, off"),
        ([True, True], "ratio", "a number"),
        ([True, float("nan")], "ratio", "a number"),
        ([None] * (len(FIELDS) + 1), "args", f"at most {len(FIELDS)}"),
    ],
)
def test_invalid_args_name_the_field_and_allowed_values(args, field, allowed):
    with pytest.raises(ValueError, match=rf"invalid {field}\b") as error:
        parse_script_args(args)
    assert allowed in str(error.value).split("allowed:")[1]


def test_args_must_be_a_list():
    with pytest.raises(ValueError, match="invalid args"):
        parse_script_args("True, 0.5")


def test_disabled_means_no_config_for_either_pass():
    off = ToDoArgs(enabled=False, ratio=0.9)
    assert off.config_for_pass(is_hires=False) is None
    assert off.config_for_pass(is_hires=True) is None


def test_hires_same_uses_first_pass_settings():
    args = ToDoArgs(enabled=True, ratio=0.89, max_depth=1, method="avg-pool")
    first = args.config_for_pass(is_hires=False)
    assert first == ToDoConfig(ratio=0.89, max_depth=1, method="avg-pool")
    assert args.config_for_pass(is_hires=True) == first


def test_hires_own_ratio_and_auto_and_off():
    args = ToDoArgs(enabled=True, ratio=0.5, hires_mode="own", hires_ratio=0.9375, auto=True)
    assert args.config_for_pass(is_hires=False).auto is True
    hires = args.config_for_pass(is_hires=True)
    assert (hires.ratio, hires.auto, hires.factor) == (0.9375, False, 4.0)
    auto = dataclasses.replace(args, hires_mode="auto", auto=False, auto_target_tokens=1024)
    assert auto.config_for_pass(is_hires=False).auto is False
    assert auto.config_for_pass(is_hires=True) == ToDoConfig(ratio=0.5, auto=True, auto_target_tokens=1024)
    assert dataclasses.replace(args, hires_mode="off").config_for_pass(is_hires=True) is None


def test_hires_only_leaves_the_first_pass_alone():
    args = ToDoArgs(enabled=True, hires_only=True, ratio=0.75)
    assert args.config_for_pass(is_hires=False) is None
    assert args.config_for_pass(is_hires=True).ratio == 0.75


def test_ratio_zero_without_auto_touches_nothing():
    args = ToDoArgs(enabled=True, ratio=0.0, hires_mode="auto")
    assert args.config_for_pass(is_hires=False) is None
    assert args.config_for_pass(is_hires=True).auto is True


def test_infotext_round_trip_restores_every_field():
    args = ToDoArgs(enabled=True, ratio=0.8125, max_depth=2, auto=True, auto_target_tokens=2048,
                    method="nearest-exact", start=0.2, end=0.7, hires_mode="own", hires_ratio=0.9375,
                    hires_only=True)
    params = {key: str(value) for key, value in infotext_params(args).items()}
    assert params[INFOTEXT_ENABLED_KEY] == "True"
    assert args_from_infotext(params, ToDoArgs(method="avg-pool")) == args


def test_infotext_without_todo_keys_turns_todo_off_and_leaves_the_rest():
    current = ToDoArgs(enabled=True, ratio=0.5, auto=True, hires_only=True)
    assert args_from_infotext({"Steps": "20", "Seed": "1"}, current) == dataclasses.replace(current, enabled=False)


def test_keys_an_older_version_did_not_write_paste_the_built_in_default():
    current = ToDoArgs(ratio=0.5, method="avg-pool")
    pasted = args_from_infotext({INFOTEXT_ENABLED_KEY: "True", "ToDo ratio": "0.9375"}, current)
    assert pasted == ToDoArgs(enabled=True, ratio=0.9375)


def test_paste_targets_are_functions_that_match_their_keys():
    """Functions, because the API's infotext path turns "False" into True for a check box; equal to the key,
    because the "Send to" buttons pick controls by `name in paste_field_names`."""
    targets = {spec.name: paste_target(spec) for spec in FIELDS}
    assert all(callable(target) for target in targets.values())
    assert [spec.infotext_key for spec in FIELDS] == list(targets.values())
    assert targets["ratio"] in ["Steps", "ToDo ratio"] and targets["ratio"] not in ["Steps", "ToDo"]
    assert {targets["enabled"]: 1}.get(INFOTEXT_ENABLED_KEY) == 1
    assert targets["auto"]({INFOTEXT_ENABLED_KEY: "True", "ToDo auto": "False"}) is False
    assert targets["auto"]({"ToDo auto": "True"}) is None
    assert targets["enabled"]({"Steps": "20"}) is False
    assert targets["ratio"]({INFOTEXT_ENABLED_KEY: "True", "ToDo ratio": "abc"}) is None


def test_settings_defaults_skip_invalid_values():
    settings = {spec.name: spec.default for spec in SETTING_FIELDS}
    settings.update(method="avg-pool", ratio=7.0, hires_mode="own")
    defaults = defaults_from_settings(settings)
    assert (defaults.method, defaults.hires_mode, defaults.ratio) == ("avg-pool", "own", ToDoArgs().ratio)


def test_factor_label_shows_the_per_side_factor():
    assert "2x" in factor_label(0.75) and "25%" in factor_label(0.75)
    assert "3x" in factor_label(0.89)
    assert "4x" in factor_label(0.9375)
    assert "off" in factor_label(0.0)
