// The sequential part of the chunked FWM recurrence (fwm_rl/chunked.py; its PyTorch twin, the specification, is
// `scan_reference` there). Per batch row, a loop over one chunk's C steps that only touches C×C and C×d arrays:
//
//   s, N, r_{<t} ← 0 at an episode start        (s: F₀'s scale, N: ‖F‖², r_j: write j's scale)
//   v̂_t = s P_t + Σ_{j<t} r_j G_tj u_j           (G_tj = K_t·K_j, P_t = ⟨F₀, K_t⟩)
//   u_t = w_t (v_t − v̂_t)                        (w = λβ)
//   q_t = N + 2 u_t·v̂_t + G_tt ‖u_t‖²            (‖F̃_t‖², without a pass over F)
//   c_t = max(1, √q_t);  N ← q_t / c_t²;  s ← s / c_t;  r_j ← r_j / c_t (j < t), r_t = 1 / c_t
//
// It returns u [C, d], r_tj [C, C] (lower triangular, zero across an episode start) and s_t [C], and the
// backward walks the same loop in reverse. An episode start is a select: nothing before it is read after it.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace fwm::scan {

// One chunk's inputs, batch-major and contiguous; row b starts at b·C·C, b·C·d, b·C or b.
template <typename S>
struct Inputs {
  const S* key_gram;   // [B, C, C] G_tj = K_t·K_j
  const S* old_F0;     // [B, C, d] P_t = ⟨F₀, K_t⟩
  const S* norm0;      // [B]       ‖F₀‖²
  const S* write;      // [B, C]    w_t = λ β_t
  const S* values;     // [B, C, d] v_t
  const bool* starts;  // [B, C]    episode starts
  int64_t C, d;
};

// What the forward writes: its results and, for the backward, v̂ and q.
template <typename S>
struct Outputs {
  S* updates;   // [B, C, d] u_t
  S* decays;    // [B, C, C] r_tj
  S* scales;    // [B, C]    s_t (F₀'s scale after step t)
  S* vhat;      // [B, C, d] v̂_t
  S* tilde_sq;  // [B, C]    q_t
};

// Gradients wrt the results and the gradients the backward writes.
template <typename S>
struct Grads {
  const S* updates;  // [B, C, d]
  const S* decays;   // [B, C, C]
  const S* scales;   // [B, C]
  S* key_gram;       // [B, C, C] (zero above the diagonal)
  S* old_F0;         // [B, C, d]
  S* norm0;          // [B]
  S* write;          // [B, C]
  S* values;         // [B, C, d]
};

template <typename S>
S clamp_of(S q) {
  return q >= S(1) ? std::sqrt(q) : S(1);
}

// One batch row's slices of the inputs and of the forward's results.
template <typename S>
struct Row {
  const int64_t C, d;
  const S *G, *P, *w, *v;
  const bool* starts;
  S *U, *R, *A, *VH, *Q;

  Row(const Inputs<S>& in, const Outputs<S>& out, int64_t b)
      : C(in.C), d(in.d), G(in.key_gram + b * C * C), P(in.old_F0 + b * C * d), w(in.write + b * C),
        v(in.values + b * C * d), starts(in.starts + b * C), U(out.updates + b * C * d), R(out.decays + b * C * C),
        A(out.scales + b * C), VH(out.vhat + b * C * d), Q(out.tilde_sq + b * C) {}
};

template <typename S>
void forward_row(const Inputs<S>& in, const Outputs<S>& out, int64_t b) {
  const auto [C, d, G, P, w, v, starts, U, R, A, VH, Q] = Row<S>(in, out, b);
  S scale = 1, norm_sq = in.norm0[b];
  for (int64_t t = 0; t < C; ++t) {
    const bool reset = starts[t];
    S* vh = VH + t * d;
    S* r = R + t * C;
    if (reset) {
      scale = 0;
      norm_sq = 0;
      for (int64_t k = 0; k < d; ++k) vh[k] = 0;
    } else {
      for (int64_t k = 0; k < d; ++k) vh[k] = scale * P[t * d + k];
      for (int64_t j = 0; j < t; ++j) {
        const S coef = R[(t - 1) * C + j] * G[t * C + j];
        const S* u_j = U + j * d;
        for (int64_t k = 0; k < d; ++k) vh[k] += coef * u_j[k];
      }
    }
    S* u = U + t * d;
    S uv = 0, uu = 0;
    for (int64_t k = 0; k < d; ++k) {
      u[k] = w[t] * (v[t * d + k] - vh[k]);
      uv += u[k] * vh[k];
      uu += u[k] * u[k];
    }
    const S q = norm_sq + 2 * uv + G[t * C + t] * uu;
    const S c = clamp_of(q);
    Q[t] = q;
    norm_sq = q / (c * c);
    scale /= c;
    A[t] = scale;
    for (int64_t j = 0; j < t; ++j) r[j] = reset ? S(0) : R[(t - 1) * C + j] / c;
    r[t] = S(1) / c;
    for (int64_t j = t + 1; j < C; ++j) r[j] = 0;
  }
}

template <typename S>
void backward_row(const Inputs<S>& in, const Outputs<S>& saved, const Grads<S>& g, int64_t b) {
  const auto [C, d, G, P, w, v, starts, U, R, A, VH, Q] = Row<S>(in, saved, b);
  S* gG = g.key_gram + b * C * C;
  S* gP = g.old_F0 + b * C * d;
  S* gw = g.write + b * C;
  S* gv = g.values + b * C * d;
  // dL/du_j: the gradient wrt the result, then what every later step that reads u_j adds
  std::vector<S> gu(g.updates + b * C * d, g.updates + (b + 1) * C * d);
  std::vector<S> r_bar(C, S(0)), vh_bar(d);  // dL/dr_{t,j} carried from step t+1
  S s_bar = 0, n_bar = 0;                    // dL/ds_t, dL/dN_t carried from step t+1
  for (int64_t i = 0; i < C * C; ++i) gG[i] = 0;
  for (int64_t t = C - 1; t >= 0; --t) {
    const bool reset = starts[t];
    const S q = Q[t], c = clamp_of(q);
    const S* r = R + t * C;
    const S sb = s_bar + g.scales[b * C + t];
    S c_bar = sb * A[t] + 2 * n_bar * q / (c * c);
    for (int64_t j = 0; j <= t; ++j) {
      r_bar[j] += g.decays[b * C * C + t * C + j];
      c_bar += r_bar[j] * r[j];
    }
    c_bar = -c_bar / c;
    const S q_bar = n_bar / (c * c) + (q >= S(1) ? c_bar / (2 * c) : S(0));
    // q = N + 2 u·v̂ + G_tt ‖u‖² and u = w (v − v̂)
    const S* u = U + t * d;
    const S* vh = VH + t * d;
    S* gu_t = gu.data() + t * d;
    S uu = 0, gw_t = 0;
    for (int64_t k = 0; k < d; ++k) {
      uu += u[k] * u[k];
      gu_t[k] += q_bar * 2 * (vh[k] + G[t * C + t] * u[k]);
      gw_t += gu_t[k] * (v[t * d + k] - vh[k]);
      gv[t * d + k] = w[t] * gu_t[k];
      vh_bar[k] = 2 * q_bar * u[k] - w[t] * gu_t[k];
    }
    gG[t * C + t] = q_bar * uu;
    gw[t] = gw_t;
    // v̂ = s P_t + Σ_{j<t} r_{t−1,j} G_tj u_j, s and r_{t−1} as they were before step t (zero at a reset)
    S s_prev_bar = sb / c;
    for (int64_t j = 0; j < t; ++j) r_bar[j] /= c;
    if (reset) {
      for (int64_t k = 0; k < d; ++k) gP[t * d + k] = 0;
      s_bar = n_bar = 0;
      for (int64_t j = 0; j < t; ++j) r_bar[j] = 0;
    } else {
      const S s_prev = t > 0 ? A[t - 1] : S(1);
      for (int64_t k = 0; k < d; ++k) {
        s_prev_bar += vh_bar[k] * P[t * d + k];
        gP[t * d + k] = s_prev * vh_bar[k];
      }
      for (int64_t j = 0; j < t; ++j) {
        const S r_prev = R[(t - 1) * C + j];
        const S* u_j = U + j * d;
        S* gu_j = gu.data() + j * d;
        S dot = 0;
        for (int64_t k = 0; k < d; ++k) dot += vh_bar[k] * u_j[k];
        r_bar[j] += G[t * C + j] * dot;
        gG[t * C + j] = r_prev * dot;
        const S coef = r_prev * G[t * C + j];
        for (int64_t k = 0; k < d; ++k) gu_j[k] += coef * vh_bar[k];
      }
      s_bar = s_prev_bar;
      n_bar = q_bar;
    }
    r_bar[t] = 0;
  }
  g.norm0[b] = n_bar;
}

}  // namespace fwm::scan
