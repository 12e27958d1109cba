"""Each criterion against a value computed another way."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sensiprune as sp
from sensiprune.criteria.obs import DAMPING
from sensiprune.data import default_loss


def _manual_grads(model, batches):
    """Per-batch gradients with plain .backward(), one list per batch."""
    model = copy.deepcopy(model).eval()
    per_batch = []
    for x, y in batches:
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        per_batch.append({n: p.grad.clone() for n, p in model.named_parameters()})
    return per_batch


def test_magnitude_is_absolute_weight(mlp):
    scores = sp.score(mlp, "magnitude")
    assert torch.equal(scores["fc1.weight"], mlp.fc1.weight.abs())
    assert set(scores) == {"fc1.weight", "fc2.weight", "head.weight"}


def test_magnitude_sq_sums_to_the_squared_l2_filter_norm():
    conv = nn.Sequential(nn.Conv2d(3, 4, 3))
    scores = sp.score(conv, "magnitude_sq")["0.weight"]
    torch.testing.assert_close(
        scores.sum((1, 2, 3)), conv[0].weight.detach().flatten(1).norm(dim=1) ** 2
    )


def test_random_is_seeded_and_uniform(mlp):
    a = sp.score(mlp, "random", seed=3)
    b = sp.score(mlp, "random", seed=3)
    c = sp.score(mlp, "random", seed=4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["fc1.weight"], c["fc1.weight"])


@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
def test_taylor_and_fisher_match_manual_backward(model_name, request):
    model = request.getfixturevalue(model_name)
    batches = request.getfixturevalue(f"{model_name}_batches")
    grads = _manual_grads(model, batches)
    params = dict(model.named_parameters())
    taylor = sp.score(model, "taylor", batches)
    taylor_sq = sp.score(model, "taylor_sq", batches)
    obd = sp.score(model, "obd", batches)
    for name in taylor:
        w = params[name].detach()
        expected_taylor = torch.stack([(w * g[name]).abs() for g in grads]).mean(0)
        expected_sq = torch.stack([(w * g[name]) ** 2 for g in grads]).mean(0)
        torch.testing.assert_close(taylor[name], expected_taylor, rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(taylor_sq[name], expected_sq, rtol=1e-5, atol=1e-10)
        torch.testing.assert_close(obd[name], 0.5 * expected_sq, rtol=1e-5, atol=1e-10)


def test_snip_is_normalised_connection_sensitivity(mlp, mlp_batches):
    grads = _manual_grads(mlp, mlp_batches)
    params = dict(mlp.named_parameters())
    scores = sp.score(mlp, "snip", mlp_batches)
    raw = {
        n: (params[n].detach() * torch.stack([g[n] for g in grads]).mean(0)).abs() for n in scores
    }
    total = sum(r.sum() for r in raw.values())
    assert torch.isclose(sum(s.sum() for s in scores.values()), torch.tensor(1.0), atol=1e-5)
    for name in scores:
        torch.testing.assert_close(scores[name], raw[name] / total, rtol=1e-4, atol=1e-9)


def test_hutchinson_converges_to_exact_hessian_diagonal():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x = torch.randn(16, 3)
    y = torch.randint(0, 2, (16,))
    weight = model[0].weight

    def loss_of(w):
        hidden = torch.tanh(F.linear(x, w, model[0].bias))
        return F.cross_entropy(model[2](hidden), y)

    exact = torch.autograd.functional.hessian(loss_of, weight.detach()).reshape(12, 12).diagonal()
    estimate = sp.score(model, "obd_hutchinson", [(x, y)] * 4000)["0.weight"]
    expected = 0.5 * exact.abs().reshape(4, 3) * weight.detach() ** 2
    torch.testing.assert_close(estimate, expected, rtol=0.1, atol=2e-4)


def test_activation_is_weight_times_input_rms(mlp, mlp_batches):
    x = torch.cat([b[0] for b in mlp_batches])
    scores = sp.score(mlp, "activation", mlp_batches)
    rms = x.pow(2).mean(0).sqrt()
    torch.testing.assert_close(scores["fc1.weight"], mlp.fc1.weight.detach().abs() * rms)


def test_activation_handles_grouped_convolutions(cnn, cnn_batches):
    captured = []
    handle = cnn.conv2.register_forward_pre_hook(lambda m, a: captured.append(a[0].detach()))
    scores = sp.score(cnn, "activation", cnn_batches)
    handle.remove()
    x = torch.cat(captured)
    channel_rms = x.transpose(0, 1).reshape(4, -1).pow(2).mean(1).sqrt()
    w = cnn.conv2.weight.detach()  # (6, 2, 3, 3): outputs 0-2 read channels 0-1, 3-5 read 2-3
    expected = w.abs().clone()
    expected[:3] *= channel_rms[:2].view(1, 2, 1, 1)
    expected[3:] *= channel_rms[2:].view(1, 2, 1, 1)
    torch.testing.assert_close(scores["conv2.weight"], expected)


def test_perturbation_equals_the_absolute_measured_loss_change(mlp, mlp_batches):
    scores = sp.score(mlp, "perturbation", mlp_batches)["fc2.weight"]
    model = copy.deepcopy(mlp).eval()

    def mean_loss():
        with torch.no_grad():
            return sum(F.cross_entropy(model(x), y) for x, y in mlp_batches) / len(mlp_batches)

    base = mean_loss()
    for index in [(0, 0), (3, 7), (11, 15)]:
        kept = model.fc2.weight.data[index].item()
        model.fc2.weight.data[index] = 0.0
        expected = mean_loss() - base
        model.fc2.weight.data[index] = kept
        assert scores[index].item() == pytest.approx(abs(expected.item()), abs=1e-6)


def test_obs_matches_closed_form_least_squares():
    """One weight removed per row: OBS picks the cheapest and moves the rest optimally."""
    torch.manual_seed(0)
    layer = nn.Linear(6, 3, bias=False)
    x = torch.randn(200, 6) @ torch.randn(6, 6)  # correlated inputs: compensation matters
    batches = [(x, torch.zeros(200, dtype=torch.long))]
    model = nn.Sequential(layer)
    dense = layer.weight.detach().double().clone()
    sp.prune(
        model,
        1 / 6,
        criterion="obs",
        data=batches,
        loss_fn=lambda m, b: m(b[0]).sum(),
        scope="row",
        min_density=0,
    )
    h = (x.double().T @ x.double()) / 200
    h = h + DAMPING * h.diagonal().mean() * torch.eye(6, dtype=torch.float64)
    pruned = layer.weight.detach().double()
    for row in range(3):
        best_error, best_weights = None, None
        for q in range(6):  # brute force over which weight to drop
            keep = [i for i in range(6) if i != q]
            w = dense[row]
            # minimise (w - v)ᵀ H (w - v) with v_q = 0: v_S = w_S + H_SS⁻¹ H_Sq w_q
            v = torch.zeros(6, dtype=torch.float64)
            v[keep] = w[keep] + torch.linalg.solve(h[keep][:, keep], h[keep, q] * w[q])
            error = (w - v) @ h @ (w - v)
            if best_error is None or error < best_error:
                best_error, best_weights = error, v
        torch.testing.assert_close(pruned[row], best_weights, rtol=1e-4, atol=1e-5)


def test_obs_with_bias_reconstructs_layer_output_better_than_magnitude(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    sp.finetune(model, digits.train, epochs=3, show_progress=False)
    x = torch.cat([b[0] for b in digits.val]).flatten(1)
    dense_out = model[1](x).detach()
    errors = {}
    for criterion in ("magnitude", "obs"):
        pruned = copy.deepcopy(model)
        sp.prune(pruned, 0.8, criterion=criterion, data=digits.val, scope="layer")
        errors[criterion] = (pruned[1](x).detach() - dense_out).pow(2).mean().item()
    assert errors["obs"] < 0.5 * errors["magnitude"]


def test_unknown_criterion_lists_the_known_ones(mlp):
    with pytest.raises(
        sp.SensipruneError,
        match="known criteria: activation, bn_scale, group_loss, head_gate, magnitude, ",
    ):
        sp.score(mlp, "tayler")


def test_every_registered_criterion_scores_every_target(cnn, cnn_batches):
    modules = dict(cnn.named_modules())
    for name in sp.available_criteria():
        if name == "group_loss":  # measures whole groups: only through prune(structured=True)
            with pytest.raises(sp.SensipruneError, match="structured=True"):
                sp.score(cnn, name, cnn_batches)
            continue
        if name == "head_gate":  # attention heads only; tested in test_adapters
            with pytest.raises(sp.SensipruneError, match="scores the heads of transformer"):
                sp.score(cnn, name, cnn_batches)
            continue
        scores = sp.score(cnn, name, cnn_batches, ignore=["conv2"] if name == "obs" else ())
        assert scores, name
        for key, value in scores.items():
            if key.endswith("::out"):  # a channel criterion: one score per output channel
                layer = modules[key.removesuffix("::out")]
                expected = (getattr(layer, "out_channels", None) or layer.out_features,)
            else:
                expected = dict(cnn.named_parameters())[key].shape
            assert value.shape == expected, (name, key)
            assert torch.isfinite(value).all(), (name, key)


def test_blocked_obs_reconstructs_nearly_as_well_as_exact_obs():
    from sensiprune.criteria.obs import damped_inverse, prune_rows
    from sensiprune.criteria.sparsegpt import prune_blocked, upper_factor

    torch.manual_seed(0)
    rows, cols = 24, 300  # with a bias column: 3 blocks of the blocked algorithm
    hidden = torch.randn(2000, 64, dtype=torch.float64)  # activation-like: low rank, rectified
    x = torch.relu(hidden @ torch.randn(64, cols - 1, dtype=torch.float64) / 8)
    x = torch.cat([x, torch.ones(2000, 1, dtype=torch.float64)], 1)
    w = torch.randn(rows, cols, dtype=torch.float64)
    h = x.T @ x / len(x)
    hinv = damped_inverse(h)
    before = torch.zeros(rows, cols, dtype=torch.bool)
    before[0, :10] = True
    w[before] = 0
    count = round(0.8 * rows * (cols - 1))

    def error(v):
        return ((x @ (w - v).T) ** 2).mean().item()

    blocked, kept = prune_blocked(w, upper_factor(hinv), count, frozen=1, pruned_before=before)
    assert int((~kept).sum()) == count
    assert kept[:, -1].all() and not (kept & before).any()
    assert (blocked[~kept] == 0).all()
    counts = (~kept).sum(1)
    exact, _ = prune_rows(w, hinv, counts, frozen=1, pruned_before=before)
    scores = w.abs().masked_fill(before, -1.0)
    scores[:, -1] = torch.inf
    magnitude = w.clone()
    magnitude.view(-1)[torch.argsort(scores.reshape(-1))[:count]] = 0
    # at 80% the blocked choice is coarser than the exact greedy one, but far ahead of magnitude
    assert error(blocked) < 2.5 * error(exact)
    assert error(blocked) < 0.5 * error(magnitude)


def test_obs_passes_stop_once_the_layers_have_read_their_inputs_and_only_then(mlp, mlp_batches):
    """Stopping each pass at the last layer it needs gives the moments of full passes; a
    layer that runs twice a pass (shared weights) needs the whole pass."""
    from sensiprune.criteria.obs import _execution_groups, _layer_moments
    from sensiprune.data import default_loss

    targets = sp.targets.find_targets(mlp)
    groups, once = _execution_groups(mlp, targets, mlp_batches[0], default_loss)
    assert groups == [["fc1.weight"], ["fc2.weight"], ["head.weight"]] and once
    pruned = copy.deepcopy(mlp)
    with torch.no_grad():
        pruned.fc1.weight[:, :4] = 0  # fc2 then reads other inputs than in the dense model
    layers = {"fc2.weight": pruned.fc2}
    dense_layers = {"fc2.weight": mlp.fc2}
    heads_ran = []
    for model in (mlp, pruned):
        model.head.register_forward_pre_hook(lambda *_: heads_ran.append(1))
    moments = []
    for stop in (False, True):
        heads_ran.clear()
        moments.append(
            _layer_moments(dense_layers, layers, mlp, pruned, mlp_batches, default_loss, True, stop)
        )
        assert len(heads_ran) == (0 if stop else 2 * len(mlp_batches))
    full, stopped = (m["fc2.weight"] for m in moments)
    assert full[1] is not None and all(torch.equal(a, b) for a, b in zip(full, stopped))

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(torch.relu(self.layer(x)))

    twice = Twice()
    _, once = _execution_groups(twice, sp.targets.find_targets(twice), (torch.randn(2, 8), None),
                                lambda model, batch: model(batch[0]).sum())  # fmt: skip
    assert not once


def test_layers_that_read_one_input_share_one_hessian_and_are_pruned_as_alone():
    """Query, key and value read one tensor: one H̃ (one inverse) serves all three, and
    each comes out as OBS prunes it on its own."""
    from sensiprune.criteria.obs import _layer_moments
    from sensiprune.data import default_loss

    class Fork(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(8, 6), nn.Linear(8, 5), nn.Linear(8, 4, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([self.a(x), self.b(x), F.pad(self.c(x), (0, 2))], 1)

    torch.manual_seed(0)
    batches = [(torch.randn(16, 8), torch.randint(0, 6, (16,))) for _ in range(2)]
    fork = Fork()
    layers = {"a.weight": fork.a, "b.weight": fork.b, "c.weight": fork.c}
    moments = _layer_moments(layers, layers, fork, fork, batches, default_loss, True)
    assert moments["a.weight"][0] is moments["b.weight"][0]  # with a bias column each
    assert moments["c.weight"][0] is not moments["a.weight"][0]  # no bias: another matrix
    together = copy.deepcopy(fork)
    sp.prune(together, 0.5, criterion="obs", data=batches, scope="layer")
    for name in ("a", "b", "c"):
        alone = copy.deepcopy(fork)
        sp.prune(alone, 0.5, criterion="obs", data=batches, scope="layer",
                 ignore=[other for other in ("a", "b", "c") if other != name])  # fmt: skip
        assert torch.allclose(getattr(alone, name).weight, getattr(together, name).weight)


def test_obs_catches_the_dense_inputs_once_where_they_fit_with_the_same_result(
    mlp, mlp_batches, monkeypatch
):
    """The dense model's inputs never change while the copy is pruned: caught in one pass
    where they fit, they give what running the dense model with every layer gives."""
    from sensiprune.criteria import obs

    runs = []
    mlp.fc1.register_forward_pre_hook(lambda module, args: runs.append(module))
    again = copy.deepcopy(mlp)
    n = len(mlp_batches)
    # the execution order, then one pass per batch; or a first batch found too large, and
    # one pass per group and batch
    for model, floor, dense_runs in ((mlp, obs._CACHE_FLOOR, 1 + n), (again, 0, 2 + 3 * n)):
        runs.clear()
        monkeypatch.setattr(obs, "_CACHE_FLOOR", floor)
        sp.prune(model, 0.5, criterion="obs", data=mlp_batches, scope="layer")
        assert sum(module is model.fc1 for module in runs) == n + dense_runs  # n: scoring
    assert all(torch.equal(a, b) for a, b in zip(mlp.parameters(), again.parameters()))


@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
def test_obs_levels_in_one_pass_equal_one_prune_each_bit_for_bit(model_name, request, monkeypatch):
    """A sensitivity curve's levels share one greedy OBS pass; each must be exactly what
    pruning the layer alone to that level gives, also where the later levels are too costly
    for exact OBS and are pruned blocked, one by one."""
    from sensiprune.criteria import obs
    from sensiprune.targets import find_targets

    model = request.getfixturevalue(model_name)
    batches = request.getfixturevalue(f"{model_name}_batches")
    target = next(iter(find_targets(model).values()))
    n = target.param.numel()
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    keeps = []
    for share in (0.3, 0.6, 0.9):
        keep = torch.ones(n, dtype=torch.bool)
        keep[order[: round(share * n)]] = False
        keeps.append(keep.view(target.param.shape))
    crit = sp.criteria.get("obs")
    counts = obs._row_counts({target.name: target}, {target.name: keeps[1]})
    middle = obs._exact_cost({target.name: target}, counts)
    for budget in (obs.EXACT_BUDGET, middle):  # all exact; the last one blocked
        monkeypatch.setattr(obs, "EXACT_BUDGET", budget)
        before = copy.deepcopy(model.state_dict())
        together = list(crit.compensate_levels(model, target, keeps, batches, default_loss))
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
        for keep, moved in zip(keeps, together):
            _, alone = crit.compensate(
                model, {target.name: target}, {target.name: keep}, {}, batches, default_loss
            )
            assert moved.keys() == alone.keys()
            assert all(torch.equal(moved[k], alone[k]) for k in alone)
            assert int((moved[target.name] == 0).sum()) >= int((~keep).sum())  # all removed


def test_greedy_obs_rows_match_a_row_by_row_reference_at_every_level():
    """The batched greedy pass (rows compacted to their live columns as they lose them)
    against the textbook loop, one row and one removal at a time, with a bias column that
    is never removed and rows that stop at different counts."""
    from sensiprune.criteria.obs import prune_rows_levels

    torch.manual_seed(0)
    cols = 12
    x = torch.randn(40, cols, dtype=torch.float64)
    hinv = torch.linalg.inv(x.T @ x / 40)
    weight = torch.randn(5, cols, dtype=torch.float64)
    counts = torch.tensor([[11, 6, 0, 9, 3], [11, 8, 2, 9, 5]])

    def reference(row: torch.Tensor, count: int) -> torch.Tensor:
        w, h = row.clone(), hinv.clone()
        removed = torch.zeros(cols, dtype=torch.bool)
        removed_or_bias = removed.clone()
        removed_or_bias[-1] = True
        for _ in range(count):
            saliency = w.pow(2) / h.diagonal()
            saliency[removed_or_bias] = torch.inf
            q = int(saliency.argmin())
            w -= w[q] / h[q, q] * h[:, q]
            h -= torch.outer(h[:, q], h[q, :]) / h[q, q]
            w[q] = 0.0
            removed[q] = removed_or_bias[q] = True
            h[q, :], h[:, q], h[q, q] = 0.0, 0.0, 1.0
        return w

    levels = prune_rows_levels(weight, hinv, counts, frozen=1)
    for (new, kept), level_counts in zip(levels, counts):
        for r, count in enumerate(level_counts.tolist()):
            assert torch.allclose(new[r], reference(weight[r], count), atol=1e-9)
            assert int((~kept[r]).sum()) == count and bool(kept[r, -1])
