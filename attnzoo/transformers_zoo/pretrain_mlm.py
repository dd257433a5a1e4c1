"""Masked-LM pretraining of a BERT from the command line, on 1 process or under ``torchrun``.

The recipe of :func:`~attnzoo.transformers_zoo.objectives.run_bert_pretraining_demo` without
the next-sentence task, as a launchable script: a WordPiece vocabulary trained on the text,
the token stream packed into ``[CLS] ... [SEP]`` blocks of ``--seq-len``, BERT's dynamic 80/10/10
masking drawn afresh at every step, and :func:`~attnzoo.transformers_zoo.training.fit`
(DDP or FSDP under ``torchrun``, bf16/fp16 autocast, checkpoints with ``--save-dir``)::

    python -m attnzoo.transformers_zoo.pretrain_mlm --steps 200
    torchrun --nproc_per_node 8 -m attnzoo.transformers_zoo.pretrain_mlm --precision bf16
    torchrun --nnodes 2 --nproc_per_node 8 --node_rank 0 --rdzv_backend c10d \\
        --rdzv_endpoint host0:29500 -m attnzoo.transformers_zoo.pretrain_mlm ...

Without ``--text-file`` it trains on the package's toy grammar corpus. ``--batch-size`` is per
process; every process draws its own shard of each epoch (``DistributedSampler``), and each
step's batch and mask depend only on the step, so ``--resume`` continues a run exactly.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from .bert import BertConfig, BertForMaskedLM
from .distributed import init_distributed, rank_and_world_size, sharded_batches
from .objectives import WORDPIECE_SPECIALS, mask_tokens, train_wordpiece
from .training import PRECISIONS, TrainConfig, fit


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (``--help`` lists every option)."""
    parser = argparse.ArgumentParser(
        prog="python -m attnzoo.transformers_zoo.pretrain_mlm", description=__doc__.split("\n")[0]
    )
    data = parser.add_argument_group("data")
    data.add_argument("--text-file", type=Path, help="one sentence per line (default: toy corpus)")
    data.add_argument("--documents", type=int, default=400, help="toy corpus size")
    data.add_argument("--vocab-size", type=int, default=120, help="WordPiece vocabulary size")
    data.add_argument("--seq-len", type=int, default=32, help="tokens per packed block")
    data.add_argument("--mask-probability", type=float, default=0.15)
    model = parser.add_argument_group("model")
    model.add_argument("--hidden-size", type=int, default=64)
    model.add_argument("--layers", type=int, default=2)
    model.add_argument("--heads", type=int, default=4)
    model.add_argument("--intermediate-size", type=int, help="default 4 * hidden size")
    model.add_argument("--dropout", type=float, default=0.1)
    model.add_argument("--gradient-checkpointing", action="store_true")
    train = parser.add_argument_group("training")
    train.add_argument("--steps", type=int, default=200)
    train.add_argument("--batch-size", type=int, default=16, help="sequences per process")
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--warmup", type=int, default=20)
    train.add_argument("--weight-decay", type=float, default=0.01)
    train.add_argument("--precision", choices=tuple(PRECISIONS), default="fp32")
    train.add_argument("--parallel", choices=("ddp", "fsdp"), default="ddp")
    train.add_argument("--backend", choices=("nccl", "gloo"), help="default nccl on GPU")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--save-dir", type=Path, help="checkpoint directory")
    train.add_argument("--save-every", type=int, default=0, help="0: only at the end")
    train.add_argument("--resume", action="store_true", help="continue from --save-dir")
    train.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.resume and args.save_dir is None:
        parser.error("--resume needs --save-dir")
    return args


def _sentences(args: argparse.Namespace) -> list[str]:
    if args.text_file is not None:
        lines = args.text_file.read_text(encoding="utf-8").splitlines()
        return [line for line in lines if line.strip()]
    from .tasks.corpus import grammar_corpus

    return [s for document in grammar_corpus(args.documents, seed=args.seed) for s in document]


def _tokenizer(sentences: list[str], vocab_size: int) -> Any:
    """Trained on rank 0 and sent to the others, so every rank has the same vocabulary."""
    from tokenizers import Tokenizer

    rank, world_size = rank_and_world_size()
    payload = [train_wordpiece(sentences, vocab_size).to_str() if rank == 0 else None]
    if world_size > 1:
        dist.broadcast_object_list(payload, src=0)
    serialized = payload[0]
    assert serialized is not None  # rank 0 trained it; the broadcast filled the other ranks
    return Tokenizer.from_str(serialized)


def pack_blocks(token_ids: list[list[int]], seq_len: int, cls_id: int, sep_id: int) -> Tensor:
    """Sentences joined by ``[SEP]`` and cut into ``[CLS] ... [SEP]`` rows.

    Returns:
        ``(blocks, seq_len)`` int64; the incomplete tail is dropped.
    """
    stream = [t for ids in token_ids for t in (*ids, sep_id)]
    width = seq_len - 2
    n_blocks = len(stream) // width
    if n_blocks == 0:
        raise ValueError(f"the text has {len(stream)} tokens, fewer than `seq_len` - 2 = {width}")
    body = torch.tensor(stream[: n_blocks * width]).view(n_blocks, width)
    cls = torch.full((n_blocks, 1), cls_id)
    sep = torch.full((n_blocks, 1), sep_id)
    return torch.cat([cls, body, sep], dim=1)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the recipe; rank 0 prints and returns ``{"steps", "world_size", "mlm_initial",
    "mlm_final", "blocks", "vocab_size"}`` (losses: means of the first/last 10 steps)."""
    args = parse_args(argv)
    owns_group = not dist.is_initialized()
    device = init_distributed(args.backend)
    rank, world_size = rank_and_world_size()
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    sentences = _sentences(args)
    tokenizer = _tokenizer(sentences, args.vocab_size)
    pad_id, _, cls_id, sep_id, mask_id = (tokenizer.token_to_id(t) for t in WORDPIECE_SPECIALS)
    specials = [tokenizer.token_to_id(t) for t in WORDPIECE_SPECIALS]
    blocks = pack_blocks(
        [e.ids for e in tokenizer.encode_batch(sentences)], args.seq_len, cls_id, sep_id
    )
    vocab_size = tokenizer.get_vocab_size()
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=args.intermediate_size or 4 * args.hidden_size,
        hidden_dropout_prob=args.dropout,
        attention_probs_dropout_prob=args.dropout,
        max_position_embeddings=args.seq_len,
        pad_token_id=pad_id,
    )
    model = BertForMaskedLM(config).to(device)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    rows = sharded_batches(blocks, args.batch_size, seed=args.seed)  # type: ignore[arg-type]

    def batch(step: int) -> tuple[Tensor, Tensor]:
        # One generator per (step, rank): the mask is a function of the step (resumable)
        # and differs between ranks.
        generator = torch.Generator().manual_seed(args.seed + 1 + step * world_size + rank)
        inputs, labels = mask_tokens(
            rows(step), vocab_size=vocab_size, mask_token_id=mask_id, special_ids=specials,
            pad_id=pad_id, probability=args.mask_probability, generator=generator,
        )  # fmt: skip
        return inputs.to(device), labels.to(device)

    def loss_fn(module: torch.nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        inputs, labels = batch
        return module(inputs, labels=labels).loss

    resume = (
        args.save_dir if args.resume and (args.save_dir / "train_state.json").is_file() else None
    )
    history = fit(
        model,
        loss_fn,
        batch,
        TrainConfig(
            steps=args.steps,
            lr=args.lr,
            warmup=args.warmup,
            weight_decay=args.weight_decay,
            progress=not args.no_progress,
            description="mlm",
            precision=args.precision,
            parallel=args.parallel,
            save_dir=args.save_dir,
            save_every=args.save_every,
        ),
        resume_from=resume,
    )
    losses = history.losses
    summary = {
        "steps": len(losses),
        "world_size": world_size,
        "mlm_initial": sum(losses[:10]) / len(losses[:10]),
        "mlm_final": sum(losses[-10:]) / len(losses[-10:]),
        "blocks": int(blocks.shape[0]),
        "vocab_size": vocab_size,
    }
    if rank == 0:
        print(json.dumps(summary))
    if owns_group and dist.is_initialized():
        dist.destroy_process_group()
    return summary


if __name__ == "__main__":
    main()
