"""RANSAC building blocks that need no solver: sampling, scores, termination."""

import math

import pytest
import torch

from torch3dv.ransac.estimator import RansacOptions, required_iterations
from torch3dv.ransac.sampling import progressive_pool, sample_subsets, uniform_hash, valid_first_order
from torch3dv.ransac.scoring import magsac_weights, score_residuals


def test_subsets_are_uniform_and_distinct():
    pool = torch.tensor([5, 9, 3])
    s = sample_subsets(pool, 3, 20000, torch.arange(3), 0)
    assert s.shape == (3, 20000, 3)
    for i, n in enumerate(pool.tolist()):
        assert int(s[i].max()) < n and int(s[i].min()) >= 0
        srt = s[i].sort(-1).values
        assert bool((srt[:, 1:] != srt[:, :-1]).all()), "draws within a subset must be distinct"
    # all C(5,3) = 10 subsets equally likely: chi-square against uniform
    srt = s[0].sort(-1).values
    keys = srt[:, 0] * 25 + srt[:, 1] * 5 + srt[:, 2]
    counts = torch.unique(keys, return_counts=True)[1].double()
    assert counts.numel() == 10
    chi2 = float(((counts - 2000) ** 2 / 2000).sum())
    assert chi2 < 27.9  # 99.9% quantile, 9 dof


def test_sampling_depends_only_on_own_seed():
    a = sample_subsets(torch.tensor([50]), 5, 64, torch.tensor([7]), 3)
    b = sample_subsets(torch.tensor([20, 50, 30]), 5, 64, torch.tensor([1, 7, 2]), 3)
    assert torch.equal(a[0], b[1])
    c = sample_subsets(torch.tensor([50]), 5, 64, torch.tensor([7]), 4)
    assert not torch.equal(a, c), "a new round must draw new samples"


def test_uniform_hash_statistics():
    u = uniform_hash(torch.arange(4), 0, torch.arange(50000), 0)
    assert abs(float(u.mean()) - 0.5) < 0.01
    assert abs(float(u.var()) - 1 / 12) < 0.005
    assert float(u.min()) >= 0 and float(u.max()) < 1


def test_valid_first_order_and_prosac_pool():
    mask = torch.tensor([[False, True, True, False, True]])
    order = valid_first_order(mask)
    assert order[0, :3].tolist() == [1, 2, 4]
    scores = torch.tensor([[9.0, 0.1, 0.7, 5.0, 0.3]])
    order = valid_first_order(mask, scores)
    assert order[0, :3].tolist() == [2, 4, 1]
    n = torch.tensor([100])
    assert int(progressive_pool(n, 5, torch.tensor([0]), 100)) < 10
    assert int(progressive_pool(n, 5, torch.tensor([99]), 100)) == 100
    assert int(progressive_pool(n, 5, torch.tensor([0]), 0)) == 100


def test_required_iterations_formula():
    w = torch.tensor([0.5, 1.0, 0.0])
    n = required_iterations(w, 5, 0.99)
    assert abs(float(n[0]) - math.log(0.01) / math.log(1 - 0.5**5)) < 1e-9
    assert float(n[1]) < 1.0
    assert math.isinf(float(n[2]))


@pytest.mark.parametrize("dof", [2, 3, 4])
def test_magsac_loss_derivative_is_weight_times_residual(dof):
    # the score is sum(rho_max - rho(r)); d/dr of -score must equal w(r) * r (IRLS consistency)
    r = torch.linspace(0.05, 2.5, 40, dtype=torch.float64, requires_grad=True)
    th = 2.0
    valid = torch.ones(40, dtype=torch.bool)
    per_point = torch.stack([score_residuals((ri * ri)[None], valid[:1], th, "magsac", dof) for ri in r])
    (-per_point.sum()).backward()
    w = magsac_weights((r * r).detach(), valid, th, dof)
    torch.testing.assert_close(r.grad, w * r.detach(), rtol=1e-6, atol=1e-9)
    assert float(w[-1]) == 0.0  # beyond the threshold
    assert bool((w[:-1][r[:-1] < th] > 0).all())


def test_scores_rank_and_ignore_padding():
    r2 = torch.tensor([[0.0, 0.5, 4.0, 100.0], [0.0, 0.5, 4.0, float("nan")]])
    valid = torch.tensor([[True, True, True, False], [True, True, True, True]])
    for kind in ["inliers", "msac", "magsac"]:
        s = score_residuals(r2, valid, 1.0, kind)
        torch.testing.assert_close(s[0], s[1])  # padding == non-finite residual == outlier
    assert float(score_residuals(r2, valid, 1.0, "inliers")[0]) == 2.0
    assert abs(float(score_residuals(r2, valid, 1.0, "msac")[0]) - (1.0 + 0.5)) < 1e-6


def test_options_validation():
    with pytest.raises(ValueError):
        RansacOptions(score="lmeds")
    with pytest.raises(ValueError):
        RansacOptions(threshold=-1.0)
    with pytest.raises(ValueError):
        RansacOptions(confidence=1.0)
    with pytest.raises(ValueError):
        RansacOptions(trials_multiplier=0.0)


def test_preemptive_subset_size_follows_each_problems_inlier_ratio():
    from torch3dv.ransac.estimator import _PREEMPTIVE_INLIERS, _preemptive_subset

    n_valid = torch.tensor([512, 512, 512, 300, 40])
    best = torch.tensor([0, 350, 150, 30, 20])  # no model yet, 68%, 29%, 10%, 50% inliers
    seeds = torch.arange(5, dtype=torch.int64) + 11
    rounds = torch.tensor([0, 3, 5, 2, 1])
    sub, m = _preemptive_subset(n_valid, best, 48, seeds, rounds)
    size = m.sum(-1)
    ratio = best.double() / n_valid.double()
    # no model: the full 48; otherwise ~_PREEMPTIVE_INLIERS expected inliers, clamped to [24, 48], steps of 4
    assert size[0] == 48 and size[1] == 24 and size[3] == 48
    assert size[2] == max(24, min(48, 4 * math.ceil(_PREEMPTIVE_INLIERS / float(ratio[2]) / 4)))
    assert bool((size % 4 == 0).all()) and bool((m[:, :-1] >= m[:, 1:]).all())  # a prefix mask
    # distinct ranks within the pool, per problem
    for i in range(5):
        r = sub[i, : size[i]]
        assert r.unique().numel() == int(size[i])
        assert int(r.max()) < int(n_valid[i])
    # a problem's subset does not depend on the others in the batch
    sub1, m1 = _preemptive_subset(n_valid[2:3], best[2:3], 48, seeds[2:3], rounds[2:3])
    assert torch.equal(sub1[0, : int(m1.sum())], sub[2, : int(size[2])])
