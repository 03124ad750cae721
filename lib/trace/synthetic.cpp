#include "trace/synthetic.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/splitmix.h"

namespace kvsim {

namespace {

// ---- counter-based randomness: every draw is a hash of its coordinates -----------------------
constexpr std::uint64_t kGolden = kSplitmixGolden;

inline std::uint64_t mix64(std::uint64_t z) { return splitmix64(z); }

enum Stream : std::uint64_t { kKey = 1, kValue, kQuery, kOProj, kHeadParam, kKvParam, kToken, kValueNorm, kHeavy, kNeedle };

inline std::uint64_t key(std::uint64_t seed, std::uint64_t stream, std::uint64_t a = 0, std::uint64_t b = 0,
                         std::uint64_t c = 0) {
  std::uint64_t h = mix64(seed ^ (stream * kGolden));
  h = mix64(h ^ a);
  h = mix64(h ^ (b * 0xD6E8FEB86659FD93ull));
  return mix64(h ^ (c * 0xA0761D6478BD642Full));
}

inline double uniform(std::uint64_t h) { return static_cast<double>(h >> 11) * 0x1.0p-53; }

// Approximately standard normal: Irwin-Hall sum of four 16-bit uniforms, rescaled to unit variance.
// One hash per value keeps a 32-layer 32K-token trace fast to generate; tails come from the
// planted structure, not from the noise.
inline float normal(std::uint64_t h) {
  const std::uint32_t s = static_cast<std::uint32_t>(h & 0xffff) + static_cast<std::uint32_t>((h >> 16) & 0xffff) +
                          static_cast<std::uint32_t>((h >> 32) & 0xffff) + static_cast<std::uint32_t>(h >> 48);
  return (static_cast<float>(s) + 2.0f) * (1.7320508f / 65536.0f) - 2.0f * 1.7320508f;
}

inline void normal_row(std::uint64_t base, float* out, int n) {
  for (int j = 0; j < n; ++j) out[j] = normal(mix64(base + static_cast<std::uint64_t>(j)));
}

void unit_vector(std::uint64_t base, std::vector<float>& v) {
  normal_row(base, v.data(), static_cast<int>(v.size()));
  double s = 0;
  for (float x : v) s += double(x) * x;
  const float inv = static_cast<float>(1.0 / std::sqrt(s));
  for (float& x : v) x *= inv;
}

// ---- RoPE ------------------------------------------------------------------------------------
struct Rope {
  int d = 0;
  RopeStyle style = RopeStyle::half;
  std::vector<float> cos, sin;  // [pos][d/2]

  Rope(const SynthOptions& o, i64 S) : d(o.head_dim), style(o.rope_style) {
    const int half = d / 2;
    cos.resize(static_cast<std::size_t>(S * half));
    sin.resize(cos.size());
    std::vector<double> freq(half);
    for (int i = 0; i < half; ++i) freq[i] = std::pow(o.rope_theta, -2.0 * i / d);
#pragma omp parallel for schedule(static)
    for (i64 p = 0; p < S; ++p)
      for (int i = 0; i < half; ++i) {
        const double angle = static_cast<double>(p) * freq[i];
        cos[p * half + i] = static_cast<float>(std::cos(angle));
        sin[p * half + i] = static_cast<float>(std::sin(angle));
      }
  }
  int first(int i) const { return style == RopeStyle::half ? i : 2 * i; }
  int second(int i) const { return style == RopeStyle::half ? i + d / 2 : 2 * i + 1; }
  void apply(float* x, i64 pos) const {
    const int half = d / 2;
    const float* c = cos.data() + pos * half;
    const float* s = sin.data() + pos * half;
    for (int i = 0; i < half; ++i) {
      const float a = x[first(i)], b = x[second(i)];
      x[first(i)] = a * c[i] - b * s[i];
      x[second(i)] = a * s[i] + b * c[i];
    }
  }
};

// ---- per-head structure ------------------------------------------------------------------------
struct HeadParams {
  float tau;         // overall query scale: concentration of this head's attention
  float sink_aff;    // 0..1: how strongly the head attends to sinks / heavy hitters
  float local_aff;   // 0.2..1.2: strength of the recency kernel
  bool retrieval;    // attends to the needle from question/generated queries
};

HeadParams head_params(const SynthOptions& o, int layer, int h) {
  auto u = [&](int i) { return uniform(key(o.seed, kHeadParam, layer, h, i)); };
  HeadParams p;
  p.tau = static_cast<float>(0.6 + 1.0 * u(0));
  p.sink_aff = static_cast<float>(0.4 + 0.6 * u(1));
  p.local_aff = static_cast<float>(0.2 + 1.0 * u(2));
  // At least one retrieval head in every layer after the first, so the needle is always found.
  p.retrieval = layer >= 1 && (u(3) < o.retrieval_head_rate || h == (layer * 7) % o.num_heads);
  return p;
}

struct KvParams {
  std::vector<float> sink_dir, needle_dir, local_dir;  // unit vectors, head_dim
  std::vector<int> outlier_channel;
  std::vector<float> outlier_value;
};

KvParams kv_params(const SynthOptions& o, int layer, int g) {
  const int d = o.head_dim;
  KvParams p;
  p.sink_dir.resize(d);
  p.needle_dir.resize(d);
  p.local_dir.assign(d, 0.f);
  unit_vector(key(o.seed, kKvParam, layer, g, 0), p.sink_dir);
  unit_vector(key(o.seed, kKvParam, layer, g, 1), p.needle_dir);
  // Locality: equal energy in the RoPE pairs whose frequency lies in [1/64, 1] rad per token.
  // Log-spaced frequencies with equal weights give a kernel sum_i cos(theta_i * distance) that
  // decays roughly like 1 - log(distance)/log(64): a recency window of some tens of tokens.
  const Rope layout_only{o, 0};
  double norm = 0;
  for (int i = 0; i < d / 2; ++i) {
    const double theta = std::pow(o.rope_theta, -2.0 * i / d);
    if (theta < 1.0 / 64 && i > 0) continue;
    const std::uint64_t h = key(o.seed, kKvParam, layer, g, 100 + i);
    // A random phase per pair, unit amplitude: every pair contributes equally.
    const double phase = 6.283185307179586 * uniform(mix64(h));
    p.local_dir[layout_only.first(i)] = static_cast<float>(std::cos(phase));
    p.local_dir[layout_only.second(i)] = static_cast<float>(std::sin(phase));
    norm += 1.0;
  }
  for (float& x : p.local_dir) x = static_cast<float>(x / std::sqrt(norm));
  for (int j = 0; j < o.outlier_channels; ++j) {
    const std::uint64_t h = key(o.seed, kKvParam, layer, g, 1000 + j);
    p.outlier_channel.push_back(static_cast<int>(h % static_cast<std::uint64_t>(d)));
    const double mag = 6.0 + 9.0 * uniform(mix64(h));
    p.outlier_value.push_back(static_cast<float>((mix64(h + 7) & 1) ? mag : -mag));
  }
  return p;
}

}  // namespace

void check_synth_options(const SynthOptions& o) {
  auto bad = [](const std::string& field, const std::string& what) { fail("synth", field, what); };
  if (o.num_layers < 1 || o.num_heads < 1 || o.num_kv_heads < 1 || o.hidden_size < 1)
    bad("--layers/--heads/--kv-heads/--hidden", "must be positive");
  if (o.num_heads % o.num_kv_heads != 0) bad("--kv-heads", "must divide --heads");
  if (o.head_dim < 2 || o.head_dim % 2 != 0) bad("--head-dim", "must be even and >= 2 (RoPE pairs)");
  if (o.question_len < 0 || o.gen_len < 0) bad("--question-len/--gen-len", "must be >= 0");
  if (o.seq_len < 1 || o.seq_len > (i64{1} << 21)) bad("--seq-len", "must be in 1..2097152");
  if (o.seq_len - o.question_len - o.gen_len < 1)
    bad("--seq-len", "must exceed --question-len + --gen-len (at least one context token)");
  if (o.window < 0) bad("--window", "must be >= 0");
  if (!(o.rope_theta > 0)) bad("--rope-theta", "must be positive");
}

TraceMeta synth_meta(const SynthOptions& o) {
  check_synth_options(o);
  TraceMeta m;
  m.model = "synthetic";
  m.source = "kvsim synth (seed " + std::to_string(o.seed) + ")";
  m.num_layers = o.num_layers;
  m.num_heads = o.num_heads;
  m.num_kv_heads = o.num_kv_heads;
  m.head_dim = o.head_dim;
  m.hidden_size = o.hidden_size;
  m.rope_style = o.rope_style;
  m.rope_theta = o.rope_theta;
  m.attn_scale = 1.0 / std::sqrt(static_cast<double>(o.head_dim));
  m.seq_len = o.seq_len;
  const i64 ctx = o.seq_len - o.question_len - o.gen_len;
  m.prefill_len = ctx + o.question_len;
  m.input_ids.resize(o.seq_len);
  m.segment.resize(o.seq_len);
  for (i64 p = 0; p < o.seq_len; ++p) {
    m.input_ids[p] = static_cast<std::int32_t>(key(o.seed, kToken, p) % 128000);
    m.segment[p] = p < ctx ? kContext : p < m.prefill_len ? kQuestion : kGenerated;
  }
  const i64 q0 = o.all_queries ? 0 : std::max<i64>(0, ctx - o.window);
  for (i64 p = q0; p < o.seq_len; ++p) m.q_pos.push_back(p);
  // The needle sits inside the compressed span, after the sinks and before the window.
  const i64 room = ctx - o.window - o.num_sinks - o.needle_len;
  if (o.needle_len > 0 && room > 0) {
    const i64 a = o.num_sinks + static_cast<i64>((0.3 + 0.4 * uniform(key(o.seed, kNeedle))) * room);
    m.spans["needle"] = {a, a + o.needle_len};
  }
  if (o.question_len > 0) m.spans["question"] = {ctx, m.prefill_len};
  m.has_o_proj = o.o_proj;
  m.has_o = false;
  return m;
}

LayerData synth_layer(const SynthOptions& o, const TraceMeta& meta, int layer) {
  const int d = o.head_dim, H = o.num_heads, G = o.num_kv_heads, group = H / G;
  const i64 S = meta.seq_len, nq = meta.num_queries(), ctx = meta.context_end();
  const float sqrt_d = std::sqrt(static_cast<float>(d));
  // Query-side magnitude of the planted directions: small, so that their dot products with
  // ordinary keys stay ~0.5 logits of noise; the large magnitude sits on the few special keys.
  const float q_side = 0.5f * sqrt_d;
  const float needle_logit = static_cast<float>(std::log(static_cast<double>(S)) + 3.0);
  const auto needle = meta.spans.count("needle") ? meta.spans.at("needle") : std::pair<i64, i64>{0, 0};

  LayerData L;
  L.layer = layer;
  L.num_heads = H;
  L.num_kv_heads = G;
  L.head_dim = d;
  L.hidden_size = o.hidden_size;
  L.num_q = nq;
  L.seq_len = S;
  L.q.resize(static_cast<std::size_t>(H * nq * d));
  L.k.resize(static_cast<std::size_t>(G * S * d));
  L.v.resize(L.k.size());

  const Rope rope(o, S);
  std::vector<KvParams> kv(G);
  for (int g = 0; g < G; ++g) kv[g] = kv_params(o, layer, g);
  std::vector<HeadParams> hp(H);
  for (int h = 0; h < H; ++h) hp[h] = head_params(o, layer, h);
  // Locality: k carries c * u, q carries c * local_aff * u, so the kernel at distance 0 is
  // tau * local_aff * locality_logit.
  const float c_local = std::sqrt(static_cast<float>(o.locality_logit) * sqrt_d);
  // Content noise per channel: content logits have std ~ tau * sigma^2, and the locality
  // component adds ~ sigma * sqrt(locality_logit / sqrt(d)) of noise on each side.
  const float sigma = static_cast<float>(o.content_sigma);

#pragma omp parallel for schedule(static)
  for (i64 r = 0; r < G * S; ++r) {
    const int g = static_cast<int>(r / S);
    const i64 p = r % S;
    const KvParams& P = kv[g];
    float* k = L.k.data() + r * d;
    float* v = L.v.data() + r * d;
    normal_row(key(o.seed, kKey, layer, g, p), k, d);
    for (int j = 0; j < d; ++j) k[j] = sigma * k[j] + c_local * P.local_dir[j];
    rope.apply(k, p);
    // Position-independent boosts along the sink direction: sinks and heavy hitters.
    float boost = 0.f;
    if (p < o.num_sinks) {
      boost = static_cast<float>(o.sink_logit);
    } else if (p < ctx) {
      const std::uint64_t hh = key(o.seed, kHeavy, p);  // token salience shared by all heads...
      if (uniform(hh) < o.heavy_hitter_rate && uniform(key(o.seed, kHeavy, layer, g, p)) < 0.7)  // ...mostly
        boost = static_cast<float>(o.heavy_hitter_logit * (0.5 + uniform(mix64(hh))));  // below the sinks
    }
    if (boost != 0.f)
      for (int j = 0; j < d; ++j) k[j] += boost * sqrt_d / q_side * P.sink_dir[j];
    if (p >= needle.first && p < needle.second)
      for (int j = 0; j < d; ++j) k[j] += needle_logit * sqrt_d / q_side * P.needle_dir[j];
    for (std::size_t j = 0; j < P.outlier_channel.size(); ++j) k[P.outlier_channel[j]] += P.outlier_value[j];

    normal_row(key(o.seed, kValue, layer, g, p), v, d);
    const float vnorm = p < o.num_sinks ? 0.2f
                                        : static_cast<float>(std::exp(o.value_norm_sigma *
                                                                      normal(key(o.seed, kValueNorm, layer, g, p))));
    for (int j = 0; j < d; ++j) v[j] *= vnorm;
  }

#pragma omp parallel for schedule(static)
  for (i64 r = 0; r < H * nq; ++r) {
    const int h = static_cast<int>(r / nq);
    const i64 t = meta.q_pos[r % nq];
    const KvParams& P = kv[h / group];
    const HeadParams& Q = hp[h];
    float* q = L.q.data() + r * d;
    normal_row(key(o.seed, kQuery, layer, h, t), q, d);
    for (int j = 0; j < d; ++j) q[j] = sigma * q[j] + c_local * Q.local_aff * P.local_dir[j];
    rope.apply(q, t);
    // Remove the content noise along the planted directions, so that sink and needle boosts are
    // stable across queries (the keys there are large: noise along them would swing by several logits).
    for (const std::vector<float>* dir : {&P.sink_dir, &P.needle_dir}) {
      float c = 0.f;
      for (int j = 0; j < d; ++j) c += q[j] * (*dir)[j];
      for (int j = 0; j < d; ++j) q[j] -= c * (*dir)[j];
    }
    // tau sharpens or flattens the content and recency part; the planted boosts keep their size.
    for (int j = 0; j < d; ++j) q[j] = Q.tau * q[j] + Q.sink_aff * q_side * P.sink_dir[j];
    if (Q.retrieval && t >= ctx)
      for (int j = 0; j < d; ++j) q[j] += q_side * P.needle_dir[j];
  }

  if (o.o_proj) {
    const i64 in = static_cast<i64>(H) * d;
    L.o_proj.resize(static_cast<std::size_t>(o.hidden_size * in));
    const float scale = 1.0f / std::sqrt(static_cast<float>(in));
#pragma omp parallel for schedule(static)
    for (i64 r = 0; r < o.hidden_size; ++r) {
      float* w = L.o_proj.data() + r * in;
      normal_row(key(o.seed, kOProj, layer, r), w, static_cast<int>(in));
      for (i64 j = 0; j < in; ++j) w[j] *= scale;
    }
  }
  return L;
}

void write_synthetic_trace(const std::string& path, const SynthOptions& opt, const WriteOptions& wopt,
                           const std::function<void(int)>& on_layer) {
  const TraceMeta meta = synth_meta(opt);
  TraceWriter writer(path, meta, wopt);
  for (int l = 0; l < opt.num_layers; ++l) {
    writer.write_layer(synth_layer(opt, meta, l));
    if (on_layer) on_layer(l);
  }
  writer.finish();
}

}  // namespace kvsim
