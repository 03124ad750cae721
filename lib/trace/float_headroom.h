#pragma once
// kvsim computes in float32. Finite inputs near the top of the float32 range (3.4e38) would make
// the attention logits, the projected outputs or their squared norms overflow to Inf and the
// metrics NaN. Instead of writing such numbers, a layer is refused when the largest products
// the engine forms could leave float32 (with a wide margin: real traces sit 20+ orders of
// magnitude below these limits).
#include <string>

#include "trace/layer_data.h"
#include "trace/trace_meta.h"

namespace kvsim {

struct HeadroomProblem {
  std::string tensor, what;  // empty tensor: no problem
};
// The rule on the largest |x| of each tensor (0 for an absent one).
HeadroomProblem float32_headroom(const TraceMeta& meta, double max_q, double max_k, double max_v, double max_o_proj,
                                 bool has_o_proj);

// Throws kvsim::Error "<trace>: /layers/<l>/<tensor>: ..." naming the tensor(s) and the product.
void check_float32_headroom(const TraceMeta& meta, const LayerData& data);

}  // namespace kvsim
