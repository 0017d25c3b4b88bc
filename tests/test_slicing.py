"""hsr_plugin.slicing: the rows and columns of each head (exact and reference slicing) and of MLP
channels, and the errors for impossible shapes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from hsr_plugin.architecture import AttentionBlock
from hsr_plugin.slicing import head_slice_mask, union_head_slices
from tests.helpers import raises_exactly


@given(st.integers(1, 4), st.sampled_from([1, 2, 4]), st.integers(1, 5))
def test_exact_slices_partition_q_and_o_and_share_kv_within_a_group(kv_heads, group, head_dim):
    heads, hidden = kv_heads * group, 8
    q_union = torch.zeros(heads * head_dim, hidden, dtype=torch.int)
    o_union = torch.zeros(hidden, heads * head_dim, dtype=torch.int)
    for h in range(heads):
        q_union += head_slice_mask(
            (heads * head_dim, hidden), "q", h, h // group, head_dim, heads
        ).int()
        o_union += head_slice_mask(
            (hidden, heads * head_dim), "o", h, h // group, head_dim, heads
        ).int()
        k = head_slice_mask((kv_heads * head_dim, hidden), "k", h, h // group, head_dim, heads)
        assert k.sum() == head_dim * hidden
        first = head_slice_mask(
            (kv_heads * head_dim, hidden), "k", (h // group) * group, h // group, head_dim, heads
        )
        assert torch.equal(k, first), "heads of one KV group share K/V rows"
    assert (q_union == 1).all() and (o_union == 1).all()


def test_reference_slices_are_input_bands_and_whole_o_proj():
    q = head_slice_mask((8, 12), "q", 1, 0, 2, 4, mode="reference")
    assert q[:, 3:6].all() and q.sum() == 8 * 3
    assert head_slice_mask((12, 8), "o", 2, 1, 2, 4, mode="reference").all()
    union = union_head_slices((8, 12), "v", [(0, 0), (3, 1)], 2, 4, mode="reference")
    assert union[:, :3].all() and union[:, 9:].all() and not union[:, 3:9].any()


def test_slice_validation():
    with pytest.raises(ValueError, match="head 4 is outside"):
        head_slice_mask((8, 8), "q", 4, 0, 2, 4)
    with pytest.raises(ValueError, match="KV group 3 needs"):
        head_slice_mask((4, 8), "k", 0, 3, 2, 4)
    with pytest.raises(ValueError, match="projection"):
        head_slice_mask((4, 8), "x", 0, 0, 2, 4)


@pytest.mark.parametrize(
    ("group", "groups_of_heads"),
    [
        (1, [0, 1, 2, 3, 4, 5, 6, 7]),
        (2, [0, 0, 1, 1, 2, 2, 3, 3]),
        (4, [0, 0, 0, 0, 1, 1, 1, 1]),
        (8, [0, 0, 0, 0, 0, 0, 0, 0]),
    ],
)
def test_kv_groups_and_exact_slices_for_every_group_size(group, groups_of_heads):
    """8 query heads of dim 4 sharing 8 / group KV heads: head h reads KV group h // group."""
    block = AttentionBlock(0, "model.layers.0.self_attn", torch.nn.Identity(), 8, 8 // group, 4)
    assert block.kv_group_size == group
    assert [block.kv_group(h) for h in range(8)] == groups_of_heads
    kv_rows = 4 * (8 // group)
    for head, g in enumerate(groups_of_heads):
        k = head_slice_mask((kv_rows, 32), "k", head, g, 4, 8)
        assert k.any(1).nonzero().flatten().tolist() == list(range(4 * g, 4 * g + 4))
        assert k.all(1)[4 * g : 4 * g + 4].all()
        q = head_slice_mask((32, 32), "q", head, g, 4, 8)
        assert q.any(1).nonzero().flatten().tolist() == list(range(4 * head, 4 * head + 4))
        o = head_slice_mask((32, 32), "o", head, g, 4, 8)
        assert o.any(0).nonzero().flatten().tolist() == list(range(4 * head, 4 * head + 4))


def test_slices_refuse_impossible_shapes():
    with pytest.raises(ValueError):
        head_slice_mask((8, 8), "q", 0, 0, 4, 0)
    with pytest.raises(ValueError):
        head_slice_mask((8, 8), "q", 0, 0, 0, 2)
    with pytest.raises(ValueError):
        head_slice_mask((4, 8), "q", 0, 0, 4, 2)  # q needs 2 heads x 4 rows
    with pytest.raises(ValueError):
        head_slice_mask((4, 8), "v", 1, 1, 4, 2)  # KV group 1 needs rows 4..7
    with pytest.raises(ValueError):
        head_slice_mask((8, 4), "o", 0, 0, 4, 2)  # o needs 2 heads x 4 columns
    default = union_head_slices((8, 8), "q", [(1, 0)], 4, 2)
    assert default.any(1).nonzero().flatten().tolist() == [4, 5, 6, 7], "exact slicing by default"


def test_slice_errors_say_what_is_wrong():
    raises_exactly(
        "head slicing mode must be 'exact' or 'reference', got 'both'",
        head_slice_mask,
        (8, 8),
        "q",
        0,
        0,
        4,
        2,
        "both",
    )
    raises_exactly(
        "projection must be one of q, k, v, o; got 'x'", head_slice_mask, (8, 8), "x", 0, 0, 4, 2
    )
    raises_exactly(
        "num_heads (0) and head_dim (4) must be positive", head_slice_mask, (8, 8), "q", 0, 0, 4, 0
    )
    raises_exactly(
        "num_heads (2) and head_dim (0) must be positive", head_slice_mask, (8, 8), "q", 0, 0, 0, 2
    )
    raises_exactly("head 2 is outside [0, 2)", head_slice_mask, (8, 8), "q", 2, 0, 4, 2)
    raises_exactly("kv_group must be >= 0, got -1", head_slice_mask, (8, 8), "k", 0, -1, 4, 2)
    raises_exactly(
        "q_proj has 4 rows, fewer than num_heads*head_dim = 8",
        head_slice_mask,
        (4, 8),
        "q",
        0,
        0,
        4,
        2,
    )
    raises_exactly(
        "v_proj has 4 rows; KV group 1 needs 8", head_slice_mask, (4, 8), "v", 1, 1, 4, 2
    )
    raises_exactly(
        "o_proj has 4 columns, fewer than num_heads*head_dim = 8",
        head_slice_mask,
        (8, 4),
        "o",
        0,
        0,
        4,
        2,
    )


def test_mlp_channel_slices_accept_channel_zero_and_the_last_channel():
    from hsr_plugin.slicing import mlp_channel_slices

    gate = mlp_channel_slices((4, 3), "gate", [0, 3])
    assert gate.nonzero().tolist() == [[0, 0], [0, 1], [0, 2], [3, 0], [3, 1], [3, 2]]
    down = mlp_channel_slices((3, 4), "down", [0])
    assert down.nonzero().tolist() == [[0, 0], [1, 0], [2, 0]]
    with pytest.raises(ValueError, match=r"must lie in \[0, 4\), got \[-1\]"):
        mlp_channel_slices((3, 4), "down", [-1])
    with pytest.raises(ValueError, match=r"must lie in \[0, 4\), got \[4\]"):
        mlp_channel_slices((4, 3), "up", [4])


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ((4, 4), "q", 0, 0, 2, 2, "rows"),
            "head slicing mode must be 'exact' or 'reference', got 'rows'",
        ),
        (((4, 4), "x", 0, 0, 2, 2, "exact"), "projection must be one of q, k, v, o; got 'x'"),
        (
            ((4, 4, 1), "q", 0, 0, 2, 2, "exact"),
            "weight shape must be 2-D (out, in), got (4, 4, 1)",
        ),
        (((4, 4), "q", 0, 0, 0, 2, "exact"), "num_heads (2) and head_dim (0) must be positive"),
        (((4, 4), "q", 2, 0, 2, 2, "exact"), "head 2 is outside [0, 2)"),
        (((4, 4), "k", 0, -1, 2, 2, "exact"), "kv_group must be >= 0, got -1"),
        (
            ((3, 4), "q", 0, 0, 2, 2, "exact"),
            "q_proj has 3 rows, fewer than num_heads*head_dim = 4",
        ),
        (((2, 4), "v", 0, 1, 2, 2, "exact"), "v_proj has 2 rows; KV group 1 needs 4"),
        (
            ((4, 3), "o", 0, 0, 2, 2, "exact"),
            "o_proj has 3 columns, fewer than num_heads*head_dim = 4",
        ),
    ],
)
def test_head_slice_arguments_are_checked_with_exact_messages(args, message):
    from hsr_plugin.slicing import head_slice_mask

    with pytest.raises(ValueError) as err:
        head_slice_mask(*args)
    assert str(err.value) == message
