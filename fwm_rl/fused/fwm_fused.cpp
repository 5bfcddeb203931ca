// Fused CPU kernel of the FWM fast-weight recurrence (the specification is fwm_recurrence_reference in
// fwm_rl/recurrence.py). One batch row's F (d×d×d) stays in cache for all T steps; rows run in parallel.
//
// Per step t of one row (F̃ = F masked by the reset, K = k_s ⊗ k_r, c = max(1, ‖G‖)):
//   v̂ = Σ_ab K_ab F̃_ab:      u = λβ(v − v̂)      G = F̃ + K ⊗ u      F_t = G / c
//   n⁽⁰⁾ = q;  z⁽ⁱ⁾ = Σ_ab n⁽ⁱ⁻¹⁾_a e⁽ⁱ⁾_b F_t,ab:;  n⁽ⁱ⁾ = LN(z⁽ⁱ⁾)
// ‖G‖² = ‖F̃‖² + 2 v̂·u + ‖k_s‖²‖k_r‖²‖u‖² and the first read of F_t is (Σ q_a e_b F̃_ab: + (q·k_s)(e·k_r) u) / c,
// so one read-only pass over F̃ gives v̂, ‖F̃‖² and that read, and one read-write pass writes F_t and does the second
// read. The forward saves v̂, ‖G‖ and every z⁽ⁱ⁾ per step ([T, B, ·] vectors) and F every `every` steps; the
// backward recomputes one segment of F from its checkpoint into a per-thread buffer and walks it in reverse. A
// backward step needs only F_t: F̃ = c·F_t − K ⊗ u, and Σ_ab K_ab gG_ab: has a closed form, so the gradient wrt
// F_{t-1} and those wrt k_s and k_r come out of one read-write pass after the reads' N passes.
//
// Every d³ loop runs over rows F[a][b][:] with the innermost loop over the last index, so it vectorises
// without reassociation; the d-long dot products use `omp simd` reductions. D > 0 fixes d at compile time, which
// lets the compiler keep the d-long accumulators (local arrays) in vector registers; D = 0 takes any d ≤ kMaxDim.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

// Vectorise the loop over the last index of F. Without it GCC may vectorise the loop over rows instead, through
// 16×16 transposes, which is an order of magnitude slower.
#define FWM_SIMD _Pragma("omp simd")

namespace {

constexpr int64_t kMaxDim = 128;  // largest d of the runtime-d kernels (their local arrays hold kMaxDim entries)

template <int D>
constexpr int64_t capacity() {
  return D > 0 ? D : kMaxDim;
}

// Raw views of the contiguous inputs: vectors are [T, B, d], edges [T, B, N, d], beta and starts [T, B].
template <typename S>
struct Inputs {
  const S* keys_s;
  const S* keys_r;
  const S* values;
  const S* beta;
  const S* queries;
  const S* edges;
  const bool* starts;
  int64_t T, B, d, n_reads, every;
  S write_scale, eps;

  int64_t at(int64_t t, int64_t b) const { return t * B + b; }
  const S* vec(const S* base, int64_t t, int64_t b) const { return base + at(t, b) * d; }
  const S* edge(int64_t t, int64_t b, int64_t i) const { return edges + (at(t, b) * n_reads + i) * d; }
};

// Per-step quantities saved by the forward: v̂ [T, B, d], ‖G‖ [T, B], z [T, B, N, d].
template <typename S>
struct Saved {
  S* vhat;
  S* norm;
  S* z;
};

template <typename S>
S dot(const S* __restrict__ x, const S* __restrict__ y, int64_t n) {
  S s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t k = 0; k < n; ++k) s += x[k] * y[k];
  return s;
}

// out = x ⊗ y (n×n, row-major).
template <typename S>
void outer(const S* __restrict__ x, const S* __restrict__ y, S* __restrict__ out, int64_t n) {
  for (int64_t a = 0; a < n; ++a) {
    for (int64_t b = 0; b < n; ++b) out[a * n + b] = x[a] * y[b];
  }
}

// Mean and 1/sqrt(var + eps) of n entries (biased variance, as torch's layer_norm).
template <typename S>
std::pair<S, S> layer_norm_stats(const S* __restrict__ z, int64_t n, S eps) {
  S mean = 0;
  for (int64_t k = 0; k < n; ++k) mean += z[k];
  mean /= n;
  S var = 0;
  for (int64_t k = 0; k < n; ++k) var += (z[k] - mean) * (z[k] - mean);
  return {mean, S(1) / std::sqrt(var / n + eps)};
}

// Non-affine LayerNorm over n entries: out = (z − mean) / sqrt(var + eps).
template <typename S>
void layer_norm(const S* __restrict__ z, S* __restrict__ out, int64_t n, S eps) {
  const auto [mean, rstd] = layer_norm_stats(z, n, eps);
  for (int64_t k = 0; k < n; ++k) out[k] = (z[k] - mean) * rstd;
}

// Gradient of layer_norm wrt z given the gradient g on its output.
template <typename S>
void layer_norm_backward(const S* __restrict__ z, const S* __restrict__ g, S* __restrict__ g_z, int64_t n, S eps) {
  const auto [mean, rstd] = layer_norm_stats(z, n, eps);
  S g_mean = 0, gx_mean = 0;
  for (int64_t k = 0; k < n; ++k) {
    g_mean += g[k];
    gx_mean += g[k] * (z[k] - mean) * rstd;
  }
  g_mean /= n;
  gx_mean /= n;
  for (int64_t k = 0; k < n; ++k) g_z[k] = rstd * (g[k] - g_mean - (z[k] - mean) * rstd * gx_mean);
}

// z = Σ_ab x_a y_b F_ab:  (one read of F).
template <typename S, int D>
void contract(const S* __restrict__ F, const S* __restrict__ x, const S* __restrict__ y, S* __restrict__ z,
              int64_t d_runtime) {
  const int64_t d = D > 0 ? D : d_runtime;
  S acc[capacity<D>()];
  std::fill(acc, acc + d, S(0));
  for (int64_t a = 0; a < d; ++a) {
    for (int64_t b = 0; b < d; ++b) {
      const S* row = F + (a * d + b) * d;
      const S c = x[a] * y[b];
      FWM_SIMD
      for (int64_t k = 0; k < d; ++k) acc[k] += c * row[k];
    }
  }
  std::copy(acc, acc + d, z);
}

// F ← src / c + K ⊗ u / c (src may be F itself); with_read also gives z = Σ_ab x_a y_b F_ab: of the result.
template <typename S, int D, bool with_read>
void write_step(const S* src, S* F, const S* __restrict__ ks, const S* __restrict__ kr, const S* __restrict__ u,
                S inv_c, const S* __restrict__ read_x, const S* __restrict__ read_y, S* __restrict__ z,
                int64_t d_runtime) {
  const int64_t d = D > 0 ? D : d_runtime;
  S acc[capacity<D>()];
  S uu[capacity<D>()];
  std::fill(acc, acc + d, S(0));
  std::copy(u, u + d, uu);
  for (int64_t a = 0; a < d; ++a) {
    for (int64_t b = 0; b < d; ++b) {
      const S* in = src + (a * d + b) * d;
      S* out = F + (a * d + b) * d;
      const S kab = ks[a] * kr[b] * inv_c;
      const S c = with_read ? read_x[a] * read_y[b] : S(0);
      FWM_SIMD
      for (int64_t k = 0; k < d; ++k) {
        const S f = in[k] * inv_c + kab * uu[k];
        out[k] = f;
        if (with_read) acc[k] += c * f;
      }
    }
  }
  if (with_read) std::copy(acc, acc + d, z);
}

// One row's inputs at one step.
template <typename S>
struct Step {
  const S *ks, *kr, *v, *q;
  S lb;  // λβ
  bool reset;
};

template <typename S>
Step<S> step_inputs(const Inputs<S>& in, int64_t t, int64_t b) {
  Step<S> s;
  s.ks = in.vec(in.keys_s, t, b);
  s.kr = in.vec(in.keys_r, t, b);
  s.v = in.vec(in.values, t, b);
  s.q = in.vec(in.queries, t, b);
  s.lb = in.write_scale * in.beta[in.at(t, b)];
  s.reset = in.starts[in.at(t, b)];
  return s;
}

// ---------------------------------------------------------------------------------------------------------------
// Forward of one batch row over all T steps. F holds F₀ on entry and F_T on exit; ckpt (or nullptr) receives F
// before every step t = j·every, j ≥ 1.
template <typename S, int D>
void forward_row(const Inputs<S>& in, int64_t b, S* F, S* ckpt, const Saved<S>& saved, S* reads,
                 std::vector<S>& ws) {
  const int64_t d = D > 0 ? D : in.d;
  const int64_t N = in.n_reads;
  const int64_t d3 = d * d * d;
  ws.assign((N + 1) * d, S(0));
  S* n = ws.data();  // n⁽⁰⁾..n⁽ᴺ⁾, each d
  S vh[capacity<D>()], r1[capacity<D>()], sq[capacity<D>()], u[capacity<D>()];

  for (int64_t t = 0; t < in.T; ++t) {
    if (ckpt != nullptr && t > 0 && t % in.every == 0) std::copy(F, F + d3, ckpt + (t / in.every - 1) * d3);
    Step<S> s = step_inputs(in, t, b);
    if (s.reset) std::fill(F, F + d3, S(0));
    const S* e1 = in.edge(t, b, 0);

    // Pass 1 (read-only): v̂ = Σ K F̃, r1 = Σ (q ⊗ e⁽¹⁾) F̃, ‖F̃‖².
    std::fill(vh, vh + d, S(0));
    std::fill(r1, r1 + d, S(0));
    std::fill(sq, sq + d, S(0));
    for (int64_t a = 0; a < d; ++a) {
      for (int64_t bb = 0; bb < d; ++bb) {
        const S* row = F + (a * d + bb) * d;
        const S kab = s.ks[a] * s.kr[bb];
        const S qab = s.q[a] * e1[bb];
        FWM_SIMD
        for (int64_t k = 0; k < d; ++k) {
          vh[k] += kab * row[k];
          r1[k] += qab * row[k];
          sq[k] += row[k] * row[k];
        }
      }
    }
    S sq_sum = 0;
    for (int64_t k = 0; k < d; ++k) sq_sum += sq[k];
    for (int64_t k = 0; k < d; ++k) u[k] = s.lb * (s.v[k] - vh[k]);
    const S g2 = sq_sum + 2 * dot(vh, u, d) + dot(s.ks, s.ks, d) * dot(s.kr, s.kr, d) * dot(u, u, d);
    const S norm = std::sqrt(std::max(g2, S(0)));
    const S inv_c = S(1) / std::max(norm, S(1));

    S* z = saved.z + in.at(t, b) * N * d;
    const S qe = dot(s.q, s.ks, d) * dot(e1, s.kr, d);
    for (int64_t k = 0; k < d; ++k) z[k] = (r1[k] + qe * u[k]) * inv_c;
    std::copy(s.q, s.q + d, n);
    layer_norm(z, n + d, d, in.eps);

    // Pass 2 (read-write): F_t = (F̃ + K ⊗ u) / c, with the second read when there is one.
    if (N >= 2) {
      write_step<S, D, true>(F, F, s.ks, s.kr, u, inv_c, n + d, in.edge(t, b, 1), z + d, d);
      layer_norm(z + d, n + 2 * d, d, in.eps);
    } else {
      write_step<S, D, false>(F, F, s.ks, s.kr, u, inv_c, nullptr, nullptr, nullptr, d);
    }
    for (int64_t i = 2; i < N; ++i) {
      contract<S, D>(F, n + i * d, in.edge(t, b, i), z + i * d, d);
      layer_norm(z + i * d, n + (i + 1) * d, d, in.eps);
    }
    std::copy(n + N * d, n + (N + 1) * d, reads + in.at(t, b) * d);
    std::copy(vh, vh + d, saved.vhat + in.at(t, b) * d);
    saved.norm[in.at(t, b)] = norm;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Gradients wrt the inputs of one row.
template <typename S>
struct Grads {
  S *keys_s, *keys_r, *values, *beta, *queries, *edges;
};

// Backward of step t: on entry gF = dL/dF_t (from later steps and the final state), on exit dL/dF_{t-1}.
// Ft is F after step t. F̃ (F_{t-1} after the reset) is not needed: F̃ = c·F_t − K ⊗ u.
// ws holds (2N + 1)·d + (N + 2)·d² entries.
template <typename S, int D>
void backward_step(const Inputs<S>& in, const Saved<S>& saved, const S* g_reads, const Grads<S>& grads,
                   int64_t t, int64_t b, const S* Ft, S* gF, std::vector<S>& ws) {
  constexpr int64_t C = capacity<D>();
  const int64_t d = D > 0 ? D : in.d;
  const int64_t N = in.n_reads;
  S* n = ws.data();               // n⁽⁰⁾..n⁽ᴺ⁾: (N+1)·d
  S* gz = n + (N + 1) * d;        // gz⁽¹⁾..gz⁽ᴺ⁾: N·d
  S* x = gz + N * d;              // d×d accumulator
  S* K = x + d * d;               // K_ab = k_s,a k_r,b
  S* coef = K + d * d;            // coef⁽ⁱ⁾_ab = n⁽ⁱ⁻¹⁾_a e⁽ⁱ⁾_b: N·d²
  S u[C], gn[C], y[C], acc[C], kg[C], gu[C], gvh[C], gks[C], gkr[C], g[C];

  const Step<S> s = step_inputs(in, t, b);
  const int64_t tb = in.at(t, b);
  const S* vh = saved.vhat + tb * d;
  const S* z = saved.z + tb * N * d;
  const S norm = saved.norm[tb];
  const S c = std::max(norm, S(1));
  const S inv_c = S(1) / c;
  const S keep = s.reset ? S(0) : S(1);
  for (int64_t k = 0; k < d; ++k) u[k] = s.lb * (s.v[k] - vh[k]);
  std::copy(s.q, s.q + d, n);
  for (int64_t i = 0; i < N; ++i) layer_norm(z + i * d, n + (i + 1) * d, d, in.eps);
  outer(s.ks, s.kr, K, d);
  for (int64_t i = 0; i < N; ++i) outer(n + i * d, in.edge(t, b, i), coef + i * d * d, d);

  // Reads, last to first: gz⁽ⁱ⁾ from LN; with W_ab = F_t,ab:·gz⁽ⁱ⁾, g e⁽ⁱ⁾ = Wᵀ n⁽ⁱ⁻¹⁾ and g n⁽ⁱ⁻¹⁾ = W e⁽ⁱ⁾, computed
  // as x = Σ_a n_a F_a (d×d) and y_a = Σ_b e_b F_ab: then dotted with gz. The pass of the last read also
  // accumulates ⟨F_t, gF⟩ (in acc) and Σ_ab K_ab gF_ab: (in kg).
  std::copy(g_reads + tb * d, g_reads + tb * d + d, gn);
  std::fill(acc, acc + d, S(0));
  std::fill(kg, kg + d, S(0));
  S fg_dot = 0;
  for (int64_t i = N - 1; i >= 0; --i) {
    const S* e = in.edge(t, b, i);
    const S* np = n + i * d;
    S* gzi = gz + i * d;
    layer_norm_backward(z + i * d, gn, gzi, d, in.eps);
    std::fill(x, x + d * d, S(0));
    for (int64_t a = 0; a < d; ++a) {
      std::fill(y, y + d, S(0));
      for (int64_t bb = 0; bb < d; ++bb) {
        const S* row = Ft + (a * d + bb) * d;
        const S na = np[a], eb = e[bb];
        S* xb = x + bb * d;
        FWM_SIMD
        for (int64_t k = 0; k < d; ++k) {
          y[k] += eb * row[k];
          xb[k] += na * row[k];
        }
        if (i == N - 1) {
          const S* grow = gF + (a * d + bb) * d;
          const S kab = K[a * d + bb];
          FWM_SIMD
          for (int64_t k = 0; k < d; ++k) {
            acc[k] += row[k] * grow[k];
            kg[k] += kab * grow[k];
          }
        }
      }
      gn[a] = dot(y, gzi, d);  // g n⁽ⁱ⁻¹⁾; g n⁽ⁱ⁾ is no longer needed once gzi is known
    }
    S* ge = grads.edges + (tb * N + i) * d;
    for (int64_t bb = 0; bb < d; ++bb) ge[bb] = dot(x + bb * d, gzi, d);
    fg_dot += dot(e, ge, d);  // ⟨F_t, n⁽ⁱ⁻¹⁾ ⊗ e⁽ⁱ⁾ ⊗ gz⁽ⁱ⁾⟩
  }
  std::copy(gn, gn + d, grads.queries + tb * d);
  for (int64_t k = 0; k < d; ++k) fg_dot += acc[k];

  // Norm clamp: gG = (gF_t − γ F_t) / c with γ = ⟨F_t, gF_t⟩ when ‖G‖ ≥ 1, gF_t including the reads' outer
  // products. Delta rule: gu = Σ_ab K_ab gG_ab:, in closed form from kg, the reads and Σ K F_t = (v̂ + ‖K‖² u) / c.
  const S gamma = norm >= S(1) ? fg_dot : S(0);
  const S kk = dot(s.ks, s.ks, d) * dot(s.kr, s.kr, d);
  for (int64_t k = 0; k < d; ++k) gu[k] = kg[k] - gamma * inv_c * (vh[k] + kk * u[k]);
  for (int64_t i = 0; i < N; ++i) {
    const S kc = dot(s.ks, n + i * d, d) * dot(s.kr, in.edge(t, b, i), d);
    for (int64_t k = 0; k < d; ++k) gu[k] += kc * gz[i * d + k];
  }
  S* gv = grads.values + tb * d;
  S gbeta = 0;
  for (int64_t k = 0; k < d; ++k) {
    gu[k] *= inv_c;
    gv[k] = s.lb * gu[k];
    gvh[k] = -s.lb * gu[k];
    gbeta += gu[k] * (s.v[k] - vh[k]);
  }
  grads.beta[tb] = in.write_scale * gbeta;

  // One pass writes dL/dF_{t-1} = keep·(gG + K ⊗ gv̂) over gF and accumulates gK_ab = gG_ab:·u + F̃_ab:·gv̂ into
  // the k_s and k_r gradients, with F̃ = keep·(c·F_t − K ⊗ u).
  std::fill(x, x + d * d, S(0));
  for (int64_t a = 0; a < d; ++a) {
    std::fill(y, y + d, S(0));
    for (int64_t bb = 0; bb < d; ++bb) {
      S* grow = gF + (a * d + bb) * d;
      const S* row = Ft + (a * d + bb) * d;
      const S ksa = s.ks[a], krb = s.kr[bb], kab = K[a * d + bb];
      FWM_SIMD
      for (int64_t k = 0; k < d; ++k) g[k] = grow[k] - gamma * row[k];
      for (int64_t i = 0; i < N; ++i) {
        const S ci = coef[(i * d + a) * d + bb];
        const S* gzi = gz + i * d;
        FWM_SIMD
        for (int64_t k = 0; k < d; ++k) g[k] += ci * gzi[k];
      }
      S* xb = x + bb * d;
      FWM_SIMD
      for (int64_t k = 0; k < d; ++k) {
        const S gG = g[k] * inv_c;
        const S h = gG * u[k] + keep * (c * row[k] - kab * u[k]) * gvh[k];
        y[k] += krb * h;
        xb[k] += ksa * h;
        grow[k] = keep * (gG + kab * gvh[k]);
      }
    }
    gks[a] = 0;
    for (int64_t k = 0; k < d; ++k) gks[a] += y[k];
  }
  for (int64_t bb = 0; bb < d; ++bb) {
    gkr[bb] = 0;
    for (int64_t k = 0; k < d; ++k) gkr[bb] += x[bb * d + k];
  }
  std::copy(gks, gks + d, grads.keys_s + tb * d);
  std::copy(gkr, gkr + d, grads.keys_r + tb * d);
}

// Backward of one row: gF holds dL/dF_T on entry and dL/dF₀ on exit. F0 and ckpt are this row's checkpoints.
template <typename S, int D>
void backward_row(const Inputs<S>& in, const Saved<S>& saved, const S* g_reads, const Grads<S>& grads, int64_t b,
                  const S* F0, const S* ckpt, S* gF, std::vector<S>& segment, std::vector<S>& ws) {
  const int64_t d = D > 0 ? D : in.d;
  const int64_t N = in.n_reads;
  const int64_t d3 = d * d * d;
  segment.resize(std::min(in.every, in.T) * d3);
  ws.assign((2 * N + 1) * d + (N + 2) * d * d, S(0));
  std::vector<S> u(d);
  const int64_t n_segments = (in.T + in.every - 1) / in.every;
  for (int64_t j = n_segments - 1; j >= 0; --j) {
    const int64_t t0 = j * in.every;
    const int64_t t1 = std::min(in.T, t0 + in.every);
    const S* prev = j == 0 ? F0 : ckpt + (j - 1) * d3;
    for (int64_t t = t0; t < t1; ++t) {
      S* cur = segment.data() + (t - t0) * d3;
      const Step<S> s = step_inputs(in, t, b);
      const S* vh = saved.vhat + in.at(t, b) * d;
      for (int64_t k = 0; k < d; ++k) u[k] = s.lb * (s.v[k] - vh[k]);
      const S inv_c = S(1) / std::max(saved.norm[in.at(t, b)], S(1));
      if (s.reset) std::fill(cur, cur + d3, S(0));
      write_step<S, D, false>(s.reset ? cur : prev, cur, s.ks, s.kr, u.data(), inv_c, nullptr, nullptr, nullptr, d);
      prev = cur;
    }
    for (int64_t t = t1 - 1; t >= t0; --t) {
      backward_step<S, D>(in, saved, g_reads, grads, t, b, segment.data() + (t - t0) * d3, gF, ws);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
template <typename S>
Inputs<S> make_inputs(const torch::Tensor& keys_s, const torch::Tensor& keys_r, const torch::Tensor& values,
                      const torch::Tensor& beta, const torch::Tensor& queries, const torch::Tensor& edges,
                      const torch::Tensor& starts, double write_scale, double eps, int64_t every) {
  Inputs<S> in;
  in.keys_s = keys_s.data_ptr<S>();
  in.keys_r = keys_r.data_ptr<S>();
  in.values = values.data_ptr<S>();
  in.beta = beta.data_ptr<S>();
  in.queries = queries.data_ptr<S>();
  in.edges = edges.data_ptr<S>();
  in.starts = starts.data_ptr<bool>();
  in.T = values.size(0);
  in.B = values.size(1);
  in.d = values.size(2);
  in.n_reads = edges.size(2);
  in.every = every;
  in.write_scale = static_cast<S>(write_scale);
  in.eps = static_cast<S>(eps);
  return in;
}

void check_inputs(const std::vector<torch::Tensor>& tensors, const torch::Tensor& starts, int64_t every) {
  for (const auto& x : tensors) {
    TORCH_CHECK(x.device().is_cpu() && x.is_contiguous(), "fwm_fused: inputs must be contiguous CPU tensors");
    TORCH_CHECK(x.scalar_type() == tensors[0].scalar_type(), "fwm_fused: inputs must share one dtype");
  }
  TORCH_CHECK(starts.scalar_type() == torch::kBool && starts.is_contiguous(), "fwm_fused: starts must be bool");
  TORCH_CHECK(every >= 1, "fwm_fused: checkpoint interval must be >= 1");
  TORCH_CHECK(tensors[0].dim() == 3 && tensors[0].size(2) <= kMaxDim, "fwm_fused: d must be at most ", kMaxDim);
}

// Batch rows per parallel task: enough for about 2^20 element-steps, so that short calls (a rollout step) stay on
// one thread instead of paying for waking the others.
int64_t rows_per_task(int64_t T, int64_t d) {
  return std::max<int64_t>(1, (int64_t(1) << 20) / std::max<int64_t>(1, T * d * d * d));
}

// Runs fn.template operator()<D>() with D = d for the specialised sizes, 0 (runtime d) otherwise.
template <typename Fn>
void dispatch_dim(int64_t d, const Fn& fn) {
  switch (d) {
    case 16: fn(std::integral_constant<int, 16>()); break;
    case 32: fn(std::integral_constant<int, 32>()); break;
    default: fn(std::integral_constant<int, 0>()); break;
  }
}

// Returns reads [T, B, d], F_T [B, d, d, d], checkpoints [B, ceil(T/every)-1, d, d, d] (empty unless save),
// v̂ [T, B, d], ‖G‖ [T, B], z [T, B, N, d].
std::vector<torch::Tensor> forward(torch::Tensor keys_s, torch::Tensor keys_r, torch::Tensor values,
                                   torch::Tensor beta, torch::Tensor queries, torch::Tensor edges,
                                   torch::Tensor fast_weights, torch::Tensor starts, double write_scale, double eps,
                                   int64_t every, bool save) {
  check_inputs({keys_s, keys_r, values, beta, queries, edges, fast_weights}, starts, every);
  const int64_t T = values.size(0), B = values.size(1), d = values.size(2), N = edges.size(2);
  const int64_t n_ckpt = save && T > 0 ? (T + every - 1) / every - 1 : 0;
  auto reads = torch::empty({T, B, d}, values.options());
  auto F = fast_weights.clone();
  auto ckpt = torch::empty({B, n_ckpt, d, d, d}, values.options());
  auto vhat = torch::empty({T, B, d}, values.options());
  auto norm = torch::empty({T, B}, values.options());
  auto z = torch::empty({T, B, N, d}, values.options());
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "fwm_fused_forward", [&] {
    const auto in = make_inputs<scalar_t>(keys_s, keys_r, values, beta, queries, edges, starts, write_scale, eps,
                                          every);
    const Saved<scalar_t> saved{vhat.data_ptr<scalar_t>(), norm.data_ptr<scalar_t>(), z.data_ptr<scalar_t>()};
    scalar_t* F_data = F.data_ptr<scalar_t>();
    scalar_t* ckpt_data = ckpt.data_ptr<scalar_t>();
    scalar_t* reads_data = reads.data_ptr<scalar_t>();
    dispatch_dim(d, [&](auto dim) {
      constexpr int D = decltype(dim)::value;
      at::parallel_for(0, B, rows_per_task(T, d), [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> ws;
        for (int64_t b = begin; b < end; ++b) {
          scalar_t* row_ckpt = n_ckpt > 0 ? ckpt_data + b * n_ckpt * d * d * d : nullptr;
          forward_row<scalar_t, D>(in, b, F_data + b * d * d * d, row_ckpt, saved, reads_data, ws);
        }
      });
    });
  });
  return {reads, F, ckpt, vhat, norm, z};
}

// Returns the gradients wrt keys_s, keys_r, values, beta, queries, edges and fast_weights (F₀).
std::vector<torch::Tensor> backward(torch::Tensor grad_reads, torch::Tensor grad_final, torch::Tensor keys_s,
                                    torch::Tensor keys_r, torch::Tensor values, torch::Tensor beta,
                                    torch::Tensor queries, torch::Tensor edges, torch::Tensor fast_weights,
                                    torch::Tensor starts, double write_scale, double eps, int64_t every,
                                    torch::Tensor ckpt, torch::Tensor vhat, torch::Tensor norm, torch::Tensor z) {
  check_inputs({grad_reads, grad_final, keys_s, keys_r, values, beta, queries, edges, fast_weights, ckpt, vhat, norm,
                z},
               starts, every);
  const int64_t T = values.size(0), B = values.size(1), d = values.size(2);
  auto g_keys_s = torch::empty_like(keys_s);
  auto g_keys_r = torch::empty_like(keys_r);
  auto g_values = torch::empty_like(values);
  auto g_beta = torch::empty_like(beta);
  auto g_queries = torch::empty_like(queries);
  auto g_edges = torch::empty_like(edges);
  auto g_F = grad_final.clone();
  const int64_t n_ckpt = ckpt.size(1);
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "fwm_fused_backward", [&] {
    const auto in = make_inputs<scalar_t>(keys_s, keys_r, values, beta, queries, edges, starts, write_scale, eps,
                                          every);
    const Saved<scalar_t> saved{vhat.data_ptr<scalar_t>(), norm.data_ptr<scalar_t>(), z.data_ptr<scalar_t>()};
    const Grads<scalar_t> grads{g_keys_s.data_ptr<scalar_t>(), g_keys_r.data_ptr<scalar_t>(),
                                g_values.data_ptr<scalar_t>(), g_beta.data_ptr<scalar_t>(),
                                g_queries.data_ptr<scalar_t>(), g_edges.data_ptr<scalar_t>()};
    const scalar_t* g_reads = grad_reads.data_ptr<scalar_t>();
    const scalar_t* F0 = fast_weights.data_ptr<scalar_t>();
    const scalar_t* ckpt_data = ckpt.data_ptr<scalar_t>();
    scalar_t* gF = g_F.data_ptr<scalar_t>();
    dispatch_dim(d, [&](auto dim) {
      constexpr int D = decltype(dim)::value;
      at::parallel_for(0, B, rows_per_task(T, d), [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> segment, ws;
        for (int64_t b = begin; b < end; ++b) {
          const int64_t d3 = d * d * d;
          backward_row<scalar_t, D>(in, saved, g_reads, grads, b, F0 + b * d3, ckpt_data + b * n_ckpt * d3,
                                    gF + b * d3, segment, ws);
        }
      });
    });
  });
  return {g_keys_s, g_keys_r, g_values, g_beta, g_queries, g_edges, g_F};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Fused CPU kernel of the FWM fast-weight recurrence";
  m.def("forward", &forward, "FWM recurrence forward (fused)");
  m.def("backward", &backward, "FWM recurrence backward (fused, recomputes F from checkpoints)");
}
