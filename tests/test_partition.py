"""Partition: offsets, every kind, custom mappings, errors, serialisation, and random MLP shapes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from curvlab.errors import PartitionError
from curvlab.partition import Partition, trainable_parameters


def mlp(sizes, bias=True):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b, bias=bias))
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


@pytest.fixture
def model():
    return nn.Sequential(
        nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2), nn.Linear(2, 1)
    )  # P = 8 + 6 + 3


def test_offsets_follow_the_reference_ordering(model):
    part = Partition.from_model(model)
    flat = torch.cat([p.detach().flatten() for _, p in trainable_parameters(model)])
    assert part.num_params == flat.numel() == 17
    assert [p.offset for p in part.params] == [0, 6, 8, 12, 14, 16]
    for info, (name, param) in zip(part.params, trainable_parameters(model), strict=True):
        assert info.name == name and info.shape == tuple(param.shape)
        assert torch.equal(flat[info.slice].reshape(info.shape), param.detach())
    assert [p.layer for p in part.params] == ["0", "0", "2", "2", "3", "3"]
    assert [p.role for p in part.params] == ["weight", "bias"] * 3


def test_frozen_parameters_are_left_out():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    model[0].weight.requires_grad_(False)
    part = Partition.from_model(model)
    assert part.group_names == ("0.bias", "1.weight", "1.bias") and part.num_params == 5
    assert part.params[0].offset == 0


@pytest.mark.parametrize(
    "kind, names",
    [
        ("canonical", ("0.weight", "0.bias", "2.weight", "2.bias", "3.weight", "3.bias")),
        ("layer", ("0", "2", "3")),
        ("trivial", ("all",)),
        ("blocks-1", ("block0.weight", "block0.bias")),
        ("blocks-2", ("block0.weight", "block0.bias", "block1.weight", "block1.bias")),
    ],
)
def test_kinds(model, kind, names):
    part = Partition.from_model(model, kind)
    assert part.group_names == names and part.kind == kind
    ids = part.group_ids()
    assert sorted(torch.cat([g.indices for g in part.groups]).tolist()) == list(range(17))
    for position, group in enumerate(part.groups):
        assert bool((ids[group.indices] == position).all())


def test_blocks_k_cuts_layers_into_contiguous_chunks(model):
    part = Partition.from_model(model, "blocks-2")  # layers 0, 2 | 3
    assert part.group("block0.weight").param_names == ("0.weight", "2.weight")
    assert part.group("block0.bias").indices.tolist() == [6, 7, 12, 13]
    assert part.group("block1.weight").indices.tolist() == [14, 15]
    assert part.group("block0.weight").contiguous is None
    assert Partition.from_model(model, "layer").group("2").contiguous == slice(8, 14)


def test_entries_gives_one_group_per_scalar(model):
    part = Partition.from_model(model, "entries")
    assert part.num_groups == 17
    assert part.group_names[6] == "0.bias[0]" and part.group(6).indices.tolist() == [6]
    assert Partition.from_dict(part.to_dict()) == part


@pytest.mark.parametrize(
    "spec",
    [
        {
            "0.weight": "w",
            "2.weight": "w",
            "3.weight": "w",
            "0.bias": "b",
            "2.bias": "b",
            "3.bias": "b",
        },
        {"w": ["0.weight", "2.weight", "3.weight"], "b": ["0.bias", "2.bias", "3.bias"]},
    ],
    ids=["param->group", "group->params"],
)
def test_custom_mappings(model, spec):
    part = Partition.from_model(model, spec)
    assert part.kind == "custom" and part.group_names == ("w", "b")
    assert part.group("b").indices.tolist() == [6, 7, 12, 13, 16]
    assert part.restrict(["b"]).tolist() == [6, 7, 12, 13, 16]


def test_errors(model):
    with pytest.raises(PartitionError, match="misses parameters: 0.bias, 2.bias"):
        Partition.from_model(model, {"a": ["0.weight", "2.weight", "3.weight", "3.bias"]})
    with pytest.raises(PartitionError, match="'0.weight' is named twice \\(groups 'a' and 'b'\\)"):
        Partition.from_model(
            model,
            {
                "a": ["0.weight"],
                "b": ["0.weight", "0.bias", "2.weight", "2.bias", "3.weight", "3.bias"],
            },
        )
    with pytest.raises(
        PartitionError, match="group 'a' names 'nope', which is not a trainable parameter"
    ):
        Partition.from_model(model, {"nope": "a"})
    with pytest.raises(PartitionError, match="unknown partition kind 'rows'"):
        Partition.from_model(model, "rows")
    with pytest.raises(PartitionError, match="unknown partition 3"):
        Partition.from_model(model, 3)
    with pytest.raises(PartitionError, match="blocks-4 needs 1 <= k <= number of layers \\(3\\)"):
        Partition.from_model(model, "blocks-4")
    with pytest.raises(
        PartitionError, match="maps parameter -> group, or group -> \\[parameters\\]"
    ):
        Partition.from_model(model, {"a": "x", "b": ["0.bias"]})
    with pytest.raises(PartitionError, match="ReLU has no trainable parameters"):
        Partition.from_model(nn.ReLU())
    part = Partition.from_model(model)
    with pytest.raises(KeyError, match="no group 'x'"):
        part.group("x")
    with pytest.raises(KeyError, match="no trainable parameter 'x'"):
        part.param("x")


@pytest.mark.parametrize(
    "kind",
    [
        "canonical",
        "layer",
        "trivial",
        "blocks-2",
        "entries",
        {"w": ["0.weight"], "r": ["0.bias", "2.weight", "2.bias", "3.weight", "3.bias"]},
    ],
)
def test_dict_and_json_round_trip(model, kind):
    part = Partition.from_model(model, kind)
    again = Partition.from_dict(part.to_dict())
    assert again == part and hash(again) == hash(part)
    assert again.group_names == part.group_names and again.kind == part.kind
    assert all(
        torch.equal(a.indices, b.indices) for a, b in zip(again.groups, part.groups, strict=True)
    )
    assert Partition.from_json(part.to_json()) == part
    assert Partition.from_params(part.params, part) is part


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 4), min_size=2, max_size=5),
    bias=st.booleans(),
    kind=st.sampled_from(["canonical", "layer", "trivial", "entries", "blocks-1", "blocks-2"]),
)
def test_random_mlps(sizes, bias, kind):
    model = mlp(sizes, bias)
    num_layers = len(sizes) - 1
    if kind == "blocks-2" and num_layers < 2:
        kind = "blocks-1"
    part = Partition.from_model(model, kind)
    expected_p = sum(a * b + (b if bias else 0) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    assert part.num_params == expected_p
    offsets = [p.offset for p in part.params]
    assert offsets == [sum(q.numel for q in part.params[:i]) for i in range(len(part.params))]
    covered = torch.cat([g.indices for g in part.groups]).sort().values
    assert covered.tolist() == list(range(expected_p))  # every entry exactly once
    labels = part.flat_labels()
    assert all(len(v) == expected_p for v in labels.values())
    ids = part.group_ids().tolist()
    assert labels["group"] == [part.group_names[i] for i in ids]
    vector = torch.randn(expected_p)
    assert torch.equal(part.flatten(part.unflatten(vector)), vector)
    assert Partition.from_dict(part.to_dict()) == part
    if kind == "layer":
        assert part.num_groups == num_layers


def test_flatten_errors(model):
    part = Partition.from_model(model)
    with pytest.raises(ValueError, match="expected 6 tensors, got 1"):
        part.flatten([torch.ones(3)])
    with pytest.raises(ValueError, match="expected a vector of length 17"):
        part.unflatten(torch.ones(3))


def test_module_depth_groups_residual_blocks():
    from curvlab.models import resnet

    part = Partition.from_model(resnet(1, 10, depth=14, width=2), "module-2")
    assert part.group_names == ("conv1", "bn1", "layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0",
                                "layer3.1", "linear")
    assert part.group("layer2.0").size == sum(  # conv1, bn1, conv2, bn2 and the projection shortcut
        p.numel() for n, p in resnet(1, 10, depth=14, width=2).named_parameters() if n.startswith("layer2.0."))
    assert Partition.from_model(resnet(1, 10, depth=14, width=2), "module-1").group_names[2:5] == (
        "layer1", "layer2", "layer3")
    with pytest.raises(PartitionError, match="module-d"):
        Partition.from_model(resnet(1, 10, depth=8, width=2), "module-0")
