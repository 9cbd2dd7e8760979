"""probes.scan's readout fits: the Cholesky solve of ΦᵀΦ + α I (ridge > 0) and the eigendecomposition's
pseudo-inverse (ridge 0) against torch.linalg's dense references, one factor per ridge for every target."""

import torch

F64 = torch.float64


def _normal(n: int = 300, d: int = 24, rank: int | None = None):
    """Normal equations of real scan features: decaying accumulations of a random sequence (rank < d: a feature
    block repeated, so ΦᵀΦ is singular)."""
    from pytest_ladder.probes.scan import Normal, scan_features

    generator = torch.Generator().manual_seed(3)
    x = torch.randn(n, d // 3, dtype=F64, generator=generator)
    phi = scan_features(x, [0.5, 0.9])
    if rank is not None:
        phi = torch.cat([phi[:, :rank], phi[:, :d - rank]], dim=1)
    targets = {"o": torch.randn(n, 5, dtype=F64, generator=generator),
               "oracle": phi[:, :7] @ torch.randn(7, 4, dtype=F64, generator=generator)}
    normal = Normal()
    normal.add(phi, targets)
    return normal, phi, targets


def test_a_ridge_fit_is_the_solution_of_the_regularised_normal_equations():
    from pytest_ladder.probes.scan import fit_scan

    normal, phi, targets = _normal()
    a = phi.mT @ phi
    d = a.shape[0]
    for ridge in (1e-4, 1e-2, 10.0):
        regularised = a + ridge * a.trace() / d * torch.eye(d, dtype=F64)
        for name, y in targets.items():
            expected = torch.linalg.solve(regularised, phi.mT @ y)
            got = fit_scan(normal, name, ridge)
            assert torch.allclose(got, expected, rtol=1e-9, atol=1e-12 * float(expected.abs().max()))
        w = 8  # the memoryless fit: the first w features, α from their own trace
        block = a[:w, :w]
        expected = torch.linalg.solve(block + ridge * block.trace() / w * torch.eye(w, dtype=F64),
                                      phi[:, :w].mT @ targets["o"])
        assert torch.allclose(fit_scan(normal, "o", ridge, width=w), expected, rtol=1e-9, atol=1e-15)


def test_ridge_zero_is_the_least_squares_pseudo_inverse_on_singular_features():
    from pytest_ladder.probes.scan import fit_scan

    normal, phi, targets = _normal(rank=16)
    assert int(torch.linalg.matrix_rank(phi.mT @ phi)) == 16
    for name, y in targets.items():
        expected = torch.linalg.pinv(phi) @ y  # the minimum-norm least-squares solution
        assert torch.allclose(fit_scan(normal, name, 0.0), expected, rtol=1e-8, atol=1e-10)


def test_targets_in_a_row_with_one_ridge_share_one_factor_and_release_drops_it():
    from pytest_ladder.probes.scan import fit_scan

    normal, _, _ = _normal()
    fit_scan(normal, "o", 1e-3)
    factor = normal._factor[1]
    fit_scan(normal, "oracle", 1e-3)
    assert normal._factor[1] is factor
    fit_scan(normal, "oracle", 1e-1)
    assert normal._factor[0] == (normal.ftf.shape[0], 1e-1) and normal._factor[1] is not factor
    normal.release()
    assert normal._factor is None and not normal._eigh and not normal._ftf


def test_fits_on_the_compute_device_equal_the_dense_references(device):
    """The statistics stay on the CPU and the fits run on the compute device (the GPU under a workspace): the
    in-place Cholesky factor and the pseudo-inverse give the CPU references' solutions there too."""
    from pytest_ladder.probes.scan import fit_scan

    normal, phi, targets = _normal(rank=16)
    normal.device = torch.device(device)
    full, _, _ = _normal()
    full.device = torch.device(device)
    a = full.ftf
    d = a.shape[0]
    for ridge in (1e-4, 1e-1):
        regularised = a + ridge * a.trace() / d * torch.eye(d, dtype=F64)
        for name in targets:
            expected = torch.linalg.solve(regularised, full.fty[name])
            got = fit_scan(full, name, ridge)
            assert got.device.type == device
            assert torch.allclose(got.cpu(), expected, rtol=1e-9, atol=1e-12 * float(expected.abs().max()))
    for name, y in targets.items():
        got = fit_scan(normal, name, 0.0)
        assert got.device.type == device
        assert torch.allclose(got.cpu(), torch.linalg.pinv(phi) @ y, rtol=1e-8, atol=1e-10)
