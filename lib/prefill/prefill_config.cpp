#include "prefill/prefill_config.h"

#include "core/error.h"

namespace kvsim::prefill {

void PrefillConfig::validate() const {
  if (block <= 0) fail("prefill", "--block", "must be positive, got " + std::to_string(block));
  if (segment <= 0) fail("prefill", "--segment", "must be positive, got " + std::to_string(segment));
  if (segment % block != 0)
    fail("prefill", "--segment",
         std::to_string(segment) + " is not a multiple of --block " + std::to_string(block));
  if (budget < 0) fail("prefill", "--budget", "must be >= 0, got " + std::to_string(budget));
  if (threshold < 0) fail("prefill", "--threshold", "must be >= 0, got " + std::to_string(threshold));
  if (layer_skip < 0) fail("prefill", "--layer-skip", "must be >= 0, got " + std::to_string(layer_skip));
}

std::string PrefillConfig::describe() const {
  return "segment=" + std::to_string(segment) + ",block=" + std::to_string(block) +
         ",budget=" + std::to_string(budget) + ",threshold=" + std::to_string(threshold) +
         ",layer_skip=" + std::to_string(layer_skip) + ",fusion=" + (fusion ? "on" : "off");
}

}  // namespace kvsim::prefill
