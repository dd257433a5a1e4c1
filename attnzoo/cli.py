"""The ``attnzoo`` command: library facts, demos and visualisation.

attnzoo info                          versions, devices, registered normalisers
attnzoo normalize 2 1 0.5 -1          each normaliser's weights for these scores
attnzoo plot-normalizers -o out.png   the entmax family against softmax (needs matplotlib)
attnzoo demo NAME [--steps N]         train a classic attention model end to end
attnzoo demo --list                   the demos and what each shows
attnzoo viz "a sentence" --out DIR    all-MiniLM-L6-v2's attention as HTML and PNG
"""

from __future__ import annotations

import argparse
import importlib
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from . import __version__
from .attention import available_normalizers, get_normalizer

# Normalisers compared by the demos: (label, registry name, options).
DEMO_NORMALIZERS: list[tuple[str, str, dict[str, float]]] = [
    ("softmax", "softmax", {}),
    ("entmax a=1.25", "entmax", {"alpha": 1.25}),
    ("entmax15", "entmax15", {}),
    ("sparsemax", "sparsemax", {}),
    ("hardmax", "hardmax", {}),
]


# Demos: name -> (module, function, what it shows); the module is relative to
# attnzoo.transformers_zoo unless it is a full attnzoo.* path (see demo_module). Each
# function trains end to end in a few CPU minutes and returns its metrics; modules are
# imported only when their demo runs, so the command starts fast.
DEMOS: dict[str, tuple[str, str, str]] = {
    "transformer": ("transformer", "run_transformer_demo", "a small Transformer reverses"),
    "sparse-transformer": (
        "transformer",
        "run_sparse_transformer_demo",
        "entmax attention with a learned alpha per head (adaptively sparse transformer)",
    ),
    "seq2seq": (
        "rnn_seq2seq",
        "run_seq2seq_demo",
        "RNN seq2seq reverses 30 symbols with attention, not without",
    ),
    "pointer": ("pointer_network", "run_pointer_demo", "a pointer network sorts numbers"),
    "ntm": ("ntm", "run_ntm_demo", "a neural Turing machine copies longer than an LSTM"),
    "act": ("act", "run_act_demo", "adaptive computation time ponders less under a penalty"),
    "documents": (
        "han",
        "run_document_demo",
        "text-CNN vs attention BiLSTM vs hierarchical attention network",
    ),
    "snail": ("snail", "run_snail_demo", "SNAIL meta-learns 5-way 1-shot episodes"),
    "bert-pretraining": (
        "objectives",
        "run_bert_pretraining_demo",
        "a tiny BERT pretrained from scratch (WordPiece, MLM + NSP): both losses fall",
    ),
    "gpt2-pretraining": (
        "objectives",
        "run_gpt2_pretraining_demo",
        "a tiny GPT-2 pretrained from scratch (BPE, causal LM): the loss falls",
    ),
    "albert-pretraining": (
        "objectives",
        "run_albert_pretraining_demo",
        "a tiny ALBERT pretrained from scratch (MLM + sentence order): both losses fall",
    ),
    "pmi-masking": (
        "objectives",
        "run_pmi_masking_demo",
        "a tiny BERT pretrained with PMI-masked n-gram spans: the MLM loss falls",
    ),
    "xlm-tlm": (
        "objectives",
        "run_xlm_tlm_demo",
        "XLM translation LM on generated parallel pairs: the translation helps prediction",
    ),
    "xlnet-pretraining": (
        "objectives",
        "run_xlnet_pretraining_demo",
        "XLNet permutation LM from scratch: the target loss falls",
    ),
    "bert2bert": (
        "encoder_decoder",
        "run_demo",
        "two BERT checkpoints warm-start an encoder-decoder that learns to copy",
    ),
    "gan-modes": (
        "attnzoo.gan.mode_collapse",
        "run_mode_collapse_demo",
        "plain GAN vs packing / minibatch discrimination / DRAGAN on the 25-Gaussian grid",
    ),
    "label-noise": (
        "attnzoo.robustness.experiments",
        "run_demo",
        "ALFA vs random label flips on a linear SVM; kNN sanitisation recovers accuracy",
    ),
    "compression": (
        "attnzoo.compression.demo",
        "run_compression_demo",
        "distil, prune half the heads of and int8-quantise a tiny BERT: the report per stage",
    ),
    "syntax-probe": (
        "analysis.syntax_experiment",
        "run_syntax_probe_demo",
        "heads of a tiny BERT trained on a grammar track its dependencies (vs random init)",
    ),
    "sbert": (
        "sentence",
        "run_sbert_demo",
        "Sentence-BERT learns synonym paraphrases (MNRL); all-MiniLM-L6-v2 ranks paraphrases",
    ),
    "clip": (
        "dual_encoder",
        "run_clip_demo",
        "CLIP-style dual encoders (CNN and ViT towers) retrieve captions of coloured shapes",
    ),
    "finetune": (
        "recipes",
        "run_finetune_demo",
        "fine-tune tiny BERTs: sentiment, log-line features, entity tags, extractive QA",
    ),
    "tabert": (
        "tabert",
        "run_tabert_demo",
        "TaBERT: masked column prediction, then column selection on generated table QA",
    ),
    "elmo": (
        "elmo",
        "run_elmo_demo",
        "a character-CNN biLM (ELMo) on the grammar corpus: perplexity, mean-ELMo topics",
    ),
    "ulmfit": (
        "ulmfit",
        "run_ulmfit_demo",
        "ULMFiT: AWD-LSTM LM pretraining, LM fine-tuning, then a gradually unfrozen classifier",
    ),
}


def demo_module(name: str) -> str:
    """The import path of a demo's module: a full ``attnzoo.*`` path as given, any other
    name relative to :mod:`attnzoo.transformers_zoo`."""
    return name if name.startswith("attnzoo.") else f"attnzoo.transformers_zoo.{name}"


def _demo(args: argparse.Namespace) -> int:
    if args.list or args.name is None:
        width = max(len(name) for name in DEMOS)
        for name, (_, _, what) in DEMOS.items():
            print(f"{name:<{width}}  {what}")
        return 0
    module_name, function_name, _ = DEMOS[args.name]
    module = importlib.import_module(demo_module(module_name))
    metrics = getattr(module, function_name)(
        steps=args.steps, progress=not args.quiet, seed=args.seed
    )
    for key, value in metrics.items():
        print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    return 0


def _info(_: argparse.Namespace) -> int:
    print(f"attnzoo {__version__}")
    print(f"python {platform.python_version()} on {platform.platform()}")
    print(f"torch {torch.__version__}")
    if torch.cuda.is_available():
        print(f"cuda {torch.version.cuda}: {torch.cuda.get_device_name()}")
    else:
        print("cuda: not available")
    print("normalizers: " + ", ".join(available_normalizers()))
    return 0


def _normalize(args: argparse.Namespace) -> int:
    scores = torch.tensor(args.scores, dtype=torch.float64)
    width = max(len(label) for label, _, _ in DEMO_NORMALIZERS)
    print(f"{'scores':<{width}}  " + "  ".join(f"{s:7.3f}" for s in scores.tolist()))
    for label, name, options in DEMO_NORMALIZERS:
        weights = get_normalizer(name, **options)(scores, dim=-1)
        print(f"{label:<{width}}  " + "  ".join(f"{w:7.3f}" for w in weights.tolist()))
    return 0


def _plot_normalizers(args: argparse.Namespace) -> int:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot-normalizers needs matplotlib: pip install 'attnzoo[viz]'", file=sys.stderr)
        return 1
    # The first weight of the two-score input [t, 0] as t varies: softmax never reaches
    # 0 or 1, the sparse maps reach them at finite t (Peters et al. 2019, figure 1).
    t = torch.linspace(-3, 3, 601, dtype=torch.float64)
    scores = torch.stack([t, torch.zeros_like(t)], dim=-1)
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, name, options in DEMO_NORMALIZERS:
        weights = get_normalizer(name, **options)(scores, dim=-1)
        ax.plot(t.numpy(), weights[:, 0].numpy(), label=label)
    ax.set_xlabel("t")
    ax.set_ylabel("weight of the first score in [t, 0]")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.output, dpi=120)
    print(f"wrote {args.output}")
    return 0


def _viz(args: argparse.Namespace) -> int:
    # Imported here: the analysis tools load a real model and matplotlib.
    from .transformers_zoo import analysis

    try:
        model, tokenizer = analysis.load_minilm()
    except ImportError as error:
        print(f"viz: {error}", file=sys.stderr)
        return 1
    ids, mask, tokens, _ = analysis.encode_texts(tokenizer, [args.sentence])
    capture = analysis.capture_attention(model, ids, mask, tokens)[0]
    if not 0 <= args.layer < capture.num_layers:
        layers = capture.num_layers
        print(f"viz: --layer must be in [0, {layers}), got {args.layer}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = [analysis.write_html_view(capture, out / "attention.html", title=args.sentence)]
    try:
        layer_png = out / f"attention_layer{args.layer}.png"
        written.append(analysis.save_layer_heatmaps(capture, layer_png, args.layer))
        written.append(analysis.save_model_heatmaps(capture, out / "attention_model.png"))
    except ImportError as error:
        print(f"viz: PNG skipped: {error}", file=sys.stderr)
    for path in written:
        print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``attnzoo`` command."""
    parser = argparse.ArgumentParser(prog="attnzoo", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"attnzoo {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("info", help="versions, devices and registered normalisers").set_defaults(
        run=_info
    )

    normalize = commands.add_parser("normalize", help="each normaliser's weights for scores")
    normalize.add_argument("scores", type=float, nargs="+", help="the scores to normalise")
    normalize.set_defaults(run=_normalize)

    plot = commands.add_parser("plot-normalizers", help="plot the normalisers as a PNG")
    plot.add_argument("-o", "--output", default="normalizers.png", help="PNG file to write")
    plot.set_defaults(run=_plot_normalizers)

    demo = commands.add_parser("demo", help="train a classic attention model end to end")
    demo.add_argument("name", nargs="?", choices=sorted(DEMOS), help="which demo")
    demo.add_argument("--list", action="store_true", help="list the demos")
    demo.add_argument("--steps", type=int, default=None, help="training steps (demo default)")
    demo.add_argument("--seed", type=int, default=0, help="random seed")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(run=_demo)

    viz = commands.add_parser("viz", help="all-MiniLM-L6-v2's attention as HTML and PNG")
    viz.add_argument("sentence", help="the sentence to show")
    viz.add_argument("--out", default="attention", help="directory to write into")
    viz.add_argument("--layer", type=int, default=0, help="layer of the per-head PNG")
    viz.set_defaults(run=_viz)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``attnzoo`` console command."""
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    raise SystemExit(main())
