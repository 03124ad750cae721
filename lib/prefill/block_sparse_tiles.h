#pragma once
// The ISA-independent parts of the vector block-sparse attention kernels
// (block_sparse_attention_avx2.cpp, _avx512.cpp): key-block transposition, the work-item list,
// query-tile loading, causal masking and the final normalisation. Compiled once, without ISA
// flags (block_sparse_attention.cpp), so an inline copy built for AVX-512 can never be picked
// for the AVX2 path; they run once per work item or block, outside the register-tile loops.
#include <cstdint>
#include <vector>

#include "core/types.h"
#include "prefill/block_selection.h"
#include "prefill/heads_view.h"

namespace kvsim::prefill::tiles {

// Keys transposed per block, [g][b][c][j], zero padded past n: a vector loads consecutive keys
// of one channel.
avec<float> transpose_key_blocks(const HeadsView& x, const SegmentPlan& plan);

// One work item: KV head g, segment s, the tile of queries starting at t0.
struct WorkItem {
  int g;
  i64 s, t0;
};
// Costly (late) segments first, so dynamic scheduling ends evenly.
std::vector<WorkItem> work_items(const HeadsView& x, const SegmentPlan& plan, i64 tile);

// Rows r = hh * tile + i hold query head g*G + hh at position t0 + i, times the softmax scale;
// rows past n are zero.
void load_query_tile(const HeadsView& x, int g, i64 t0, i64 tile, float* qs);

// Logits of keys after the row's query position or past n become -inf (rows x bs, row r is query
// t0 + r % tile). Only needed for the segment's own blocks and a partial last block.
void mask_block(float* lg, i64 rows, i64 bs, i64 t0, i64 tile, i64 key0, i64 n);

// out rows of the tile = o / l (the online softmax's numerator and denominator).
void store_output_tile(const HeadsView& x, int g, i64 t0, i64 tile, const float* o, const float* l, float* out);

}  // namespace kvsim::prefill::tiles
