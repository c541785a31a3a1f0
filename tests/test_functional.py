"""The pure kernels: second moments, batched factorization with float64 retry, application."""

import pytest
import torch

from dopr.functional import (
    apply_cholesky,
    apply_factor,
    apply_inverse,
    apply_low_rank,
    factorize,
    factorize_low_rank,
    second_moment_sum,
    symmetric_blocks,
    symmetric_product_,
)


def test_second_moment_sum_with_bias_equals_the_augmented_outer_products():
    z = torch.randn(9, 4, dtype=torch.float64)
    za = torch.cat([z, torch.ones(9, 1, dtype=torch.float64)], dim=1)
    assert torch.allclose(second_moment_sum(z, augment_bias=True), za.T @ za)
    acc = second_moment_sum(z[:4], augment_bias=True)
    second_moment_sum(z[4:], augment_bias=True, out=acc)  # accumulation over micro-batches
    assert torch.allclose(acc, za.T @ za)


def test_factorize_matches_explicit_inverse_for_a_batch():
    z = torch.randn(3, 50, 6, dtype=torch.float64) * torch.logspace(1, -2, 6, dtype=torch.float64)
    sigma = z.transpose(1, 2) @ z / 50
    f = factorize(sigma, 0.01)
    for b in range(3):
        lam = 0.01 * torch.trace(sigma[b]) / 6
        expected = torch.linalg.inv(sigma[b] + lam * torch.eye(6, dtype=torch.float64))
        assert torch.allclose(f.inverse[b], expected, rtol=1e-10, atol=0)
        assert torch.isclose(f.damping[b], lam)
        eig = torch.linalg.eigvalsh(sigma[b] + lam * torch.eye(6, dtype=torch.float64))
        assert 1 <= f.condition[b] <= eig.max() / eig.min() * (1 + 1e-9)
    assert f.ok.all() and not f.used_float64.any()


def _fails_in_float32() -> torch.Tensor:
    """A positive definite float32 matrix with condition 1e9 (skips where float32 Cholesky copes)."""
    g = torch.Generator().manual_seed(4)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))
    bad = ((q * torch.logspace(0, -9, 12, dtype=torch.float64)) @ q.T).float()
    bad = (bad + bad.T) / 2
    if torch.linalg.cholesky_ex(bad).info == 0:
        pytest.skip("this BLAS factorizes the matrix in float32; the retry path is not reached")
    return bad


def test_float32_failure_is_retried_in_float64():
    # a positive definite float32 matrix with condition 1e9: float32 Cholesky breaks down, float64 does not
    bad = _fails_in_float32()
    f = factorize(torch.stack([torch.eye(12), bad]), 0.0)
    assert f.ok.tolist() == [True, True] and f.used_float64.tolist() == [False, True]
    assert f.inverse.dtype == torch.float32
    expected = torch.linalg.inv(bad.double())
    assert torch.allclose(f.inverse[1].double(), expected, rtol=1e-3, atol=1e-3 * expected.abs().max().item())


def test_an_inverse_that_overflows_float32_is_a_failure():
    f = factorize(torch.full((1, 1, 1), 1e-40), 0.0)  # its inverse, 1e40, is not a float32
    assert f.ok.tolist() == [False]


def test_failure_in_both_precisions_is_reported_not_raised():
    f = factorize(torch.zeros(2, 3, 3), 0.0)
    assert f.ok.tolist() == [False, False]


def test_diagonal_sigma():
    freq = torch.tensor([[0.5, 0.3, 0.2, 0.0]])
    f = factorize(freq, 0.4, diagonal=True)
    lam = 0.4 * 1.0 / 4
    assert torch.allclose(f.inverse, 1 / (freq + lam))
    g = torch.randn(3, 4)
    assert torch.allclose(apply_inverse(g, f.inverse[0]), g @ torch.diag(f.inverse[0]))


def test_diagonal_sigma_without_damping_tolerates_unseen_tokens():
    f = factorize(torch.tensor([[0.75, 0.25, 0.0]]), 0.0, diagonal=True)
    assert f.ok.tolist() == [True]
    assert torch.allclose(f.inverse[0, :2], torch.tensor([4 / 3, 4.0])) and torch.isfinite(f.inverse).all()
    assert f.condition.item() == 3.0


def test_finite_rows_matches_isfinite_all() -> None:
    from dopr.functional import finite_rows

    x = torch.randn(5, 7, 3)
    x[1, 2, 0], x[3, 0, 1], x[4, 6, 2] = float("nan"), float("inf"), -float("inf")
    assert finite_rows(x).tolist() == torch.isfinite(x).flatten(1).all(dim=1).tolist() == [True, False, True,
                                                                                            False, False]
    big = torch.full((2, 4), 6e4, dtype=torch.float16)  # finite values whose sum would overflow fp16
    assert finite_rows(big).all()
    huge = torch.tensor([[3e38, 3e38], [3e38, float("inf")], [-3e38, -3e38]])  # float32 sums overflow too
    assert finite_rows(huge, exact=True).tolist() == [True, False, True]
    assert finite_rows(huge).tolist()[1] is False  # the fast check may flag an overflowing row, never pass a bad one
    assert finite_rows(torch.zeros(3, 0)).tolist() == [True, True, True]


@pytest.mark.parametrize("d", [5, 255, 256, 300, 1031])
def test_block_symmetric_product_equals_the_full_product(d: int) -> None:
    z = torch.randn(40, d, dtype=torch.float64)
    acc = torch.randn(d, d, dtype=torch.float64)
    acc = acc + acc.T  # accumulating into a symmetric running sum, as over micro-batches
    expected = acc + z.T @ z
    symmetric_product_(acc, z)
    assert torch.allclose(acc, expected, rtol=1e-12, atol=1e-10)
    assert torch.allclose(acc, acc.T, rtol=1e-12, atol=1e-10)
    assert symmetric_blocks(d) == (1 if d < 256 else min(8, d // 128))


@pytest.mark.parametrize("d", [5, 256, 300, 1031])
def test_out_of_place_symmetric_gram_equals_the_full_product(d: int) -> None:
    from dopr.functional import symmetric_gram

    z = torch.randn(40, d, dtype=torch.float64)
    gram = symmetric_gram(z)
    assert torch.allclose(gram, z.T @ z, rtol=1e-12, atol=1e-10) and torch.equal(gram, gram.T)


def test_second_moment_sum_with_bias_uses_the_block_product_for_wide_inputs() -> None:
    z = torch.randn(30, 600, dtype=torch.float64)
    za = torch.cat([z, torch.ones(30, 1, dtype=torch.float64)], dim=1)
    assert torch.allclose(second_moment_sum(z, augment_bias=True), za.T @ za, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("d_out", [3, 40])
def test_cholesky_solves_equal_the_explicit_inverse(d_out: int) -> None:
    a = torch.randn(3, 50, 20, dtype=torch.float64) * torch.logspace(2, -3, 20, dtype=torch.float64)
    sigma = a.mT @ a / 50
    chol, inv = factorize(sigma, 1e-4, cholesky=True), factorize(sigma, 1e-4)
    assert chol.kind == "cholesky" and inv.kind == "inverse" and bool(chol.ok.all())
    assert torch.allclose(chol.factor @ chol.factor.mT, sigma + chol.damping[:, None, None] * torch.eye(20,
                          dtype=torch.float64), rtol=1e-10, atol=1e-12)
    assert torch.equal(chol.condition, inv.condition) and torch.equal(chol.damping, inv.damping)
    g = torch.randn(d_out, 20, dtype=torch.float64)
    for b in range(3):
        expected = torch.linalg.solve(sigma[b] + inv.damping[b] * torch.eye(20, dtype=torch.float64), g.T).T
        assert torch.allclose(apply_cholesky(g, chol.factor[b]), expected, rtol=1e-8, atol=1e-10)
        assert torch.allclose(apply_factor(g, chol.factor[b], "cholesky"), apply_factor(g, inv.factor[b], "inverse"),
                              rtol=1e-8, atol=1e-10)
    with pytest.raises(AttributeError, match="Cholesky factors"):
        _ = chol.inverse


def test_cholesky_factor_is_retried_in_float64_like_the_inverse() -> None:
    bad = _fails_in_float32()
    f = factorize(torch.stack([torch.eye(12), bad]), 0.0, cholesky=True)
    assert f.ok.tolist() == [True, True] and f.used_float64.tolist() == [False, True]
    assert f.factor.dtype == torch.float32
    chol = f.factor[1].double()
    assert torch.allclose(chol @ chol.T, bad.double(), rtol=0, atol=1e-6)


def test_low_rank_form_equals_the_inverse_of_the_formed_sigma() -> None:
    z = torch.randn(6, 20, dtype=torch.float64) * torch.logspace(1, -1, 20, dtype=torch.float64)
    g = torch.randn(4, 20, dtype=torch.float64)
    f = factorize_low_rank(z, 1e-2)
    full = factorize((z.T @ z / 6)[None], 1e-2)
    assert f.ok and not f.used_float64 and torch.isclose(f.damping, full.damping[0])
    assert torch.allclose(apply_low_rank(g, z, f.chol, f.damping), g @ full.inverse[0], rtol=1e-9, atol=1e-12)
    eig = torch.linalg.eigvalsh(z.T @ z / 6 + f.damping * torch.eye(20, dtype=torch.float64))
    assert 1 <= f.condition <= eig.max() / eig.min() * (1 + 1e-9)


def test_low_rank_form_without_damping_is_singular_and_reported() -> None:
    assert not factorize_low_rank(torch.randn(3, 10), 0.0).ok


def test_low_rank_form_is_retried_in_float64() -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, 50, generator=g)
    z = base.repeat(6, 1) + 1e-4 * torch.randn(6, 50, generator=g)  # nearly equal rows: K breaks down in float32
    if torch.linalg.cholesky_ex(z @ z.T + 6 * 1e-12 * (z.square().sum() / 300) * torch.eye(6)).info == 0:
        pytest.skip("this BLAS factorizes K in float32; the retry path is not reached")
    f = factorize_low_rank(z, 1e-12)
    assert f.ok and f.used_float64 and f.chol.dtype == torch.float32
    k = (z.double() @ z.double().T) + 6 * f.damping.double() * torch.eye(6, dtype=torch.float64)
    assert torch.allclose(f.chol.double() @ f.chol.double().T, k, rtol=1e-5, atol=1e-5 * k.abs().max().item())
