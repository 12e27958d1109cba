"""Block by block: a stack of blocks is pruned one block at a time on the pruned blocks'
outputs, holding one block's statistics; it applies only where it can, and says why not
where it is asked for and cannot."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sensiprune as sp
from sensiprune import blockwise
from sensiprune.criteria import obs
from tests.hf_models import tiny_llama


class Block(nn.Module):
    """Attention and an MLP with residuals, called with a keyword mask, as decoders are."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.up = nn.Linear(width, 2 * width)
        self.down = nn.Linear(2 * width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        x = x + self.out(F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
        return x + scale * self.down(torch.relu(self.up(x)))


class Decoder(nn.Module):
    def __init__(self, depth: int = 3, width: int = 16, scaled: bool = False) -> None:
        super().__init__()
        self.embed = nn.Linear(8, width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.head = nn.Linear(width, 5)
        self.scaled = scaled  # each block gets its own argument: not a chain of one stream

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).tril()
        hidden = self.embed(x)
        for i, block in enumerate(self.blocks):
            hidden = block(hidden, mask=mask, scale=1.0 + i if self.scaled else 1.0)
        return self.head(hidden).mean(1)


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [
        (torch.randn(4, 6, 8, generator=generator), torch.randint(0, 5, (4,), generator=generator))
        for _ in range(3)
    ]


def _model(**kwargs) -> Decoder:
    torch.manual_seed(0)
    return Decoder(**kwargs).eval()


@pytest.mark.parametrize(
    ("criterion", "passes"),
    [
        ("activation", [["down.weight", "out.weight", "qkv.weight", "up.weight"]]),
        ("obs", [["qkv.weight"], ["out.weight"], ["up.weight"], ["down.weight"]]),
    ],
)
def test_a_block_is_scored_in_one_pass_or_a_layer_at_a_time_where_each_needs_a_hessian(
    monkeypatch, criterion, passes
):
    model, seen = _model(), []
    collect = blockwise.collect

    def recording(module, targets, *args, **kwargs):
        seen.append(sorted(targets))
        return collect(module, targets, *args, **kwargs)

    monkeypatch.setattr(blockwise, "collect", recording)
    sp.prune(model, 0.5, criterion=criterion, data=_batches(), scope="layer", blockwise=True)
    assert seen == passes * 3
    for name, keep in sp.get_masks(model).items():  # the head and embedding too, as usual
        assert keep.float().mean() == pytest.approx(0.5, abs=0.01), name


def test_blocked_obs_picks_its_own_weights_so_no_block_is_scored(monkeypatch):
    """Past the exact budget OBS chooses the weights as it walks the columns: only each
    layer's count comes from the selection, and that needs no scores."""
    model = _model()
    monkeypatch.setattr(obs, "EXACT_BUDGET", 0)
    monkeypatch.setattr(blockwise, "collect", _never)
    sp.prune(model, 0.5, criterion="obs", data=_batches(), scope="layer", blockwise=True)
    for name, keep in sp.get_masks(model).items():
        assert keep.float().mean() == pytest.approx(0.5, abs=0.01), name


def _never(*args, **kwargs):
    raise AssertionError("scored")


def test_the_first_block_is_pruned_as_obs_layer_by_layer_prunes_it_and_later_ones_not():
    by_blocks, by_layers = _model(), _model()
    for model, mode in ((by_blocks, None), (by_layers, False)):  # nothing pruned before block 0
        sp.prune(model, 0.5, criterion="obs", data=_batches(), scope="layer", blockwise=mode,
                 ignore=["embed"])  # fmt: skip
    first = zip(by_blocks.blocks[0].parameters(), by_layers.blocks[0].parameters(), strict=True)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in first)
    # later blocks fit the outputs the pruned blocks give, not the dense model's
    assert not torch.allclose(by_blocks.blocks[2].down.weight, by_layers.blocks[2].down.weight)


def test_layers_before_the_stack_are_pruned_first_and_the_blocks_fit_their_outputs(monkeypatch):
    model, calls_seen = _model(), []
    collect = blockwise.collect

    def checking(module, targets, calls, *args, **kwargs):
        if not calls_seen:  # block 0: its inputs come from the embedding, already pruned
            assert (model.embed.weight == 0).float().mean() == pytest.approx(0.5, abs=0.02)
            x = _batches()[0][0]
            assert torch.allclose(calls[0].hidden, model.embed(x))
        calls_seen.append(module)
        return collect(module, targets, calls, *args, **kwargs)

    monkeypatch.setattr(blockwise, "collect", checking)
    sp.prune(model, 0.5, criterion="activation", data=_batches(), scope="layer", blockwise=True)
    assert calls_seen == list(model.blocks)


def test_blocks_that_are_not_one_stream_fall_back_or_are_refused():
    auto, layered = _model(scaled=True), _model(scaled=True)
    sp.prune(auto, 0.5, criterion="activation", data=_batches(), scope="layer")
    sp.prune(layered, 0.5, criterion="activation", data=_batches(), scope="layer", blockwise=False)
    assert all(torch.equal(a, b) for a, b in zip(auto.parameters(), layered.parameters()))
    refused = _model(scaled=True)
    with pytest.raises(sp.SensipruneError, match="do not form a chain"):
        sp.prune(refused, 0.5, criterion="activation", data=_batches(), scope="layer",
                 blockwise=True)  # fmt: skip
    assert not sp.get_masks(refused)


@pytest.mark.parametrize(
    ("model", "settings", "message"),
    [
        (nn.Sequential(nn.Linear(8, 8)), {}, "no stack of blocks"),
        (None, {"scope": "global"}, "scope 'global' does not give every layer its own share"),
        (None, {"criterion": "taylor"}, "does not score from the inputs of the layers"),
    ],
)
def test_blockwise_true_says_why_it_cannot(model, settings, message):
    model = model or _model()
    options = {"criterion": "activation", "scope": "layer", **settings}
    x = torch.randn(2, 8)
    data = [(x, torch.zeros(2, dtype=torch.long))] if isinstance(model, nn.Sequential) else None
    with pytest.raises(sp.SensipruneError, match=f"blockwise=True: .*{message}"):
        sp.prune(model, 0.5, data=data or _batches(), blockwise=True, **options)


def test_reused_scores_are_refused_block_by_block():
    model = _model()
    scores = sp.score(model, "activation", data=_batches())
    with pytest.raises(sp.SensipruneError, match="scores= cannot be reused block by block"):
        sp.prune(model, 0.5, criterion="activation", data=_batches(), scope="layer",
                 scores=scores, blockwise=True)  # fmt: skip
    assert not sp.get_masks(model)


def test_a_budget_naming_an_unknown_layer_is_refused_before_any_block_changes():
    model = _model()
    with pytest.raises(sp.SensipruneError, match=r"unknown layer 'blocks\.9\.up'"):
        sp.prune(model, {"blocks.0.up": 0.5, "blocks.9.up": 0.5}, criterion="obs",
                 data=_batches())  # fmt: skip
    assert not sp.get_masks(model)


def test_a_share_below_min_density_is_refused_before_the_layers_before_the_stack_change():
    model = _model()
    with pytest.raises(sp.SensipruneError, match="below min_density"):
        sp.prune(model, 0.999, criterion="activation", data=_batches(), scope="layer")
    assert not sp.get_masks(model)


def _causal_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    return model(**batch, labels=batch["input_ids"]).loss


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_hugging_face_decoder_in_its_own_dtype_gets_a_2_4_pattern_by_blocks(dtype):
    model = tiny_llama().to(dtype)
    generator = torch.Generator().manual_seed(0)
    data = [{"input_ids": torch.randint(0, 100, (2, 12), generator=generator)} for _ in range(3)]
    dense = copy.deepcopy(model)
    sp.prune(model, 0.5, criterion="obs", data=data, loss_fn=_causal_loss, pattern="2:4",
             ignore=["lm_head"], blockwise=True)  # fmt: skip
    linears = [m for n, m in model.named_modules() if isinstance(m, nn.Linear) and "layers" in n]
    assert len(linears) == 14
    for layer in linears:
        assert layer.weight.dtype == dtype
        assert ((layer.weight.reshape(layer.weight.shape[0], -1, 4) == 0).sum(-1) >= 2).all()
    assert model.config.use_cache == dense.config.use_cache
    with torch.no_grad():
        assert torch.isfinite(_causal_loss(model, data[0]))
        assert not torch.equal(model.model.layers[1].mlp.up_proj.weight != 0,
                               dense.model.layers[1].mlp.up_proj.weight != 0)  # fmt: skip
