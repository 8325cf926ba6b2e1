import dataclasses
import json

import pytest

import rrattention as rr


def test_defaults_match_the_documented_signature():
    cfg = rr.RRConfig()
    assert (cfg.stride, cfg.block_size, cfg.tau) == (8, 128, 0.95)
    assert (cfg.head_shift, cfg.selector) == ("round_robin", "top_tau")
    assert cfg.force_sink and cfg.force_diagonal and cfg.dense_last_query_block
    assert not cfg.exact_stride_causal
    assert cfg.min_sparse_len is None and cfg.dense_layers == () and dict(cfg.layer_overrides) == {}
    assert cfg.strides_per_block == 16


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"block_size": 128, "stride": 12}, ValueError, r"block_size % stride"),
        ({"block_size": 64, "stride": 128}, ValueError, r"block_size % stride"),
        ({"stride": 0}, ValueError, r"stride must be >= 1"),
        ({"stride": "8"}, TypeError, r"stride must be an int"),
        ({"stride": 8.0}, TypeError, r"stride must be an int"),
        ({"block_size": True}, TypeError, r"block_size must be an int"),
        ({"tau": 0.0}, ValueError, r"tau must be in \(0, 1\]"),
        ({"tau": -0.5}, ValueError, r"tau must be in \(0, 1\]"),
        ({"tau": 1.0001}, ValueError, r"tau must be in \(0, 1\]"),
        ({"tau": float("nan")}, ValueError, r"tau must be in \(0, 1\]"),
        ({"tau": "0.9"}, TypeError, r"tau must be a float"),
        ({"head_shift": "roundrobin"}, ValueError, r"head_shift must be one of .*'round_robin'"),
        ({"selector": "topk"}, ValueError, r"selector must be one of .*'forced_first'"),
        ({"estimator_precision": "bf16"}, ValueError, r"estimator_precision must be one of .*'exact'.*'fast'"),
        ({"force_sink": 1}, TypeError, r"force_sink must be a bool"),
        ({"dense_last_query_block": "yes"}, TypeError, r"dense_last_query_block must be a bool"),
        ({"exact_stride_causal": None}, TypeError, r"exact_stride_causal must be a bool"),
        ({"min_sparse_len": -1}, ValueError, r"min_sparse_len must be >= 0"),
        ({"dense_layers": [0, -2]}, ValueError, r"dense_layers\[1\] must be >= 0"),
        ({"dense_layers": 3}, TypeError, r"dense_layers must be a sequence"),
        ({"seed": -1}, ValueError, r"seed must be >= 0"),
        ({"layer_overrides": [1, 2]}, TypeError, r"layer_overrides must be a mapping"),
        ({"layer_overrides": {-1: {"tau": 0.9}}}, ValueError, r"layer_overrides key -1"),
        ({"layer_overrides": {2: {"taus": 0.9}}}, ValueError, r"layer_overrides\[2\] sets unknown field 'taus'"),
        ({"layer_overrides": {2: {"dense_layers": (1,)}}}, ValueError, r"layer_overrides\[2\] may not set 'dense_layers'"),
        ({"layer_overrides": {3: {"tau": 2.0}}}, ValueError, r"layer_overrides\[3\]: tau must be in \(0, 1\]"),
        ({"layer_overrides": {3: {"stride": 7}}}, ValueError, r"layer_overrides\[3\]: block_size must be a multiple"),
        ({"layer_overrides": {3: 0.9}}, TypeError, r"layer_overrides\[3\] must be a mapping"),
    ],
)
def test_invalid_fields_are_rejected_by_name(kwargs, error, message):
    with pytest.raises(error, match=message):
        rr.RRConfig(**kwargs)


def test_frozen_and_hashable():
    cfg = rr.RRConfig(layer_overrides={1: {"tau": 0.9}}, dense_layers=[3, 1, 3])
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.tau = 0.5
    with pytest.raises(TypeError):
        cfg.layer_overrides[1] = {"tau": 0.8}
    assert cfg.dense_layers == (1, 3)
    assert hash(cfg) == hash(rr.RRConfig(layer_overrides={1: {"tau": 0.9}}, dense_layers=(1, 3)))
    assert len({cfg, rr.RRConfig()}) == 2


def test_dict_json_and_yaml_round_trips(tmp_path):
    cfg = rr.RRConfig(
        stride=16, block_size=64, tau=0.9, head_shift="random", selector="forced_first", seed=7,
        dense_layers=(0, 1), layer_overrides={5: {"tau": 0.99, "stride": 4}}, min_sparse_len=4096,
    )
    assert rr.RRConfig.from_dict(cfg.to_dict()) == cfg
    assert rr.RRConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    path = tmp_path / "cfg.yaml"
    path.write_text(
        "model: x\nrr:\n  stride: 16\n  block_size: 64\n  tau: 0.9\n  head_shift: random\n"
        "  selector: forced_first\n  seed: 7\n  dense_layers: [1, 0]\n  min_sparse_len: 4096\n"
        "  layer_overrides:\n    5: {tau: 0.99, stride: 4}\n"
    )
    assert rr.RRConfig.from_yaml(path, key="rr") == cfg
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert rr.RRConfig.from_yaml(empty) == rr.RRConfig()


def test_from_dict_and_yaml_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown RRConfig field\(s\) \['threshold'\]"):
        rr.RRConfig.from_dict({"threshold": 0.9})
    with pytest.raises(TypeError, match="expects a mapping"):
        rr.RRConfig.from_dict([("tau", 0.9)])
    path = tmp_path / "cfg.yaml"
    path.write_text("tau: 0.9\n")
    with pytest.raises(ValueError, match="no top-level key 'rr'"):
        rr.RRConfig.from_yaml(path, key="rr")


def test_for_layer_applies_only_that_layers_overrides():
    cfg = rr.RRConfig(tau=0.95, dense_layers=(0,), layer_overrides={2: {"tau": 0.8, "head_shift": "fixed"}})
    two = cfg.for_layer(2)
    assert (two.tau, two.head_shift) == (0.8, "fixed")
    assert dict(two.layer_overrides) == {} and two.dense_layers == (0,)
    assert cfg.for_layer(3) == dataclasses.replace(cfg, layer_overrides={})
    assert cfg.is_dense_layer(0) and not cfg.is_dense_layer(2) and not cfg.is_dense_layer(None)
    with pytest.raises(ValueError, match="layer must be >= 0"):
        cfg.for_layer(-1)
