"""Looking inside attention: capture, head patterns, syntax probes, views, embeddings.

The tools of Clark et al. (2019, "What does BERT look at?"), Htut et al. (2019, "Do
attention heads in BERT track syntactic dependencies?"), bertviz and the embedding
studies, for any zoo model that returns attentions (encoders, decoders,
encoder-decoders) and for the real all-MiniLM-L6-v2 weights.

* Capture: :func:`capture_attention` (every layer and head, with token strings),
  :func:`word_attention` (sub-word to word attention), :func:`encode_texts`,
  :func:`encode_words`.
* Head patterns: :func:`head_statistics` (attention to [CLS], [SEP], punctuation,
  previous/next token, itself; entropy), :func:`head_distances` (Jensen-Shannon),
  :func:`cluster_heads`, :func:`embed_heads`, :func:`pattern_report`.
* Syntax: :func:`chu_liu_edmonds`, :func:`decode_max`, :func:`decode_mst`,
  :func:`probe_heads` (per-relation undirected UAS of every head), baselines
  :func:`best_offsets` / :func:`offset_heads` / :func:`right_branching`, and the learned
  :class:`AttentionProbe` (Clark et al.'s attention-based probing classifier).
* Gold trees: :class:`DependencyTree`, :func:`load_gold_treebank` (a CoNLL-U treebank of
  a small grammar, shipped), :func:`read_conllu`, :func:`write_conllu`.
* Views: :func:`write_html_view` (self-contained head view + model view),
  :func:`save_layer_heatmaps`, :func:`save_model_heatmaps` (PNG).
* Embeddings: :func:`nearest_tokens`, :func:`project_to_vocabulary`,
  :func:`similarity_histogram`; word senses: :class:`SenseClassifier` over
  :func:`contextual_word_vectors` ("duck": :data:`DUCK_EXAMPLES`).
"""

from .capture import (
    AttentionCapture,
    AttentionView,
    capture_attention,
    encode_texts,
    encode_words,
    word_attention,
)
from .conllu_data import (
    DependencyTree,
    gold_treebank_path,
    grammar_tree,
    grammar_treebank,
    load_gold_treebank,
    parse_conllu,
    read_conllu,
    to_conllu,
    write_conllu,
    write_grammar_treebank,
)
from .embeddings import (
    nearest_tokens,
    pairwise_cosines,
    project_to_vocabulary,
    save_similarity_histograms,
    similarity_histogram,
)
from .heatmaps import save_layer_heatmaps, save_model_heatmaps
from .html_view import attention_json, read_html_data, render_html, write_html_view
from .patterns import (
    PATTERNS,
    HeadStatistics,
    cluster_heads,
    embed_heads,
    head_distances,
    head_statistics,
    is_punctuation,
    pattern_report,
)
from .pretrained_minilm import load_minilm, load_tokenizer, minilm_directory
from .probe import AttentionProbe, ProbeBatch, make_probe_batch, probe_uas, train_attention_probe
from .syntax_experiment import (
    SyntaxProbeReport,
    grammar_tokenizer,
    probe_models,
    run_syntax_probe_experiment,
    train_grammar_mlm,
    tree_word_attentions,
)
from .trees import (
    DIRECTIONS,
    HeadProbeResult,
    attachment_hits,
    best_offsets,
    chu_liu_edmonds,
    decode_max,
    decode_mst,
    offset_heads,
    probe_heads,
    relation_accuracy,
    right_branching,
    uas,
)
from .wsd import (
    DUCK_EXAMPLES,
    DUCK_FORMS,
    SenseClassifier,
    contextual_word_vectors,
    most_frequent_sense_accuracy,
)

__all__ = [
    "DIRECTIONS",
    "DUCK_EXAMPLES",
    "DUCK_FORMS",
    "PATTERNS",
    "AttentionCapture",
    "AttentionProbe",
    "AttentionView",
    "DependencyTree",
    "HeadProbeResult",
    "HeadStatistics",
    "ProbeBatch",
    "SenseClassifier",
    "SyntaxProbeReport",
    "attachment_hits",
    "attention_json",
    "best_offsets",
    "capture_attention",
    "chu_liu_edmonds",
    "cluster_heads",
    "contextual_word_vectors",
    "decode_max",
    "decode_mst",
    "embed_heads",
    "encode_texts",
    "encode_words",
    "gold_treebank_path",
    "grammar_tokenizer",
    "grammar_tree",
    "grammar_treebank",
    "head_distances",
    "head_statistics",
    "is_punctuation",
    "load_gold_treebank",
    "load_minilm",
    "load_tokenizer",
    "make_probe_batch",
    "minilm_directory",
    "most_frequent_sense_accuracy",
    "nearest_tokens",
    "offset_heads",
    "pairwise_cosines",
    "parse_conllu",
    "pattern_report",
    "probe_heads",
    "probe_models",
    "probe_uas",
    "project_to_vocabulary",
    "read_conllu",
    "read_html_data",
    "relation_accuracy",
    "render_html",
    "right_branching",
    "run_syntax_probe_experiment",
    "save_layer_heatmaps",
    "save_model_heatmaps",
    "save_similarity_histograms",
    "similarity_histogram",
    "to_conllu",
    "train_attention_probe",
    "train_grammar_mlm",
    "tree_word_attentions",
    "uas",
    "word_attention",
    "write_conllu",
    "write_grammar_treebank",
    "write_html_view",
]
