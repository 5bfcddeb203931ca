// Shared by the binding (fwm_fused.cpp) and the per-instruction-set kernels (fwm_isa_*.cpp): the size limit, the
// raw views of the inputs and outputs, and the entry points that each instruction set's kernel defines.
#pragma once

#include <cstdint>

namespace fwm {

constexpr int64_t kMaxDim = 128;  // largest d the kernels take (exported to Python as MAX_DIM)

// Raw views of contiguous inputs: vectors [T, B, d], edges [T, B, N, d], beta and starts [T, B], F₀ [B, d, d, d];
// read_mask [T, B] or nullptr (every step reads).
template <typename S>
struct Views {
  const S *keys_s, *keys_r, *values, *beta, *queries, *edges, *fast_weights;
  const bool* starts;
  const bool* read_mask;
  int64_t T, B, d, n_reads, every;
  S write_scale, eps;

  int64_t at(int64_t t, int64_t b) const { return t * B + b; }
  // Reads made at index tb = at(t, b): N_r, or 0 where the read mask skips them (their reads are zero).
  int64_t reads_at(int64_t tb) const { return read_mask == nullptr || read_mask[tb] ? n_reads : 0; }
  const S* vec(const S* base, int64_t t, int64_t b) const { return base + at(t, b) * d; }
  const S* edge(int64_t t, int64_t b, int64_t i) const { return edges + (at(t, b) * n_reads + i) * d; }
};

// What the forward saves for the backward: padded checkpoints of F [B, n_ckpt, d·d·Dp], v̂ [T, B, d],
// ‖G‖ [T, B], z [T, B, N, d].
template <typename S>
struct Saved {
  S* ckpt;
  int64_t n_ckpt;
  S *vhat, *norm, *z;
};

// Gradients wrt the inputs, laid out as the inputs.
template <typename S>
struct Grads {
  S *keys_s, *keys_r, *values, *beta, *queries, *edges, *fast_weights;
};

// The pairs of a rank-1 product with F (fwm_rank_one.h): x, y [B, C, d], contiguous.
template <typename S>
struct RankOne {
  const S *x, *y;
  int64_t C, d;
};

// Each instruction set's kernel (fwm_isa_<name>.cpp) runs batch rows [begin, end) of one call.
#define FWM_DECLARE_ISA(ns)                                                                                         \
  namespace ns {                                                                                                    \
  void forward(const Views<float>& in, const Saved<float>& saved, float* reads, float* final, int64_t begin,       \
               int64_t end);                                                                                        \
  void forward(const Views<double>& in, const Saved<double>& saved, double* reads, double* final, int64_t begin,   \
               int64_t end);                                                                                        \
  void backward(const Views<float>& in, const Saved<float>& saved, const float* g_reads, const float* g_final,     \
                const Grads<float>& grads, int64_t begin, int64_t end);                                             \
  void backward(const Views<double>& in, const Saved<double>& saved, const double* g_reads, const double* g_final, \
                const Grads<double>& grads, int64_t begin, int64_t end);                                            \
  void contract(const RankOne<float>& in, const float* F, float* out, int64_t begin, int64_t end);                 \
  void contract(const RankOne<double>& in, const double* F, double* out, int64_t begin, int64_t end);              \
  void rank1_sum(const RankOne<float>& in, const float* w, float* F, int64_t begin, int64_t end);                  \
  void rank1_sum(const RankOne<double>& in, const double* w, double* F, int64_t begin, int64_t end);               \
  void rank_one_grads(const RankOne<float>& in, const float* F, const float* g, float* gx, float* gy,              \
                      int64_t begin, int64_t end);                                                                  \
  void rank_one_grads(const RankOne<double>& in, const double* F, const double* g, double* gx, double* gy,         \
                      int64_t begin, int64_t end);                                                                  \
  }

FWM_DECLARE_ISA(avx512)
FWM_DECLARE_ISA(avx2)
FWM_DECLARE_ISA(baseline)
#undef FWM_DECLARE_ISA

}  // namespace fwm
