// The FWM recurrence kernels for one instruction set. Each fwm_isa_<name>.cpp includes this file once, inside its
// `#pragma GCC target` region, with FWM_ISA naming its namespace and FWM_VEC_BYTES its vector width; the raw views
// (Views, Saved, Grads) and kMaxDim come from fwm_views.h.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>
#include <vector>

#include "fwm_views.h"

namespace fwm {
namespace FWM_ISA {
namespace {
//
// Layout. Every d-long vector over the last index of F (a "row" F_ab:, the values, the reads' gradients ...) is held
// as R native vectors of L lanes, padded with zeros from d to Dp = R·L entries; F lives in 64-byte aligned
// per-thread buffers of shape [d, d, Dp] and is copied from and to the [d, d, d] tensors once per call. d and N_r
// are template constants for the paper's configurations (d = 16 and 32, N_r = 3), so every loop over b, the lanes
// and the reads is unrolled with its accumulators in registers; other shapes run the same code with them at run
// time. The d-sized work (LayerNorms, dot products, the gradients' closed forms) is done on rows too.
//
// Every d³ pass walks F by rows (a outer, b inner) and uses that each coefficient factors over (a, b):
// K_ab = k_s,a k_r,b, C⁽ⁱ⁾_ab = n⁽ⁱ⁻¹⁾_a e⁽ⁱ⁾_b, so no d×d coefficient matrix is built.
//
// Forward, per step t of one row (F̃ = F_{t-1}, selected to 0 at a reset; K = k_s ⊗ k_r; c = max(1, ‖G‖)):
//   pass A (reads F̃):  v̂ = Σ K_ab F̃_ab:,  r = Σ q_a e⁽¹⁾_b F̃_ab:, and step t−1's last read (N_r ≥ 3) on the same F̃
//   scalars: u = λβ(v − v̂);  ‖G‖² = ‖F̃‖² + 2 v̂·u + ‖k_s‖²‖k_r‖²‖u‖² (‖F̃‖² carried from the previous step);
//            z⁽¹⁾ = (r + (q·k_s)(e⁽¹⁾·k_r) u) / c
//   pass B (writes F):  F_t = F̃/c + K ⊗ u/c, and z⁽²⁾ = Σ n⁽¹⁾_a e⁽²⁾_b F_t,ab:
//   one pass per further read but the last, which waits for step t+1's pass A.
//   So at N_r = 3 the forward sweeps F twice per step.
//   Where the read mask skips step t's reads: pass A contracts F̃ with K alone, pass B only writes, and the reads
//   (and the z saved for the backward) are zero.
// Backward, per step in reverse (P = dL/dF_t, Q = P + Σ_i n⁽ⁱ⁻¹⁾ ⊗ e⁽ⁱ⁾ ⊗ gz⁽ⁱ⁾, γ = ⟨F_t, Q⟩ when clamped):
//   the recompute pass makes F_t from F̃ and also contracts F̃ with k_s and k_r (X̃_b, Ỹ_a) and F_t with every
//   read's coefficients over b (Yⁱ_a = Σ_b e⁽ⁱ⁾_b F_t,ab:, for the reads' chain through the LayerNorms) and over a
//   (Eⁱ_b = Σ_a n⁽ⁱ⁻¹⁾_a F_t,ab:, for the edge gradients); one write pass then makes
//   dL/dF̃ = Q/c − γ F_t/c + K ⊗ gv̂ and already contracts it with step t−1's keys and with F_{t-1}, which is
//   everything that step needs of it. Both passes go over blocks of a, so that the sums over a reach memory once
//   per block and b. Every other gradient follows in closed form from these d×d contractions. At a step whose
//   reads were skipped, the recompute pass makes no Yⁱ, Eⁱ, the write pass has no read terms, and the read inputs'
//   gradients are zero.

constexpr int kVecBytes = FWM_VEC_BYTES;
#define FWM_UNROLL _Pragma("GCC unroll 8")
#define FWM_UNROLL_ALL _Pragma("GCC unroll 64")

// A buffer of S aligned to 64 bytes, so that rows of F whose length is a multiple of the vector width never straddle
// two cache lines (std::vector<S> only honours alignof(S); a split load costs about a second load).
template <typename S>
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  ~AlignedBuffer() { std::free(data_); }
  // Room for n entries; the contents are undefined after a growth.
  S* reserve(int64_t n) {
    if (n > size_) {
      std::free(data_);
      data_ = static_cast<S*>(std::aligned_alloc(64, (n * int64_t(sizeof(S)) + 63) / 64 * 64));
      if (data_ == nullptr) throw std::bad_alloc();
      size_ = n;
    }
    return data_;
  }

 private:
  S* data_ = nullptr;
  int64_t size_ = 0;
};

// D: d at compile time (0: at run time); NRT: N_r at compile time (0: at run time). With both fixed, every loop over
// b, over the lanes and over the reads has a constant trip count, so GCC unrolls it and keeps its accumulators in
// registers.
template <typename S, int D, int NRT>
struct Kernel {
  static constexpr int L = kVecBytes / int(sizeof(S));  // lanes per native vector
  static constexpr int RS = D > 0 ? (D + L - 1) / L : 0;  // native vectors per row at compile time (0: at run time)
  static constexpr int RC = RS > 0 ? RS : int(kMaxDim / L) + 1;  // capacity in native vectors
  static constexpr int NC = NRT > 0 ? NRT : 0;
  // Aligned as S only (rows of F sit at any multiple of d in the generic case), and allowed to alias S, so that a
  // native vector is loaded and stored in place by one vector move (GCC copies a memcpy of a 32-byte vector in
  // 16-byte pieces through the stack, which made the AVX2 build 2-5x slower).
  typedef S V __attribute__((vector_size(kVecBytes), aligned(sizeof(S)), may_alias));

  // One padded d-vector.
  struct Row {
    V v[RC];
  };

  const Views<S>& in;
  const Saved<S>& saved;
  const int64_t d_, N_, nr_, Dp_, rows, fsize;  // fsize = d·d·Dp: one padded F
  Row valid;  // 1 on the first d lanes, 0 on the padding

  Kernel(const Views<S>& views, const Saved<S>& saved_views, int64_t n_vectors)
      : in(views), saved(saved_views), d_(views.d), N_(views.n_reads), nr_(n_vectors), Dp_(n_vectors * L),
        rows(views.d * views.d), fsize(views.d * views.d * n_vectors * L) {
    S ones[RC * L];
    std::fill(ones, ones + dp(), S(0));
    std::fill(ones, ones + d(), S(1));
    valid = load(ones);
  }

  int64_t d() const { return D > 0 ? D : d_; }
  int64_t N() const { return NRT > 0 ? NRT : N_; }
  int64_t nv() const { return RS > 0 ? RS : nr_; }
  int64_t dp() const { return RS > 0 ? RS * L : Dp_; }  // padded row length Dp

  // ----- rows -------------------------------------------------------------------------------------------------
  Row zero() const {
    Row x;
    FWM_UNROLL
    for (int64_t r = 0; r < nv(); ++r) x.v[r] = V{};
    return x;
  }
  // One move per native vector (not one for the row), so that each stays in a register.
  Row load(const S* p) const {
    Row x;
    FWM_UNROLL
    for (int64_t r = 0; r < nv(); ++r) x.v[r] = *reinterpret_cast<const V*>(p + r * L);
    return x;
  }
  void store(const Row& x, S* p) const {
    FWM_UNROLL
    for (int64_t r = 0; r < nv(); ++r) *reinterpret_cast<V*>(p + r * L) = x.v[r];
  }
  // A d-long input vector, zero-padded (loaded directly where d fills whole vectors).
  Row load_vec(const S* p) const {
    if (D > 0 && D % L == 0) return load(p);
    S buf[RC * L];
    std::fill(buf, buf + dp(), S(0));
    std::copy(p, p + d(), buf);
    return load(buf);
  }
  void store_vec(const Row& x, S* p) const {
    if (D > 0 && D % L == 0) return store(x, p);
    S buf[RC * L];
    store(x, buf);
    std::copy(buf, buf + d(), p);
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

  // ----- d-vectors as rows (their padding lanes, beyond d, stay zero) -----------------------------------------
  // Dot product of two d-long input vectors.
  S vdot(const S* x, const S* y) const { return dot(load_vec(x), load_vec(y)); }
  // x − m on the first d lanes, 0 on the padding.
  Row centred(const Row& x, S m) const {
    Row y;
    FWM_UNROLL
    for (int64_t r = 0; r < nv(); ++r) y.v[r] = x.v[r] - m;
    if (!(D > 0 && D % L == 0))
      FWM_UNROLL
      for (int64_t r = 0; r < nv(); ++r) y.v[r] *= valid.v[r];
    return y;
  }
  // (z − mean) and 1/sqrt(var + eps) of the d entries of z (biased variance, as torch's layer_norm).
  Row ln_centred(const Row& z, S& rstd) const {
    const Row x = centred(z, hsum(z) / S(d()));
    rstd = S(1) / std::sqrt(dot(x, x) / S(d()) + in.eps);
    return x;
  }
  Row layer_norm(const Row& z) const {
    S rstd;
    const Row x = ln_centred(z, rstd);
    return scaled(x, rstd);
  }
  // Gradient of layer_norm wrt z given g on its output: rstd·(g − mean(g) − x̂·mean(g ⊙ x̂)).
  Row layer_norm_backward(const Row& z, const Row& g) const {
    S rstd;
    const Row x = ln_centred(z, rstd);
    const Row xh = scaled(x, rstd);
    Row gz = centred(g, hsum(g) / S(d()));
    fma(gz, -dot(g, xh) / S(d()), xh);
    return scaled(gz, rstd);
  }

  // Padded F ⇄ the [d, d, d] layout of the tensors.
  void pad(const S* src, S* dst) const {
    if (dp() == d()) {
      std::copy(src, src + rows * d(), dst);
      return;
    }
    for (int64_t ab = 0; ab < rows; ++ab) {
      std::copy(src + ab * d(), src + ab * d() + d(), dst + ab * dp());
      std::fill(dst + ab * dp() + d(), dst + (ab + 1) * dp(), S(0));
    }
  }
  void unpad(const S* src, S* dst) const {
    if (dp() == d()) {
      std::copy(src, src + rows * d(), dst);
      return;
    }
    for (int64_t ab = 0; ab < rows; ++ab) std::copy(src + ab * dp(), src + ab * dp() + d(), dst + ab * d());
  }

  // ----- passes over F ---------------------------------------------------------------------------------------
  // Every d³ pass walks F row by row (a outer, b inner, contiguous) and uses that all the coefficients of the
  // recurrence factor over (a, b): K_ab = k_s,a k_r,b and C⁽ⁱ⁾_ab = n⁽ⁱ⁻¹⁾_a e⁽ⁱ⁾_b. A contraction Σ_ab x_a y_b F_ab: is
  // summed over b for each a (in kChains interleaved chains, so that the fused multiply-adds do not wait on each
  // other's latency) and then over a, so rounding grows with about 2·√d, not d (as in a pairwise sum).
  static constexpr int kChains = RS == 1 ? 4 : (RS == 2 ? 2 : 1);

  // y[q] = Σ_b cb[q][b] F_ab: for one a (Fa = the d rows of that a), q < NQ.
  template <int NQ>
  void contract_over_b(const S* Fa, const S* const* cb, Row* y) const {
    Row acc[NQ][kChains];
    for (int q = 0; q < NQ; ++q)
      for (int c = 0; c < kChains; ++c) acc[q][c] = zero();
    int64_t b = 0;
    for (; b + kChains <= d(); b += kChains) {
      for (int c = 0; c < kChains; ++c) {
        const Row f = load(Fa + (b + c) * dp());
        for (int q = 0; q < NQ; ++q) fma(acc[q][c], cb[q][b + c], f);
      }
    }
    for (; b < d(); ++b) {
      const Row f = load(Fa + b * dp());
      for (int q = 0; q < NQ; ++q) fma(acc[q][0], cb[q][b], f);
    }
    for (int q = 0; q < NQ; ++q) {
      for (int c = 1; c < kChains; ++c) add(acc[q][0], acc[q][c]);
      y[q] = acc[q][0];
    }
  }

  // out[q] = Σ_a ca[q][a] Σ_b cb[q][b] F_ab:, q < NQ (NQ = 1 or 2).
  template <int NQ>
  void contract(const S* F, const S* const* ca, const S* const* cb, Row* out) const {
    for (int q = 0; q < NQ; ++q) out[q] = zero();
    for (int64_t a = 0; a < d(); ++a) {
      Row y[NQ];
      contract_over_b<NQ>(F + a * d() * dp(), cb, y);
      for (int q = 0; q < NQ; ++q) fma(out[q], ca[q][a], y[q]);
    }
  }

  // F_ab: ← s·F_ab: + k_s,a k_r,b w (the write and the clamp); with read coefficients (na over a, eb over b), also
  // returns Σ_ab na_a eb_b F_ab: of the new F.
  template <bool with_read>
  void update(S* F, S s, const S* ks, const S* kr, const Row& w, const S* na, const S* eb, Row* out) const {
    Row total = zero();
    for (int64_t a = 0; a < d(); ++a) {
      const Row wa = scaled(w, ks[a]);
      S* Fa = F + a * d() * dp();
      Row acc[kChains];
      for (int c = 0; c < kChains; ++c) acc[c] = zero();
      auto one = [&](int64_t b, Row& x) {
        Row f = scaled(load(Fa + b * dp()), s);
        fma(f, kr[b], wa);
        store(f, Fa + b * dp());
        if (with_read) fma(x, eb[b], f);
      };
      int64_t b = 0;
      for (; b + kChains <= d(); b += kChains)
        for (int c = 0; c < kChains; ++c) one(b + c, acc[c]);
      for (; b < d(); ++b) one(b, acc[0]);
      if (with_read) {
        for (int c = 1; c < kChains; ++c) add(acc[0], acc[c]);
        fma(total, na[a], acc[0]);
      }
    }
    if (with_read) *out = total;
  }

  S squared_norm(const S* F) const {
    Row total = zero();
    for (int64_t a = 0; a < d(); ++a) {
      Row acc = zero();
      for (int64_t ab = a * d(); ab < (a + 1) * d(); ++ab) {
        const Row f = load(F + ab * dp());
        fma(acc, f, f);
      }
      add(total, acc);
    }
    return hsum(total);
  }

  // ----- forward --------------------------------------------------------------------------------------------
  // Per-thread buffers of the forward.
  struct ForwardWork {
    AlignedBuffer<S> F;
    std::vector<S> nbuf;
  };

  // The last read of a step (where N_r ≥ 3) contracts the same F as the next step's first pass, so it waits for
  // that pass and shares its sweep over F: its coefficients, and the index (t, b) its result belongs to.
  struct PendingRead {
    bool active = false;
    int64_t tb = 0;
    const S* na = nullptr;  // n⁽ᴺ⁻¹⁾ [d], over a
    const S* eb = nullptr;  // e⁽ᴺ⁾ [d], over b
  };

  // out[q] = Σ_ab ca[q][a] cb[q][b] F_ab: for q < nq (1 to 3).
  void contract_any(const S* F, int nq, const S* const* ca, const S* const* cb, Row* out) const {
    switch (nq) {
      case 1: contract<1>(F, ca, cb, out); break;
      case 2: contract<2>(F, ca, cb, out); break;
      default: contract<3>(F, ca, cb, out); break;
    }
  }

  // Saves the last read's z⁽ᴺ⁾ of index tb and its output n⁽ᴺ⁾ = LayerNorm(z⁽ᴺ⁾).
  void finish_read(int64_t tb, const Row& z_last, S* reads) const {
    store_vec(z_last, saved.z + (tb * N() + N() - 1) * d());
    store_vec(layer_norm(z_last), reads + tb * d());
  }

  // The pending read contracted alone (before a reset clears F, and after the last step).
  void flush(PendingRead& pending, const S* F, S* reads) const {
    if (!pending.active) return;
    Row z_last;
    contract<1>(F, &pending.na, &pending.eb, &z_last);
    finish_read(pending.tb, z_last, reads);
    pending.active = false;
  }

  // One batch row over all T steps; reads [T, B, d] and final [B, d, d, d] are the outputs.
  void forward_row(int64_t b, S* reads, S* final, ForwardWork& w) const {
    const int64_t d = this->d(), N = this->N();
    S* F = w.F.reserve(fsize);
    w.nbuf.resize((N + 1) * d);
    pad(in.fast_weights + b * rows * d, F);
    S nsq = 0;  // ‖F‖², carried
    S* n = w.nbuf.data();  // n⁽⁰⁾..n⁽ᴺ⁾ [N+1, d]
    PendingRead pending;
    for (int64_t t = 0; t < in.T; ++t) {
      const int64_t tb = in.at(t, b);
      if (saved.ckpt != nullptr && t > 0 && t % in.every == 0)
        std::copy(F, F + fsize, saved.ckpt + (b * saved.n_ckpt + t / in.every - 1) * fsize);
      if (in.starts[tb]) {
        flush(pending, F, reads);
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
      // Pass A (reads F̃ [d, d, Dp]): v̂ = Σ_ab k_s,a k_r,b F̃_ab:, r = Σ_ab q_a e⁽¹⁾_b F̃_ab: (where step t reads) and
      // the pending last read of step t−1, all [Dp].
      Row ac[3];
      const S* ca[3] = {ks, q, pending.na};
      const S* cb[3] = {kr, e1, pending.eb};
      if (!reads_here) {
        ca[1] = pending.na;
        cb[1] = pending.eb;
      }
      const int nq = 1 + int(reads_here) + int(pending.active);
      contract_any(F, nq, ca, cb, ac);
      if (pending.active) {
        finish_read(pending.tb, ac[nq - 1], reads);
        pending.active = false;
      }
      const Row& vh = ac[0];
      Row u = scaled(load_vec(in.vec(in.values, t, b)), lb);
      fma(u, -lb, vh);
      const S kk = vdot(ks, ks) * vdot(kr, kr);
      const S g2 = nsq + 2 * dot(vh, u) + kk * dot(u, u);
      const S norm = std::sqrt(std::max(g2, S(0)));
      const S inv_c = S(1) / std::max(norm, S(1));
      nsq = g2 * inv_c * inv_c;
      S* z = saved.z + tb * N * d;
      store_vec(vh, saved.vhat + tb * d);
      saved.norm[tb] = norm;
      const Row w_u = scaled(u, inv_c);
      if (!reads_here) {  // the write alone; the reads (and the z the backward would read) are zero
        update<false>(F, inv_c, ks, kr, w_u, nullptr, nullptr, nullptr);
        std::fill(z, z + N * d, S(0));
        std::fill(reads + tb * d, reads + tb * d + d, S(0));
        continue;
      }
      const S qe = vdot(q, ks) * vdot(e1, kr);
      Row z1 = ac[1];
      fma(z1, qe, u);
      z1 = scaled(z1, inv_c);
      store_vec(z1, z);
      std::copy(q, q + d, n);
      store_vec(layer_norm(z1), n + d);
      // Pass B (writes F): F_t = F̃/c + K ⊗ u/c and z⁽²⁾ = Σ_ab n⁽¹⁾_a e⁽²⁾_b F_t,ab:.
      if (N >= 2) {
        Row z2;
        update<true>(F, inv_c, ks, kr, w_u, n + d, in.edge(t, b, 1), &z2);
        store_vec(z2, z + d);
        store_vec(layer_norm(z2), n + 2 * d);
      } else {
        update<false>(F, inv_c, ks, kr, w_u, nullptr, nullptr, nullptr);
      }
      // One pass per further read but the last: z⁽ⁱ⁾ = Σ_ab n⁽ⁱ⁻¹⁾_a e⁽ⁱ⁾_b F_t,ab:.
      for (int64_t i = 2; i < N - 1; ++i) {
        const S* ca1[1] = {n + i * d};
        const S* cb1[1] = {in.edge(t, b, i)};
        Row zi;
        contract<1>(F, ca1, cb1, &zi);
        store_vec(zi, z + i * d);
        store_vec(layer_norm(zi), n + (i + 1) * d);
      }
      if (N >= 3)  // the last read joins the next step's pass A
        pending = {true, tb, n + (N - 1) * d, in.edge(t, b, N - 1)};
      else
        std::copy(n + N * d, n + (N + 1) * d, reads + tb * d);
    }
    flush(pending, F, reads);
    unpad(F, final + b * rows * d);
  }

  // ----- backward -------------------------------------------------------------------------------------------
  struct BackwardWork {
    AlignedBuffer<S> F0, segment, P;
    std::vector<S> scratch;
    std::vector<Row> contractions, XP, YP;  // std::vector<Row> keeps the vectors' alignment
  };

  // Layout of the contractions the recompute pass saves per step, in rows: Xt [d], Yt [d], Ye [N, d], En [N, d].
  int64_t con_rows() const { return (2 * N() + 2) * d(); }

  // Contractions of P (= dL/dF_t) that step t needs: XP_b = Σ_a k_s,a P_ab:, YP_a = Σ_b k_r,b P_ab:, ⟨F_t, P⟩.
  S contract_gradient(const S* P, const S* Ft, const S* ks, const S* kr, Row* XP, Row* YP) const {
    Row pf = zero();
    for (int64_t b = 0; b < d(); ++b) XP[b] = zero();
    for (int64_t a = 0; a < d(); ++a) {
      Row y = zero(), pf_a = zero();
      for (int64_t b = 0; b < d(); ++b) {
        const Row p = load(P + (a * d() + b) * dp());
        fma(y, kr[b], p);
        fma(XP[b], ks[a], p);
        fma(pf_a, load(Ft + (a * d() + b) * dp()), p);
      }
      YP[a] = y;
      add(pf, pf_a);
    }
    return hsum(pf);
  }

  // The recompute pass of step t: F_t = F̃/c + K ⊗ u/c from F̃ [d, d, Dp] (prev, or zero at a reset) into cur, and
  // the contractions con = [Xt_b = Σ_a k_s,a F̃_ab:, Yt_a = Σ_b k_r,b F̃_ab:, Yeⁱ_a = Σ_b e⁽ⁱ⁾_b F_t,ab:,
  // Enⁱ_b = Σ_a n⁽ⁱ⁻¹⁾_a F_t,ab:] (the last two for i < N_r where step t reads; n⁽ⁱ⁾ rebuilt from the saved z).
  void recompute(int64_t t, int64_t b, const S* prev, S* cur, Row* con, BackwardWork& w) const {
    const int64_t d = this->d(), N = this->N();
    const int64_t tb = in.at(t, b);
    const S* ks = in.vec(in.keys_s, t, b);
    const S* kr = in.vec(in.keys_r, t, b);
    const S lb = in.write_scale * in.beta[tb];
    const bool reset = in.starts[tb];
    const bool reads_here = in.reads_at(tb) > 0;
    const S inv_c = S(1) / std::max(saved.norm[tb], S(1));
    Row u = scaled(load_vec(in.vec(in.values, t, b)), lb);
    fma(u, -lb, load_vec(saved.vhat + tb * d));
    const Row w_u = scaled(u, inv_c);
    Row* Xt = con;
    Row* Yt = con + d;
    Row* Ye = con + 2 * d;
    Row* En = con + (N + 2) * d;
    S* n = w.scratch.data();  // n⁽⁰⁾..n⁽ᴺ⁻¹⁾ [N, d]
    if (reads_here) {
      std::copy(in.vec(in.queries, t, b), in.vec(in.queries, t, b) + d, n);
      const S* z = saved.z + tb * N * d;
      for (int64_t i = 1; i < N; ++i) store_vec(layer_norm(load_vec(z + (i - 1) * d)), n + i * d);
      for (int64_t k = 0; k < N * d; ++k) En[k] = zero();
    }
    for (int64_t bb = 0; bb < d; ++bb) Xt[bb] = zero();
    // The pass itself, with the reads' contractions (Ye, En) for the first reads_in_registers() reads or none. It
    // walks blocks of kBlockA values of a: the sums over b (Yt, Ye) stay in registers for the block, and the sums
    // over a (Xt, En) go to memory once per block and b instead of once per row.
    auto pass = [&](auto reads_tag, auto reset_tag) {
      const int64_t NR = decltype(reads_tag)::value ? reads_in_registers() : 0;
      constexpr bool kReset = decltype(reset_tag)::value;
      const S* e[kMaxReadsInRegisters];
      FWM_UNROLL_ALL
      for (int64_t i = 0; i < NR; ++i) e[i] = in.edge(t, b, i);
      for (int64_t a0 = 0; a0 < d; a0 += kBlockA) {
        Row wa[kBlockA], y[kBlockA], ye[kBlockA][kMaxReadsInRegisters];
        FWM_UNROLL_ALL
        for (int j = 0; j < kBlockA; ++j) {
          wa[j] = scaled(w_u, ks[a0 + j]);
          y[j] = zero();
          FWM_UNROLL_ALL
          for (int64_t i = 0; i < NR; ++i) ye[j][i] = zero();
        }
        for (int64_t bb = 0; bb < d; ++bb) {
          Row xs = zero(), es[kMaxReadsInRegisters];
          FWM_UNROLL_ALL
          for (int64_t i = 0; i < NR; ++i) es[i] = zero();
          FWM_UNROLL_ALL
          for (int j = 0; j < kBlockA; ++j) {
            const int64_t ab = (a0 + j) * d + bb;
            Row f;
            if (kReset) {
              f = scaled(wa[j], kr[bb]);
            } else {
              const Row ft = load(prev + ab * dp());
              fma(y[j], kr[bb], ft);
              fma(xs, ks[a0 + j], ft);
              f = scaled(ft, inv_c);
              fma(f, kr[bb], wa[j]);
            }
            store(f, cur + ab * dp());
            FWM_UNROLL_ALL
            for (int64_t i = 0; i < NR; ++i) {
              fma(ye[j][i], e[i][bb], f);
              fma(es[i], n[i * d + a0 + j], f);
            }
          }
          add(Xt[bb], xs);
          FWM_UNROLL_ALL
          for (int64_t i = 0; i < NR; ++i) add(En[i * d + bb], es[i]);
        }
        FWM_UNROLL_ALL
        for (int j = 0; j < kBlockA; ++j) {
          Yt[a0 + j] = y[j];
          FWM_UNROLL_ALL
          for (int64_t i = 0; i < NR; ++i) Ye[i * d + a0 + j] = ye[j][i];
        }
      }
    };
    const std::true_type yes;
    const std::false_type no;
    if (reads_here)
      reset ? pass(yes, yes) : pass(yes, no);
    else
      reset ? pass(no, yes) : pass(no, no);
    // More reads than registers (generic N_r only): the rest in their own passes over F_t.
    for (int64_t i = reads_in_registers(); reads_here && i < N; ++i) {
      const S* e = in.edge(t, b, i);
      for (int64_t a = 0; a < d; ++a) {
        Row y = zero();
        for (int64_t bb = 0; bb < d; ++bb) {
          const Row f = load(cur + (a * d + bb) * dp());
          fma(y, e[bb], f);
          fma(En[i * d + bb], n[i * d + a], f);
        }
        Ye[i * d + a] = y;
      }
    }
  }

  // Backward of step t. P holds dL/dF_t on entry and dL/dF_{t-1} on exit; XP, YP and pf its contractions with
  // step t's keys and F_t on entry, and with step t−1's keys and F_{t-1} on exit (when t > 0).
  void reverse_step(int64_t t, int64_t b, const S* g_reads, const Grads<S>& grads, const S* Ft, const S* Fprev,
                    const Row* con, S* P, Row* XP, Row* YP, S& pf, BackwardWork& w) const {
    const int64_t d = this->d(), N = this->N();
    const int64_t tb = in.at(t, b);
    const S* ks = in.vec(in.keys_s, t, b);
    const S* kr = in.vec(in.keys_r, t, b);
    const S* v = in.vec(in.values, t, b);
    const S* q = in.vec(in.queries, t, b);
    const S lb = in.write_scale * in.beta[tb];
    const bool reset = in.starts[tb];
    const int64_t NR = in.reads_at(tb);  // 0 where the read mask skipped the reads: they carry no gradient
    const S norm = saved.norm[tb];
    const S inv_c = S(1) / std::max(norm, S(1));
    const S* vh = saved.vhat + tb * d;
    const S* z = saved.z + tb * N * d;
    const Row* Xt = con;
    const Row* Yt = con + d;
    const Row* Ye = con + 2 * d;
    const Row* En = con + (N + 2) * d;

    // d-vectors (as rows) and scalars: n⁽ⁱ⁾, the chain of gz⁽ⁱ⁾ through the LayerNorms, g n⁽⁰⁾.
    S* n = w.scratch.data();          // [N+1, d]: n⁽⁰⁾..n⁽ᴺ⁾
    S* gz = n + (N + 1) * d;          // [N, d]
    S* h = gz + N * d;                // [d]: row sums, then read back as a row
    S* kn = h + d;                    // [N]: k_s·n⁽ⁱ⁻¹⁾
    S* ke = kn + N;                   // [N]: k_r·e⁽ⁱ⁾
    S* gzu = ke + N;                  // [N]: gz⁽ⁱ⁾·u
    const Row ks_v = load_vec(ks), kr_v = load_vec(kr), vh_v = load_vec(vh);
    Row dv = load_vec(v);  // v − v̂
    fma(dv, S(-1), vh_v);
    const Row u = scaled(dv, lb);
    std::copy(q, q + d, n);
    FWM_UNROLL_ALL
    for (int64_t i = 0; i < NR; ++i) store_vec(layer_norm(load_vec(z + i * d)), n + (i + 1) * d);
    Row gn = zero();  // g n⁽ⁱ⁾, from i = N_r (the reads) down to 0 (the queries)
    if (NR > 0)
      gn = load_vec(g_reads + tb * d);
    else
      std::fill(grads.edges + tb * N * d, grads.edges + (tb + 1) * N * d, S(0));
    S gamma = pf;
    for (int64_t i = NR - 1; i >= 0; --i) {
      const Row zi = load_vec(z + i * d);
      const Row gzi = layer_norm_backward(zi, gn);
      store_vec(gzi, gz + i * d);
      gamma += dot(zi, gzi);
      for (int64_t a = 0; a < d; ++a) h[a] = dot(Ye[i * d + a], gzi);  // g n⁽ⁱ⁻¹⁾
      gn = load_vec(h);
      // Edge gradients: g e⁽ⁱ⁾_b = ⟨Σ_a n⁽ⁱ⁻¹⁾_a F_t,ab:, gz⁽ⁱ⁾⟩.
      for (int64_t bb = 0; bb < d; ++bb) grads.edges[(tb * N + i) * d + bb] = dot(En[i * d + bb], gzi);
    }
    store_vec(gn, grads.queries + tb * d);

    const S gc = norm >= S(1) ? gamma * inv_c : S(0);  // γ'/c
    const S ks2 = dot(ks_v, ks_v), kr2 = dot(kr_v, kr_v), u2 = dot(u, u);
    // gu = (K·Q − γ' K·F_t)/c with K·Q = K·P + Σ_i (k_s·n⁽ⁱ⁻¹⁾)(k_r·e⁽ⁱ⁾) gz⁽ⁱ⁾ and K·F_t = (v̂ + ‖K‖² u)/c.
    Row gu = zero();
    for (int64_t bb = 0; bb < d; ++bb) fma(gu, kr[bb], XP[bb]);
    FWM_UNROLL_ALL
    for (int64_t i = 0; i < NR; ++i) {
      const Row gzi = load_vec(gz + i * d);
      kn[i] = vdot(ks, n + i * d);
      ke[i] = vdot(kr, in.edge(t, b, i));
      gzu[i] = dot(gzi, u);
      fma(gu, kn[i] * ke[i], gzi);
    }
    fma(gu, -gc, vh_v);
    fma(gu, -gc * ks2 * kr2, u);
    gu = scaled(gu, inv_c);
    store_vec(scaled(gu, lb), grads.values + tb * d);
    grads.beta[tb] = in.write_scale * dot(gu, dv);
    const Row gvh_row = scaled(gu, -lb);  // g v̂

    // Key gradients: gK_ab = ⟨gG_ab:, u⟩ + ⟨F̃_ab:, gv̂⟩ contracted with k_r over b (gks) and k_s over a (gkr).
    Row wv = gvh_row;  // gv̂ − (γ'/c²) u
    fma(wv, -gc * inv_c, u);
    const Row u_c = scaled(u, inv_c);
    // g_k = Σ_a ⟨Xp_a ⊙ u/c + Xf_a ⊙ wv⟩ (a = the key's own index) − (γ'/c²)‖other key‖²‖u‖² k
    //       + Σ_i coef_i (gz⁽ⁱ⁾·u)/c · vec_i(i)
    auto key_gradient = [&](const Row* Xp, const Row* Xf, const Row& k, S other2, const S* coef, auto vec_i,
                            S* out) {
      for (int64_t a = 0; a < d; ++a) {
        Row acc = zero();
        fma(acc, Xp[a], u_c);
        if (!reset) fma(acc, Xf[a], wv);
        h[a] = hsum(acc);
      }
      Row g = load_vec(h);
      fma(g, -gc * inv_c * other2 * u2, k);
      FWM_UNROLL_ALL
      for (int64_t i = 0; i < NR; ++i) fma(g, inv_c * coef[i] * gzu[i], load_vec(vec_i(i)));
      store_vec(g, out);
    };
    key_gradient(YP, Yt, ks_v, kr2, ke, [&](int64_t i) { return n + i * d; }, grads.keys_s + tb * d);
    key_gradient(XP, Xt, kr_v, ks2, kn, [&](int64_t i) { return in.edge(t, b, i); }, grads.keys_r + tb * d);

    // The write pass over P [d, d, Dp], by rows: dL/dF_{t-1} = sel(reset, 0, P/c + Σ_i n⁽ⁱ⁻¹⁾_a e⁽ⁱ⁾_b gz⁽ⁱ⁾/c
    // − (γ'/c) F_t + k_s,a k_r,b gv̂) and, for step t−1, the contractions of the new P with its keys and F_{t-1}.
    const bool next = t > 0 && !reset;  // does step t−1 need the contractions of the new P?
    const S* ksp = next ? in.vec(in.keys_s, t - 1, b) : nullptr;
    const S* krp = next ? in.vec(in.keys_r, t - 1, b) : nullptr;
    for (int64_t bb = 0; bb < d; ++bb) XP[bb] = zero();
    if (reset) {
      std::fill(P, P + fsize, S(0));
      for (int64_t a = 0; a < d; ++a) YP[a] = zero();
      pf = 0;
      return;
    }
    // The pass itself, with the read terms of the first reads_in_registers() reads or none; blocks of kBlockA
    // values of a, as in recompute (XP, the sum over a, goes to memory once per block and b).
    auto pass = [&](auto reads_tag, auto next_tag) {
      const int64_t n_reg = decltype(reads_tag)::value ? reads_in_registers() : 0;
      constexpr bool kNext = decltype(next_tag)::value;
      const S* e[kMaxReadsInRegisters];
      Row gzc[kMaxReadsInRegisters];  // gz⁽ⁱ⁾/c
      FWM_UNROLL_ALL
      for (int64_t i = 0; i < n_reg; ++i) {
        e[i] = in.edge(t, b, i);
        gzc[i] = scaled(load_vec(gz + i * d), inv_c);
      }
      Row pf_acc = zero();
      for (int64_t a0 = 0; a0 < d; a0 += kBlockA) {
        Row ga[kBlockA][kMaxReadsInRegisters];  // n⁽ⁱ⁻¹⁾_a gz⁽ⁱ⁾/c
        Row gk[kBlockA], yp[kBlockA];           // k_s,a gv̂; YP_a
        FWM_UNROLL_ALL
        for (int j = 0; j < kBlockA; ++j) {
          FWM_UNROLL_ALL
          for (int64_t i = 0; i < n_reg; ++i) ga[j][i] = scaled(gzc[i], n[i * d + a0 + j]);
          gk[j] = scaled(gvh_row, ks[a0 + j]);
          yp[j] = zero();
        }
        Row pf_a = zero();
        for (int64_t bb = 0; bb < d; ++bb) {
          Row xs = zero();
          FWM_UNROLL_ALL
          for (int j = 0; j < kBlockA; ++j) {
            const int64_t a = a0 + j, ab = a * d + bb;
            Row p = scaled(load(P + ab * dp()), inv_c);
            FWM_UNROLL_ALL
            for (int64_t i = 0; i < n_reg; ++i) fma(p, e[i][bb], ga[j][i]);
            if (NC == 0)  // generic N_r beyond the registers
              for (int64_t i = n_reg; i < NR; ++i)
                fma(p, n[i * d + a] * in.edge(t, b, i)[bb] * inv_c, load_vec(gz + i * d));
            fma(p, -gc, load(Ft + ab * dp()));
            fma(p, kr[bb], gk[j]);
            store(p, P + ab * dp());
            if (kNext) {
              fma(xs, ksp[a], p);
              fma(yp[j], krp[bb], p);
              fma(pf_a, load(Fprev + ab * dp()), p);
            }
          }
          if (kNext) add(XP[bb], xs);
        }
        FWM_UNROLL_ALL
        for (int j = 0; j < kBlockA; ++j) YP[a0 + j] = yp[j];
        add(pf_acc, pf_a);
      }
      return pf_acc;
    };
    const std::true_type yes;
    const std::false_type no;
    const Row pf_acc = NR > 0 ? (next ? pass(yes, yes) : pass(yes, no)) : (next ? pass(no, yes) : pass(no, no));
    pf = next ? hsum(pf_acc) : S(0);
  }

  // Reads whose terms the backward passes carry in registers (a generic N_r above 8 takes extra passes for the rest).
  static constexpr int64_t kMaxReadsInRegisters = NC > 0 ? NC : 8;
  // Values of a per block of the backward's passes (d is a multiple of it).
  static constexpr int kBlockA = RS == 1 ? 2 : 1;
  int64_t reads_in_registers() const { return NC > 0 ? NC : std::min<int64_t>(N(), kMaxReadsInRegisters); }

  // Backward of one row: recomputes each segment of F from its checkpoint, then walks it in reverse.
  void backward_row(int64_t b, const S* g_reads, const S* g_final, const Grads<S>& grads, BackwardWork& w) const {
    const int64_t d = this->d(), N = this->N();
    const int64_t seg = std::min(in.every, in.T);
    S* F0 = w.F0.reserve(fsize);
    S* segment = w.segment.reserve(seg * fsize);
    S* P = w.P.reserve(fsize);
    w.contractions.resize(seg * con_rows());
    w.XP.resize(d);
    w.YP.resize(d);
    w.scratch.resize((2 * N + 2) * d + 3 * N);
    pad(in.fast_weights + b * rows * d, F0);
    pad(g_final + b * rows * d, P);
    Row* con_base = w.contractions.data();
    Row* XP = w.XP.data();
    Row* YP = w.YP.data();
    S pf = 0;
    const int64_t n_segments = (in.T + in.every - 1) / in.every;
    for (int64_t j = n_segments - 1; j >= 0; --j) {
      const int64_t t0 = j * in.every;
      const int64_t t1 = std::min(in.T, t0 + in.every);
      const S* start = j == 0 ? F0 : saved.ckpt + (b * saved.n_ckpt + j - 1) * fsize;
      for (int64_t t = t0; t < t1; ++t) {
        const S* prev = t == t0 ? start : segment + (t - 1 - t0) * fsize;
        recompute(t, b, prev, segment + (t - t0) * fsize, con_base + (t - t0) * con_rows(), w);
      }
      if (j == n_segments - 1) {
        const int64_t t = in.T - 1;
        pf = contract_gradient(P, segment + (t - t0) * fsize, in.vec(in.keys_s, t, b), in.vec(in.keys_r, t, b),
                               XP, YP);
      }
      for (int64_t t = t1 - 1; t >= t0; --t) {
        const S* prev = t == t0 ? start : segment + (t - 1 - t0) * fsize;
        reverse_step(t, b, g_reads, grads, segment + (t - t0) * fsize, prev, con_base + (t - t0) * con_rows(), P,
                     XP, YP, pf, w);
      }
    }
    unpad(P, grads.fast_weights + b * rows * d);
  }
};

}  // namespace

// Entry points of this instruction set: the kernel specialised for d and N_r where it is compiled so (d = 16 and
// 32 with N_r = 3, the paper's configurations), the generic one otherwise.
template <typename S, int D, int NRT>
void forward_rows(const Views<S>& in, const Saved<S>& saved, S* reads, S* final, int64_t n_vectors, int64_t begin,
                  int64_t end) {
  const Kernel<S, D, NRT> kernel(in, saved, n_vectors);
  typename Kernel<S, D, NRT>::ForwardWork work;
  for (int64_t b = begin; b < end; ++b) kernel.forward_row(b, reads, final, work);
}

template <typename S, int D, int NRT>
void backward_rows(const Views<S>& in, const Saved<S>& saved, const S* g_reads, const S* g_final,
                   const Grads<S>& grads, int64_t n_vectors, int64_t begin, int64_t end) {
  const Kernel<S, D, NRT> kernel(in, saved, n_vectors);
  typename Kernel<S, D, NRT>::BackwardWork work;
  for (int64_t b = begin; b < end; ++b) kernel.backward_row(b, g_reads, g_final, grads, work);
}

template <typename S>
int64_t lanes() {
  return kVecBytes / int64_t(sizeof(S));
}

// Runs forward or backward rows [begin, end) with the specialisation that fits d and N_r.
template <typename S>
void run_forward(const Views<S>& in, const Saved<S>& saved, S* reads, S* final, int64_t begin, int64_t end) {
  const int64_t n_vectors = (in.d + lanes<S>() - 1) / lanes<S>();
  if (in.d == 16 && in.n_reads == 3)
    forward_rows<S, 16, 3>(in, saved, reads, final, n_vectors, begin, end);
  else if (in.d == 32 && in.n_reads == 3)
    forward_rows<S, 32, 3>(in, saved, reads, final, n_vectors, begin, end);
  else
    forward_rows<S, 0, 0>(in, saved, reads, final, n_vectors, begin, end);
}

template <typename S>
void run_backward(const Views<S>& in, const Saved<S>& saved, const S* g_reads, const S* g_final,
                  const Grads<S>& grads, int64_t begin, int64_t end) {
  const int64_t n_vectors = (in.d + lanes<S>() - 1) / lanes<S>();
  if (in.d == 16 && in.n_reads == 3)
    backward_rows<S, 16, 3>(in, saved, g_reads, g_final, grads, n_vectors, begin, end);
  else if (in.d == 32 && in.n_reads == 3)
    backward_rows<S, 32, 3>(in, saved, g_reads, g_final, grads, n_vectors, begin, end);
  else
    backward_rows<S, 0, 0>(in, saved, g_reads, g_final, grads, n_vectors, begin, end);
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
