#pragma once
// The gqa=mean|max|sum|query parameter shared by every attention-based rule (rules doc 1.6):
// mean/max/sum reduce the G query heads of a group into one KV-head unit; query keeps one
// unit per query head (repeat_kv before compression).
#include <string>

#include "kernels/kernels.h"
#include "rules/registry.h"
#include "core/selection.h"

namespace kvsim {

struct GqaChoice {
  GqaMode mode = GqaMode::kv;
  kernels::GroupOp op = kernels::GroupOp::mean;
};

GqaChoice read_gqa(SpecReader& r, const std::string& def = "mean");

// per_head: [H][n] rows with stride ld; out: [units][n] (units = H/G in kv mode, H in query mode).
void reduce_heads(const float* per_head, int num_heads, int group, i64 n, i64 ld, GqaChoice gqa, float* out,
                  i64 out_ld);

}  // namespace kvsim
