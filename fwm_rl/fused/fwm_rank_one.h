// Products of F with rank-1 pairs, for the chunked recurrence (fwm_rl/chunked.py; their PyTorch twins there, which
// are the specification, build the outer products x_c ⊗ y_c and call bmm). Per batch row, with C pairs x_c, y_c:
//
//   contract:   out_c = Σ_ab x_c,a y_c,b F_ab:                        F [d, d, d], x, y, out [C, d]
//   rank1_sum:  F_ab: = Σ_c x_c,a y_c,b w_c                          w [C, d]
//   grads:      gx_c,a = Σ_b y_c,b (F_ab:·g_c),  gy_c,b = Σ_a x_c,a (F_ab:·g_c)
//
// (contract's backward is rank1_sum for F and grads for x, y; rank1_sum's is contract for w and grads for x, y.)
// No d²-long outer product is written: each loop keeps a block of accumulators in registers (several pairs, or
// several rows b of F) and streams F's rows through them, so every F row loaded feeds 4-8 vector FMAs.
//
// Included once per instruction set by fwm_isa_<name>.cpp, inside its `#pragma GCC target` region (FWM_ISA names
// the namespace, FWM_VEC_BYTES the vector width). Where d is a multiple of the vector width (1, 2, 4 or 8 vectors
// per row) the vector code runs; other d take plain loops.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "fwm_views.h"

#ifndef FWM_UNROLL_ALL
#define FWM_UNROLL_ALL _Pragma("GCC unroll 64")
#endif

namespace fwm {
namespace FWM_ISA {
namespace {

// NV native vectors per d-long row (d = NV·L). The contractions go over F in column tiles of TV vectors with Q pairs
// at a time (Q·TV = 8 accumulators: enough FMAs in flight), so each F row loaded feeds Q·TV vector FMAs and F is
// streamed from cache once per Q pairs; rank1_sum keeps QR rows of F in registers.
template <typename S, int NV>
struct RankOneKernel {
  static constexpr int L = FWM_VEC_BYTES / int(sizeof(S));
  static constexpr int D = NV * L;
  static constexpr int TV = NV < 2 ? NV : 2;
  static constexpr int Q = 8 / TV;
  static constexpr int QR = NV >= 8 ? 1 : 8 / NV;  // rows of F per rank1_sum block
  // Aligned as S and allowed to alias it, so that a row is loaded and stored in place by one (unaligned) vector move;
  // a memcpy of a vector GCC copies in 16-byte pieces through the stack.
  typedef S V __attribute__((vector_size(FWM_VEC_BYTES), aligned(sizeof(S)), may_alias));

  static V load(const S* p) { return *reinterpret_cast<const V*>(p); }
  static void store(const V& v, S* p) { *reinterpret_cast<V*>(p) = v; }
  static S hsum(const V& v) {
    S lanes[L];
    std::memcpy(lanes, &v, sizeof(V));
    S s = 0;
    for (int l = 0; l < L; ++l) s += lanes[l];
    return s;
  }

  // out_c = Σ_ab (x_c,a y_c,b) F_ab: for QB pairs, on the TV vectors of the columns from `col`; the coefficients
  // x_c,a y_c,: of one a are made first, in a buffer of QB·D that stays in L1.
  template <int QB>
  static void contract_block(const S* F, const S* x, const S* y, S* out, int col) {
    V acc[QB][TV] = {};
    alignas(64) S coef[QB * D];
    for (int a = 0; a < D; ++a) {
      FWM_UNROLL_ALL
      for (int q = 0; q < QB; ++q) {
        const S s = x[q * D + a];
        FWM_UNROLL_ALL
        for (int k = 0; k < NV; ++k) store(s * load(y + q * D + k * L), coef + q * D + k * L);
      }
      const S* Fa = F + a * D * D + col;
      for (int b = 0; b < D; ++b) {
        V f[TV];
        FWM_UNROLL_ALL
        for (int k = 0; k < TV; ++k) f[k] = load(Fa + b * D + k * L);
        FWM_UNROLL_ALL
        for (int q = 0; q < QB; ++q) {
          const S s = coef[q * D + b];
          FWM_UNROLL_ALL
          for (int k = 0; k < TV; ++k) acc[q][k] += s * f[k];
        }
      }
    }
    FWM_UNROLL_ALL
    for (int q = 0; q < QB; ++q)
      FWM_UNROLL_ALL
      for (int k = 0; k < TV; ++k) store(acc[q][k], out + q * D + col + k * L);
  }

  // Calls block(std::integral_constant<int, n>) for n = min(QB, count − done) until `count` items are done: full
  // blocks of QB, then one block of the remainder (so that a short tail keeps several accumulators in flight too).
  template <int QB, typename Block>
  static void in_blocks(int64_t count, Block&& block) {
    int64_t done = 0;
    for (; done + QB <= count; done += QB) block(done, std::integral_constant<int, QB>{});
    if (done < count) tail<QB - 1>(count - done, done, block);
  }
  template <int QB, typename Block>
  static void tail(int64_t rest, int64_t done, Block& block) {
    if constexpr (QB > 0) {
      if (rest == QB) return block(done, std::integral_constant<int, QB>{});
      tail<QB - 1>(rest, done, block);
    }
  }

  static void contract(const S* F, const S* x, const S* y, S* out, int64_t C) {
    for (int col = 0; col < D; col += TV * L)
      in_blocks<Q>(C, [&](int64_t c, auto n) {
        contract_block<decltype(n)::value>(F, x + c * D, y + c * D, out + c * D, col);
      });
  }

  // F_ab: = Σ_c y_c,b z_c for QB rows b, where z_c = x_c,a w_c (made once per a).
  template <int QB>
  static void rank1_sum_block(const S* z, const S* y, S* Fab, int64_t C) {
    V acc[QB][NV] = {};
    for (int64_t c = 0; c < C; ++c) {
      V zc[NV];
      FWM_UNROLL_ALL
      for (int k = 0; k < NV; ++k) zc[k] = load(z + c * D + k * L);
      FWM_UNROLL_ALL
      for (int q = 0; q < QB; ++q) {
        const S s = y[c * D + q];
        FWM_UNROLL_ALL
        for (int k = 0; k < NV; ++k) acc[q][k] += s * zc[k];
      }
    }
    FWM_UNROLL_ALL
    for (int q = 0; q < QB; ++q)
      FWM_UNROLL_ALL
      for (int k = 0; k < NV; ++k) store(acc[q][k], Fab + q * D + k * L);
  }

  static void rank1_sum(const S* x, const S* y, const S* w, S* F, int64_t C, std::vector<S>& work) {
    work.resize(C * D);
    S* z = work.data();
    for (int a = 0; a < D; ++a) {
      for (int64_t c = 0; c < C; ++c) {
        const S s = x[c * D + a];
        FWM_UNROLL_ALL
        for (int k = 0; k < NV; ++k) store(s * load(w + c * D + k * L), z + c * D + k * L);
      }
      in_blocks<QR>(D, [&](int64_t b, auto n) {
        rank1_sum_block<decltype(n)::value>(z, y + b, F + (a * D + b) * D, C);
      });
    }
  }

  // For QB pairs, on the TV vectors of Fᵀ's columns (b) from `col`: p_c,a = Σ_v g_c,v Fᵀ_av:, then
  // gy_c += x_c,a p_c,a and gx_c,a += p_c,a·y_c (gx starts at zero).
  template <int QB>
  static void grads_block(const S* Ft, const S* x, const S* y, const S* g, S* gx, S* gy, int col) {
    V acc_gy[QB][TV] = {};
    for (int a = 0; a < D; ++a) {
      V p[QB][TV] = {};
      const S* Fa = Ft + a * D * D + col;
      for (int v = 0; v < D; ++v) {
        V f[TV];
        FWM_UNROLL_ALL
        for (int k = 0; k < TV; ++k) f[k] = load(Fa + v * D + k * L);
        FWM_UNROLL_ALL
        for (int q = 0; q < QB; ++q) {
          const S s = g[q * D + v];
          FWM_UNROLL_ALL
          for (int k = 0; k < TV; ++k) p[q][k] += s * f[k];
        }
      }
      FWM_UNROLL_ALL
      for (int q = 0; q < QB; ++q) {
        const S s = x[q * D + a];
        V dot{};
        FWM_UNROLL_ALL
        for (int k = 0; k < TV; ++k) {
          acc_gy[q][k] += s * p[q][k];
          dot += p[q][k] * load(y + q * D + col + k * L);
        }
        gx[q * D + a] += hsum(dot);
      }
    }
    FWM_UNROLL_ALL
    for (int q = 0; q < QB; ++q)
      FWM_UNROLL_ALL
      for (int k = 0; k < TV; ++k) store(acc_gy[q][k], gy + q * D + col + k * L);
  }

  static void grads(const S* F, const S* x, const S* y, const S* g, S* gx, S* gy, int64_t C, std::vector<S>& work) {
    work.resize(D * D * D);
    S* Ft = work.data();  // Fᵀ_av: = F_a:v, so that the sum over v runs along rows
    for (int a = 0; a < D; ++a)
      for (int b = 0; b < D; ++b)
        for (int v = 0; v < D; ++v) Ft[(a * D + v) * D + b] = F[(a * D + b) * D + v];
    std::fill(gx, gx + C * D, S(0));
    for (int col = 0; col < D; col += TV * L)
      in_blocks<Q>(C, [&](int64_t c, auto n) {
        grads_block<decltype(n)::value>(Ft, x + c * D, y + c * D, g + c * D, gx + c * D, gy + c * D, col);
      });
  }
};

// Any d, in plain loops.
template <typename S>
struct RankOneLoops {
  static void contract(const S* F, const S* x, const S* y, S* out, int64_t C, int64_t d) {
    std::vector<S> row_sum(d);
    for (int64_t c = 0; c < C; ++c) {
      S* o = out + c * d;
      std::fill(o, o + d, S(0));
      for (int64_t a = 0; a < d; ++a) {
        std::fill(row_sum.begin(), row_sum.end(), S(0));
        for (int64_t b = 0; b < d; ++b)
          for (int64_t v = 0; v < d; ++v) row_sum[v] += y[c * d + b] * F[(a * d + b) * d + v];
        for (int64_t v = 0; v < d; ++v) o[v] += x[c * d + a] * row_sum[v];
      }
    }
  }
  static void rank1_sum(const S* x, const S* y, const S* w, S* F, int64_t C, int64_t d) {
    std::fill(F, F + d * d * d, S(0));
    for (int64_t c = 0; c < C; ++c)
      for (int64_t a = 0; a < d; ++a)
        for (int64_t b = 0; b < d; ++b) {
          const S s = x[c * d + a] * y[c * d + b];
          for (int64_t v = 0; v < d; ++v) F[(a * d + b) * d + v] += s * w[c * d + v];
        }
  }
  static void grads(const S* F, const S* x, const S* y, const S* g, S* gx, S* gy, int64_t C, int64_t d) {
    std::fill(gx, gx + C * d, S(0));
    std::fill(gy, gy + C * d, S(0));
    for (int64_t c = 0; c < C; ++c)
      for (int64_t a = 0; a < d; ++a)
        for (int64_t b = 0; b < d; ++b) {
          S p = 0;
          for (int64_t v = 0; v < d; ++v) p += F[(a * d + b) * d + v] * g[c * d + v];
          gx[c * d + a] += y[c * d + b] * p;
          gy[c * d + b] += x[c * d + a] * p;
        }
  }
};

// Calls f with the kernel for d: vectors of NV = 1, 2, 4 or 8 per row, else the loops.
template <typename S, typename Fn>
void with_rank_one_kernel(int64_t d, Fn&& f) {
  constexpr int64_t L = FWM_VEC_BYTES / int64_t(sizeof(S));
  if (d == L) return f(RankOneKernel<S, 1>{});
  if (d == 2 * L) return f(RankOneKernel<S, 2>{});
  if (d == 4 * L) return f(RankOneKernel<S, 4>{});
  if (d == 8 * L) return f(RankOneKernel<S, 8>{});
  f(RankOneLoops<S>{});
}

template <typename K>
constexpr bool kVectorKernel = !std::is_same_v<K, RankOneLoops<float>> && !std::is_same_v<K, RankOneLoops<double>>;

template <typename S>
void contract_rows(const RankOne<S>& in, const S* F, S* out, int64_t begin, int64_t end) {
  const int64_t C = in.C, d = in.d;
  with_rank_one_kernel<S>(d, [&](auto kernel) {
    for (int64_t b = begin; b < end; ++b) {
      const S* Fb = F + b * d * d * d;
      if constexpr (kVectorKernel<decltype(kernel)>)
        kernel.contract(Fb, in.x + b * C * d, in.y + b * C * d, out + b * C * d, C);
      else
        kernel.contract(Fb, in.x + b * C * d, in.y + b * C * d, out + b * C * d, C, d);
    }
  });
}

template <typename S>
void rank1_sum_rows(const RankOne<S>& in, const S* w, S* F, int64_t begin, int64_t end) {
  const int64_t C = in.C, d = in.d;
  std::vector<S> work;
  with_rank_one_kernel<S>(d, [&](auto kernel) {
    for (int64_t b = begin; b < end; ++b) {
      S* Fb = F + b * d * d * d;
      if constexpr (kVectorKernel<decltype(kernel)>)
        kernel.rank1_sum(in.x + b * C * d, in.y + b * C * d, w + b * C * d, Fb, C, work);
      else
        kernel.rank1_sum(in.x + b * C * d, in.y + b * C * d, w + b * C * d, Fb, C, d);
    }
  });
}

template <typename S>
void rank_one_grads_rows(const RankOne<S>& in, const S* F, const S* g, S* gx, S* gy, int64_t begin, int64_t end) {
  const int64_t C = in.C, d = in.d;
  std::vector<S> work;
  with_rank_one_kernel<S>(d, [&](auto kernel) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t at = b * C * d;
      if constexpr (kVectorKernel<decltype(kernel)>)
        kernel.grads(F + b * d * d * d, in.x + at, in.y + at, g + at, gx + at, gy + at, C, work);
      else
        kernel.grads(F + b * d * d * d, in.x + at, in.y + at, g + at, gx + at, gy + at, C, d);
    }
  });
}

}  // namespace

void contract(const RankOne<float>& in, const float* F, float* out, int64_t begin, int64_t end) {
  contract_rows(in, F, out, begin, end);
}
void contract(const RankOne<double>& in, const double* F, double* out, int64_t begin, int64_t end) {
  contract_rows(in, F, out, begin, end);
}
void rank1_sum(const RankOne<float>& in, const float* w, float* F, int64_t begin, int64_t end) {
  rank1_sum_rows(in, w, F, begin, end);
}
void rank1_sum(const RankOne<double>& in, const double* w, double* F, int64_t begin, int64_t end) {
  rank1_sum_rows(in, w, F, begin, end);
}
void rank_one_grads(const RankOne<float>& in, const float* F, const float* g, float* gx, float* gy, int64_t begin,
                    int64_t end) {
  rank_one_grads_rows(in, F, g, gx, gy, begin, end);
}
void rank_one_grads(const RankOne<double>& in, const double* F, const double* g, double* gx, double* gy,
                    int64_t begin, int64_t end) {
  rank_one_grads_rows(in, F, g, gx, gy, begin, end);
}

}  // namespace FWM_ISA
}  // namespace fwm
