#pragma once
// Block-sparse causal attention for CritiPrefill: every query of segment s attends to the
// selected past key blocks of its KV head plus its own segment's keys up to itself. Dense causal
// attention is the same call with BlockSelection::dense. Flash-attention style: online softmax
// over key blocks, one (KV head, segment, query tile) work item per OpenMP task, the G query
// heads of a KV head processed together (GQA). Dispatches to AVX-512 (head_dim and block
// multiples of 16), AVX2 (multiples of 8) or to the scalar reference.
#include "prefill/block_selection.h"
#include "prefill/heads_view.h"

namespace kvsim::prefill {

// out: [num_heads][n][head_dim], row t of head h = softmax over the attended keys of
// (scale * q.k) times v.
void block_sparse_attention(const HeadsView& x, const BlockSelection& sel, float* out);

// Whether the AVX-512 / AVX2 kernel handles this shape (else the dispatcher uses the reference).
bool avx512_attention_supported(const HeadsView& x, const SegmentPlan& plan);
bool avx2_attention_supported(const HeadsView& x, const SegmentPlan& plan);

namespace scalar {
// Reference: explicit key list per query, two-pass softmax with double accumulation.
void block_sparse_attention(const HeadsView& x, const BlockSelection& sel, float* out);
}
namespace avx512 {
void block_sparse_attention(const HeadsView& x, const BlockSelection& sel, float* out);
}
namespace avx2 {
void block_sparse_attention(const HeadsView& x, const BlockSelection& sel, float* out);
}

}  // namespace kvsim::prefill
