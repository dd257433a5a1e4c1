"""Two Gloo processes on CPU train the same model as one process on the global batch.

One ``torch.multiprocessing.spawn`` of two ranks runs every multi-process check (process
start-up dominates the cost): gradients synchronised by DDP, ``fit`` under DDP and under
FSDP2 (both saving a checkpoint from the gathered state), and a sparse-gradient product-key
memory under DDP with its own SparseAdam loop. The parent compares each with a
single-process run on the whole batch.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from attnzoo.attention.product_key import ProductKeyMemory
from attnzoo.transformers_zoo.bert import BertConfig, BertForMaskedLM
from attnzoo.transformers_zoo.distributed import (
    check_sparse_gradients,
    local_shard,
    rank_and_world_size,
    sharded_batches,
    wrap_model,
)
from attnzoo.transformers_zoo.train_state import load_train_state
from attnzoo.transformers_zoo.training import TrainConfig, fit

WORLD = 2
GLOBAL_BATCH = 4
VOCAB = 29
STEPS = 3
# Both runs do the same float32 operations on different batch splits; the gradient mean is
# summed in another order, so parameters agree to rounding (measured: at most 6e-7), not bit
# for bit.
ATOL = 2e-6


def tiny_bert() -> BertForMaskedLM:
    torch.manual_seed(0)
    return BertForMaskedLM(
        BertConfig(
            vocab_size=VOCAB,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=24,
            max_position_embeddings=16,
            hidden_dropout_prob=0.0,  # dropout would draw different masks on each rank
            attention_probs_dropout_prob=0.0,
        )
    )


def global_batch(step: int) -> torch.Tensor:
    """The same ``(GLOBAL_BATCH, 7)`` ids on every rank; every token is a label, so the
    mean loss of each half weighs equally and the rank average is the global mean."""
    return torch.randint(1, VOCAB, (GLOBAL_BATCH, 7), generator=torch.Generator().manual_seed(step))


def mlm_loss(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(ids, labels=ids).loss


def train_config(**kwargs: object) -> TrainConfig:
    return TrainConfig(steps=STEPS, lr=1e-2, warmup=2, progress=False, **kwargs)  # type: ignore[arg-type]


def tiny_memory() -> ProductKeyMemory:
    torch.manual_seed(0)
    return ProductKeyMemory(
        8, n_keys=6, heads=2, k_dim=4, topk=3, query_norm="layernorm", sparse=True
    )


def memory_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(100 + step)
    return torch.randn(GLOBAL_BATCH, 5, 8, generator=generator), torch.randn(
        GLOBAL_BATCH, 5, 8, generator=generator
    )


def train_memory(model: torch.nn.Module, shard: bool) -> None:
    """Dense parameters with Adam, the sparse values with SparseAdam (fit's AdamW cannot)."""
    memory = model.module if hasattr(model, "module") else model
    values = list(memory.values.parameters())
    dense = [p for name, p in memory.named_parameters() if not name.startswith("values.")]
    optimizers = [torch.optim.Adam(dense, lr=1e-2), torch.optim.SparseAdam(values, lr=1e-2)]
    for step in range(STEPS):
        x, y = memory_batch(step)
        if shard:
            x, y = local_shard((x, y))
        loss = (model(x) - y).pow(2).mean()
        for optimizer in optimizers:
            optimizer.zero_grad()
        loss.backward()
        assert memory.values.weight.grad.is_sparse
        for optimizer in optimizers:
            optimizer.step()


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    try:
        assert rank_and_world_size() == (rank, WORLD)
        # 1. One backward on each half: DDP leaves every rank with the full-batch gradient.
        plain, model = tiny_bert(), tiny_bert()
        ddp = wrap_model(model, "ddp")
        assert ddp is not model and ddp.config is model.config  # attributes fall through
        with pytest.raises(ValueError, match="size 3 must be divisible by the world size 2"):
            local_shard(torch.ones(3))
        ids = global_batch(0)
        mlm_loss(plain, ids).backward()
        mlm_loss(ddp, local_shard(ids)).backward()
        for (name, p), q in zip(plain.named_parameters(), model.parameters(), strict=True):
            torch.testing.assert_close(q.grad, p.grad, atol=1e-6, rtol=1e-5, msg=name)

        # 2. fit, unchanged, under DDP and under FSDP2, each saving a checkpoint.
        for parallel in ("ddp", "fsdp"):
            history = fit(
                tiny_bert(),
                mlm_loss,
                lambda step: local_shard(global_batch(step)),
                train_config(parallel=parallel, save_dir=Path(out) / parallel),
            )
            if rank == 0:
                (Path(out) / f"{parallel}.json").write_text(json.dumps(history.losses))

        # 3. Sparse gradients of a product-key memory, all-reduced by DDP over Gloo.
        memory = tiny_memory()
        train_memory(wrap_model(memory, "ddp"), shard=True)
        if rank == 0:
            save_file(
                {k: v.contiguous() for k, v in memory.state_dict().items()},
                str(Path(out) / "memory.safetensors"),
            )
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gloo")
    mp.spawn(_worker, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    return out


@pytest.fixture(scope="module")
def single_process() -> tuple[BertForMaskedLM, list[float]]:
    model = tiny_bert()
    history = fit(model, mlm_loss, global_batch, train_config())
    return model, history.losses


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_ranks_equal_one_process_on_the_global_batch(
    two_rank_run: Path, single_process: tuple[BertForMaskedLM, list[float]], parallel: str
) -> None:
    model, losses = single_process
    assert json.loads((two_rank_run / f"{parallel}.json").read_text()) == pytest.approx(
        losses, abs=1e-6
    )
    state = load_train_state(two_rank_run / parallel, restore_rng=False)
    assert state.step == STEPS
    assert {p.name for p in (two_rank_run / parallel).glob("rng-*")} == {
        "rng-0.safetensors",
        "rng-1.safetensors",
    }
    reference = model.state_dict()
    assert set(state.model_state) == set(reference)
    for name, value in reference.items():
        torch.testing.assert_close(state.model_state[name], value, atol=ATOL, rtol=0, msg=name)
    # The update moved the weights far beyond the tolerance: the comparison is not vacuous.
    assert not torch.allclose(
        tiny_bert().state_dict()["cls.predictions.bias"],
        reference["cls.predictions.bias"],
        atol=1e-3,
    )


def test_sparse_memory_under_ddp_gloo_equals_one_process(two_rank_run: Path) -> None:
    memory = tiny_memory()
    train_memory(memory, shard=False)
    distributed = load_file(str(two_rank_run / "memory.safetensors"))
    for name, value in memory.state_dict().items():
        torch.testing.assert_close(distributed[name], value, atol=ATOL, rtol=0, msg=name)


def test_unsupported_sparse_combinations_raise() -> None:
    memory = tiny_memory()
    with pytest.raises(ValueError, match="gloo backend, got 'nccl'.*sparse=False"):
        check_sparse_gradients(memory, "ddp", "nccl")
    with pytest.raises(ValueError, match="parallel='fsdp'.*sparse=False"):
        check_sparse_gradients(memory, "fsdp", "gloo")
    check_sparse_gradients(memory, "ddp", "gloo")
    with pytest.raises(ValueError, match="AdamW.*sparse=True.*ProductKeyMemory\\(sparse=False\\)"):
        fit(memory, lambda m, b: m(b).sum(), lambda step: torch.randn(2, 3, 8), train_config())


def test_single_process_helpers_are_identities() -> None:
    model = tiny_bert()
    assert rank_and_world_size() == (0, 1)
    assert wrap_model(model, "ddp") is model
    batch = (torch.arange(6), {"x": torch.ones(6, 2)})
    assert local_shard(batch) is batch
    with pytest.raises(ValueError, match="`parallel` must be one of"):
        wrap_model(model, "zero3")


def test_sharded_batches_cover_each_epoch_once_per_rank() -> None:
    data = torch.arange(10).float()
    batches = sharded_batches(data, 3, seed=1)  # type: ignore[arg-type]
    epoch = torch.cat([batches(0), batches(1), batches(2)])
    assert sorted(epoch.tolist()) == sorted(set(epoch.tolist()))  # no repeats in an epoch
    assert torch.equal(batches(1), batches(1))  # a function of the step: resumable
    assert not torch.equal(torch.cat([batches(3), batches(4), batches(5)]), epoch)  # reshuffled
    with pytest.raises(ValueError, match="`batch_size` 11 exceeds the 10 examples"):
        sharded_batches(data, 11)  # type: ignore[arg-type]


TINY_RECIPE = [
    "--documents", "60", "--hidden-size", "16", "--layers", "1", "--heads", "2",
    "--seq-len", "16", "--batch-size", "4", "--vocab-size", "80", "--warmup", "2",
    "--no-progress",
]  # fmt: skip


def test_pretrain_mlm_recipe_runs_and_resumes_in_one_process(tmp_path: Path) -> None:
    from attnzoo.transformers_zoo.pretrain_mlm import main

    first = main([*TINY_RECIPE, "--steps", "4", "--save-dir", str(tmp_path)])
    assert first["steps"] == 4 and first["world_size"] == 1
    losses = load_train_state(tmp_path, restore_rng=False).extra["losses"]
    resumed = main([*TINY_RECIPE, "--steps", "6", "--save-dir", str(tmp_path), "--resume"])
    assert resumed["steps"] == 6
    state = load_train_state(tmp_path, restore_rng=False)
    assert state.step == 6 and state.extra["losses"][:4] == losses


def test_pretrain_mlm_recipe_under_torchrun_with_two_gloo_processes(tmp_path: Path) -> None:
    import attnzoo

    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(
            [str(Path(attnzoo.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
        ),
    }
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "attnzoo.transformers_zoo.pretrain_mlm", *TINY_RECIPE, "--steps", "4",
        "--save-dir", str(tmp_path), "--backend", "gloo",
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])  # printed by rank 0 only
    assert summary["world_size"] == 2 and summary["steps"] == 4
    assert math.isfinite(summary["mlm_final"])
    assert sorted(p.name for p in tmp_path.glob("rng-*")) == [
        "rng-0.safetensors",
        "rng-1.safetensors",
    ]
