"""The shared argument checks of attnzoo.attention.validation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from attnzoo.attention.validation import broadcasts_to, check_broadcastable_to

shapes = st.lists(st.integers(0, 3), max_size=4).map(tuple)


@given(shape=shapes, target=shapes)
def test_broadcasts_to_agrees_with_torch(shape, target):
    try:
        expected = torch.broadcast_shapes(shape, target) == target
    except RuntimeError:  # the shapes do not broadcast at all
        expected = False
    assert broadcasts_to(shape, target) == expected


def test_check_broadcastable_to_names_the_argument():
    check_broadcastable_to(torch.ones(2, 1, 1, 5), (2, 3, 4, 5), "mask", "scores of shape")
    with pytest.raises(ValueError, match=r"`mask` of shape \(2, 1, 4, 5\) does not broadcast"):
        check_broadcastable_to(torch.ones(2, 1, 4, 5), (2, 3, 1, 5), "mask", "scores of shape")
    with pytest.raises(ValueError, match="`mask`"):
        check_broadcastable_to(torch.ones(1, 2, 3, 4, 5), (2, 3, 4, 5), "mask", "scores of shape")
