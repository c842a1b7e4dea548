"""ToDoConfig validation and the downsampling operator D(.) on its own."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from todo_ext import METHODS, ToDoConfig, downsample_tokens, factor_to_ratio, ratio_to_factor
from todo_ext.downsample import gather_index


@pytest.mark.parametrize(("ratio", "factor"), [(0.0, 1.0), (0.75, 2.0), (0.89, 3.0), (0.9375, 4.0)])
def test_paper_ratios_map_to_whole_factors(ratio, factor):
    assert ratio_to_factor(ratio) == factor
    assert ToDoConfig(ratio=ratio).factor == factor


def test_factor_can_be_given_instead_of_ratio():
    assert ToDoConfig.from_factor(2).ratio == 0.75
    assert ToDoConfig.from_mapping({"factor": 1.5, "method": "avg-pool"}).factor == pytest.approx(1.5)
    assert factor_to_ratio(4) == 0.9375


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"ratio": 1.0}, r"ratio=1\.0; allowed: 0 to 0\.984375"),
        ({"ratio": -0.1}, r"ratio=-0\.1; allowed: 0 to"),
        ({"ratio": "0.5"}, r"ratio='0\.5'; allowed: a number"),
        ({"ratio": True}, r"ratio=True"),
        ({"ratio": float("nan")}, r"ratio=nan"),
        ({"max_depth": 4}, r"max_depth=4; allowed: 0 to 3"),
        ({"max_depth": 1.5}, r"max_depth=1\.5; allowed: a whole number"),
        ({"method": "bicubic"}, r"method='bicubic'; allowed: nearest, nearest-exact, avg-pool"),
        ({"deeper_ratios": (0.5, 0.5, 0.5, 0.5)}, r"deeper_ratios=.*at most 3"),
        ({"deeper_ratios": (0.5, 2.0)}, r"deeper_ratios\[1\]=2\.0"),
        ({"auto": "yes"}, r"auto='yes'; allowed: true or false"),
        ({"auto_target_tokens": 10}, r"auto_target_tokens=10; allowed: 64 to 1048576"),
        ({"start": 0.6, "end": 0.4}, r"start=0\.6; allowed: less than end=0\.4"),
        ({"end": 1.5}, r"end=1\.5; allowed: 0 to 1"),
    ],
)
def test_invalid_fields_name_the_field_and_the_allowed_range(fields, message):
    with pytest.raises(ValueError, match=message):
        ToDoConfig(**fields)


def test_mapping_rejects_unknown_fields_and_double_ratio():
    with pytest.raises(ValueError, match=r"field='ratoi'; allowed: auto, auto_target_tokens"):
        ToDoConfig.from_mapping({"ratoi": 0.5})
    with pytest.raises(ValueError, match="either factor or ratio"):
        ToDoConfig.from_mapping({"ratio": 0.5, "factor": 2})
    with pytest.raises(ValueError, match=r"factor=9; allowed: 1 to 8"):
        ToDoConfig.from_mapping({"factor": 9})


def test_config_is_immutable_and_round_trips():
    config = ToDoConfig(ratio=0.89, max_depth=1, deeper_ratios=[0.75], auto=False, start=0.1, end=0.9)
    with pytest.raises(AttributeError):
        config.ratio = 0.5
    assert config.deeper_ratios == (0.75,)
    assert ToDoConfig.from_mapping(config.to_dict()) == config
    assert [config.factor_at(d) for d in range(3)] == [3.0, 2.0, 1.0]


def grid_tokens(batch, height, width, channels=5):
    return torch.randn(batch, height * width, channels)


def as_image(tokens, grid):
    batch, _, channels = tokens.shape
    return tokens.transpose(1, 2).reshape(batch, channels, *grid)


@pytest.mark.parametrize(("method", "mode"), [("nearest", "nearest"), ("nearest-exact", "nearest-exact")])
@pytest.mark.parametrize("factor", [2, 4])
def test_nearest_methods_equal_torch_interpolate_on_divisible_grids(method, mode, factor):
    tokens = grid_tokens(2, 32, 48)
    expected = F.interpolate(as_image(tokens, (32, 48)), size=(32 // factor, 48 // factor), mode=mode)
    result = downsample_tokens(tokens, (32, 48), float(factor), method)
    assert torch.equal(result, expected.flatten(2).transpose(1, 2))


def test_avg_pool_averages_each_cell():
    tokens = grid_tokens(1, 16, 16)
    expected = F.avg_pool2d(as_image(tokens, (16, 16)), 2).flatten(2).transpose(1, 2)
    torch.testing.assert_close(downsample_tokens(tokens, (16, 16), 2.0, "avg-pool"), expected)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("grid", "factor", "kv_grid"), [((135, 240), 2.0, (68, 120)), ((64, 64), 1.5, (43, 43)),
                                                          ((7, 5), 3.0, (3, 2))])
def test_odd_grids_and_fractional_factors_keep_every_edge(method, grid, factor, kv_grid):
    tokens = grid_tokens(1, *grid)
    result = downsample_tokens(tokens, grid, factor, method)
    assert result.shape == (1, kv_grid[0] * kv_grid[1], 5)
    if method == "nearest":
        index = gather_index(grid, factor, method, tokens.device)
        assert index[0] == 0
        assert index.unique().numel() == index.numel()
        assert int(index.max()) // grid[1] >= grid[0] - factor


def test_index_is_cached_per_grid_factor_method_and_device():
    first = gather_index((20, 30), 2.0, "nearest", torch.device("cpu"))
    assert gather_index((20, 30), 2.0, "nearest", torch.device("cpu")) is first
    assert gather_index((20, 30), 2.0, "nearest-exact", torch.device("cpu")) is not first


def test_factor_one_returns_the_tokens_untouched():
    tokens = grid_tokens(1, 8, 8)
    assert downsample_tokens(tokens, (8, 8), 1.0, "nearest") is tokens


def test_an_index_cached_under_inference_mode_serves_a_call_that_records_gradients():
    """The WebUI samples under inference mode; an extension with trainable modules (LLLite) records gradients."""
    from todo_ext.downsample import _index_cache

    _index_cache.clear()
    tokens = torch.randn(1, 36, 4)
    with torch.inference_mode():
        downsample_tokens(tokens, (6, 6), 2.0, "nearest")
    weight = torch.ones(4, requires_grad=True)
    reduced = downsample_tokens(tokens * weight, (6, 6), 2.0, "nearest")
    reduced.sum().backward()
    assert reduced.shape == (1, 9, 4) and weight.grad is not None
