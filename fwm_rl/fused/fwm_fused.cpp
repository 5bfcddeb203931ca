// Fused CPU kernel of the FWM fast-weight recurrence (the specification is fwm_recurrence_reference in
// fwm_rl/recurrence.py). One batch row's F (d×d×d) stays in cache for all T steps; rows run in parallel.
//
// This file holds the checked entry points (`forward`, `backward`; the chunked form's `scan_forward`,
// `scan_backward`, `contract`, `rank1_sum`, `rank_one_grads`), the one C++ form of the recurrence inputs
// (RecurrenceInputs, the twin of the Python NamedTuple of the same name) and the dispatch to the kernels of
// fwm_kernel.h and fwm_rank_one.h, which fwm_isa_avx512.cpp, fwm_isa_avx2.cpp and fwm_isa_baseline.cpp compile once
// per x86 instruction set through `#pragma GCC target` (so one build serves every CPU, and they compile in
// parallel). The instruction set follows torch's own CPU dispatch (torch.backends.cpu.get_cpu_capability(), which
// ATEN_CPU_CAPABILITY overrides), so a test under each capability runs that capability's kernel.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "fwm_scan.h"
#include "fwm_views.h"

namespace {

using fwm::Grads;
using fwm::kMaxDim;
using fwm::Saved;
using fwm::Views;

using torch::Tensor;

// The recurrence inputs, in the order of the fields of fwm_rl.recurrence.RecurrenceInputs.
struct RecurrenceInputs {
  static constexpr std::array<const char*, 8> kNames = {
      "keys_s", "keys_r", "values", "beta", "read_queries", "read_edges", "fast_weights", "episode_starts"};
  Tensor keys_s, keys_r, values, beta, read_queries, read_edges, fast_weights, episode_starts;

  // From the Python NamedTuple (any 8-sequence in field order; a NamedTuple's field names are checked too).
  static RecurrenceInputs from_python(const py::handle& obj) {
    TORCH_CHECK(py::isinstance<py::sequence>(obj), "fwm_fused: inputs must be a RecurrenceInputs tuple");
    const auto seq = py::reinterpret_borrow<py::sequence>(obj);
    TORCH_CHECK(py::len(seq) == kNames.size(), "fwm_fused: inputs must hold ", kNames.size(), " tensors (",
                "keys_s, ..., episode_starts), got ", py::len(seq));
    if (py::hasattr(obj, "_fields")) {
      const auto fields = obj.attr("_fields").cast<std::vector<std::string>>();
      for (size_t i = 0; i < kNames.size(); ++i)
        TORCH_CHECK(fields[i] == kNames[i], "fwm_fused: input field ", i, " must be ", kNames[i], ", got ",
                    fields[i]);
    }
    std::array<Tensor, 8> t;
    for (size_t i = 0; i < kNames.size(); ++i) {
      TORCH_CHECK(THPVariable_Check(seq[i].ptr()), "fwm_fused: ", kNames[i], " must be a tensor");
      t[i] = seq[i].cast<Tensor>();
    }
    return {t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]};
  }
};

// What the forward returns for the backward (and the backward takes back), in this order.
struct SavedTensors {
  Tensor ckpt, vhat, norm, z;
};

// Dimensions of a call, read from `values` and `read_edges` and checked against every other tensor.
struct Dims {
  int64_t T, B, d, N;
};

std::string shape_str(at::IntArrayRef shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// dtype, device, contiguity, rank and every dimension of one argument, before any memory is touched.
void check_tensor(const char* fn, const char* name, const Tensor& x, at::ScalarType dtype,
                  std::vector<int64_t> shape, const char* layout,
                  const char* dims_from = "T, B, d from values, N_r from read_edges",
                  const char* dtype_from = "values") {
  TORCH_CHECK(x.defined(), fn, ": ", name, " is undefined");
  TORCH_CHECK(x.device().is_cpu(), fn, ": ", name, " must be a CPU tensor, got device ", x.device());
  TORCH_CHECK(x.scalar_type() == dtype, fn, ": ", name, " must have dtype ", dtype,
              dtype == torch::kBool ? "" : std::string(" (that of ") + dtype_from + ")", ", got ", x.scalar_type());
  TORCH_CHECK(x.dim() == int64_t(shape.size()), fn, ": ", name, " must have rank ", shape.size(), " (", layout,
              "), got shape ", shape_str(x.sizes()));
  TORCH_CHECK(x.sizes() == at::IntArrayRef(shape), fn, ": ", name, " must have shape ", layout, " = ",
              shape_str(shape), " (", dims_from, "), got ", shape_str(x.sizes()));
  TORCH_CHECK(x.is_contiguous(), fn, ": ", name, " must be contiguous");
}

Dims check_inputs(const char* fn, const RecurrenceInputs& in, int64_t every) {
  TORCH_CHECK(in.values.defined() && in.values.dim() == 3, fn, ": values must have rank 3 ([T, B, d])",
              in.values.defined() ? ", got shape " + shape_str(in.values.sizes()) : std::string());
  const auto dtype = in.values.scalar_type();
  TORCH_CHECK(dtype == torch::kFloat32 || dtype == torch::kFloat64, fn,
              ": values must be float32 or float64, got ", dtype);
  TORCH_CHECK(in.read_edges.defined() && in.read_edges.dim() == 4, fn,
              ": read_edges must have rank 4 ([T, B, N_r, d])",
              in.read_edges.defined() ? ", got shape " + shape_str(in.read_edges.sizes()) : std::string());
  const Dims dims{in.values.size(0), in.values.size(1), in.values.size(2), in.read_edges.size(2)};
  const auto [T, B, d, N] = dims;
  TORCH_CHECK(d >= 1 && d <= kMaxDim, fn, ": d (values.shape[2]) must be in [1, ", kMaxDim, "], got ", d);
  TORCH_CHECK(N >= 1, fn, ": read_edges must hold at least one read (N_r = read_edges.shape[2] >= 1), got ", N);
  TORCH_CHECK(every >= 1, fn, ": checkpoint interval must be >= 1, got ", every);
  check_tensor(fn, "keys_s", in.keys_s, dtype, {T, B, d}, "[T, B, d]");
  check_tensor(fn, "keys_r", in.keys_r, dtype, {T, B, d}, "[T, B, d]");
  check_tensor(fn, "values", in.values, dtype, {T, B, d}, "[T, B, d]");
  check_tensor(fn, "beta", in.beta, dtype, {T, B}, "[T, B]");
  check_tensor(fn, "read_queries", in.read_queries, dtype, {T, B, d}, "[T, B, d]");
  check_tensor(fn, "read_edges", in.read_edges, dtype, {T, B, N, d}, "[T, B, N_r, d]");
  check_tensor(fn, "fast_weights", in.fast_weights, dtype, {B, d, d, d}, "[B, d, d, d]");
  check_tensor(fn, "episode_starts", in.episode_starts, torch::kBool, {T, B}, "[T, B]");
  return dims;
}

// The optional read mask: none (every step reads) or a [T, B] bool tensor, checked like the inputs.
using ReadMask = std::optional<Tensor>;

void check_read_mask(const char* fn, const ReadMask& read_mask, const Dims& dims) {
  if (read_mask.has_value()) check_tensor(fn, "read_mask", *read_mask, torch::kBool, {dims.T, dims.B}, "[T, B]");
}

template <typename S>
Views<S> views(const RecurrenceInputs& in, const ReadMask& read_mask, const Dims& dims, double write_scale,
               double eps, int64_t every) {
  return {in.keys_s.data_ptr<S>(),       in.keys_r.data_ptr<S>(),     in.values.data_ptr<S>(),
          in.beta.data_ptr<S>(),         in.read_queries.data_ptr<S>(), in.read_edges.data_ptr<S>(),
          in.fast_weights.data_ptr<S>(), in.episode_starts.data_ptr<bool>(),
          read_mask.has_value() ? read_mask->data_ptr<bool>() : nullptr,
          dims.T, dims.B, dims.d, dims.N, every, static_cast<S>(write_scale), static_cast<S>(eps)};
}

enum class Isa { kDefault, kAvx2, kAvx512 };

// The instruction set torch dispatches its own CPU kernels to (read once per process).
Isa instruction_set() {
  static const Isa isa = [] {
    const auto name = py::module_::import("torch.backends.cpu").attr("get_cpu_capability")().cast<std::string>();
    if (name == "AVX512") return Isa::kAvx512;
    if (name == "AVX2") return Isa::kAvx2;
    return Isa::kDefault;
  }();
  return isa;
}

// Calls one kernel entry point, `call` = its name and arguments (e.g. forward(v, sv, r, f, begin, end)), in the
// build for this machine's instruction set. instruction_set() is read at import, so this needs no GIL.
#define FWM_RUN_KERNEL(call)                       \
  switch (instruction_set()) {                     \
    case Isa::kAvx512: fwm::avx512::call; break;   \
    case Isa::kAvx2: fwm::avx2::call; break;       \
    default: fwm::baseline::call; break;           \
  }

std::string instruction_set_name() {
  switch (instruction_set()) {
    case Isa::kAvx512: return "AVX512";
    case Isa::kAvx2: return "AVX2";
    default: return "DEFAULT";
  }
}

// Padded row length (a multiple of the vector width) of the kernel that runs here.
int64_t padded_dim(int64_t d, at::ScalarType dtype) {
  const int64_t bytes = instruction_set() == Isa::kAvx512 ? 64 : instruction_set() == Isa::kAvx2 ? 32 : 16;
  const int64_t lanes = bytes / (dtype == torch::kFloat64 ? 8 : 4);
  return (d + lanes - 1) / lanes * lanes;
}

// Batch rows per parallel task: enough for about 2^20 element-steps, so that short calls (a rollout step) stay on
// one thread instead of paying for waking the other.
int64_t rows_per_task(int64_t T, int64_t d) {
  return std::max<int64_t>(1, (int64_t(1) << 20) / std::max<int64_t>(1, T * d * d * d));
}

// Returns reads [T, B, d], F_T [B, d, d, d] and the saved tensors (checkpoints empty unless `save`).
// Reads skipped by `read_mask` (false at [t, b]) are zero.
std::tuple<Tensor, Tensor, std::vector<Tensor>> forward(const py::handle& inputs_obj, double write_scale, double eps,
                                                        int64_t every, bool save, const ReadMask& read_mask) {
  const auto in = RecurrenceInputs::from_python(inputs_obj);
  const Dims dims = check_inputs("fwm_fused.forward", in, every);
  check_read_mask("fwm_fused.forward", read_mask, dims);
  const auto [T, B, d, N] = dims;
  const auto options = in.values.options();
  const int64_t n_ckpt = save && T > 0 ? (T + every - 1) / every - 1 : 0;
  const int64_t fsize = d * d * padded_dim(d, in.values.scalar_type());
  auto reads = torch::empty({T, B, d}, options);
  auto final = torch::empty({B, d, d, d}, options);
  SavedTensors saved{torch::empty({B, n_ckpt, fsize}, options), torch::empty({T, B, d}, options),
                     torch::empty({T, B}, options), torch::empty({T, B, N, d}, options)};
  {
    py::gil_scoped_release no_gil;
    AT_DISPATCH_FLOATING_TYPES(in.values.scalar_type(), "fwm_fused_forward", [&] {
      using S = scalar_t;
      const auto v = views<S>(in, read_mask, dims, write_scale, eps, every);
      const Saved<S> sv{n_ckpt > 0 ? saved.ckpt.data_ptr<S>() : nullptr, n_ckpt, saved.vhat.data_ptr<S>(),
                        saved.norm.data_ptr<S>(), saved.z.data_ptr<S>()};
      S* r = reads.data_ptr<S>();
      S* f = final.data_ptr<S>();
      at::parallel_for(0, B, rows_per_task(T, d),
                       [&](int64_t begin, int64_t end) { FWM_RUN_KERNEL(forward(v, sv, r, f, begin, end)); });
    });
  }
  return {reads, final, {saved.ckpt, saved.vhat, saved.norm, saved.z}};
}

// Returns the gradients wrt keys_s, keys_r, values, beta, read_queries, read_edges and fast_weights (F₀); the
// read mask must be the forward's (grad_reads is ignored where it skipped the reads).
std::vector<Tensor> backward(const Tensor& grad_reads, const Tensor& grad_final, const py::handle& inputs_obj,
                             const std::vector<Tensor>& saved_list, double write_scale, double eps, int64_t every,
                             const ReadMask& read_mask) {
  const char* fn = "fwm_fused.backward";
  const auto in = RecurrenceInputs::from_python(inputs_obj);
  const Dims dims = check_inputs(fn, in, every);
  check_read_mask(fn, read_mask, dims);
  const auto [T, B, d, N] = dims;
  const auto dtype = in.values.scalar_type();
  TORCH_CHECK(saved_list.size() == 4, fn, ": saved must hold 4 tensors (ckpt, vhat, norm, z), got ",
              saved_list.size());
  const SavedTensors saved{saved_list[0], saved_list[1], saved_list[2], saved_list[3]};
  const int64_t n_ckpt = T > 0 ? (T + every - 1) / every - 1 : 0;
  check_tensor(fn, "grad_reads", grad_reads, dtype, {T, B, d}, "[T, B, d]");
  check_tensor(fn, "grad_final", grad_final, dtype, {B, d, d, d}, "[B, d, d, d]");
  check_tensor(fn, "ckpt", saved.ckpt, dtype, {B, n_ckpt, d * d * padded_dim(d, dtype)}, "[B, n_ckpt, d*d*Dp]");
  check_tensor(fn, "vhat", saved.vhat, dtype, {T, B, d}, "[T, B, d]");
  check_tensor(fn, "norm", saved.norm, dtype, {T, B}, "[T, B]");
  check_tensor(fn, "z", saved.z, dtype, {T, B, N, d}, "[T, B, N_r, d]");
  std::vector<Tensor> grads{torch::empty_like(in.keys_s),       torch::empty_like(in.keys_r),
                            torch::empty_like(in.values),       torch::empty_like(in.beta),
                            torch::empty_like(in.read_queries), torch::empty_like(in.read_edges),
                            torch::empty_like(in.fast_weights)};
  {
    py::gil_scoped_release no_gil;
    AT_DISPATCH_FLOATING_TYPES(dtype, "fwm_fused_backward", [&] {
      using S = scalar_t;
      const auto v = views<S>(in, read_mask, dims, write_scale, eps, every);
      const Saved<S> sv{n_ckpt > 0 ? saved.ckpt.data_ptr<S>() : nullptr, n_ckpt, saved.vhat.data_ptr<S>(),
                        saved.norm.data_ptr<S>(), saved.z.data_ptr<S>()};
      const Grads<S> g{grads[0].data_ptr<S>(), grads[1].data_ptr<S>(), grads[2].data_ptr<S>(),
                       grads[3].data_ptr<S>(), grads[4].data_ptr<S>(), grads[5].data_ptr<S>(),
                       grads[6].data_ptr<S>()};
      const S* gr = grad_reads.data_ptr<S>();
      const S* gf = grad_final.data_ptr<S>();
      at::parallel_for(0, B, rows_per_task(T, d),
                       [&](int64_t begin, int64_t end) { FWM_RUN_KERNEL(backward(v, sv, gr, gf, g, begin, end)); });
    });
  }
  return grads;
}

// The scan of the chunked recurrence (fwm_scan.h): its six inputs, checked like the recurrence's.
struct ScanInputs {
  Tensor key_gram, old_F0, norm0, write, values, starts;
};

// B, C, d from values [B, C, d]; every other input checked against them.
std::array<int64_t, 3> check_scan_inputs(const char* fn, const ScanInputs& in) {
  TORCH_CHECK(in.values.defined() && in.values.dim() == 3, fn, ": values must have rank 3 ([B, C, d])",
              in.values.defined() ? ", got shape " + shape_str(in.values.sizes()) : std::string());
  const auto dtype = in.values.scalar_type();
  TORCH_CHECK(dtype == torch::kFloat32 || dtype == torch::kFloat64, fn,
              ": values must be float32 or float64, got ", dtype);
  const int64_t B = in.values.size(0), C = in.values.size(1), d = in.values.size(2);
  const char* from = "B, C, d from values";
  check_tensor(fn, "key_gram", in.key_gram, dtype, {B, C, C}, "[B, C, C]", from);
  check_tensor(fn, "old_F0", in.old_F0, dtype, {B, C, d}, "[B, C, d]", from);
  check_tensor(fn, "norm0", in.norm0, dtype, {B}, "[B]", from);
  check_tensor(fn, "write", in.write, dtype, {B, C}, "[B, C]", from);
  check_tensor(fn, "values", in.values, dtype, {B, C, d}, "[B, C, d]", from);
  check_tensor(fn, "starts", in.starts, torch::kBool, {B, C}, "[B, C]", from);
  return {B, C, d};
}

template <typename S>
fwm::scan::Inputs<S> scan_views(const ScanInputs& in, int64_t C, int64_t d) {
  return {in.key_gram.data_ptr<S>(), in.old_F0.data_ptr<S>(), in.norm0.data_ptr<S>(), in.write.data_ptr<S>(),
          in.values.data_ptr<S>(),   in.starts.data_ptr<bool>(), C, d};
}

// Rows per parallel task of the scan: about 2^16 element-steps each.
int64_t scan_rows_per_task(int64_t C, int64_t d) {
  return std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, C * C * d));
}

// Returns u [B, C, d], r [B, C, C], s [B, C], v̂ [B, C, d] and q [B, C] (the last two for the backward).
std::vector<Tensor> scan_forward(const Tensor& key_gram, const Tensor& old_F0, const Tensor& norm0,
                                 const Tensor& write, const Tensor& values, const Tensor& starts) {
  const ScanInputs in{key_gram, old_F0, norm0, write, values, starts};
  const auto [B, C, d] = check_scan_inputs("fwm_fused.scan_forward", in);
  const auto options = values.options();
  std::vector<Tensor> out{torch::empty({B, C, d}, options), torch::empty({B, C, C}, options),
                          torch::empty({B, C}, options), torch::empty({B, C, d}, options),
                          torch::empty({B, C}, options)};
  py::gil_scoped_release no_gil;
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "fwm_scan_forward", [&] {
    const auto v = scan_views<scalar_t>(in, C, d);
    const fwm::scan::Outputs<scalar_t> o{out[0].data_ptr<scalar_t>(), out[1].data_ptr<scalar_t>(),
                                         out[2].data_ptr<scalar_t>(), out[3].data_ptr<scalar_t>(),
                                         out[4].data_ptr<scalar_t>()};
    at::parallel_for(0, B, scan_rows_per_task(C, d), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) fwm::scan::forward_row(v, o, b);
    });
  });
  return out;
}

// Returns the gradients wrt key_gram (zero above the diagonal), old_F0, norm0, write and values, from the
// gradients wrt u, r and s and the forward's inputs and results.
std::vector<Tensor> scan_backward(const Tensor& grad_updates, const Tensor& grad_decays, const Tensor& grad_scales,
                                  const Tensor& key_gram, const Tensor& old_F0, const Tensor& norm0,
                                  const Tensor& write, const Tensor& values, const Tensor& starts,
                                  const std::vector<Tensor>& saved) {
  const char* fn = "fwm_fused.scan_backward";
  const ScanInputs in{key_gram, old_F0, norm0, write, values, starts};
  const auto [B, C, d] = check_scan_inputs(fn, in);
  const auto dtype = values.scalar_type();
  const char* from = "B, C, d from values";
  check_tensor(fn, "grad_updates", grad_updates, dtype, {B, C, d}, "[B, C, d]", from);
  check_tensor(fn, "grad_decays", grad_decays, dtype, {B, C, C}, "[B, C, C]", from);
  check_tensor(fn, "grad_scales", grad_scales, dtype, {B, C}, "[B, C]", from);
  TORCH_CHECK(saved.size() == 5, fn, ": saved must hold the 5 results of scan_forward (u, r, s, vhat, q), got ",
              saved.size());
  check_tensor(fn, "saved u", saved[0], dtype, {B, C, d}, "[B, C, d]", from);
  check_tensor(fn, "saved r", saved[1], dtype, {B, C, C}, "[B, C, C]", from);
  check_tensor(fn, "saved s", saved[2], dtype, {B, C}, "[B, C]", from);
  check_tensor(fn, "saved vhat", saved[3], dtype, {B, C, d}, "[B, C, d]", from);
  check_tensor(fn, "saved q", saved[4], dtype, {B, C}, "[B, C]", from);
  std::vector<Tensor> grads{torch::empty_like(key_gram), torch::empty_like(old_F0), torch::empty_like(norm0),
                            torch::empty_like(write), torch::empty_like(values)};
  py::gil_scoped_release no_gil;
  AT_DISPATCH_FLOATING_TYPES(dtype, "fwm_scan_backward", [&] {
    using S = scalar_t;
    const auto v = scan_views<S>(in, C, d);
    const fwm::scan::Outputs<S> o{saved[0].data_ptr<S>(), saved[1].data_ptr<S>(), saved[2].data_ptr<S>(),
                                  saved[3].data_ptr<S>(), saved[4].data_ptr<S>()};
    const fwm::scan::Grads<S> g{grad_updates.data_ptr<S>(), grad_decays.data_ptr<S>(), grad_scales.data_ptr<S>(),
                                grads[0].data_ptr<S>(),     grads[1].data_ptr<S>(),    grads[2].data_ptr<S>(),
                                grads[3].data_ptr<S>(),     grads[4].data_ptr<S>()};
    at::parallel_for(0, B, scan_rows_per_task(C, d), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) fwm::scan::backward_row(v, o, g, b);
    });
  });
  return grads;
}

// ----- Rank-1 products with F (fwm_rank_one.h): x, y [B, C, d] with F [B, d, d, d] and w, grad [B, C, d].
using fwm::RankOne;

// B, C, d from x; y checked against them.
std::array<int64_t, 3> check_pairs(const char* fn, const Tensor& x, const Tensor& y) {
  TORCH_CHECK(x.defined() && x.dim() == 3, fn, ": x must have rank 3 ([B, C, d])",
              x.defined() ? ", got shape " + shape_str(x.sizes()) : std::string());
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == torch::kFloat32 || dtype == torch::kFloat64, fn, ": x must be float32 or float64, got ",
              dtype);
  const int64_t B = x.size(0), C = x.size(1), d = x.size(2);
  TORCH_CHECK(d >= 1 && d <= kMaxDim, fn, ": d (x.shape[2]) must be in [1, ", kMaxDim, "], got ", d);
  const char* from = "B, C, d from x";
  check_tensor(fn, "x", x, dtype, {B, C, d}, "[B, C, d]", from, "x");
  check_tensor(fn, "y", y, dtype, {B, C, d}, "[B, C, d]", from, "x");
  return {B, C, d};
}

template <typename S>
RankOne<S> pairs(const Tensor& x, const Tensor& y, int64_t C, int64_t d) {
  return {x.data_ptr<S>(), y.data_ptr<S>(), C, d};
}

// Runs f(begin, end) over batch rows in parallel, about 2^20 multiply-adds per task.
template <typename Fn>
void over_rows(int64_t B, int64_t C, int64_t d, Fn&& f) {
  at::parallel_for(0, B, std::max<int64_t>(1, (int64_t(1) << 20) / std::max<int64_t>(1, C * d * d * d)), f);
}

// out [B, C, d]: out_c = Σ_ab x_c,a y_c,b F_ab:.
Tensor contract(const Tensor& fast_weights, const Tensor& x, const Tensor& y) {
  const char* fn = "fwm_fused.contract";
  const auto [B, C, d] = check_pairs(fn, x, y);
  check_tensor(fn, "fast_weights", fast_weights, x.scalar_type(), {B, d, d, d}, "[B, d, d, d]", "B, d from x", "x");
  auto out = torch::empty({B, C, d}, x.options());
  py::gil_scoped_release no_gil;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fwm_contract", [&] {
    const auto in = pairs<scalar_t>(x, y, C, d);
    const scalar_t* F = fast_weights.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    over_rows(B, C, d, [&](int64_t begin, int64_t end) { FWM_RUN_KERNEL(contract(in, F, o, begin, end)); });
  });
  return out;
}

// F [B, d, d, d]: F_ab: = Σ_c x_c,a y_c,b w_c.
Tensor rank1_sum(const Tensor& x, const Tensor& y, const Tensor& w) {
  const char* fn = "fwm_fused.rank1_sum";
  const auto [B, C, d] = check_pairs(fn, x, y);
  check_tensor(fn, "w", w, x.scalar_type(), {B, C, d}, "[B, C, d]", "B, C, d from x", "x");
  auto F = torch::empty({B, d, d, d}, x.options());
  py::gil_scoped_release no_gil;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fwm_rank1_sum", [&] {
    const auto in = pairs<scalar_t>(x, y, C, d);
    const scalar_t* wp = w.data_ptr<scalar_t>();
    scalar_t* f = F.data_ptr<scalar_t>();
    over_rows(B, C, d, [&](int64_t begin, int64_t end) { FWM_RUN_KERNEL(rank1_sum(in, wp, f, begin, end)); });
  });
  return F;
}

// [gx, gy], each [B, C, d]: the gradients wrt x and y of Σ_c grad_c·⟨F, x_c ⊗ y_c⟩.
std::vector<Tensor> rank_one_grads(const Tensor& fast_weights, const Tensor& x, const Tensor& y, const Tensor& grad) {
  const char* fn = "fwm_fused.rank_one_grads";
  const auto [B, C, d] = check_pairs(fn, x, y);
  check_tensor(fn, "fast_weights", fast_weights, x.scalar_type(), {B, d, d, d}, "[B, d, d, d]", "B, d from x", "x");
  check_tensor(fn, "grad", grad, x.scalar_type(), {B, C, d}, "[B, C, d]", "B, C, d from x", "x");
  std::vector<Tensor> grads{torch::empty_like(x), torch::empty_like(y)};
  py::gil_scoped_release no_gil;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fwm_rank_one_grads", [&] {
    const auto in = pairs<scalar_t>(x, y, C, d);
    const scalar_t* F = fast_weights.data_ptr<scalar_t>();
    const scalar_t* g = grad.data_ptr<scalar_t>();
    scalar_t* gx = grads[0].data_ptr<scalar_t>();
    scalar_t* gy = grads[1].data_ptr<scalar_t>();
    over_rows(B, C, d,
              [&](int64_t begin, int64_t end) { FWM_RUN_KERNEL(rank_one_grads(in, F, g, gx, gy, begin, end)); });
  });
  return grads;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Fused CPU kernel of the FWM fast-weight recurrence";
  m.attr("MAX_DIM") = kMaxDim;
  instruction_set();  // read torch's capability now, while this thread holds the GIL
  m.attr("INPUT_NAMES") = py::cast(std::vector<std::string>(RecurrenceInputs::kNames.begin(),
                                                            RecurrenceInputs::kNames.end()));
  m.def("instruction_set", &instruction_set_name, "The instruction set whose kernel runs (follows torch's)");
  m.def("forward", &forward,
        "FWM recurrence forward: (inputs, write_scale, eps, every, save, read_mask=None) -> (reads, final, saved)",
        py::arg("inputs"), py::arg("write_scale"), py::arg("eps"), py::arg("every"), py::arg("save"),
        py::arg("read_mask") = py::none());
  m.def("backward", &backward,
        "FWM recurrence backward, recomputing F from the checkpoints: "
        "(grad_reads, grad_final, inputs, saved, write_scale, eps, every, read_mask=None) -> 7 gradients",
        py::arg("grad_reads"), py::arg("grad_final"), py::arg("inputs"), py::arg("saved"), py::arg("write_scale"),
        py::arg("eps"), py::arg("every"), py::arg("read_mask") = py::none());
  m.def("scan_forward", &scan_forward,
        "Scan of the chunked recurrence: (key_gram, old_F0, norm0, write, values, starts) -> [u, r, s, vhat, q]",
        py::arg("key_gram"), py::arg("old_F0"), py::arg("norm0"), py::arg("write"), py::arg("values"),
        py::arg("starts"));
  m.def("scan_backward", &scan_backward,
        "Backward of the scan: (grad_u, grad_r, grad_s, key_gram, old_F0, norm0, write, values, starts, saved) -> "
        "gradients wrt key_gram, old_F0, norm0, write, values",
        py::arg("grad_updates"), py::arg("grad_decays"), py::arg("grad_scales"), py::arg("key_gram"),
        py::arg("old_F0"), py::arg("norm0"), py::arg("write"), py::arg("values"), py::arg("starts"),
        py::arg("saved"));
  m.def("contract", &contract, "Rank-1 contractions with F: (fast_weights, x, y) -> out_c = <F, x_c ⊗ y_c>",
        py::arg("fast_weights"), py::arg("x"), py::arg("y"));
  m.def("rank1_sum", &rank1_sum, "Sum of rank-1 terms: (x, y, w) -> F = Σ_c x_c ⊗ y_c ⊗ w_c", py::arg("x"),
        py::arg("y"), py::arg("w"));
  m.def("rank_one_grads", &rank_one_grads,
        "Gradients of contract wrt x and y: (fast_weights, x, y, grad) -> [grad_x, grad_y]",
        py::arg("fast_weights"), py::arg("x"), py::arg("y"), py::arg("grad"));
}
