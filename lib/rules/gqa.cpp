#include "rules/gqa.h"

#include <algorithm>

namespace kvsim {

GqaChoice read_gqa(SpecReader& r, const std::string& def) {
  const std::string v = r.get_choice("gqa", def, {"mean", "max", "sum", "query"});
  GqaChoice g;
  if (v == "query") g.mode = GqaMode::query;
  else g.op = v == "mean" ? kernels::GroupOp::mean : v == "max" ? kernels::GroupOp::max : kernels::GroupOp::sum;
  return g;
}

void reduce_heads(const float* per_head, int num_heads, int group, i64 n, i64 ld, GqaChoice gqa, float* out,
                  i64 out_ld) {
  if (gqa.mode == GqaMode::query) {
    for (int h = 0; h < num_heads; ++h) std::copy(per_head + h * ld, per_head + h * ld + n, out + h * out_ld);
    return;
  }
  for (int g = 0; g < num_heads / group; ++g)
    kernels::group_reduce(per_head + g * group * ld, group, n, ld, gqa.op, out + g * out_ld);
}

}  // namespace kvsim
