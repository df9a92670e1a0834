import pytest
import torch
import torch.nn.functional as F

from brainkern.data import assemble_slabs, sample_subvolumes, slab_starts


def test_sample_subvolumes_defaults_and_content():
    x = torch.randn(3, 1, 32, 16, 24)
    slabs, starts, low = sample_subvolumes(x, generator=torch.Generator().manual_seed(0))
    assert slabs.shape == (3, 1, 4, 16, 24) and starts.shape == (3,) and starts.dtype == torch.int64
    assert low.shape == (3, 1, 8, 4, 6)
    for i in range(3):
        s = int(starts[i])
        assert 0 <= s <= 28
        torch.testing.assert_close(slabs[i], x[i, :, s : s + 4])
    torch.testing.assert_close(low, F.avg_pool3d(x, 4))
    torch.testing.assert_close(low[0, 0, 0, 0, 0], x[0, 0, :4, :4, :4].mean())


def test_sample_subvolumes_seeded():
    x = torch.randn(8, 2, 16, 8, 8)
    a = sample_subvolumes(x, depth=5, factor=2, generator=torch.Generator().manual_seed(1))
    b = sample_subvolumes(x, depth=5, factor=2, generator=torch.Generator().manual_seed(1))
    for u, v in zip(a, b, strict=True):
        assert torch.equal(u, v)
    starts = torch.cat(
        [sample_subvolumes(x, depth=5, generator=torch.Generator().manual_seed(s))[1] for s in range(20)]
    )
    assert starts.min() == 0 and starts.max() == 11  # the whole range [0, D - depth] is reachable


def test_assemble_round_trip():
    x = torch.randn(2, 1, 20, 6, 5)
    for depth in (4, 6, 20):
        starts = slab_starts(20, depth)
        slabs = [x[:, :, s : s + depth] for s in starts]
        torch.testing.assert_close(assemble_slabs(slabs, starts, 20), x)
    assert slab_starts(20, 6) == [0, 6, 12, 14]


def test_assemble_per_sample_starts_and_overlap_average():
    x = torch.randn(2, 1, 8, 3, 3)
    a = torch.tensor([0, 2])
    b = torch.tensor([4, 5])
    slabs = [
        torch.stack([x[i, :, int(a[i]) : int(a[i]) + 4] for i in range(2)]),
        torch.stack([x[i, :, int(b[i]) : int(b[i]) + 3] for i in range(2)]) + 1.0,
    ]
    with pytest.raises(ValueError, match=r"planes \[0, 1, 7\] are covered by no slab"):
        assemble_slabs(slabs, [a, b], 8)  # sample 1 misses planes 0, 1, sample 0 plane 7
    out = assemble_slabs([x[:, :, 0:8], *slabs], [0, a, b], 8)
    # sample 0: planes 0-3 covered twice with the same values, 4-6 by x and x + 1
    torch.testing.assert_close(out[0, :, 0:4], x[0, :, 0:4])
    torch.testing.assert_close(out[0, :, 4:7], x[0, :, 4:7] + 0.5)
    torch.testing.assert_close(out[0, :, 7], x[0, :, 7])


def test_bad_inputs():
    with pytest.raises(ValueError, match="divisible"):
        sample_subvolumes(torch.zeros(1, 1, 10, 8, 8), factor=4)
    with pytest.raises(ValueError, match="depth"):
        sample_subvolumes(torch.zeros(1, 1, 8, 8, 8), depth=9)
    with pytest.raises(ValueError, match=r"\(N, C, D, H, W\)"):
        sample_subvolumes(torch.zeros(1, 8, 8, 8))
    with pytest.raises(ValueError, match="outside"):
        assemble_slabs([torch.zeros(1, 1, 4, 2, 2)], [6], 8)
