// The FWM kernels of fwm_kernel.h and fwm_rank_one.h compiled for AVX512; fwm_fused.cpp picks them when torch's CPU capability is AVX512.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>
#include <vector>

#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")
#define FWM_ISA avx512
#define FWM_VEC_BYTES 64
#include "fwm_kernel.h"
#include "fwm_rank_one.h"
