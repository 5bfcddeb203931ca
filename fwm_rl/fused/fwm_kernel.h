// The FWM recurrence kernels for one instruction set. Each fwm_isa_<name>.cpp includes this file once, inside its
// `#pragma GCC target` region, with FWM_ISA naming its namespace and FWM_VEC_BYTES its vector width; the raw views
// (Views, Saved, Grads) and kMaxDim come from fwm_views.h.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "fwm_views.h"

namespace fwm {
namespace FWM_ISA {
namespace {
//
// Layout. Every d-long vector over the last index of F (a "row" F_ab:, the values, the reads' gradients ...) is held
// as R native vectors of L lanes, padded with zeros from d to Dp = R·L entries; F lives in per-thread buffers of
// shape [d, d, Dp] and is copied from and to the [d, d, d] tensors once per call. R is a template constant for
// the common sizes (1, 2, 4 vectors: d = 16 and 32 in float32 and float64 on AVX-512) and a runtime count (R = 0)
// otherwise. Accumulators of the d³ passes are native vectors; passes over F keep several independent chains, so
// the fused multiply-adds are not serialised by their latency.
//
// Forward, per step t of one row (F̃ = F_{t-1}, selected to 0 at a reset; K = k_s ⊗ k_r; c = max(1, ‖G‖)):
//   pass A (reads F̃):  v̂ = Σ K_ab F̃_ab:,  r = Σ q_a e⁽¹⁾_b F̃_ab:
//   scalars: u = λβ(v − v̂);  ‖G‖² = ‖F̃‖² + 2 v̂·u + ‖k_s‖²‖k_r‖²‖u‖² (‖F̃‖² carried from the previous step);
//            z⁽¹⁾ = (r + (q·k_s)(e⁽¹⁾·k_r) u) / c
//   pass B (writes F):  F_t = F̃/c + K ⊗ u/c, and z⁽²⁾ = Σ n⁽¹⁾_a e⁽²⁾_b F_t,ab:
//   one pass per further read.
//   Where the read mask skips step t's reads: pass A contracts F̃ with K alone, pass B only writes, and the reads
//   (and the z saved for the backward) are zero.
// Backward, per step in reverse (P = dL/dF_t, Q = P + Σ_i n⁽ⁱ⁻¹⁾ ⊗ e⁽ⁱ⁾ ⊗ gz⁽ⁱ⁾, γ = ⟨F_t, Q⟩ when clamped):
//   the recompute pass makes F_t from F̃ and also contracts F̃ with k_s and k_r (X̃_b, Ỹ_a) and F_t with every
//   e⁽ⁱ⁾ (Yⁱ_a = Σ_b e⁽ⁱ⁾_b F_t,ab:, for the reads' chain through the LayerNorms); one write pass then makes
//   dL/dF̃ = Q/c − γ F_t/c + K ⊗ gv̂, accumulates Σ_a n⁽ⁱ⁻¹⁾_a F_t,ab: (for the edge gradients) and already
//   contracts the new dL/dF_{t-1} with step t−1's keys and with F_{t-1}, which is everything that step needs of it.
//   Every other gradient follows in closed form from these d×d contractions. At a step whose reads were skipped,
//   the recompute pass makes no Yⁱ, the write pass has no read terms, and the read inputs' gradients are zero.

constexpr int kVecBytes = FWM_VEC_BYTES;
#define FWM_UNROLL _Pragma("GCC unroll 8")

template <typename S, int R>
struct Kernel {
  static constexpr int L = kVecBytes / int(sizeof(S));  // lanes per native vector
  static constexpr int RC = R > 0 ? R : int(kMaxDim / L) + 1;  // capacity in native vectors
  // Aligned as S only: rows of F sit at any multiple of d, and std::vector<Row> need not honour 64-byte alignment.
  typedef S V __attribute__((vector_size(kVecBytes), aligned(sizeof(S))));

  // One padded d-vector.
  struct Row {
    V v[RC];
  };

  const Views<S>& in;
  const Saved<S>& saved;
  const int64_t d, N, nr, Dp, rows, fsize;  // fsize = d·d·Dp: one padded F

  Kernel(const Views<S>& views, const Saved<S>& saved_views, int64_t n_vectors)
      : in(views), saved(saved_views), d(views.d), N(views.n_reads), nr(R > 0 ? R : n_vectors), Dp((R > 0 ? R : n_vectors) * L),
        rows(views.d * views.d), fsize(views.d * views.d * (R > 0 ? R : n_vectors) * L) {}

  int64_t nv() const { return R > 0 ? R : nr; }

  // ----- rows -------------------------------------------------------------------------------------------------
  Row zero() const {
    Row x;
    FWM_UNROLL
    for (int64_t r = 0; r < nv(); ++r) x.v[r] = V{};
    return x;
  }
  // One memcpy per native vector (not one for the row), so that each stays in a register.
  Row load(const S* p) const {
    Row x;
    FWM_UNROLL
    for (int64_t r = 0; r < nv(); ++r) std::memcpy(&x.v[r], p + r * L, sizeof(V));
    return x;
  }
  void store(const Row& x, S* p) const {
    FWM_UNROLL
    for (int64_t r = 0; r < nv(); ++r) std::memcpy(p + r * L, &x.v[r], sizeof(V));
  }
  // A d-long input vector, zero-padded.
  Row load_vec(const S* p) const {
    S buf[RC * L];
    std::fill(buf, buf + Dp, S(0));
    std::copy(p, p + d, buf);
    return load(buf);
  }
  void store_vec(const Row& x, S* p) const {
    S buf[RC * L];
    store(x, buf);
    std::copy(buf, buf + d, p);
  }
  // x += a·y
  void fma(Row& x, S a, const Row& y) const {
    FWM_UNROLL
    for (int64_t r = 0; r < nv(); ++r) x.v[r] += a * y.v[r];
  }
  // x += y ⊙ z
  void fma(Row& x, const Row& y, const Row& z) const {
    FWM_UNROLL
    for (int64_t r = 0; r < nv(); ++r) x.v[r] += y.v[r] * z.v[r];
  }
  void add(Row& x, const Row& y) const {
    FWM_UNROLL
    for (int64_t r = 0; r < nv(); ++r) x.v[r] += y.v[r];
  }
  Row scaled(const Row& x, S a) const {
    Row y;
    FWM_UNROLL
    for (int64_t r = 0; r < nv(); ++r) y.v[r] = a * x.v[r];
    return y;
  }
  // Vectors of B bytes, for the halving reduction of hsum.
  template <int B>
  struct Vec {
    typedef S type __attribute__((vector_size(B), aligned(sizeof(S))));
  };
  // Sum of the lanes of a B-byte vector: add its halves until one lane is left (log₂ L steps in registers, not a
  // serial chain of L scalar additions).
  template <int B>
  static S reduce(const typename Vec<B>::type& v) {
    if constexpr (B == int(sizeof(S))) {
      return v[0];
    } else {
      typename Vec<B / 2>::type lo, hi;
      std::memcpy(&lo, &v, B / 2);
      std::memcpy(&hi, reinterpret_cast<const char*>(&v) + B / 2, B / 2);
      return reduce<B / 2>(lo + hi);
    }
  }
  S hsum(const Row& x) const {
    V s = x.v[0];
    FWM_UNROLL
    for (int64_t r = 1; r < nv(); ++r) s += x.v[r];
    return reduce<kVecBytes>(s);
  }
  S dot(const Row& x, const Row& y) const {
    Row p = zero();
    fma(p, x, y);
    return hsum(p);
  }

  // ----- small vectors (d entries, scalar loops) ---------------------------------------------------------------
  static S sdot(const S* x, const S* y, int64_t n) {
    S s = 0;
    for (int64_t k = 0; k < n; ++k) s += x[k] * y[k];
    return s;
  }
  // Mean and 1/sqrt(var + eps) of n entries (biased variance, as torch's layer_norm).
  static void ln_stats(const S* z, int64_t n, S eps, S& mean, S& rstd) {
    S m = 0;
    for (int64_t k = 0; k < n; ++k) m += z[k];
    m /= n;
    S var = 0;
    for (int64_t k = 0; k < n; ++k) var += (z[k] - m) * (z[k] - m);
    mean = m;
    rstd = S(1) / std::sqrt(var / n + eps);
  }
  static void layer_norm(const S* z, S* out, int64_t n, S eps) {
    S mean, rstd;
    ln_stats(z, n, eps, mean, rstd);
    for (int64_t k = 0; k < n; ++k) out[k] = (z[k] - mean) * rstd;
  }
  // Gradient of layer_norm wrt z given g on its output.
  static void layer_norm_backward(const S* z, const S* g, S* g_z, int64_t n, S eps) {
    S mean, rstd;
    ln_stats(z, n, eps, mean, rstd);
    S g_mean = 0, gx_mean = 0;
    for (int64_t k = 0; k < n; ++k) {
      g_mean += g[k];
      gx_mean += g[k] * (z[k] - mean) * rstd;
    }
    g_mean /= n;
    gx_mean /= n;
    for (int64_t k = 0; k < n; ++k) g_z[k] = rstd * (g[k] - g_mean - (z[k] - mean) * rstd * gx_mean);
  }
  // out_ab = x_a y_b (d×d).
  void outer(const S* x, const S* y, S* out) const {
    for (int64_t a = 0; a < d; ++a)
      for (int64_t b = 0; b < d; ++b) out[a * d + b] = x[a] * y[b];
  }

  // Padded F ⇄ the [d, d, d] layout of the tensors.
  void pad(const S* src, S* dst) const {
    if (Dp == d) {
      std::copy(src, src + rows * d, dst);
      return;
    }
    for (int64_t ab = 0; ab < rows; ++ab) {
      std::copy(src + ab * d, src + ab * d + d, dst + ab * Dp);
      std::fill(dst + ab * Dp + d, dst + (ab + 1) * Dp, S(0));
    }
  }
  void unpad(const S* src, S* dst) const {
    if (Dp == d) {
      std::copy(src, src + rows * d, dst);
      return;
    }
    for (int64_t ab = 0; ab < rows; ++ab) std::copy(src + ab * Dp, src + ab * Dp + d, dst + ab * d);
  }

  // ----- passes over F ---------------------------------------------------------------------------------------
  static constexpr int kChains = R == 1 ? 4 : (R == 2 ? 2 : 1);

  // The d³ passes below sum d² rows: each block of d rows (one a) is summed over kChains chains, and the blocks'
  // sums are added up, so that rounding grows with about 2·√d instead of d (as in a pairwise sum).

  // out_q = Σ_ab coef_q[ab] F_ab:  for q < NQ (NQ = 1 or 2).
  template <int NQ>
  void contract(const S* F, const S* const* coef, Row* out) const {
    for (int q = 0; q < NQ; ++q) out[q] = zero();
    for (int64_t a = 0; a < d; ++a) {
      Row acc[NQ][kChains];
      for (int q = 0; q < NQ; ++q)
        for (int c = 0; c < kChains; ++c) acc[q][c] = zero();
      const int64_t end = (a + 1) * d;
      int64_t ab = a * d;
      for (; ab + kChains <= end; ab += kChains) {
        for (int c = 0; c < kChains; ++c) {
          const Row f = load(F + (ab + c) * Dp);
          for (int q = 0; q < NQ; ++q) fma(acc[q][c], coef[q][ab + c], f);
        }
      }
      for (; ab < end; ++ab) {
        const Row f = load(F + ab * Dp);
        for (int q = 0; q < NQ; ++q) fma(acc[q][0], coef[q][ab], f);
      }
      for (int q = 0; q < NQ; ++q)
        for (int c = 0; c < kChains; ++c) add(out[q], acc[q][c]);
    }
  }

  // F ← F·s + K_ab·w (all rows); with a read coefficient, also returns Σ_ab coef[ab] F_ab: of the new F.
  template <bool with_read>
  void update(S* F, S s, const S* K, const Row& w, const S* coef, Row* out) const {
    Row total = zero();
    for (int64_t a = 0; a < d; ++a) {
      Row acc[kChains];
      for (int c = 0; c < kChains; ++c) acc[c] = zero();
      auto one = [&](int64_t i, Row& x) {
        Row f = scaled(load(F + i * Dp), s);
        fma(f, K[i], w);
        store(f, F + i * Dp);
        if (with_read) fma(x, coef[i], f);
      };
      const int64_t end = (a + 1) * d;
      int64_t ab = a * d;
      for (; ab + kChains <= end; ab += kChains)
        for (int c = 0; c < kChains; ++c) one(ab + c, acc[c]);
      for (; ab < end; ++ab) one(ab, acc[0]);
      if (with_read)
        for (int c = 0; c < kChains; ++c) add(total, acc[c]);
    }
    if (with_read) *out = total;
  }

  S squared_norm(const S* F) const {
    Row total = zero();
    for (int64_t a = 0; a < d; ++a) {
      Row acc = zero();
      for (int64_t ab = a * d; ab < (a + 1) * d; ++ab) {
        const Row f = load(F + ab * Dp);
        fma(acc, f, f);
      }
      add(total, acc);
    }
    return hsum(total);
  }

  // ----- forward --------------------------------------------------------------------------------------------
  // Per-thread buffers of the forward.
  struct ForwardWork {
    std::vector<S> F, K, C, zbuf, nbuf;
  };

  // One batch row over all T steps; reads [T, B, d] and final [B, d, d, d] are the outputs.
  void forward_row(int64_t b, S* reads, S* final, ForwardWork& w) const {
    w.F.resize(fsize);
    w.K.resize(rows);
    w.C.resize(rows);
    w.zbuf.resize(Dp);
    w.nbuf.resize((N + 1) * Dp);
    S* F = w.F.data();
    pad(in.fast_weights + b * rows * d, F);
    S nsq = 0;  // ‖F‖², carried
    S* n = w.nbuf.data();  // n⁽⁰⁾..n⁽ᴺ⁾
    for (int64_t t = 0; t < in.T; ++t) {
      const int64_t tb = in.at(t, b);
      if (saved.ckpt != nullptr && t > 0 && t % in.every == 0)
        std::copy(F, F + fsize, saved.ckpt + (b * saved.n_ckpt + t / in.every - 1) * fsize);
      if (in.starts[tb]) {
        std::fill(F, F + fsize, S(0));  // a select: whatever F held, it is now exactly zero
        nsq = 0;
      } else if (t == 0) {
        nsq = squared_norm(F);
      }
      const S* ks = in.vec(in.keys_s, t, b);
      const S* kr = in.vec(in.keys_r, t, b);
      const S* q = in.vec(in.queries, t, b);
      const S* e1 = in.edge(t, b, 0);
      const S lb = in.write_scale * in.beta[tb];
      const bool reads_here = in.reads_at(tb) > 0;
      outer(ks, kr, w.K.data());
      Row ac[2];
      const S* coef[2] = {w.K.data(), w.C.data()};
      if (reads_here) {
        outer(q, e1, w.C.data());
        contract<2>(F, coef, ac);
      } else {
        contract<1>(F, coef, ac);
      }
      const Row& vh = ac[0];
      Row u = scaled(load_vec(in.vec(in.values, t, b)), lb);
      fma(u, -lb, vh);
      const S kk = sdot(ks, ks, d) * sdot(kr, kr, d);
      const S g2 = nsq + 2 * dot(vh, u) + kk * dot(u, u);
      const S norm = std::sqrt(std::max(g2, S(0)));
      const S inv_c = S(1) / std::max(norm, S(1));
      nsq = g2 * inv_c * inv_c;
      S* z = saved.z + tb * N * d;
      store_vec(vh, saved.vhat + tb * d);
      saved.norm[tb] = norm;
      if (!reads_here) {  // the write alone; the reads (and the z the backward would read) are zero
        update<false>(F, inv_c, w.K.data(), scaled(u, inv_c), nullptr, nullptr);
        std::fill(z, z + N * d, S(0));
        std::fill(reads + tb * d, reads + tb * d + d, S(0));
        continue;
      }
      const S qe = sdot(q, ks, d) * sdot(e1, kr, d);
      Row z1 = ac[1];
      fma(z1, qe, u);
      store_vec(scaled(z1, inv_c), z);
      std::copy(q, q + d, n);
      layer_norm(z, n + d, d, in.eps);
      const Row w_u = scaled(u, inv_c);
      if (N >= 2) {
        outer(n + d, in.edge(t, b, 1), w.C.data());
        Row z2;
        update<true>(F, inv_c, w.K.data(), w_u, w.C.data(), &z2);
        store_vec(z2, z + d);
        layer_norm(z + d, n + 2 * d, d, in.eps);
      } else {
        update<false>(F, inv_c, w.K.data(), w_u, nullptr, nullptr);
      }
      for (int64_t i = 2; i < N; ++i) {
        outer(n + i * d, in.edge(t, b, i), w.C.data());
        const S* c1[1] = {w.C.data()};
        Row zi;
        contract<1>(F, c1, &zi);
        store_vec(zi, z + i * d);
        layer_norm(z + i * d, n + (i + 1) * d, d, in.eps);
      }
      std::copy(n + N * d, n + (N + 1) * d, reads + tb * d);
    }
    unpad(F, final + b * rows * d);
  }

  // ----- backward -------------------------------------------------------------------------------------------
  struct BackwardWork {
    std::vector<S> F0, segment, P, K, coef, scratch;
    std::vector<Row> contractions, XP, YP;  // std::vector<Row> keeps the vectors' alignment
  };

  // Contractions of P (= dL/dF_t) that step t needs: XP_b = Σ_a k_s,a P_ab:, YP_a = Σ_b k_r,b P_ab:, ⟨F_t, P⟩.
  S contract_gradient(const S* P, const S* Ft, const S* ks, const S* kr, Row* XP, Row* YP) const {
    Row pf = zero();
    for (int64_t b = 0; b < d; ++b) XP[b] = zero();
    for (int64_t a = 0; a < d; ++a) {
      Row y = zero(), pf_a = zero();
      for (int64_t b = 0; b < d; ++b) {
        const Row p = load(P + (a * d + b) * Dp);
        fma(y, kr[b], p);
        fma(XP[b], ks[a], p);
        fma(pf_a, load(Ft + (a * d + b) * Dp), p);
      }
      YP[a] = y;
      add(pf, pf_a);
    }
    return hsum(pf);
  }

  // Recompute F_t from F̃ (prev, or zero at a reset) into cur; contractions of F̃ with the keys (Xt_b, Yt_a) and
  // of F_t with each edge (Ye[i·d + a]) go to con = [Xt (d), Yt (d), Ye (N·d)] rows.
  void recompute(int64_t t, int64_t b, const S* prev, S* cur, Row* con, BackwardWork& w) const {
    const int64_t tb = in.at(t, b);
    const S* ks = in.vec(in.keys_s, t, b);
    const S* kr = in.vec(in.keys_r, t, b);
    const S lb = in.write_scale * in.beta[tb];
    const bool reset = in.starts[tb];
    const int64_t NR = in.reads_at(tb);
    const S inv_c = S(1) / std::max(saved_norm(tb), S(1));
    Row u = scaled(load_vec(in.vec(in.values, t, b)), lb);
    fma(u, -lb, load_vec(saved_vhat(tb)));
    const Row w_u = scaled(u, inv_c);
    Row* Xt = con;
    Row* Yt = con + d;
    Row* Ye = con + 2 * d;
    for (int64_t bb = 0; bb < d; ++bb) Xt[bb] = zero();
    for (int64_t a = 0; a < d; ++a) {
      Row y = zero();
      for (int64_t bb = 0; bb < d; ++bb) {
        const int64_t ab = a * d + bb;
        Row f;
        if (reset) {
          f = scaled(w_u, ks[a] * kr[bb]);
        } else {
          const Row ft = load(prev + ab * Dp);
          fma(y, kr[bb], ft);
          fma(Xt[bb], ks[a], ft);
          f = scaled(ft, inv_c);
          fma(f, ks[a] * kr[bb], w_u);
        }
        store(f, cur + ab * Dp);
      }
      Yt[a] = y;
      for (int64_t i = 0; i < NR; ++i) {
        const S* e = in.edge(t, b, i);
        Row acc[2] = {zero(), zero()};
        int64_t bb = 0;
        for (; bb + 2 <= d; bb += 2) {
          fma(acc[0], e[bb], load(cur + (a * d + bb) * Dp));
          fma(acc[1], e[bb + 1], load(cur + (a * d + bb + 1) * Dp));
        }
        for (; bb < d; ++bb) fma(acc[0], e[bb], load(cur + (a * d + bb) * Dp));
        add(acc[0], acc[1]);
        Ye[i * d + a] = acc[0];
      }
    }
  }

  const S* saved_vhat(int64_t tb) const { return saved.vhat + tb * d; }
  S saved_norm(int64_t tb) const { return saved.norm[tb]; }

  // Backward of step t. P holds dL/dF_t on entry and dL/dF_{t-1} on exit; XP, YP and pf its contractions with
  // step t's keys and F_t on entry, and with step t−1's keys and F_{t-1} on exit (when t > 0).
  void reverse_step(int64_t t, int64_t b, const S* g_reads, const Grads<S>& grads, const S* Ft, const S* Fprev,
                    const Row* con, S* P, Row* XP, Row* YP, S& pf, BackwardWork& w) const {
    const int64_t tb = in.at(t, b);
    const S* ks = in.vec(in.keys_s, t, b);
    const S* kr = in.vec(in.keys_r, t, b);
    const S* v = in.vec(in.values, t, b);
    const S* q = in.vec(in.queries, t, b);
    const S lb = in.write_scale * in.beta[tb];
    const bool reset = in.starts[tb];
    const int64_t NR = in.reads_at(tb);  // 0 where the read mask skipped the reads: they carry no gradient
    const S norm = saved_norm(tb);
    const S inv_c = S(1) / std::max(norm, S(1));
    const S* vh = saved_vhat(tb);
    const S* z = saved.z + tb * N * d;
    const Row* Xt = con;
    const Row* Yt = con + d;
    const Row* Ye = con + 2 * d;

    // Scalars and d-vectors: n⁽ⁱ⁾, the chain of gz⁽ⁱ⁾ through the LayerNorms, g n⁽⁰⁾.
    S* n = w.scratch.data();          // (N+1)·d
    S* gz = n + (N + 1) * d;          // N·d
    S* gn = gz + N * d;               // d
    S* uu = gn + d;                   // d: u
    S* tmp = uu + d;                  // d
    std::copy(q, q + d, n);
    for (int64_t i = 0; i < NR; ++i) layer_norm(z + i * d, n + (i + 1) * d, d, in.eps);
    if (NR > 0) {
      std::copy(g_reads + tb * d, g_reads + tb * d + d, gn);
    } else {
      std::fill(gn, gn + d, S(0));
      std::fill(grads.edges + tb * N * d, grads.edges + (tb + 1) * N * d, S(0));
    }
    for (int64_t i = NR - 1; i >= 0; --i) {
      layer_norm_backward(z + i * d, gn, gz + i * d, d, in.eps);
      const Row gzi = load_vec(gz + i * d);
      for (int64_t a = 0; a < d; ++a) gn[a] = dot(Ye[i * d + a], gzi);  // g n⁽ⁱ⁻¹⁾
    }
    std::copy(gn, gn + d, grads.queries + tb * d);
    for (int64_t k = 0; k < d; ++k) uu[k] = lb * (v[k] - vh[k]);
    const Row u = load_vec(uu);

    S gamma = pf;
    for (int64_t i = 0; i < NR; ++i) gamma += sdot(z + i * d, gz + i * d, d);
    const S gc = norm >= S(1) ? gamma * inv_c : S(0);  // γ'/c
    const S ks2 = sdot(ks, ks, d), kr2 = sdot(kr, kr, d), u2 = sdot(uu, uu, d);
    // gu = (K·Q − γ' K·F_t)/c with K·Q = K·P + Σ_i (k_s·n⁽ⁱ⁻¹⁾)(k_r·e⁽ⁱ⁾) gz⁽ⁱ⁾ and K·F_t = (v̂ + ‖K‖² u)/c.
    Row KP = zero();
    for (int64_t bb = 0; bb < d; ++bb) fma(KP, kr[bb], XP[bb]);
    store_vec(KP, tmp);
    S* kn = w.coef.data() + N * rows;  // k_s·n⁽ⁱ⁻¹⁾, then k_r·e⁽ⁱ⁾, then gz⁽ⁱ⁾·u
    S* ke = kn + N;
    S* gzu = ke + N;
    for (int64_t i = 0; i < NR; ++i) {
      kn[i] = sdot(ks, n + i * d, d);
      ke[i] = sdot(kr, in.edge(t, b, i), d);
      gzu[i] = sdot(gz + i * d, uu, d);
    }
    S gu[kMaxDim];
    for (int64_t k = 0; k < d; ++k) {
      S kq = tmp[k];
      for (int64_t i = 0; i < NR; ++i) kq += kn[i] * ke[i] * gz[i * d + k];
      gu[k] = (kq - gc * (vh[k] + ks2 * kr2 * uu[k])) * inv_c;
    }
    S gvh[kMaxDim];
    S gbeta = 0;
    S* gv = grads.values + tb * d;
    for (int64_t k = 0; k < d; ++k) {
      gv[k] = lb * gu[k];
      gvh[k] = -lb * gu[k];
      gbeta += gu[k] * (v[k] - vh[k]);
    }
    grads.beta[tb] = in.write_scale * gbeta;

    // Key gradients: gK_ab = ⟨gG_ab:, u⟩ + ⟨F̃_ab:, gv̂⟩ contracted with k_r over b (gks) and k_s over a (gkr).
    const Row gvh_row = load_vec(gvh);
    Row wv = gvh_row;  // gv̂ − (γ'/c²) u
    fma(wv, -gc * inv_c, u);
    const Row u_c = scaled(u, inv_c);
    for (int64_t a = 0; a < d; ++a) {
      Row acc = zero();
      fma(acc, YP[a], u_c);
      if (!reset) fma(acc, Yt[a], wv);
      S s = hsum(acc) - gc * inv_c * ks[a] * kr2 * u2;
      for (int64_t i = 0; i < NR; ++i) s += inv_c * n[i * d + a] * ke[i] * gzu[i];
      grads.keys_s[tb * d + a] = s;
    }
    for (int64_t bb = 0; bb < d; ++bb) {
      Row acc = zero();
      fma(acc, XP[bb], u_c);
      if (!reset) fma(acc, Xt[bb], wv);
      S s = hsum(acc) - gc * inv_c * kr[bb] * ks2 * u2;
      for (int64_t i = 0; i < NR; ++i) s += inv_c * in.edge(t, b, i)[bb] * kn[i] * gzu[i];
      grads.keys_r[tb * d + bb] = s;
    }

    // The write pass: dL/dF_{t-1} = sel(reset, 0, P/c + Σ_i C⁽ⁱ⁾_ab gz⁽ⁱ⁾/c − (γ'/c) F_t + K_ab gv̂); also the edge
    // gradients g e⁽ⁱ⁾_b = ⟨Σ_a n⁽ⁱ⁻¹⁾_a F_t,ab:, gz⁽ⁱ⁾⟩ and, for step t−1, the contractions of the new P.
    S* C = w.coef.data();  // C⁽ⁱ⁾_ab = n⁽ⁱ⁻¹⁾_a e⁽ⁱ⁾_b
    for (int64_t i = 0; i < NR; ++i) outer(n + i * d, in.edge(t, b, i), C + i * rows);
    S* K = w.K.data();
    outer(ks, kr, K);
    Row gzc[kMaxReadsInRows];
    const int64_t n_gzc = std::min<int64_t>(NR, kMaxReadsInRows);
    for (int64_t i = 0; i < n_gzc; ++i) gzc[i] = scaled(load_vec(gz + i * d), inv_c);
    const bool next = t > 0 && !reset;  // does step t−1 need the contractions of the new P?
    const S* ksp = next ? in.vec(in.keys_s, t - 1, b) : nullptr;
    const S* krp = next ? in.vec(in.keys_r, t - 1, b) : nullptr;
    Row pf_acc = zero();
    if (next)
      for (int64_t a = 0; a < d; ++a) YP[a] = zero();
    for (int64_t bb = 0; bb < d; ++bb) {
      Row xp = zero(), pf_b = zero();
      for (int64_t a = 0; a < d; ++a) {
        const int64_t ab = a * d + bb;
        S* prow = P + ab * Dp;
        if (reset) {
          std::fill(prow, prow + Dp, S(0));
          continue;
        }
        const Row f = load(Ft + ab * Dp);
        Row p = scaled(load(prow), inv_c);
        for (int64_t i = 0; i < n_gzc; ++i) fma(p, C[i * rows + ab], gzc[i]);
        for (int64_t i = n_gzc; i < NR; ++i) fma(p, C[i * rows + ab] * inv_c, load_vec(gz + i * d));
        fma(p, -gc, f);
        fma(p, K[ab], gvh_row);
        store(p, prow);
        if (next) {
          fma(xp, ksp[a], p);
          fma(YP[a], krp[bb], p);
          fma(pf_b, load(Fprev + ab * Dp), p);
        }
      }
      if (next) {
        XP[bb] = xp;
        add(pf_acc, pf_b);
      }
      // Edge gradients: Σ_a n⁽ⁱ⁻¹⁾_a F_t,ab: for this b, dotted with gz⁽ⁱ⁾.
      for (int64_t i = 0; i < NR; ++i) {
        Row acc[2] = {zero(), zero()};
        const S* ni = n + i * d;
        int64_t a = 0;
        for (; a + 2 <= d; a += 2) {
          fma(acc[0], ni[a], load(Ft + (a * d + bb) * Dp));
          fma(acc[1], ni[a + 1], load(Ft + ((a + 1) * d + bb) * Dp));
        }
        for (; a < d; ++a) fma(acc[0], ni[a], load(Ft + (a * d + bb) * Dp));
        add(acc[0], acc[1]);
        grads.edges[(tb * N + i) * d + bb] = dot(acc[0], load_vec(gz + i * d));
      }
    }
    if (!next) {
      for (int64_t a = 0; a < d; ++a) YP[a] = zero();
      for (int64_t bb = 0; bb < d; ++bb) XP[bb] = zero();
    }
    pf = next ? hsum(pf_acc) : S(0);
  }

  static constexpr int64_t kMaxReadsInRows = 8;

  // Backward of one row: recomputes each segment of F from its checkpoint, then walks it in reverse.
  void backward_row(int64_t b, const S* g_reads, const S* g_final, const Grads<S>& grads, BackwardWork& w) const {
    const int64_t seg = std::min(in.every, in.T);
    const int64_t con_rows = (N + 2) * d;
    w.F0.resize(fsize);
    w.segment.resize(seg * fsize);
    w.contractions.resize(seg * con_rows);
    w.P.resize(fsize);
    w.XP.resize(d);
    w.YP.resize(d);
    w.K.resize(rows);
    w.coef.resize(N * rows + 3 * N);
    w.scratch.resize((2 * N + 4) * d);
    pad(in.fast_weights + b * rows * d, w.F0.data());
    pad(g_final + b * rows * d, w.P.data());
    Row* con_base = w.contractions.data();
    Row* XP = w.XP.data();
    Row* YP = w.YP.data();
    S pf = 0;
    const int64_t n_segments = (in.T + in.every - 1) / in.every;
    for (int64_t j = n_segments - 1; j >= 0; --j) {
      const int64_t t0 = j * in.every;
      const int64_t t1 = std::min(in.T, t0 + in.every);
      const S* start = j == 0 ? w.F0.data() : saved.ckpt + (b * saved.n_ckpt + j - 1) * fsize;
      for (int64_t t = t0; t < t1; ++t) {
        const S* prev = t == t0 ? start : w.segment.data() + (t - 1 - t0) * fsize;
        recompute(t, b, prev, w.segment.data() + (t - t0) * fsize, con_base + (t - t0) * con_rows, w);
      }
      if (j == n_segments - 1) {
        const int64_t t = in.T - 1;
        pf = contract_gradient(w.P.data(), w.segment.data() + (t - t0) * fsize, in.vec(in.keys_s, t, b),
                               in.vec(in.keys_r, t, b), XP, YP);
      }
      for (int64_t t = t1 - 1; t >= t0; --t) {
        const S* prev = t == t0 ? start : w.segment.data() + (t - 1 - t0) * fsize;
        reverse_step(t, b, g_reads, grads, w.segment.data() + (t - t0) * fsize, prev,
                     con_base + (t - t0) * con_rows, w.P.data(), XP, YP, pf, w);
      }
    }
    unpad(w.P.data(), grads.fast_weights + b * rows * d);
  }
};

}  // namespace

// Entry points of this instruction set (R picked from d by the caller).
template <typename S, int R>
void forward_rows(const Views<S>& in, const Saved<S>& saved, S* reads, S* final, int64_t n_vectors, int64_t begin,
                  int64_t end) {
  const Kernel<S, R> kernel(in, saved, n_vectors);
  typename Kernel<S, R>::ForwardWork work;
  for (int64_t b = begin; b < end; ++b) kernel.forward_row(b, reads, final, work);
}

template <typename S, int R>
void backward_rows(const Views<S>& in, const Saved<S>& saved, const S* g_reads, const S* g_final,
                   const Grads<S>& grads, int64_t n_vectors, int64_t begin, int64_t end) {
  const Kernel<S, R> kernel(in, saved, n_vectors);
  typename Kernel<S, R>::BackwardWork work;
  for (int64_t b = begin; b < end; ++b) kernel.backward_row(b, g_reads, g_final, grads, work);
}

template <typename S>
int64_t lanes() {
  return kVecBytes / int64_t(sizeof(S));
}

// Runs forward or backward rows [begin, end) with the R that fits d.
template <typename S>
void run_forward(const Views<S>& in, const Saved<S>& saved, S* reads, S* final, int64_t begin, int64_t end) {
  const int64_t n_vectors = (in.d + lanes<S>() - 1) / lanes<S>();
  switch (n_vectors) {
    case 1: forward_rows<S, 1>(in, saved, reads, final, 1, begin, end); break;
    case 2: forward_rows<S, 2>(in, saved, reads, final, 2, begin, end); break;
    default: forward_rows<S, 0>(in, saved, reads, final, n_vectors, begin, end); break;
  }
}

template <typename S>
void run_backward(const Views<S>& in, const Saved<S>& saved, const S* g_reads, const S* g_final,
                  const Grads<S>& grads, int64_t begin, int64_t end) {
  const int64_t n_vectors = (in.d + lanes<S>() - 1) / lanes<S>();
  switch (n_vectors) {
    case 1: backward_rows<S, 1>(in, saved, g_reads, g_final, grads, 1, begin, end); break;
    case 2: backward_rows<S, 2>(in, saved, g_reads, g_final, grads, 2, begin, end); break;
    default: backward_rows<S, 0>(in, saved, g_reads, g_final, grads, n_vectors, begin, end); break;
  }
}

void forward(const Views<float>& in, const Saved<float>& saved, float* reads, float* final, int64_t begin,
             int64_t end) {
  run_forward(in, saved, reads, final, begin, end);
}
void forward(const Views<double>& in, const Saved<double>& saved, double* reads, double* final, int64_t begin,
             int64_t end) {
  run_forward(in, saved, reads, final, begin, end);
}
void backward(const Views<float>& in, const Saved<float>& saved, const float* g_reads, const float* g_final,
              const Grads<float>& grads, int64_t begin, int64_t end) {
  run_backward(in, saved, g_reads, g_final, grads, begin, end);
}
void backward(const Views<double>& in, const Saved<double>& saved, const double* g_reads, const double* g_final,
              const Grads<double>& grads, int64_t begin, int64_t end) {
  run_backward(in, saved, g_reads, g_final, grads, begin, end);
}

}  // namespace FWM_ISA
}  // namespace fwm
