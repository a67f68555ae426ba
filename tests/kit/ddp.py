"""What each of two gloo ranks runs for tests/test_distributed.py (spawned, so
it lives in an importable module). Every rank writes what it saw under
`out/rank<r>/`; the tests compare the two folders."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
import torch.distributed as tdist
from torch import nn


def _save(out: Path, name: str, obj: object) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.save(obj, out / name)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def one_step(out: Path) -> None:
    """A DDP SGD step on this rank's half of a batch, and the single-process step on all of it."""
    from transferline import distributed as dist

    torch.manual_seed(0)  # same model and batch on both ranks
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 5))
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 5, (16,))
    single = copy.deepcopy(model)
    opt = torch.optim.SGD(single.parameters(), lr=0.5)
    nn.functional.cross_entropy(single(x), y).backward()
    opt.step()
    ddp = dist.wrap(model, torch.device("cpu"))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    (idx,) = list(dist.global_batches(16, 16, torch.Generator().manual_seed(1)))
    nn.functional.cross_entropy(ddp(x[idx]), y[idx]).backward()
    opt.step()
    _save(out, "one_step.pt", {"ddp": _state(model), "single": _state(single), "idx": idx})


def shards(out: Path) -> None:
    """Two epochs of batch indices from the same seeded generator."""
    from transferline import distributed as dist

    sampler = dist.global_batches(50, 10, torch.Generator().manual_seed(3))
    _save(out, "shards.pt", [list(sampler) for _ in range(2)])


def image_fit(out: Path, strategy: str) -> None:
    """The real image `fit` (SmallCNN with batch norm) for 3 epochs; the weights and history it ends with."""
    from transferline.config.image import FinetuneParams
    from transferline.image.models import SmallCNN
    from transferline.image.train import fit

    torch.manual_seed(tdist.get_rank())  # different starting weights: DDP must make them equal
    model = SmallCNN(4)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 1, 28, 28, generator=g), torch.randint(0, 4, (96,), generator=g)
    x[y == 1] += 1.0
    cfg = FinetuneParams(epochs=3, batch_size=16, lr=0.01, strategy=strategy, unfreeze_every=1)
    block1 = [p.detach().clone() for p in model.blocks()[1].parameters()]
    history = fit(model, (x[:64], y[:64]), (x[64:], y[64:]), cfg, torch.device("cpu"),
                  torch.Generator().manual_seed(0))
    moved = any(not torch.equal(a, b) for a, b in zip(block1, model.blocks()[1].parameters()))
    _save(out, f"fit_{strategy}.pt", {"state": _state(model), "history": history, "block1_moved": moved})


def text_loops(out: Path) -> None:
    """Masked-LM pretraining and the classifier loop on a tiny BERT; the weights they end with."""
    from types import SimpleNamespace

    from transferline.text.models import EncoderClassifier
    from transferline.text.objectives import new_mlm, pretrain_mlm
    from transferline.text.train import fit_classifier
    from transformers import BertConfig

    special = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    config = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, pad_token_id=0)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 40, (80, 12), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3
    ids[40:, 8:] = 0  # some shorter texts
    cfg = SimpleNamespace(steps=4, batch_size=8, lr=1e-3, weight_decay=0.01, warmup_steps=1, mask_prob=0.3,
                          eval_every=2, val_fraction=0.1)
    mlm, mlm_history = pretrain_mlm(new_mlm(config, 0), ids, special, cfg, torch.device("cpu"), 0, out / "mlm.safetensors")
    torch.manual_seed(tdist.get_rank())
    clf = EncoderClassifier(config, 2)
    labels = (ids[:, 1] > 20).long()
    history = fit_classifier(clf, (ids[:64], labels[:64]), (ids[64:], labels[64:]), [{"params": clf.parameters(),
                             "lr": 1e-3}], 2, 8, 0.1, 0, torch.device("cpu"), torch.Generator().manual_seed(0))
    _save(out, "text.pt", {"mlm": _state(mlm), "clf": _state(clf), "histories": [mlm_history, history]})


def stage_writes(out: Path, processed: Path, raw_params: dict) -> None:
    """The real finetune stage function, each rank pointed at its own copy of the processed data."""
    import shutil

    from transferline.config import parse_params
    from transferline.image import finetune

    params = parse_params(raw_params)
    paths = params.paths.under(out / "project")
    shutil.copytree(processed, paths.processed)
    finetune.run(params, paths)


def worker(rank: int, world: int, rendezvous: str, out: str, processed: str, raw_params: dict) -> None:
    """Join a gloo group of `world` ranks and run every scenario above."""
    torch.set_num_threads(1)  # two ranks on two cores
    tdist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=world)
    try:
        mine = Path(out) / f"rank{rank}"
        one_step(mine)
        shards(mine)
        for strategy in ("full", "gradual"):
            image_fit(mine, strategy)
        text_loops(mine)
        stage_writes(mine, Path(processed), raw_params)
        (mine / "done.json").write_text(json.dumps({"rank": rank}))
    finally:
        tdist.destroy_process_group()
