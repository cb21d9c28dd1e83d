import torch

from torch3dv.camera.pinhole import intrinsics_inverse
from torch3dv.geometry import axis_angle_to_matrix, rotation_error, translation_direction_error
from torch3dv.solvers.relative_pose_refine import _residuals_and_jacobian, _retract, refine_relative_pose
from torch3dv.testing import two_view_scene


def test_analytic_jacobian_matches_autograd():
    s = two_view_scene(3, 20, noise_px=1.0, seed=0)
    K1i, K2i = intrinsics_inverse(s.K1), intrinsics_inverse(s.K2)
    t = s.t / s.t.norm(dim=-1, keepdim=True)
    _, J = _residuals_and_jacobian(s.R, t, s.x1, s.x2, K1i, K2i)
    for m in range(3):
        def f(delta):
            R, tt = _retract((s.R[m:m + 1], t[m:m + 1]), delta[None])
            return _residuals_and_jacobian(R, tt, s.x1[m:m + 1], s.x2[m:m + 1], K1i[m:m + 1], K2i[m:m + 1],
                                           jacobian=False)[0][0]

        Jref = torch.autograd.functional.jacobian(f, torch.zeros(5, dtype=torch.float64))
        torch.testing.assert_close(J[m], Jref, rtol=1e-7, atol=1e-9)


def test_refinement_recovers_pose_from_perturbed_start():
    s = two_view_scene(8, 50, noise_px=0.0, seed=1)
    g = torch.Generator().manual_seed(0)
    dR = axis_angle_to_matrix(0.02 * torch.randn(8, 3, generator=g, dtype=torch.float64))
    t0 = s.t / s.t.norm(dim=-1, keepdim=True) + 0.05 * torch.randn(8, 3, generator=g, dtype=torch.float64)
    res = refine_relative_pose(dR @ s.R, t0, s.x1, s.x2, s.K1, s.K2, iterations=30)
    assert bool(res.success.all())
    assert float(rotation_error(res.R, s.R).max()) < 1e-7
    assert float(translation_direction_error(res.t, s.t).max()) < 1e-6


def test_refinement_gradcheck():
    s = two_view_scene(1, 12, noise_px=0.5, seed=2)
    t = s.t / s.t.norm(dim=-1, keepdim=True)

    def fn(x1, x2):
        r = refine_relative_pose(s.R, t, x1, x2, s.K1, s.K2, iterations=30)
        return r.R, r.t

    x1 = s.x1.clone().requires_grad_(True)
    x2 = s.x2.clone().requires_grad_(True)
    # implicit gradient with the Gauss-Newton Hessian: approximate for non-zero residuals, hence the tolerance
    assert torch.autograd.gradcheck(fn, (x1, x2), eps=1e-6, atol=5e-4, rtol=5e-2, fast_mode=True)
