"""Model compression: pruning, factorisation, distillation, sharing, quantisation.

Every method works on any ``nn.Module`` and is tested on the zoo models;
:func:`compression_report` measures what a method really bought (parameters, non-zeros,
bytes on disk, latency, metric). Stands on :mod:`attnzoo.attention` and
:mod:`attnzoo.transformers_zoo`.
"""

from .attention_scores import capture_attention_scores
from .distillation import (
    DistilBertLoss,
    Distiller,
    HintonObjective,
    TinyBertLoss,
    hinton_loss,
    masked_cosine_loss,
    soft_target_loss,
    uniform_layer_map,
)
from .factorisation import (
    FactorisedEmbedding,
    LowRankLinear,
    factorise_embedding,
    factorise_linears,
    svd_rank,
)
from .head_pruning import (
    HeadGates,
    HeadPruningResult,
    attention_modules,
    head_importance,
    prune_heads,
    prune_heads_iteratively,
    prune_model_heads,
)
from .layerdrop import (
    LayerDrop,
    apply_layerdrop,
    every_other_layer,
    remove_layerdrop,
    select_layers,
)
from .movement import (
    MovementLinear,
    MovementPruner,
    ThresholdBinarizer,
    TopKBinarizer,
    apply_movement_pruning,
    finalize_movement_pruning,
    movement_prune,
)
from .neuron_pruning import (
    feed_forward_modules,
    ffn_neuron_importance,
    prune_ffn_neurons,
    prune_ffn_neurons_by_importance,
)
from .pruning import (
    GradualMagnitudePruner,
    linear_weights,
    magnitude_masks,
    magnitude_prune,
    make_pruning_permanent,
    nm_mask,
    schedule_progress,
    sparsity_of,
    sparsity_schedule,
)
from .qat import (
    EmaAbsMax,
    LsqQuantize,
    LsqQuantizer,
    QuantLinear,
    prepare_qat,
    signed_range,
    symmetric_fake_quantize,
)
from .qat_conversion import Int8Linear, convert_qat
from .quantisation import linear_weight_bytes, quantize_dynamic_int8
from .report import (
    CompressionReport,
    compression_report,
    count_nonzeros,
    count_parameters,
    disk_bytes,
    latency_ms,
)
from .sharing import encoder_layers, share_layers

__all__ = [
    "CompressionReport",
    "DistilBertLoss",
    "Distiller",
    "EmaAbsMax",
    "FactorisedEmbedding",
    "GradualMagnitudePruner",
    "HeadGates",
    "HeadPruningResult",
    "HintonObjective",
    "Int8Linear",
    "LayerDrop",
    "LowRankLinear",
    "LsqQuantize",
    "LsqQuantizer",
    "MovementLinear",
    "MovementPruner",
    "QuantLinear",
    "ThresholdBinarizer",
    "TinyBertLoss",
    "TopKBinarizer",
    "apply_layerdrop",
    "apply_movement_pruning",
    "attention_modules",
    "capture_attention_scores",
    "compression_report",
    "convert_qat",
    "count_nonzeros",
    "count_parameters",
    "disk_bytes",
    "encoder_layers",
    "every_other_layer",
    "factorise_embedding",
    "factorise_linears",
    "feed_forward_modules",
    "ffn_neuron_importance",
    "finalize_movement_pruning",
    "head_importance",
    "hinton_loss",
    "latency_ms",
    "linear_weight_bytes",
    "linear_weights",
    "magnitude_masks",
    "magnitude_prune",
    "make_pruning_permanent",
    "masked_cosine_loss",
    "movement_prune",
    "nm_mask",
    "prepare_qat",
    "prune_ffn_neurons",
    "prune_ffn_neurons_by_importance",
    "prune_heads",
    "prune_heads_iteratively",
    "prune_model_heads",
    "quantize_dynamic_int8",
    "remove_layerdrop",
    "schedule_progress",
    "select_layers",
    "share_layers",
    "signed_range",
    "soft_target_loss",
    "sparsity_of",
    "sparsity_schedule",
    "svd_rank",
    "symmetric_fake_quantize",
    "uniform_layer_map",
]
